r"""The ONNX backend node suite through the finite-difference oracle.

The onnx wheel no longer ships the backend test data; the test definitions it does ship
(``onnx.backend.test.case.node``) are collected in-process (no files): each case is a one-node
model (or its function-expanded twin, ``*_expanded``) with its input data.

For every case whose model takes float32/float64 tensor inputs and returns float tensors, a scalar
loss :math:`L = \sum_i \langle s_i, y_i\rangle` with random cotangents :math:`s_i` (standard normal,
seeded by the case name) is appended to the model, and refcam's VJP of :math:`L` with respect to
every float input is compared with central finite differences of :math:`L`.

Finite differences
------------------
:math:`L` is summed in float64 from the model's outputs.  Where onnxruntime runs a float64 twin of
the model (every FLOAT tensor, initializer, Constant and Cast target widened to DOUBLE) and the twin
reproduces the float32 outputs, the twin is differentiated (step :math:`h = 10^{-4}\max(1,|x_j|)`);
otherwise the float32 model itself (:math:`h = 2\cdot10^{-3}\max(1,|x_j|)`).  Central differences
at :math:`h` and :math:`h/2` give the Richardson value :math:`(4D(h/2) - D(h))/3` and the error
estimate :math:`|D(h/2) - D(h)|/3`.  Every element is checked when an input has at most
``FULL_MAX`` entries; otherwise ``SAMPLE`` random elements and ``DIRECTIONS`` random directions
:math:`v` (compared with :math:`\langle \nabla L, v\rangle`).

Kinks and ties (ReLU at 0, equal maxima, a Floor or an output size crossing a jump) are excluded,
not fixed: a point is a kink when the one-sided differences disagree by the same amount at both
steps (a smooth function's asymmetry halves with :math:`h`), when the Richardson error estimate is
large, or when a perturbation changes the output shape or makes the run fail.

Classes
-------
PASS         every compared point within ``rtol * scale + 10 * error estimate (+ float32 noise)``
WRONG        a compared point outside it (a silent wrong gradient: must be 0)
UNSUPPORTED  ``build_vjp_model`` raised :class:`refcam.errors.UnsupportedOpError` naming op and opset
CRASH        anything else (other exceptions, a gradient onnxruntime cannot run, a refusal that
             does not name the op/opset)
KINK         every sampled point is a kink (nothing measurable; reported separately)
Cases onnxruntime itself cannot run, with non-deterministic outputs (random ops) or non-tensor
inputs are skipped.

Run ``python tests/autodiff/backend_nodes.py [-v] [pattern]`` for the table.
"""

from __future__ import annotations

import hashlib
import re
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

FULL_MAX = 48
SAMPLE = 16
DIRECTIONS = 3
RTOL64 = 1e-5       # float64 VJP vs float64-twin FD
RTOL32 = 1e-3       # float32 VJP (or float32 FD), relative to the largest gradient entry

_FLOAT = {TensorProto.FLOAT: np.float32, TensorProto.DOUBLE: np.float64}
LOSS = "refcam_loss"


@dataclass
class Result:
    name: str
    status: str
    detail: str = ""
    op: str = ""
    opset: int = 0
    seconds: float = 0.0
    excluded: int = 0
    compared: int = 0
    worst: float = 0.0
    extra: dict = field(default_factory=dict)


def collect(pattern: str | None = None):
    """The backend node test cases (in-process, from the onnx package's own definitions)."""
    from onnx.backend.test.case import node

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with np.errstate(all="ignore"):
            cases = node.collect_testcases(None)
    if pattern:
        rx = re.compile(pattern)
        cases = [c for c in cases if rx.search(c.name)]
    return cases


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 4
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _opset(model: onnx.ModelProto) -> int:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    return 0


def _elem(vi: onnx.ValueInfoProto) -> int | None:
    return vi.type.tensor_type.elem_type if vi.type.HasField("tensor_type") else None


def float64_twin(model: onnx.ModelProto) -> onnx.ModelProto:
    """FLOAT → DOUBLE everywhere (inputs, outputs, initializers, Constant values, dtype attributes)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    del g.value_info[:]
    for i, t in enumerate(list(g.initializer)):
        if t.data_type == TensorProto.FLOAT:
            g.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name))
    for vi in list(g.input) + list(g.output):
        if _elem(vi) == TensorProto.FLOAT:
            vi.type.tensor_type.elem_type = TensorProto.DOUBLE

    def fix_nodes(nodes):
        for n in nodes:
            for a in n.attribute:
                if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == TensorProto.FLOAT:
                    a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float64), a.t.name))
                if a.name in ("to", "dtype") and a.type == onnx.AttributeProto.INT and a.i == TensorProto.FLOAT:
                    a.i = TensorProto.DOUBLE
                if a.type == onnx.AttributeProto.FLOAT and n.op_type == "Constant":
                    return False
                if a.type == onnx.AttributeProto.GRAPH:
                    return False
        return True

    if not fix_nodes(g.node):
        raise ValueError("no float64 twin")
    for f in m.functions:
        if not fix_nodes(f.node):
            raise ValueError("no float64 twin")
    return m


class _Loss:
    """L(feeds) = sum_i <s_i, y_i> in float64 from a session's outputs (None if the shapes change)."""

    def __init__(self, sess, out_names, seeds, cast):
        self.sess, self.out_names, self.seeds, self.cast = sess, out_names, seeds, cast

    def __call__(self, feeds):
        f = {k: (v.astype(self.cast[k]) if k in self.cast else v) for k, v in feeds.items()}
        ys = self.sess.run(self.out_names, f)
        tot = 0.0
        for y, s in zip(ys, self.seeds):
            y = np.asarray(y)
            if y.shape != s.shape:
                return None
            with np.errstate(invalid="ignore"):  # outputs that are +-inf where the seed is 0 (masks)
                tot += float(np.sum(np.where(s != 0, y.astype(np.float64) * s.astype(np.float64), 0.0)))
        return tot


def _loss_model(model: onnx.ModelProto, float_outs: list[str], elems: dict[str, int]) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    terms = []
    common = TensorProto.DOUBLE if len({elems[o] for o in float_outs}) > 1 else elems[float_outs[0]]
    outs = {o.name: o for o in g.output}
    for i, o in enumerate(float_outs):
        s = f"refcam_s{i}"
        vi = onnx.ValueInfoProto()
        vi.CopyFrom(outs[o])
        vi.name = s
        g.input.append(vi)
        p = f"refcam_p{i}"
        g.node.append(helper.make_node("Mul", [o, s], [p]))
        r = f"refcam_r{i}"
        g.node.append(helper.make_node("ReduceSum", [p], [r], keepdims=0))
        if elems[o] != common:
            g.node.append(helper.make_node("Cast", [r], [r + "c"], to=common))
            r += "c"
        terms.append(r)
    if len(terms) == 1:
        g.node.append(helper.make_node("Identity", terms, [LOSS]))
    else:
        g.node.append(helper.make_node("Sum", terms, [LOSS]))
    g.output.append(helper.make_tensor_value_info(LOSS, common, []))
    return m


def _clean_refusal(msg: str) -> bool:
    return "opset" in msg and ("node" in msg or "op " in msg)


def run_case(case, rng_seed: int | None = None) -> Result | None:
    """Classify one backend case; None when it is not a differentiable float case (skipped)."""
    from refcam.autodiff import SEED_INPUT, build_vjp_model, grad_name
    from refcam.errors import UnsupportedOpError

    model = case.model
    name = case.name
    op = model.graph.node[0].op_type if len(model.graph.node) == 1 else (
        model.graph.node[0].op_type if model.graph.node else "?")
    if name.endswith("_expanded"):
        op += "(expanded)"
    opset = _opset(model)
    if not case.data_sets:
        return None
    inputs, _ = case.data_sets[0]
    inits = {i.name for i in model.graph.initializer}
    gin = [i for i in model.graph.input if i.name not in inits]
    if len(gin) != len(inputs):
        return None
    feeds = {}
    for vi, v in zip(gin, inputs):
        if isinstance(v, np.generic):  # numpy scalars (Clip min/max, Range start/...) are 0-d tensors
            v = np.asarray(v)
        if not isinstance(v, np.ndarray) or not vi.type.HasField("tensor_type"):
            return None
        feeds[vi.name] = v
    f_in = [vi.name for vi in gin if feeds[vi.name].dtype in (np.float32, np.float64)
            and _elem(vi) in _FLOAT and feeds[vi.name].size > 0]
    elems = {o.name: _elem(o) for o in model.graph.output}
    f_out = [o.name for o in model.graph.output if elems[o.name] in _FLOAT]
    if not f_in or not f_out:
        return None
    res = Result(name, "", op=op, opset=opset)
    t0 = time.perf_counter()
    try:
        sess = _session(model)
        y1 = sess.run(f_out, feeds)
        y2 = sess.run(f_out, feeds)
    except Exception:
        return None  # onnxruntime cannot run the model itself
    if any(a.shape != b.shape or not np.array_equal(a, b, equal_nan=True) for a, b in zip(y1, y2)):
        return None  # non-deterministic (random ops)
    if any(not np.all(np.isfinite(y)) for y in y1):
        res.extra["nonfinite_outputs"] = True
    h = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) if rng_seed is None else rng_seed
    rng = np.random.default_rng(h)
    seeds = [np.where(np.isfinite(y), rng.standard_normal(y.shape), 0).astype(y.dtype) for y in y1]
    # ---- VJP ----
    refused = []
    try:
        lm = _loss_model(model, f_out, elems)
        try:
            vjp = build_vjp_model(lm, f_in, seed=LOSS)
        except UnsupportedOpError:
            # find which inputs are refused; the others are still checked (a WRONG must not hide
            # behind a refused sibling input)
            keep = []
            for w in f_in:
                try:
                    build_vjp_model(lm, [w], seed=LOSS)
                    keep.append(w)
                except UnsupportedOpError as exc:
                    refused.append((w, str(exc)))
            if not keep:
                raise UnsupportedOpError(refused[0][1])
            f_in = keep
            vjp = build_vjp_model(lm, f_in, seed=LOSS)
    except UnsupportedOpError as exc:
        msg = str(exc)
        res.status = "UNSUPPORTED" if _clean_refusal(msg) else "CRASH"
        res.detail = msg
        res.seconds = time.perf_counter() - t0
        return res
    except Exception as exc:
        res.status, res.detail = "CRASH", f"{type(exc).__name__}: {exc}"
        res.seconds = time.perf_counter() - t0
        return res
    if refused and not all(_clean_refusal(m) for _, m in refused):
        res.status, res.detail = "CRASH", refused[0][1]
        return res
    try:
        vs = _session(vjp)
        lf = dict(feeds)
        lelem = TensorProto.DOUBLE if len({elems[o] for o in f_out}) > 1 else elems[f_out[0]]
        for i, s in enumerate(seeds):
            lf[f"refcam_s{i}"] = s
        lf[SEED_INPUT] = np.array(1.0, dtype=_FLOAT[lelem])
        grads = vs.run([grad_name(w) for w in f_in], lf)
    except Exception as exc:
        res.status, res.detail = "CRASH", f"gradient model does not run: {type(exc).__name__}: {str(exc)[:300]}"
        res.seconds = time.perf_counter() - t0
        return res
    # ---- finite differences ----
    twin_ok = False
    cast = {}
    fd_sess = sess
    try:
        tw = float64_twin(model)
        ts = _session(tw)
        tw_in = {vi.name: _elem(vi) for vi in tw.graph.input}
        cast = {k: np.float64 for k in feeds if tw_in.get(k) == TensorProto.DOUBLE}
        tf = {k: (v.astype(np.float64) if k in cast else v) for k, v in feeds.items()}
        ty = ts.run(f_out, tf)
        twin_ok = all(a.shape == b.shape and np.allclose(a, b, rtol=1e-3, atol=1e-4, equal_nan=True)
                      for a, b in zip(ty, y1))
        if twin_ok:
            fd_sess = ts
    except Exception:
        twin_ok = False
    if not twin_ok:
        cast = {}
    res.extra["fd"] = "float64 twin" if twin_ok else "float32"
    loss = _Loss(fd_sess, f_out, seeds, cast)
    all64 = twin_ok and all(feeds[w].dtype == np.float64 for w in f_in) and \
        all(elems[o] == TensorProto.DOUBLE for o in f_out)
    rtol = RTOL64 if all64 else RTOL32
    rel_step = 1e-4 if twin_ok else 2e-3
    eps = 2.2e-16 if twin_ok else 6e-8
    base = loss(feeds)
    with np.errstate(invalid="ignore"):
        sabs = float(sum(np.sum(np.where(s != 0, np.abs(y.astype(np.float64) * s), 0.0)) for y, s in zip(y1, seeds)))
    worst = 0.0
    compared = excluded = 0
    wrong = []
    for w, g in zip(f_in, grads):
        x0 = feeds[w]
        g = np.asarray(g, np.float64)
        if g.shape != x0.shape:
            res.status, res.detail = "CRASH", f"gradient of {w!r} has shape {g.shape}, input {x0.shape}"
            return res
        n = x0.size
        if n <= FULL_MAX:
            dirs = [("e", j) for j in range(n)]
        else:
            dirs = [("e", int(j)) for j in rng.choice(n, SAMPLE, replace=False)]
            dirs += [("v", rng.standard_normal(x0.shape)) for _ in range(DIRECTIONS)]
        scale_g = float(np.max(np.abs(g[np.isfinite(g)]))) if np.isfinite(g).any() else 0.0
        pts = []
        for kind, d in dirs:
            if kind == "e":
                v = np.zeros(x0.shape)
                v.flat[d] = 1.0
                xs = abs(float(x0.flat[d]))
                want = float(g.flat[d])
            else:
                v = d
                xs = float(np.max(np.abs(x0)))
                want = float(np.sum(g * v))
            hh = rel_step * max(1.0, xs)
            vals = {}
            ok = True
            for k in (-2, -1, 1, 2):
                f = dict(feeds)
                xp = np.asarray(x0.astype(np.float64) + (k * hh / 2) * v)  # 0-d stays an array
                f[w] = xp if twin_ok else xp.astype(x0.dtype)
                try:
                    with np.errstate(all="ignore"):
                        vals[k] = loss(f)
                except Exception:
                    ok = False
                    break
                if vals[k] is None or not np.isfinite(vals[k]):
                    ok = False
                    break
            if not ok or base is None:
                excluded += 1
                continue
            d1 = (vals[2] - vals[-2]) / (2 * hh)
            d2 = (vals[1] - vals[-1]) / hh
            rich = (4 * d2 - d1) / 3
            est = abs(d2 - d1) / 3
            # one-sided asymmetry: ~h f'' for a smooth function (halves with h), constant at a kink
            a1 = (vals[2] - base) / hh - (base - vals[-2]) / hh
            a2 = (vals[1] - base) / (hh / 2) - (base - vals[-1]) / (hh / 2)
            noise = 8 * eps * max(sabs, abs(base)) / (hh / 2)
            if kind == "v":
                noise *= 1.0
            pts.append((rich, est, a1, a2, noise, want))
        scale = max([scale_g] + [abs(p[0]) for p in pts] + [1e-12])
        for rich, est, a1, a2, noise, want in pts:
            kink = (abs(a2) > 1e-3 * scale + 4 * noise and abs(a2) > 0.75 * abs(a1)) or \
                est > 1e-3 * scale + 4 * noise
            if kink:
                excluded += 1
                continue
            compared += 1
            err = abs(want - rich) if np.isfinite(want) else float("inf")
            tol = rtol * scale + 10 * est + 4 * noise
            worst = max(worst, err / scale)
            if not err <= tol:
                wrong.append(f"{w}: got {want:.6g}, FD {rich:.6g} (tol {tol:.2g})")
    res.compared, res.excluded, res.worst = compared, excluded, worst
    res.seconds = time.perf_counter() - t0
    if wrong:
        res.status, res.detail = "WRONG", "; ".join(wrong[:3])
    elif refused:
        res.status, res.detail = "UNSUPPORTED", f"{len(f_in)} input(s) checked ({compared} points compared, {excluded} at kinks); " + refused[0][1]
    elif compared == 0:
        res.status, res.detail = "KINK", f"all {excluded} points at kinks"
    else:
        res.status = "PASS"
    return res


def run_suite(pattern: str | None = None, names: list[str] | None = None, verbose: bool = False,
              cases=None) -> list[Result]:
    cases = collect(pattern) if cases is None else cases
    if names is not None:
        want = set(names)
        cases = [c for c in cases if c.name in want]
    out = []
    for c in cases:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = run_case(c)
        except Exception as exc:  # the runner itself must never hide a case
            r = Result(c.name, "CRASH", f"runner: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        if r is None:
            continue
        out.append(r)
        if verbose and r.status != "PASS":
            print(f"{r.status:12s} {r.name:60s} {r.detail[:200]}", flush=True)
    return out


def table(results: list[Result]) -> str:
    cnt = {k: 0 for k in ("PASS", "WRONG", "UNSUPPORTED", "CRASH", "KINK")}
    for r in results:
        cnt[r.status] += 1
    lines = [f"differentiable float cases: {len(results)}"]
    lines += [f"  {k:12s} {v}" for k, v in cnt.items()]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    verbose = "-v" in argv
    args = [a for a in argv if not a.startswith("-")]
    t = time.perf_counter()
    res = run_suite(args[0] if args else None, verbose=verbose)
    print(table(res))
    print(f"runtime {time.perf_counter() - t:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
