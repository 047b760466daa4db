"""ROAD: RemOve And Debias with noisy linear imputation (Rong et al. 2022).

Removing pixels by overwriting them with a constant leaks the removal mask's shape into the model's
input (the model can "see" where the explanation was).  ROAD replaces each removed pixel by the
weighted mean of its 8 neighbours — solving one sparse linear system for all removed pixels jointly
— and adds a little Gaussian noise.

Conventions:

* **neighbour weights** — 1/6 for the 4 direct neighbours, 1/12 for the 4 diagonal ones (the
  authors' reference code); neighbours outside the image are dropped and the remaining weights
  renormalised (the equation's diagonal is the sum of in-image weights).
* **noise** — i.i.d. :math:`\\mathcal N(0, \\text{noise}^2)` added to every imputed value
  (default 0.01, absolute), drawn from ``numpy.random.default_rng([seed, item])`` so results do not
  depend on ``batch_size``.
* **order** — ``"morf"`` (most relevant first) removes the top-ranked pixels: descending saliency,
  ties by ascending flat index (as :func:`refcam.metrics.saliency_order`); ``"lerf"`` (least
  relevant first) removes the bottom-ranked: ascending saliency, ties by ascending flat index.
* **count** — a removal percentage :math:`q` removes :math:`\\lfloor qP + 1/2 \\rfloor` of the
  :math:`P` pixels (round half up); :math:`q < 1` so at least one pixel remains to impute from.

Inherently 2-D (the 8-neighbourhood of images).

Reference: Y. Rong, T. Leemann, V. Borisov, G. Kasneci, E. Kasneci, "A Consistent and Efficient
Evaluation Strategy for Attribution Methods", ICML 2022, arXiv:2202.00449 (noisy linear imputation; the section is not verified — the weights
and the system follow the authors' public reference code).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import sparse
from scipy.sparse import linalg as splinalg

from .. import _validate as V
from ..errors import InvalidArgumentError, ShapeError
from ._common import ScoreFn, batched_scores, images, maps_for_inputs, targets_array

__all__ = ["NEIGHBOR_WEIGHTS", "RoadCurve", "noisy_linear_imputation", "road"]

#: (dy, dx, weight) of the 8 neighbours in the linear imputation.
NEIGHBOR_WEIGHTS: tuple[tuple[int, int, float], ...] = (
    (-1, -1, 1 / 12),
    (-1, 0, 1 / 6),
    (-1, 1, 1 / 12),
    (0, -1, 1 / 6),
    (0, 1, 1 / 6),
    (1, -1, 1 / 12),
    (1, 0, 1 / 6),
    (1, 1, 1 / 12),
)


def _impute(x: np.ndarray, rem: np.ndarray, noise: float, seeds: Sequence[Any]) -> np.ndarray:
    """Core solver. x (B, C, H, W) float, rem (B, H, W) bool with >= 1 kept pixel per sample.

    One sparse system per sample (not one block-diagonal system for the batch): the sparse LU's
    pivoting depends on the whole matrix, and solving per sample keeps the result bit-for-bit
    independent of ``batch_size``.  The assembly inside each system is vectorised.
    """
    if x.shape[0] == 1:
        return _impute_block(x, rem, noise, seeds)
    return np.concatenate(
        [
            _impute_block(x[i : i + 1], rem[i : i + 1], noise, seeds[i : i + 1])
            for i in range(x.shape[0])
        ]
    )


def _impute_block(x: np.ndarray, rem: np.ndarray, noise: float, seeds: Sequence[Any]) -> np.ndarray:
    b, c, h, w = x.shape
    flat_rem = rem.reshape(-1)
    u = np.flatnonzero(flat_rem)  # unknowns over the whole batch (block-diagonal system)
    if u.size == 0:
        return x.copy()
    vid = np.full(flat_rem.size, -1, dtype=np.int64)
    vid[u] = np.arange(u.size)
    bi, yi, xi = np.unravel_index(u, (b, h, w))
    diag = np.zeros(u.size)
    rhs = np.zeros((u.size, c))
    rows, cols, vals = [], [], []
    xt = np.moveaxis(x, 1, -1).astype(np.float64)  # (B, H, W, C)
    for dy, dx, wt in NEIGHBOR_WEIGHTS:
        ny, nx = yi + dy, xi + dx
        ok = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        diag[ok] += wt
        i = np.flatnonzero(ok)
        nb = np.ravel_multi_index((bi[i], ny[i], nx[i]), (b, h, w))
        unknown = flat_rem[nb]
        rows.append(i[unknown])
        cols.append(vid[nb[unknown]])
        vals.append(np.full(int(unknown.sum()), -wt))
        k = i[~unknown]
        rhs[k] += wt * xt[bi[k], ny[k], nx[k]]
    rows.append(np.arange(u.size))
    cols.append(np.arange(u.size))
    vals.append(diag)
    a = sparse.csc_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(u.size, u.size)
    )
    sol = splinalg.spsolve(a, rhs)
    sol = sol.reshape(u.size, c)
    if noise > 0:
        for s in range(b):  # per-item generators: reproducible whatever the batching
            sel = bi == s
            sol[sel] += noise * np.random.default_rng(seeds[s]).standard_normal((int(sel.sum()), c))
    out = xt.copy()
    out[bi, yi, xi] = sol
    return np.moveaxis(out, -1, 1).astype(x.dtype, copy=False)


def _seed(seed: Any) -> int:
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidArgumentError("seed", seed, "a non-negative integer")
    return int(seed)


def noisy_linear_imputation(
    inputs: Any, remove: Any, *, noise: float = 0.01, seed: int = 0
) -> np.ndarray:
    r"""Fill removed pixels by noisy linear imputation (Rong et al. 2022, ROAD).

    For every removed pixel :math:`i` (all channels independently) the imputed value solves

    .. math::
        \Big(\sum_{j \in \mathcal N(i)} w_{ij}\Big) x_i - \sum_{j \in \mathcal N(i) \cap R} w_{ij} x_j
        = \sum_{j \in \mathcal N(i) \setminus R} w_{ij} v_j

    i.e. :math:`x_i` is the :math:`w`-weighted mean of its in-image 8 neighbours (:math:`R` = removed
    set, :math:`v` = kept values, :math:`w` = 1/6 direct, 1/12 diagonal); the sparse system is solved
    with :func:`scipy.sparse.linalg.spsolve`, then :math:`\mathcal N(0, \text{noise}^2)` is added.
    The system is non-singular whenever each sample keeps at least one pixel (every removed
    component then borders a kept pixel: irreducibly diagonally dominant).

    Parameters
    ----------
    inputs : (N, C, H, W) array.
    remove : (N, H, W) bool array — True = removed.  Each sample must keep at least one pixel.
    noise : float >= 0 — standard deviation of the added noise (absolute units of the input).
    seed : int — noise of sample ``n`` comes from ``default_rng([seed, n])``.

    Returns
    -------
    (N, C, H, W) array, inputs' dtype; kept pixels unchanged.

    Examples
    --------
    >>> x = np.array([[[[0.0, 9.0, 6.0]]]])
    >>> noisy_linear_imputation(x, np.array([[[False, True, False]]]), noise=0.0)  # (0 + 6) / 2
    array([[[[0., 3., 6.]]]])
    """
    x = images(inputs)
    if x.ndim != 4:
        raise ShapeError("inputs", x.shape, "(N, C, H, W): noisy linear imputation is 2-D")
    r = np.asarray(remove)
    if r.dtype.kind not in "biu" or r.shape != (x.shape[0],) + x.shape[2:]:
        raise ShapeError(
            "remove", r.shape, (x.shape[0],) + x.shape[2:], "a boolean mask per sample"
        )
    r = r != 0
    full = r.reshape(r.shape[0], -1).all(axis=1)
    if full.any():
        raise InvalidArgumentError(
            "remove",
            f"all pixels of sample {int(np.argmax(full))} removed",
            "at least one kept pixel per sample to impute from",
        )
    nz = V.nonnegative_float(noise, "noise")
    seed = _seed(seed)
    return _impute(x, r, nz, [[seed, n] for n in range(x.shape[0])])


@dataclass(frozen=True)
class RoadCurve:
    """Result of :func:`road`.

    Attributes
    ----------
    percentages : (T,) — removal fractions :math:`q`.
    counts : (T,) int64 — pixels removed at each :math:`q`.
    scores : (N, T) — target score of the imputed images.
    mean : (N,) — mean score over the percentages (for MoRF lower is better, for LeRF higher).
    order : str — ``"morf"`` or ``"lerf"``.
    """

    percentages: np.ndarray
    counts: np.ndarray
    scores: np.ndarray
    mean: np.ndarray
    order: str


def road(
    score_fn: ScoreFn,
    inputs: Any,
    maps: Any,
    targets: Any = None,
    *,
    percentages: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    order: str = "morf",
    noise: float = 0.01,
    seed: int = 0,
    resize: str | None = None,
    batch_size: int = 32,
    progress: bool = True,
) -> RoadCurve:
    r"""ROAD curve (Rong et al. 2022): score after removing a share of pixels with noisy linear imputation.

    .. math::
        y_t = f_c\big(\mathrm{NLI}(I, R_t)\big),\qquad
        R_t = \{\text{first } \lfloor q_t P + \tfrac12 \rfloor \text{ pixels of the order}\}

    Parameters
    ----------
    score_fn : callable ``(M, C, H, W) -> (M,)`` or ``(M, n_classes)``
    inputs : (N, C, H, W) array
    maps : (N, H, W) array
    targets : None, int or (N,) ints
    percentages : fractions in [0, 1)
    order : {"morf", "lerf"}
    noise, seed : see :func:`noisy_linear_imputation`.
    resize, batch_size, progress : as in :func:`refcam.metrics.deletion`.

    Examples
    --------
    >>> f = lambda x: x[:, 0, 0, 0]                      # the model looks at pixel (0, 0) only
    >>> x = np.array([[[[4.0, 2.0], [2.0, 2.0]]]])
    >>> road(f, x, np.array([[[1.0, 0.0], [0.0, 0.0]]]), percentages=[0.25], noise=0.0,
    ...      progress=False).scores                       # pixel (0,0) imputed from 3 neighbours = 2
    array([[2.]])
    """
    x = images(inputs)
    if x.ndim != 4:
        raise ShapeError("inputs", x.shape, "(N, C, H, W): ROAD is 2-D")
    m = maps_for_inputs(maps, x, resize=resize)
    V.choice(order, "order", ("morf", "lerf"))
    q = V.as_float_array(percentages, "percentages")
    if q.ndim != 1 or q.size == 0 or (q < 0).any() or (q >= 1).any():
        raise InvalidArgumentError(
            "percentages", percentages, "a non-empty list of fractions in [0, 1)"
        )
    nz = V.nonnegative_float(noise, "noise")
    seed = _seed(seed)
    t = targets_array(targets, x.shape[0])
    n = x.shape[0]
    flat = m.reshape(n, -1)
    p = flat.shape[1]
    key = -flat if order == "morf" else flat
    ranking = np.argsort(key, axis=1, kind="stable")
    rank = np.empty_like(ranking)
    np.put_along_axis(rank, ranking, np.broadcast_to(np.arange(p), (n, p)), axis=1)
    counts = np.floor(q * p + 0.5).astype(np.int64)
    if (counts >= p).any():
        raise InvalidArgumentError(
            "percentages", percentages, f"fractions that keep at least one of the {p} pixels"
        )
    n_pts = q.size
    dt = V.result_dtype(x, m)
    xx = x.astype(dt, copy=False)

    def build(items: np.ndarray) -> np.ndarray:
        s, k = items // n_pts, items % n_pts
        rem = (rank[s] < counts[k][:, None]).reshape((items.size,) + x.shape[2:])
        return _impute(xx[s], rem, nz, [[seed, int(i)] for i in items])

    item_t = None if t is None else np.repeat(t, n_pts)
    sc = (
        batched_scores(
            score_fn,
            n * n_pts,
            build,
            item_t,
            batch_size=batch_size,
            progress=progress,
            desc=f"ROAD {order}",
        )
        .reshape(n, n_pts)
        .astype(dt)
    )
    return RoadCurve(q.astype(dt), counts, sc, sc.mean(axis=1), order)
