"""Large initializers held once, outside the graph proto (internal to the adapter).

A torchvision ResNet-50 is 100 MB of weights in 40 KB of graph; a vgg16_bn 530 MB.  Everything
refcam does to a graph (shape inference, layer discovery, the VJP build, an output list per session)
needs only the structure, so :class:`refcam.onnx.Model` splits the loaded proto once:

* a **skeleton**: the same :class:`onnx.ModelProto` in which every initializer of at least
  :data:`MIN_BYTES` bytes of ``raw_data`` keeps its name, element type and dims but no data; its
  ``data_location`` is ``EXTERNAL`` with location :data:`IN_MEMORY` (a name no file carries);
* **weights**: ``{name: numpy array}`` holding those values (read-only, one copy).

Sessions are created from the serialised skeleton with the weights handed to onnxruntime as
``SessionOptions.add_external_initializers`` (:class:`onnxruntime.OrtValue` views of the arrays):
no 500 MB proto is serialised, parsed or held per session.  :func:`join` rebuilds the full proto
when a caller needs the values inside it (:attr:`refcam.onnx.Model.proto`).

**onnxruntime copies them.**  Measured with onnxruntime 1.32: every session copies its external
initializers (+96 MiB of resident memory per ResNet-50 session at every optimisation level, for
64-byte- and page-aligned buffers alike; a one-``MatMul`` model with a 95 MiB weight shows the same
+96 MiB).  At ``ORT_ENABLE_ALL`` the convolution weights are then reordered into onnxruntime's
blocked (NCHWc) layout and the copies of the originals are freed (ResNet-50: +99 MiB resident
after ``malloc_trim``), so a session costs about one copy of the weights, and its creation peaks
at about two.  ``SessionOptions.add_initializer`` would share the arrays without a copy, but it
needs the full values in the graph proto, and onnxruntime's graph optimisations read *those*, not
the shared array: with a zero placeholder (a sparse file) every convolution ran on zero weights
and the ResNet-50 logits came out wrong by 111 (their whole size), silently.  Not used.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper

__all__ = ["IN_MEMORY", "MIN_BYTES", "external_names", "join", "split", "as_inputs"]

#: ``external_data`` location of an initializer whose values are in the weights mapping
IN_MEMORY = "refcam-in-memory-weights"
#: initializers with fewer bytes stay in the proto (shapes, axes, pads, small constants)
MIN_BYTES = 4096


def _is_in_memory(t: TensorProto) -> bool:
    return t.data_location == TensorProto.EXTERNAL and any(
        e.key == "location" and e.value == IN_MEMORY for e in t.external_data)


def split(proto: onnx.ModelProto, min_bytes: int | None = None) -> tuple[onnx.ModelProto, dict]:
    """``(skeleton, weights)`` of ``proto`` (see the module docstring).  ``proto`` is emptied of
    the moved values (its data are cleared); the skeleton is a compact new message.

    Only initializers of the main graph whose values are ``raw_data`` of a numeric element type
    are moved; others (typed fields, strings, subgraph initializers) stay where they are.
    """
    min_bytes = MIN_BYTES if min_bytes is None else min_bytes
    weights: dict[str, np.ndarray] = {}
    for t in proto.graph.initializer:
        if t.data_location != TensorProto.DEFAULT or t.name in weights:
            continue  # (duplicated initializer names: the graph is left as it is)
        try:
            dt = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type))
        except Exception:  # noqa: BLE001 - exotic element types stay in the proto
            continue
        nbytes = dt.itemsize * int(np.prod(t.dims, dtype=np.int64))
        if dt.kind not in "biuf" or nbytes < min_bytes:
            continue
        raw = t.raw_data  # (a copy: read once)
        if len(raw) != nbytes:  # values in the typed fields (float_data, ...): stay in the proto
            continue
        # raw_data is little-endian by the ONNX spec
        arr = np.frombuffer(raw, dtype=dt.newbyteorder("<")).reshape(tuple(t.dims))
        weights[t.name] = arr
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        del t.external_data[:]
        t.external_data.add(key="location", value=IN_MEMORY)
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(proto)  # compact: the cleared raw_data stay in proto's arena, freed with it
    return skeleton, weights


def external_names(proto: onnx.ModelProto) -> list[str]:
    """Names of the initializers of ``proto`` whose values live in the weights mapping."""
    return [t.name for t in proto.graph.initializer if _is_in_memory(t)]


def join(skeleton: onnx.ModelProto, weights: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """A full copy of ``skeleton`` with every in-memory initializer's values put back."""
    full = onnx.ModelProto()
    full.CopyFrom(skeleton)
    for t in full.graph.initializer:
        if _is_in_memory(t):
            t.raw_data = np.ascontiguousarray(weights[t.name]).astype(
                np.asarray(weights[t.name]).dtype.newbyteorder("<"), copy=False).tobytes()
            del t.external_data[:]
            t.ClearField("data_location")
    return full


def as_inputs(skeleton: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``skeleton`` whose in-memory initializers are graph inputs of their type and
    shape instead (what ``onnx.checker`` can check: it would look for a file of that location)."""
    out = onnx.ModelProto()
    out.CopyFrom(skeleton)
    g = out.graph
    moved = [t for t in g.initializer if _is_in_memory(t)]
    keep = [t for t in g.initializer if not _is_in_memory(t)]
    names = {i.name for i in g.input}
    g.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                   for t in moved if t.name not in names)
    del g.initializer[:]
    g.initializer.extend(keep)
    return out


def ort_values(weights: Mapping[str, np.ndarray], names: Iterable[str], cache: dict) -> list:
    """:class:`onnxruntime.OrtValue` views of ``weights[name]`` (no copy here; onnxruntime copies
    them into each session, see the module docstring), cached in ``cache``."""
    import onnxruntime as ort

    out = []
    for nm in names:
        v = cache.get(nm)
        if v is None:
            v = cache[nm] = ort.OrtValue.ortvalue_from_numpy(weights[nm])
        out.append(v)
    return out


# ----------------------------------------------------------------------------- loading a file
# ONNX protobuf field numbers (onnx/onnx.proto3): ModelProto.graph = 7, GraphProto.initializer = 5,
# TensorProto.raw_data = 9, TensorProto.external_data = 13, TensorProto.data_location = 14.
_MODEL_GRAPH, _GRAPH_INITIALIZER, _TENSOR_RAW, _TENSOR_EXTERNAL, _TENSOR_LOCATION = 7, 5, 9, 13, 14


def _varint(buf, i: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        b = buf[i]
        i += 1
        out |= (b & 0x7F) << shift
        if b < 0x80:
            return out, i
        shift += 7


def _enc_varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _fields(buf, start: int, end: int):
    """``(field number, wire type, field start, value start, value end)`` of a message's fields."""
    i = start
    while i < end:
        f0 = i
        key, i = _varint(buf, i)
        fn, wt = key >> 3, key & 7
        if wt == 0:
            _, j = _varint(buf, i)
        elif wt == 1:
            j = i + 8
        elif wt == 2:
            n, i = _varint(buf, i)
            j = i + n
        elif wt == 5:
            j = i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wt}")
        if j > end:
            raise ValueError("truncated protobuf message")
        yield fn, wt, f0, i, j
        i = j


def _len_field(fn: int, payload: bytes) -> bytes:
    return _enc_varint(fn << 3 | 2) + _enc_varint(len(payload)) + payload


def _in_memory_marker() -> bytes:
    entry = _len_field(1, b"location") + _len_field(2, IN_MEMORY.encode())
    return _enc_varint(_TENSOR_LOCATION << 3 | 0) + _enc_varint(TensorProto.EXTERNAL) + \
        _len_field(_TENSOR_EXTERNAL, entry)


def load_split(path: str, min_bytes: int | None = None) -> tuple[onnx.ModelProto, dict] | None:
    """:func:`split` of the ONNX file ``path`` without parsing its weights into a proto first.

    The structure is walked at the protobuf wire level through a memory map; every large
    ``raw_data`` of a main-graph initializer is read from the file once into its own (aligned)
    NumPy array, the rest is re-encoded into the skeleton.  Peak memory is one copy of the weights (an
    ``onnx.load`` + :func:`split` holds two), and the weights are never parsed by protobuf.
    Returns ``None`` when the file is not a plain single-file model this reader handles (external
    data files, unusual encodings): the caller then uses ``onnx.load``.
    """
    import mmap

    min_bytes = MIN_BYTES if min_bytes is None else min_bytes
    try:
        fh = open(path, "rb")
    except OSError:
        return None
    with fh:
        try:
            size = fh.seek(0, 2)
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        except (OSError, ValueError):
            return None
        if mm is None:
            return None
        try:
            return _walk(mm, fh, size, min_bytes)
        except Exception:  # noqa: BLE001 - anything unexpected: the plain loader decides
            return None
        finally:
            mm.close()


def _walk(mm, fh, size: int, min_bytes: int) -> tuple[onnx.ModelProto, dict] | None:
    """The structure is read through the map ``mm`` (only its pages are touched); the weights
    are read from ``fh`` straight into their arrays (no page of them stays mapped)."""
    weights: dict[str, np.ndarray] = {}
    marker = _in_memory_marker()
    model = bytearray()
    graphs = 0
    for fn, wt, f0, v0, v1 in _fields(mm, 0, size):
        if fn != _MODEL_GRAPH or wt != 2:
            model += mm[f0:v1]
            continue
        graphs += 1
        graph = bytearray()
        for gfn, gwt, g0, gv0, gv1 in _fields(mm, v0, v1):
            if gfn != _GRAPH_INITIALIZER or gwt != 2:
                graph += mm[g0:gv1]
                continue
            raw = None
            rest = bytearray()
            for tfn, twt, t0, tv0, tv1 in _fields(mm, gv0, gv1):
                if tfn == _TENSOR_RAW and twt == 2 and raw is None:
                    raw = (tv0, tv1)
                else:
                    rest += mm[t0:tv1]
            head = TensorProto.FromString(bytes(rest))
            if head.data_location == TensorProto.EXTERNAL:
                return None  # weights in external files: onnx.load resolves them
            moved = False
            if raw is not None and head.name not in weights:
                try:
                    dt = np.dtype(helper.tensor_dtype_to_np_dtype(head.data_type))
                except Exception:  # noqa: BLE001
                    dt = None
                n = int(np.prod(head.dims, dtype=np.int64))
                if dt is not None and dt.kind in "biuf" and dt.itemsize * n == raw[1] - raw[0] \
                        and dt.itemsize * n >= min_bytes:
                    arr = np.empty(tuple(head.dims), dtype=dt.newbyteorder("<"))
                    fh.seek(raw[0])
                    if fh.readinto(memoryview(arr.reshape(-1).view(np.uint8))) != raw[1] - raw[0]:
                        return None
                    arr.flags.writeable = False
                    weights[head.name] = arr
                    moved = True
            if moved:
                graph += _len_field(_GRAPH_INITIALIZER, bytes(rest) + marker)
            else:
                graph += mm[g0:gv1]
        model += _len_field(_MODEL_GRAPH, bytes(graph))
    if graphs != 1:
        return None
    return onnx.ModelProto.FromString(bytes(model)), weights
