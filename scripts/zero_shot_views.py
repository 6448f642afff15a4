"""Zero-shot shape top-1 of merged models with several classification view sets, on the val and test splits.

Each view set is a list of CLIP-head input sizes, each read unmirrored and mirrored; a model's embedding is
the normalised mean over the views (as ``SamClip.classify`` averages its ``classify_views``). The images are
the scene world's single-object sets (seeds training never used), rendered at the largest size asked for.

    .venv/bin/python scripts/zero_shot_views.py tiny-synthetic runs/merge-XXX/model --sets 112 128 112,128
"""

from __future__ import annotations

import argparse

import samclip
from samclip.eval.merge_report import single_object_eval_set, zero_shot_accuracy
from samclip.merge.run import merged_encoders


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="merged model names or folders")
    ap.add_argument("--sets", nargs="+", default=["112", "128", "112,128"],
                    help="view sets: comma-separated sizes, each also mirrored")
    ap.add_argument("--images", type=int, default=1000, help="single-object images per split")
    ap.add_argument("--splits", nargs="+", default=["val", "test"], choices=["val", "test"])
    args = ap.parse_args()
    sets = {s: [int(size) for size in s.split(",")] for s in args.sets}
    render = max(size for sizes in sets.values() for size in sizes)
    data = {split: single_object_eval_set(split, args.images, render) for split in args.splits}
    print("| model | " + " | ".join(f"{s} {split}" for s in sets for split in data) + " |")
    print("| --- " * (1 + len(sets) * len(data)) + "|")
    for name in args.models:
        model = samclip.load_model(name)
        cells = []
        for first, *more in sets.values():  # the views as the model's own classify_views() lists them
            views = model.config.replace(clip_size=first, tta_sizes=tuple(more), tta_flip=True).classify_views()
            enc_img, enc_txt = merged_encoders(model, first, views=views)
            for imgs, labels in data.values():
                cells.append(f"{zero_shot_accuracy(enc_img, enc_txt, imgs, labels)['top1']:.1f}")
        print(f"| {name} (clip_size {model.config.clip_size}) | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
