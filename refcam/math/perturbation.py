r"""Forward-only (perturbation) CAM methods: the math around the model's scores.

The adapter runs the model on perturbed inputs (masked images for Score-CAM, ablated channels
for Ablation-CAM) and passes the target-class scores here; these functions turn those scores
into channel weights and maps.  Shapes: activations ``(N, K, *S)``; ``scores`` ``(N, K)`` -- the
target score of sample ``n`` when channel ``k`` is used to perturb it; ``baseline_score``
``(N,)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._finite import finite_output
from .. import _validate as _v
from ..errors import InvalidArgumentError, ShapeError
from .blocks import _channel_vector, _flag, _maybe_relu, _weighted_sum
from .post import UPSAMPLE_MODES, normalize, normalize_validated, upsample
from .post import softmax as _softmax

__all__ = [
    "ABLATION_VALUES",
    "ISCAM_SCHEDULES",
    "MASK_ORDERS",
    "PGC_ABLATION_BATCH",
    "ablation_values",
    "ablated_activations",
    "scorecam_masks",
    "scorecam_weights",
    "scorecam",
    "ablationcam_weights",
    "ablationcam",
    "sscam",
    "sscam_masks",
    "sscam_noise",
    "sscam_weights",
    "iscam_scales",
    "iscam_masks",
    "iscam_weights",
    "iscam",
]


def _scores(x: Any, name: str = "scores", layout: str = "(N, K)",
            meaning: str = "one score per sample and channel") -> np.ndarray:
    """``x`` as a float array of ``layout`` with every axis non-empty."""
    arr = _v.as_float_array(x, name)
    ndim = layout.count(",") + 1
    _v.check_ndim(arr, name, min_ndim=ndim, max_ndim=ndim, layout=f"{layout}: {meaning}")
    if 0 in arr.shape:
        raise ShapeError(name, arr.shape, f"{layout} with every axis non-empty")
    return arr


def _baseline(x: Any, name: str, n: int, *, allow_scalar: bool) -> np.ndarray:
    arr = _v.as_float_array(x, name)
    if allow_scalar and arr.ndim == 0:
        return np.broadcast_to(arr, (n,))
    if arr.shape != (n,):
        raise ShapeError(name, arr.shape, (n,) if not allow_scalar else f"() or {(n,)}",
                         "one score per sample")
    return arr


def _scorecam_weights(c: np.ndarray, b: np.ndarray | None, softmax: bool) -> np.ndarray:
    dt = c.dtype if b is None else _v.result_dtype(c, b)
    c = c.astype(dt, copy=False)
    if b is not None:
        c = c - b.astype(dt, copy=False)[:, None]
    if softmax:
        c = _softmax(c, axis=1)
    return c


# --------------------------------------------------------------------------- Score-CAM

#: ``mask_order`` of :func:`scorecam_masks`: where the per-channel min-max happens.
MASK_ORDERS = ("upsample-then-normalize", "normalize-then-upsample")


@finite_output
def scorecam_masks(
    activations: Any,
    size: Any,
    *,
    upsample_mode: str = "linear",
    mask_order: str = "upsample-then-normalize",
    mask_eps: float = 0.0,
) -> np.ndarray:
    r"""Score-CAM masks :math:`H^k`: each channel upsampled to the input size and min-max scaled.

    .. math:: H^k = s\big(\mathrm{Up}(A^k)\big), \qquad
              s(M) = \frac{M - \min M}{\max M - \min M}

    Wang et al., 2020, "Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural
    Networks" (CVPR Workshops; = arXiv:1910.01279 v2+), eq. 7 in Definition 4 (Up = upsampling
    to the input resolution) and eq. 8, Sec. 3.1 (:math:`s` = min-max normalisation of each
    channel separately).  The adapter multiplies each mask into the
    input (:math:`X \circ H^k`) and runs the model to get the ``scores`` of :func:`scorecam`.

    Parameters
    ----------
    activations : array of shape (N, K, *S)
    size : sequence of int, length ``len(S)``
        Input spatial size ``S_in`` (numpy order, e.g. ``(H, W)``).
    upsample_mode : {"linear", "linear-align-corners", "nearest", "nearest-exact"}, default "linear"
        See :func:`refcam.math.upsample`.  The paper does not name its interpolation; ``"linear"``
        (half-pixel, torch ``align_corners=False``) is refcam's default.
    mask_order : {"upsample-then-normalize", "normalize-then-upsample"} (:data:`MASK_ORDERS`)
        The paper normalises the upsampled map (:math:`s(\mathrm{Up}(A^k))`).  The other order
        differs when an extreme lies between output samples (half-pixel linear upsampling does
        not reproduce interior peaks).
    mask_eps : float >= 0, default 0.0
        ``0.0``: exact :math:`s`, with a constant channel giving an all-zero mask (the
        zero-range guard of :func:`refcam.math.normalize`; constancy is decided on ``A^k``
        itself, so interpolation round-off cannot turn a constant channel into noise).
        ``mask_eps > 0`` is added to :math:`\max M - \min M`, as the libraries do.

    Returns
    -------
    ndarray of shape (N, K, *size), dtype of ``activations``.

    Notes
    -----
    Peer conventions (reproducible with the keywords): pytorch-grad-cam ``ScoreCAM`` =
    ``upsample_mode="linear-align-corners", mask_order="upsample-then-normalize", mask_eps=1e-8``
    (``UpsamplingBilinear2d``); torchcam ``ScoreCAM`` = ``upsample_mode="linear",
    mask_order="normalize-then-upsample", mask_eps=1e-8``.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.array([[[0., 4.], [3., 3.]]])                 # (1, 2, 2): 1-D spatial
    >>> scorecam_masks(a, (4,))                              # Up([0, 4]) = [0, 1, 3, 4]
    array([[[0.  , 0.25, 0.75, 1.  ],
            [0.  , 0.  , 0.  , 0.  ]]])
    """
    a = _v.feature_maps(activations, "activations")
    spatial = a.shape[2:]
    if isinstance(size, (str, bytes)) or not hasattr(size, "__len__") or len(size) != len(spatial):
        raise InvalidArgumentError("size", size, f"a sequence of {len(spatial)} positive integers "
                                   f"(one per spatial axis of activations {spatial})")
    mode = _v.choice(upsample_mode, "upsample_mode", UPSAMPLE_MODES)
    order = _v.choice(mask_order, "mask_order", MASK_ORDERS)
    eps = _v.nonnegative_float(mask_eps, "mask_eps")
    n, k = a.shape[:2]

    def _s(x: np.ndarray, in_place: bool) -> np.ndarray:   # per-channel min-max, spatial axes
        flat = x.reshape((n * k,) + x.shape[2:])
        if in_place:  # x is a fresh contiguous array of ours: normalise it where it is
            return normalize_validated(flat, "minmax", eps, out=flat).reshape(x.shape)
        return normalize(flat, "minmax", eps).reshape(x.shape)

    if order == "upsample-then-normalize":
        h = _s(upsample(a, size, mode), in_place=True)
    else:
        h = upsample(_s(a, in_place=False), size, mode)
    # A constant channel upsamples to a constant in exact arithmetic, but the interpolation
    # weights' round-off can leave 1-ulp ripples that min-max would blow up to [0, 1]: decide
    # constancy exactly, at feature resolution, and give those channels the zero mask.
    sp = tuple(range(2, a.ndim))
    constant = a.max(axis=sp) == a.min(axis=sp)
    if constant.any():
        h[constant] = 0
    return h


@finite_output
def scorecam_weights(
    scores: Any, baseline_score: Any = None, *, softmax: bool = False
) -> np.ndarray:
    r"""Score-CAM channel weights from the scores of the masked inputs.

    .. math:: \alpha^c_k = C(A^k) = f^c(X \circ H^k) - f^c(X_b)

    Wang, Wang, Du, Yang, Zhang, Ding, Mardziel & Hu, 2020, "Score-CAM: Score-Weighted Visual
    Explanations for Convolutional Neural Networks" (CVPR Workshops; numbering of arXiv:1910.01279
    v2+): Definition 4, eq. 6 (channel-wise increase of confidence :math:`C(A^k_l)`) and
    Definition 5, eq. 10 (:math:`\alpha^c_k = C(A^k_l)`).

    Parameters
    ----------
    scores : array of shape (N, K)
        :math:`f^c(X \circ H^k)`, the target score of each masked input.
    baseline_score : None, scalar or array of shape (N,)
        :math:`f^c(X_b)`, the score of the baseline input; ``None`` means 0 (no subtraction,
        which is what pytorch-grad-cam and torchcam do).
    softmax : bool, default False
        The paper describes the score twice, inconsistently.  ``False``:
        :math:`\alpha^c_k = C(A^k)` as in eq. 10; Sec. 3.2 ("Normalization on Score") takes
        :math:`f^c` to be the model's **post-softmax probability** of class :math:`c` (the
        adapter chooses what ``scores`` are).  ``True``: softmax **over the channels k** of
        :math:`C(A^k)`, :math:`\alpha_k = e^{C_k} / \sum_{k'} e^{C_{k'}}`, as in the paper's
        Algorithm 1 (where :math:`f^c` is the **logit**) and in pytorch-grad-cam / torchcam,
        which apply it to the raw logits of the masked inputs.  The softmax is shift invariant,
        so ``baseline_score`` has no effect when ``softmax=True``.  (The experiments use the
        baseline :math:`X_b = 0`.)

    Returns
    -------
    ndarray of shape (N, K).

    Examples
    --------
    >>> import numpy as np
    >>> scorecam_weights(np.array([[0.5, 0.2]]), np.array([0.1]))
    array([[0.4, 0.1]])
    >>> scorecam_weights(np.array([[np.log(3.), 0.]]), softmax=True)   # e^C = [3, 1]
    array([[0.75, 0.25]])
    """
    c = _scores(scores)
    b = None if baseline_score is None else _baseline(baseline_score, "baseline_score", c.shape[0],
                                                      allow_scalar=True)
    return _scorecam_weights(c, b, _flag(softmax, "softmax"))


@finite_output
def scorecam(
    activations: Any,
    scores: Any,
    *,
    baseline_score: Any = None,
    softmax: bool = False,
    relu: bool = True,
) -> np.ndarray:
    r"""Score-CAM map.

    .. math:: L^c_{\text{Score-CAM}} = \mathrm{ReLU}\Big(\sum_k \alpha^c_k A^k\Big),
              \qquad \alpha^c_k = f^c(X \circ H^k) - f^c(X_b)

    Wang et al., 2020, Definition 5, eqs. 9-10 (weights: :func:`scorecam_weights`).

    Parameters
    ----------
    activations : array of shape (N, K, *S)
    scores : array of shape (N, K)
    baseline_score : None, scalar or array of shape (N,)
    softmax : bool, default False
        See :func:`scorecam_weights`.
    relu : bool, default True
        Eq. 9 applies a ReLU.

    Returns
    -------
    ndarray of shape (N, *S).

    Examples
    --------
    >>> import numpy as np
    >>> a = np.array([[[[1., 0.]], [[0., 1.]]]])
    >>> scorecam(a, np.array([[0.5, -0.2]]))                   # ReLU([0.5, -0.2])
    array([[[0.5, 0. ]]])
    """
    a = _v.feature_maps(activations, "activations")
    c = _channel_vector(scores, "scores", a)
    b = None if baseline_score is None else _baseline(baseline_score, "baseline_score", a.shape[0],
                                                      allow_scalar=True)
    w = _scorecam_weights(c, b, _flag(softmax, "softmax"))
    dt = _v.result_dtype(a, w)
    m = _weighted_sum(a.astype(dt, copy=False), w.astype(dt, copy=False))
    return _maybe_relu(m, relu)


# --------------------------------------------------------------------------- Ablation-CAM

def _ablation_weights(c: np.ndarray, y: np.ndarray) -> np.ndarray:
    dt = _v.result_dtype(c, y)
    c = c.astype(dt, copy=False)
    y = y.astype(dt, copy=False)[:, None]
    nonzero = y != 0
    safe_y = np.where(nonzero, y, 1)
    with np.errstate(over="ignore", invalid="ignore"):
        w = (y - c) / safe_y
        bad = ~np.isfinite(w)
        if bad.any():
            # y - c overflowed although the quotient may be representable: 1 - c / y
            w = np.where(bad, 1 - c / safe_y, w)
    w = np.where(nonzero, w, 0).astype(dt, copy=False)
    bad = ~np.isfinite(w)
    if bad.any():
        i = int(np.argwhere(bad)[0, 0])
        raise InvalidArgumentError(
            "baseline_score",
            f"{float(y[i, 0])!r} at sample {i}",
            f"|y^c| large enough for w^c_k = (y^c - y^c_k) / y^c to be representable in {dt} "
            f"(the exact weight exceeds {np.finfo(dt).max:.3g} for y^c_k = {float(c[i][bad[i]][0])!r})",
        )
    return w


def _ablation_map(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        m = _weighted_sum(a, w)
    bad = ~np.isfinite(m)
    if bad.any():
        i = int(np.argwhere(bad)[0, 0])
        raise InvalidArgumentError(
            "activations",
            f"sample {i} with max |A| = {float(np.abs(a[i]).max())!r}, "
            f"max |w| = {float(np.abs(w[i]).max())!r}",
            f"a map sum_k w^c_k A^k representable in {a.dtype} (it overflows)",
        )
    return m


#: ``ablation_value`` spellings beside a finite number (:func:`ablation_values`).
ABLATION_VALUES = ("pgc",)
#: Ablations per forward batch of pytorch-grad-cam's ``AblationCAM`` (``batch_size=32``), over
#: which its ablation value compounds.
PGC_ABLATION_BATCH = 32


@finite_output
def ablation_values(activations: Any, ablation_value: Any = 0.0) -> np.ndarray:
    r"""The value :math:`v^k_n` channel :math:`k` of sample :math:`n` is set to when it is ablated
    (the input of :math:`y^c_k` in :func:`ablationcam_weights`).

    * a finite number :math:`v`: :math:`v^k_n = v` (Desai & Ramaswamy 2020 set the channel to 0);
    * ``"pgc"``: pytorch-grad-cam 1.5.7 (``ablation_layer.py:70-85``, ``ablation_cam.py:105-132``):
      :math:`v^k_n = 0` when :math:`\min A_n = 0`, else :math:`v^k_n = v_{(k \bmod B) + 1}` with
      :math:`v_1 = \min A_n - 10^7`, :math:`v_{j+1} = v_j - 10^7` computed in the activations'
      dtype: the minimum is re-read from the batch tensor after each edit, so the value compounds
      within each forward batch of :math:`B` = :data:`PGC_ABLATION_BATCH` ablations.

    Parameters
    ----------
    activations : array of shape (N, K, *S)
    ablation_value : finite real number or ``"pgc"``

    Returns
    -------
    ndarray of shape (N, K), dtype of ``activations``.

    Examples
    --------
    >>> a = np.array([[[1., 2.], [3., 4.]], [[0., 2.], [3., 4.]]])
    >>> ablation_values(a, "pgc")                      # min 1: 1 - 1e7, 1 - 2e7; min 0: zeros
    array([[ -9999999., -19999999.],
           [        0.,         0.]])
    """
    a = _v.feature_maps(activations, "activations")
    n, k = a.shape[:2]
    if isinstance(ablation_value, str):
        _v.choice(ablation_value, "ablation_value", ABLATION_VALUES)
        lo = a.reshape(n, -1).min(axis=1)
        step = a.dtype.type(1e7)
        v = np.empty((n, PGC_ABLATION_BATCH), dtype=a.dtype)
        v[:, 0] = lo - step
        for j in range(1, PGC_ABLATION_BATCH):
            v[:, j] = v[:, j - 1] - step
        v[lo == 0] = 0
        return v[:, np.arange(k) % PGC_ABLATION_BATCH]
    if (
        isinstance(ablation_value, (bool, np.bool_))
        or not isinstance(ablation_value, (int, float, np.floating, np.integer))
        or not np.isfinite(ablation_value)
    ):
        raise InvalidArgumentError("ablation_value", ablation_value,
                                   "a finite real number or one of " + ", ".join(map(repr, ABLATION_VALUES)))
    return np.full((n, k), ablation_value, dtype=a.dtype)


@finite_output
def ablated_activations(activations: Any, values: Any, channels: Any = None) -> np.ndarray:
    r"""The activations Ablation-CAM feeds back to the network: one copy per ablated channel, that
    channel set to :math:`v^k_n` at every position.

    .. math:: \big(\tilde A_n^{(j)}\big)^{k'} = \begin{cases} v^{k_j}_n \mathbf{1} & k' = k_j \\
              A_n^{k'} & k' \neq k_j \end{cases}

    Desai & Ramaswamy, 2020, "Ablation-CAM: Visual Explanations for Deep Convolutional Network via
    Gradient-free Localization" (WACV 2020), Sec. 3: :math:`y^c_k` is the score of the network
    with feature map :math:`A^k` removed (set to 0 in the paper; :func:`ablation_values` gives the
    value).  ``*S`` is any set of positions: for a token layer ``(N, T, C)`` pass its channels-first
    view ``(N, C, T)`` to ablate every token, prefix (class, distillation) tokens included, as
    pytorch-grad-cam 1.5.7's ``AblationLayerVit`` does (``ablation_layer.py:96-108``: channel
    ``indices[i]`` of the ``(B, C, T)`` transpose, all tokens).

    Parameters
    ----------
    activations : array of shape (N, K, *S)
        :math:`A_n^k`.
    values : array of shape (N, J)
        :math:`v^{k_j}_n`, the value channel :math:`k_j` is set to in copy :math:`j`.
    channels : sequence of J distinct channel indices in ``[0, K)``, or None
        :math:`k_j`; default ``0 … K-1`` (then ``J = K``).

    Returns
    -------
    ndarray of shape (N, J, K, *S), the result dtype of ``activations`` and ``values``.

    Examples
    --------
    >>> a = np.array([[[1., 2.], [3., 4.]]])                # N=1, K=2, S=(2,)
    >>> ablated_activations(a, np.array([[0., -9.]]))[0]
    array([[[ 0.,  0.],
            [ 3.,  4.]],
    <BLANKLINE>
           [[ 1.,  2.],
            [-9., -9.]]])
    """
    a = _v.feature_maps(activations, "activations")
    n, k = a.shape[:2]
    if channels is None:
        ch = np.arange(k)
    else:
        ch = np.asarray(channels)
        if (ch.ndim != 1 or ch.size == 0 or ch.dtype.kind not in "iu" or ch.min() < 0 or ch.max() >= k
                or len(np.unique(ch)) != ch.size):
            raise InvalidArgumentError("channels", channels, f"distinct channel indices in [0, {k})")
    v = _v.as_float_array(values, "values")
    if v.shape != (n, ch.size):
        raise ShapeError("values", v.shape, (n, ch.size), "one value per sample and ablated channel")
    dt = _v.result_dtype(a, v)
    out = np.repeat(a.astype(dt, copy=False)[:, None], ch.size, axis=1)
    j = np.arange(ch.size)
    out[:, j, ch] = v.astype(dt, copy=False).reshape((n, ch.size) + (1,) * (a.ndim - 2))
    return out


@finite_output
def ablationcam_weights(scores: Any, baseline_score: Any) -> np.ndarray:
    r"""Ablation-CAM channel weights: relative drop of the class score when a channel is ablated.

    .. math:: w^c_k = \frac{y^c - y^c_k}{y^c}

    Desai & Ramaswamy, 2020, "Ablation-CAM: Visual Explanations for Deep Convolutional Network
    via Gradient-free Localization" (WACV 2020, pp. 972-980), the Ablation-CAM weight: the paper
    first defines the slope :math:`(y^c - y^c_k)/\lVert A^k\rVert` and, the norm being large,
    uses the fractional drop below instead.  Equation numbers not verified.

    Parameters
    ----------
    scores : array of shape (N, K)
        :math:`y^c_k`, the class score with channel :math:`k` ablated (set to zero in the paper).
    baseline_score : array of shape (N,)
        :math:`y^c`, the class score of the unablated input.

    Returns
    -------
    ndarray of shape (N, K).

    Notes
    -----
    **Division guard (explicit mask).**  When :math:`y^c = 0` the relative drop is undefined;
    refcam returns :math:`w^c_k = 0` for every channel of that sample (so the map is zero)
    instead of Inf/NaN.  pytorch-grad-cam divides unguarded.  The paper assumes
    :math:`y^c > 0`; a negative :math:`y^c` flips the sign of every weight (not guarded: it is
    what the formula says).

    **Non-representable weights.**  For a tiny non-zero :math:`y^c` the exact weight can exceed
    the largest float of the dtype (e.g. :math:`y^c = 10^{-308}`, :math:`y^c_k = 4`:
    :math:`w = -4\cdot10^{308}`).  No finite answer is right, so refcam raises
    :class:`~refcam.errors.InvalidArgumentError` naming ``baseline_score`` and the sample index
    (never Inf/NaN, no clipping).  When :math:`y^c - y^c_k` alone overflows, the weight is
    computed as :math:`1 - y^c_k/y^c` instead (same value, no spurious error).

    Examples
    --------
    >>> import numpy as np
    >>> ablationcam_weights(np.array([[1., 3.], [5., 1.]]), np.array([2., 0.]))
    array([[ 0.5, -0.5],
           [ 0. ,  0. ]])
    """
    c = _scores(scores)
    y = _baseline(baseline_score, "baseline_score", c.shape[0], allow_scalar=False)
    return _ablation_weights(c, y)


@finite_output
def ablationcam(
    activations: Any, scores: Any, baseline_score: Any, *, relu: bool = True
) -> np.ndarray:
    r"""Ablation-CAM map.

    .. math:: L^c_{\text{Ablation-CAM}} = \mathrm{ReLU}\Big(\sum_k w^c_k A^k\Big), \qquad
              w^c_k = \frac{y^c - y^c_k}{y^c}

    Desai & Ramaswamy, 2020 (WACV), the Ablation-CAM map (weights: :func:`ablationcam_weights`).

    Parameters
    ----------
    activations : array of shape (N, K, *S)
    scores : array of shape (N, K)
        :math:`y^c_k`, score with channel k ablated.
    baseline_score : array of shape (N,)
        :math:`y^c`, unablated score; 0 gives a zero map (see :func:`ablationcam_weights`).
    relu : bool, default True
        The paper's map applies a ReLU, as Grad-CAM's eq. 2.

    Returns
    -------
    ndarray of shape (N, *S).

    Raises
    ------
    InvalidArgumentError
        ``baseline_score`` when a weight is not representable (see
        :func:`ablationcam_weights`), ``activations`` when the map :math:`\sum_k w^c_k A^k`
        overflows the dtype -- with or without the ReLU: refcam never returns a value computed
        from an overflow.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.array([[[[2., 0.]], [[0., 2.]]]])
    >>> ablationcam(a, np.array([[1., 3.]]), np.array([2.]))   # w = [0.5, -0.5]
    array([[[1., 0.]]])
    """
    a = _v.feature_maps(activations, "activations")
    c = _channel_vector(scores, "scores", a)
    y = _baseline(baseline_score, "baseline_score", a.shape[0], allow_scalar=False)
    w = _ablation_weights(c, y)
    dt = _v.result_dtype(a, w)
    m = _ablation_map(a.astype(dt, copy=False), w.astype(dt, copy=False))
    return _maybe_relu(m, relu)


# --------------------------------------------------------------------------- SS-CAM / IS-CAM

def _masks(x: Any, name: str = "masks") -> np.ndarray:
    return _v.feature_maps(x, name)


def _sampled_scores(x: Any, name: str = "scores") -> np.ndarray:
    return _scores(x, name, "(N, n, K)", "one score per sample, noise sample / step, and channel")


@finite_output
def sscam_noise(size: Any, *, std: float, seed: int, sample: int, channel: int,
                draw: int) -> np.ndarray:
    r"""The SS-CAM noise :math:`\delta` of one (sample, channel, draw): ``std`` times standard
    normal numbers from ``np.random.default_rng([seed, sample, channel, draw])``.

    One generator per (sample :math:`n`, channel :math:`k`, draw :math:`m`) makes every
    :math:`\delta^k_{n,m}` independent of how the masks are batched: the adapter, which builds the
    masked inputs a few channels at a time, and :func:`sscam_masks`, which builds them all at once,
    draw the same numbers bit for bit.

    Parameters
    ----------
    size : sequence of int
        Spatial size ``S_in`` of one mask.
    std : float >= 0
        :math:`\sigma`.
    seed, sample, channel, draw : int >= 0

    Returns
    -------
    ndarray of shape ``size``, float64.

    Examples
    --------
    >>> d = sscam_noise((2,), std=2.0, seed=7, sample=0, channel=3, draw=1)
    >>> bool(np.array_equal(d, 2.0 * np.random.default_rng([7, 0, 3, 1]).standard_normal(2)))
    True
    """
    sigma = _v.nonnegative_float(std, "std")
    return sigma * np.random.default_rng([seed, sample, channel, draw]).standard_normal(tuple(size))


@finite_output(widen=False)
def sscam_masks(masks: Any, n_samples: int, *, std: float, seed: Any = None) -> np.ndarray:
    r"""SS-CAM noisy masks: each Score-CAM mask plus Gaussian noise, ``n_samples`` times.

    .. math:: \hat H^k_m = H^k + \delta^k_m, \qquad \delta^k_m \sim \mathcal N(0, \sigma^2)
              \text{ i.i.d. per element}, \quad m = 1..n

    Wang, Naidu, Michael & Kundu, 2020, "SS-CAM: Smoothed Score-CAM for Sharper Visual Feature
    Localization" (arXiv:2006.14255), the variant that smooths the masks (noise added to the
    normalised, upsampled activation, as torchcam's ``SSCAM`` does with ``std = 2.0``; the paper
    also has an input-noise variant).  Formula not verified against the paper's text.

    Parameters
    ----------
    masks : array of shape (N, K, *S_in)
        Score-CAM masks :math:`H^k` (e.g. from ``scorecam_masks``).
    n_samples : int >= 1
    std : float >= 0
        :math:`\sigma`.
    seed : None or int >= 0
        :math:`\delta^k_m` of sample ``n`` is :func:`sscam_noise` ``(seed, n, k, m)`` (the numbers
        ``refcam.explain(..., "sscam", seed=seed)`` uses); ``None``: a fresh random seed.

    Returns
    -------
    ndarray of shape (N, n_samples, K, *S_in), dtype of ``masks``.

    Examples
    --------
    >>> import numpy as np
    >>> sscam_masks(np.ones((1, 1, 2)), 3, std=0.0)[0, :, 0]      # no noise: 3 copies
    array([[1., 1.],
           [1., 1.],
           [1., 1.]])
    >>> np.array_equal(sscam_masks(np.ones((1, 1, 2)), 2, std=2.0, seed=7),
    ...                sscam_masks(np.ones((1, 1, 2)), 2, std=2.0, seed=7))
    True
    """
    h = _masks(masks)
    n = _v.positive_int(n_samples, "n_samples")
    sigma = _v.nonnegative_float(std, "std")
    if seed is None:
        seed = int(np.random.SeedSequence().entropy)
    seed = _v.nonnegative_int(seed, "seed")
    out = np.repeat(h[:, None], n, axis=1)
    if sigma:
        size = h.shape[2:]
        for s in range(h.shape[0]):
            for m in range(n):
                for k in range(h.shape[1]):
                    d = sscam_noise(size, std=sigma, seed=seed, sample=s, channel=k, draw=m)
                    out[s, m, k] = h[s, k] + d.astype(h.dtype, copy=False)
    return out


@finite_output
def sscam_weights(scores: Any, baseline_score: Any = None, *, softmax: bool = False) -> np.ndarray:
    r"""SS-CAM channel weights: Score-CAM weights of the scores averaged over the noise samples.

    .. math:: \alpha^c_k = \frac{1}{n} \sum_{m=1}^{n} \Big(f^c(X \circ \hat H^k_m) - f^c(X_b)\Big)

    (Wang, Naidu, Michael & Kundu, 2020, SS-CAM), optionally followed by the softmax over
    channels (``softmax=True``, torchcam's ``SSCAM``), exactly as :func:`scorecam_weights`.

    Parameters
    ----------
    scores : array of shape (N, n, K)
        Target score of the input masked by the m-th noisy mask of channel k.
    baseline_score : None, scalar or array of shape (N,)
    softmax : bool, default False

    Returns
    -------
    ndarray of shape (N, K).

    Examples
    --------
    >>> import numpy as np
    >>> sscam_weights(np.array([[[1., 4.], [3., 0.]]]))        # means over the 2 samples
    array([[2., 2.]])
    """
    return _sample_mean_weights(scores, baseline_score, softmax)



def _sample_mean_weights(scores: Any, baseline_score: Any, softmax: Any) -> np.ndarray:
    """Score-CAM weights of the per-channel mean over the sample axis of ``scores`` (N, n, K):
    the shared aggregation of SS-CAM (noisy masks) and IS-CAM (scaled masks)."""
    c = _sampled_scores(scores)
    b = None if baseline_score is None else _baseline(baseline_score, "baseline_score", c.shape[0],
                                                      allow_scalar=True)
    return _scorecam_weights(c.mean(axis=1), b, _flag(softmax, "softmax"))

ISCAM_SCHEDULES = ("accumulated", "linear")


@finite_output
def iscam_scales(n_steps: int, schedule: str = "accumulated") -> np.ndarray:
    r"""IS-CAM mask scales :math:`\gamma_i`, :math:`i = 1..n`.

    ``schedule="accumulated"`` (default):

    .. math:: \gamma_i = \sum_{j=1}^{i} \frac{j}{n} = \frac{i(i+1)}{2n}

    Naidu, Ghosh, Maurya, Nayak K & Kundu (2020), "IS-CAM: Integrated Score-CAM for
    axiomatic-based explanations" (arXiv:2010.03023), Algorithm 1 accumulates the mask over the
    loop (:math:`M \leftarrow M + \frac{i}{n} H^k`, then the score of :math:`X \circ M` is
    added) -- as reported to us; the paper's text was not reachable here, see
    ``docs/references.md`` D10.  torchcam's ``ISCAM`` (``torchcam/methods/activation.py``,
    ``_get_score_weights``: ``coeff += (sidx + 1) / num_samples`` *before* the masked input is
    scored, ``sidx = 0..n-1``) computes exactly these :math:`\gamma_i` (so
    :math:`\gamma_1 = 1/n`, and :math:`\gamma_n = (n+1)/2` exceeds 1).  torchcam's docstring
    writes :math:`M_i = \sum_{j=0}^{i-1} j/N`, which is off by one against its own code
    (it would make :math:`\gamma_1 = 0`, a zero mask); refcam follows the code.

    ``schedule="linear"``: :math:`\gamma_i = i/n`, the right Riemann points of the straight path
    :math:`0 \to H^k` (the Integrated-Gradients reading of "integration", Sundararajan et al.
    2017, eq. 3).

    Parameters
    ----------
    n_steps : int >= 1
    schedule : {"accumulated", "linear"}

    Returns
    -------
    ndarray of shape (n_steps,), float64.

    Examples
    --------
    >>> iscam_scales(4)                 # 1/4, 1/4 + 2/4, ... = i (i + 1) / 8
    array([0.25, 0.75, 1.5 , 2.5 ])
    >>> iscam_scales(4, "linear")
    array([0.25, 0.5 , 0.75, 1.  ])
    """
    n = _v.positive_int(n_steps, "n_steps")
    schedule = _v.choice(schedule, "schedule", ISCAM_SCHEDULES)
    i = np.arange(1, n + 1, dtype=np.float64)
    # i (i + 1) / (2 n): the exact value of the running sum (no accumulated rounding)
    return i * (i + 1) / (2 * n) if schedule == "accumulated" else i / n


@finite_output
def iscam_masks(masks: Any, n_steps: int, *, schedule: str = "accumulated") -> np.ndarray:
    r"""IS-CAM scaled masks: each Score-CAM mask scaled by :math:`\gamma_i`, :math:`i = 1..n`.

    .. math:: H^k_i = \gamma_i H^k, \qquad i = 1, \dots, n

    with :math:`\gamma_i` from :func:`iscam_scales` (default the accumulated schedule
    :math:`\gamma_i = \sum_{j=1}^{i} j/n` of Naidu et al. 2020, Algorithm 1, as torchcam's
    ``ISCAM`` computes it; ``schedule="linear"``: :math:`\gamma_i = i/n`).

    Parameters
    ----------
    masks : array of shape (N, K, *S_in)
    n_steps : int >= 1
    schedule : {"accumulated", "linear"}

    Returns
    -------
    ndarray of shape (N, n_steps, K, *S_in), dtype of ``masks``.

    Examples
    --------
    >>> import numpy as np
    >>> iscam_masks(np.array([[[4.]]]), 4)[0, :, 0, 0]          # 4 * [2, 6, 12, 20] / 8
    array([ 1.,  3.,  6., 10.])
    >>> iscam_masks(np.array([[[4.]]]), 4, schedule="linear")[0, :, 0, 0]
    array([1., 2., 3., 4.])
    """
    h = _masks(masks)
    t = iscam_scales(n_steps, schedule).astype(h.dtype)
    return t.reshape((1, -1) + (1,) * (h.ndim - 1)) * h[:, None]


@finite_output
def iscam_weights(scores: Any, baseline_score: Any = None, *, softmax: bool = False) -> np.ndarray:
    r"""IS-CAM channel weights: the Score-CAM increase of confidence integrated along the mask path.

    .. math:: \alpha^c_k = \frac{1}{n} \sum_{i=1}^{n} \Big(f^c\big(X \circ \tfrac{i}{n} H^k\big)
              - f^c(X_b)\Big) \approx \int_0^1 \big(f^c(X \circ t H^k) - f^c(X_b)\big)\,dt

    (Naidu et al., 2020, IS-CAM, with the masks :math:`\gamma_i H^k` of :func:`iscam_masks`; the
    formula is written for ``schedule="linear"``, the default accumulated schedule replaces
    :math:`i/n` by :math:`\gamma_i`), optionally followed by the softmax over channels
    (``softmax=True``, as torchcam), exactly as :func:`scorecam_weights`.  The average (not the
    sum) over steps is used so that ``n_steps`` does not rescale the map.

    Parameters
    ----------
    scores : array of shape (N, n, K)
        Target score of the input masked by :math:`\gamma_i H^k` (``iscam_masks`` order).
    baseline_score : None, scalar or array of shape (N,)
    softmax : bool, default False

    Returns
    -------
    ndarray of shape (N, K).

    Examples
    --------
    >>> import numpy as np
    >>> iscam_weights(np.array([[[1., 0.], [2., 0.], [3., 3.]]]), 1.0)   # means [2, 1] - 1
    array([[1., 0.]])
    """
    return _sample_mean_weights(scores, baseline_score, softmax)


def _sampled_map(activations: Any, scores: Any, baseline_score: Any, softmax: Any,
                 relu: Any) -> np.ndarray:
    """``ReLU(Σ_k α^c_k A^k)`` with the sample-mean weights of :func:`_sample_mean_weights`."""
    a = _v.feature_maps(activations, "activations")
    w = _sample_mean_weights(scores, baseline_score, softmax)
    if w.shape != a.shape[:2]:
        raise ShapeError("scores", _v.as_float_array(scores, "scores").shape,
                         f"(N, n, K) = ({a.shape[0]}, n, {a.shape[1]})", "N and K of activations")
    dt = _v.result_dtype(a, w)
    return _maybe_relu(_weighted_sum(a.astype(dt, copy=False), w.astype(dt, copy=False)), relu)


@finite_output
def sscam(activations: Any, scores: Any, *, baseline_score: Any = None, softmax: bool = False,
          relu: bool = True) -> np.ndarray:
    r"""SS-CAM map: the Score-CAM map with the weights of :func:`sscam_weights`.

    .. math:: L^c = \mathrm{ReLU}\Big(\sum_k \alpha^c_k A^k\Big), \qquad
              \alpha^c_k = \frac1n \sum_{m=1}^{n} \Big(f^c(X \circ \hat H^k_m) - f^c(X_b)\Big)

    (Wang, Naidu, Michael & Kundu, 2020, SS-CAM; the ReLU of Score-CAM's eq. 9).

    Parameters
    ----------
    activations : array of shape (N, K, *S)
    scores : array of shape (N, n, K)
        Target scores of the inputs masked by :func:`sscam_masks`.
    baseline_score : None, scalar or array of shape (N,)
    softmax : bool, default False
        Channel softmax of the mean scores (torchcam's ``SSCAM``), see :func:`scorecam_weights`.
    relu : bool, default True

    Returns
    -------
    ndarray of shape (N, *S).

    Examples
    --------
    >>> import numpy as np
    >>> a = np.array([[[[1., 0.]], [[0., 1.]]]])
    >>> sscam(a, np.array([[[1., -4.], [3., 0.]]]))          # means [2, -2], ReLU
    array([[[2., 0.]]])
    """
    return _sampled_map(activations, scores, baseline_score, softmax, relu)


@finite_output
def iscam(activations: Any, scores: Any, *, baseline_score: Any = None, softmax: bool = False,
          relu: bool = True) -> np.ndarray:
    r"""IS-CAM map: the Score-CAM map with the weights of :func:`iscam_weights`.

    .. math:: L^c = \mathrm{ReLU}\Big(\sum_k \alpha^c_k A^k\Big), \qquad
              \alpha^c_k = \frac1n \sum_{i=1}^{n} \Big(f^c(X \circ \gamma_i H^k) - f^c(X_b)\Big)

    (Naidu et al., 2020, IS-CAM; :math:`\gamma_i` = :func:`iscam_scales`).

    Parameters
    ----------
    activations : array of shape (N, K, *S)
    scores : array of shape (N, n, K)
        Target scores of the inputs masked by :func:`iscam_masks`.
    baseline_score : None, scalar or array of shape (N,)
    softmax : bool, default False
    relu : bool, default True

    Returns
    -------
    ndarray of shape (N, *S).

    Examples
    --------
    >>> import numpy as np
    >>> a = np.array([[[[1., 0.]], [[0., 1.]]]])
    >>> iscam(a, np.array([[[1., 0.], [2., 0.], [3., 3.]]]), baseline_score=1.0)  # weights [1, 0]
    array([[[1., 0.]]])
    """
    return _sampled_map(activations, scores, baseline_score, softmax, relu)
