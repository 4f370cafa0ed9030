"""One message for a missing optional dependency."""

from __future__ import annotations


def missing(module: str, extra: str) -> ImportError:
    """The ImportError to raise when ``module`` is absent: it names the extra to install."""
    return ImportError(
        f"boss_fast.integrations.{extra} needs the '{module}' package: "
        f"pip install 'boss_fast[{extra}]' (with your torch pin, e.g. torch==2.13.0)"
    )
