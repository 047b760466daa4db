"""Execute every teaching notebook (notebooks/*.ipynb) top to bottom with nbclient.

The kernel is this interpreter: a temporary kernelspec (``argv`` = ``sys.executable -m
ipykernel_launcher``) is put first on ``JUPYTER_PATH``, with this checkout on ``PYTHONPATH``, so the
notebooks import the refcam under test whatever kernels the machine has installed.  The stored
notebooks must equal what ``notebooks/_build.py`` generates (no outputs, no drift).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
KERNEL = "refcam-test-python"
TIMEOUT = 120  # seconds per cell; each notebook is meant to run in well under a minute


def _names() -> list[str]:
    return sorted(p.name for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    base = tmp_path_factory.mktemp("jupyter")
    spec = base / "kernels" / KERNEL
    spec.mkdir(parents=True)
    env = {
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        ),
        "MPLBACKEND": "Agg",
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
    }
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [
                    sys.executable,
                    "-Xfrozen_modules=off",
                    "-m",
                    "ipykernel_launcher",
                    "-f",
                    "{connection_file}",
                ],
                "display_name": "refcam test kernel",
                "language": "python",
                "env": env,
            }
        )
    )
    old = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = os.pathsep.join([str(base)] + ([old] if old else []))
    yield
    if old is None:
        os.environ.pop("JUPYTER_PATH", None)
    else:
        os.environ["JUPYTER_PATH"] = old


def test_notebooks_present_and_in_sync_with_build_script():
    assert len(_names()) == 8
    r = subprocess.run(
        [sys.executable, str(NOTEBOOKS / "_build.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    for name in _names():
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        assert all(
            c.get("outputs", []) == [] and c.get("execution_count") is None
            for c in nb.cells
            if c.cell_type == "code"
        ), f"{name} is stored with outputs"
        assert sum(c.cell_type == "markdown" for c in nb.cells) >= 3


@pytest.mark.slow
@pytest.mark.parametrize("name", _names())
def test_notebook_runs_top_to_bottom(kernel_env, name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=TIMEOUT, kernel_name=KERNEL, resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    t0 = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - t0
    print(f"{name}: {elapsed:.1f} s")
    errors = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ]
    assert not errors
    # every show(...) call produced a real PNG picture (not a text repr of a Figure)
    n_show = (
        sum(c.source.count("show(") for c in nb.cells if c.cell_type == "code") - 1
    )  # minus its def
    pngs = [
        o["data"]["image/png"]
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
    ]
    assert len(pngs) >= max(n_show, 0)
    for data in pngs:
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    assert elapsed < 60, f"{name} took {elapsed:.0f} s, expected < 60 s"
