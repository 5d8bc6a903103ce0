"""The `hifiedit` command. Thin: parse arguments, call a library function, print the result.

Every failure is a HifieditError turned into one clear line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hifiedit.errors import HifieditError


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


# ------------------------------------------------------------------ subcommands


def cmd_data_openmoji(args) -> None:
    from hifiedit.data.openmoji import write_openmoji_folder

    n = write_openmoji_folder(Path(args.out), size=args.size, force=args.force)
    print(f"wrote {n} OpenMoji images ({args.size}px), manifest.jsonl, split.json and "
          f"pairs.jsonl to {args.out}")


def cmd_train_base(args) -> None:
    from hifiedit.train.base import BaseTrainConfig, train_base
    from hifiedit.train.config import config_from_dict, load_config

    overrides = {"max_steps": args.max_steps, "threads": args.threads}
    if args.resume and args.config is None:
        # Resuming without a config file continues the run exactly as it was configured.
        from hifiedit.train.checkpoint import load_checkpoint

        _, state = load_checkpoint(Path(args.out) / "checkpoint")
        values = {**state["config"], **{k: v for k, v in overrides.items() if v is not None}}
        config = config_from_dict(BaseTrainConfig, values)
    else:
        config = load_config(BaseTrainConfig, args.config, overrides)
    summary = train_base(config, Path(args.out), resume=args.resume, max_minutes=args.max_minutes)
    print(json.dumps(summary))


def cmd_release_base(args) -> None:
    from hifiedit.train.release import release_base_model

    dest = release_base_model(Path(args.run), Path(args.to),
                              Path(args.eval_json) if args.eval_json else None, force=args.force)
    print(f"released {args.run} to {dest} (see {dest / 'README.md'})")


def cmd_eval_recon(args) -> None:
    from hifiedit.eval.recon import ReconConfig, run_recon_eval

    config = ReconConfig(
        model=args.model, split=args.split, steps=tuple(args.steps), t0=args.t0,
        s_for=args.s_for, limit=args.limit, seed=args.seed, methods=tuple(args.methods),
    )
    report = run_recon_eval(config, json_path=Path(args.json) if args.json else None,
                            grid_path=Path(args.grid) if args.grid else None, force=args.force)
    from hifiedit.eval.recon import format_table

    print(format_table(report))


def cmd_demo(args) -> None:
    from hifiedit.eval.recon import run_demo

    print(run_demo(Path(args.out), model=args.model, n_images=args.n_images, force=args.force))


# ------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hifiedit",
        description="High-fidelity text-driven image editing with diffusion models.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="build data sets").add_subparsers(dest="what", required=True)
    om = data.add_parser("openmoji", help="render OpenMoji to PNGs + manifest + split + pairs")
    om.add_argument("--size", type=int, default=32)
    om.add_argument("--out", required=True)
    om.add_argument("--force", action="store_true", help="replace a non-empty --out")
    om.set_defaults(func=cmd_data_openmoji)

    train = sub.add_parser("train", help="train models").add_subparsers(dest="what", required=True)
    tb = train.add_parser("base", help="train the base diffusion U-Net")
    tb.add_argument("--config", type=Path, help="JSON file of BaseTrainConfig fields")
    tb.add_argument("--out", required=True)
    tb.add_argument("--resume", action="store_true")
    tb.add_argument("--max-minutes", type=float)
    tb.add_argument("--max-steps", type=int)
    tb.add_argument("--threads", type=int)
    tb.set_defaults(func=cmd_train_base)

    rel = sub.add_parser("release", help="ship a trained model with a model card")
    rb = rel.add_subparsers(dest="what", required=True).add_parser("base")
    rb.add_argument("--run", required=True, help="the --out folder of `train base`")
    rb.add_argument("--to", required=True, help="destination model folder")
    rb.add_argument("--eval-json", help="an `eval recon` report to put in the model card")
    rb.add_argument("--force", action="store_true", help="replace an existing destination")
    rb.set_defaults(func=cmd_release_base)

    ev = sub.add_parser("eval", help="evaluate").add_subparsers(dest="what", required=True)
    er = ev.add_parser("recon", help="reconstruction PSNR/SSIM: DDIM and SDEdit")
    er.add_argument("--model", default="default")
    er.add_argument("--split", default="test")
    er.add_argument("--steps", type=_int_list, default=[6, 10, 20, 40, 100])
    er.add_argument("--t0", type=int, default=400)
    er.add_argument("--s-for", type=int, help="fixed inversion steps (default: same as S)")
    er.add_argument("--limit", type=int, help="evaluate only the first N images")
    er.add_argument("--seed", type=int, default=0)
    er.add_argument("--methods", type=lambda s: s.split(","), default=["ddim", "sdedit"])
    er.add_argument("--json", help="write the report here")
    er.add_argument("--grid", help="write an image grid (original | each method) here")
    er.add_argument("--force", action="store_true", help="overwrite existing --json/--grid")
    er.set_defaults(func=cmd_eval_recon)

    demo = sub.add_parser("demo", help="the main job on the embedded default")
    demo.add_argument("--out", default="outputs/demo")
    demo.add_argument("--model", default="default")
    demo.add_argument("--n-images", type=int, default=8)
    demo.add_argument("--force", action="store_true", help="replace the previous demo outputs")
    demo.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except HifieditError as e:
        print(f"hifiedit: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
