"""explain_dataset on Dask and under faults: a worker killed mid-run, the client killed mid-run."""

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from refcam.dataset import DONE, explain_dataset

from .test_dataset import make_images, model_file  # noqa: F401  (fixture)

zarr = pytest.importorskip("zarr")
distributed = pytest.importorskip("distributed")


def _done_chunks(store):
    d = os.path.join(store, "status", "c")
    return len(os.listdir(d)) if os.path.isdir(d) else 0


def test_worker_killed_mid_run_completes_bit_for_bit(tmp_path, model_file):  # noqa: F811
    folder = make_images(tmp_path / "imgs", n=48, corrupt=(5,))
    ref = tmp_path / "ref.zarr"
    explain_dataset(model_file, folder, ref, "gradcam", target="all", batch_size=1, crop_padding=0)
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=":0")
    client = distributed.Client(cluster)
    store = str(tmp_path / "dask.zarr")
    killed = {}
    try:
        pids = client.run(os.getpid)  # {worker address: pid}
        victim = sorted(pids.values())[0]

        def kill_once_started():
            t0 = time.monotonic()
            while time.monotonic() - t0 < 120:
                n = _done_chunks(store)
                if n >= 2:
                    killed["pending_at_kill"] = 48 - n
                    os.kill(victim, signal.SIGKILL)
                    return
                time.sleep(0.005)

        th = threading.Thread(target=kill_once_started)
        th.start()
        r = explain_dataset(model_file, folder, store, "gradcam", target="all", batch_size=1,
                            crop_padding=0, scheduler=cluster.scheduler_address)
        th.join()
        from refcam import dataset

        loads = client.run(lambda: dataset.LOADS[0])  # one session per (live) worker process
        assert max(loads.values()) == 1 and min(loads.values()) >= 0, loads  # never rebuilt
    finally:
        client.close()
        cluster.close()
    assert killed.get("pending_at_kill", 0) > 0, "the worker was not killed mid-run"
    assert (r.n_done, r.n_failed) == (47, 1)
    a = zarr.open_group(str(ref), mode="r")
    b = zarr.open_group(store, mode="r")
    for name in ("maps", "scores", "targets", "status"):
        assert np.array_equal(a[name][:], b[name][:], equal_nan=True), name


_CLIENT = """
import sys
from refcam.dataset import explain_dataset
explain_dataset(sys.argv[1], sys.argv[2], sys.argv[3], "cam", target="all", batch_size=1,
                crop_padding=0, scheduler=sys.argv[4] if len(sys.argv) > 4 else None)
"""


@pytest.mark.parametrize("on_dask", [False, True], ids=["in-process", "dask-client"])
def test_client_killed_mid_run_resume_does_not_recompute(tmp_path, model_file, on_dask):  # noqa: F811
    n = 60
    folder = make_images(tmp_path / "imgs", n=n, corrupt=())
    store = str(tmp_path / "s.zarr")
    cluster = (distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                        dashboard_address=":0") if on_dask else None)
    extra = [cluster.scheduler_address] if on_dask else []
    try:
        _kill_client_and_resume(tmp_path, model_file, folder, store, n, extra)
    finally:
        if cluster is not None:
            cluster.close()


def _kill_client_and_resume(tmp_path, model_file, folder, store, n, extra):  # noqa: F811
    proc = subprocess.Popen([sys.executable, "-c", _CLIENT, model_file, str(folder), store, *extra])
    try:
        t0 = time.monotonic()
        while _done_chunks(store) < 3 and time.monotonic() - t0 < 120 and proc.poll() is None:
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    g = zarr.open_group(store, mode="r")
    st = g["status"][:]
    finished = [c for c in range(n) if st[c] == DONE]
    assert 0 < len(finished) < n, "the client was not killed mid-run"
    chunk_files = {c: os.stat(os.path.join(store, "maps", "c", str(c), "0", "0", "0")).st_mtime_ns
                   for c in finished}
    if extra:  # tasks the scheduler had already started may still land: wait for the cluster
        time.sleep(1.0)
        st = zarr.open_group(store, mode="r")["status"][:]
        finished = [c for c in range(n) if st[c] == DONE]
        chunk_files = {c: os.stat(os.path.join(store, "maps", "c", str(c), "0", "0", "0"))
                       .st_mtime_ns for c in finished}
    r = explain_dataset(model_file, folder, store, "cam", target="all", batch_size=1,
                        crop_padding=0, scheduler=extra[0] if extra else None)
    assert r.n_done == n
    assert not set(r.computed) & set(finished)
    assert sorted(r.computed) == [c for c in range(n) if c not in finished]
    for c, mt in chunk_files.items():  # finished chunks untouched
        assert os.stat(os.path.join(store, "maps", "c", str(c), "0", "0", "0")).st_mtime_ns == mt
    ref = tmp_path / "ref.zarr"
    explain_dataset(model_file, folder, ref, "cam", target="all", batch_size=1, crop_padding=0)
    assert np.array_equal(zarr.open_group(str(ref), mode="r")["maps"][:],
                          zarr.open_group(store, mode="r")["maps"][:], equal_nan=True)
