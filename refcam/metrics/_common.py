"""Shared plumbing of the metrics (internal): the model-as-callable contract, targets, batching.

The model contract
------------------
Every metric that needs forward passes takes the model as a plain callable

    ``score_fn(inputs: ndarray (M, C, *S)) -> scores (M,) or (M, n_classes)``

* ``(M,)``: one score per input, the target already applied inside ``score_fn`` (then
  ``targets`` must be ``None``);
* ``(M, n_classes)``: ``targets`` (one class index per sample) picks the column.

The metrics never import onnx; :mod:`refcam.onnx` supplies such callables.  The perturbed inputs are
generated lazily in chunks of ``batch_size`` and the forward passes show a tqdm progress bar
(``progress=False`` disables it; ``progress=True`` lets tqdm hide it when stderr is not a terminal).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .. import _validate as V
from ..errors import InvalidArgumentError, ModelError, ShapeError, TargetError

ScoreFn = Callable[[np.ndarray], Any]

#: resize modes accepted by the ``resize=`` option (passed to :func:`refcam.math.upsample`).
RESIZE_MODES = ("linear", "linear-align-corners", "nearest", "nearest-exact")


def images(x: Any, name: str = "inputs") -> np.ndarray:
    """Validate a batch of model inputs of layout (N, C, *S) with at least one spatial axis."""
    arr = V.as_float_array(x, name)
    V.check_ndim(
        arr, name, min_ndim=3, layout="(N, C, *S): batch, channels and at least one spatial axis"
    )
    if any(s == 0 for s in arr.shape):
        raise ShapeError(name, arr.shape, "(N, C, *S) with every axis non-empty")
    return arr


def maps_for_inputs(
    maps: Any, inputs: np.ndarray, *, resize: str | None, name: str = "maps"
) -> np.ndarray:
    """Validate ``maps`` (N, *S) against ``inputs`` (N, C, *S_in); resize only when asked.

    ``resize=None`` refuses maps whose spatial shape differs from the input's; a mode name upsamples
    them with :func:`refcam.math.upsample` (``"linear"`` = half-pixel bilinear/trilinear, ...).
    """
    m = V.maps(maps, name)
    if m.shape[0] != inputs.shape[0]:
        raise ShapeError(
            name,
            m.shape,
            (inputs.shape[0],) + tuple(inputs.shape[2:]),
            "one map per input: batch sizes differ",
        )
    size = tuple(inputs.shape[2:])
    if m.shape[1:] != size:
        if resize is None:
            raise ShapeError(
                name,
                m.shape,
                (inputs.shape[0],) + size,
                "map and input spatial sizes differ; pass resize='linear' (or another "
                "upsample mode) to resize the maps explicitly",
            )
        V.choice(resize, "resize", RESIZE_MODES)
        if m.ndim - 1 != len(size):
            raise ShapeError(
                name,
                m.shape,
                (inputs.shape[0],) + size,
                "maps and inputs have different numbers of spatial axes",
            )
        from ..math.post import upsample  # the math floor owns resizing

        m = np.asarray(upsample(m, size, mode=resize))
    elif resize is not None:
        V.choice(resize, "resize", RESIZE_MODES)
    return m


def targets_array(targets: Any, n: int, name: str = "targets") -> np.ndarray | None:
    """``None`` stays ``None``; an int is repeated; else a length-``n`` vector of class indices."""
    if targets is None:
        return None
    if isinstance(targets, (bool, np.bool_)):
        raise TargetError(f"{name}: got {targets!r}, expected a class index or one per sample")
    if isinstance(targets, (int, np.integer)):
        t = np.full(n, int(targets), dtype=np.int64)
    else:
        t = np.asarray(targets)
        if t.dtype.kind not in "iu":
            raise TargetError(f"{name}: got dtype {t.dtype}, expected integer class indices")
        if t.shape != (n,):
            raise TargetError(
                f"{name}: got shape {t.shape}, expected ({n},): one class index per sample"
            )
        t = t.astype(np.int64)
    if (t < 0).any():
        raise TargetError(f"{name}: got negative class index {int(t.min())}, expected indices >= 0")
    return t


def pick_scores(
    raw: Any, m: int, item_targets: np.ndarray | None, name: str = "score_fn"
) -> np.ndarray:
    """Turn one ``score_fn`` output for ``m`` inputs into the ``(m,)`` float64 target scores."""
    try:
        out = np.asarray(raw)
    except Exception as exc:  # pragma: no cover - exotic outputs
        raise ModelError(f"{name}: returned {type(raw).__name__}, expected an array") from exc
    if out.dtype.kind not in "biuf":
        raise ModelError(f"{name}: returned dtype {out.dtype}, expected real scores")
    if out.ndim == 1:
        if out.shape[0] != m:
            raise ModelError(
                f"{name}: returned shape {out.shape} for {m} inputs, expected ({m},) or ({m}, n_classes)"
            )
        if item_targets is not None:
            raise TargetError(
                f"{name}: returned one score per input (shape {out.shape}) but targets were given; "
                "pass targets=None when score_fn already applies the target"
            )
        s = out
    elif out.ndim == 2:
        if out.shape[0] != m:
            raise ModelError(
                f"{name}: returned shape {out.shape} for {m} inputs, expected ({m},) or ({m}, n_classes)"
            )
        if item_targets is None:
            raise TargetError(
                f"{name}: returned scores of shape {out.shape} (one column per class); "
                "targets: got None, expected a class index or one per sample"
            )
        if (item_targets >= out.shape[1]).any():
            raise TargetError(
                f"targets: got class index {int(item_targets.max())}, expected < {out.shape[1]} "
                f"(score_fn returned {out.shape[1]} classes)"
            )
        s = out[np.arange(m), item_targets]
    else:
        raise ModelError(
            f"{name}: returned shape {out.shape} for {m} inputs, expected ({m},) or ({m}, n_classes)"
        )
    s = s.astype(np.float64)
    if not np.isfinite(s).all():
        raise ModelError(
            f"{name}: returned {int(np.count_nonzero(~np.isfinite(s)))} non-finite score(s)"
        )
    return s


def batched_scores(
    score_fn: ScoreFn,
    n_items: int,
    build: Callable[[np.ndarray], np.ndarray],
    item_targets: np.ndarray | None,
    *,
    batch_size: int,
    progress: bool,
    desc: str,
) -> np.ndarray:
    """Score ``n_items`` lazily built inputs in chunks: ``build(item_indices) -> (B, C, *S)``.

    Returns the float64 target scores ``(n_items,)``.
    """
    if not callable(score_fn):
        raise InvalidArgumentError(
            "score_fn", type(score_fn).__name__, "a callable inputs -> scores"
        )
    batch_size = V.positive_int(batch_size, "batch_size")
    out = np.empty(n_items, dtype=np.float64)
    starts = range(0, n_items, batch_size)
    from tqdm.auto import tqdm

    with tqdm(
        total=n_items, desc=desc, unit="input", disable=None if progress else True, leave=False
    ) as bar:
        for start in starts:
            idx = np.arange(start, min(start + batch_size, n_items))
            t = None if item_targets is None else item_targets[idx]
            out[idx] = pick_scores(score_fn(build(idx)), idx.size, t)
            bar.update(idx.size)
    return out


def as_score_vector(x: Any, name: str, n: int | None = None) -> np.ndarray:
    """Validate a vector of scores (N,) of finite reals."""
    arr = V.as_float_array(x, name)
    if arr.ndim != 1 or arr.shape[0] == 0 or (n is not None and arr.shape[0] != n):
        raise ShapeError(name, arr.shape, "(N,) with N >= 1" if n is None else (n,))
    return arr


def minmax01(m: np.ndarray) -> np.ndarray:
    """Per-sample min-max normalisation to [0, 1] over the spatial axes; constant maps -> zeros.

    Guard: samples with ``max == min`` are masked (set to 0) instead of dividing by zero.
    """
    axes = tuple(range(1, m.ndim))
    lo = m.min(axis=axes, keepdims=True)
    rng = m.max(axis=axes, keepdims=True) - lo
    ok = rng > 0
    return np.where(ok, (m - lo) / np.where(ok, rng, 1), 0).astype(m.dtype, copy=False)


def sequence_of(x: Any, name: str) -> Sequence[Any]:
    if isinstance(x, (str, bytes)) or not hasattr(x, "__len__"):
        raise InvalidArgumentError(name, type(x).__name__, "a sequence with one entry per sample")
    return x
