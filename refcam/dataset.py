"""Explain a whole dataset into a Zarr store: :func:`explain_dataset` (``refcam explain-dataset``).

The dataset is a folder, a glob, a CSV file list (``path[,class or classes]``, classes separated
by spaces or ``;``) or a sequence of paths.  Items are cut into **chunks** of ``batch_size``
images; a chunk is the unit of work, of storage and of resumption:

* a worker decodes and preprocesses the chunk's images (:func:`refcam.zoo._images.load_inputs`),
  explains them in one :func:`refcam.explain` call, and writes the chunk of every array itself;
* memory per worker is bounded by the batch: the decoded inputs, the activations and the maps of
  one chunk (plus the next chunk's decoded inputs in the single-process mode);
* the driver moves only metadata (item paths, chunk numbers, counts).

Store layout (Zarr v3 group, one chunk per batch along axis 0)
---------------------------------------------------------------
``maps`` ``(N, T, *S)``: raw maps at feature resolution (dtype of the activations; NaN for
failed items and padded targets); ``scores`` ``(N, T)`` float64; ``targets`` ``(N, T)`` int64
(``-1`` padding); ``ids`` ``(N,)`` str (the item paths); ``status`` ``(N,)`` uint8:
``0`` pending, ``1`` done, ``2`` failed; ``failures/<chunk>.json``: ``{id: reason}``;
``also/<name>/{maps,scores,targets}``: the same for each further job of ``also=`` (e.g.
``also/cam_all``); ``manifest.json``: model SHA-256, method, options, target, layer, the ``also``
jobs, preprocessing, refcam version;
with ``metrics`` also ``confidence`` ``(N, 2)`` (:math:`Y^c`, :math:`O^c`), ``deletion`` /
``insertion`` ``(N, T_p)`` (the RISE curves, softmax probability of the explained class at each
step) and ``deletion_auc`` / ``insertion_auc`` ``(N,)``, aggregated over the done items into
``metrics.json`` (Average Drop, Increase in Confidence, mean deletion / insertion AUC).

Atomicity: every chunk file is written to a temporary name and renamed (Zarr's local store), and
a chunk's ``status`` is written **last**, so a chunk marked done always has its maps; a chunk
interrupted before its status is recomputed on resume (the computation is deterministic).
**Resume** (the default when the store exists with the same manifest): chunks whose items are all
done or failed are skipped.  A store written with other arguments is refused.
"""

from __future__ import annotations

import csv
import glob as _glob
import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._outputs import file_sha256, write_atomic
from .errors import InvalidArgumentError, RefcamError

__all__ = ["DatasetResult", "PENDING", "DONE", "FAILED", "explain_dataset", "read_items"]

PENDING, DONE, FAILED = 0, 1, 2
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".npy")
MANIFEST = "manifest.json"
#: what a store directory holds (an interrupted creation may leave some of these, nothing else)
_STORE_NAMES = {MANIFEST, "zarr.json", "model.onnx", "maps", "scores", "targets", "status", "ids",
                "confidence", "deletion", "insertion", "deletion_auc", "insertion_auc", "failures",
                "also",
                "metrics.json"}
#: the faithfulness metrics computed over the stream (``metrics=``)
METRICS = ("confidence", "deletion", "insertion")
PERTURBATIONS = ("deletion", "insertion")


@dataclass
class DatasetResult:
    """What :func:`explain_dataset` did: ``store`` path, item counts, the chunks computed in
    this call (``computed``; chunks skipped as already finished are not in it), the metrics table,
    and ``chunk_stats``: per computed chunk, the worker's ``pid``, the chunk's ``wall`` and
    process ``cpu`` seconds and the worker's ``peak_rss`` (bytes) after it."""

    store: str
    n_items: int
    n_done: int
    n_failed: int
    computed: list
    metrics: dict | None = None
    chunk_stats: list = field(default_factory=list)


# ------------------------------------------------------------------------------ inputs
def read_items(source: Any) -> tuple[list[str], list[list[int]] | None]:
    """``(paths, labels)`` of a folder (images sorted by name), a glob, a CSV file list
    (``path[,classes]``; relative paths are relative to the CSV) or a sequence of paths.
    ``labels`` is one class list per item when a CSV gives a second column, else ``None``."""
    if isinstance(source, (list, tuple)):
        return [os.fspath(p) for p in source], None
    spec = os.fspath(source)
    p = Path(spec)
    if p.is_dir():
        paths = sorted(str(q) for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
        return paths, None
    if p.is_file() and p.suffix.lower() == ".csv":
        paths, labels, any_label = [], [], False
        with open(p, newline="") as f:
            for i, row in enumerate(csv.reader(f)):
                if not row or not row[0].strip() or row[0].startswith("#"):
                    continue
                if i == 0 and row[0].strip().lower() in ("path", "image", "file"):
                    continue  # header
                q = Path(row[0].strip())
                paths.append(str(q if q.is_absolute() else p.parent / q))
                cls = row[1].replace(";", " ").split() if len(row) > 1 else []
                try:
                    labels.append([int(c) for c in cls])
                except ValueError:
                    raise InvalidArgumentError(
                        "items", spec, f"class indices (integers) in column 2, row {i + 1}: {row[1]!r}"
                    ) from None
                any_label = any_label or bool(cls)
        return paths, (labels if any_label else None)
    paths = sorted(_glob.glob(spec, recursive=True))
    if not paths:
        raise InvalidArgumentError("items", spec, "a folder, a glob matching files, or a .csv list")
    return paths, None


# ------------------------------------------------------------------------------ helpers
def _model_path(model: Any, store: Path) -> str:
    """A file path the workers load the model from (an in-memory model is saved in the store)."""
    if isinstance(model, (str, os.PathLike)):
        return os.fspath(Path(model).resolve())
    from .onnx import Model

    proto = model.proto if isinstance(model, Model) else model
    data = proto if isinstance(proto, bytes) else proto.SerializeToString()
    path = store / "model.onnx"
    if not path.exists() or file_sha256(str(path)) != hashlib.sha256(data).hexdigest():
        write_atomic(path, data)
    return str(path)




def _jsonable(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (np.integer, np.floating, np.bool_)):
        return v.item()
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    return repr(v)


def _target_spec(target: Any) -> Any:
    from .onnx import TopK

    if target is None or target == "all" or target == "labels":
        return target
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        return int(target)
    if isinstance(target, TopK):
        return {"topk": int(target.k)}
    raise InvalidArgumentError(
        "target", target, "None (top-1), a class index, TopK(k), 'all' or 'labels' (from the CSV)"
    )


# ------------------------------------------------------------------------------ worker side
_MODELS: dict = {}  # per process (per Dask worker): model path → refcam.onnx.Model, built once
_LOCK = threading.Lock()
LOADS = [0]  # models (onnxruntime sessions) built in this process: 1 per worker for one run


def _load_model(spec: dict):
    from .onnx import load

    t = spec.get("threads")
    key = (spec["model_path"], spec["model_sha256"], spec["layout"], t)
    with _LOCK:
        if key not in _MODELS:
            threads = {} if t is None else {"intra_op_num_threads": t, "inter_op_num_threads": 1}
            _MODELS[key] = load(spec["model_path"], layout=spec["layout"], **threads)
            LOADS[0] += 1
        return _MODELS[key]


def _decode(spec: dict, chunk: int) -> tuple[list[int], np.ndarray | None, dict]:
    """Decode + preprocess the images of ``chunk``: (ok item indices, inputs, {index: reason})."""
    from .zoo import _images

    m = _load_model(spec)
    lo, hi = chunk * spec["batch_size"], min(spec["n_items"], (chunk + 1) * spec["batch_size"])
    ok, xs, failed = [], [], {}
    for i in range(lo, hi):
        try:
            items = _images.load_inputs([spec["paths"][i]], m, **spec["preprocessing"])
            if len(items) != 1:
                raise InvalidArgumentError("image", spec["paths"][i], "one image (got several samples)")
            xs.append(items[0].x)
            ok.append(i)
        except Exception as exc:  # any decoding failure of one file: recorded, the rest goes on
            failed[i] = f"{type(exc).__name__}: {exc}"
    return ok, (np.concatenate(xs) if xs else None), failed


def _batch_target(spec: dict, ok: list[int], job: dict | None = None) -> Any:
    from .onnx import TopK

    job = spec if job is None else job
    t = job["target"]
    if t == "labels":
        rows = [spec["labels"][i] for i in ok]
        if len({len(r) for r in rows}) == 1 and job["method"] not in ("cam", "gradcam"):
            return np.asarray(rows, dtype=np.int64)
        return rows
    if isinstance(t, dict):
        return TopK(t["topk"])
    return t


def _jobs(spec: dict) -> list[dict]:
    """The primary job (root arrays) and the ``also`` jobs (arrays under ``also/<name>/``)."""
    first = {k: spec[k] for k in ("method", "target", "options", "n_targets", "map_shape",
                                  "map_dtype")}
    return [{**first, "prefix": ""}] + [{**j, "prefix": f"also/{j['name']}/"}
                                        for j in spec.get("also") or ()]


def _explain_jobs(spec: dict, x: np.ndarray, ok: list[int]) -> list:
    """One Explanation per job.  Several jobs of CAM / Grad-CAM share one forward run
    (:func:`refcam.allclass.explain_many`); otherwise each job is one :func:`refcam.explain`."""
    from .allclass import SUPPORTED, explain_many
    from .explanation import explain

    m, jobs = _load_model(spec), _jobs(spec)
    if len(jobs) > 1 and all(j["method"] in SUPPORTED for j in jobs):
        return explain_many(m, m.check_inputs(x), m.spatial_layer(spec["layer"]),
                            [(j["method"], _batch_target(spec, ok, j), j["options"])
                             for j in jobs])
    return [explain(m, x, j["method"], layer=spec["layer"], target=_batch_target(spec, ok, j),
                    **j["options"]) for j in jobs]


def _compute_chunk(spec: dict, chunk: int, decoded=None) -> dict:
    """Explain and write one chunk (maps, scores, targets, failures, then status last)."""
    import zarr

    t0, c0 = time.perf_counter(), time.process_time()
    ok, x, failed = decoded if decoded is not None else _decode(spec, chunk)
    lo, hi = chunk * spec["batch_size"], min(spec["n_items"], (chunk + 1) * spec["batch_size"])
    g = zarr.open_group(spec["store"], mode="r+")
    jobs = _jobs(spec)
    out = []  # per job: maps, scores, targets of the chunk (NaN / -1 where not done)
    for j in jobs:
        t_max, map_shape = j["n_targets"], tuple(j["map_shape"])
        out.append((np.full((hi - lo, t_max) + map_shape, np.nan, dtype=j["map_dtype"]),
                    np.full((hi - lo, t_max), np.nan),
                    np.full((hi - lo, t_max), -1, dtype=np.int64)))
    conf = np.full((hi - lo, 2), np.nan)  # Y^c, O^c (softmax probabilities) per item
    mets = spec.get("metrics") or ()
    curves = {k: np.full((hi - lo, spec["perturbation_points"]), np.nan)
              for k in PERTURBATIONS if k in mets}
    aucs = {k: np.full(hi - lo, np.nan) for k in curves}
    status = np.full(hi - lo, FAILED, dtype=np.uint8)
    if ok:
        try:
            es = _explain_jobs(spec, x, ok)
            r = np.asarray(ok) - lo
            for j, e, (maps, scores, targets) in zip(jobs, es, out):
                t_max, map_shape = j["n_targets"], tuple(j["map_shape"])
                mp = e.maps if e.maps.ndim == len(map_shape) + 2 else e.maps[:, None]
                if mp.shape[2:] != map_shape or mp.shape[1] > t_max:
                    raise RefcamError(f"map shape {mp.shape[1:]} differs from the store's "
                                      f"{(t_max,) + map_shape}")
                maps[r, : mp.shape[1]] = mp
                if e.scores is not None:
                    scores[r, : e.scores.shape[1]] = e.scores
                if e.targets is not None:
                    targets[r, : e.targets.shape[1]] = e.targets
            e = es[0]  # the metrics score the primary job's maps
            if "confidence" in mets:
                conf[r] = _confidence(_load_model(spec), x, e)
            for k in curves:
                c = _perturbation_curve(_load_model(spec), x, e, k, spec["perturbation"])
                curves[k][r], aucs[k][r] = c.scores, c.auc
            status[r] = DONE
        except RefcamError as exc:
            for i in ok:
                failed[i] = f"{type(exc).__name__}: {exc}"
            for maps, scores, targets in out:  # nothing half-filled for a failed batch
                maps[...], scores[...], targets[...] = np.nan, np.nan, -1
    for j, (maps, scores, targets) in zip(jobs, out):
        g[j["prefix"] + "maps"][lo:hi] = maps
        g[j["prefix"] + "scores"][lo:hi] = scores
        g[j["prefix"] + "targets"][lo:hi] = targets
    if "confidence" in mets:
        g["confidence"][lo:hi] = conf
    for k in curves:
        g[k][lo:hi] = curves[k]
        g[f"{k}_auc"][lo:hi] = aucs[k]
    fdir = Path(spec["store"]) / "failures"
    if failed:
        fdir.mkdir(exist_ok=True)
        write_atomic(fdir / f"{chunk}.json",
                      json.dumps({spec["paths"][i]: r for i, r in sorted(failed.items())},
                                 indent=1).encode())
    g["status"][lo:hi] = status  # last: the chunk is finished only once this lands
    return {"chunk": chunk, "done": int((status == DONE).sum()),
            "failed": int((status == FAILED).sum()), "pid": os.getpid(),
            "wall": time.perf_counter() - t0, "cpu": time.process_time() - c0,
            "peak_rss": _peak_rss()}


def _peak_rss() -> int:
    """Peak resident set size of this process so far, bytes: Linux ``VmHWM`` (the high-water
    mark of this process image; ``getrusage``'s ``ru_maxrss`` would carry the peak of the process
    that spawned it across ``exec``), else ``ru_maxrss``; 0 where unknown."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return 0
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


def _confidence(m, x: np.ndarray, e) -> np.ndarray:
    r"""``(n, 2)``: :math:`Y^c_i` and :math:`O^c_i`, the softmax probability of the explained class
    on the image and on the explanation image :math:`E^c = L^c \circ I` (Chattopadhay et al. 2018,
    Sec. 4.1, eq. 25: the map upsampled bilinearly to the input, min-max scaled to [0, 1])."""
    from .metrics.confidence import explanation_inputs
    from .metrics.models import softmax
    from .onnx.targets import class_view

    xe = explanation_inputs(m.to_channels_first(x), e.maps, resize="linear")
    out = m.run(m.to_native(xe.astype(m.input_dtype, copy=False)), checked=True)[m.output_name]
    c = e.targets[:, 0]
    rows = np.arange(len(c))
    return np.stack([softmax(class_view(e.outputs))[rows, c], softmax(class_view(out))[rows, c]],
                    axis=1)


def _probabilities(m):
    """``score_fn`` of :mod:`refcam.metrics`: channels-first inputs → softmax class probabilities
    (the model run in its native layout and input dtype)."""
    from .metrics.models import softmax
    from .onnx.targets import class_view

    def score_fn(xb: np.ndarray) -> np.ndarray:
        out = m.run(m.to_native(xb.astype(m.input_dtype, copy=False)), checked=True)
        return softmax(class_view(out[m.output_name]))

    return score_fn


def _perturbation_curve(m, x: np.ndarray, e, kind: str, conv: dict):
    r"""The deletion or insertion curve of each image for its explained class:
    :func:`refcam.metrics.perturbation.deletion` / ``insertion`` (Petsiuk et al. 2018, RISE) on
    the channels-first inputs, the maps upsampled bilinearly (``resize="linear"``), the scores the
    softmax probability :math:`y_k = p_c(I^{(k)})` of the explained class :math:`c`; the perturbed
    inputs are scored in ONNX runs of ``conv["batch_size"]`` inputs (the same function, the same
    conventions: pixel order, step, baselines, trapezoid AUC)."""
    from .metrics import perturbation as P

    fn = P.deletion if kind == "deletion" else P.insertion
    return fn(_probabilities(m), m.to_channels_first(x), e.maps, e.targets[:, 0],
              step=conv["step"], baseline=conv[f"{kind}_baseline"],
              blur_sigma=conv["blur_sigma"], resize="linear", batch_size=conv["batch_size"],
              progress=False)


def _worker_chunk(spec: dict, chunk: int) -> dict:  # the Dask task: metadata in, metadata out
    return _compute_chunk(spec, chunk)


# ------------------------------------------------------------------------------ driver
def _probe(spec: dict, x: np.ndarray, job: dict) -> tuple[tuple, str, int]:
    """Map shape ``S``, dtype and ``T`` of ``job`` on one explained input (an all-zero image)."""
    from .explanation import explain

    m = _load_model(spec)
    t = job["target"]
    if t == "labels":
        t = [[0]] if job["method"] in ("cam", "gradcam") else 0
    elif isinstance(t, dict):
        from .onnx import TopK

        t = TopK(t["topk"])
    e = explain(m, x, job["method"], layer=spec["layer"], target=t, **job["options"])
    n_t = 1 if e.targets is None else e.targets.shape[1]
    shape = e.maps.shape[1:] if n_t == 1 else e.maps.shape[2:]
    if job["target"] == "labels":
        n_t = max(len(r) for r in spec["labels"])
    return tuple(int(s) for s in shape), str(e.maps.dtype), n_t


def _also_jobs(also: Any) -> list[dict]:
    """``also=`` as job dicts ``{name, method, target, options}``; the name (the arrays'
    group ``also/<name>``) is ``<method>_<top1 | all | labels | top<k> | class<c>>``."""
    jobs, names = [], set()
    for item in also or ():
        if not isinstance(item, (list, tuple)) or len(item) not in (2, 3) or \
                not isinstance(item[0], str) or (len(item) == 3 and not isinstance(item[2], dict)):
            raise InvalidArgumentError("also", item, "(method, target) or (method, target, "
                                       "{options}) pairs, e.g. ('cam', 'all')")
        t = _target_spec(item[1])
        tag = ("top1" if t is None else t if isinstance(t, str) else
               f"top{t['topk']}" if isinstance(t, dict) else f"class{t}")
        name = f"{item[0]}_{tag}"
        if name in names:
            raise InvalidArgumentError("also", list(also), f"distinct jobs ({name!r} twice)")
        names.add(name)
        jobs.append({"name": name, "method": item[0], "target": t,
                     "options": dict(item[2]) if len(item) == 3 else {}})
    return jobs


def explain_dataset(
    model: Any,
    items: Any,
    store: str | os.PathLike,
    method: str = "gradcam",
    *,
    layer: str | None = None,
    target: Any = None,
    batch_size: int = 16,
    workers: int = 0,
    scheduler: str | None = None,
    resume: bool = True,
    progress: bool | None = None,
    layout: str = "NCHW",
    size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    crop_padding: int = 32,
    resample: str = "bicubic",
    threads: int | None = None,
    also: Sequence = (),
    metrics: bool | str | Sequence[str] = False,
    metric_step: int | None = None,
    deletion_baseline: str = "zeros",
    insertion_baseline: str = "blur",
    blur_sigma: float = 5.0,
    metric_batch_size: int = 64,
    **options: Any,
) -> DatasetResult:
    """Explain every image of ``items`` with ``method`` and stream the results into a Zarr store.

    Parameters
    ----------
    model : ONNX file path (or ModelProto / bytes / :class:`refcam.onnx.Model`, saved as
        ``<store>/model.onnx`` for the workers).
    items : folder, glob, ``.csv`` file list (``path[,classes]``) or a sequence of paths.
    store : the Zarr directory (created, or resumed).
    method, layer, **options : as in :func:`refcam.explain`.
    target : ``None`` (top-1), a class index, :class:`refcam.onnx.TopK`, ``"all"`` (every class,
        CAM / Grad-CAM on a GAP → linear head) or ``"labels"`` (the CSV's classes per image).
    batch_size : images per chunk (the unit of work, storage and resumption).
    workers : ``0`` runs in this process (decoding of the next chunk overlaps the current one);
        ``n >= 1`` starts a local Dask cluster of ``n`` single-threaded worker processes.
    also : more ``(method, target)`` or ``(method, target, {options})`` jobs computed on the same
        decoded batch, e.g. ``[("cam", "all")]``; their arrays go to ``also/<method>_<target>/``
        (``maps``, ``scores``, ``targets``; target tags ``top1``, ``all``, ``labels``,
        ``top<k>``, ``class<c>``).  When every job is CAM or Grad-CAM they share **one** forward
        run (:func:`refcam.allclass.explain_many`: Grad-CAM top-1 and all-class CAM from the same
        activations); otherwise each job runs :func:`refcam.explain`.  The metrics score the
        primary job.
    threads : onnxruntime intra-op threads per worker process (inter-op: 1).  Default: 1 on Dask
        workers (one single-threaded worker per core, which is what the local cluster starts:
        the Dask nanny also sets ``OMP_NUM_THREADS`` / ``OPENBLAS_NUM_THREADS`` / ``MKL_NUM_THREADS``
        to 1), onnxruntime's default (one per core) with ``workers=0``.  An execution setting,
        not part of the manifest.
    scheduler : ``"tcp://host:port"`` of an existing Dask cluster (the store and the model path
        must be visible to its workers).
    resume : continue an existing store written with the same arguments (else refuse it).
    progress : tqdm bar (images/s, ETA) on stderr; ``None``: only on a terminal.
    size, mean, std, crop_padding, resample : preprocessing (:func:`refcam.zoo.preprocess`);
        ``mean``/``std`` default to ImageNet's.
    metrics : faithfulness metrics computed over the same stream, one target per image (top-1 or
        a class index); ``True`` means ``"confidence"``; a name or a sequence of names among
        ``"confidence"``, ``"deletion"``, ``"insertion"`` (or ``"a,b"``):

        * ``"confidence"``: the softmax probability of the explained class on each image
          (:math:`Y^c`) and on its explanation image (:math:`O^c`, array ``confidence``
          ``(N, 2)``), aggregated into Average Drop % and Increase in Confidence %
          (:mod:`refcam.metrics.confidence`);
        * ``"deletion"`` / ``"insertion"``: the RISE curves (Petsiuk et al. 2018) of the softmax
          probability of the explained class, arrays ``deletion`` / ``insertion`` ``(N, T_p)``
          with ``T_p = ceil(P / metric_step) + 1`` points for ``P`` input pixels, and their
          trapezoid AUC ``deletion_auc`` / ``insertion_auc`` ``(N,)``, aggregated as the mean AUC
          (:mod:`refcam.metrics.perturbation`, the same function and conventions).

        The aggregates go to ``metrics.json`` and ``DatasetResult.metrics``.
    metric_step : pixels (spatial positions) per deletion / insertion step, required with those
        metrics (no default, as in :func:`refcam.metrics.deletion`; RISE used 224 at 224×224).
    deletion_baseline, insertion_baseline, blur_sigma : the baselines (``"zeros"``, ``"blur"`` or
        ``"mean"``; RISE: zeros and blur) and the blur's σ (:func:`refcam.metrics.make_baseline`).
    metric_batch_size : perturbed inputs per ONNX run of the deletion / insertion steps (the
        memory they take is ``metric_batch_size`` inputs).

    Returns
    -------
    DatasetResult
    """
    import zarr

    from . import __version__
    from .zoo._images import NORMALIZATIONS

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidArgumentError("batch_size", batch_size, "an integer >= 1")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise InvalidArgumentError("workers", workers, "an integer >= 0")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 1):
        raise InvalidArgumentError("threads", threads, "None or an integer >= 1")
    on_dask = workers > 0 or scheduler is not None
    mets = _metric_names(metrics)
    pert = None
    if any(k in mets for k in PERTURBATIONS):
        from .metrics.perturbation import BASELINES

        if isinstance(metric_step, bool) or not isinstance(metric_step, int) or metric_step < 1:
            raise InvalidArgumentError("metric_step", metric_step, "pixels per deletion / "
                                       "insertion step, an integer >= 1 (RISE: 224 at 224x224)")
        for nm, v in (("deletion_baseline", deletion_baseline),
                      ("insertion_baseline", insertion_baseline)):
            if v not in BASELINES:
                raise InvalidArgumentError(nm, v, f"one of {', '.join(BASELINES)}")
        if isinstance(metric_batch_size, bool) or not isinstance(metric_batch_size, int) \
                or metric_batch_size < 1:
            raise InvalidArgumentError("metric_batch_size", metric_batch_size, "an integer >= 1")
        if not (isinstance(blur_sigma, (int, float)) and blur_sigma >= 0):
            raise InvalidArgumentError("blur_sigma", blur_sigma, "a number >= 0")
        pert = {"step": metric_step, "deletion_baseline": deletion_baseline,
                "insertion_baseline": insertion_baseline, "blur_sigma": float(blur_sigma),
                "batch_size": metric_batch_size, "resize": "linear",
                "score": "softmax probability of the explained class"}
    paths, labels = read_items(items)
    if not paths:
        raise InvalidArgumentError("items", items, "at least one image")
    tspec = _target_spec(target)
    also_jobs = _also_jobs(also)
    if any(j["target"] == "labels" for j in also_jobs) and labels is None:
        raise InvalidArgumentError("also", "labels", "a CSV file list with classes in column 2")
    if tspec == "labels" and labels is None:
        raise InvalidArgumentError("target", "labels", "a CSV file list with classes in column 2")
    if (tspec == "labels" or any(j["target"] == "labels" for j in also_jobs)) \
            and any(not r for r in labels):
        raise InvalidArgumentError("target", "labels", "classes for every row of the CSV")
    root = Path(store).resolve()
    if root.exists() and not (root / MANIFEST).exists():
        foreign = sorted(p.name for p in root.iterdir()
                         if p.name not in _STORE_NAMES and not p.name.endswith(".partial"))
        if not root.is_dir() or foreign:
            raise InvalidArgumentError(
                "store", str(root), "a new or empty directory, or a refcam dataset store to "
                f"resume (it holds {', '.join(foreign[:3]) or 'a file'}: nothing is overwritten)"
            )
    root.mkdir(parents=True, exist_ok=True)
    spec = {
        "model_path": _model_path(model, root),
        "layout": layout,
        "method": method,
        "layer": layer,
        "target": tspec,
        "options": options,
        "batch_size": batch_size,
        "n_items": len(paths),
        "paths": paths,
        "labels": labels if tspec == "labels" or any(j["target"] == "labels"
                                                    for j in also_jobs) else None,
        "also": also_jobs,
        "store": str(root),
        "metrics": mets,
        "perturbation": pert,
        "threads": threads if threads is not None else (1 if on_dask else None),
        "preprocessing": {
            "size": size, "crop_padding": crop_padding, "resample": resample,
            "mean": tuple(mean) if mean is not None else NORMALIZATIONS["imagenet"][0],
            "std": tuple(std) if std is not None else NORMALIZATIONS["imagenet"][1],
        },
    }
    spec["model_sha256"] = file_sha256(spec["model_path"])
    manifest = {
        "refcam_version": __version__,
        "model_sha256": spec["model_sha256"],
        "model": spec["model_path"],
        "method": method,
        "layer": layer,
        "target": tspec,
        "options": _jsonable(options),
        "batch_size": batch_size,
        "n_items": len(paths),
        "items_sha256": hashlib.sha256("\n".join(paths).encode()).hexdigest(),
        "labels_sha256": None if spec["labels"] is None
        else hashlib.sha256(json.dumps(spec["labels"]).encode()).hexdigest(),
        "preprocessing": _jsonable(spec["preprocessing"]),
        "layout": layout,
        "also": [[j["method"], j["target"], _jsonable(j["options"])] for j in also_jobs],
        "metrics": list(mets),
        "perturbation": None if pert is None else {k: v for k, v in pert.items()
                                                   if k != "batch_size"},
    }
    mpath = root / MANIFEST
    if mpath.exists():
        old = json.loads(mpath.read_text())
        diff = [k for k in manifest if k != "refcam_version" and old.get(k) != manifest[k]]
        if diff:
            raise InvalidArgumentError(
                "store", str(root), f"a store of the same run to resume (it differs in: "
                f"{', '.join(diff)}); pass a new store path"
            )
        if not resume:
            raise InvalidArgumentError("store", str(root), "a new path (resume=False)")
        spec.update({k: v for k, v in old["layout_of_arrays"].items() if k != "also"})
        for j, lay in zip(spec["also"], old["layout_of_arrays"].get("also", [])):
            j.update(lay)
        g = zarr.open_group(str(root), mode="r+")
    else:
        m = _load_model(spec)
        from .zoo._images import load_inputs  # noqa: F401  (fail early without Pillow)

        shape = m.input_shape
        side = size or next((d for d in (shape[1:-1] if m.channels_last else shape[2:])
                             if isinstance(d, int) and d > 0), 224)
        zeros = np.zeros((1,) + ((side, side, 3) if m.channels_last else (3, side, side)),
                         dtype=m.input_dtype)
        map_shape, map_dtype, n_t = _probe(spec, zeros, spec)
        arr = {"map_shape": list(map_shape), "map_dtype": map_dtype, "n_targets": n_t,
               "also": []}
        for j in also_jobs:
            j_shape, j_dtype, j_t = _probe(spec, zeros, j)
            arr["also"].append({"map_shape": list(j_shape), "map_dtype": j_dtype,
                                "n_targets": j_t})
            j.update(arr["also"][-1])
        if pert is not None:
            n_px = int(np.prod(zeros.shape[1:-1] if m.channels_last else zeros.shape[2:]))
            arr["perturbation_points"] = -(-n_px // metric_step) + 1
            arr["perturbation_pixels"] = n_px
        if mets and (n_t != 1 or tspec == "labels"):
            raise InvalidArgumentError(
                "metrics", True, "one target per image (top-1 or a class index): Average Drop "
                "and Increase in Confidence score one explained class per image"
            )
        spec.update({k: v for k, v in arr.items() if k != "also"})
        n, b = len(paths), batch_size
        g = zarr.open_group(str(root), mode="w")
        g.create_array("maps", shape=(n, n_t, *map_shape), chunks=(b, n_t, *map_shape),
                       dtype=map_dtype, fill_value=np.nan)
        g.create_array("scores", shape=(n, n_t), chunks=(b, n_t), dtype="float64",
                       fill_value=np.nan)
        g.create_array("targets", shape=(n, n_t), chunks=(b, n_t), dtype="int64", fill_value=-1)
        g.create_array("status", shape=(n,), chunks=(b,), dtype="uint8", fill_value=PENDING)
        for j in also_jobs:
            sub = g.require_group("also").create_group(j["name"])
            j_t, j_shape = j["n_targets"], tuple(j["map_shape"])
            sub.create_array("maps", shape=(n, j_t, *j_shape), chunks=(b, j_t, *j_shape),
                             dtype=j["map_dtype"], fill_value=np.nan)
            sub.create_array("scores", shape=(n, j_t), chunks=(b, j_t), dtype="float64",
                             fill_value=np.nan)
            sub.create_array("targets", shape=(n, j_t), chunks=(b, j_t), dtype="int64",
                             fill_value=-1)
        if "confidence" in mets:
            g.create_array("confidence", shape=(n, 2), chunks=(b, 2), dtype="float64",
                           fill_value=np.nan)
        for k in PERTURBATIONS:
            if k in mets:
                t_p = arr["perturbation_points"]
                g.create_array(k, shape=(n, t_p), chunks=(b, t_p), dtype="float64",
                               fill_value=np.nan)
                g.create_array(f"{k}_auc", shape=(n,), chunks=(b,), dtype="float64",
                               fill_value=np.nan)
        ids = g.create_array("ids", shape=(n,), chunks=(b,), dtype=str)
        ids[:] = np.asarray(paths, dtype=object)
        g.attrs["refcam"] = {"manifest": MANIFEST}
        write_atomic(mpath, json.dumps({**manifest, "layout_of_arrays": arr}, indent=1).encode())
    status = g["status"][:]
    n_chunks = -(-len(paths) // batch_size)
    todo = [c for c in range(n_chunks)
            if (status[c * batch_size:(c + 1) * batch_size] == PENDING).any()]
    computed: list = []
    from tqdm.auto import tqdm

    show = progress if progress is not None else sys.stderr.isatty()
    bar = tqdm(total=len(paths), initial=len(paths) - sum(
        min(len(paths), (c + 1) * batch_size) - c * batch_size for c in todo),
        unit="img", desc="explain-dataset", disable=not show, smoothing=0.1)
    try:
        if workers == 0 and scheduler is None:
            with ThreadPoolExecutor(max_workers=1) as pool:  # decode chunk i+1 during chunk i
                nxt = pool.submit(_decode, spec, todo[0]) if todo else None
                for j, c in enumerate(todo):
                    dec = nxt.result()
                    nxt = pool.submit(_decode, spec, todo[j + 1]) if j + 1 < len(todo) else None
                    r = _compute_chunk(spec, c, dec)
                    computed.append(r)
                    bar.update(r["done"] + r["failed"])
        elif todo:
            _run_dask(spec, todo, workers, scheduler, bar, computed)
    finally:
        bar.close()
    status = g["status"][:]
    table = None
    if mets:
        table = _aggregate(g, status == DONE, mets, spec)
        write_atomic(root / "metrics.json", json.dumps(table, indent=1).encode())
    return DatasetResult(str(root), len(paths), int((status == DONE).sum()),
                         int((status == FAILED).sum()), sorted(r["chunk"] for r in computed),
                         table, sorted(computed, key=lambda r: r["chunk"]))


def _metric_names(metrics: Any) -> tuple:
    """``metrics=`` as a tuple of names in :data:`METRICS` order (``True`` → confidence)."""
    if metrics is None or metrics is False:
        return ()
    if metrics is True:
        return ("confidence",)
    names = metrics.split(",") if isinstance(metrics, str) else metrics
    try:
        names = [str(k).strip() for k in names]
    except TypeError:
        names = [metrics]
    bad = [k for k in names if k not in METRICS]
    if bad or not names:
        raise InvalidArgumentError("metrics", metrics, f"True, or names among {', '.join(METRICS)}")
    return tuple(k for k in METRICS if k in names)


def _aggregate(g, done: np.ndarray, mets: tuple, spec: dict) -> dict | None:
    r"""The table over the done items: Average Drop % and Increase in Confidence %
    (:mod:`refcam.metrics.confidence`), and the mean deletion / insertion AUC
    :math:`\frac{1}{N}\sum_i \mathrm{AUC}_i` with its conventions."""
    n = int(done.sum())
    if n == 0:
        return None
    table: dict = {"n": n, "score": "softmax probability of the explained class"}
    if "confidence" in mets:
        from .metrics.confidence import average_drop, increase_in_confidence

        yo = g["confidence"][:][done]
        table["average_drop"] = average_drop(yo[:, 0], yo[:, 1])
        table["increase_in_confidence"] = increase_in_confidence(yo[:, 0], yo[:, 1])
    for k in PERTURBATIONS:
        if k in mets:
            table[f"{k}_auc"] = float(np.mean(g[f"{k}_auc"][:][done]))
    if spec.get("perturbation") is not None:
        conv = {k: v for k, v in spec["perturbation"].items() if k not in ("batch_size", "score")}
        conv["points"] = spec["perturbation_points"]
        conv["pixels"] = spec["perturbation_pixels"]
        table["perturbation"] = conv
    return table


def _run_dask(spec: dict, todo: list, workers: int, scheduler: str | None, bar, computed) -> None:
    """Submit one task per pending chunk; the tasks write their chunks, results are counts."""
    from distributed import Client, LocalCluster, as_completed

    cluster = None
    if scheduler is None:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=":0")
        client = Client(cluster)
    else:
        client = Client(scheduler)
    try:
        ref = client.scatter(spec, broadcast=True)  # the item list crosses the network once
        futures = [client.submit(_worker_chunk, ref, c, pure=False, retries=3) for c in todo]
        for fut in as_completed(futures):
            r = fut.result()
            computed.append(r)
            bar.update(r["done"] + r["failed"])
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
