"""Does a rectifier use the original image it is conditioned on?

R_φ(x0, P_t, t) is given the original image x0 beside each step's estimate P_t (DESIGN §1). This
reconstructs every image of a split (DDIM inversion with θ, then S rectified steps) with R
conditioned on the image itself, on another image of the split (the split shifted by half its
length, so not a skin-tone sibling), and on a grey image (zeros), beside plain DDIM. If the
three rectified PSNRs agree, R ignores x0 and acts as a correction of the few-step sampler
computed from P_t and t alone; it then cannot tell an edit from a reconstruction error either.

    .venv/bin/python bench/rectifier_conditioning.py [--rectifier default] [--split val] \
        [--steps 6,40] [--json bench/rectifier_conditioning.json]
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
from hifiedit.rectifier import load_rectifier
from hifiedit.rectifier import rectified_eps_fn
from hifiedit.runtime import machine_description, write_text_atomic


@torch.no_grad()
def reconstructions(bb, rect, x0: torch.Tensor, steps: int, t0: int) -> dict[str, torch.Tensor]:
    grid, ac = ddim_timesteps(t0, steps), bb.alphas_cumprod
    x_t0 = invert(bb.eps, x0, grid, ac).final
    conditions = {"own image": x0, "another image": x0.roll(len(x0) // 2, 0),
                  "grey image": torch.zeros_like(x0)}
    out = {"plain DDIM": generate(bb.eps, x_t0, grid, ac).final}
    for name, cond in conditions.items():
        out[f"R given {name}"] = generate(rectified_eps_fn(bb, rect, cond, timesteps=grid),
                                          x_t0, grid, ac).final
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rectifier", default="default", help="a folder or shipped name")
    ap.add_argument("--base", default="default")
    ap.add_argument("--split", default="val")
    ap.add_argument("--steps", default="6,40")
    ap.add_argument("--t0", type=int, default=400)
    ap.add_argument("--json")
    args = ap.parse_args()
    bb = load_backbone(args.base)
    rect, rect_path = load_rectifier(args.rectifier, bb, missing="no rectifier for this model")
    x0 = load_openmoji(bb.sample_size).tensor(args.split)
    rows = []
    for steps in [int(s) for s in args.steps.split(",")]:
        out = reconstructions(bb, rect, x0, steps, args.t0)
        own = out["R given own image"]
        for name, rec in out.items():
            rows.append({"steps": steps, "output": name,
                         "psnr": psnr(to_unit(rec), to_unit(x0)).mean().item(),
                         "mean_abs_diff_to_own": (to_unit(rec) - to_unit(own)).abs().mean().item()})
            print(json.dumps(rows[-1]), flush=True)
    report = {"purpose": __doc__.splitlines()[0], "rectifier": rect_path, "split": args.split,
              "n_images": len(x0), "t0": args.t0, "machine": machine_description(), "rows": rows}
    if args.json:
        write_text_atomic(Path(args.json), json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
