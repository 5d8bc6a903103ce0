"""Rectifier training speed on the default base model, for planning the CPU budget.

Measures, with the default RectifierTrainConfig (batch 16, roll-outs k ~ U{0…4}, one loss step):
  - iterations/s of the real training loop (``train_rectifier``). The cost of an iteration does
    not depend on S or on how many images are cached, so the run uses only the small grids
    (6, 10, 20) and 8 images to keep the one-off inversions out of the measurement;
  - the one-off trajectory-cache build: ms per image per U-Net pass at batch 64, times the
    passes that inverting one image over the default grids costs (their sum, 176 for
    6, 10, 20, 40, 100), and for the grids plus 200;
  - one held-out evaluation (n_val_images val images, rectified chains at eval_steps).

    scripts/one-thread.sh .venv/bin/python bench/rectifier_train_speed.py [--steps 30] [--json FILE]
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import torch

from hifiedit.diffusion.backbone import load_backbone
from hifiedit.models import portable_name
from hifiedit.rectifier import Rectifier
from hifiedit.runtime import machine_description, write_text_atomic
from hifiedit.train.rectifier import RectifierTrainConfig, heldout_psnr, train_rectifier
from hifiedit.train.trajectories import TrajectoryCache


def inversion_ms_per_image_pass(bb, batch=64, passes=4):
    x = torch.randn(batch, 3, bb.sample_size, bb.sample_size)
    t = torch.full((batch,), 200)
    with torch.no_grad():
        bb.eps(x, t)
        start = time.perf_counter()
        for _ in range(passes):
            bb.eps(x, t)
    return 1000 * (time.perf_counter() - start) / passes / batch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--json")
    args = ap.parse_args()
    default = RectifierTrainConfig()
    bb = load_backbone("default")
    from hifiedit.data.openmoji import load_openmoji

    data = load_openmoji(bb.sample_size)
    train, val = data.tensor("train")[:8], data.tensor("val")[: default.n_val_images]
    config = RectifierTrainConfig(step_grids=(6, 10, 20), n_images=8, max_steps=args.steps,
                                  log_every=args.steps, eval_every=10**6, checkpoint_every=10**6)
    with tempfile.TemporaryDirectory() as tmp:
        summary = train_rectifier(config, Path(tmp) / "run", backbone=bb, train_images=train,
                                  val_images=None, cache_folder=Path(tmp) / "cache")
        rows = list(csv.DictReader((Path(tmp) / "run" / "log.csv").open()))
        cache = TrajectoryCache(Path(tmp) / "cache", bb, default.t0, max_points=default.cache_points)
        rect = Rectifier.for_unet(bb.unet, default.rectifier_config())
        start = time.perf_counter()
        heldout_psnr(bb, rect, val, cache, default.eval_steps)
        eval_s = time.perf_counter() - start  # includes the val inversions (cached after once)
    per_pass = inversion_ms_per_image_pass(bb)
    passes = sum(default.step_grids)
    out = {
        "machine": machine_description(),
        "note": "run through scripts/one-thread.sh (OMP_NUM_THREADS=1) beside the background "
                "training jobs: one contended core",
        "base": portable_name(bb.path),
        "rectifier_params": summary["n_params"],
        "batch_size": default.batch_size,
        "iterations": summary["step"],
        "it_per_s": round(summary["step"] / summary["wall_seconds"], 3),
        "s_per_it": round(summary["wall_seconds"] / summary["step"], 2),
        "it_per_s_logged": float(rows[-1]["it_per_s"]),
        "cache_build_s_per_image": round(per_pass * passes / 1000, 2),
        "cache_build_min_default_n_images": round(per_pass * passes * default.n_images / 60000, 1),
        "cache_build_min_default_n_images_with_200": round(
            per_pass * (passes + 200) * default.n_images / 60000, 1),
        "cache_bytes_per_image": 4 * 3 * bb.sample_size ** 2 * sum(
            min(s, default.cache_points) for s in default.step_grids),
        "heldout_eval_s": round(eval_s, 1),
    }
    print(json.dumps(out, indent=1))
    if args.json:
        write_text_atomic(Path(args.json), json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
