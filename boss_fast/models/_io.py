"""Reading and writing the shipped weight files: safetensors only (no pickle, no code from the file).

A file holds the module's ``state_dict`` tensors and string metadata: the common header
(``boss_fast._header``: ``format`` "boss_fast.weights", ``version`` "1"; files written before it, the shipped
weights among them, have none and are read by their model name alone), ``boss_fast.model`` (the bundled
name), ``boss_fast.config`` (JSON of the constructor's keyword arguments: ints, floats) and free-form
provenance (``boss_fast.*``: seed, steps, wall time, metrics measured by the training script).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from boss_fast._header import check_header, header_strings, make_header, write_file

__all__ = ["WEIGHTS_DIR", "WeightsFileError", "save_weights", "read_weights"]

#: Directory of the weight files shipped as package data.
WEIGHTS_DIR: Path = Path(__file__).resolve().parent / "weights"

WEIGHTS_FORMAT = "boss_fast.weights"
WEIGHTS_VERSION = "1"  # a string: safetensors metadata holds strings
_MODEL_KEY = "boss_fast.model"
_CONFIG_KEY = "boss_fast.config"


class WeightsFileError(RuntimeError):
    """A weight file exists but cannot be read or does not match the model it should hold."""


def save_weights(
    module: torch.nn.Module,
    path: str | os.PathLike[str],
    *,
    name: str,
    config: Mapping[str, int | float],
    metadata: Mapping[str, object] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``module``'s state dict to ``path`` atomically (temporary file in the same directory, then
    ``os.replace``), so a reader never sees a half-written file.

    Args:
        module: the trained module; its persistent buffers and parameters are saved.
        path: destination ``.safetensors`` file.
        name: bundled model name stored as ``boss_fast.model``.
        config: constructor keyword arguments (JSON numbers only), stored as ``boss_fast.config``.
        metadata: extra provenance; each value is stored as ``str(value)`` under ``boss_fast.<key>``.
        dtype: if given, floating tensors are stored in this dtype (e.g. float16 halves the file).

    Returns:
        The resolved destination path.
    """
    path = Path(path).resolve()
    tensors: dict[str, torch.Tensor] = {}
    for key, value in module.state_dict().items():
        value = value.detach().to("cpu")
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        tensors[key] = value.contiguous()
    meta = header_strings(make_header(WEIGHTS_FORMAT, WEIGHTS_VERSION))
    meta.update({_MODEL_KEY: name, _CONFIG_KEY: json.dumps(dict(config), sort_keys=True)})
    for key, value in (metadata or {}).items():
        meta[f"boss_fast.{key}"] = str(value)
    blob = save(tensors, metadata=meta)
    write_file(path, lambda f: f.write(blob))
    return path


def read_weights(
    path: str | os.PathLike[str], *, name: str, script: str
) -> tuple[dict[str, torch.Tensor], dict[str, int | float], dict[str, str]]:
    """Read a weight file written by :func:`save_weights`.

    Args:
        path: the ``.safetensors`` file.
        name: the bundled model name the file must declare.
        script: the training script that recreates the file, named in error messages.

    Returns:
        ``(tensors, config, metadata)``: CPU tensors by state-dict key, the constructor arguments and the
        raw string metadata.

    Raises:
        FileNotFoundError: the file is missing.
        WeightsFileError: the file is corrupt, or its metadata is missing or names another model.
    """
    path = Path(path)
    how = (
        f"recreate it with `{script}`"
        if script.startswith("boss-fast")
        else f"recreate it with `python {script}` from a boss_fast source checkout"
    )
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} is missing; {how}")
    try:
        tensors = load_file(path)
        with safe_open(path, framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError) as err:
        raise WeightsFileError(f"weights file {path} is corrupt or unreadable ({err}); {how}") from err
    if "format" in metadata:  # files from before the header (the shipped weights) have none
        try:
            check_header(metadata, make_header(WEIGHTS_FORMAT, WEIGHTS_VERSION), str(path), "weights file")
        except ValueError as err:
            raise WeightsFileError(f"{err}; {how}") from None
    if metadata.get(_MODEL_KEY) != name or _CONFIG_KEY not in metadata:
        raise WeightsFileError(
            f"weights file {path} does not declare model {name!r} with a config "
            f"(found model {metadata.get(_MODEL_KEY)!r}); {how}"
        )
    try:
        config = json.loads(metadata[_CONFIG_KEY])
    except json.JSONDecodeError as err:
        raise WeightsFileError(f"weights file {path} has an unreadable config ({err}); {how}") from err
    if not isinstance(config, dict) or not all(
        isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool)
        for k, v in config.items()
    ):
        raise WeightsFileError(f"weights file {path} has a config that is not a flat dict of numbers; {how}")
    return tensors, config, metadata
