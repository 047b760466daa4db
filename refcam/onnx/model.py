"""The ONNX model object: loading, layer discovery, batched runs returning any tensors, head cuts.

Weights and sessions
--------------------
A model is held as :attr:`Model.skeleton` (the graph with its large initializers reduced to name,
type and dims) and :attr:`Model.weights` (their values, one NumPy copy): see
:mod:`refcam.onnx._weights`.  Each distinct *set* of requested tensors gets its own
:class:`onnxruntime.InferenceSession`, built from the skeleton with ``graph.output`` listing exactly
those tensors (so onnxruntime prunes everything else, e.g. a trailing Softmax); the weights are
handed to every session from :attr:`Model.weights` (:meth:`Model.new_session`; onnxruntime keeps
its own copy per session, see :mod:`refcam.onnx._weights`).  Sessions live in a small LRU
cache (``max_sessions``) keyed by the frozenset of names; the file on disk is never written.

Batching
--------
:meth:`Model.run` splits the batch into chunks.  ``batch_size`` fixes the chunk; otherwise the
first sample is run alone, the bytes per sample of input + requested tensors are measured, and the
chunk is ``memory_budget // bytes_per_sample`` (at least 1).  Models whose batch axis is fixed
(to 1 or any ``B``) run in chunks of ``B``, padding the last chunk by repeating its last sample.
"""

from __future__ import annotations

import os
import sys
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any, NamedTuple

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from .. import _validate as V
from ..errors import InvalidArgumentError, ModelError, ShapeError
from . import _weights
from .head import cut_head, linear_head
from .layers import (
    LayerInfo,
    default_layer,
    discover_layers,
    graph_layouts,
    input_layout,
    map_positions,
    resolve_layer,
)
from .layout import LAYOUT_HELP, Layout, parse_layout

__all__ = ["LAYOUTS", "Forward", "Model", "load", "max_ir_version"]

LAYOUTS = {
    "NCHW": False,
    "NCDHW": False,
    "channels_first": False,
    "NHWC": True,
    "NDHWC": True,
    "channels_last": True,
}
DEFAULT_MEMORY_BUDGET = 64 * 2**20


@lru_cache(maxsize=1)
def max_ir_version() -> int:
    """Highest ONNX IR version the installed onnxruntime loads (probed once with a 1-node model)."""
    g = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    for ir in range(onnx.IR_VERSION, 6, -1):
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=ir)
        try:
            ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
            return ir
        except Exception:
            continue
    return 7


class Forward(NamedTuple):
    """Result of :meth:`Model.forward`: the target output tensor and channels-first activations."""

    outputs: np.ndarray
    activations: dict


def _load_proto(source: Any, base_dir: str | None) -> onnx.ModelProto:
    if isinstance(source, onnx.ModelProto):
        proto = onnx.ModelProto()
        proto.CopyFrom(source)
        if base_dir is not None:
            from onnx.external_data_helper import load_external_data_for_model

            try:
                load_external_data_for_model(proto, base_dir)
            except Exception as exc:
                raise ModelError(
                    f"model: could not load external data from {base_dir!r}: {exc}"
                ) from exc
        what = "ModelProto"
    elif isinstance(source, (bytes, bytearray, memoryview)):
        try:
            proto = onnx.load_from_string(bytes(source))
        except Exception as exc:
            raise ModelError(
                f"model: could not parse {len(source)} bytes as an ONNX model ({type(exc).__name__}: {exc})"
            ) from exc
        what = f"{len(source)} bytes"
    elif isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise ModelError(f"model: file {path!r} does not exist")
        if os.path.isdir(path):
            raise ModelError(f"model: {path!r} is a directory, expected an .onnx file")
        try:
            # reads the file (and external data next to it); never writes
            proto = onnx.load(path, load_external_data=True)
        except Exception as exc:
            raise ModelError(
                f"model: could not read {path!r} as an ONNX model ({type(exc).__name__}: {exc})"
            ) from exc
        what = repr(path)
    else:
        raise ModelError(
            f"model: got {type(source).__name__}, expected a path, bytes, onnx.ModelProto or refcam.onnx.Model"
        )
    if not proto.graph.node or not proto.graph.output or not proto.opset_import:
        raise ModelError(f"model: {what} is not an ONNX model (no graph nodes, outputs or opset)")
    return proto


class Model:
    """An ONNX model ready for CAM: layers, batched runs returning any tensors, head cuts.

    Parameters
    ----------
    source : path (``str``/``PathLike``, external data files next to it are loaded), ``bytes``, an
        :class:`onnx.ModelProto` (copied, never modified) or another :class:`Model` (its proto).
    providers : onnxruntime execution providers (default ``["CPUExecutionProvider"]``).
    intra_op_num_threads, inter_op_num_threads : onnxruntime thread settings (``None``: its default).
    session_options : a ready :class:`onnxruntime.SessionOptions` (overrides the thread settings).
    layout : ``"NCHW"``/``"NCDHW"``/``"channels_first"`` (default) or ``"NHWC"``/``"NDHWC"``/
        ``"channels_last"``: the layout of the model input and of its spatial activations.
        :meth:`forward` returns activations transposed to channels-first ``(N, K, *S)``.
    output : name of the tensor whose entries are the class scores ``y^c``; default: the first
        graph output, or the input of its producing Softmax/LogSoftmax when ``strip_softmax``.
    strip_softmax : target pre-softmax logits when the model ends in Softmax (default ``True``).
    input_name : the input to explain (needed only when the graph has several non-initializer
        inputs).
    other_inputs : ``{name: array}`` the values of the other inputs, batch first: ``(N, ...)`` (one
        row per explained sample) or ``(1, ...)`` (the same for every sample).  They are held
        fixed: gradients and perturbations act on ``input_name`` only.
    memory_budget : bytes of input + returned tensors per onnxruntime call (default 64 MiB).
    base_dir : directory of external data files when ``source`` is a ModelProto whose external
        data is not loaded yet.
    max_sessions : size of the session cache.
    layer_layouts : ``{layer: layout}`` explicit layouts of layers whose layout the graph does not
        determine (:func:`refcam.onnx.layout.parse_layout`: ``"NHWC"``, ``"NTC:1+14x14"``, …);
        also settable later in :attr:`layer_layouts` (keys are resolved tensor names).

    Attributes
    ----------
    skeleton : the loaded graph whose large initializers hold no data (see the module docstring).
    weights : ``{initializer name: read-only array}`` of those values.
    proto : the full :class:`onnx.ModelProto`, rebuilt from both on first access.

    Examples
    --------
    >>> from refcam.onnx.toy_models import cam_net
    >>> import numpy as np
    >>> m = Model(cam_net())
    >>> m.default_layer().name, m.output_name
    ('features', 'logits')
    >>> fw = m.forward(np.zeros((2, 3, 12, 12), np.float32), ["features"])
    >>> fw.outputs.shape, fw.activations["features"].shape
    ((2, 5), (2, 6, 12, 12))
    """

    def __init__(
        self,
        source: Any,
        *,
        providers: Sequence[Any] | None = None,
        intra_op_num_threads: int | None = None,
        inter_op_num_threads: int | None = None,
        session_options: ort.SessionOptions | None = None,
        layout: str = "NCHW",
        output: str | None = None,
        strip_softmax: bool = True,
        input_name: str | None = None,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        base_dir: str | None = None,
        max_sessions: int = 8,
        layer_layouts: dict | None = None,
        other_inputs: dict | None = None,
    ) -> None:
        if isinstance(source, Model):
            source = source._full if source._full is not None else \
                _weights.join(source.skeleton, source.weights)
        # the graph without its large initializers (shape inference, layers, sessions, VJP builds)
        # and their values held once, shared by every session (refcam.onnx._weights)
        fast = None
        if isinstance(source, (str, os.PathLike)) and os.path.isfile(source):
            fast = _weights.load_split(os.fspath(source))  # weights read once, never parsed
        if fast is not None and fast[0].graph.node and fast[0].graph.output and fast[0].opset_import:
            self.skeleton, self.weights = fast
        else:
            self.skeleton, self.weights = _weights.split(_load_proto(source, base_dir))
        missing = [nm for nm in _weights.external_names(self.skeleton) if nm not in self.weights]
        if missing:
            raise ModelError(
                f"model: initializer(s) {missing[:3]} hold no values: their data live in another "
                "refcam Model's weights (a skeleton proto); pass that refcam.onnx.Model or its .proto"
            )
        self._full: onnx.ModelProto | None = None
        self._ort_values: dict = {}
        self.ir_version_loaded = self.skeleton.ir_version
        if self.skeleton.ir_version > max_ir_version():
            # onnx >= 1.23 writes IR 14 by default; onnxruntime may load only up to 13.  Only the
            # in-memory copy is changed.
            self.skeleton.ir_version = max_ir_version()
        self.layout = V.choice(layout, "layout", list(LAYOUTS))
        self.channels_last = LAYOUTS[layout]
        self.providers = list(providers) if providers is not None else ["CPUExecutionProvider"]
        self._threads = (intra_op_num_threads, inter_op_num_threads)
        for v, nm in zip(self._threads, ("intra_op_num_threads", "inter_op_num_threads")):
            if v is not None:
                V.positive_int(v, nm)
        self._session_options = session_options
        self.memory_budget = V.positive_int(memory_budget, "memory_budget")
        self.max_sessions = V.positive_int(max_sessions, "max_sessions")
        self._sessions: OrderedDict = OrderedDict()
        self._bytes_per_sample: dict = {}
        self._heads: dict = {}
        self._runtime_shapes: dict = {}

        try:
            self._inferred = onnx.shape_inference.infer_shapes(
                self.skeleton, strict_mode=False, data_prop=True
            )
        except Exception:  # foreign graphs: keep going without shapes
            self._inferred = self.skeleton
        g = self._inferred.graph
        self.value_info = {
            vi.name: vi for vi in list(g.value_info) + list(g.input) + list(g.output)
        }
        self._layers = discover_layers(self.skeleton, self._inferred)
        self._layouts: dict | None = None
        self._layout_shapes: dict = {}
        self._with_layout: dict = {}

        inits = {t.name for t in self.skeleton.graph.initializer}
        real_inputs = [i for i in self.skeleton.graph.input if i.name not in inits]
        names_in = [i.name for i in real_inputs]
        if input_name is None:
            if len(real_inputs) != 1:
                raise ModelError(
                    f"model: has {len(real_inputs)} inputs {names_in}, expected exactly 1 input "
                    f"to explain: pass input_name= (CLI --input-name) and the others' values "
                    f"as other_inputs= (CLI --other-input NAME=FILE.npy)"
                )
            self.input_name = real_inputs[0].name
        else:
            if input_name not in names_in:
                raise InvalidArgumentError("input_name", input_name, f"one of {names_in}")
            self.input_name = input_name
        others = dict(other_inputs or {})
        missing = [nm for nm in names_in if nm != self.input_name and nm not in others]
        unknown = [nm for nm in others if nm not in names_in or nm == self.input_name]
        if missing or unknown:
            raise InvalidArgumentError(
                "other_inputs", sorted(others), f"an array for each of {sorted(set(names_in) - {self.input_name})}"
                f" (the inputs not explained)" + (f"; not inputs of the model: {unknown}" if unknown else "")
            )
        self.other_inputs: dict = {}
        for vi in real_inputs:
            if vi.name in others:
                et = vi.type.tensor_type.elem_type
                arr = np.asarray(others[vi.name])
                if arr.ndim == 0 or arr.dtype.kind not in "biuf":
                    raise InvalidArgumentError(f"other_inputs[{vi.name!r}]", arr.shape,
                                               "a real array (N, ...) or (1, ...) with a batch axis")
                self.other_inputs[vi.name] = np.ascontiguousarray(
                    arr, dtype=helper.tensor_dtype_to_np_dtype(et) if et else arr.dtype)
        vi = next(i for i in real_inputs if i.name == self.input_name)
        tt = vi.type.tensor_type
        if tt.elem_type not in (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16):
            raise ModelError(
                f"model: input {self.input_name!r} has element type "
                f"{TensorProto.DataType.Name(tt.elem_type)}, expected a float tensor"
            )
        self.input_dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type))
        # None: rank unknown (graphs cut from foreign exporters without shape information)
        self.input_shape: tuple | None = (
            tuple(
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in tt.shape.dim
            )
            if tt.HasField("shape")
            else None
        )
        if self.input_shape is not None and len(self.input_shape) < 2:
            raise ModelError(
                f"model: input {self.input_name!r} has shape {self.input_shape}, expected (N, C, *S)"
            )
        b0 = self.input_shape[0] if self.input_shape else None
        self.fixed_batch: int | None = b0 if isinstance(b0, int) and b0 > 0 else None

        self.graph_outputs = [o.name for o in self.skeleton.graph.output]
        self.softmax_stripped = False
        if output is None:
            output = self.graph_outputs[0]
            prod = self._producer(output)
            while strip_softmax and prod is not None and prod.op_type == "Identity":
                prod = self._producer(prod.input[0])  # PaddlePaddle: Softmax -> Identity -> output
            if strip_softmax and prod is not None and prod.op_type in ("Softmax", "LogSoftmax"):
                output = prod.input[0]
                self.softmax_stripped = True
        elif output not in self.graph_outputs and self._info(output) is None:
            self._raise_unknown(output, "output")
        self.output_name = output
        if self.input_shape is not None:  # a graph input can be named as the layer
            self._layers.insert(0, LayerInfo(
                self.input_name, "Input", "", self.input_shape, tt.elem_type, None, -1))
        self.layer_layouts: dict = {}
        for k, v in (layer_layouts or {}).items():
            self.set_layer_layout(k, v)

    # ------------------------------------------------------------------ structure
    def _producer(self, name: str) -> onnx.NodeProto | None:
        for n in self.skeleton.graph.node:
            if name in n.output:
                return n
        return None

    def _info(self, name: str) -> LayerInfo | None:
        return next((li for li in self._layers if li.name == name), None)

    def _raise_unknown(self, name: str, argument: str) -> None:
        resolve_layer(name, self._layers, argument=argument)

    def layers(self) -> list[LayerInfo]:
        """Every candidate tensor (graph input, non-constant floating tensors) in graph order,
        each with its :class:`~refcam.onnx.layout.Layout`."""
        return [self._laid(li) for li in self._layers]

    def layer(self, name: str | LayerInfo, *, argument: str = "layer") -> LayerInfo:
        """Resolve a tensor name, node name or module path (``layer4``) to its :class:`LayerInfo`
        (with its layout).  Names meaning several tensors raise
        :class:`~refcam.errors.AmbiguousLayerError`."""
        if isinstance(name, LayerInfo):
            name = name.name
        return self._laid(resolve_layer(name, self._layers, argument=argument))

    # ------------------------------------------------------------------ layer layouts
    def _graph_layouts(self) -> dict:
        """Inferred layout of every tensor (computed once; may run the model on a dummy batch to
        learn the shapes a legacy export computes at run time)."""
        if self._layouts is None:
            rank = len(self.input_shape) if self.input_shape is not None else None
            inputs = {} if rank is None else {self.input_name: input_layout(rank, self.channels_last)}
            probe = None
            fixed = self.input_shape is not None and all(
                isinstance(d, int) and d > 0 for d in self.input_shape[1:]
            )
            if fixed and self.fixed_batch is None:
                def probe(names, batch):
                    x = np.zeros((batch, *self.input_shape[1:]), dtype=self.input_dtype)
                    feed = {self.input_name: x}
                    for nm, v in self.other_inputs.items():
                        feed[nm] = np.repeat(v[:1], batch, axis=0)
                    outs = self.session(names).run(list(names), feed)
                    return {n: tuple(o.shape) for n, o in zip(names, outs)}
            try:
                self._layouts, self._layout_shapes = graph_layouts(self.skeleton, inputs, probe=probe)
            except Exception:  # noqa: BLE001 - no inference: every layout unclear, never guessed
                self._layouts, self._layout_shapes = {}, {}
        return self._layouts

    def _laid(self, li: LayerInfo) -> LayerInfo:
        lay = self.layer_layouts.get(li.name)
        if lay is None:
            lay = self._graph_layouts().get(li.name)
            if lay is None:
                lay = Layout((None,) * (li.rank or 0), reason="no layout could be inferred"
                             + ("" if li.rank is not None else " (unknown rank)"))
        key = (li.name, lay)
        if key not in self._with_layout:
            from dataclasses import replace

            # sizes static inference left symbolic (``unk__3``) but that scale with the batch or
            # are fixed at two batch sizes (see layers.merge_batch_shapes) are filled in
            shape = li.shape
            known = self._layout_shapes.get(li.name)
            if shape is not None and known is not None and len(known) == len(shape):
                shape = tuple(
                    k if (d is None or (isinstance(d, str) and d.startswith("unk__"))) and k is not None
                    else d
                    for d, k in zip(shape, known)
                )
            self._with_layout[key] = replace(li, layout=lay, shape=shape)
        return self._with_layout[key]

    def set_layer_layout(self, layer: str | LayerInfo, layout: str | Layout | None) -> LayerInfo:
        """Give ``layer`` an explicit layout (``None`` removes it); returns the layer with it."""
        li = self.layer(layer)
        if layout is None:
            self.layer_layouts.pop(li.name, None)
            return self._laid(li)
        lay = parse_layout(layout)
        if li.rank is not None and lay.rank != li.rank:
            raise ShapeError("layer_layout", lay.describe(), f"a layout of rank {li.rank}",
                             f"tensor {li.name!r} has shape {li.shape}")
        self.layer_layouts[li.name] = lay
        return self._laid(li)

    def default_layer(self) -> LayerInfo:
        """The last spatial or token map before the readout (see :func:`layers.default_layer`)."""
        li = default_layer(
            self.layers(),
            self.skeleton.graph,
            exclude=[*self.graph_outputs, self.output_name],
        )
        if li is None:
            raise ModelError(
                "layer: the model has no spatial or token activation of at least 2x2 positions "
                "with a layout the graph determines; pass layer= (and layer_layout= if needed: "
                + LAYOUT_HELP + ")"
            )
        return li

    def spatial_layer(
        self,
        name: str | LayerInfo | None = None,
        *,
        argument: str = "layer",
        layout: str | Layout | None = None,
        allow_small_map: bool = False,
    ) -> LayerInfo:
        """Resolve ``name`` (default: :meth:`default_layer`) and require a map ``(N, K, *S)``.

        ``layout`` sets the layer's layout explicitly (:meth:`set_layer_layout`).  A layer whose
        layout is unclear is refused (:class:`ShapeError` saying what ``layer_layout`` to pass);
        so is a map of fewer than 2×2 positions (pooled ``(N, K, 1, 1)``) unless
        ``allow_small_map``.
        """
        if layout is not None:
            li = self.set_layer_layout(self.default_layer() if name is None else name, layout)
        else:
            li = self.default_layer() if name is None else self.layer(name, argument=argument)
        lay = li.layout
        if not lay.is_map:
            why = lay.reason or (
                f"its axes read as {lay.describe()} (batch and channels only)" if lay.kind == "vector"
                else f"axis roles {lay.axes}"
            )
            raise ShapeError(
                argument,
                li.shape,
                "a spatial or token map with a known layout",
                f"tensor {li.name!r} ({li.op_type}"
                + (f", module {li.module_path}" if li.module_path else "")
                + f") is not a spatial activation with a layout the graph determines: {why}; "
                + LAYOUT_HELP,
            )
        pos = map_positions(li)
        if pos is not None and pos < 4 and not allow_small_map:
            raise ShapeError(
                argument,
                li.map_shape,
                "a map of at least 2x2 positions",
                f"tensor {li.name!r} is a map of {pos} position(s) (after global pooling?): its "
                "picture is uniform. Pick an earlier layer, or pass allow_small_map=True "
                "(CLI --allow-small-map) to explain it anyway",
            )
        return li

    def layer_to_map(self, layer: str | LayerInfo, a: np.ndarray, *, lead: int = 0) -> np.ndarray:
        """Native activations (or gradients, with ``lead`` target axes after native axis 0) of
        ``layer`` → ``(N, *lead, K, *S)`` through the layer's layout."""
        li = layer if isinstance(layer, LayerInfo) and layer.layout is not None else self.layer(layer)
        return li.layout.to_map(a, lead=lead, argument=f"layer {li.name!r}")

    def map_to_layer(self, layer: str | LayerInfo, maps: np.ndarray, like: np.ndarray | None = None) -> np.ndarray:
        """Inverse of :meth:`layer_to_map` (tokens outside the grid copied from ``like``)."""
        li = layer if isinstance(layer, LayerInfo) and layer.layout is not None else self.layer(layer)
        return li.layout.from_map(maps, like, argument=f"layer {li.name!r}")

    # ------------------------------------------------------------------ layout
    @property
    def tabular_input(self) -> bool:
        """The input is ``(N, F)``: features, no channel axis.  It is read as ``(N, 1, F)`` — one
        channel over ``F`` positions — so input-gradient maps are per feature ``(N, F)``."""
        return self.input_shape is not None and len(self.input_shape) == 2

    def to_channels_first(self, a: np.ndarray, *, lead: int = 0) -> np.ndarray:
        """Native input layout → ``(N, *lead, C, *S)``; ``(N, *lead, F)`` → ``(N, *lead, 1, F)``
        for a tabular input (identity for channels-first models)."""
        if self.tabular_input and a.ndim == 2 + lead:
            return np.expand_dims(a, 1 + lead)
        if not self.channels_last or a.ndim < 3 + lead:
            return a
        return np.moveaxis(a, -1, 1 + lead)

    def to_native(self, a: np.ndarray) -> np.ndarray:
        """``(N, C, *S)`` → the model's native input layout (inverse of :meth:`to_channels_first`)."""
        if self.tabular_input and a.ndim == 3:
            if a.shape[1] != 1:
                raise ShapeError("inputs", a.shape, "(N, 1, F)", "a tabular model input has one channel")
            return a[:, 0]
        if not self.channels_last or a.ndim < 3:
            return a
        return np.moveaxis(a, 1, -1)

    @property
    def input_channels_axis(self) -> int:
        return -1 if self.channels_last else 1

    def input_spatial_shape(self, inputs: np.ndarray) -> tuple[int, ...]:
        """Spatial shape ``S_in`` of a (validated) native-layout input batch."""
        if self.tabular_input:
            return tuple(inputs.shape[1:])
        return tuple(inputs.shape[1:-1] if self.channels_last else inputs.shape[2:])

    # ------------------------------------------------------------------ inputs
    def check_inputs(self, inputs: Any, *, argument: str = "inputs") -> np.ndarray:
        """Validate ``inputs`` against the model input and cast to its dtype.

        Real float/int arrays are accepted and cast to the model input dtype (float64 → float32 for
        a float32 model).  Wrong rank, a wrong fixed axis, an empty batch, complex/object dtype or
        non-finite values raise a :class:`RefcamError` naming ``argument``.
        """
        x = V.as_float_array(inputs, argument)
        if self.input_shape is None:
            if x.ndim < 2 or any(s == 0 for s in x.shape):
                raise ShapeError(argument, x.shape, "(N, C, *S) with every axis non-empty")
            return np.ascontiguousarray(x, dtype=self.input_dtype)
        exp = (
            "("
            + ", ".join(
                "N" if i == 0 else (str(d) if isinstance(d, int) else (d or "?"))
                for i, d in enumerate(self.input_shape)
            )
            + ")"
        )
        if x.ndim != len(self.input_shape):
            raise ShapeError(
                argument,
                x.shape,
                exp,
                f"model input {self.input_name!r} has rank {len(self.input_shape)}",
            )
        for ax, (got, want) in enumerate(zip(x.shape, self.input_shape)):
            if ax == 0:
                continue
            if isinstance(want, int) and want > 0 and got != want:
                raise ShapeError(argument, x.shape, exp, f"axis {ax} must be {want}")
        if x.shape[0] == 0 or any(s == 0 for s in x.shape):
            raise ShapeError(argument, x.shape, exp, "every axis must be non-empty")
        return np.ascontiguousarray(x, dtype=self.input_dtype)

    def feed(self, xb: np.ndarray, start: int = 0, pad: int = 0) -> dict:
        """The onnxruntime feed for the chunk ``xb`` = samples ``start … start+len(xb)-pad`` (the
        last ``pad`` rows repeat the last sample): the explained input and the other inputs."""
        out = {self.input_name: xb}
        n = xb.shape[0] - pad
        for nm, v in self.other_inputs.items():
            if v.shape[0] == 1:
                out[nm] = np.repeat(v, xb.shape[0], axis=0)
                continue
            part = v[start : start + n]
            if part.shape[0] != n:
                raise ShapeError(f"other_inputs[{nm!r}]", v.shape, "(N, ...) or (1, ...)",
                                 f"{n} sample(s) from {start} needed, it has {v.shape[0]}")
            if pad:
                part = np.concatenate([part, np.repeat(part[-1:], pad, axis=0)])
            out[nm] = part
        return out

    # ------------------------------------------------------------------ sessions
    def _options(self, gradient: bool = False) -> ort.SessionOptions:
        if self._session_options is not None:
            return self._session_options
        so = ort.SessionOptions()
        if self._threads[0] is not None:
            so.intra_op_num_threads = self._threads[0]
        if self._threads[1] is not None:
            so.inter_op_num_threads = self._threads[1]
        so.log_severity_level = 3
        if gradient:
            # Gradient sessions.  No weight prepacking: onnxruntime would keep a packed copy of
            # every Gemm/MatMul weight per use, and a VJP graph uses each dense weight twice
            # (forward, and transposed in the backward): vgg16_bn's 411 MB fc6 weight then costs
            # 3 copies and ~8 s of session creation.  Measured on vgg16_bn (1 thread): first
            # Grad-CAM 10.7 s -> 1.8 s, peak RSS growth +1086 -> +653 MiB, warm runs no slower.
            so.add_session_config_entry("session.disable_prepacking", "1")
            # No memory pattern: after the first run onnxruntime plans one block for all the
            # tensors a backward keeps alive, on top of the arena it already holds.  ResNet-50,
            # peak RSS growth of two runs: saliency b=8 +1057 -> +704 MiB, b=1 +420 -> +387,
            # Grad-CAM b=8 +350 -> +270, b=1 +246 -> +233; warm runs no slower.
            so.enable_mem_pattern = False
        return so

    @property
    def proto(self) -> onnx.ModelProto:
        """The loaded model as one :class:`onnx.ModelProto` with every initializer's values.

        Built on first access from :attr:`skeleton` and :attr:`weights` and kept: refcam's own
        sessions, shape analyses and gradient graphs use the skeleton, so the weights are held
        twice only once something needs them inside a proto (head cuts, finite differences,
        FullGrad's biases).  Treat it as read-only.
        """
        if self._full is None:
            self._full = _weights.join(self.skeleton, self.weights)
        return self._full

    def new_session(self, model: onnx.ModelProto, data: bytes | None = None, *,
                    gradient: bool = False) -> ort.InferenceSession:
        """An onnxruntime session of ``model``, a graph built from :attr:`skeleton` (``data``: its
        serialisation, if already made).  Its in-memory initializers are handed to onnxruntime
        from :attr:`weights` as external initializers: no proto with the weights is serialised.
        onnxruntime copies them into the session (about one weight copy per session, in its own
        layout: :mod:`refcam.onnx._weights`).  ``gradient=True`` (VJP graphs) turns off onnxruntime's weight prepacking
        and memory pattern (see :meth:`_options`).  A caller's own ``session_options`` are never modified: with them the weights
        are put back into a full serialised proto instead."""
        if self._session_options is not None:
            return ort.InferenceSession(_weights.join(model, self.weights).SerializeToString(),
                                        sess_options=self._session_options, providers=self.providers)
        so = self._options(gradient)
        names = _weights.external_names(model)
        if names:
            so.add_external_initializers(names, _weights.ort_values(self.weights, names, self._ort_values))
        return ort.InferenceSession(model.SerializeToString() if data is None else data,
                                    sess_options=so, providers=self.providers)

    def session(self, names: Iterable[str]) -> ort.InferenceSession:
        """The (cached) session whose outputs are exactly ``names``."""
        key = frozenset(names)
        sess = self._sessions.get(key)
        if sess is not None:
            self._sessions.move_to_end(key)
            return sess
        g = self.skeleton.graph
        saved = [onnx.ValueInfoProto() for _ in g.output]
        for s, o in zip(saved, g.output):
            s.CopyFrom(o)
        by_name = {o.name: o for o in saved}
        new = []
        for name in sorted(key):
            if name in by_name:
                new.append(by_name[name])
            else:
                vi = self.value_info.get(name)
                et = (
                    vi.type.tensor_type.elem_type
                    if vi is not None and vi.type.HasField("tensor_type")
                    else 0
                )
                # element type unknown to shape inference: a name-only output (onnxruntime types it)
                new.append(helper.make_tensor_value_info(name, et, None) if et else onnx.ValueInfoProto(name=name))
        del g.output[:]
        g.output.extend(new)
        try:
            data = self.skeleton.SerializeToString()
        finally:
            del g.output[:]
            g.output.extend(saved)
        try:
            sess = self.new_session(self.skeleton, data)
        except Exception as exc:
            raise ModelError(
                f"model: onnxruntime could not load the model with outputs {sorted(key)}: {exc}"
            ) from exc
        self._sessions[key] = sess
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        return sess

    # ------------------------------------------------------------------ running
    def _resolve_names(self, names: Iterable[str | LayerInfo]) -> list[str]:
        out = []
        for n in names:
            if isinstance(n, LayerInfo):
                n = n.name
            if n == self.output_name or n in self.graph_outputs or n == self.input_name:
                out.append(n)
            else:
                out.append(self.layer(n).name)
        return list(dict.fromkeys(out))

    def run(
        self,
        inputs: Any,
        names: Iterable[str | LayerInfo] | None = None,
        *,
        batch_size: int | None = None,
        memory_budget: int | None = None,
        progress: bool | None = False,
        desc: str = "forward",
        checked: bool = False,
    ) -> dict[str, np.ndarray]:
        """Run the model on ``inputs`` and return the requested tensors (native layout).

        Parameters
        ----------
        inputs : ``(N, *input_shape[1:])`` array in the model's native layout.
        names : tensors to return (names, node names or module paths); default the output tensor.
        batch_size : chunk size (default: from ``memory_budget``, see module docstring).
        memory_budget : bytes per chunk of input + returned tensors (default ``self.memory_budget``).
        progress : show a tqdm bar (``None``: only when stderr is a terminal).
        checked : skip input validation (``inputs`` already passed :meth:`check_inputs`).

        Returns
        -------
        dict mapping each resolved tensor name to an array with leading axis ``N``.
        """
        x = np.ascontiguousarray(inputs) if checked else self.check_inputs(inputs)
        names = self._resolve_names(names if names is not None else [self.output_name])
        run_names = [n for n in names if n != self.input_name]
        n = x.shape[0]
        results: dict[str, np.ndarray] = {}
        if run_names:
            sess = self.session(run_names)
            # the batch axis of each tensor (sequence-first token layers keep it on axis 1)
            bax = [self._batch_axis(nm) for nm in run_names]
            if batch_size is not None:
                chunk = V.positive_int(batch_size, "batch_size")
            else:
                chunk = None
            if self.fixed_batch is not None:
                chunk = self.fixed_batch
            budget = (
                V.positive_int(memory_budget, "memory_budget")
                if memory_budget is not None
                else self.memory_budget
            )
            from tqdm.auto import tqdm

            show = progress if progress is not None else sys.stderr.isatty()
            bar = tqdm(total=n, desc=desc, unit="sample", disable=not show, leave=False)
            start = 0
            key = (frozenset(run_names), x.shape[1:])
            try:
                while start < n:
                    if chunk is None:
                        per = self._bytes_per_sample.get(key)
                        c = 1 if per is None else max(1, budget // per)
                    else:
                        c = chunk
                    stop = min(n, start + c)
                    xb = x[start:stop]
                    pad = 0
                    if self.fixed_batch is not None and stop - start < self.fixed_batch:
                        pad = self.fixed_batch - (stop - start)
                        xb = np.concatenate([xb, np.repeat(xb[-1:], pad, axis=0)])
                    try:
                        outs = sess.run(run_names, self.feed(xb, start, pad))
                    except Exception as exc:
                        raise ModelError(
                            f"model: onnxruntime failed on inputs of shape {tuple(xb.shape)}: {exc}"
                        ) from exc
                    if pad:
                        outs = [_take(o, b, 0, stop - start) for o, b in zip(outs, bax)]
                    if not results:
                        for nm, o, b in zip(run_names, outs, bax):
                            shp = list(o.shape)
                            shp[b] = n
                            results[nm] = np.empty(shp, dtype=o.dtype)
                        per = xb[:1].nbytes + sum(_take(o, b, 0, 1).nbytes for o, b in zip(outs, bax))
                        self._bytes_per_sample[key] = max(1, per)
                    for nm, o, b in zip(run_names, outs, bax):
                        idx = [slice(None)] * o.ndim
                        idx[b] = slice(start, stop)
                        results[nm][tuple(idx)] = o
                    bar.update(stop - start)
                    start = stop
            finally:
                bar.close()
        if self.input_name in names:
            results[self.input_name] = x
        return {nm: results[nm] for nm in names}

    def forward(self, inputs: Any, layers: Iterable[str | LayerInfo] = (), **kwargs) -> Forward:
        """One run returning the output tensor and channels-first ``(N, K, *S)`` activations.

        ``layers`` are resolved with :meth:`layer`; the keys of ``activations`` are the resolved
        tensor names.  Keyword arguments go to :meth:`run`.
        """
        names = self._resolve_names(layers)
        res = self.run(inputs, [self.output_name, *names], **kwargs)
        return Forward(res[self.output_name], {nm: self._as_map(nm, res[nm]) for nm in names})

    def _batch_axis(self, name: str) -> int:
        if name == self.output_name or name in self.graph_outputs or name == self.input_name:
            return 0
        li = self.layer(name)
        b = li.layout.batch_axis if li.layout is not None else None
        return 0 if b is None else b

    def _as_map(self, name: str, a: np.ndarray, lead: int = 0) -> np.ndarray:
        """Native → ``(N, *lead, K, *S)`` for layers with a map layout; other tensors unchanged."""
        if name == self.input_name:
            return self.to_channels_first(a, lead=lead)
        li = self.layer(name)
        if li.layout is not None and li.layout.is_map:
            return li.layout.to_map(a, lead=lead, argument=f"layer {name!r}")
        return a

    def unknown_ranks(self) -> list[str]:
        """Tensors produced by the graph whose rank static shape inference leaves unknown."""
        out = []
        for n in self.skeleton.graph.node:
            for o in n.output:
                vi = self.value_info.get(o)
                if o and (vi is None or not vi.type.HasField("tensor_type")
                          or not vi.type.tensor_type.HasField("shape")
                          or not vi.type.tensor_type.elem_type):
                    out.append(o)
        return out

    def runtime_shapes(self, inputs: Any) -> dict[str, tuple[tuple[int, ...], int]]:
        """Shapes and element types of the tensors static inference leaves unknown, from one run.

        The probe runs the model once on the first sample of ``inputs`` (or on a full fixed batch)
        returning exactly the tensors of :meth:`unknown_ranks`.  Cached per input signature
        (non-batch shape and dtype): the ranks seen do not depend on the values.  Used by the
        gradient builder (:func:`refcam.autodiff.build_vjp_model`, ``runtime_shapes=``) to
        complete ranks; sizes in the gradient graph are read at run time.

        Returns
        -------
        dict tensor name → ``(shape, ONNX element type)``.
        """
        x = self.check_inputs(inputs)
        key = ("runtime_shapes", x.shape[1:], x.dtype.str)
        cache = self._runtime_shapes
        if key not in cache:
            names = self.unknown_ranks()
            res: dict[str, tuple[tuple[int, ...], int]] = {}
            if names:
                pad = 0 if self.fixed_batch is None else self.fixed_batch - 1
                xb = x[:1] if not pad else np.repeat(x[:1], self.fixed_batch, axis=0)
                sess = self.session(names)
                try:
                    outs = sess.run(names, self.feed(xb, 0, pad))
                except Exception as exc:
                    raise ModelError(
                        f"model: onnxruntime failed on the shape probe of shape {tuple(xb.shape)}: {exc}"
                    ) from exc
                for nm, o in zip(names, outs):
                    o = np.asarray(o)
                    res[nm] = (tuple(o.shape), int(helper.np_dtype_to_tensor_dtype(o.dtype)))
            cache[key] = res
        return dict(cache[key])

    def proto_with_output(self) -> onnx.ModelProto:
        """The model proto with :attr:`output_name` among the graph outputs (a copy only if needed).

        Used by the finite-difference oracle, which seeds that output; the file is never touched.
        """
        if self.output_name in [o.name for o in self.proto.graph.output]:
            return self.proto
        p = onnx.ModelProto()
        p.CopyFrom(self.proto)
        vi = self.value_info.get(self.output_name)
        p.graph.output.append(vi if vi is not None else onnx.ValueInfoProto(name=self.output_name))
        return p

    # ------------------------------------------------------------------ head
    def head(self, layer: str | LayerInfo) -> Model:
        """The sub-model mapping the activation ``layer`` (native layout) to the output tensor.

        Cached per layer.  Raises :class:`ModelError` when the output also depends on the input
        through a path bypassing ``layer``.
        """
        li = self.layer(layer)
        if li.name not in self._heads:
            proto = cut_head(
                self.proto,
                li.name,
                [self.output_name],
                value_info=self.value_info,
                ir_version=self.proto.ir_version,
            )
            self._heads[li.name] = Model(
                proto,
                providers=self.providers,
                intra_op_num_threads=self._threads[0],
                inter_op_num_threads=self._threads[1],
                session_options=self._session_options,
                layout=self.layout,
                output=self.output_name,
                strip_softmax=False,
                memory_budget=self.memory_budget,
                max_sessions=2,
            )
        return self._heads[li.name]

    def linear_head(self, layer: str | LayerInfo):
        """The GAP → linear head after ``layer`` (see :func:`refcam.onnx.head.linear_head`)."""
        li = self.layer(layer)
        lay = li.layout
        if lay is not None and lay.is_map and (lay.batch_axis != 0 or lay.is_tokens):
            raise ModelError(
                f"CAM: layer {li.name!r} is {lay.describe()}; the GAP → linear head is found after "
                "batch-first spatial maps (NCHW or NHWC) only"
            )
        k = None
        if li.shape is not None and len(li.shape) >= 2:
            ch_last = (lay.channel_axis == li.rank - 1) if lay is not None and lay.is_map and li.rank \
                else self.channels_last
            k = li.shape[-1] if ch_last else li.shape[1]
        return linear_head(
            self.proto.graph,
            li.name,
            self.output_name,
            rank=li.rank or 4,
            channels_last=(lay.channel_axis == li.rank - 1) if lay is not None and lay.is_map
            and li.rank else self.channels_last,
            channels=k if isinstance(k, int) and k > 0 else None,
        )

    @property
    def metadata(self) -> dict[str, str]:
        """The model's ``metadata_props`` as a ``{key: value}`` dict (labels, preprocessing, ...).

        :mod:`refcam.zoo` reads ``refcam.classes`` / ``refcam.preprocessing`` and the common keys
        of other exporters from it (:func:`refcam.zoo.model_classes`,
        :func:`refcam.zoo.model_preprocessing`).
        """
        return {p.key: p.value for p in self.skeleton.metadata_props}

    def __repr__(self) -> str:
        return (
            f"Model(input={self.input_name!r} {self.input_shape}, output={self.output_name!r}, "
            f"layout={self.layout!r}, {len(self._layers)} layers)"
        )


def _take(a: np.ndarray, axis: int, start: int, stop: int) -> np.ndarray:
    idx = [slice(None)] * a.ndim
    idx[axis] = slice(start, stop)
    return a[tuple(idx)]


def load(source: Any, **kwargs) -> Model:
    """Return ``source`` if it is a :class:`Model` (and no options are given), else ``Model(source, **kwargs)``."""
    if isinstance(source, Model) and not kwargs:
        return source
    return Model(source, **kwargs)
