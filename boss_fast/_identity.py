"""Every fingerprint and digest the package records: what a result was computed from, and whether a file's
content is what was written.

- :func:`model_fingerprint`: a module's weights and configuration (schedules, checkpoint headers, caches).
- :func:`noise_digest`: a noise tensor's bytes (checkpoint headers, the demo's reference cache).
- :func:`checkpoint_model_key`: the model key a checkpoint header records (the fingerprint, or a user's key).
- :func:`content_digest`: SHA-256 of a JSON document without its own ``sha256`` field (schedule sets).
- :func:`value_digest`: SHA-256 of nested tensors, dicts, lists and scalars (straightening checkpoints).
- :func:`arrays_digest`: SHA-256 of named NumPy arrays (the search checkpoints' ``.npz`` payload).
- :func:`path_tag`: a short digest of a file's absolute path (names tied to one checkpoint file).
- :func:`cache_key`: a cache folder's name from JSON-able parts and a noise tensor (straightening's pairs).

Files already on disk hold these values, so each function's bytes-to-digest rule is frozen:
tests/test_identity.py pins every one to the value the code gave before it moved here.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "arrays_digest",
    "cache_key",
    "content_digest",
    "model_fingerprint",
    "noise_digest",
    "path_tag",
    "value_digest",
    "checkpoint_model_key",
]

_PLAIN = (bool, int, float, str, type(None))


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    """The tensor's elements in row-major order as raw bytes (host copy)."""
    return tensor.detach().contiguous().reshape(-1).cpu().view(torch.uint8).numpy().tobytes()


def noise_digest(noise: torch.Tensor, length: int = 16) -> str:
    """``"sha256:"`` and the first ``length`` hex digits of the SHA-256 of a tensor's bytes.

    Checkpoint headers use 16 digits, the demo's reference cache 32 (files of both exist: keep each).

    Example:
        >>> noise_digest(torch.zeros(2, 3))
        'sha256:9d908ecfb6b256de'
    """
    return "sha256:" + hashlib.sha256(_tensor_bytes(noise)).hexdigest()[:length]


def _plain(value: object) -> bool:
    """A number, string, bool or None, or a tuple/list of them (nested)."""
    if isinstance(value, (tuple, list)):
        return all(_plain(v) for v in value)
    return isinstance(value, _PLAIN)


def _hash_tensor(digest: Any, name: str, tensor: torch.Tensor) -> None:
    data = tensor.detach().contiguous().reshape(-1).cpu()
    digest.update(f"{name}:{data.dtype}:{tuple(tensor.shape)};".encode())
    digest.update(_tensor_bytes(data))


def model_fingerprint(module: torch.nn.Module, length: int = 16) -> str:
    """A short hex SHA-256 identifying a module's weights and configuration.

    Covers: every parameter and buffer (name, dtype, shape and bytes); for every submodule, its class name and
    its public plain attributes (numbers, strings, bools, None and tuples/lists of them, by name and repr) and
    the tensors it holds as public plain attributes (as parameters). Cannot see: code (the bodies of
    ``forward`` and of the functions it calls), globals, private (``_``-prefixed) attributes other than
    parameters and buffers, attributes of other types (dicts, objects, callables), the ``training`` flag,
    and the device. Reads every tensor to the host once (seconds for billions of parameters).

    Example:
        >>> net = torch.nn.Linear(2, 2)
        >>> len(model_fingerprint(net)), model_fingerprint(net) == model_fingerprint(torch.nn.Linear(2, 2))
        (16, False)
    """
    digest = hashlib.sha256()
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        _hash_tensor(digest, name, tensor)
    for prefix, sub in module.named_modules():
        digest.update(f"module {prefix}:{type(sub).__module__}.{type(sub).__qualname__};".encode())
        for key, value in sorted(vars(sub).items()):
            if key.startswith("_") or key == "training":
                continue
            if isinstance(value, torch.Tensor):
                _hash_tensor(digest, f"{prefix}.{key}", value)
            elif _plain(value):
                digest.update(f"{key}={value!r};".encode())
    return digest.hexdigest()[:length]


def checkpoint_model_key(velocity: object, checkpoint: object, key: str | None) -> str:
    """The model identity a checkpoint header records: ``key`` and, for an ``nn.Module``, its fingerprint.

    A velocity that is not a module has no fingerprint: with a ``checkpoint`` it needs an explicit ``key``
    (ValueError otherwise), or a checkpoint written for another function would be resumed. Without a
    ``checkpoint`` nothing is recorded ("").

    Example:
        >>> checkpoint_model_key(lambda x, t: x, "run.npz", "identity-v1")
        'key:identity-v1'
    """
    if key is not None and (not isinstance(key, str) or not key):
        raise ValueError(f"checkpoint_key must be a non-empty str, got {key!r}")
    if checkpoint is None:
        return ""
    if isinstance(velocity, torch.nn.Module):
        return model_fingerprint(velocity) + ("" if key is None else f"|{key}")
    if key is None:
        raise ValueError(
            f"checkpoint= needs an identity for a velocity that is not a torch.nn.Module ({velocity!r} has "
            "no fingerprint): pass checkpoint_key='<a name that changes whenever the function does>'"
        )
    return f"key:{key}"


def content_digest(doc: Mapping[str, Any]) -> str:
    """SHA-256 (64 hex digits) of a JSON document without its ``sha256`` key, over a canonical text (sorted
    keys, no spaces; floats as Python's shortest round-trip repr, so a parsed document hashes like the
    written one).

    Example:
        >>> content_digest({"a": 1, "sha256": "x"}) == content_digest({"a": 1})
        True
    """
    body = {k: v for k, v in doc.items() if k != "sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _digest_into(digest: Any, value: object) -> None:
    """Feed ``value`` (tensors, dicts, lists, tuples, scalars, nested) into a hashlib ``digest``."""
    if isinstance(value, torch.Tensor):
        data = value.detach().contiguous().reshape(-1).cpu()
        digest.update(f"T{data.dtype}{tuple(value.shape)};".encode())
        digest.update(_tensor_bytes(data))
    elif isinstance(value, dict):
        digest.update(f"D{len(value)};".encode())
        for key in sorted(value, key=repr):
            digest.update(f"{key!r}:".encode())
            _digest_into(digest, value[key])
    elif isinstance(value, (list, tuple)):
        digest.update(f"L{len(value)};".encode())
        for item in value:
            _digest_into(digest, item)
    else:
        digest.update(f"{value!r};".encode())


def value_digest(value: object) -> str:
    """SHA-256 (64 hex digits) of nested tensors (dtype, shape, bytes), dicts (keys sorted by repr), lists,
    tuples and scalars (repr).

    Example:
        >>> value_digest({"step": 3, "w": torch.ones(2)}) == value_digest({"w": torch.ones(2), "step": 3})
        True
    """
    digest = hashlib.sha256()
    _digest_into(digest, value)
    return digest.hexdigest()


def arrays_digest(arrays: Mapping[str, np.ndarray]) -> str:
    """``"sha256:"`` and the SHA-256 (64 hex digits) of named arrays: for each name in sorted order, the name,
    the dtype (``dtype.str``, byte order included), the shape and the C-order bytes. An ``.npz`` file read
    back gives the same arrays, so a digest written beside them checks them.

    Example:
        >>> a = {"count": np.asarray(7), "sums": np.arange(3.0)}
        >>> arrays_digest(a) == arrays_digest(dict(reversed(a.items())))
        True
        >>> arrays_digest(a) == arrays_digest({**a, "sums": np.arange(3.0) * 2})
        False
    """
    digest = hashlib.sha256()
    for name in sorted(arrays):
        value = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{value.dtype.str}:{value.shape};".encode())
        digest.update(value.tobytes())
    return "sha256:" + digest.hexdigest()


def path_tag(path: str | os.PathLike, length: int = 12) -> str:
    """The first ``length`` hex digits of the SHA-256 of ``path`` made absolute: a name tied to one file
    (the disk store's folder of a checkpointed search), the same from any working directory.

    Example:
        >>> path_tag("/tmp/run.npz") == path_tag("/tmp/./run.npz")
        True
        >>> path_tag("/tmp/run.npz") == path_tag("/a/run.npz")
        False
    """
    text = os.path.abspath(os.fspath(path))
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:length]


def cache_key(parts: Sequence[object], noise: torch.Tensor, length: int = 20) -> str:
    """First ``length`` hex digits of the SHA-256 of JSON-able ``parts`` and a noise tensor (dtype, shape,
    bytes): the name of a cache folder that holds results for exactly these inputs.

    Example:
        >>> len(cache_key(["teacher", [0.0, 0.5, 1.0]], torch.zeros(2, 3)))
        20
    """
    digest = hashlib.sha256()
    digest.update(json.dumps(list(parts)).encode())
    digest.update(f"{noise.dtype}:{tuple(noise.shape)}".encode())
    digest.update(_tensor_bytes(noise))
    return digest.hexdigest()[:length]
