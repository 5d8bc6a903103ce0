"""Seconds per iteration of edit training: score-matching vs DiffusionCLIP's Markovian chain
(the paper's efficiency claim: one U-Net pass per iteration instead of a chain of S_train passes;
the target is score matching at ≤ 1/3 of Markovian's s/iter at S_train = 6, same batch).

An iteration is one batch: one edited pass per sample for score matching, one chain of
S_train moves for every Markovian variant (the per-move variant makes S_train optimizer
updates in it, the others one); ``optimizer_steps`` says how many each made.

Runs the real trainer (``train_edit``) for a few iterations per method on the default base
model and the default LoRA ψ, same batch, S_train = 6, and reports the trainer's own
``s_per_iter`` (median, first iteration excluded). The guiding CLIP has the architecture of
configs/clip-openmoji32.json; when no trained one is shipped it is randomly initialised; the
rectifier (when used) is the shipped default, or a freshly initialised one when none is
shipped: the time of an iteration does not depend on the weights. The editing interval is the
shipped edits' (t_edit 133) unless ``--t-edit`` says otherwise. Inverting the few training
images (S_for = 40) is cached before timing.

    scripts/one-thread.sh .venv/bin/python bench/edit_train_speed.py [--iters 6] [--t-edit 133] \
        [--json FILE [--force]]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from hifiedit.diffusion.backbone import load_backbone
from hifiedit.models import is_shipped, portable_name
from hifiedit.rectifier import resolve_rectifier_path
from hifiedit.rectifier import Rectifier
from hifiedit.runtime import machine_description, write_text_atomic
from hifiedit.train.edit import EditTrainConfig, default_training_images, train_edit

ROOT = Path(__file__).resolve().parent.parent
# (label, method, Markovian variant, rectified)
RUNS = [("score-matching", "score-matching", "full", False),
        ("score-matching + rectifier", "score-matching", "full", True),
        ("markovian full", "markovian", "full", False),
        ("markovian efficient", "markovian", "efficient", False),
        ("markovian per-move", "markovian", "per-move", False),
        ("markovian full + rectifier", "markovian", "full", True)]


def guiding_clip(folder: Path) -> tuple[str, str]:
    """(path, what it is): the shipped default CLIP, or a random one of its architecture."""
    if is_shipped("default", "clip"):
        return "default", "shipped default CLIP"
    from hifiedit.train.clip import ClipTrainConfig, build_clip, export_clip, train_tokenizer
    from hifiedit.config import load_config

    config = load_config(ClipTrainConfig, ROOT / "configs" / "clip-openmoji32.json")
    texts = ["light skin tone", "dark skin tone", "thumbs up", "a man", "a woman"] * 4
    tokenizer = train_tokenizer(texts, vocab_size=config.vocab_size, max_length=config.max_text_length)
    torch.manual_seed(0)
    export_clip(build_clip(config, tokenizer), tokenizer, config, folder, step=0)
    return str(folder), "random-init CLIP, architecture of configs/clip-openmoji32.json"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--iters", type=int, default=6)
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--t-edit", type=int, default=133)
    p.add_argument("--json", type=Path)
    p.add_argument("--force", action="store_true", help="overwrite an existing --json")
    args = p.parse_args()
    if args.json and args.json.exists() and not args.force:
        raise SystemExit(f"{args.json} exists; pass --force to overwrite it.")

    bb = load_backbone("default")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clip, clip_what = guiding_clip(tmp / "clip")
        rect = resolve_rectifier_path("default")
        rect_what = portable_name(rect) if rect else "random-init rectifier"
        if rect is None:
            rect = tmp / "rect"
            Rectifier.for_unet(bb.unet).save_pretrained(rect)
        base = EditTrainConfig(src="light skin tone", tgt="dark skin tone", clip=clip,
                               images=args.images, iters=args.iters, batch_size=args.batch_size,
                               s_train=6, t_edit=args.t_edit, log_every=1,
                               checkpoint_every=10_000)
        images = default_training_images(base.src, bb.sample_size)[: args.images]
        rows, updates = {}, {}
        for label, method, variant, rectified in RUNS:
            config = EditTrainConfig(**{**base.__dict__, "method": method,
                                        "markovian_variant": variant,
                                        "rectifier": str(rect) if rectified else "none"})
            summary = train_edit(config, tmp / label.replace(" ", "_"), backbone=bb,
                                 train_images=images, cache_folder=tmp / "cache", progress=False)
            rows[label] = summary["s_per_iter"]
            updates[label] = summary["optimizer_steps"]
            print(f"{label:30s} {summary['s_per_iter']:.3f} s/iter, "
                  f"{summary['optimizer_steps']} optimizer steps", flush=True)
    report = {"s_per_iter": rows, "optimizer_steps": updates, "batch_size": args.batch_size,
              "s_train": 6,
              "t_edit": args.t_edit, "iters": args.iters,
              "ratio_markovian_full_over_score_matching":
                  rows["markovian full"] / rows["score-matching"],
              "ratio_markovian_per_move_over_score_matching":
                  rows["markovian per-move"] / rows["score-matching"],
              "ratio_markovian_full_rect_over_score_matching_rect":
                  rows["markovian full + rectifier"] / rows["score-matching + rectifier"],
              "clip": clip_what,
              "rectifier": rect_what,
              "machine": machine_description()}
    print(json.dumps(report, indent=1))
    if args.json:
        write_text_atomic(args.json, json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
