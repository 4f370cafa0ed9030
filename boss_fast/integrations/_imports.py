"""One message for a missing optional dependency."""

from __future__ import annotations


def missing(module: str, integration: str) -> ImportError:
    """The ImportError to raise when ``module`` is absent: it names the extra to install, spelled as pip
    normalises it (``flow-matching`` for the ``flow_matching`` integration)."""
    extra = integration.replace("_", "-")
    return ImportError(
        f"boss_fast.integrations.{integration} needs the '{module}' package: "
        f"pip install 'boss_fast[{extra}]' (with your torch pin, e.g. torch==2.13.0)"
    )
