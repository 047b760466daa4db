"""Large initializers held once, outside the graph proto (internal to the adapter).

A torchvision ResNet-50 is 100 MB of weights in 40 KB of graph; a vgg16_bn 530 MB.  Everything
refcam does to a graph (shape inference, layer discovery, the VJP build, an output list per session)
needs only the structure, so :class:`refcam.onnx.Model` splits the loaded proto once:

* a **skeleton**: the same :class:`onnx.ModelProto` in which every initializer of at least
  :data:`MIN_BYTES` bytes of ``raw_data`` keeps its name, element type and dims but no data; its
  ``data_location`` is ``EXTERNAL`` with location :data:`IN_MEMORY` (a name no file carries);
* **weights**: ``{name: numpy array}`` holding those values (read-only, one copy).

Sessions are created from the serialised skeleton with the weights handed to onnxruntime as
``SessionOptions.add_external_initializers`` (:class:`onnxruntime.OrtValue` views of the arrays, no
copy): every session of a model (forward outputs, VJP graphs) shares the one copy, and no
500 MB proto is serialised per session.  :func:`join` rebuilds the full proto when a caller needs
the values inside it (:attr:`refcam.onnx.Model.proto`).
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
    """:class:`onnxruntime.OrtValue` views of ``weights[name]`` (no copy), cached in ``cache``."""
    import onnxruntime as ort

    out = []
    for nm in names:
        v = cache.get(nm)
        if v is None:
            v = cache[nm] = ort.OrtValue.ortvalue_from_numpy(weights[nm])
        out.append(v)
    return out
