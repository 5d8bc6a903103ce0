"""Per-sample modulation on CPU: grouped convolution vs torch.func (functional_call + vmap),
and the whole rectified step vs a plain DDIM step, for the default-sized U-Net
(configs/base-openmoji32.json, random weights: speed does not depend on them), 32×32.

    scripts/one-thread.sh .venv/bin/python bench/rectifier_modulation.py [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import torch

from hifiedit.diffusion.backbone import Backbone
from hifiedit.diffusion.schedule import linear_alphas_cumprod
from hifiedit.rectifier import Rectifier, modulated_forward, rectified_eps
from hifiedit.runtime import machine_description
from hifiedit.train.base import BaseTrainConfig, build_unet
from hifiedit.config import load_config


def median_ms(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return round(1000 * min(times), 1)  # min: robust to a neighbour waking up


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    warnings.filterwarnings("ignore", message=".*batching rule.*")  # vmap's SDPA fallback
    cfg = load_config(BaseTrainConfig, "configs/base-openmoji32.json")
    unet = build_unet(cfg).eval().requires_grad_(False)
    bb = Backbone(unet=unet, alphas_cumprod=linear_alphas_cumprod(), prediction_type="epsilon",
                  name="bench", path=None)
    rect = Rectifier.for_unet(unet).eval()
    out = {"machine": machine_description(), "unet_params": sum(p.numel() for p in unet.parameters()),
           "rectifier_params": sum(p.numel() for p in rect.parameters()), "ms": {}}
    for b in (1, 16):
        g = torch.Generator().manual_seed(0)
        x = torch.randn((b, 3, 32, 32), generator=g)
        t = torch.full((b,), 300)
        deltas = {k: 0.05 * torch.randn(v.shape, generator=g) for k, v in rect(x, x, t).items()}
        with torch.no_grad():
            grouped = modulated_forward(unet, x, t, deltas, "grouped")
            vmapped = modulated_forward(unet, x, t, deltas, "vmap")
            assert torch.allclose(grouped, vmapped, atol=1e-4), (grouped - vmapped).abs().max()
            code = rect.encode_x0(x)
            row = {
                "plain_forward": median_ms(lambda: unet(x, t), args.repeats),
                "modulated_vmap": median_ms(lambda: modulated_forward(unet, x, t, deltas, "vmap"), args.repeats),
                "modulated_grouped": median_ms(lambda: modulated_forward(unet, x, t, deltas, "grouped"), args.repeats),
                "rectifier": median_ms(lambda: rect(None, x, t, x0_code=code), args.repeats),
                "plain_eps": median_ms(lambda: bb.eps(x, t), args.repeats),
                "rectified_eps_grouped": median_ms(lambda: rectified_eps(bb, rect, x, t, code, step=torch.tensor(20)), args.repeats),
                "rectified_eps_vmap": median_ms(lambda: rectified_eps(bb, rect, x, t, code, method="vmap", step=torch.tensor(20)), args.repeats),
            }
        row["ratio_grouped"] = round(row["rectified_eps_grouped"] / row["plain_eps"], 2)
        row["ratio_vmap"] = round(row["rectified_eps_vmap"] / row["plain_eps"], 2)
        out["ms"][str(b)] = row
        print(b, row, flush=True)
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
