"""Time refcam.math.normalize and scorecam_masks on Score-CAM-sized arrays.

    OPENBLAS_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_masks.py

Measured on the 2 shared cores (load ~2), medians of 7, interleaved with the previous
implementation (commit d028a5e) in one process:

=================================================  ========  ========
case                                               before    after
=================================================  ========  ========
normalize minmax float32 (64, 224, 224)            14.0 ms    5.8 ms
normalize minmax eps=1e-8 float32                  14.0 ms    4.8 ms
normalize minmax float64 (64, 224, 224)            40.3 ms   18.5 ms
scorecam_masks float32 (1, 256, 7, 7) -> 224²     133.7 ms   63.0 ms
scorecam_masks float64 (1, 256, 7, 7) -> 224²     223.2 ms  106.1 ms
=================================================  ========  ========

Results are bit-identical to the previous implementation (tests/math/test_post.py keeps it as
the oracle).
"""

from __future__ import annotations

import time

import numpy as np

from refcam.math import normalize, scorecam_masks


def _median_ms(f, repeats: int = 7) -> float:
    f()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)) * 1e3


def main() -> None:
    rng = np.random.default_rng(0)
    for dt in (np.float32, np.float64):
        x = rng.random((64, 224, 224)).astype(dt)
        a = rng.random((1, 256, 7, 7)).astype(dt)
        name = np.dtype(dt).name
        print(f"normalize minmax {name} (64,224,224)          {_median_ms(lambda: normalize(x)):7.1f} ms")
        print(f"normalize minmax eps=1e-8 {name}              "
              f"{_median_ms(lambda: normalize(x, eps=1e-8)):7.1f} ms")
        print(f"scorecam_masks {name} (1,256,7,7)->224x224    "
              f"{_median_ms(lambda: scorecam_masks(a, (224, 224))):7.1f} ms")


if __name__ == "__main__":
    main()
