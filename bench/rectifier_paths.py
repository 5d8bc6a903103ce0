"""Where does a rectified DDIM chain run? (the evidence behind ``start_states="ideal"``)

For val-split images, inverts to t0 with S steps (θ), then generates with plain DDIM and with
the rectifier, and reports per generation level the mean squared distance (images in [-1, 1])
of each chain's state from
  - the inversion trajectory at the same level, and
  - the *ideal* path √ᾱ x0 + √(1−ᾱ) n* (n* implied by the inverted x_t0), which a chain whose
    every estimate P_t is x0 follows exactly;
and the final reconstruction PSNR of both chains. A rectifier trained on points of the
inversion trajectory learns states its chain never visits when the two paths differ.

    scripts/one-thread.sh .venv/bin/python bench/rectifier_paths.py --rectifier DIR [--steps 20] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from hifiedit.data.openmoji import load_openmoji
from hifiedit.diffusion import ddim_timesteps, generate, invert
from hifiedit.diffusion.backbone import load_backbone
from hifiedit.eval.metrics import psnr, to_unit
from hifiedit.models import portable_name
from hifiedit.rectifier import Rectifier, rectified_eps_fn
from hifiedit.runtime import machine_description, write_text_atomic
from hifiedit.train.rectifier import ideal_states, implied_noise


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rectifier", required=True)
    ap.add_argument("--base", default="default")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--t0", type=int, default=400)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--json")
    args = ap.parse_args()

    bb = load_backbone(args.base)
    rect = Rectifier.from_pretrained(args.rectifier, bb.unet).eval()
    x0 = load_openmoji(bb.sample_size).tensor("val")[: args.images]
    grid = ddim_timesteps(args.t0, args.steps)
    ac = bb.alphas_cumprod
    with torch.no_grad():
        inv = invert(bb.eps, x0, grid, ac)
        noise = implied_noise(inv.final, x0, ac[grid[-1]])
        chains = {"ddim": generate(bb.eps, inv.final, grid, ac),
                  "rectified": generate(rectified_eps_fn(bb, rect, x0, timesteps=grid), inv.final, grid, ac)}
    levels = list(reversed(grid))[:-1]  # the clean level: final PSNR below instead
    rows = []
    for i, t in enumerate(levels):
        inv_state = inv.states[len(grid) - 1 - i]
        ideal = ideal_states(x0, noise, ac[torch.full((len(x0),), t)])
        row = {"t": t, "inversion_vs_ideal": (inv_state - ideal).square().mean().item()}
        for name, chain in chains.items():
            row[f"{name}_vs_inversion"] = (chain.states[i] - inv_state).square().mean().item()
            row[f"{name}_vs_ideal"] = (chain.states[i] - ideal).square().mean().item()
        rows.append(row)
    report = {"rectifier": portable_name(args.rectifier), "steps": args.steps, "t0": args.t0,
              "n_images": len(x0), "split": "val",
              "psnr": {n: psnr(to_unit(c.final), to_unit(x0)).mean().item() for n, c in chains.items()},
              "levels": rows, "machine": machine_description()}
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        write_text_atomic(Path(args.json), text + "\n")


if __name__ == "__main__":
    main()
