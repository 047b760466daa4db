r"""Backward rules added for the ONNX backend node suite (registered through :func:`rules.rule`).

Each rule's docstring gives the forward formula and the vector-Jacobian product it emits.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from .rules import ZERO, _iota_backward, rule


@rule("CastLike")
def _castlike(ctx):
    """:math:`y = \\mathrm{cast}(x)` to the type of ``target_type``: :math:`\\bar x = \\mathrm{cast}(g)`
    back to :math:`x`'s type; ``target_type`` only lends its type (zero gradient)."""
    x = ctx.inputs[0]
    gx = ctx.op("CastLike", [ctx.grads[0], x]) if ctx.needs[0] else None
    return [gx, ZERO]


def onnx_zero(elem: int):
    from onnx import helper, numpy_helper

    return numpy_helper.from_array(np.zeros(1, dtype=helper.tensor_dtype_to_np_dtype(elem)))


@rule("LpNormalization")
def _lpnorm(ctx):
    r""":math:`y = x / \|x\|_p` along ``axis`` (p = 1 or 2), :math:`\nu = \|x\|_p`:
    :math:`\bar x = (g - \partial\nu/\partial x \cdot \sum g y) / \nu` with
    :math:`\partial\nu/\partial x = y` (p = 2) or :math:`\mathrm{sign}(x)` (p = 1).
    Groups with :math:`\nu = 0` (output 0 by the spec) are kinks: gradient 0 there."""
    x, y = ctx.inputs[0], ctx.outputs[0]
    p = ctx.attrs.get("p", 2)
    if p not in (1, 2):
        raise ctx.unsupported(f"LpNormalization with p={p}")
    axis = ctx.attrs.get("axis", -1)
    b = ctx.b
    g = ctx.grads[0]
    red = "ReduceL2" if p == 2 else "ReduceL1"
    if ctx.opset >= 18:
        nu = b.op(red, [x, b.ints([axis])], keepdims=1)
    else:
        nu = b.op(red, [x], axes=[axis], keepdims=1)
    s = b.op("ReduceSum", [ctx.op("Mul", [g, y]), b.ints([axis])], keepdims=1) if ctx.opset >= 13 else \
        b.op("ReduceSum", [ctx.op("Mul", [g, y])], axes=[axis], keepdims=1)
    dnu = y if p == 2 else ctx.op("Sign", [x])
    zero = ctx.op("Equal", [nu, ctx.c(0.0, x)])
    safe = ctx.op("Where", [zero, ctx.c(1.0, x), nu])
    dx = ctx.op("Div", [ctx.op("Sub", [g, ctx.op("Mul", [dnu, s])]), safe])
    return [ctx.op("Where", [zero, ctx.c(0.0, x), dx])]


@rule("GatherElements")
def _gather_elements(ctx):
    r""":math:`y[\mathbf{i}] = x[\mathbf{i} \text{ with } i_a \to \mathrm{idx}[\mathbf{i}]]` along ``axis`` a:
    :math:`\bar x = \mathrm{ScatterElements}(0, \mathrm{idx}, g, a, \text{reduction}=\text{add})`
    (repeated indices add up; needs opset 16 for the reduction, older models are converted)."""
    from .rules import NeedsOpset

    if ctx.opset < 16:
        raise NeedsOpset(16, "GatherElements backward needs ScatterElements(reduction='add')")
    x, idx = ctx.inputs[0], ctx.inputs[1]
    zeros = ctx.b.zeros_like(x, ctx.elem(x))
    gx = ctx.op("ScatterElements", [zeros, idx, ctx.grads[0]], axis=ctx.attrs.get("axis", 0), reduction="add")
    return [gx, ZERO]


@rule("OneHot")
def _onehot(ctx):
    r""":math:`y = v_{\mathrm{off}} + (v_{\mathrm{on}} - v_{\mathrm{off}})\,M` with :math:`M` the one-hot mask of
    ``indices``: :math:`\bar v_{\mathrm{off}} = \sum g (1 - M)`, :math:`\bar v_{\mathrm{on}} = \sum g M`;
    indices and depth are integers or piecewise constant (zero gradient)."""
    vals = ctx.inputs[2]
    b = ctx.b
    gv = None
    if ctx.needs[2]:
        e = ctx.elem(vals)
        mask = ctx.op("OneHot", [ctx.inputs[0], ctx.inputs[1], b.const(np.array([0, 1]).astype(
            _np_dtype(e)))], axis=ctx.attrs.get("axis", -1))
        g = ctx.grads[0]
        s_on = b.op("ReduceSum", [ctx.op("Mul", [g, mask])], keepdims=0)
        s_all = b.op("ReduceSum", [g], keepdims=0)
        gv = b.op("Concat", [b.unsqueeze(ctx.op("Sub", [s_all, s_on]), [0]), b.unsqueeze(s_on, [0])], axis=0)
    return [ZERO, ZERO, gv]


def _np_dtype(elem: int):
    from onnx import helper

    return helper.tensor_dtype_to_np_dtype(elem)


@rule("Range")
def _range(ctx):
    r""":math:`y_i = s + i\,\delta`, :math:`i = 0..n-1`, :math:`n = \lceil (l - s)/\delta\rceil`:
    :math:`\bar s = \sum_i g_i`, :math:`\bar\delta = \sum_i i\,g_i`; the limit only moves :math:`n`
    (piecewise constant: zero gradient)."""
    b = ctx.b
    g = ctx.grads[0]
    y = ctx.outputs[0]
    gs = gd = None
    if ctx.needs[0]:
        gs = b.op("ReduceSum", [g], keepdims=0)
    if ctx.needs[2]:
        n = b.op("Size", [y])
        i = b.op("Range", [b.const(np.int64(0)), n, b.const(np.int64(1))])
        i = ctx.op("Cast", [i], to=ctx.elem(y))
        gd = b.op("ReduceSum", [ctx.op("Mul", [g, i])], keepdims=0)
    return [gs, ZERO, gd]


@rule("TopK")
def _topk(ctx):
    r"""``values`` :math:`v = x[\mathrm{idx}]` along ``axis``: :math:`\bar x = \mathrm{scatter}(0, \mathrm{idx}, \bar v)`
    (the selected indices are distinct; ties follow onnxruntime's index choice); k carries no gradient."""
    x = ctx.inputs[0]
    g = ctx.grads[0]
    if g is None:
        return [ZERO, ZERO]
    zeros = ctx.b.zeros_like(x, ctx.elem(x))
    gx = ctx.op("ScatterElements", [zeros, ctx.outputs[1], g], axis=ctx.attrs.get("axis", -1))
    return [gx, ZERO]


@rule("CumSum")
def _cumsum(ctx):
    r""":math:`y_i = \sum_{j \le i} x_j` (or exclusive / reversed): the adjoint is the cumulative sum
    in the opposite direction with the same ``exclusive`` flag."""
    g = ctx.op("CumSum", [ctx.grads[0], ctx.inputs[1]], exclusive=ctx.attrs.get("exclusive", 0),
               reverse=1 - ctx.attrs.get("reverse", 0))
    return [g, ZERO]


@rule("Trilu")
def _trilu(ctx):
    """A mask: the adjoint keeps the same triangle of ``g``."""
    return [ctx.op("Trilu", [ctx.grads[0]] + ctx.inputs[1:], upper=ctx.attrs.get("upper", 1))] + \
        [ZERO] * (len(ctx.inputs) - 1)


@rule("SpaceToDepth")
def _space_to_depth(ctx):
    """A permutation whose inverse is DepthToSpace with the same block size and mode (DCR or CRD)."""
    return [ctx.op("DepthToSpace", [ctx.grads[0]], blocksize=ctx.attrs["blocksize"], mode=ctx.attrs.get("mode", "DCR"))]


@rule("DepthToSpace")
def _depth_to_space(ctx):
    r"""A permutation.  DCR: the inverse is SpaceToDepth.  CRD: :math:`y` is
    ``reshape(x, (N, C/b², b, b, H, W))`` transposed by (0, 1, 4, 2, 5, 3); the adjoint reshapes
    :math:`g` to (N, C/b², H, b, W, b), transposes by (0, 1, 3, 5, 2, 4) and reshapes to :math:`x`."""
    bs = ctx.attrs["blocksize"]
    g = ctx.grads[0]
    if ctx.attrs.get("mode", "DCR") == "DCR":
        return [ctx.op("SpaceToDepth", [g], blocksize=bs)]
    x = ctx.inputs[0]
    c, h, w = ctx.static_dims(x, [1, 2, 3])
    t = ctx.op("Reshape", [g, ctx.b.ints([-1, c // (bs * bs), h, bs, w, bs])])
    t = ctx.op("Transpose", [t], perm=[0, 1, 3, 5, 2, 4])
    return [ctx.b.reshape_like(t, x)]


@rule("Mod")
def _mod(ctx):
    r""":math:`y = x - d\,q`, :math:`q = \mathrm{trunc}(x/d)` (``fmod=1``) or :math:`\lfloor x/d\rfloor` (``fmod=0``),
    piecewise constant: :math:`\bar x = g`, :math:`\bar d = -g\,q` (jumps where :math:`x/d` is an integer;
    0 where :math:`q` is not finite, the output being inf/NaN there)."""
    x, dv = ctx.inputs
    g = ctx.grads[0]
    gx = ctx.unbroadcast(g, x) if ctx.needs[0] else None
    gd = None
    if ctx.needs[1]:
        qq = ctx.op("Div", [x, dv])
        if ctx.attrs.get("fmod", 0):
            q = ctx.op("Mul", [ctx.op("Sign", [qq]), ctx.op("Floor", [ctx.op("Abs", [qq])])])
        else:
            q = ctx.op("Floor", [qq])
        # where x/d is not finite (x = +-inf, d = 0, NaN) the output is not finite either and has no
        # derivative: 0 there instead of 0 * inf = NaN poisoning the other entries' sums
        bad = ctx.op("Or", [ctx.op("IsNaN", [q]), ctx.op("IsInf", [q])])
        q = ctx.op("Where", [bad, ctx.c(0.0, x), q])
        gd = ctx.unbroadcast(ctx.op("Neg", [ctx.op("Mul", [g, q])]), dv)
    return [gx, gd]


def _scatter(ctx, gather_op: str, scatter_op: str):
    from .rules import NeedsOpset

    if ctx.opset < 11:
        raise NeedsOpset(11, f"{ctx.op_type} backward needs GatherElements/ScatterElements (opset 11)")
    red = ctx.attrs.get("reduction", "none")
    if red not in ("none", "add"):
        raise ctx.unsupported(f"{ctx.op_type} with reduction={red!r}")
    data, idx, upd = ctx.inputs
    g = ctx.grads[0]
    kw = {"axis": ctx.attrs.get("axis", 0)} if gather_op == "GatherElements" else {}
    gdata = gupd = None
    if ctx.needs[0]:
        if red == "add":
            gdata = g
        else:  # overwritten positions get no gradient
            gdata = ctx.op(scatter_op, [g, idx, ctx.b.zeros_like(upd, ctx.elem(upd))], **kw)
    if ctx.needs[2]:
        gupd = ctx.op(gather_op, [g, idx], **kw)
    return [gdata, ZERO, gupd]


@rule("ScatterElements", "Scatter")
def _scatter_elements(ctx):
    r"""``reduction`` none: :math:`y = x` with :math:`y[\mathrm{idx}] = u` (indices distinct, as the spec
    requires): :math:`\bar x = g` with the written positions zeroed, :math:`\bar u = g[\mathrm{idx}]`
    (GatherElements).  ``add``: :math:`\bar x = g`, :math:`\bar u = g[\mathrm{idx}]`.  mul/max/min: refused."""
    return _scatter(ctx, "GatherElements", "ScatterElements")


@rule("ScatterND")
def _scatter_nd(ctx):
    """As ScatterElements with GatherND/ScatterND (index tuples)."""
    return _scatter(ctx, "GatherND", "ScatterND")


@rule("GatherND")
def _gather_nd(ctx):
    r""":math:`y = x[\mathrm{idx}]` (index tuples): :math:`\bar x = \mathrm{ScatterND}(0, \mathrm{idx}, g, \text{add})`
    (opset 16; ``batch_dims`` > 0 refused)."""
    from .rules import NeedsOpset

    if ctx.attrs.get("batch_dims", 0):
        raise ctx.unsupported("GatherND with batch_dims > 0")
    if ctx.opset < 16:
        raise NeedsOpset(16, "GatherND backward needs ScatterND(reduction='add')")
    x = ctx.inputs[0]
    gx = ctx.op("ScatterND", [ctx.b.zeros_like(x, ctx.elem(x)), ctx.inputs[1], ctx.grads[0]], reduction="add")
    return [gx, ZERO]


def _resize_any(ctx):
    r"""Resize: the static rule (per-axis matrices probed once at build time, :mod:`.probe`) when
    scales/sizes/roi are constants and the shapes static; otherwise the same probe *in the graph*:
    per resized axis :math:`a` with input size :math:`n` (``Shape(x)[a]``, at run time), the op itself
    is applied to the identity basis ``EyeLike((n, n))`` shaped ``(n, 1, 1, n)`` with this axis's
    runtime scale (or size, or roi), giving :math:`A_a^{\mathsf T}`; then
    :math:`\bar x = A_1^{\mathsf T} \cdot_1 \cdots g`.  Exact for every mode and coordinate
    transformation the runtime implements (it *is* the runtime's arithmetic), ``extrapolation_value``
    excluded (the affine part carries no gradient).  scales/sizes/roi get no gradient rule (refused
    if needed); ``keep_aspect_ratio_policy`` other than stretch is refused (its per-axis scale depends
    on every axis)."""
    from ..errors import ModelError, UnsupportedOpError
    from . import rules as base

    try:
        return base._resize(ctx)
    except (UnsupportedOpError, ModelError):
        if ctx.opset < 11 or ctx.attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch":
            raise
    b = ctx.b
    x = ctx.inputs[0]
    r = ctx.rank(x)
    axes = ctx.attrs.get("axes")
    axes = list(range(r)) if axes is None else [a % r for a in axes]
    attrs = {a: v for a, v in ctx.attrs.items() if a in (
        "mode", "coordinate_transformation_mode", "cubic_coeff_a", "exclude_outside", "nearest_mode", "antialias")}
    has_sizes = ctx.has_input(3)
    scales = ctx.inputs[2] if ctx.has_input(2) and not has_sizes else None
    sizes = ctx.inputs[3] if has_sizes else None
    roi = ctx.inputs[1] if ctx.has_input(1) and attrs.get("coordinate_transformation_mode") == "tf_crop_and_resize" \
        else None
    f32 = TensorProto.FLOAT
    g = ctx.grads[0]
    shp = b.shape(x)
    one_f = b.const(np.array([1.0, 1.0, 1.0], np.float32))
    for j, ax in enumerate(axes):
        n = b.op("Gather", [shp, b.ints([ax])], axis=0)                      # (1,)
        eye = b.op("EyeLike", [b.op("ConstantOfShape", [b.op("Concat", [n, n], axis=0)],
                                    value=onnx_zero(f32))])
        basis = b.op("Reshape", [eye, b.op("Concat", [n, b.ints([1, 1]), n], axis=0)])
        rr = ""
        if roi is not None:
            rf = ctx.op("Cast", [roi], to=f32)
            lo = b.op("Gather", [rf, b.ints([j])], axis=0)
            hi = b.op("Gather", [rf, b.ints([j + len(axes)])], axis=0)
            rr = b.op("Concat", [b.const(np.zeros(3, np.float32)), lo, one_f, hi], axis=0)
        if sizes is not None:
            m_out = b.op("Gather", [sizes, b.ints([j])], axis=0)
            ins = [basis, rr, "", b.op("Concat", [n, b.ints([1, 1]), m_out], axis=0)]
        else:
            sf = ctx.op("Cast", [scales], to=f32)
            ins = [basis, rr, b.op("Concat", [one_f, b.op("Gather", [sf, b.ints([j])], axis=0)], axis=0)]
        if ctx.opset < 13 and rr == "":
            rr = b.const(np.array([0, 0, 0, 0, 1, 1, 1, 1], np.float32))
            ins[1] = rr
            if sizes is not None:
                ins[2] = b.const(np.zeros(0, np.float32))
        out = b.op("Resize", ins, **attrs)                                  # (n, 1, 1, m) = A^T
        at = b.op("Reshape", [out, b.op("Concat", [n, b.ints([-1])], axis=0)])
        a = b.op("Transpose", [at], perm=[1, 0])                           # (m, n) = A
        if ctx.elem(x) != f32:
            a = ctx.op("Cast", [a], to=ctx.elem(x))
        g = b.move_axis_matmul(g, r, ax, a)
    return [g] + [None] * (len(ctx.inputs) - 1)


rule("Resize")(_resize_any)


def _einsum_terms(eq: str):
    eq = eq.replace(" ", "")
    if "->" in eq:
        lhs, out = eq.split("->")
    else:
        lhs = eq
        letters = lhs.replace(",", "")
        out = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    return lhs.split(","), out


@rule("Einsum")
def _einsum(ctx):
    r""":math:`Y_{o} = \sum \prod_j X^{(j)}_{s_j}` (subscripts :math:`s_j`, output :math:`o`): the gradient
    of operand :math:`i` is the Einsum of :math:`g` with the other operands onto :math:`s_i`,
    ``einsum("o,s_j,...->s_i")``; letters of :math:`s_i` found nowhere else (summed away in the forward)
    are broadcast back with Unsqueeze + Expand.  Ellipsis and repeated letters within one operand
    (diagonals) are refused."""
    terms, out = _einsum_terms(ctx.attrs["equation"])
    if "." in "".join(terms) + out:
        raise ctx.unsupported("Einsum with an ellipsis")
    if any(len(set(t)) != len(t) for t in terms):
        raise ctx.unsupported("Einsum with a repeated index within one operand (diagonal)")
    b = ctx.b
    res = []
    for i, (x, need) in enumerate(zip(ctx.inputs, ctx.needs)):
        if not need:
            res.append(None)
            continue
        others = [t for j, t in enumerate(terms) if j != i]
        known = set(out) | set("".join(others))
        kept = "".join(c for c in terms[i] if c in known)
        eq = ",".join([out] + others) + "->" + kept
        gi = ctx.op("Einsum", [ctx.grads[0]] + [ctx.inputs[j] for j in range(len(terms)) if j != i], equation=eq)
        missing = [k for k, c in enumerate(terms[i]) if c not in known]
        if missing:
            gi = ctx.op("Expand", [b.unsqueeze(gi, missing), b.shape(x)])
        res.append(gi)
    return res


@rule("LpPool")
def _lppool(ctx):
    r""":math:`y_w = (\sum_{i \in w} |x_i|^p)^{1/p}` over each window :math:`w`:
    :math:`\bar x_i = \mathrm{sign}(x_i)|x_i|^{p-1} \sum_{w \ni i} g_w / y_w^{p-1}`.  The window sums
    :math:`S^{\mathsf T}` are separable; each axis's window-membership matrix is the support of the
    1-D AveragePool matrix probed from onnxruntime (:mod:`.probe`, same kernel/stride/pads/dilation/
    ceil_mode).  Windows with :math:`y_w = 0` (all zero, the norm's kink) contribute 0."""
    from onnx import helper

    from .rules import pool_axis_matrix

    x, y = ctx.inputs[0], ctx.outputs[0]
    r = ctx.rank(x)
    n = r - 2
    p = float(ctx.attrs.get("p", 2))
    in_sp = ctx.static_dims(x, list(range(2, r)))
    c = lambda v: ctx.c(v, x)  # noqa: E731
    zero = ctx.op("Equal", [y, c(0.0)])
    ypm1 = ctx.op("Pow", [ctx.op("Where", [zero, c(1.0), y]), c(p - 1.0)])
    t = ctx.op("Where", [zero, c(0.0), ctx.op("Div", [ctx.grads[0], ypm1])])
    npdt = helper.tensor_dtype_to_np_dtype(ctx.elem(x))
    min_opset = 19 if ctx.attrs.get("dilations") is not None else 11
    for i in range(n):
        m = pool_axis_matrix(ctx, i, in_sp[i], 1, min_opset) != 0
        t = ctx.b.move_axis_matmul(t, r, 2 + i, ctx.b.const(m.astype(npdt), hint="lppool_T"))
    ax = ctx.op("Abs", [x])
    w = ctx.op("Mul", [ctx.op("Sign", [x]), ctx.op("Pow", [ax, c(p - 1.0)])]) if p != 1.0 else ctx.op("Sign", [x])
    return [ctx.op("Mul", [w, t])]


@rule("Compress")
def _compress(ctx):
    """A selection along ``axis`` (or of the flattened input): the runtime index adjoint."""
    cond = ctx.inputs[1]
    kw = {"axis": ctx.attrs["axis"]} if "axis" in ctx.attrs else {}
    fwd = lambda iota, _fill: ctx.op("Compress", [iota, cond], **kw)  # noqa: E731
    return [_iota_backward(ctx, fwd, repeats=False)[0], ZERO]


@rule("ReverseSequence")
def _reverse_sequence(ctx):
    """A permutation within each sequence: the runtime index adjoint."""
    lens = ctx.inputs[1]
    kw = {k: ctx.attrs[k] for k in ("batch_axis", "time_axis") if k in ctx.attrs}
    fwd = lambda iota, _fill: ctx.op("ReverseSequence", [iota, lens], **kw)  # noqa: E731
    return [_iota_backward(ctx, fwd, repeats=False)[0], ZERO]


@rule("MaxUnpool")
def _maxunpool(ctx):
    r""":math:`y_{\mathrm{flat}}[I] = x` (flat indices of the whole output, as MaxPool returns them):
    :math:`\bar x = g_{\mathrm{flat}}[I]`."""
    b = ctx.b
    gflat = b.op("Reshape", [ctx.grads[0], b.ints([-1])])
    return [ctx.op("Gather", [gflat, ctx.inputs[1]], axis=0)] + [ZERO] * (len(ctx.inputs) - 1)


@rule("Unique")
def _unique(ctx):
    r"""``Y = x_flat[indices]`` (first occurrences) when ``axis`` is absent: :math:`\bar x` scatters
    :math:`\bar Y` to those positions.  A tie (equal entries) is a kink: splitting it changes the
    output's size.  With ``axis`` (unique slices): refused."""
    if "axis" in ctx.attrs:
        raise ctx.unsupported("Unique along an axis")
    if ctx.grads[0] is None:
        return [ZERO]
    b = ctx.b
    x = ctx.inputs[0]
    n = b.op("Reshape", [b.op("Size", [x]), b.ints([1])])
    zeros = b.op("ConstantOfShape", [n], value=onnx_zero(ctx.elem(x)))
    flat = ctx.op("ScatterElements", [zeros, ctx.outputs[1], ctx.grads[0]], axis=0)
    return [b.reshape_like(flat, x)]


@rule("AffineGrid")
def _affine_grid(ctx):
    r""":math:`\mathrm{grid}[n, \mathbf{p}] = \theta_n\,[\mathbf{b}_{\mathbf{p}}; 1]` with the base coordinates
    :math:`\mathbf{b}_{\mathbf{p}}` of every output position: :math:`\bar\theta_n = \sum_{\mathbf{p}}
    g[n, \mathbf{p}] \otimes [\mathbf{b}_{\mathbf{p}}; 1]`.  The base coordinates are read in the graph
    from AffineGrid itself with :math:`\theta = [I\,|\,0]` (same size input and ``align_corners``)."""
    b = ctx.b
    theta, size = ctx.inputs
    r = ctx.rank(ctx.outputs[0])           # 4 (2-D) or 5 (3-D)
    nd = r - 2
    eye = np.concatenate([np.eye(nd), np.zeros((nd, 1))], axis=1)[None].astype(
        _np_dtype(ctx.elem(theta)))
    size1 = b.op("Concat", [b.ints([1]), b.op("Slice", [size, b.ints([1]), b.ints([r])])], axis=0)
    base = ctx.op("AffineGrid", [b.const(eye), size1], align_corners=ctx.attrs.get("align_corners", 0))
    ones = b.op("Slice", [ctx.op("Mul", [base, ctx.c(0.0, theta)]), b.ints([0]), b.ints([1]), b.ints([-1])])
    ones = ctx.op("Add", [ones, ctx.c(1.0, theta)])
    base = b.op("Concat", [base, ones], axis=-1)                      # (1, *S, nd + 1)
    sp = "dhw"[3 - nd:]
    eq = f"n{sp}i,z{sp}j->nij"
    return [ctx.op("Einsum", [ctx.grads[0], base], equation=eq), ZERO]


@rule("LRN")
def _lrn(ctx):
    r"""Local response normalisation across channels (Krizhevsky et al. 2012, Sec. 3.3):
    :math:`y_c = x_c D_c^{-\beta}`, :math:`D_c = k + \tfrac{\alpha}{n} S_c`,
    :math:`S_c = \sum_{c' \in w(c)} x_{c'}^2`, :math:`w(c) = [c - \lfloor (n-1)/2\rfloor,\ c + \lceil (n-1)/2\rceil]`:
    :math:`\bar x_c = g_c D_c^{-\beta} - \tfrac{2\alpha\beta}{n} x_c \sum_{c' : c \in w(c')} g_{c'} x_{c'} D_{c'}^{-\beta-1}`.
    The channel window sums are a (C × C) band matrix (needs a static channel count)."""
    from onnx import helper

    x = ctx.inputs[0]
    r = ctx.rank(x)
    (nc,) = ctx.static_dims(x, [1])
    size = ctx.attrs["size"]
    alpha, beta, bias = ctx.attrs.get("alpha", 1e-4), ctx.attrs.get("beta", 0.75), ctx.attrs.get("bias", 1.0)
    lo, hi = (size - 1) // 2, (size - 1) - (size - 1) // 2
    band = np.zeros((nc, nc))
    for c in range(nc):  # band[c', c] = [c' in w(c)]
        band[max(0, c - lo): min(nc, c + hi + 1), c] = 1.0
    npdt = helper.tensor_dtype_to_np_dtype(ctx.elem(x))
    b = ctx.b
    c = lambda v: ctx.c(v, x)  # noqa: E731
    g = ctx.grads[0]
    s = b.move_axis_matmul(ctx.op("Mul", [x, x]), r, 1, b.const(band.astype(npdt), hint="lrn_band"))
    dd = ctx.op("Add", [c(bias), ctx.op("Mul", [s, c(alpha / size)])])
    dmb = ctx.op("Pow", [dd, c(-beta)])                                      # D^-beta
    u = ctx.op("Mul", [ctx.op("Mul", [g, x]), ctx.op("Div", [dmb, dd])])     # g x D^(-beta-1)
    t = b.move_axis_matmul(u, r, 1, b.const(band.T.astype(npdt), hint="lrn_band_T"))
    dx = ctx.op("Sub", [ctx.op("Mul", [g, dmb]), ctx.op("Mul", [ctx.op("Mul", [x, t]), c(2 * alpha * beta / size)])])
    return [dx]


@rule("CumProd")
def _cumprod(ctx):
    r""":math:`y_i = \prod_{k \in S(i)} x_k` (:math:`S(i)` = prefix, exclusive and/or reversed):
    :math:`\bar x_j = \sum_i g_i\,[j \in S(i)] \prod_{k \in S(i), k \ne j} x_k`, exact with zeros.
    The :math:`n` products with :math:`x_j := 1` are the CumProd of :math:`n` stacked copies (memory
    :math:`n\,|x|`), and :math:`[j \in S(i)]` is the CumSum of the one-hot :math:`e_j` with the same
    flags.  Needs a constant axis (or a rank-1 input) and a static length along it."""
    x, ax_in = ctx.inputs
    b = ctx.b
    r = ctx.rank(x)
    # a rank-1 input has one axis whatever the (possibly runtime) axis input says
    axis = 0 if r == 1 else int(np.asarray(ctx.need_const(1, "axis")).reshape(-1)[0]) % r
    (n,) = ctx.static_dims(x, [axis])
    flags = {"exclusive": ctx.attrs.get("exclusive", 0), "reverse": ctx.attrs.get("reverse", 0)}
    shape = [n] + [1] * r
    shape[axis + 1] = n
    onehot = np.eye(n, dtype=bool).reshape(shape)
    e = b.const(onehot)
    xr = ctx.op("Where", [e, ctx.c(1.0, x), b.unsqueeze(x, [0])])                 # (n, *S), x_j := 1
    ax1 = b.const(np.int64(axis + 1))
    cp = ctx.op("CumProd", [xr, ax1], **flags)
    m = ctx.op("CumSum", [ctx.op("Cast", [e], to=ctx.elem(x)), ax1], **flags)      # [j in S(i)]
    t = ctx.op("Mul", [ctx.op("Mul", [b.unsqueeze(ctx.grads[0], [0]), m]), cp])
    t = b.reduce("ReduceSum", t, [axis + 1], keepdims=True)                        # (n, .., 1, ..)
    perm = list(range(r + 1))
    perm[0], perm[axis + 1] = perm[axis + 1], perm[0]
    return [b.squeeze(ctx.op("Transpose", [t], perm=perm), [0]), ZERO]
