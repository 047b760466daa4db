r"""Transformer attribution from attention probabilities: attention rollout and the
gradient-weighted relevance of Chefer et al.

Array conventions: ``attentions`` is a sequence of ``L`` arrays (one per attention layer, in
forward order), each ``(N, H, T, T)``: ``N`` samples, ``H`` heads, ``A[n, h, i, j]`` the weight
query token ``i`` gives key token ``j`` (each row a softmax: :math:`\sum_j A_{ij} = 1`).
``gradients`` has the same shapes: :math:`\partial y^c / \partial A` of the target score.  The
results are ``(N, T, T)`` token-to-token relevance matrices; :func:`token_relevance_map` reads the
row of a readout token (the class token) over the patch tokens and unflattens it to the grid.

(The module is ``refcam.math.attention``; no function of the package has that name.)

References
----------
.. [1] S. Abnar and W. Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020, §3
   (attention rollout, Eq. 1 and the residual :math:`0.5 W_{att} + 0.5 I`).
.. [2] H. Chefer, S. Gur and L. Wolf, "Generic Attention-model Explainability for Interpreting
   Bi-Modal and Encoder-Decoder Transformers", ICCV 2021, §3, Eq. 5–6 (self-attention rules).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .._validate import as_float_array
from ..errors import InvalidArgumentError, ShapeError

__all__ = ["HEAD_FUSIONS", "attention_rollout", "gradient_weighted_relevance", "token_relevance_map"]

HEAD_FUSIONS = ("mean", "max", "min")


def _stack(arrs: Sequence, name: str) -> list[np.ndarray]:
    if isinstance(arrs, np.ndarray) and arrs.ndim == 4:
        arrs = [arrs]
    if not isinstance(arrs, (list, tuple)) or not arrs:
        raise ShapeError(name, type(arrs).__name__, "a non-empty sequence of (N, H, T, T) arrays")
    out = [as_float_array(a, f"{name}[{i}]") for i, a in enumerate(arrs)]
    n, t = out[0].shape[0], out[0].shape[-1] if out[0].ndim else None
    for i, a in enumerate(out):
        if a.ndim != 4 or a.shape[-1] != a.shape[-2] or a.shape[0] != n or a.shape[-1] != t:
            raise ShapeError(f"{name}[{i}]", a.shape, f"(N, H, T, T) with N={n}, T={t}")
    return out


def attention_rollout(
    attentions: Sequence[np.ndarray],
    *,
    head_fusion: str = "mean",
    residual: bool = True,
) -> np.ndarray:
    r"""Attention rollout (Abnar & Zuidema 2020, Eq. 1).

    .. math::

        \hat A^{(l)} = \tfrac12\, \bar A^{(l)} + \tfrac12\, I, \qquad
        \tilde A = \hat A^{(L)} \hat A^{(L-1)} \cdots \hat A^{(1)}

    with :math:`\bar A^{(l)}` the heads of layer :math:`l` fused (the paper averages them:
    ``head_fusion="mean"``; ``"max"``/``"min"`` are the variants of Gildenblat's ``vit-explain``)
    and :math:`\tfrac12 I` the residual connection (§3: "we add the identity matrix and
    re-normalise the weights": each row of :math:`\tfrac12\bar A + \tfrac12 I` already sums to 1
    when the rows of :math:`A` do; rows are divided by their sum anyway, so fused ``max``/``min``
    heads are re-normalised too).  ``residual=False`` gives the raw product of the fused maps.

    Parameters
    ----------
    attentions : ``L`` arrays ``(N, H, T, T)``, first layer first.
    head_fusion : ``"mean"`` (paper), ``"max"`` or ``"min"``.
    residual : add the identity (paper: ``True``).

    Returns
    -------
    ``(N, T, T)``: :math:`\tilde A`; row ``i`` is how much each input token flows into token ``i``
    at the last layer.

    Examples
    --------
    >>> a = np.array([[[[1.0, 0.0], [0.5, 0.5]]]])          # N=1, H=1, T=2
    >>> attention_rollout([a, a])[0]                        # (0.5 A + 0.5 I)^2
    array([[1.    , 0.    ],
           [0.4375, 0.5625]])
    """
    atts = _stack(attentions, "attentions")
    if head_fusion not in HEAD_FUSIONS:
        raise InvalidArgumentError("head_fusion", head_fusion, " or ".join(map(repr, HEAD_FUSIONS)))
    fuse = {"mean": np.mean, "max": np.max, "min": np.min}[head_fusion]
    n, t = atts[0].shape[0], atts[0].shape[-1]
    dtype = np.result_type(*atts)
    eye = np.eye(t, dtype=dtype)
    out = np.broadcast_to(eye, (n, t, t)).copy()
    for a in atts:
        fused = fuse(a, axis=1)
        if residual:
            fused = 0.5 * fused + 0.5 * eye
        s = fused.sum(axis=-1, keepdims=True)
        # a zero row (only possible with head_fusion="min") stays zero instead of 0/0
        fused = np.divide(fused, s, out=np.zeros_like(fused), where=s != 0)
        out = fused @ out
    return out


def gradient_weighted_relevance(
    attentions: Sequence[np.ndarray], gradients: Sequence[np.ndarray]
) -> np.ndarray:
    r"""Relevance of Chefer, Gur & Wolf 2021 for self-attention (Eq. 5–6).

    .. math::

        \bar A^{(l)} = \mathbb E_h\big[(\nabla A^{(l)} \odot A^{(l)})^+\big], \qquad
        R^{(0)} = I, \qquad R^{(l)} = R^{(l-1)} + \bar A^{(l)} R^{(l-1)}

    :math:`\nabla A = \partial y^c/\partial A` of the target score, :math:`(\cdot)^+` the ReLU,
    :math:`\mathbb E_h` the mean over heads, layers in forward order.  The paper's ViT readout is
    the class-token row :math:`R_{0, 1:}` (:func:`token_relevance_map`).

    Parameters
    ----------
    attentions, gradients : ``L`` arrays ``(N, H, T, T)`` each, first layer first.

    Returns
    -------
    ``(N, T, T)``: :math:`R^{(L)}`.

    Examples
    --------
    >>> a = np.array([[[[0.75, 0.25], [0.5, 0.5]]]])
    >>> g = np.array([[[[2.0, -4.0], [1.0, 1.0]]]])
    >>> gradient_weighted_relevance([a], [g])[0]             # I + relu(g*a)
    array([[2.5, 0. ],
           [0.5, 1.5]])
    """
    atts = _stack(attentions, "attentions")
    grads = _stack(gradients, "gradients")
    if len(atts) != len(grads):
        raise ShapeError("gradients", len(grads), f"{len(atts)} arrays (one per attention layer)")
    for i, (a, g) in enumerate(zip(atts, grads)):
        if a.shape != g.shape:
            raise ShapeError(f"gradients[{i}]", g.shape, a.shape)
    n, t = atts[0].shape[0], atts[0].shape[-1]
    dtype = np.result_type(*atts, *grads)
    r = np.broadcast_to(np.eye(t, dtype=dtype), (n, t, t)).copy()
    for a, g in zip(atts, grads):
        cam = np.maximum(g * a, 0).mean(axis=1)            # Eq. 5
        r = r + cam @ r                                     # Eq. 6
    return r


def token_relevance_map(
    relevance: np.ndarray, grid: Sequence[int], *, prefix: int = 1, token: int = 0
) -> np.ndarray:
    r"""Row ``token`` of a ``(N, T, T)`` relevance over the grid tokens, as ``(N, *grid)`` maps.

    ``R[:, token, prefix : prefix + h·w]`` reshaped row-major to ``(h, w)``: the relevance of each
    patch for the readout token (the class token ``0`` of ViT/DeiT; DeiT's distillation token is
    ``1``).  Tokens after the grid (registers appended last) are ignored.

    >>> r = np.arange(25.0).reshape(1, 5, 5)
    >>> token_relevance_map(r, (2, 2))[0]
    array([[1., 2.],
           [3., 4.]])
    """
    r = as_float_array(relevance, "relevance")
    grid = tuple(int(g) for g in grid)
    hw = int(np.prod(grid))
    if r.ndim != 3 or r.shape[1] != r.shape[2]:
        raise ShapeError("relevance", r.shape, "(N, T, T)")
    if prefix < 0 or prefix + hw > r.shape[-1] or not 0 <= token < r.shape[1]:
        raise ShapeError("relevance", r.shape, f"T ≥ prefix + h·w = {prefix} + {hw}, token < T")
    return r[:, token, prefix : prefix + hw].reshape((r.shape[0],) + grid)
