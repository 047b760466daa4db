"""Smoke/oracle test of benchmarks/metrics_table.py's method plumbing on the toy CAM net (fast)."""

import importlib.util
from pathlib import Path

import numpy as np

from refcam import math as rmath
from refcam.onnx import Model
from refcam.onnx.toy_models import cam_net


def load_script():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "metrics_table.py"
    spec = importlib.util.spec_from_file_location("metrics_table", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_method_maps_on_linear_head():
    mt = load_script()
    m = Model(cam_net())
    x = np.random.default_rng(0).random((2, 3, 12, 12)).astype(np.float32)
    fw = m.forward(x, ["features"])
    a = fw.activations["features"].astype(np.float64)
    t = fw.outputs.argmax(axis=1)
    names = list(mt.NAMES)
    maps = mt.method_maps(m, x, "features", t, names, seed=0, batch=4)
    assert set(maps) == set(names) and all(v.shape == (2, 12, 12) for v in maps.values())
    w = m.linear_head("features").weight  # (C, K)
    np.testing.assert_allclose(maps["CAM"], np.einsum("nk,nkhw->nhw", w[t], a), rtol=1e-5)
    # GAP -> Gemm head: zeroing channel k lowers y^c by w_k^c * gap(A^k), so the Ablation-CAM
    # weight is w_k^c * gap(A^k) / y^c and the map ReLU(sum_k weight_k A^k)
    y = fw.outputs[np.arange(2), t]
    wk = w[t] * a.mean(axis=(2, 3)) / y[:, None]
    want = np.maximum(np.einsum("nk,nkhw->nhw", wk, a), 0)
    np.testing.assert_allclose(maps["Ablation-CAM"], want, rtol=1e-4, atol=1e-6)
    # the model runs in float32, so explain's Eigen-CAM is the math floor on the float32 activations
    np.testing.assert_array_equal(maps["Eigen-CAM"], rmath.eigencam(fw.activations["features"]))
    # GAP -> Gemm: dy^c/dA^k_ij = w_k^c / Z, so Grad-CAM = ReLU(CAM) / Z with Z = 12 * 12
    np.testing.assert_allclose(
        maps["Grad-CAM"], np.maximum(maps["CAM"], 0) / 144, rtol=1e-4, atol=1e-7
    )
