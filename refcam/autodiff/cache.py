"""On-disk cache of built gradient graphs, so that a second process starts warm.

:func:`refcam.autodiff.gradients` builds one VJP graph per model, ``wrt`` set, rule set, seed mode
and target kind (:func:`~refcam.autodiff.build_vjp_model`).  The graph is built from the model's
*skeleton* (:mod:`refcam.onnx._weights`: the graph without its large initializers), so a cached
graph is small (the ResNet-50 gradient graph is ~60 KB; the 100 MB of weights are never written) and
serves every copy of the model whatever its weight values, unless a rule read a weight's value
(then that weight's SHA-256 is part of the entry and checked on every hit).

Location
    ``$REFCAM_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/refcam`` (default ``~/.cache/refcam``;
    ``%LOCALAPPDATA%\\refcam\\cache`` on Windows); gradient graphs live in its ``vjp/`` folder.
Switch
    ``REFCAM_CACHE=0`` (or ``off``/``false``/``no``) disables reading and writing.
Size
    at most ``$REFCAM_CACHE_MAX_MB`` MiB (default 256) of entries; past it the least recently used
    entries are removed (the one just written is kept).  ``refcam cache info`` / ``refcam cache clear`` (CLI) or
    :func:`cache_info` / :func:`clear_cache`.

Key (SHA-256 of, in order): the entry format, refcam's version, the SHA-256 of the source of the
gradient floor (every ``refcam/autodiff/*.py``: any rule change is a new key), onnx's version (its
shape inference feeds the builder), the deterministic serialisation of the skeleton the graph is
built from (outputs, attached target nodes and small initializers included), ``wrt``, the rule set,
the seed mode, and the input signature (shape without the batch axis, dtype).

An entry is one file ``<key>.vjp``: a magic line, a JSON header line (key fields, payload SHA-256,
SHA-256 of the weights whose values the build read) and the serialised graph.  It is written
atomically (temporary file + rename).  An entry that fails any check (magic, JSON, payload hash,
parse, weight hashes) is deleted and rebuilt, never used.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from functools import lru_cache
from pathlib import Path
from typing import Mapping

import numpy as np
import onnx

__all__ = ["cache_dir", "cache_enabled", "cache_info", "clear_cache", "graph_key", "load_graph",
           "store_graph"]

#: version of the entry format (part of every key)
FORMAT = 1
_MAGIC = b"REFCAM-VJP-CACHE 1\n"
_SUFFIX = ".vjp"
DEFAULT_MAX_MB = 256


def cache_dir() -> Path:
    """Folder of the gradient-graph cache (see the module docstring); not created here."""
    root = os.environ.get("REFCAM_CACHE_DIR")
    if root:
        return Path(root).expanduser() / "vjp"
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or os.path.expanduser("~")
        return Path(base) / "refcam" / "cache" / "vjp"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "refcam" / "vjp"


def cache_enabled() -> bool:
    """``False`` when ``REFCAM_CACHE`` is ``0``/``off``/``false``/``no``."""
    return os.environ.get("REFCAM_CACHE", "1").strip().lower() not in ("0", "off", "false", "no")


def _max_bytes() -> int:
    try:
        return int(float(os.environ.get("REFCAM_CACHE_MAX_MB", DEFAULT_MAX_MB)) * 2**20)
    except ValueError:
        return DEFAULT_MAX_MB * 2**20


@lru_cache(maxsize=1)
def rules_hash() -> str:
    """SHA-256 of the source of every module of the gradient floor (``refcam/autodiff/*.py``)."""
    h = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for p in sorted(here.glob("*.py")):
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def graph_key(skeleton: onnx.ModelProto, wrt, rules: str, seed_mode: str, signature) -> str:
    """Cache key of the gradient graph built from ``skeleton`` (see the module docstring)."""
    from .. import __version__

    h = hashlib.sha256()
    for part in (f"format {FORMAT}", f"refcam {__version__}", f"rules {rules_hash()}",
                 f"onnx {onnx.__version__}", json.dumps([list(wrt), rules, seed_mode, repr(signature)])):
        h.update(part.encode() + b"\0")
    h.update(skeleton.SerializeToString(deterministic=True))
    return h.hexdigest()


def _path(key: str) -> Path:
    return cache_dir() / (key + _SUFFIX)


def _weights_sha(weights: Mapping[str, np.ndarray], names) -> dict:
    return {nm: hashlib.sha256(np.ascontiguousarray(weights[nm]).tobytes()).hexdigest()
            for nm in sorted(names)}


def load_graph(key: str, weights: Mapping[str, np.ndarray] | None = None) -> onnx.ModelProto | None:
    """The cached graph of ``key``, or ``None`` (disabled, absent, or invalid: then deleted)."""
    if not cache_enabled():
        return None
    p = _path(key)
    try:
        data = p.read_bytes()
    except OSError:
        return None
    try:
        if not data.startswith(_MAGIC):
            raise ValueError("bad magic")
        nl = data.index(b"\n", len(_MAGIC))
        header = json.loads(data[len(_MAGIC):nl])
        payload = data[nl + 1:]
        if header.get("key") != key or header.get("payload_sha256") != hashlib.sha256(payload).hexdigest():
            raise ValueError("checksum")
        read = header.get("weights_sha256", {})
        if read and (weights is None or any(nm not in weights for nm in read)
                     or _weights_sha(weights, read) != read):
            raise ValueError("weights differ")
        graph = onnx.load_from_string(payload)
    except Exception:  # noqa: BLE001 - any damage: the entry is removed and the graph rebuilt
        with contextlib.suppress(OSError):
            p.unlink()
        return None
    with contextlib.suppress(OSError):
        os.utime(p)  # least recently used eviction reads the modification time
    return graph


def store_graph(key: str, graph: onnx.ModelProto, weights: Mapping[str, np.ndarray] | None = None,
                info: dict | None = None) -> Path | None:
    """Write ``graph`` under ``key`` atomically (no-op when disabled; I/O errors are ignored:
    the cache only saves time).  Returns the entry's path or ``None``."""
    if not cache_enabled():
        return None
    from .._outputs import write_atomic

    meta = {p.key: p.value for p in graph.metadata_props}
    read = json.loads(meta.get("refcam.weights_read", "[]"))
    payload = graph.SerializeToString()
    header = {"key": key, "payload_sha256": hashlib.sha256(payload).hexdigest(),
              "weights_sha256": _weights_sha(weights or {}, [nm for nm in read if weights and nm in weights]),
              **(info or {})}
    try:
        p = write_atomic(_path(key), _MAGIC + json.dumps(header).encode() + b"\n" + payload)
        _evict(_max_bytes(), keep=p)
    except OSError:
        return None
    return p


def _entries() -> list[Path]:
    try:
        return [p for p in cache_dir().iterdir() if p.suffix == _SUFFIX and p.is_file()]
    except OSError:
        return []


def _evict(limit: int, keep: Path | None = None) -> None:
    """Remove the least recently used entries (never ``keep``, the entry just written) until the
    total size is at most ``limit`` bytes."""
    files = []
    for p in _entries():
        with contextlib.suppress(OSError):
            st = p.stat()
            files.append((st.st_mtime, st.st_size, p))
    total = sum(s for _, s, _ in files)
    for _, size, p in sorted(files, key=lambda f: f[0]):
        if total <= limit:
            break
        if keep is not None and p == keep:
            continue
        with contextlib.suppress(OSError):
            p.unlink()
            total -= size


def cache_info() -> dict:
    """``{"path", "enabled", "entries", "bytes", "max_bytes"}`` of the gradient-graph cache."""
    files = _entries()
    size = 0
    for p in files:
        with contextlib.suppress(OSError):
            size += p.stat().st_size
    return {"path": str(cache_dir()), "enabled": cache_enabled(), "entries": len(files),
            "bytes": size, "max_bytes": _max_bytes()}


def clear_cache() -> int:
    """Delete every entry (and stale temporary files); returns the number of entries removed."""
    n = 0
    for p in _entries():
        with contextlib.suppress(OSError):
            p.unlink()
            n += 1
    with contextlib.suppress(OSError):
        for p in cache_dir().glob(".*.part"):
            p.unlink()
    return n
