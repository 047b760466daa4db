r"""Deep Feature Factorization: non-negative matrix factorisation of the activations.

Collins, Achanta & Süsstrunk, 2018, "Deep Feature Factorization For Concept Discovery" (ECCV 2018,
arXiv:1806.10206), Sect. 3: the activations of a batch, reshaped to a non-negative matrix
:math:`A \in \mathbb R_{\ge 0}^{K \times NZ}` (one row per channel, one column per position of
every image), are factorised :math:`A \approx W H` with :math:`W \in \mathbb R_{\ge 0}^{K\times r}`
(the *concepts*, one column per factor) and :math:`H \in \mathbb R_{\ge 0}^{r\times NZ}` (the
*heat maps*, one row per factor), :math:`\min_{W,H\ge 0} \lVert A - WH\rVert_F^2` (Eq. 1).

NMF is non-convex: its result depends on the initialisation and the solver.  refcam fixes both
and is deterministic: scikit-learn's ``init="random"`` draws
(:math:`W, H = |\mathcal N(0,1)|\sqrt{\bar A / r}` from ``numpy.random.RandomState(seed)``, H
first) and its coordinate-descent solver (Cichocki & Phan 2009, "Fast local algorithms for large
scale nonnegative matrix and tensor factorizations", HALS updates in the order of
scikit-learn's ``_update_cdnmf_fast``), with the same stopping rule.  pytorch-grad-cam's
``DeepFeatureFactorization`` is that solver with ``random_state=0``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._finite import finite_output
from .. import _validate as _v
from ..errors import InvalidArgumentError, ShapeError

__all__ = ["dff", "nmf"]


def _cd_sweep(w: np.ndarray, hht: np.ndarray, xht: np.ndarray) -> float:
    """One HALS pass over the columns of ``w`` in place; returns the projected-gradient norm₁.

    For column :math:`t`: :math:`\\nabla_t = W\\,(HH^\\top)_{:,t} - (XH^\\top)_{:,t}`,
    :math:`W_{:,t} \\leftarrow \\max(W_{:,t} - \\nabla_t / (HH^\\top)_{tt}, 0)` (skipped when the
    diagonal entry is 0); the violation is :math:`\\sum |\\nabla_t|` with :math:`\\min(0, \\nabla)`
    at entries that are exactly 0.  Rows are independent: this is scikit-learn's sequential loop
    (``_cdnmf_fast.pyx``) vectorised over the rows.
    """
    violation = 0.0
    for t in range(w.shape[1]):
        grad = w @ hht[t] - xht[:, t]
        pg = np.where(w[:, t] == 0, np.minimum(grad, 0), grad)
        violation += float(np.abs(pg).sum())
        h = hht[t, t]
        if h != 0:
            w[:, t] = np.maximum(w[:, t] - grad / h, 0)
    return violation


@finite_output
def nmf(x: Any, n_components: int, *, seed: int = 0, max_iter: int = 200, tol: float = 1e-4
        ) -> tuple[np.ndarray, np.ndarray, int]:
    r"""Non-negative matrix factorisation :math:`X \approx WH` by coordinate descent.

    .. math:: \min_{W \ge 0,\ H \ge 0}\ \tfrac12 \lVert X - WH\rVert_F^2

    Initialisation (scikit-learn ``init="random"``): :math:`s = \sqrt{\bar X / r}`,
    :math:`H = |s\,\xi_H|`, :math:`W = |s\,\xi_W|` with :math:`\xi` standard normal draws of
    ``numpy.random.RandomState(seed)`` (``H`` drawn first, shape ``(r, m)``, then ``W``
    ``(n, r)``).  Each iteration updates every column of :math:`W` (HALS, see :func:`_cd_sweep`)
    then every row of :math:`H`; it stops after the first iteration whose summed violation is
    at most ``tol`` times that of the first iteration, or after ``max_iter`` iterations
    (scikit-learn ``NMF(solver="cd")`` defaults, no regularisation, no shuffling).

    Parameters
    ----------
    x : array (n, m), non-negative, finite.
    n_components : int >= 1, :math:`r`.
    seed : int, the ``RandomState`` seed of the initialisation.
    max_iter : int >= 1.
    tol : float >= 0.

    Returns
    -------
    W : (n, r), H : (r, m) (dtype of ``x``; computed in it, as scikit-learn does), n_iter : int.

    Examples
    --------
    >>> x = np.outer([1., 2.], [3., 0., 1.])           # rank one
    >>> w, h, _ = nmf(x, 1)
    >>> bool(np.allclose(w @ h, x))
    True
    """
    a = _v.as_float_array(x, "x")
    if a.ndim != 2:
        raise ShapeError("x", a.shape, "(n, m)", "a matrix")
    if a.size and a.min() < 0:
        raise InvalidArgumentError("x", f"min {a.min()}", "a non-negative matrix")
    r = _v.positive_int(n_components, "n_components")
    max_iter = _v.positive_int(max_iter, "max_iter")
    tol = _v.nonnegative_float(tol, "tol")
    rng = np.random.RandomState(seed)
    s = np.sqrt(a.mean() / r)
    h = s * rng.standard_normal(size=(r, a.shape[1])).astype(a.dtype, copy=False)
    w = s * rng.standard_normal(size=(a.shape[0], r)).astype(a.dtype, copy=False)
    w, h = np.abs(w), np.abs(h)
    ht = np.ascontiguousarray(h.T)
    v0 = None
    it = 0
    for it in range(1, max_iter + 1):
        v = _cd_sweep(w, ht.T @ ht, a @ ht)
        v += _cd_sweep(ht, w.T @ w, a.T @ w)
        if it == 1:
            v0 = v
        if v0 == 0 or v / v0 <= tol:
            break
    return w, np.ascontiguousarray(ht.T), it


@finite_output
def dff(activations: Any, n_components: int = 5, *, seed: int = 0, max_iter: int = 200,
        tol: float = 1e-4) -> tuple[np.ndarray, np.ndarray]:
    r"""Deep Feature Factorization of a batch of activations: concepts and their heat maps.

    .. math:: \hat A_{k,(n,ij)} = A^k_{n,ij} - \min_{n,ij} A^k_{n,ij},\qquad
              \hat A \approx W H,\qquad
              \text{concepts} = W + \min A^k,\quad \text{maps}_{n,r} = H_{r,(n,\cdot)}

    Collins, Achanta & Süsstrunk 2018 (ECCV), Sect. 3, Eq. 1, on the whole batch at once (the
    factors are shared by all images, the heat maps are per image).  The per-channel offset
    makes the matrix non-negative for any activations (the paper factorises post-ReLU maps;
    pytorch-grad-cam 1.5.7 ``deep_feature_factorization.py:10-31`` subtracts the offset and adds
    it back to the concepts, as here).  NMF by :func:`nmf` (deterministic given ``seed``).

    Parameters
    ----------
    activations : array (N, K, *S)
    n_components : int >= 1, the number of concepts :math:`r`.
    seed, max_iter, tol : see :func:`nmf`.

    Returns
    -------
    concepts : (K, r) -- the concept embeddings (columns of :math:`W` plus the channel offset);
        a classifier applied to ``concepts.T`` gives per-concept class scores.
    maps : (N, r, *S) -- the heat map of every concept in every image (rows of :math:`H`).

    Examples
    --------
    >>> a = np.array([[[1., 0.], [0., 2.]]])           # N=1, K=2, Z=2: already factorised
    >>> c, m = dff(a, 2)
    >>> bool(np.allclose(np.einsum("kr,nrz->nkz", c - a.min(axis=2).T, m), a))
    True
    """
    x = _v.feature_maps(activations, "activations")
    n, k = x.shape[:2]
    mat = np.swapaxes(x, 0, 1).reshape(k, -1)            # (K, N*Z)
    offset = mat.min(axis=1)
    w, h, _ = nmf(mat - offset[:, None], n_components, seed=seed, max_iter=max_iter, tol=tol)
    r = w.shape[1]
    maps = np.swapaxes(h.reshape((r, n) + x.shape[2:]), 0, 1)
    return w + offset[:, None], np.ascontiguousarray(maps)
