"""Command line: ``samclip <command> ...``.

Examples:
  samclip demo                                   # the embedded-default merge + evaluation report
  samclip merge --config configs/tiny-synthetic.toml --set stage2.steps=200
  torchrun --nproc_per_node 2 -m samclip.cli merge --config configs/tiny-synthetic.toml
  samclip merge --config configs/tiny-synthetic.toml --resume   # continue a killed run
  samclip eval --model runs/demo/merge/model    # JSON + markdown report with baselines and overlays
  samclip eval --model M --benchmark classify --data imagenet/val --labels-file names.txt
  samclip teachers eval                         # the shipped teachers on fresh seeds (JSON)
  samclip teachers grid --out grids/            # PNG grids: samples, teacher predictions
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .allocator import tune_malloc
from .cli_download import add_download_command
from .cli_export import add_export_command
from .cli_info import add_info_command
from .cli_tasks import add_task_commands, check_out_dir, resolve_device
from .errors import UserError
from .merge.config import CONFIG_DIR


def _resolve_config(path: str | None) -> Path | None:
    if path is None:
        return None
    p = Path(path)
    if p.is_dir():
        raise UserError(f"config {path!r} is a folder; expected a TOML file (e.g. configs/tiny-synthetic.toml)")
    if p.exists():
        return p
    packaged = CONFIG_DIR / (path if path.endswith(".toml") else f"{path}.toml")
    if packaged.exists():
        return packaged
    raise UserError(f"config {path!r} not found (neither a file nor a packaged config in {CONFIG_DIR})")


def _cmd_merge(args: argparse.Namespace) -> int:
    from .merge.config import load_config
    from .merge.run import run_merge

    try:
        cfg = load_config(_resolve_config(args.config), args.set or [])
    except ValueError as e:
        raise UserError(str(e)) from None
    check_out_dir(Path(cfg.out), "config out")
    summary = run_merge(cfg, resume=args.resume, evaluate=not args.no_eval)
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))
    print(f"merged model: {Path(cfg.out) / 'model'}")
    return 0


def _cmd_teachers(args: argparse.Namespace) -> int:
    from .teachers.report import teacher_grids, teachers_eval

    if args.action == "eval":
        print(json.dumps(teachers_eval(args.sam, args.clip, quick=args.quick), indent=2))
    else:
        for p in teacher_grids(args.sam, check_out_dir(Path(args.out))):
            print(p)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .eval import harness
    from .factory import load_clip, load_model, load_sam
    from .precision import ENV_OVERRIDE, describe_machine

    if args.dtype != "auto":  # every model call of the harness resolves "auto" through this
        os.environ[ENV_OVERRIDE] = "true" if args.dtype == "bf16" else "false"
    _check_eval_options(args)
    device = resolve_device(args.device)
    if device != "cpu" and args.benchmark == "scenes":
        raise UserError("--benchmark scenes runs on the CPU (the scene world's models are tiny); --device is for "
                        "voc, coco, classify and semseg")
    out = check_out_dir(Path(args.out))
    model = load_model(args.model, device=device)
    if args.benchmark == "scenes":
        result = harness.scenes_benchmark(model, load_sam(args.sam_teacher),
                                          load_clip(args.clip_teacher or "tiny-synthetic"), out,
                                          quick=args.quick, split=args.split, semseg_images=args.semseg_images)
    elif args.benchmark == "classify":
        if not args.data:
            raise UserError("--benchmark classify needs --data (a folder with one subfolder of images per class)")
        from .eval.classification import classification_benchmark

        teacher = load_clip(args.clip_teacher, device=device) if args.clip_teacher else None
        result = classification_benchmark(model, args.data, _names(args.labels, args.labels_file, "--labels"),
                                          _names(None, args.templates_file, "--templates-file"), teacher,
                                          limit=args.limit)
    elif args.benchmark == "semseg":
        names = _names(args.labels, args.labels_file, "--labels")
        if not args.data or not args.annotations or not names:
            raise UserError("--benchmark semseg needs --data (images folder), --annotations (label-map PNGs) and "
                            "--labels or --labels-file (class names in id order)")
        from .eval.semseg_real import folder_semseg_benchmark

        result = folder_semseg_benchmark(model, args.data, args.annotations, names, zero=args.zero,
                                         ignore_index=args.ignore_index, refine=not args.coarse, limit=args.limit)
    elif args.benchmark == "voc":
        if not args.data or not args.labels:
            raise UserError("--benchmark voc needs --data (VOC folder) and --labels (comma-separated, id order)")
        labels = [s.strip() for s in args.labels.split(",") if s.strip()]
        result = harness.voc_benchmark(model, args.data, labels, limit=args.limit)
    else:
        if not args.data or not args.annotations:
            raise UserError("--benchmark coco needs --data (images folder) and --annotations (instances json)")
        result = harness.coco_box_prompt_ap(model, args.data, args.annotations, limit=args.limit, zoom=args.zoom,
                                            detections=args.detections, min_score=args.min_score)
    result["machine"] = describe_machine(next(model.parameters()).device)
    result["precision"] = "bf16" if result["machine"]["bf16_auto"] else "fp32"
    paths = harness.write_reports(result, out)
    print(json.dumps(result, indent=2))
    print(f"reports: {paths[0]} {paths[1]}")
    return 0


#: the eval options each benchmark reads (beside --model, --benchmark, --out, --dtype, --device)
_EVAL_OPTIONS = {
    "scenes": {"sam_teacher", "clip_teacher", "quick", "semseg_images", "split"},
    "classify": {"data", "labels", "labels_file", "templates_file", "clip_teacher", "limit"},
    "semseg": {"data", "annotations", "labels", "labels_file", "zero", "ignore_index", "coarse", "limit"},
    "voc": {"data", "labels", "limit"},
    "coco": {"data", "annotations", "detections", "min_score", "zoom", "limit"},
}


def _check_eval_options(args: argparse.Namespace) -> None:
    """An option the chosen benchmark does not read is an error, not silently ignored."""
    used = _EVAL_OPTIONS[args.benchmark]
    unused = [k for k in sorted(set().union(*_EVAL_OPTIONS.values()) - used)
              if getattr(args, k) != args.option_defaults[k]]
    if unused:
        flags = ", ".join("--" + k.replace("_", "-") for k in unused)
        raise UserError(f"--benchmark {args.benchmark} does not use {flags}")


def _names(inline: str | None, path: str | None, flag: str) -> list[str] | None:
    """Comma-separated names, or the non-empty lines of a file; None when neither is given."""
    if inline and path:
        raise UserError(f"give {flag} or its file, not both")
    if path:
        from .eval.classification import read_names

        try:
            names = read_names(path)
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"{path}: cannot read it ({e})") from None
        if not names:
            raise UserError(f"{path}: no names in it (one per line) for {flag}")
        return names
    return [s.strip() for s in inline.split(",") if s.strip()] if inline else None


def _positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(check_out_dir(Path(args.out)), quick=args.quick, fresh=args.fresh)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="samclip", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the embedded-default merge and write the report")
    demo.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    demo.add_argument("--quick", action="store_true", help="a few steps only (smoke test)")
    demo.add_argument("--fresh", action="store_true", help="discard a previous demo run in --out")
    demo.set_defaults(func=_cmd_demo)

    merge = sub.add_parser("merge", help="merge a SAM and a CLIP into one model (SAM-CLIP recipe)")
    merge.add_argument("--config", default="tiny-synthetic", help="TOML run config (file or packaged name)")
    merge.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value")
    merge.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in <out>")
    merge.add_argument("--no-eval", action="store_true", help="skip the periodic validation")
    merge.set_defaults(func=_cmd_merge)

    ev = sub.add_parser("eval", help="evaluate a merged model (scene world, VOC-style or COCO-format data)")
    ev.add_argument("--model", default="tiny-synthetic", help="merged model name or folder")
    ev.add_argument("--benchmark", choices=["scenes", "voc", "coco", "classify", "semseg"], default="scenes")
    ev.add_argument("--data", help="VOC root, or COCO images folder")
    ev.add_argument("--annotations", help="COCO instances json (coco benchmark); label-map folder (semseg)")
    ev.add_argument("--detections", metavar="JSON",
                    help="coco: prompt with a detector's boxes (a COCO results file) instead of the ground-truth "
                         "boxes, as SAM / SAM-CLIP's instance segmentation tables do (ViTDet boxes)")
    ev.add_argument("--min-score", type=float, default=0.0, help="coco --detections: keep boxes scoring at least this")
    ev.add_argument("--zero", choices=["background", "class", "ignore"], default="background",
                    help="semseg: what id 0 means in the label maps: the background class (VOC), the first label "
                         "(Cityscapes trainIds, COCO-Stuff), or unlabelled (ADE20K)")
    ev.add_argument("--ignore-index", type=int, default=255, help="semseg: label id never scored (default 255)")
    ev.add_argument("--coarse", action="store_true", help="semseg: the CLIP head's map alone (no SAM refinement)")
    ev.add_argument("--labels", help="class names, comma-separated: voc in id order after background; semseg in id "
                                     "order; classify in sorted class-folder order (default: the folder names)")
    ev.add_argument("--labels-file", help="classify / semseg: class names, one per line (as --labels)")
    ev.add_argument("--templates-file",
                    help="classify: prompt templates, one per line, each with {} for the class (default: "
                         "'a photo of a {}.')")
    ev.add_argument("--sam-teacher", default="tiny-synthetic", help="baseline SAM (scenes benchmark)")
    ev.add_argument("--clip-teacher", default=None,
                    help="baseline CLIP (scenes benchmark, default tiny-synthetic; classify: measured beside "
                         "the model)")
    ev.add_argument("--limit", type=_positive_int, default=None, help="evaluate at most this many images (>= 1)")
    ev.add_argument("--zoom", action="store_true",
                    help="coco benchmark: each box decoded on a second pass over its neighbourhood "
                         "(Predictor.predict(zoom=True); the scenes benchmark always reports both)")
    ev.add_argument("--quick", action="store_true", help="fewer images (smoke test)")
    ev.add_argument("--semseg-images", type=int, default=None,
                    help="scenes of the semantic segmentation comparison (default 100; more: less noise, "
                         "about 1 s each on 2 cores)")
    ev.add_argument("--split", choices=["test", "val"], default="test",
                    help="scenes benchmark seeds: test (report numbers) or val (choose settings; default test)")
    ev.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto",
                    help="bf16 autocast for every model (auto: where the hardware multiplies bf16 natively)")
    ev.add_argument("--device", default="cpu",
                    help="voc / coco / classify / semseg: cpu (default) or cuda[:N] (error when CUDA is unavailable)")
    ev.add_argument("--out", default="runs/eval")
    options = set().union(*_EVAL_OPTIONS.values())
    ev.set_defaults(func=_cmd_eval, option_defaults={k: ev.get_default(k) for k in options})

    teachers = sub.add_parser("teachers", help="evaluate or visualise the embedded-default teachers")
    teachers.add_argument("action", choices=["eval", "grid"])
    teachers.add_argument("--sam", default="tiny-synthetic")
    teachers.add_argument("--clip", default="tiny-synthetic")
    teachers.add_argument("--out", default="runs/teacher_grids")
    teachers.add_argument("--quick", action="store_true", help="fewer evaluation images")
    teachers.set_defaults(func=_cmd_teachers)
    add_export_command(sub)
    add_download_command(sub)
    add_info_command(sub)
    add_task_commands(sub)  # classify, segment, semseg, label, everything, serve
    return parser


def main(argv: list[str] | None = None) -> int:
    tune_malloc()  # large CPU buffers stay in the heap (samclip.allocator)
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"samclip: error: {e}", file=sys.stderr)
        return 2
    except (OSError, KeyError, ValueError) as e:  # bad paths, names, configs, checkpoints; unwritable outputs
        if isinstance(e, KeyError) and e.args:
            msg = e.args[0]
        elif isinstance(e, OSError) and e.strerror and e.filename is not None:
            msg = f"{e.filename}: {e.strerror}"
        else:
            msg = e
        print(f"samclip: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
