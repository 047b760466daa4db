"""Model-parameter randomisation on an ONNX graph, for the sanity checks of Adebayo et al. (2018).

A **parameter layer** is a node with learned float tensors among its inputs, stored as graph
initializers or as Constant nodes (PaddlePaddle/tf2onnx style):

=============================================  ==========================================
op                                              randomised inputs
=============================================  ==========================================
Conv, ConvTranspose                             weight (1), bias (2)
Gemm, MatMul                                    every parameter input
BatchNormalization, InstanceNormalization,      scale (1), bias (2) — never the running
LayerNormalization, GroupNormalization          mean/variance (a negative variance is NaN)
PRelu                                           slope (1)
=============================================  ==========================================

An ``Add`` that adds a parameter bias to the output of one of these (``MatMul → Add`` heads of the
dynamo exporter) belongs to the same layer.  A layer is named by its node's first output tensor
(the name :meth:`refcam.onnx.Model.layers` lists); its node name and, for a bias ``Add``, the
``Add``'s output are accepted as aliases.

**Random values** (Adebayo et al. re-initialise from a truncated normal): each tensor ``T`` becomes
i.i.d. :math:`\\mathcal N(0, \\sigma^2)` truncated to :math:`[-2\\sigma, 2\\sigma]` (resampled, not
clipped) with :math:`\\sigma` = the population standard deviation of ``T`` (its root mean square when
``T`` is constant; an all-zero tensor stays zero), in ``T``'s dtype.  Tensor number ``k`` (graph
order of :func:`parameter_layers`) draws from ``numpy.random.default_rng([seed, k])``, so a layer
gets the same values in every cascading step and in the independent test.

Reference: J. Adebayo, J. Gilmer, M. Muelly, I. Goodfellow, M. Hardt, B. Kim, "Sanity Checks for
Saliency Maps", NeurIPS 2018, arXiv:1810.03292 (cascading randomisation from the top layer down; independent
randomisation of one layer at a time).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import InvalidArgumentError, LayerNotFoundError, ModelError

__all__ = ["ParameterLayer", "parameter_layers", "randomize_initializers", "truncated_normal_like"]

_WEIGHT_INPUTS: dict[str, tuple[int, ...] | None] = {
    "Conv": (1, 2),
    "ConvTranspose": (1, 2),
    "Gemm": None,
    "MatMul": None,
    "BatchNormalization": (1, 2),
    "InstanceNormalization": (1, 2),
    "LayerNormalization": (1, 2),
    "GroupNormalization": (1, 2),
    "PRelu": (1,),
}
_FLOAT = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16}


@dataclass(frozen=True)
class ParameterLayer:
    """A parameter layer: ``name`` (first output of its node), ``aliases`` and its ``tensors``."""

    name: str
    op_type: str
    aliases: tuple[str, ...]
    tensors: tuple[str, ...]


def _proto(model: Any) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    proto = getattr(model, "proto", None)  # refcam.onnx.Model
    if isinstance(proto, onnx.ModelProto):
        return proto
    if isinstance(model, (bytes, bytearray)):
        return onnx.load_model_from_string(bytes(model))
    if isinstance(model, (str, os.PathLike)):
        return onnx.load(os.fspath(model))
    raise InvalidArgumentError(
        "model", type(model).__name__, "an onnx.ModelProto, refcam.onnx.Model, path or bytes"
    )


def _param_sources(graph: onnx.GraphProto) -> dict[str, Any]:
    """Float parameter tensors: name -> initializer TensorProto or Constant node's tensor attribute."""
    out: dict[str, Any] = {t.name: t for t in graph.initializer if t.data_type in _FLOAT}
    for n in graph.node:
        if n.op_type == "Constant" and len(n.output) == 1:
            for a in n.attribute:
                if a.name == "value" and a.t.data_type in _FLOAT:
                    out[n.output[0]] = a.t
    return out


def parameter_layers(model: Any) -> list[ParameterLayer]:
    """The parameter layers of ``model`` in graph order (see the module docstring).

    Examples
    --------
    >>> from refcam.onnx.toy_models import cam_net
    >>> [(p.name, p.tensors) for p in parameter_layers(cam_net())]      # doctest: +NORMALIZE_WHITESPACE
    [('conv1', ('conv1.weight', 'conv1.bias')), ('conv2', ('conv2.weight', 'conv2.bias')),
     ('logits', ('fc.weight', 'fc.bias'))]
    """
    g = _proto(model).graph
    params = _param_sources(g)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    layers: list[ParameterLayer] = []
    taken: set[str] = set()
    for n in g.node:
        if n.op_type not in _WEIGHT_INPUTS or not n.output:
            continue
        idx = _WEIGHT_INPUTS[n.op_type]
        ins = [i for k, i in enumerate(n.input) if i in params and (idx is None or k in idx)]
        if not ins:
            continue
        aliases = [n.output[0]] + ([n.name] if n.name and n.name != n.output[0] else [])
        cons = consumers.get(n.output[0], [])
        if n.op_type in ("MatMul", "Conv", "Gemm") and len(cons) == 1 and cons[0].op_type == "Add":
            bias = [i for i in cons[0].input if i in params and i != n.output[0]]
            if bias:
                ins += bias
                aliases.append(cons[0].output[0])
        tensors = tuple(
            dict.fromkeys(t for t in ins if t not in taken)
        )  # shared tensors: first layer
        taken.update(tensors)
        if tensors:
            layers.append(ParameterLayer(n.output[0], n.op_type, tuple(aliases), tensors))
    return layers


def truncated_normal_like(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    r"""Draw :math:`\mathcal N(0,\sigma^2)` truncated to :math:`\pm 2\sigma` with the shape/dtype of ``values``.

    :math:`\sigma` = population std of ``values`` (RMS if the tensor is constant; zeros stay zeros).
    Out-of-range draws are resampled.

    Examples
    --------
    >>> truncated_normal_like(np.zeros(3, np.float32), np.random.default_rng(0))
    array([0., 0., 0.], dtype=float32)
    """
    v = np.asarray(values, dtype=np.float64)
    sigma = float(v.std()) if v.size else 0.0
    if sigma == 0.0:
        sigma = float(np.sqrt(np.mean(v * v))) if v.size else 0.0
    if sigma == 0.0:
        return np.zeros_like(values)
    z = rng.standard_normal(v.shape)
    bad = np.abs(z) > 2
    while bad.any():
        z[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(z) > 2
    return (sigma * z).astype(np.asarray(values).dtype)


def _resolve(layers: Sequence[Any] | None, found: list[ParameterLayer]) -> list[ParameterLayer]:
    if layers is None:
        return found[::-1]  # top (output side) first
    if isinstance(layers, (str, bytes)):
        layers = [layers]
    by_alias = {a: p for p in found for a in p.aliases}
    out = []
    for item in layers:
        name = getattr(item, "name", item)  # LayerInfo or str
        if name not in by_alias:
            import difflib

            close = difflib.get_close_matches(str(name), list(by_alias), n=3)
            raise LayerNotFoundError(
                f"layers: {name!r} is not a parameter layer of the model"
                + (f"; closest: {close}" if close else "")
                + f"; parameter layers: {[p.name for p in found]}"
            )
        out.append(by_alias[name])
    if len({p.name for p in out}) != len(out):
        raise InvalidArgumentError("layers", [p.name for p in out], "each layer at most once")
    return out


def _set(sources: dict[str, Any], name: str, arr: np.ndarray) -> None:
    t = sources[name]
    new = numpy_helper.from_array(arr, name=t.name)
    t.CopyFrom(new)


def randomize_initializers(
    model: Any,
    layers: Sequence[Any] | None = None,
    *,
    mode: str = "cascading",
    seed: int = 0,
    lazy: bool = False,
) -> Any:
    """Randomised copies of an ONNX model, one per step of the Adebayo et al. (2018) test.

    Parameters
    ----------
    model : onnx.ModelProto, refcam.onnx.Model, path or bytes — never modified.
    layers : sequence of layer names (or LayerInfo), **top first**; default: every parameter layer,
        from the output back to the input.
    mode : {"cascading", "independent"}
        Cascading: step ``t`` randomises ``layers[:t+1]``; independent: only ``layers[t]``.
    seed : int >= 0.
    lazy : bool — return a generator (one model in memory at a time) instead of a list.

    Returns
    -------
    list (or generator) of ``(layer name, onnx.ModelProto)``.

    Examples
    --------
    >>> from refcam.onnx.toy_models import cam_net
    >>> steps = randomize_initializers(cam_net(), mode="cascading", seed=0)
    >>> [name for name, _ in steps]
    ['logits', 'conv2', 'conv1']
    """
    if mode not in ("cascading", "independent"):
        raise InvalidArgumentError("mode", mode, "'cascading' or 'independent'")
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidArgumentError("seed", seed, "a non-negative integer")
    proto = _proto(model)
    found = parameter_layers(proto)
    if not found:
        raise ModelError(
            "model: has no parameter layers (Conv/Gemm/MatMul/normalisation weights) to randomise"
        )
    chosen = _resolve(layers, found)
    if not chosen:
        raise InvalidArgumentError("layers", list(layers or []), "at least one layer")
    order = {t: k for k, t in enumerate(t for p in found for t in p.tensors)}
    base_sources = _param_sources(proto.graph)
    for p in chosen:
        for t in p.tensors:
            if base_sources[t].data_location == onnx.TensorProto.EXTERNAL:
                raise ModelError(
                    f"model: tensor {t!r} is stored externally and not loaded; "
                    "load the model with its external data first"
                )

    def new_values(t: str) -> np.ndarray:
        return truncated_normal_like(
            numpy_helper.to_array(base_sources[t]), np.random.default_rng([int(seed), order[t]])
        )

    def gen() -> Iterator[tuple[str, onnx.ModelProto]]:
        work = onnx.ModelProto()
        work.CopyFrom(proto)
        src = _param_sources(work.graph)
        for p in chosen:
            if mode == "independent":
                work = onnx.ModelProto()
                work.CopyFrom(proto)
                src = _param_sources(work.graph)
            for t in p.tensors:
                _set(src, t, new_values(t))
            out = onnx.ModelProto()
            out.CopyFrom(work)
            yield p.name, out

    return gen() if lazy else list(gen())
