"""The ``refcam`` command line: ``refcam explain``, ``layers``, ``methods``, ``check``.

``refcam explain`` with no argument explains the embedded default model (EfficientNet-Lite0 on
ImageNet, :mod:`refcam.zoo`) on the bundled photo of a cat and writes, into ``./refcam-out``:

* ``chelsea.png`` -- a figure: the picture the model saw, the map over it, the top-5 classes;
* ``chelsea_<method>.png`` -- the overlay alone, pixel for pixel at the model's input size;
* ``chelsea_<method>.npy`` -- the raw map at feature resolution (``Explanation.maps[i]``),

* ``refcam-<hash>.json`` -- the run's manifest: inputs and model with their SHA-256, methods,
  options, every output with its SHA-256, the refcam version (:mod:`refcam._outputs`),

and prints the paths.  Every subcommand has ``--help``.

Files: everything that can be checked without running the model is checked first (options, the
output folder's writability, that no output would replace an input, which is refused); the
outputs are then computed in memory, written to temporary names in the output folder and renamed
together under a lock on the folder, so that an interrupted run leaves no truncated file and two
runs writing to one folder never leave a mixture of their files.  Models and images are told
apart by content, not by suffix; labels and preprocessing come from the model's
``metadata_props`` when present (:func:`refcam.zoo.model_classes`,
:func:`refcam.zoo.model_preprocessing`).  Image decoding lives in :mod:`refcam.zoo._images`,
the figure in :func:`refcam.viz.explain_figure`.

Exit codes: 0 success; 1 a :class:`refcam.errors.RefcamError` (unknown layer, unsupported op,
a class index out of range, a file that is not a model ...); 2 a usage error (bad option or option
value, missing file, unknown method or class name, negative ``--target``, unwritable output folder,
an output that would replace an input); 130 interrupted.  Errors are one line on stderr;
``--debug`` shows the traceback instead.

Extension hook
--------------
Other modules add subcommands without editing this file: every module named in
:data:`PLUGINS` that exists is imported and its ``add_cli(subparsers, *, parents, parser_class)``
is called with the :class:`argparse` sub-parser action, the common parent parsers (``--debug``)
and the parser class (one-line errors); the parser it adds must ``set_defaults(func=f)`` with
``f(args) -> int`` and raise :class:`UsageError` or a ``RefcamError`` on failure.  No plugin is
named by default; a named module that is not installed is skipped.

``refcam check MODULE:FUNCTION --method M`` (conformance of another implementation,
:mod:`refcam.conformance`) is built in unless a plugin provides its own ``check``.

The module imports nothing heavy at import time (``refcam --help`` does not load onnx).
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .zoo._images import NORMALIZATIONS  # re-exported: the presets of --norm

__all__ = ["NORMALIZATIONS", "PLUGINS", "UsageError", "build_parser", "default_method", "main"]

#: Modules that may contribute subcommands (``add_cli(...)``, see above), imported when present.
PLUGINS: tuple[str, ...] = ()

DEFAULT_MODEL = "default"
DEFAULT_IMAGE = "chelsea"
EXIT_ERROR, EXIT_USAGE = 1, 2


class UsageError(Exception):
    """A mistake in the command line (exit code 2): bad option value, missing file, unknown name."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors raised as :class:`UsageError` (``main`` prints them)."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


# --------------------------------------------------------------------------- registry helpers


def _registry():
    from .methods import METHODS

    return METHODS


def default_method() -> str:
    """``"gradcam"`` when registered, else ``"cam"``.

    On a GAP → linear head such as the default model's, Grad-CAM equals CAM / Z (Z = spatial
    positions), so the fallback explains the same evidence up to a positive factor.
    """
    return "gradcam" if "gradcam" in _registry() else "cam"


def _get_method(name: str):
    from .errors import InvalidArgumentError
    from .methods import get_method

    _registry()
    try:
        return get_method(name)
    except InvalidArgumentError as exc:
        raise UsageError(str(exc)) from None


# --------------------------------------------------------------------------- models and images


def _is_model_spec(spec: str) -> bool:
    from .zoo import _models

    try:
        return _models.is_model_spec(spec)
    except _models.InputFileError as exc:
        raise UsageError(str(exc)) from None


def _load_model(spec: str | None, layout: str, args: argparse.Namespace | None = None):
    from .zoo import _models

    kw = {}
    if args is not None and getattr(args, "input_name", None):
        kw["input_name"] = args.input_name
    if args is not None and getattr(args, "other_input", None):
        kw["other_inputs"] = _other_inputs(args.other_input)
    try:
        return _models.load_model(spec, layout=layout, **kw)
    except _models.InputFileError as exc:
        raise UsageError(str(exc)) from None


def _other_inputs(pairs: Sequence[str]) -> dict:
    """``--other-input NAME=FILE.npy`` (repeatable) → ``{name: array}``."""
    import numpy as np

    out = {}
    for p in pairs:
        name, sep, file = p.partition("=")
        if not sep or not name or not file:
            raise UsageError(f"--other-input: got {p!r}, expected NAME=FILE.npy")
        try:
            out[name] = np.load(file, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise UsageError(f"--other-input {name}: cannot read {file!r} as a .npy array ({exc})") from None
    return out


def _parse_floats3(text: str, option: str) -> tuple[float, float, float]:
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        vals = ()
    if len(vals) != 3:
        raise UsageError(
            f"{option}: got {text!r}, expected three comma-separated numbers R,G,B (0-255 scale)"
        )
    return vals  # type: ignore[return-value]


def _load_images(specs: Sequence[str], lm, args: argparse.Namespace):
    """Image files / samples / .npy arrays → :class:`refcam.zoo._images.InputItem` list.

    Preprocessing: a flag given on the command line, else the model's ``refcam.preprocessing``
    metadata, else the defaults (size: the model's, else 224; crop padding 32; bicubic; --norm
    imagenet, efficientnet for the embedded model).
    """
    from .errors import InvalidArgumentError
    from .zoo import _images

    pre = lm.preprocessing
    mean = _parse_floats3(args.mean, "--mean") if args.mean is not None else None
    std = _parse_floats3(args.std, "--std") if args.std is not None else None
    if args.norm is None:
        mean = mean if mean is not None else pre.get("mean")
        std = std if std is not None else pre.get("std")
    try:
        mean, std = _images.normalization(args.norm, lm.default_norm, mean, std)
    except InvalidArgumentError as exc:
        raise UsageError(f"--{exc.argument}: got {exc.got!r}, expected {exc.expected}") from None
    size = args.size if args.size is not None else pre.get("size")
    fixed = _fixed_side(lm.model)
    if args.size is not None and fixed is not None and args.size != fixed:
        raise UsageError(
            f"--size: got {args.size}, but the model input {lm.model.input_name!r} has the fixed "
            f"shape {_fmt_shape(lm.model.input_shape)}; omit --size (or pass --size {fixed})"
        )
    try:
        return _images.load_inputs(
            specs,
            lm.model,
            size=size,
            crop_padding=(
                args.crop_padding if args.crop_padding is not None else pre.get("crop_padding", 32)
            ),
            resample=args.resample or pre.get("resample", "bicubic"),
            mean=mean,
            std=std,
        )
    except _images.InputFileError as exc:
        raise UsageError(str(exc)) from None


def _fixed_side(model: Any) -> int | None:
    """The side of a model input fixed to a square (all spatial sizes equal ints), else ``None``."""
    shape = model.input_shape or ()
    if len(shape) < 3:
        return None
    spatial = shape[1:-1] if model.channels_last else shape[2:]
    if all(isinstance(d, int) and d > 0 for d in spatial) and len(set(spatial)) == 1:
        return int(spatial[0])
    return None


def _parse_target(text: str | None, lm, n: int):
    """``-t``: class indices or names, one for all images or one per image (comma-separated).

    Negative indices are refused here (``-t -1`` is almost always a typo on a command line),
    although :func:`refcam.explain` accepts them NumPy-style and reports the resolved class.
    """
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    n_classes = len(lm.classes) if lm.classes is not None else lm.n_classes

    def one(p: str) -> int:
        try:
            c = int(p)
        except ValueError:
            c = None
        if c is not None:
            if c < 0:
                raise UsageError(
                    f"--target: got {c}, expected a class index >= 0 (negative indices are refused "
                    f"on the command line; pass the class itself"
                    + (f", e.g. {n_classes + c} for {c}" if n_classes and -n_classes <= c else "")
                    + ")"
                )
            return c
        if lm.classes is not None:
            from .errors import TargetError
            from .zoo import class_index

            try:
                return class_index(p, lm.full_classes)
            except TargetError as exc:
                raise UsageError(f"--{exc}") from None  # "--target: ..."
        raise UsageError(
            f"--target: got {p!r}, expected a class index (this model has no class names)"
        )

    vals = [one(p) for p in parts]
    if len(vals) == 1:
        return vals[0]
    if len(vals) != n:
        expected = (
            "1 (there is one image)" if n == 1 else f"1 (for every image) or {n} (one per image)"
        )
        raise UsageError(
            f"--target: got {len(vals)} comma-separated targets for {n} image(s), expected {expected}"
        )
    return vals


def _parse_options(pairs: Sequence[str]) -> dict:
    opts: dict = {}
    for p in pairs:
        key, sep, raw = p.partition("=")
        if not sep or not key:
            raise UsageError(f"--option: got {p!r}, expected KEY=VALUE (e.g. relu=false)")
        low = raw.strip().lower()
        if low in ("true", "false"):
            val: Any = low == "true"
        elif low == "none":
            val = None
        else:
            try:
                val = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                val = raw
        opts[key.strip()] = val
    return opts


# --------------------------------------------------------------------------- explain


def _progress(total: int, enabled: bool | None, desc: str):
    from tqdm.auto import tqdm

    disable = (not sys.stderr.isatty()) if enabled is None else not enabled
    return tqdm(total=total, desc=desc, disable=disable, file=sys.stderr, leave=False)


def _preset(name: str | None):
    if name is None:
        return None
    from . import presets

    if name not in presets.PRESET_NAMES:
        raise UsageError(
            f"--preset: got {name!r}, expected one of {', '.join(presets.PRESET_NAMES)}"
        )
    return presets


class _Computed:
    """What the run part of ``refcam explain`` computed for one method."""

    def __init__(self, method: Any, explanation: Any, shown: Any) -> None:
        # shown: the maps after the preset's post-processing (the raw maps without --preset)
        self.method, self.explanation, self.shown = method, explanation, shown


def _method_options(meth, options: dict, presets, preset_name: str | None):
    """The options of one method: the preset's (:func:`refcam.presets.explain_options`), then the
    ``-O`` values over them (``(opts, convention)``)."""
    from .errors import RefcamError

    opts = dict(options)
    if presets is None:
        return opts, None
    try:
        conv = presets.get(preset_name, meth.name)
    except RefcamError as exc:
        raise UsageError(f"--preset {preset_name}: {exc}") from None
    # the preset's explain options (same names as the -O keys); -O wins
    return {**presets.explain_options(conv), **opts}, conv


def _check_options(meth, opts: dict) -> None:
    """Validate one method's options before anything is computed (a bad value is exit code 2)."""
    from .errors import RefcamError

    try:
        if hasattr(meth, "resolve"):  # the method registry checks its own typed options
            meth.resolve(opts)
        else:
            from . import explanation

            explanation._options(meth, opts)
    except RefcamError as exc:
        raise UsageError(f"--option ({meth.name}): {_one_line(exc)}") from None


def _run_explain(lm, x, plans, target, presets, args) -> list[_Computed]:
    """The run part of ``refcam explain``: one :func:`refcam.explain` per method, no file written.

    ``plans``: ``(method, options, convention)`` triples from :func:`_method_options`.
    """
    from .explanation import explain

    results: list[_Computed] = []
    bar = _progress(len(plans), args.progress, "refcam explain")
    try:
        for meth, opts, conv in plans:
            bar.set_postfix_str(meth.name)
            e = explain(
                lm.model,
                x,
                meth.name,
                layer=args.layer,
                layer_layout=getattr(args, "layer_layout", None),
                allow_small_map=getattr(args, "allow_small_map", False),
                target=target,
                batch_size=args.batch_size,
                progress=args.progress,
                **opts,
            )
            shown = e.maps if conv is None else presets.from_explanation(conv, e)
            results.append(_Computed(meth, e, shown))
            bar.update(1)
    finally:
        bar.close()
    return results


def _planned_names(items, methods, preset: str | None) -> list[str]:
    """Every file name ``refcam explain`` may write for these inputs (known before computing)."""
    names = []
    for it in items:
        if it.picture is not None:
            names.append(f"{it.stem}.png")
        for m in methods:
            names.append(f"{it.stem}_{m.name}.npy")
            if preset:
                names.append(f"{it.stem}_{m.name}_{preset}.npy")
            if it.picture is not None:
                names.append(f"{it.stem}_{m.name}.png")
    return names


def _npy_bytes(a) -> bytes:
    import io

    import numpy as np

    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def _png_bytes(obj) -> bytes:
    import io

    from . import viz

    buf = io.BytesIO()
    viz.save_png(obj, buf)
    return buf.getvalue()


def _write_explain(lm, items, results: list[_Computed], args) -> list[tuple[str, bytes]]:
    """The write part of ``refcam explain``: the bytes of raw maps, overlays and one figure per
    input, as ``(file name, bytes)`` (written to disk together by :class:`refcam._outputs.OutputSet`)."""
    import numpy as np

    from . import viz

    files: list[tuple[str, bytes]] = []
    # the top classes and the explained class come from the first class-specific method
    first = next(
        (r.explanation for r in results if r.explanation.targets is not None),
        results[0].explanation,
    )

    def label(c: int) -> str:
        return f"{lm.classes[c]} ({c})" if lm.classes is not None else f"class {c}"

    for i, it in enumerate(items):
        overlays = []
        for r in results:
            name = r.method.name
            files.append((f"{it.stem}_{name}.npy", _npy_bytes(r.explanation.maps[i])))
            if args.preset:
                files.append((f"{it.stem}_{name}_{args.preset}.npy", _npy_bytes(r.shown[i])))
            m2 = r.shown[i]
            if it.picture is None:
                continue
            if m2.ndim == 2:
                ov = viz.overlay(it.picture, m2, alpha=args.alpha, cmap=args.cmap)
            elif m2.ndim == 3 and m2.shape[1:] == it.picture.shape[:2]:
                # input gradients (guided backprop, SmoothGrad, ...): (C, H, W) at the input size,
                # shown as the grey image max_c |G_c| / q (refcam.viz.saliency_image)
                grey = viz.saliency_image(m2, mode="abs")
                ov = np.repeat(
                    np.rint(255 * grey.astype(np.float64)).astype(np.uint8)[..., None], 3, 2
                )
            else:
                continue  # 3-D volumes / several targets per sample: arrays only
            files.append((f"{it.stem}_{name}.png", _png_bytes(ov)))
            overlays.append((name if not args.preset else f"{name} ({args.preset})", ov))
        if not overlays:
            continue
        row = np.asarray(first.outputs[i])
        # class scores (one axis): softmax top-k; other outputs (e.g. segmentation maps): no chart
        top = viz._softmax_top(row, min(args.top, row.size)) if row.ndim == 1 else []
        explained = None if first.targets is None else int(np.asarray(first.targets)[i].ravel()[0])
        hl = next((j for j, (c, _) in enumerate(top) if c == explained), None)
        title = f"{lm.label} — {it.stem}"
        if explained is not None:
            title += f" — target: {label(explained)}"
        fig = viz.explain_figure(
            it.picture, overlays, [(label(c), p) for c, p in top], title=title, highlight=hl
        )
        files.append((f"{it.stem}.png", _png_bytes(fig)))
        if not args.quiet and top:
            line = f"# {it.stem}: " + ", ".join(f"{label(c)} {p:.3f}" for c, p in top)
            if explained is not None and args.target is not None:
                line += f"; target: {label(explained)}"
            print(line, file=sys.stderr)
    return files


def _manifest(lm, items, results: list[_Computed], files, args) -> bytes:
    from ._outputs import manifest

    inputs = list(dict.fromkeys(it.source for it in items if it.source is not None))
    return manifest(
        inputs=inputs,
        model={
            "spec": lm.spec,
            "label": lm.label,
            "path": None if lm.path is None else str(lm.path),
            "sha256": lm.sha256,
        },
        methods=[
            {
                "name": r.method.name,
                "layer": None if r.explanation.layer is None else r.explanation.layer.name,
                "options": r.explanation.options,
                "targets": None
                if r.explanation.targets is None
                else _tolist(r.explanation.targets),
            }
            for r in results
        ],
        options={
            k: v
            for k, v in sorted(vars(args).items())
            if k not in ("func", "inputs", "debug", "progress", "quiet", "argv")
        },
        outputs=files,
        argv=["refcam", *getattr(args, "argv", [])],
    )


def _tolist(a) -> list:
    import numpy as np

    return np.asarray(a).tolist()


def cmd_explain(args: argparse.Namespace) -> int:
    import numpy as np

    from ._outputs import OutputError, OutputSet, manifest_name

    # 1. everything that can be checked without the model: usage errors come first (exit 2)
    from .zoo._models import DEFAULT_NAMES

    positional = list(args.inputs)
    model_spec = positional.pop(0) if positional and _is_model_spec(positional[0]) else None
    default_model = model_spec in (None, *DEFAULT_NAMES)
    image_specs = positional or ([DEFAULT_IMAGE] if default_model else [])
    if not image_specs:
        raise UsageError(f"explain: no IMAGE given for model {model_spec!r}")
    if args.top < 1:
        raise UsageError(f"--top: got {args.top}, expected an integer >= 1")
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"--batch-size: got {args.batch_size}, expected an integer >= 1")
    if not 0.0 <= args.alpha <= 1.0:
        raise UsageError(f"--alpha: got {args.alpha}, expected a number in [0, 1]")
    if args.size is not None and args.size < 1:
        raise UsageError(f"--size: got {args.size}, expected an integer >= 1 (pixels)")
    if args.crop_padding is not None and args.crop_padding < 0:
        raise UsageError(f"--crop-padding: got {args.crop_padding}, expected an integer >= 0")
    import matplotlib

    if args.cmap not in matplotlib.colormaps:
        raise UsageError(
            f"--cmap: got {args.cmap!r}, expected a matplotlib colormap name (jet, viridis, "
            f"inferno, gray, ...)"
        )
    method_names = [m.strip() for m in (args.method or default_method()).split(",") if m.strip()]
    if not method_names:
        raise UsageError("--method: expected at least one method name")
    methods = [_get_method(m) for m in method_names]
    presets = _preset(args.preset)
    options = _parse_options(args.option or [])
    plans = []
    for meth in methods:
        opts, conv = _method_options(meth, options, presets, args.preset)
        _check_options(meth, opts)
        plans.append((meth, opts, conv))

    # 2. model, inputs, target, and the output folder: still nothing computed
    lm = _load_model(model_spec, args.layout, args)
    items = _load_images(image_specs, lm, args)
    x = np.concatenate([it.x for it in items], axis=0)
    target = _parse_target(args.target, lm, len(items))
    names = _planned_names(items, methods, args.preset)
    mname = manifest_name(names)
    sources = [it.source for it in items if it.source is not None]
    if lm.path is not None:
        sources.append(lm.path)
    with OutputSet(args.out, inputs=sources) as outputs:
        try:
            outputs.prepare([*names, mname])
        except OutputError as exc:
            raise UsageError(f"--out: {exc}") from None

        # 3. compute, then write the whole set at once
        results = _run_explain(lm, x, plans, target, presets, args)
        files = _write_explain(lm, items, results, args)
        for name, data in files:
            outputs.stage(name, data)
        outputs.stage(mname, _manifest(lm, items, results, files, args))
        written = outputs.commit()
    for p in written:
        print(p)
    return 0


# --------------------------------------------------------------------------- layers / methods


def _fmt_shape(shape) -> str:
    if shape is None:
        return "?"
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def cmd_layers(args: argparse.Namespace) -> int:
    from .errors import RefcamError

    lm = _load_model(args.model, args.layout)
    model = lm.model
    try:
        default = model.default_layer().name
    except RefcamError:
        default = None
    rows = [li for li in model.layers() if args.all or li.is_spatial or li.shape is None]
    table = [("", "tensor", "op", "shape", "layout", "source name")]
    for li in rows:
        table.append(
            (
                "*" if li.name == default else "",
                li.name,
                li.op_type,
                _fmt_shape(li.shape),
                li.layout.describe() if li.layout is not None else "?",
                li.module_path or "-",
            )
        )
    widths = [max(len(r[c]) for r in table) for c in range(6)]
    for r in table:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    kind = "all tensors" if args.all else "spatial and token maps (use --all for every tensor)"
    print(
        f"\n{len(rows)} {kind}; shapes as stored in the graph. layout: the axis roles found in the "
        "graph (N batch, C channels, H W D L spatial, T tokens 'prefix+grid'); '?' = unclear: "
        "pass --layer-layout to explain such a layer."
    )
    if default is not None:
        print(f"* default layer: {default} (last spatial or token map before the readout)")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    methods = _registry()
    default = default_method()
    names = sorted(methods) if not args.names else [_get_method(n).name for n in args.names]
    for name in names:
        m = methods[name]
        star = "  (default of `refcam explain`)" if name == default else ""
        print(f"{name}{star}")
        print(f"  formula : {m.equation}")
        print(f"  paper   : {m.paper}")
        print(f"  needs   : {', '.join(m.needs)}")
        math_name = getattr(m.math, "__module__", "") + "." + getattr(m.math, "__name__", "?")
        print(f"  math    : {math_name}")
        for i, o in enumerate(m.options):
            choices = f" {{{', '.join(map(repr, o.choices))}}}" if o.choices else ""
            label = "options :" if i == 0 else "         "
            print(f"  {label} {o.name}={o.default!r}{choices}  {o.doc}".rstrip())
        if not m.targeted:
            print("  target  : class-agnostic (no --target)")
        print()
    return 0


def _import_target(spec: str):
    """``module:function`` or ``path/to/file.py:function`` → the callable."""
    mod_name, sep, attr = spec.rpartition(":")
    if not sep or not mod_name or not attr:
        raise UsageError(f"check: got {spec!r}, expected MODULE:FUNCTION or FILE.py:FUNCTION")
    if mod_name.endswith(".py"):
        path = Path(mod_name)
        if not path.is_file():
            raise UsageError(f"check: no such file {mod_name!r}")
        modspec = importlib.util.spec_from_file_location(f"_refcam_check_{path.stem}", path)
        module = importlib.util.module_from_spec(modspec)
        sys.path.insert(0, str(path.resolve().parent))
        try:
            modspec.loader.exec_module(module)  # type: ignore[union-attr]
        finally:
            sys.path.pop(0)
    else:
        sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(mod_name)
        except ImportError as exc:
            raise UsageError(
                f"check: cannot import module {mod_name!r} ({_one_line(exc)})"
            ) from None
        finally:
            sys.path.pop(0)
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UsageError(f"check: {mod_name!r} has no function {attr!r}")
    return fn


def _missing_hypothesis(exc: ImportError):
    """Re-raise ``exc``, or, when it is hypothesis that is missing, say so and how to install it."""
    if (exc.name or "").split(".")[0] != "hypothesis":
        raise exc
    from .errors import RefcamError

    raise RefcamError(
        "refcam check generates its test arrays with hypothesis, which is not installed; "
        "run `pip install hypothesis` (or `pip install 'refcam[testing]'`)"
    ) from None


def cmd_check(args: argparse.Namespace) -> int:
    import json

    import numpy as np

    from . import peer_adapters

    try:
        from . import conformance
    except ImportError as exc:
        _missing_hypothesis(exc)

    size = None
    if args.input_size is not None:
        try:
            size = tuple(int(v) for v in args.input_size.split(","))
        except ValueError:
            size = ()
        if len(size) != 2 or min(size) < 1:
            raise UsageError(
                f"--input-size: got {args.input_size!r}, expected H,W (two positive integers)"
            )
    fn = _import_target(args.function)
    method, mode = args.method, args.mode
    if peer_adapters.is_peer_class(fn):          # a peer's class: call it natively on a small model
        if mode == "model" and size is not None:
            raise UsageError("--input-size: not with --mode model (the generated model fixes the input size)")
        fn, peer_method, mode = peer_adapters.adapt(fn, mode=mode, input_size=size)
        if method is not None and method != peer_method:
            raise UsageError(f"--method: got {method!r}, but {args.function} computes {peer_method!r}")
        method = peer_method
    mode = mode or "arrays"
    valid = conformance.MODEL_METHODS if mode == "model" else tuple(conformance.METHOD_ARGUMENTS)
    if method is None:
        raise UsageError("the following arguments are required: -m/--method (unless FUNCTION is a "
                         "peer class; one of " + ", ".join(valid) + ")")
    if method not in valid:
        raise UsageError(f"--method: got {method!r}, expected one of {', '.join(valid)}")
    try:
        report = conformance.check(
            fn,
            method,
            preset=args.preset,
            input_size=size,
            max_examples=args.max_examples,
            atol=args.atol,
            rtol=args.rtol,
            dtype=np.float32 if args.float32 else np.float64,
            seed=args.seed,
            mode=mode,
        )
    except ImportError as exc:
        _missing_hypothesis(exc)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        print(report)
    ok = report.matched(args.preset) if args.preset is not None else bool(report.matches)
    return 0 if ok else EXIT_ERROR


def _subcommand(sub, common, name: str, *, help: str, description: str, raw: bool = True):
    """Add the subcommand ``name`` with the common options (``--debug``); ``raw`` keeps the
    description's line breaks (its examples) as written."""
    fmt = argparse.RawDescriptionHelpFormatter if raw else argparse.HelpFormatter
    return sub.add_parser(
        name, parents=[common], formatter_class=fmt, help=help, description=description
    )


def _add_check(sub, common) -> None:
    p = _subcommand(sub, common, "check",
        help="check your own CAM function against refcam's formulas and presets, and say why it differs",
        description=(
            "Run hypothesis-generated arrays through FUNCTION and through every refcam candidate of\n"
            "the method (paper and each peer preset, raw / min-max / upsampled) and report the errors,\n"
            "which candidates it matches, and a diagnosis: the convention knobs (ReLU, eps values,\n"
            "alpha variant, normalisation, upsampling, sign rule, ...) that explain the function, the\n"
            "formula, a minimal counterexample against the paper (refcam.conformance).\n\n"
            "  refcam check mylib.cams:gradcam --method gradcam\n"
            "  refcam check ./my_cam.py:score_cam --method scorecam --preset paper\n"
            "  refcam check pytorch_grad_cam:GradCAMPlusPlus          (a peer's class, peers extra)\n"
            "  refcam check torchcam.methods:ScoreCAM --json\n\n"
            "FUNCTION takes the arrays of `refcam.conformance.METHOD_ARGUMENTS` (e.g. activations,\n"
            "gradients (N, K, H, W)) and returns the maps (N, H, W); with --mode model it takes\n"
            "(model, inputs, targets) of a generated refcam.conformance.TinyModel. Exit code 0 when it\n"
            "matches (--preset, else any candidate), 1 when it does not (NaN output never matches)."
        ),
    )
    p.add_argument("function", metavar="FUNCTION",
                   help="MODULE:FUNCTION, FILE.py:FUNCTION or a peer class (pytorch_grad_cam:GradCAM)")
    p.add_argument("-m", "--method", help="gradcam, gradcampp, cam, scorecam, ... (inferred for a peer class)")
    p.add_argument(
        "-p", "--preset", help="the candidate that must match (e.g. 'paper (min-max)', torchcam)"
    )
    p.add_argument("--input-size", help="H,W: the function returns maps upsampled to this size")
    p.add_argument("--mode", choices=("arrays", "model"), default=None,
                   help="arrays (default) or model: FUNCTION(model, inputs, targets) on a generated model "
                        "(default for Score-CAM / Ablation-CAM peer classes)")
    p.add_argument("--max-examples", type=int, default=100, help="generated cases (default 100)")
    p.add_argument("--atol", type=float, default=1e-6, help="absolute tolerance (default 1e-6)")
    p.add_argument("--rtol", type=float, default=1e-5, help="relative tolerance (default 1e-5)")
    p.add_argument(
        "--float32", action="store_true", help="generate float32 arrays (default float64)"
    )
    p.add_argument("--seed", type=int, default=0, help="generation seed (default 0)")
    p.add_argument("--json", action="store_true", help="print the report as JSON (for CI)")
    p.set_defaults(func=cmd_check)


# --------------------------------------------------------------------------- explain-dataset


def cmd_explain_dataset(args: argparse.Namespace) -> int:
    """``refcam explain-dataset MODEL ITEMS --out STORE``: :func:`refcam.dataset.explain_dataset`."""
    from .dataset import explain_dataset
    from .errors import InvalidArgumentError
    from .onnx import TopK
    from .zoo import _images

    lm = _load_model(args.model, args.layout)

    def parse_target(t, flag="--target"):
        if t is None or t in ("all", "labels"):
            return t
        if t.lower().startswith("top") and t[3:].isdigit():
            return TopK(int(t[3:]))
        if t.lstrip("-").isdigit():
            return int(t)
        raise UsageError(f"{flag}: got {t!r}, expected all, labels, topK or a class index")

    target = parse_target(args.target)
    also = []
    for spec in args.also:
        method, _, t = spec.partition(":")
        also.append((method, parse_target(t or None, "--also")))
    pre = lm.preprocessing
    try:
        mean, std = _images.normalization(args.norm, lm.default_norm, pre.get("mean"), pre.get("std"))
    except InvalidArgumentError as exc:
        raise UsageError(f"--{exc.argument}: got {exc.got!r}, expected {exc.expected}") from None
    path = getattr(lm, "path", None)
    r = explain_dataset(
        str(path) if path is not None else lm.model, args.items, args.out, args.method,
        layer=args.layer, target=target, batch_size=args.batch_size,
        workers=args.workers if args.workers is not None
        else (0 if args.scheduler else max(1, os.cpu_count() or 1)),
        scheduler=args.scheduler, threads=args.threads, also=also, progress=args.progress,
        layout=args.layout,
        size=args.size if args.size is not None else pre.get("size"),
        crop_padding=args.crop_padding if args.crop_padding is not None
        else pre.get("crop_padding", 32),
        resample=pre.get("resample", "bicubic"), mean=mean, std=std, metrics=args.metrics or False,
        metric_step=args.metric_step, **_parse_options(args.option),
    )
    print(f"{r.store}: {r.n_done} done, {r.n_failed} failed of {r.n_items} "
          f"({len(r.computed)} chunks computed now)")
    if r.metrics:
        parts = []
        if "average_drop" in r.metrics:
            parts.append(f"average drop {r.metrics['average_drop']:.2f} %, increase in "
                         f"confidence {r.metrics['increase_in_confidence']:.2f} %")
        parts += [f"{k} AUC {r.metrics[k + '_auc']:.4f}" for k in ("deletion", "insertion")
                  if k + "_auc" in r.metrics]
        print(f"{', '.join(parts)} over {r.metrics['n']} images")
    if r.n_failed:
        print(f"failures and their reasons: {r.store}/failures/*.json", file=sys.stderr)
    return 0


def _add_explain_dataset(sub, common) -> None:
    p = _subcommand(sub, common, "explain-dataset",
        help="explain a folder / glob / CSV list of images into a Zarr store (resumable, Dask)",
        description=(
            "Explain every image into a Zarr store chunked per batch (maps, scores, targets,\n"
            "ids, per-item status, manifest.json). Re-running the same command resumes.\n\n"
            "  refcam explain-dataset model.onnx photos/ --out maps.zarr --target all --method cam\n"
            "  refcam explain-dataset model.onnx list.csv --out m.zarr --target labels --workers 2"
        ),
    )
    p.add_argument("model", help="an .onnx file, 'default' or toy:NAME")
    p.add_argument("items", help="a folder, a glob or a CSV file list (path[,classes])")
    p.add_argument("--out", required=True, help="the Zarr store (directory) to write or resume")
    p.add_argument("--method", default="gradcam", help="method name (default gradcam)")
    p.add_argument("--layer", help="layer (default: the model's default layer)")
    p.add_argument("--target", help="all, labels (from the CSV), topK or a class index "
                   "(default: top-1)")
    p.add_argument("--batch-size", type=int, default=16, help="images per chunk (default 16)")
    p.add_argument("--workers", type=int, default=None,
                   help="local Dask worker processes (default: one per CPU core); 0 runs in this "
                   "process without Dask")
    p.add_argument("--scheduler", help="tcp://host:port of an existing Dask scheduler")
    p.add_argument("--also", action="append", default=[], metavar="METHOD:TARGET",
                   help="a further job on the same pass, e.g. cam:all (repeatable; TARGET as "
                   "--target, empty for top-1); stored under also/<method>_<target>/")
    p.add_argument("--threads", type=int,
                   help="onnxruntime threads per worker (default: 1 on Dask workers, all cores "
                   "with --workers 0)")
    p.add_argument("-O", "--option", action="append", default=[], metavar="KEY=VALUE",
                   help="method option (repeatable)")
    p.add_argument("--layout", default="NCHW", choices=("NCHW", "NHWC"))
    p.add_argument("--size", type=int, help="square input side (default: the model's)")
    p.add_argument("--crop-padding", type=int, help="centre-crop padding (default 32)")
    p.add_argument("--norm", help="normalisation preset (default: model metadata, else imagenet)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar with images/s and ETA (default: on a terminal)")
    p.add_argument("--metrics", nargs="?", const="confidence", default=None, metavar="LIST",
                   help="faithfulness metrics over the same stream: confidence (Average Drop, "
                   "Increase in Confidence; the default of a bare --metrics), deletion, "
                   "insertion (AUC), comma-separated")
    p.add_argument("--metric-step", type=int,
                   help="pixels per deletion/insertion step (required with those; RISE: 224)")
    p.set_defaults(func=cmd_explain_dataset)


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``refcam`` (plugins from :data:`PLUGINS` included)."""
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the full traceback on errors")

    parser = _Parser(
        prog="refcam",
        parents=[common],
        description="Reference class activation maps (CAM, Grad-CAM, Score-CAM, ...) for ONNX models, "
        "in NumPy. `refcam explain` with no argument explains the embedded EfficientNet-Lite0 "
        "on a photo of a cat.",
        epilog="Exit codes: 0 ok, 1 refcam error (e.g. unknown layer, unsupported op), 2 usage error.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"refcam {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = _subcommand(sub, common, "explain",
        help="write heat-map PNGs and raw maps (.npy) for images",
        description=(
            "Explain images with CAM methods and write PNG overlays and raw maps.\n\n"
            "  refcam explain                              # default model + the cat photo\n"
            "  refcam explain coffee --method cam,scorecam # default model, a bundled sample\n"
            "  refcam explain model.onnx a.jpg b.jpg --layer layer4 --norm imagenet\n"
            "  refcam explain toy:cam x.npy                # preprocessed array input\n\n"
            "MODEL is an ONNX file (recognised by content, any suffix), 'default'\n"
            "(EfficientNet-Lite0, ImageNet) or toy:NAME (the test zoo); it may be omitted.\n"
            "IMAGE is an image file, a .npy array in the model's layout, (N, C, H, W) or\n"
            "(C, H, W), or a bundled sample photo (chelsea, coffee, astronaut).\n\n"
            "Writes, per image, <stem>.png (figure with the top classes),\n"
            "<stem>_<method>.png (overlay at the model's input size) and <stem>_<method>.npy\n"
            "(raw map at feature resolution), plus one refcam-<hash>.json manifest, and prints\n"
            "their paths. An output never replaces an input (the run is refused), and the files\n"
            "are written together at the end (no truncated or mixed sets)."
        ),
    )
    p.add_argument(
        "inputs", nargs="*", metavar="[MODEL] IMAGE", help="model (optional) then images"
    )
    p.add_argument(
        "-m",
        "--method",
        help="method name(s), comma-separated (default: gradcam if "
        "available, else cam; see `refcam methods`)",
    )
    p.add_argument(
        "-l",
        "--layer",
        help="tensor, node or module name (default: last spatial activation "
        "before global pooling; see `refcam layers`)",
    )
    p.add_argument(
        "--layer-layout",
        metavar="LAYOUT",
        help="axis roles of the layer when the graph does not determine them: NCHW, NHWC, NCL, "
        "NLC, NCDHW, NDHWC, or NTC:P+HxW / TNC:P+HxW for tokens (P prefix tokens, then an HxW "
        "grid; e.g. NTC:1+14x14); see `refcam layers`",
    )
    p.add_argument(
        "--input-name",
        metavar="NAME",
        help="the input to explain, for a model with several inputs (the others: --other-input)",
    )
    p.add_argument(
        "--other-input",
        action="append",
        metavar="NAME=FILE.npy",
        help="value of another model input, batch first (N, ...) or (1, ...); repeatable",
    )
    p.add_argument(
        "--allow-small-map",
        action="store_true",
        help="explain a layer of fewer than 2x2 positions (refused by default: a pooled map "
        "is a uniform picture)",
    )
    p.add_argument(
        "-t",
        "--target",
        help="class index >= 0 or class name, any synonym, case-insensitive (e.g. 'tabby cat'; "
        "names from the model's metadata; default: top-1); comma-separated for one target per image",
    )
    p.add_argument(
        "-p",
        "--preset",
        help="convention preset of refcam.presets (paper, pytorch-grad-cam, "
        "torchcam, captum): post-processing of the shown map, saved as <stem>_<method>_<preset>.npy",
    )
    p.add_argument(
        "-o", "--out", default="refcam-out", help="output directory (default: ./refcam-out)"
    )
    p.add_argument(
        "-O",
        "--option",
        action="append",
        metavar="KEY=VALUE",
        help="method option, repeatable (e.g. -O relu=false -O n_samples=4)",
    )
    g = p.add_argument_group("preprocessing (image files)")
    g.add_argument(
        "--size", type=int, help="side of the square model input (default: model's, else 224)"
    )
    g.add_argument(
        "--crop-padding",
        type=int,
        help="centre crop of side size/(size+P)*min(H,W) before resizing (default: the model's "
        "refcam.preprocessing metadata, else 32, the TF/torchvision 224/256 crop; 0 = largest "
        "centred square)",
    )
    g.add_argument(
        "--resample",
        choices=("bicubic", "bilinear", "nearest", "lanczos"),
        help="resize filter (default: the model's metadata, else bicubic)",
    )
    g.add_argument(
        "--norm",
        help=f"mean/std preset: {', '.join(NORMALIZATIONS)} (default: the model's "
        "refcam.preprocessing metadata, else imagenet)",
    )
    g.add_argument("--mean", help="R,G,B means on the 0-255 scale (overrides --norm)")
    g.add_argument("--std", help="R,G,B standard deviations on the 0-255 scale (overrides --norm)")
    g.add_argument(
        "--layout",
        default="NCHW",
        choices=("NCHW", "NHWC", "NCDHW", "NDHWC"),
        help="model input/activation layout (default NCHW)",
    )
    g2 = p.add_argument_group("output")
    g2.add_argument("--top", type=int, default=5, help="classes shown in the figure (default 5)")
    g2.add_argument(
        "--alpha", type=float, default=0.5, help="overlay opacity in [0, 1] (default 0.5)"
    )
    g2.add_argument("--cmap", default="jet", help="matplotlib colormap (default jet)")
    g2.add_argument("--batch-size", type=int, help="samples per onnxruntime call")
    g2.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )
    g2.add_argument("-q", "--quiet", action="store_true", help="print only the written paths")
    p.set_defaults(func=cmd_explain)

    p = _subcommand(sub, common, "layers", raw=False,
        help="list candidate layers with shapes and source names",
        description="List the model's candidate tensors (spatial ones unless --all) with "
        "op, shape and the source framework's module name; * marks the default.",
    )
    p.add_argument(
        "model",
        nargs="?",
        default=DEFAULT_MODEL,
        help="an .onnx file, 'default' or toy:NAME (default: the embedded model)",
    )
    p.add_argument(
        "--all", action="store_true", help="every floating tensor, not only spatial ones"
    )
    p.add_argument("--layout", default="NCHW", choices=("NCHW", "NHWC", "NCDHW", "NDHWC"))
    p.set_defaults(func=cmd_layers)

    p = _subcommand(sub, common, "methods", raw=False,
        help="list every method with formula, paper and needs",
        description="Every registered method: formula, paper, the arrays it needs, options.",
    )
    p.add_argument("names", nargs="*", help="only these methods")
    p.set_defaults(func=cmd_methods)

    for mod in PLUGINS:
        try:
            plugin = importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:  # the plugin exists but one of its own imports is missing
                raise
            continue
        if hasattr(plugin, "add_cli"):
            plugin.add_cli(sub, parents=[common], parser_class=_Parser)
    _add_explain_dataset(sub, common)
    if "check" not in sub.choices:
        _add_check(sub, common)  # built in unless a plugin provides its own `refcam check`
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``refcam`` command line with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    from .errors import RefcamError

    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        args.argv = argv
        if getattr(args, "func", None) is None:
            parser.print_help()
            return EXIT_USAGE
        return int(args.func(args) or 0)
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_USAGE)
    except UsageError as exc:
        if debug:
            raise
        print(f"refcam: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except RefcamError as exc:
        if debug:
            raise
        from .errors import LayerNotFoundError

        hint = (
            " (run `refcam layers MODEL` to list them)"
            if isinstance(exc, LayerNotFoundError)
            else ""
        )
        print(f"refcam: error: {_one_line(exc)}{hint}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:  # `refcam layers | head`: the reader left; not an error
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (stop the interpreter's flush error)
        except OSError:
            pass
        return 0
    except KeyboardInterrupt:
        print("refcam: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug or an environment problem: still one line
        if debug:
            raise
        print(
            f"refcam: error: {type(exc).__name__}: {_one_line(exc)} (run with --debug for the traceback)",
            file=sys.stderr,
        )
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
