"""Time and memory of one U-Net pass at 256 px in a converted architecture (docs/own-model.md).

Builds a random-weight model in the exact architecture `hifiedit convert` writes for a preset
(weights do not change the cost of a pass), saves it as a diffusers folder in a temporary
directory, and runs `hifiedit bench --unet-pass` on it:

    OMP_NUM_THREADS=1 python bench/convert_fullsize.py --from ddim --preset celeba_hq \
        --json bench/convert_fullsize_celeba_hq.json
    python bench/convert_fullsize.py --sizes-only --json bench/convert_sizes.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch


def _rectifier_size(config: dict) -> dict:
    """What a default rectifier (DESIGN §1) for this U-Net holds, counted on the meta device."""
    from hifiedit.diffusion.convert import meta_unet
    from hifiedit.rectifier import Rectifier

    unet = meta_unet(config)
    with torch.device("meta"):
        rect = Rectifier.for_unet(unet)
    return {"parameters": sum(p.numel() for p in rect.parameters()),
            "modulated_layers": len(rect.branches)}


def main(argv=None) -> int:
    from diffusers import DDPMScheduler, UNet2DModel

    from hifiedit.diffusion.convert import PRESETS, scheduler_config, unet_config
    from hifiedit.errors import HifieditError
    from hifiedit.eval.bench import format_unet_pass, run_unet_pass_bench

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--from", dest="fmt", default="ddim", choices=sorted(PRESETS))
    p.add_argument("--preset", default="celeba_hq")
    p.add_argument("--batches", default="1", help="comma-separated batch sizes")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--sizes-only", action="store_true",
                   help="only count U-Net and rectifier parameters of every preset (meta device)")
    p.add_argument("--json", required=True)
    p.add_argument("--force", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.sizes_only:
        from hifiedit.diffusion.convert import meta_unet
        sizes = {f"{fmt}/{name}": {
            "unet_parameters": sum(t.numel() for t in meta_unet(unet_config(fmt, arch)).parameters()),
            "rectifier": _rectifier_size(unet_config(fmt, arch))}
            for fmt in PRESETS for name, arch in PRESETS[fmt].items()}
        sizes["command"] = "python bench/convert_fullsize.py " + " ".join(argv or sys.argv[1:])
        Path(args.json).write_text(json.dumps(sizes, indent=1) + "\n")
        print(json.dumps(sizes, indent=1))
        return 0
    try:
        if args.preset not in PRESETS[args.fmt]:
            raise HifieditError(f"unknown {args.fmt} preset {args.preset!r}")
        arch = PRESETS[args.fmt][args.preset]
        with tempfile.TemporaryDirectory() as tmp:
            torch.manual_seed(0)
            UNet2DModel(**unet_config(args.fmt, arch)).save_pretrained(Path(tmp) / "unet")
            DDPMScheduler(**scheduler_config(args.fmt, arch)).save_config(Path(tmp) / "scheduler")
            report = run_unet_pass_bench(tmp, batches=[int(b) for b in args.batches.split(",")],
                                         repeats=args.repeats, device=args.device,
                                         json_path=None, force=args.force)
        report["model"] = f"random weights, {args.fmt} preset {args.preset} as hifiedit convert writes it"
        report["rectifier_parameters"] = _rectifier_size(unet_config(args.fmt, arch))
        report["command"] = "python bench/convert_fullsize.py " + " ".join(argv or sys.argv[1:])
        out = Path(args.json)
        if out.exists() and not args.force:
            raise HifieditError(f"{out} exists; pass --force to overwrite it.")
        from hifiedit.runtime import write_text_atomic
        write_text_atomic(out, json.dumps(report, indent=1) + "\n")
    except HifieditError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_unet_pass(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
