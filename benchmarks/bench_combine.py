"""Time refcam's combine kernels against a plain memory copy of the same bytes.

Kernels: ``gap``, ``gradient_weights``, ``weighted_sum`` (per-channel and pixel-wise weights)
and ``upsample`` (``linear`` and ``nearest``) on realistic sizes: a ResNet-50 ``layer4`` batch
(N=32, K=2048, 7x7), a ``layer2``-like 28x28 grid at the same K (the worst case), and 32 maps
upsampled to 224x224.

Each kernel is timed with :func:`timeit.repeat` (median of ``--repeat`` runs, each averaging
enough calls to last about 0.1 s) and printed as a ratio to ``np.copyto`` of its reference
bytes, measured in the same run: the bytes of the activations it reads (gap, weighted_sum) or
of the map it writes (upsample).  A reduction that streams its input once from memory costs
about 0.5-1x such a copy; an interpolation writes its output once and reads much less.
Rows starting with ``ref:`` time plain NumPy for comparison: the finiteness check every public
refcam function runs on its inputs (``np.isfinite(A).all()``) and the bare kernels without
validation, so validation overhead and kernel cost can be told apart.

Run from the repository root::

    python benchmarks/bench_combine.py              # float32 and float64
    python benchmarks/bench_combine.py --dtype float32 --repeat 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import timeit

np = refcam = None  # imported in main(), after --blas-threads has set the environment


def median_seconds(fn, repeat: int, budget: float = 0.1) -> float:
    """Median wall time of one call of ``fn`` (``repeat`` runs of ``number`` calls)."""
    fn()  # warm-up (page faults, lazy imports)
    number, elapsed = 1, 0.0
    while True:  # pick ``number`` so that one run lasts ~budget seconds
        elapsed = timeit.timeit(fn, number=number)
        if elapsed >= budget or number >= 1000:
            break
        number *= 2
    runs = timeit.repeat(fn, number=number, repeat=repeat)
    return statistics.median(runs) / number


def copy_seconds(nbytes: int, repeat: int) -> float:
    src = np.ones(nbytes, dtype=np.uint8)
    dst = np.empty_like(src)
    return median_seconds(lambda: np.copyto(dst, src), repeat)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", choices=["float32", "float64", "both"], default="both")
    parser.add_argument("--repeat", type=int, default=5, help="timeit repeats (median is printed)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--channels", type=int, default=2048)
    parser.add_argument("--blas-threads", type=int, default=None,
                        help="set OPENBLAS/OMP/MKL_NUM_THREADS before importing numpy "
                             "(1 avoids OpenBLAS spin-waiting on a busy machine)")
    args = parser.parse_args(argv)
    if args.blas_threads is not None:
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.blas_threads)
    global np, refcam
    import numpy as np
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
    import refcam
    dtypes = ["float32", "float64"] if args.dtype == "both" else [args.dtype]
    n, k = args.batch, args.channels
    rng = np.random.default_rng(0)

    threads = os.environ.get("OPENBLAS_NUM_THREADS", "default")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"numpy {np.__version__}, refcam {refcam.__version__}, {os.cpu_count()} CPUs, "
          f"BLAS threads {threads}, load average {load}; median of {args.repeat} repeats")
    header = f"{'kernel':<48}{'dtype':<9}{'MB':>8}{'time ms':>10}{'copy ms':>10}{'ratio':>8}"
    print(header)
    print("-" * len(header))
    for name in dtypes:
        dt = np.dtype(name)
        rows = []
        for side in (7, 28):
            a = rng.standard_normal((n, k, side, side)).astype(dt)
            g = rng.standard_normal(a.shape).astype(dt)
            w = rng.standard_normal((n, k)).astype(dt)
            shape = "x".join(map(str, a.shape))
            a3, g3 = a.reshape(n, k, -1), g.reshape(n, k, -1)
            rows += [
                # reference rows (plain NumPy): the validation every public function runs, and the
                # bare kernels, to tell validation overhead from kernel cost
                (f"  ref: np.isfinite(A).all() {shape}", a.nbytes,
                 lambda a=a: np.isfinite(a).all()),
                ("  ref: A.reshape(N,K,-1).mean(-1)", a.nbytes, lambda a3=a3: a3.mean(-1)),
                ("  ref: matmul(w[:,None], A3)", a.nbytes,
                 lambda a3=a3, w=w: np.matmul(w[:, None, :], a3)),
                ("  ref: einsum nkz,nkz->nz", a.nbytes,
                 lambda a3=a3, g3=g3: np.einsum("nkz,nkz->nz", g3, a3)),
                (f"gap({shape})", a.nbytes, lambda a=a: refcam.gap(a)),
                (f"gradient_weights({shape})", a.nbytes, lambda g=g: refcam.gradient_weights(g)),
                (f"weighted_sum({shape}, (N,K))", a.nbytes,
                 lambda a=a, w=w: refcam.weighted_sum(a, w)),
                (f"weighted_sum({shape}, pixel-wise)", a.nbytes,
                 lambda a=a, g=g: refcam.weighted_sum(a, g)),
            ]
        for side in (7, 28):
            m = rng.standard_normal((n, side, side)).astype(dt)
            out_bytes = n * 224 * 224 * dt.itemsize
            from refcam.math.post import interpolation_matrix
            wm = interpolation_matrix(side, 224).astype(dt)
            rows.append((f"  ref: Wh @ M @ Ww.T ({side}->224)", out_bytes,
                         lambda m=m, wm=wm: wm @ m @ wm.T))
            for mode in ("linear", "nearest"):
                rows.append((f"upsample({n}x{side}x{side} -> 224x224, {mode})", out_bytes,
                             lambda m=m, mode=mode: refcam.upsample(m, (224, 224), mode=mode)))
        copies: dict[int, float] = {}
        for label, nbytes, fn in rows:
            if nbytes not in copies:
                copies[nbytes] = copy_seconds(nbytes, args.repeat)
            t = median_seconds(fn, args.repeat)
            c = copies[nbytes]
            print(f"{label:<48}{name:<9}{nbytes / 1e6:>8.1f}{t * 1e3:>10.2f}{c * 1e3:>10.2f}"
                  f"{t / c:>8.2f}", flush=True)
        del rows, a, g, a3, g3
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
