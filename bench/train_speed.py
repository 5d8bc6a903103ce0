"""Training throughput of the default base U-Net on this machine, for the speed-ups that keep
the model standard (memory format, threads, torch.compile). Prints JSON.

    python bench/train_speed.py [--config configs/base-openmoji32.json] [--compile]

Pause any background training first (kill -STOP PID; kill -CONT PID after), or the numbers
measure the contention, not the variants.
"""

import argparse
import json
import time

import torch

from hifiedit.runtime import machine_description
from hifiedit.train.base import BaseTrainConfig, build_unet, diffusion_loss
from hifiedit.config import load_config


def measure(config, threads, layout="nchw", compile_=False, steps=4, warmup=2):
    """img/s of full training steps. layout: "nchw" (contiguous), "channels_last" (model and
    input), or "nhwc_view" (an NCHW model fed a permuted H×W×C array)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    unet = build_unet(config).train()
    b, s = config.batch_size, config.image_size
    x0 = torch.rand(b, 3, s, s) * 2 - 1
    if layout == "channels_last":
        unet = unet.to(memory_format=torch.channels_last)
        x0 = x0.contiguous(memory_format=torch.channels_last)
    elif layout == "nhwc_view":
        x0 = (torch.rand(b, s, s, 3) * 2 - 1).permute(0, 3, 1, 2)
    model = torch.compile(unet) if compile_ else unet
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    ac = torch.linspace(0.9999, 0.0001, 1000)
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        t = torch.randint(0, 1000, (b,))
        loss = diffusion_loss(model, x0, t, torch.randn(x0.shape), ac, 5.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return round(b * steps / (time.perf_counter() - start), 1)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="configs/base-openmoji32.json")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (slow start)")
    args = p.parse_args()
    config = load_config(BaseTrainConfig, args.config)
    variants = {
        "nchw_2threads": dict(threads=2),
        "nchw_1thread": dict(threads=1),
        "channels_last_2threads": dict(threads=2, layout="channels_last"),
        "nhwc_view_2threads": dict(threads=2, layout="nhwc_view"),
    }
    if args.compile:
        variants["compile_2threads"] = dict(threads=2, compile_=True)
    results = {name: measure(config, **kw) for name, kw in variants.items()}
    print(json.dumps({"img_per_s": results, "batch_size": config.batch_size,
                      "n_params": sum(p.numel() for p in build_unet(config).parameters()),
                      "machine": machine_description()}, indent=1))


if __name__ == "__main__":
    main()
