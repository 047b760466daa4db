"""A small, safe, torch-free reader for PyTorch's *legacy* checkpoint format (internal).

``torch.save`` before PyTorch 1.6 (and ``_use_new_zipfile_serialization=False``
after it) writes one flat stream::

    pickle(magic number)  pickle(protocol version)  pickle(sys info)
    pickle(object)        pickle([storage keys])
    for each key: int64 little-endian element count, then the raw storage bytes

The object pickle refers to storages through *persistent ids*
``("storage", StorageType, key, location, numel[, view_metadata])`` and rebuilds
tensors with ``torch._utils._rebuild_tensor_v2``.  Unpickling arbitrary data can
run arbitrary code, so this reader uses a restricted :class:`pickle.Unpickler`:
``find_class`` resolves only ``collections.OrderedDict``, the tensor rebuild
functions and the typed storage classes, each mapped to a NumPy stand-in, and
refuses every other global with a :class:`~refcam.errors.ModelError`.  Tensors
come back as NumPy arrays (copies, C-contiguous, the storage's dtype, 0-d kept 0-d).

Only the legacy stream is read; the zip format of ``torch.save`` >= 1.6 and the
older tar format are recognised and refused with a clear message.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
from typing import Any, BinaryIO

import numpy as np

from ..errors import ModelError

__all__ = ["load_legacy_state_dict"]

#: The magic number ``torch.serialization`` writes first in a legacy file.
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

_STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class _StorageType:
    """Stand-in for ``torch.FloatStorage`` & co.: only carries the dtype."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"torch.{self.name}"


class _Storage:
    """A storage announced by the object pickle; its bytes arrive after it."""

    def __init__(self, key: str, dtype: np.dtype, numel: int) -> None:
        self.key = key
        self.dtype = dtype
        self.numel = numel
        self.data: np.ndarray | None = None


class _StorageView:
    """A legacy storage view: ``numel`` elements of ``root`` from element ``offset``."""

    def __init__(self, root: _Storage, offset: int, numel: int) -> None:
        self.root = root
        self.offset = offset
        self.numel = numel


class _LazyTensor:
    """What ``_rebuild_tensor(_v2)`` returns until the storage bytes have been read."""

    def __init__(self, storage: Any, offset: Any, size: Any, stride: Any) -> None:
        if not isinstance(storage, (_Storage, _StorageView)):
            raise ModelError(
                f"weights file: a tensor refers to {type(storage).__name__}, expected a storage"
            )
        try:
            self.offset = int(offset)
            self.size = tuple(int(s) for s in size)
            self.stride = tuple(int(s) for s in stride)
        except (TypeError, ValueError):
            raise ModelError(
                "weights file: a tensor has a malformed offset, size or stride"
            ) from None
        if len(self.size) != len(self.stride):
            raise ModelError(
                f"weights file: tensor size {self.size} and stride {self.stride} differ in rank"
            )
        self.storage = storage

    def materialize(self) -> np.ndarray:
        st = self.storage
        if isinstance(st, _StorageView):
            base, start, numel = st.root, st.offset, st.numel
        else:
            base, start, numel = st, 0, st.numel
        assert base.data is not None
        flat = base.data[start : start + numel]
        if any(s < 0 for s in self.size) or any(s < 0 for s in self.stride) or self.offset < 0:
            raise ModelError(
                f"weights file: negative size/stride/offset in tensor {self.size}/{self.stride}"
            )
        if 0 in self.size:
            return np.zeros(self.size, dtype=flat.dtype)
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if last >= flat.size:
            raise ModelError(
                f"weights file: tensor of size {self.size}, stride {self.stride} and offset {self.offset} "
                f"reads past its storage of {flat.size} elements"
            )
        item = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset :],
            shape=self.size,
            strides=[s * item for s in self.stride],
            writeable=False,
        )
        return np.array(view, copy=True, order="C")  # (ascontiguousarray would turn 0-d into 1-d)


def _rebuild_tensor_v2(
    storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None
):
    return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals in ``_ALLOWED``; everything else is refused."""

    def __init__(self, file: BinaryIO, storages: dict[str, _Storage] | None = None) -> None:
        super().__init__(file)
        self.storages = storages

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise ModelError(
                f"weights file: refusing to load the global {module}.{name}; this safe reader only "
                "allows collections.OrderedDict, torch._utils._rebuild_tensor(_v2) and torch.*Storage"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        if self.storages is None:
            raise ModelError("weights file: unexpected persistent id in the file header")
        if not isinstance(pid, tuple) or not pid:
            raise ModelError(f"weights file: malformed persistent id {pid!r}")
        if pid[0] == "module":  # source of a pickled nn.Module class: not needed for a state dict
            return None
        if pid[0] != "storage" or len(pid) != 6:
            raise ModelError(f"weights file: unsupported persistent id of kind {pid[0]!r}")
        _, stype, key, _location, numel, view_metadata = pid
        if not isinstance(stype, _StorageType):
            raise ModelError(f"weights file: storage of unknown type {stype!r}")
        key, numel = str(key), int(numel)
        root = self.storages.get(key)
        if root is None:
            root = self.storages[key] = _Storage(key, stype.dtype, numel)
        if view_metadata is None:
            return root
        _view_key, offset, view_size = view_metadata
        return _StorageView(root, int(offset), int(view_size))


def _unpickle(f: BinaryIO, storages: dict[str, _Storage] | None = None) -> Any:
    try:
        return _RestrictedUnpickler(f, storages).load()
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001  (truncated or garbled pickles raise anything)
        raise ModelError(
            f"weights file: cannot be unpickled ({type(exc).__name__}: {exc})"
        ) from None


def _resolve(obj: Any) -> Any:
    """Replace every lazy tensor in (nested) dicts/lists/tuples by its ndarray."""
    if isinstance(obj, _LazyTensor):
        return obj.materialize()
    if isinstance(obj, collections.OrderedDict):
        return collections.OrderedDict((k, _resolve(v)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: _resolve(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_resolve(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_resolve(v) for v in obj)
    return obj


def load_legacy_state_dict(path: str | os.PathLike) -> collections.OrderedDict:
    """Read a legacy-format ``torch.save`` file into an ordered dict of NumPy arrays.

    Parameters
    ----------
    path : path of the ``.pth``/``.pt`` file (legacy, non-zip, non-tar stream).

    Returns
    -------
    collections.OrderedDict mapping parameter/buffer names to ndarrays with the
    storage dtype (``float32`` for ``FloatStorage``, ``int64`` for ``LongStorage`` ...).

    Raises
    ------
    ModelError
        File missing, in the zip or tar format, truncated, or referring to any
        global other than the tensor rebuild functions and storage types.

    Examples
    --------
    >>> import os
    >>> load_legacy_state_dict(os.devnull)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    refcam.errors.ModelError: weights file ...: empty file, expected a legacy torch.save stream
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise ModelError(f"weights file {path!r}: cannot be read ({exc.strerror})") from None
    if not raw:
        raise ModelError(f"weights file {path!r}: empty file, expected a legacy torch.save stream")
    if raw[:4] == b"PK\x03\x04":
        raise ModelError(
            f"weights file {path!r}: is in the zip format of torch.save >= 1.6; only the legacy stream "
            "format is supported by this reader"
        )
    if len(raw) > 262 and raw[257:262] == b"ustar":
        raise ModelError(
            f"weights file {path!r}: is in the old tar format; only the legacy stream is supported"
        )
    f = io.BytesIO(raw)
    magic = _unpickle(f)
    if magic != LEGACY_MAGIC:
        raise ModelError(
            f"weights file {path!r}: got magic number {magic!r}, expected {LEGACY_MAGIC:#x}"
        )
    protocol = _unpickle(f)
    if protocol != LEGACY_PROTOCOL:
        raise ModelError(
            f"weights file {path!r}: got protocol version {protocol!r}, expected {LEGACY_PROTOCOL}"
        )
    sys_info = _unpickle(f)
    if not isinstance(sys_info, dict) or not sys_info.get("little_endian", False):
        raise ModelError(
            f"weights file {path!r}: written on a big-endian machine, which is not supported"
        )
    storages: dict[str, _Storage] = {}
    obj = _unpickle(f, storages)
    keys = _unpickle(f)
    if not isinstance(keys, list):
        raise ModelError(f"weights file {path!r}: malformed storage key list")
    for key in keys:
        st = storages.get(str(key))
        if st is None:
            raise ModelError(
                f"weights file {path!r}: storage {key!r} is listed but never referenced"
            )
        head = f.read(8)
        if len(head) != 8:
            raise ModelError(f"weights file {path!r}: truncated before storage {key!r}")
        (count,) = struct.unpack("<q", head)
        if count != st.numel:
            raise ModelError(
                f"weights file {path!r}: storage {key!r} holds {count} elements, expected {st.numel}"
            )
        nbytes = count * st.dtype.itemsize
        buf = f.read(nbytes)
        if len(buf) != nbytes:
            raise ModelError(f"weights file {path!r}: truncated inside storage {key!r}")
        st.data = np.frombuffer(buf, dtype=st.dtype)
    missing = [k for k, s in storages.items() if s.data is None]
    if missing:
        raise ModelError(
            f"weights file {path!r}: storages {missing[:5]} are referenced but not stored"
        )
    result = _resolve(obj)
    if not isinstance(result, dict):
        raise ModelError(
            f"weights file {path!r}: holds a {type(result).__name__}, expected a state dict"
        )
    return result
