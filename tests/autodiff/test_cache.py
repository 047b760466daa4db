"""The on-disk gradient-graph cache (refcam.autodiff.cache): hits are exact, damage is rebuilt,
keys separate what changes the graph, the switch and the size bound work."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx
import pytest

import refcam
from refcam.autodiff import api, cache, gradients
from refcam.onnx import Model
from refcam.onnx.toy_models import resnet_like, vgg_like


@pytest.fixture
def cdir(tmp_path, monkeypatch):
    monkeypatch.setenv("REFCAM_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("REFCAM_CACHE", raising=False)
    return tmp_path / "vjp"


def _x(m: Model, n: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *m.input_shape[1:])).astype(np.float32)


def _entries(d):
    return sorted(d.glob("*.vjp")) if d.exists() else []


def test_second_model_hits_the_cache_with_bit_identical_maps(cdir, monkeypatch):
    proto = resnet_like()
    m1 = Model(proto)
    x = _x(m1)
    e1 = refcam.explain(m1, x, "gradcam", target=[1, 3])
    assert len(_entries(cdir)) == 1
    built = []
    monkeypatch.setattr(api, "build_vjp_model", lambda *a, **k: built.append(1) or 1 / 0)
    m2 = Model(proto)  # a new model object: no in-process session
    e2 = refcam.explain(m2, x, "gradcam", target=[1, 3])
    assert not built, "the graph came from the disk cache"
    assert np.array_equal(e1.maps, e2.maps)
    assert np.array_equal(e1.arrays["gradients"], e2.arrays["gradients"])


def test_corrupt_entries_are_detected_and_rebuilt(cdir):
    proto = vgg_like()
    x = _x(Model(proto))
    want = gradients(Model(proto), x, wrt="input", target=0).gradients
    (entry,) = _entries(cdir)
    good = entry.read_bytes()
    for damage in (good[:-7], good[:40] + b"X" + good[41:], b"garbage", good[:-1] + bytes([good[-1] ^ 1])):
        entry.write_bytes(damage)
        assert cache.load_graph(entry.stem) is None  # refused ...
        assert not entry.exists()                    # ... and removed
        entry.write_bytes(damage)
        got = gradients(Model(proto), x, wrt="input", target=0).gradients
        for k in want:
            assert np.array_equal(want[k], got[k])
        assert entry.read_bytes() == good  # rebuilt and stored again


def test_keys_differ_by_layer_rules_shape_and_model(cdir):
    m = Model(resnet_like())
    layers = [li.name for li in m.layers() if li.layout is not None and li.layout.is_map][-2:]
    skel = m.skeleton
    base = cache.graph_key(skel, (layers[0],), "plain", "input", ((3, 16, 16), "<f4"))
    others = [
        cache.graph_key(skel, (layers[1],), "plain", "input", ((3, 16, 16), "<f4")),
        cache.graph_key(skel, (layers[0],), "guided", "input", ((3, 16, 16), "<f4")),
        cache.graph_key(skel, (layers[0],), "plain", "top1", ((3, 16, 16), "<f4")),
        cache.graph_key(skel, (layers[0],), "plain", "input", ((3, 20, 20), "<f4")),
        cache.graph_key(skel, (layers[0],), "plain", "input", ((3, 16, 16), "<f8")),
        cache.graph_key(Model(vgg_like()).skeleton, (layers[0],), "plain", "input", ((3, 16, 16), "<f4")),
    ]
    assert len({base, *others}) == len(others) + 1
    assert base == cache.graph_key(Model(resnet_like()).skeleton, (layers[0],), "plain", "input",
                                   ((3, 16, 16), "<f4"))


def test_key_changes_with_refcam_version_and_rules_source(cdir, monkeypatch):
    skel = Model(resnet_like()).skeleton
    k = cache.graph_key(skel, ("x",), "plain", "input", None)
    monkeypatch.setattr(refcam, "__version__", "999")
    assert cache.graph_key(skel, ("x",), "plain", "input", None) != k
    monkeypatch.setattr(refcam, "__version__", refcam.__version__)
    monkeypatch.setattr(cache, "rules_hash", lambda: "another rule set")
    assert cache.graph_key(skel, ("x",), "plain", "input", None) != k


def test_weights_whose_values_the_build_read_are_checked_on_a_hit(cdir):
    m = Model(resnet_like())
    g = onnx.ModelProto()
    g.CopyFrom(m.skeleton)
    w = {"w": np.arange(6.0).reshape(2, 3)}
    g.metadata_props.append(onnx.StringStringEntryProto(key="refcam.weights_read", value='["w"]'))
    cache.store_graph("k" * 64, g, w)
    assert cache.load_graph("k" * 64, w) is not None
    assert cache.load_graph("k" * 64, {"w": np.arange(6.0).reshape(2, 3) + 1}) is None


def test_switch_off_size_bound_info_and_clear(cdir, monkeypatch):
    proto = resnet_like()
    monkeypatch.setenv("REFCAM_CACHE", "0")
    gradients(Model(proto), _x(Model(proto)), target=0)
    assert _entries(cdir) == []
    monkeypatch.setenv("REFCAM_CACHE", "1")
    m = Model(proto)
    for layer in [li.name for li in m.layers() if li.layout is not None and li.layout.is_map][-3:]:
        gradients(m, _x(m), wrt=layer, target=0)
    info = cache.cache_info()
    assert info["entries"] == 3 and info["bytes"] > 0 and info["path"] == str(cdir)
    sizes = sorted(p.stat().st_size for p in _entries(cdir))
    monkeypatch.setenv("REFCAM_CACHE_MAX_MB", str((sizes[-1] + 1) / 2**20))
    gradients(m, _x(m), wrt="input", target=0)  # a 4th entry: the bound keeps the newest only
    assert len(_entries(cdir)) == 1
    assert cache.clear_cache() == 1 and _entries(cdir) == []


def test_progress_message_after_one_second(cdir, monkeypatch, capsys):
    p = api._Progress("building the test graph", delay=0.0)
    import time

    with p:
        time.sleep(0.2)
    err = capsys.readouterr().err
    assert "refcam: building the test graph ..." in err and "done in" in err
    monkeypatch.setenv("REFCAM_PROGRESS", "0")
    with api._Progress("quiet", delay=0.0):
        time.sleep(0.2)
    assert capsys.readouterr().err == ""


def test_a_second_process_starts_warm(cdir, tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(resnet_like(), str(path))
    code = ("import sys, numpy as np, refcam; from refcam.autodiff import api\n"
            "m = refcam.onnx.Model(sys.argv[1])\n"
            "calls = []\n"
            "orig = api.build_vjp_model\n"
            "api.build_vjp_model = lambda *a, **k: calls.append(1) or orig(*a, **k)\n"
            "x = np.ones((1, *m.input_shape[1:]), np.float32)\n"
            "e = refcam.explain(m, x, 'gradcam', target=2)\n"
            "np.save(sys.argv[2], e.maps); print('built', len(calls))\n")
    env = {**os.environ, "REFCAM_CACHE_DIR": str(cdir.parent)}
    out = [subprocess.run([sys.executable, "-c", code, str(path), str(tmp_path / f"{i}.npy")], env=env,
                          capture_output=True, text=True, check=True).stdout.split()[-1] for i in range(2)]
    assert out == ["1", "0"]
    assert np.array_equal(np.load(tmp_path / "0.npy"), np.load(tmp_path / "1.npy"))
