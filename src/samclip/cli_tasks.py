"""Per-image task commands of the ``samclip`` CLI: classify, segment, semseg, label, everything, serve.

Each task command takes one image, several, a folder, or a quoted glob (``"imgs/*.png"``), runs the
backbone once per image and writes, into ``--out``, ``<name>.json`` (the result; masks as COCO RLE
``{"size": [H, W], "counts": str}``) and ``<name>.png`` (the image with the result drawn on it).
Files are written atomically (temporary file + ``os.replace``).

Coordinates are (x, y) pixels of the ORIGINAL image (X first; after its EXIF orientation); boxes
XYXY. Prompts outside ``0 <= x <= W, 0 <= y <= H`` are an error (not clipped). Output boxes are XYXY
pixel edges (x1, y1 exclusive). See :mod:`samclip.serve` for the shared result format.
"""

from __future__ import annotations

import argparse
import errno
import glob
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_POINT_RE = re.compile(rf"^\s*({_NUM})\s*,\s*({_NUM})\s*(?::\s*([^\s]*)\s*)?$")
_BOX_RE = re.compile(rf"^\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*$")

_TASK_EPILOG = {
    "classify": """examples:
  samclip classify scene.png
  samclip classify "imgs/*.png" --labels star,ring,heart --out runs/classify
""",
    "segment": """examples:
  samclip segment scene.png --point 120,80                   # one foreground point
  samclip segment scene.png --point 120,80 --point 30,40:0   # plus a background point
  samclip segment scene.png --box 10,20,200,180 --multimask  # box prompt, three candidate masks
  samclip segment scene.png --text star --labels ring,heart  # instances of a phrase
  samclip segment scene.png --text star --candidates everything  # more of them, slower
""",
    "semseg": """examples:
  samclip semseg scene.png --labels star,ring,heart
  samclip semseg "imgs/*.png" --labels star,ring --refine --out runs/semseg
""",
    "label": """examples:
  samclip label scene.png --point 120,80                     # mask + label from the 12 scene shapes
  samclip label scene.png --box 10,20,200,180 --labels star,ring,heart
""",
    "everything": """examples:
  samclip everything scene.png
  samclip everything "imgs/*.png" --labels star,ring,heart --points-per-side 24
""",
    "serve": """examples:
  samclip serve                                   # tiny-synthetic on http://127.0.0.1:8000/
  samclip serve --model runs/merge/model --port 8080 --cache-size 32
  curl -F file=@scene.png http://127.0.0.1:8000/images        # -> {"image_id": ...}
  curl -H 'content-type: application/json' -d '{"points": [[120, 80]]}' \\
       http://127.0.0.1:8000/images/<image_id>/predict
API spec: /openapi.json (interactive: /docs); web page: /
""",
}


class TaskInputError(ValueError):
    """Bad command-line input; ``samclip.cli.main`` prints it as one line and exits 2 (a ValueError, so
    this holds under ``python -m samclip.cli`` too, where ``cli.UserError`` is a different class)."""


def _user_error(msg: str) -> Exception:
    return TaskInputError(msg)


# ----------------------------------------------------------------------------------------- parsing
def parse_point(text: str) -> tuple[float, float, int]:
    """``"x,y"`` or ``"x,y:label"`` (label 1 foreground, default; 0 background) -> (x, y, label)."""
    m = _POINT_RE.match(text)
    if not m or m.group(3) not in (None, "0", "1"):
        raise _user_error(f"--point {text!r}: expected x,y or x,y:label (label 1 = foreground, 0 = background), "
                          "in original-image pixels, e.g. --point 120,80:1")
    return float(m.group(1)), float(m.group(2)), 1 if m.group(3) is None else int(m.group(3))


def parse_box(text: str) -> list[float]:
    """``"x0,y0,x1,y1"`` (XYXY, original-image pixels) -> list."""
    m = _BOX_RE.match(text)
    if not m:
        raise _user_error(f"--box {text!r}: expected x0,y0,x1,y1 (XYXY, original-image pixels), "
                          "e.g. --box 10,20,200,180")
    box = [float(v) for v in m.groups()]
    if box[2] < box[0] or box[3] < box[1]:
        raise _user_error(f"--box {text!r}: need x0 <= x1 and y0 <= y1 (XYXY)")
    return box


def _labels(text: str | None, what: str = "--labels", *, default: bool = True) -> list[str] | None:
    from .serve import DEFAULT_VOCABULARY, PromptError, TooManyPrompts, check_labels

    if text is None:
        return list(DEFAULT_VOCABULARY) if default else None
    try:
        return check_labels(text, what=what, default=None)
    except TooManyPrompts as err:
        raise _user_error(str(err)) from None
    except PromptError as err:
        raise _user_error(f"{err} (comma-separated class names, e.g. {what} star,ring,heart)") from None


def expand_inputs(items: list[str]) -> list[Path]:
    """Files, folders (their image files) and globs -> existing paths, in order, without duplicates."""
    out: list[Path] = []
    for item in items:
        if glob.has_magic(item):
            found = sorted(Path(p) for p in glob.glob(item, recursive=True) if os.path.isfile(p))
            if not found:
                raise _user_error(f"no files match {item!r}")
        elif os.path.isdir(item):
            found = sorted(p for p in Path(item).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise _user_error(f"{item}: the folder holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
        elif os.path.isfile(item):
            found = [Path(item)]
        else:
            raise _user_error(f"{item}: no such file")
        out += found
    seen: set[Path] = set()
    unique = []
    for p in out:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def output_stems(paths: list[Path]) -> list[str]:
    """File stems for the outputs, made unique (``a``, ``a-2`` ...) when inputs share a name; a suffixed stem
    never takes the name of another input's stem (``a``, ``a``, ``a-2`` -> ``a``, ``a-3``, ``a-2``)."""
    taken = {p.stem or "image" for p in paths}
    used: set[str] = set()
    stems = []
    for p in paths:
        stem = p.stem or "image"
        if stem in used:
            n = 2
            while f"{stem}-{n}" in used or f"{stem}-{n}" in taken:
                n += 1
            stem = f"{stem}-{n}"
        used.add(stem)
        stems.append(stem)
    return stems


def check_out_dir(out: Path, what: str = "--out") -> Path:
    """Create the output folder now, before any model work, or fail with one line saying why."""
    if out.exists() and not out.is_dir():
        raise _user_error(f"{what} {out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _user_error(f"{what} {out}: cannot create the folder ({err.strerror or err})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise _user_error(f"{what} {out}: the folder is not writable")
    return out


def _earlier_output(json_path: Path) -> bool:
    """Whether ``json_path`` is the JSON of an earlier task command's output pair (which a run may replace)."""
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"image", "task", "model"} <= data.keys()


def output_pairs(out: Path, paths: list[Path]) -> list[tuple[Path, Path]]:
    """``(<stem>.json, <stem>.png)`` in ``out`` per input; an error when one would replace an input image, a
    folder, or a file that is not an earlier output pair of these commands (checked before any model work)."""
    inputs = {p.resolve() for p in paths}
    pairs = [(out / f"{stem}.json", out / f"{stem}.png") for stem in output_stems(paths)]
    for target in (t for pair in pairs for t in pair):
        if target.resolve() in inputs:
            raise _user_error(f"--out {out}: the output {target.name} would replace the input image {target}; "
                              "choose another --out folder")
        if target.is_dir():
            raise _user_error(f"--out {out}: {target} is a folder, where an output file goes")
    for json_path, png_path in pairs:
        existing = [t for t in (json_path, png_path) if t.exists()]
        if existing and not _earlier_output(json_path):
            raise _user_error(f"--out {out}: the output {existing[0].name} would replace {existing[0]}, which is not "
                              "an earlier output of these commands; choose another --out folder")
    return pairs


def write_pair_atomic(files: list[tuple[Path, bytes]]) -> None:
    """Write several files so that none is left half-written and, short of a failing rename, all or none
    appear: each goes to a temporary file first, then all are renamed into place."""
    tmps = []
    try:
        for path, data in files:
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmps.append(tmp)
            tmp.write_bytes(data)
        for (path, _), tmp in zip(files, tmps):
            os.replace(tmp, path)
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)


def resolve_device(name: str) -> str:
    """``cpu`` or ``cuda[:N]`` (checked to be available)."""
    import torch

    if name == "cpu":
        return name
    if re.fullmatch(r"cuda(:\d+)?", name):
        if not torch.cuda.is_available():
            raise _user_error(f"--device {name}: CUDA is not available on this machine (torch {torch.__version__}); "
                              "use --device cpu")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise _user_error(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
        return name
    raise _user_error(f"--device {name!r}: expected cpu or cuda[:N]")


def _bf16(args: argparse.Namespace, device: str) -> bool:
    from .precision import resolve_bf16

    return resolve_bf16(args.dtype or "auto", device)


# ---------------------------------------------------------------------------------------- commands
def _prompts_for(args: argparse.Namespace) -> tuple[list[list[float]] | None, list[int] | None, list[float] | None]:
    pts = [parse_point(p) for p in (args.point or [])]
    if args.box and len(args.box) > 1:
        raise _user_error(f"--box given {len(args.box)} times: one box per run (it is decoded together with the "
                          "--point prompts into one object's mask); run once per object")
    box = parse_box(args.box[0]) if args.box else None
    points = [[x, y] for x, y, _ in pts] or None
    labels = [lab for _, _, lab in pts] or None
    return points, labels, box


def _summary(task: str, path: Path, data: dict[str, Any]) -> str:
    if task == "classify":
        text = " | ".join(f"{r['label']} {r['prob']:.3f}" for r in data["ranking"][:3])
    elif task == "segment" and "instances" in data:
        text = f"{len(data['instances'])} instance(s) of {data['phrase']!r}"
    elif task == "segment":
        best = data["masks"][data["best"]]
        text = f"{len(data['masks'])} mask(s), best score {best['score']:.3f}, {best['area']} px"
    elif task == "semseg":
        total = max(1, sum(s["area"] for s in data["segments"]) + data["background_area"])
        parts = [f"{s['label']} {100 * s['area'] / total:.1f}%" for s in data["segments"]]
        text = ", ".join(parts) or "background only"
    elif task == "label":
        text = f"{data['label']} ({data['label_score']:.3f}), mask {data['mask']['area']} px"
    else:
        text = f"{data['count']} mask(s)"
    return f"{path}: {text}"


def _run_task(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from . import serve

    task = args.command
    # ---- validate everything that can be checked before loading the model
    paths = expand_inputs(args.inputs)
    sizes = [serve.probe_image(p, serve.DEFAULT_MAX_PIXELS) for p in paths]
    labels = None
    if task in ("classify", "semseg", "label"):
        labels = _labels(args.labels)
    elif task == "everything":
        labels = _labels(args.labels, default=False)
    prompts_per_image: list[dict[str, Any]] = []
    if task in ("segment", "label"):
        if task == "segment" and args.text is not None:
            if args.point or args.box or args.zoom:
                raise _user_error("segment: give either --text or --point/--box prompts (and --zoom), not both")
            if not args.text.strip():
                raise _user_error("--text is empty; give a phrase, e.g. --text star")
            labels = _labels(args.labels, default=False)
        else:
            points, point_labels, box = _prompts_for(args)
            if points is None and box is None:
                raise _user_error(f"{task}: give at least one --point x,y[:label] or a --box x0,y0,x1,y1")
            for p, (w, h) in zip(paths, sizes):
                try:
                    prompts_per_image.append(serve.check_prompts(points, point_labels, box, (h, w)))
                except ValueError as err:
                    raise _user_error(f"{p}: {err}") from None
    if task == "semseg" and args.crop_margin:
        from .predictor.checks import check_fraction

        check_fraction(args.crop_margin, "crop_margin")  # the Predictor's own check, before the model loads
        if not args.refine:
            raise _user_error("--crop-margin re-reads the refinement's masks: it needs refine=True (--refine)")
    if task == "everything":
        if not 1 <= args.max_masks <= 255:
            raise _user_error(f"--max-masks {args.max_masks}: expected 1..255 (label-map PNGs hold 255 ids)")
        from .inference.everything import MAX_CROP_LAYERS, MAX_POINTS_PER_SIDE

        if not 1 <= args.points_per_side <= MAX_POINTS_PER_SIDE:
            raise _user_error(f"--points-per-side {args.points_per_side}: expected 1..{MAX_POINTS_PER_SIDE}")
        if not 0 <= args.crop_layers <= MAX_CROP_LAYERS:
            raise _user_error(f"--crop-layers {args.crop_layers}: expected 0..{MAX_CROP_LAYERS}")
    device = resolve_device(args.device)
    out_dir = check_out_dir(Path(args.out))
    pairs = output_pairs(out_dir, paths)

    from .factory import load_model
    from .predictor import Predictor

    predictor = Predictor(load_model(args.model, device=device), bf16=_bf16(args, device), templates=args.template)
    bar = tqdm(list(zip(paths, pairs)), desc=task, unit="img", disable=len(paths) < 2, file=sys.stderr)
    failed: list[str] = []
    for i, (path, (json_path, png_path)) in enumerate(bar):
        try:  # the headers were read up front; corrupt pixel data shows only here
            image = serve.read_image(path, serve.DEFAULT_MAX_PIXELS)
        except (serve.ImageDecodeError, serve.ImageTooLarge) as err:
            if len(paths) == 1:
                raise
            failed.append(str(err))  # the batch goes on: one bad file costs no other image its result
            tqdm.write(f"samclip: error: {err} (skipped)", file=sys.stderr)
            continue
        predictor.set_image(image)
        title = None
        if task == "classify":
            res = serve.task_classify(predictor, labels, tta=args.tta)
            title = " | ".join(f"{r['label']} {r['prob']:.2f}" for r in res.data["ranking"][:3])
        elif task == "segment" and args.text is not None:
            res = serve.task_segment_text(predictor, args.text, vocabulary=labels, candidates=args.candidates)
            title = f"text: {args.text}"
        elif task == "segment":
            res = serve.task_predict(predictor, prompts_per_image[i], multimask=args.multimask, zoom=args.zoom)
        elif task == "semseg":
            res = serve.task_semseg(predictor, labels, refine=args.refine, crop_margin=args.crop_margin)
        elif task == "label":
            res = serve.task_label(predictor, prompts_per_image[i], labels, multimask=args.multimask,
                                   pooling=args.pooling, tta=args.tta, zoom=args.zoom)
        else:
            res = serve.task_everything(predictor, labels, points_per_side=args.points_per_side,
                                        pred_iou_thresh=args.pred_iou_thresh,
                                        stability_score_thresh=args.stability_thresh, min_area=args.min_area,
                                        max_masks=args.max_masks, pooling=args.pooling, tta=args.tta,
                                        crop_n_layers=args.crop_layers)
        h, w = image.shape[:2]
        data: dict[str, Any] = {
            "image": str(path), "width": w, "height": h, "task": task, "model": str(args.model),
            "coordinates": "(x, y) original-image pixels; boxes XYXY (output boxes: x1, y1 exclusive); "
                           "masks COCO RLE",
            **res.data,
        }
        if res.label_map is not None:
            data["legend"] = res.legend
        write_pair_atomic([(json_path, (json.dumps(data, indent=1) + "\n").encode("utf-8")),
                           (png_path, serve.render_overlay(image, res, title=title))])
        tqdm.write(f"{_summary(task, path, data)} -> {json_path}")
    print(f"wrote {len(paths) - len(failed)} JSON + PNG pair(s) to {out_dir}", file=sys.stderr)
    if failed:
        raise _user_error(f"{len(failed)} of {len(paths)} image(s) could not be decoded and have no output: "
                          + "; ".join(failed[:3]) + (" ..." if len(failed) > 3 else ""))
    return 0


API_KEY_ENV = "SAMCLIP_API_KEY"


def _api_key(path: str | None) -> str | None:
    """The serve command's API key: the first line of ``path``, else ``$SAMCLIP_API_KEY``, else None (open)."""
    if path:
        try:
            lines = Path(path).read_text(encoding="utf-8-sig").splitlines()  # a BOM is no part of the key
        except (OSError, UnicodeDecodeError) as e:
            raise _user_error(f"--api-key-file {path}: cannot read it ({e})") from None
        key = lines[0].strip() if lines else ""
        if not key:
            raise _user_error(f"--api-key-file {path}: its first line is empty")
        return key
    key = os.environ.get(API_KEY_ENV, "").strip()
    return key or None


def _check_port_free(host: str, port: int) -> None:
    """One line and exit 2 when ``host:port`` cannot be bound (taken, or an address this machine lacks)."""
    import socket

    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise _user_error(f"--host {host}: cannot resolve it ({err.strerror})") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no conflict
        try:
            probe.bind(address)
        except OSError as err:
            if err.errno == errno.EADDRNOTAVAIL:
                raise _user_error(f"--host {host}: not an address of this machine ({err.strerror}); use 127.0.0.1, "
                                  "0.0.0.0 (every interface) or one of its own addresses") from None
            hint = "choose another --port" if err.errno == errno.EADDRINUSE else "choose another --host or --port"
            raise _user_error(f"--host {host} --port {port}: cannot listen there ({err.strerror}); {hint}") from None


def _is_loopback(host: str) -> bool:
    import ipaddress

    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host  # an IPv6 address in a URL is bracketed
    return f"http://{shown}:{port}/" if port else f"http://{shown}:<a free port the system picks: uvicorn prints it>/"


def _run_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from .serve.app import create_app
    except ImportError as err:
        raise _user_error(f"samclip serve needs the serve extra ({err.name} is missing): "
                          "pip install 'samclip[serve]'") from None
    device = resolve_device(args.device)
    if args.port < 0 or args.port > 65535:
        raise _user_error(f"--port {args.port}: expected 0..65535")
    api_key = _api_key(args.api_key_file)
    _check_port_free(args.host, args.port)  # before the model loads; uvicorn would say it in 7 lines, exit 3
    app = create_app(args.model, max_upload_mb=args.max_upload_mb, max_pixels=args.max_pixels,
                     max_prompts=args.max_prompts, cache_size=args.cache_size, cache_max_mb=args.cache_max_mb,
                     max_work_mb=args.max_work_mb, request_timeout_s=args.timeout,
                     device=device, bf16=_bf16(args, device), onnx_dir=args.onnx, api_key=api_key,
                     templates=args.template)
    if api_key is None and not _is_loopback(args.host):
        print(f"samclip: warning: serving on {args.host} without an API key: anyone who reaches it can use it "
              f"(set {API_KEY_ENV} or --api-key-file)", file=sys.stderr, flush=True)
    backend = "" if args.onnx is None else f" (onnxruntime: {args.onnx})"
    print(f"samclip: serving {args.model}{backend} at {_url(args.host, args.port)} "
          "(API spec /openapi.json, docs /docs)", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


# ----------------------------------------------------------------------------------------- parsers
def _common(p: argparse.ArgumentParser, task: str) -> None:
    p.add_argument("inputs", nargs="+", metavar="IMAGE",
                   help="image file(s), folder(s) or quoted glob(s) such as \"imgs/*.png\"")
    p.add_argument("--model", default="tiny-synthetic", help="merged model name or folder (default: tiny-synthetic)")
    p.add_argument("--out", default=f"runs/{task}",
                   help=f"output folder for <name>.json + <name>.png (default: runs/{task})")
    _device_args(p)


def _device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--template", action="append", default=None, metavar="TEXT",
                   help="a zero-shot prompt template with {} for the class name, e.g. 'a photo of a {}.' (repeat "
                        "for an ensemble; default: the model's templates)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N] (error when CUDA is unavailable)")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto",
                   help="bf16 autocast or fp32 (auto: bf16 on GPUs and CPUs with AMX / AVX512-BF16, else fp32)")


#: ``Predictor.MASK_POOLINGS`` (spelled out: the CLI parses its arguments before importing torch)
POOLINGS = ["auto", "max", "region", "mean", "crop", "max+crop", "zoom", "zoom+crop"]


def _pooling_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pooling", choices=POOLINGS, default="auto",
                   help="how a mask is labelled: max / mean / region pooling of the one cached pass "
                        "(auto = max; mean under a version-1 ONNX export), or crop: the mask's crop re-encoded by "
                        "the model (an extra small pass per mask; more accurate), or max+crop: both reads "
                        "summed, or zoom: max pooling on a pass over the mask's neighbourhood, magnified (an extra "
                        "pass per mask; the best click labels), or zoom+crop (the best box labels)")
    p.add_argument("--tta", action="store_true",
                   help="also read the mirrored image (one extra backbone pass per image; per window with zoom) and, "
                        "with the crop poolings, each crop's mirror image: better labels (with --zoom: zoom --tta "
                        "labels clicks best, zoom+crop --tta boxes)")


def _unit_interval(text: str) -> float:
    """An argparse type: a number in [0, 1] (a threshold on IoUs / stability scores)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in 0..1, got {text!r}") from None
    if not 0 <= value <= 1:  # also rejects NaN
        raise argparse.ArgumentTypeError(f"expected a number in 0..1, got {text}")
    return value


def _prompt_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--point", action="append", metavar="X,Y[:L]",
                   help="point prompt in original-image pixels; label L = 1 foreground (default) or 0 background; "
                        "repeatable")
    p.add_argument("--box", action="append", metavar="X0,Y0,X1,Y1",
                   help="box prompt, XYXY original-image pixels (one per run: SAM decodes one box with the points)")
    p.add_argument("--zoom", action="store_true",
                   help="decode the prompts on a second backbone pass over the object's neighbourhood (3x the box's "
                        "longer side; clicks alone: the box of their first mask), magnified: better masks of small "
                        "objects (Predictor.predict(zoom=True))")


def add_task_commands(subparsers: Any) -> None:
    """Register ``classify``, ``segment``, ``semseg``, ``label``, ``everything`` and ``serve``."""
    fmt = argparse.RawDescriptionHelpFormatter
    labels_help = "comma-separated class names (default: the 12 scene-world shapes)"

    p = subparsers.add_parser("classify", help="zero-shot classification of whole images", formatter_class=fmt,
                              description="Zero-shot classification: probabilities over --labels per image.",
                              epilog=_TASK_EPILOG["classify"])
    _common(p, "classify")
    p.add_argument("--labels", help=labels_help)
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="test-time augmentation (default: the model's own setting; the shipped model has it)")
    p.set_defaults(func=_run_task)

    p = subparsers.add_parser("segment", help="SAM masks from point / box prompts (or --text)", formatter_class=fmt,
                              description="Masks from point / box prompts (the same prompts for every image), or "
                                          "instances of a phrase with --text.", epilog=_TASK_EPILOG["segment"])
    _common(p, "segment")
    _prompt_args(p)
    p.add_argument("--multimask", action="store_true", help="three candidate masks (the overlay shows the best)")
    p.add_argument("--text", help="segment the instances of this phrase instead of using point / box prompts")
    p.add_argument("--labels", help="with --text: distractor classes competing with the phrase")
    p.add_argument("--candidates", choices=["regions", "everything"], default="regions",
                   help="with --text: regions = one mask per coarse-map region of the phrase (one pass, default); "
                        "everything = every everything-mode mask named by its zoomed read and its crop (finds more "
                        "instances; slower)")
    p.set_defaults(func=_run_task)

    p = subparsers.add_parser("semseg", help="semantic segmentation into --labels + background", formatter_class=fmt,
                              description="Semantic segmentation: one RLE per class present + a colour overlay.",
                              epilog=_TASK_EPILOG["semseg"])
    _common(p, "semseg")
    p.add_argument("--labels", help=labels_help)
    p.add_argument("--refine", action="store_true",
                   help="compose with the SAM head: a mask per coarse-map point, each named by the CLIP head "
                        "(Predictor.semantic_segment(refine=True))")
    p.add_argument("--crop-margin", type=float, default=0.0, metavar="M",
                   help="with --refine: masks whose CLIP-head read is unsure (top-2 probability margin below M) "
                        "are also read from their crops by the merged model: better names, not one pass "
                        "(samclip eval's row (d+) uses 0.7)")
    p.set_defaults(func=_run_task)

    p = subparsers.add_parser("label", help="mask from a point / box prompt and its label", formatter_class=fmt,
                              description="Segment from point / box prompts and name the mask from --labels.",
                              epilog=_TASK_EPILOG["label"])
    _common(p, "label")
    _prompt_args(p)
    p.add_argument("--labels", help=labels_help)
    p.add_argument("--multimask", action=argparse.BooleanOptionalAction, default=True,
                   help="pick the best of three candidate masks (default) or use the single-mask output")
    _pooling_arg(p)
    p.set_defaults(func=_run_task)

    p = subparsers.add_parser("everything", help="every mask from a point grid (optionally labelled)",
                              formatter_class=fmt, epilog=_TASK_EPILOG["everything"],
                              description="Everything mode: masks from a grid of point prompts, best first.")
    _common(p, "everything")
    p.add_argument("--labels", help="comma-separated vocabulary to label every mask (default: no labels)")
    p.add_argument("--points-per-side", type=int, default=16, help="grid points per side (default 16)")
    p.add_argument("--pred-iou-thresh", type=_unit_interval, default=0.7,
                   help="keep masks above this predicted IoU (0..1)")
    p.add_argument("--stability-thresh", type=_unit_interval, default=0.8,
                   help="keep masks at least this stable (0..1)")
    p.add_argument("--min-area", type=int, default=0, help="drop masks smaller than this (pixels)")
    p.add_argument("--max-masks", type=int, default=100, help="at most this many masks (<= 255)")
    p.add_argument("--crop-layers", type=int, default=0, metavar="N",
                   help="segment-anything's crop layers: layer i re-encodes 4**i overlapping crops (one backbone "
                        "pass each) for smaller objects (0..4; default 0: the one cached pass)")
    _pooling_arg(p)
    p.set_defaults(func=_run_task)

    from .serve import DEFAULT_MAX_PIXELS

    p = subparsers.add_parser("serve", help="HTTP service + web page (FastAPI / uvicorn)", formatter_class=fmt,
                              description="Serve every task over HTTP: upload once (POST /images), then prompt "
                                          "the cached image; a web page at /.", epilog=_TASK_EPILOG["serve"])
    p.add_argument("--model", default="tiny-synthetic", help="merged model name or folder (default: tiny-synthetic)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1, loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload (MB; 413 above; default 20)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"largest image in pixels, checked before decoding (413 above; default {DEFAULT_MAX_PIXELS})")
    p.add_argument("--max-prompts", type=int, default=64, help="points + box, or labels, per request (default 64)")
    p.add_argument("--cache-size", type=int, default=16, help="images kept in the LRU cache (default 16)")
    p.add_argument("--cache-max-mb", type=float, default=4096.0,
                   help="memory of the cached images' states, MB (the LRU drops the oldest above it; default 4096)")
    p.add_argument("--max-work-mb", type=float, default=2048.0,
                   help="memory a task's full-size work may take, MB: refined semseg's per-class masks and scores "
                        "(413 above), everything's masks (fewer masks above; default 2048)")
    p.add_argument("--timeout", type=float, default=60.0, help="request timeout in seconds (504; default 60)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--onnx", metavar="DIR", default=None,
                   help="run the image and prompt graphs of this ONNX export of --model (samclip export onnx) "
                        "with onnxruntime")
    p.add_argument("--api-key-file", metavar="PATH", default=None,
                   help="require this key (the file's first line; default: $SAMCLIP_API_KEY, none when unset) as "
                        "'Authorization: Bearer <key>' or 'X-API-Key' on every request but the page, /health and "
                        "the API spec")
    _device_args(p)
    p.set_defaults(func=_run_serve)


__all__ = [
    "TaskInputError", "add_task_commands", "check_out_dir", "expand_inputs", "output_pairs", "output_stems",
    "parse_box", "parse_point", "resolve_device", "write_pair_atomic",
]
