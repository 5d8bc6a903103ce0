"""Where does a rectifier help, image by image? (the mean PSNR of `eval recon` hides it)

For every image of a split, reconstructs with plain DDIM and with each given rectifier
(t0, S_for = S_gen = S) and reports per rectifier the mean and median PSNR gain over DDIM, the
share of images it makes worse, and the images it hurts most (by name). A rectifier that gains
a lot on most glyphs and loses several dB on whole families of unseen ones reads the same as a
modest one in the mean. With ``--split train --trained-on CONFIG`` (the rectifier's training
config) it reports the train images the rectifier was trained on and the same number of others
separately: does it generalise to unseen variants of glyphs it saw?

    .venv/bin/python bench/rectifier_per_image.py --rectifier DIR [--rectifier DIR2] \
        [--split val|test|train] [--trained-on configs/rectifier-openmoji32.json] [--steps 6] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from hifiedit.data.openmoji import load_openmoji
from hifiedit.diffusion.backbone import load_backbone
from hifiedit.eval.metrics import psnr, to_unit
from hifiedit.eval.recon import reconstruct
from hifiedit.models import portable_name
from hifiedit.rectifier import load_rectifier
from hifiedit.runtime import machine_description, write_text_atomic
from hifiedit.train.rectifier import RectifierTrainConfig, training_subset


def per_image_psnr(bb, images, steps, t0, rectifier=None, batch_size=64) -> list[float]:
    method = "ddim" if rectifier is None else "rectified"
    out = []
    for batch in images.split(batch_size):
        rec = reconstruct(bb, batch, method, steps, t0, rectifier=rectifier)
        out += psnr(to_unit(rec), to_unit(batch)).tolist()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rectifier", action="append", required=True, help="a folder or shipped name")
    ap.add_argument("--base", default="default")
    ap.add_argument("--split", default="val")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--t0", type=int, default=400)
    ap.add_argument("--worst", type=int, default=10, help="how many of the most hurt images to name")
    ap.add_argument("--trained-on", help="with --split train: the rectifier's training config JSON")
    ap.add_argument("--limit", type=int, default=128, help="with --trained-on: images per group")
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.trained_on and args.split != "train":
        ap.error("--trained-on compares train-split images: pass --split train.")

    bb = load_backbone(args.base)
    data = load_openmoji(bb.sample_size)
    names = [data.records[i].name for i in data.indices(args.split)]
    images = data.tensor(args.split)
    groups = {args.split: torch.arange(len(images))}
    if args.trained_on:
        config = RectifierTrainConfig(**json.loads(Path(args.trained_on).read_text()))
        seen = training_subset(len(images), config)
        unseen = torch.ones(len(images), dtype=torch.bool)
        unseen[seen] = False
        groups = {"train, trained on": seen[: args.limit],
                  "train, not trained on": unseen.nonzero().flatten()[: args.limit]}
    rectifiers = {portable_name(name): load_rectifier(name, bb, missing=f"no rectifier {name!r} for this model")[0]
                  for name in args.rectifier}
    report = {"base": portable_name(args.base), "split": args.split, "steps": args.steps, "t0": args.t0,
              "machine": machine_description(), "groups": []}
    for group, where in groups.items():
        report["groups"].append(compare(bb, rectifiers, images[where], [names[i] for i in where],
                                        group, args))
    if args.json:
        write_text_atomic(Path(args.json), json.dumps(report, indent=1))


def compare(bb, rectifiers: dict, images, names, group: str, args) -> dict:
    ddim = per_image_psnr(bb, images, args.steps, args.t0)
    report = {"group": group, "n_images": len(images), "ddim_psnr": statistics.mean(ddim),
              "rectifiers": []}
    for name, rect in rectifiers.items():
        gains = [r - d for r, d in zip(per_image_psnr(bb, images, args.steps, args.t0, rect), ddim)]
        worst = sorted(range(len(gains)), key=gains.__getitem__)[: args.worst]
        row = {"rectifier": name, "mean_gain_db": statistics.mean(gains),
               "median_gain_db": statistics.median(gains),
               "share_worse": sum(g < 0 for g in gains) / len(gains),
               "worst": [{"name": names[i], "gain_db": gains[i], "ddim_psnr": ddim[i]} for i in worst]}
        report["rectifiers"].append(row)
        print(f"{name}: gain mean {row['mean_gain_db']:+.2f} dB, median {row['median_gain_db']:+.2f}, "
              f"worse on {row['share_worse']:.0%} of {len(gains)} images ({group}); worst: "
              + ", ".join(f"{w['name']} ({w['gain_db']:+.1f})" for w in row["worst"][:5]))
    return report


if __name__ == "__main__":
    main()
