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


def _inversion(args):
    from hifiedit.diffusion.ddim import Inversion

    return Inversion(args.inversion, args.fp_iters)


def _add_inversion_args(parser, default: str, many: bool = False) -> None:
    """--inversion/--fp-iters (diffusion.ddim.Inversion), one meaning on every command."""
    help_ = ("ddim (plain DDIM inversion) or fixed-point (each move iterated into generation's "
             f"exact inverse; ~9 dB better at 6 steps){', comma-separated' if many else ''}; "
             f"default {default}")
    if many:
        parser.add_argument("--inversion", type=lambda s: s.split(","), default=[default], help=help_)
    else:
        parser.add_argument("--inversion", choices=["ddim", "fixed-point"], default=default, help=help_)
    parser.add_argument("--fp-iters", type=int, default=2,
                        help="fixed-point iterations per inversion move (extra U-Net passes)")


def cmd_data_openmoji(args) -> None:
    from hifiedit.data.openmoji import write_openmoji_folder

    n = write_openmoji_folder(Path(args.out), size=args.size, force=args.force)
    print(f"wrote {n} OpenMoji images ({args.size}px), manifest.jsonl, split.json and "
          f"pairs.jsonl to {args.out}")


def cmd_train_base(args) -> None:
    from hifiedit.train.base import BaseTrainConfig, train_base
    from hifiedit.train.run import config_for_run

    config = config_for_run(BaseTrainConfig, args.config, args.out, args.resume,
                            {"max_steps": args.max_steps, "threads": args.threads,
                             "cooldown_steps": args.cooldown_steps})
    summary = train_base(config, Path(args.out), resume=args.resume, max_minutes=args.max_minutes,
                         device=args.device, precision=args.precision)
    _print_summary(summary)


def _print_summary(summary: dict) -> None:
    """A run's summary, printed once (by process 0 when several processes train)."""
    from hifiedit.train.loop import is_main_process

    if is_main_process():
        print(json.dumps(summary))


def _add_processes_flag(parser) -> None:
    parser.add_argument("--num-processes", type=int, default=1, metavar="N",
                        help="train in N processes on this machine (the global batch is split "
                             "over them; gloo on CPUs); or start it with `accelerate launch -m "
                             "hifiedit train …`")


def cmd_train_clip(args) -> None:
    from hifiedit.train.clip import ClipTrainConfig, train_clip
    from hifiedit.train.run import config_for_run

    config = config_for_run(ClipTrainConfig, args.config, args.out, args.resume,
                            {"max_steps": args.max_steps, "threads": args.threads})
    summary = train_clip(config, Path(args.out), resume=args.resume, max_minutes=args.max_minutes,
                         device=args.device, precision=args.precision)
    print(json.dumps(summary))


def cmd_eval_clip(args) -> None:
    from hifiedit.eval.clip_eval import format_report, run_clip_eval

    report = run_clip_eval(args.model, split=args.split,
                           json_path=Path(args.json) if args.json else None, force=args.force,
                           image_size=args.size, directions=tuple(args.direction or ()),
                           device=args.device, precision=args.precision)
    print(format_report(report))


def cmd_release(args) -> None:
    from hifiedit.train.release import release_base_model
    from hifiedit.train.release_clip import release_clip_model
    from hifiedit.train.release_edit import release_edit_model
    from hifiedit.train.release_rectifier import release_rectifier_model

    release = {"base": release_base_model, "clip": release_clip_model,
               "rectifier": release_rectifier_model, "edit": release_edit_model}[args.what]
    dest = release(Path(args.run), Path(args.to),
                   Path(args.eval_json) if args.eval_json else None, force=args.force)
    print(f"released {args.run} to {dest} (see {dest / 'README.md'})")


def cmd_eval_recon(args) -> None:
    from hifiedit.eval.recon import ReconConfig, run_recon_eval

    config = ReconConfig(
        model=args.model, split=args.split, steps=tuple(args.steps), t0=args.t0,
        s_for=args.s_for, limit=args.limit, seed=args.seed, methods=tuple(args.methods),
        rectifier=args.rectifier, inversions=tuple(args.inversion), fp_iters=args.fp_iters,
        image_dir=args.image_dir or "", crop=args.crop,
    )
    report = run_recon_eval(config, json_path=Path(args.json) if args.json else None,
                            grid_path=Path(args.grid) if args.grid else None, force=args.force,
                            device=args.device, reuse=Path(args.reuse) if args.reuse else None,
                            precision=args.precision)
    from hifiedit.eval.recon import format_table

    print(format_table(report))


def cmd_train_rectifier(args) -> None:
    from hifiedit.train.rectifier import RectifierTrainConfig, train_rectifier
    from hifiedit.train.run import config_for_run

    config = config_for_run(RectifierTrainConfig, args.config, args.out, args.resume,
                            {"max_steps": args.max_steps, "threads": args.threads,
                             "init_from": args.init_from, "image_dir": args.image_dir,
                             "crop": args.crop or None})
    summary = train_rectifier(config, Path(args.out), base=args.base, resume=args.resume,
                              max_minutes=args.max_minutes, device=args.device,
                              precision=args.precision,
                              grad_checkpointing=args.grad_checkpointing)
    _print_summary(summary)


def cmd_train_edit(args) -> None:
    from hifiedit.train.edit import EditTrainConfig, train_edit
    from hifiedit.train.run import config_for_run

    overrides = {"src": args.src, "tgt": args.tgt, "method": args.method,
                 "markovian_variant": args.markovian_variant, "rectifier": args.rectifier,
                 "clip": args.clip, "images": args.images, "image_dir": args.image_dir,
                 "t0": args.t0, "s_for": args.s_for, "s_train": args.s_train, "t_edit": args.t_edit,
                 "iters": args.iters,
                 "lr": args.lr, "w_dir": args.w_dir, "w_l1": args.w_l1,
                 "batch_size": args.batch_size, "param_method": args.params, "rank": args.rank,
                 "threads": args.threads, "crop": args.crop or None}
    config = config_for_run(EditTrainConfig, args.config, args.out, args.resume, overrides)
    summary = train_edit(config, Path(args.out), base=args.base, resume=args.resume,
                         max_minutes=args.max_minutes, device=args.device,
                         precision=args.precision, grad_checkpointing=args.grad_checkpointing)
    _print_summary(summary)


def cmd_edit(args) -> None:
    from hifiedit.edit import load_edit
    from hifiedit.edit.apply import edit_paths, plan_outputs
    from hifiedit.pipeline import HifiEditPipeline

    plan_outputs(args.input, args.output, args.force)  # fail before any model work
    pipe = HifiEditPipeline.from_pretrained(args.model, rectifier=args.rectifier,
                                            inversion=_inversion(args), device=args.device,
                                            precision=args.precision)
    edits = [load_edit(e, pipe.backbone) for e in args.edit]
    if pipe.rectifier is None and any(e.rectified for e in edits):
        print("note: the edit was trained with a rectifier but none is loaded; editing "
              "without it", file=sys.stderr)
    written = edit_paths(pipe, edits, Path(args.input), Path(args.output), steps=args.steps,
                         t0=args.t0, s_for=args.s_for, force=args.force, crop=args.crop,
                         progress=True, t_edit=args.t_edit)
    print(f"wrote {written[0] if len(written) == 1 else f'{len(written)} images to {args.output}'}")


def cmd_bench(args) -> None:
    from hifiedit.eval.bench import format_bench, format_unet_pass, run_bench, run_unet_pass_bench

    if args.unet_pass:
        report = run_unet_pass_bench(model=args.model, batches=tuple(args.batches),
                                     repeats=args.repeats, device=args.device,
                                     precision=args.precision,
                                     json_path=Path(args.json) if args.json else None,
                                     force=args.force)
        print(format_unet_pass(report))
        return
    report = run_bench(model=args.model, rectifier=args.rectifier, batches=tuple(args.batches),
                       steps=args.steps, repeats=args.repeats,
                       json_path=Path(args.json) if args.json else None, force=args.force,
                       device=args.device, precision=args.precision)
    print(format_bench(report))


def cmd_reconstruct(args) -> None:
    from hifiedit.data.images import check_output_path, load_image, save_image
    from hifiedit.pipeline import HifiEditPipeline

    check_output_path(args.output, args.force)  # fail before any model work
    pipe = HifiEditPipeline.from_pretrained(
        args.model, rectifier=None if args.no_rectifier else args.rectifier,
        inversion=_inversion(args), device=args.device, precision=args.precision)
    if pipe.rectifier is None and not args.no_rectifier:
        print(f"note: no rectifier for {args.inversion} inversion; generating without one",
              file=sys.stderr)
    x0 = load_image(args.image, pipe.image_size, crop=args.crop)
    out = pipe.reconstruct(x0, steps=args.steps, t0=args.t0, s_for=args.s_for, progress=True)
    print(f"wrote {save_image(out, args.output, args.force)}")


def cmd_eval_edit(args) -> None:
    from hifiedit.eval.edit_eval import EditEvalConfig, format_table, run_edit_eval

    config = EditEvalConfig(edits=tuple(args.edit), model=args.model, split=args.split,
                            steps=tuple(args.steps), t0=args.t0, s_for=args.s_for,
                            judge=args.judge, rectifier=args.rectifier, limit=args.limit,
                            references=not args.no_references)
    report = run_edit_eval(config, json_path=Path(args.json) if args.json else None,
                           grid_path=Path(args.grid) if args.grid else None, force=args.force,
                           device=args.device, precision=args.precision)
    print(format_table(report))


def cmd_translate(args) -> None:
    import torch

    from hifiedit.data.images import load_image, save_image
    from hifiedit.edit import load_edit
    from hifiedit.edit.apply import plan_outputs
    from hifiedit.pipeline import HifiEditPipeline

    pairs = plan_outputs(args.input, args.output, args.force)  # fail before any model work
    pipe = HifiEditPipeline.from_pretrained(args.model, rectifier=None, device=args.device,
                                            precision=args.precision)
    edits = [load_edit(e, pipe.backbone) for e in args.edit or []]
    for src, dst in pairs:
        x = load_image(src, pipe.image_size, crop=args.crop)
        # One generator per image: an image's result does not depend on the folder around it.
        out = pipe.translate(x, edits, t0=args.t0, steps=args.steps, repeats=args.repeats,
                             generator=torch.Generator().manual_seed(args.seed), progress=True)
        save_image(out, dst, args.force)
    print(f"wrote {pairs[0][1] if len(pairs) == 1 else f'{len(pairs)} images to {args.output}'}")


def cmd_convert(args) -> None:
    from hifiedit.diffusion.convert import convert_checkpoint

    s = convert_checkpoint(args.source_format, args.ckpt, args.out, preset=args.preset,
                           config=args.config, force=args.force)
    variance = "; learned variance kept (6 output channels)" if s["learned_variance"] else ""
    print(f"converted {s['source']} ({s['format']}, {s['architecture']}, {s['taken']}): "
          f"{s['source_tensors']} tensors, {s['parameters'] / 1e6:.1f} M parameters{variance} "
          f"-> {args.out}")


def cmd_serve(args) -> None:
    from hifiedit.serve import serve

    serve(host=args.host, port=args.port, device=args.device, max_concurrency=args.max_concurrency,
          model=args.model, examples=args.examples,
          **({"max_bytes": int(args.max_upload_mb * 1e6)} if args.max_upload_mb else {}),
          **({"max_pixels": int(args.max_megapixels * 1e6)} if args.max_megapixels else {}))


def cmd_demo(args) -> None:
    from hifiedit.eval.demo import run_demo

    print(run_demo(Path(args.out), model=args.model, n_images=args.n_images, force=args.force,
                   device=args.device, precision=args.precision))



# ------------------------------------------------------------------ parser


def _add_runtime(p: argparse.ArgumentParser, training: bool = False) -> None:
    """--device and --precision, the same on every command that runs a U-Net or CLIP
    (resolved by hifiedit.runtime.resolve_runtime)."""
    p.add_argument("--device", default="auto",
                   help="auto (a CUDA GPU if there is one, else the CPU), cpu, or cuda[:N]")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="compute precision of the networks' layers (autocast; weights and "
                        "sampler math stay float32)" + ("; fp16 is refused for training"
                                                        if training else "; fp16 needs a GPU"))


def _add_image_dir(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--image-dir", help=f"{what} the images of this folder instead of OpenMoji "
                                       "(its manifest.jsonl, if any, lists them and their splits)")
    p.add_argument("--crop", action="store_true",
                   help="centre-crop non-square images of --image-dir (else they are refused)")


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
    tb.add_argument("--cooldown-steps", type=int,
                    help="lr falls linearly to 0 over the last N steps before --max-steps")
    tb.add_argument("--threads", type=int)
    _add_runtime(tb, training=True)
    _add_processes_flag(tb)
    tb.set_defaults(func=cmd_train_base)
    tc = train.add_parser("clip", help="train an OpenMoji CLIP (guide or judge)")
    tc.add_argument("--config", type=Path, help="JSON file of ClipTrainConfig fields")
    tc.add_argument("--out", required=True)
    tc.add_argument("--resume", action="store_true")
    tc.add_argument("--max-minutes", type=float)
    tc.add_argument("--max-steps", type=int)
    tc.add_argument("--threads", type=int)
    _add_runtime(tc, training=True)
    tc.set_defaults(func=cmd_train_clip)
    tr = train.add_parser("rectifier", help="reconstruction training of the rectifier (frozen base)")
    tr.add_argument("--base", default="default", help="default, a shipped name, or a model folder")
    tr.add_argument("--config", type=Path, help="JSON file of RectifierTrainConfig fields")
    tr.add_argument("--out", required=True)
    tr.add_argument("--resume", action="store_true")
    tr.add_argument("--max-minutes", type=float)
    tr.add_argument("--init-from", help="start from this rectifier (a folder or shipped name), "
                                        "e.g. the one of an earlier version of the base model")
    tr.add_argument("--max-steps", type=int)
    tr.add_argument("--threads", type=int)
    _add_runtime(tr, training=True)
    _add_processes_flag(tr)
    tr.add_argument("--grad-checkpointing", action="store_true",
                    help="recompute each U-Net block's activations in backward (the same gradients, "
                         "less memory; for large images)")
    _add_image_dir(tr, "train on")
    tr.set_defaults(func=cmd_train_rectifier)

    te = train.add_parser("edit", help="train a text edit: score-matching (ours) or markovian "
                                       "(DiffusionCLIP)")
    te.add_argument("--src", help="source text, e.g. 'light skin tone'")
    te.add_argument("--tgt", help="target text, e.g. 'dark skin tone'")
    te.add_argument("--method", choices=["score-matching", "markovian"])
    te.add_argument("--markovian-variant", choices=["full", "efficient", "per-move"],
                    help="full: backprop through the chain; efficient: per-move backprop, one "
                         "update per iteration; per-move: an update after every move "
                         "(DiffusionCLIP's clip_finetune_eff)")
    te.add_argument("--rectifier", help="default, none, or a rectifier folder")
    te.add_argument("--clip", help="the guiding CLIP: default or a CLIPModel folder")
    te.add_argument("--images", type=int, help="N training images (0 = all)")
    _add_image_dir(te, "train on")
    te.add_argument("--t0", type=int)
    te.add_argument("--s-for", type=int, help="inversion steps")
    te.add_argument("--s-train", type=int, help="generation steps trained for (the Markovian "
                                                 "chain; the rectifier's move in score matching)")
    te.add_argument("--t-edit", type=int, help="editing interval [t_edit, t0]: the edit acts only "
                                               "at levels ≥ t_edit (default 0: at every level)")
    te.add_argument("--iters", type=int)
    te.add_argument("--lr", type=float)
    te.add_argument("--w-dir", type=float, help="directional CLIP loss weight")
    te.add_argument("--w-l1", type=float, help="L1 loss weight")
    te.add_argument("--batch-size", type=int)
    te.add_argument("--params", choices=["lora", "subset", "full"], help="how ψ is parametrised")
    te.add_argument("--rank", type=int, help="LoRA rank")
    te.add_argument("--base", default="default", help="default, a shipped name, or a model folder")
    te.add_argument("--config", type=Path, help="JSON file of EditTrainConfig fields")
    te.add_argument("--out", required=True)
    te.add_argument("--resume", action="store_true")
    te.add_argument("--max-minutes", type=float)
    te.add_argument("--threads", type=int)
    _add_processes_flag(te)
    _add_runtime(te, training=True)
    te.add_argument("--grad-checkpointing", action="store_true",
                    help="recompute each U-Net block's activations in backward (the same gradients, "
                         "less memory; for large images)")
    te.set_defaults(func=cmd_train_edit)

    rel = sub.add_parser("release", help="ship a trained model with a model card")
    rel_sub = rel.add_subparsers(dest="what", required=True)
    for what, run_of, dest, report in (
        ("base", "train base", "src/hifiedit/assets/models/openmoji32-ddpm", "eval recon"),
        ("clip", "train clip", "src/hifiedit/assets/models/openmoji32-clip", "eval clip"),
        ("rectifier", "train rectifier", "src/hifiedit/assets/models/openmoji32-rectifier",
         "eval recon --methods ddim,rectified"),
        ("edit", "train edit", "src/hifiedit/assets/models/light-to-dark", "eval edit"),
    ):
        rp = rel_sub.add_parser(what)
        rp.add_argument("--run", required=True, help=f"the --out folder of `{run_of}`")
        rp.add_argument("--to", required=True, help=f"destination, e.g. {dest}")
        rp.add_argument("--eval-json", help=f"an `{report}` report to put in the model card")
        rp.add_argument("--force", action="store_true", help="replace an existing destination")
        rp.set_defaults(func=cmd_release)

    ev = sub.add_parser("eval", help="evaluate").add_subparsers(dest="what", required=True)
    er = ev.add_parser("recon", help="reconstruction PSNR/SSIM: DDIM and SDEdit")
    er.add_argument("--model", default="default")
    er.add_argument("--split", default="test")
    er.add_argument("--steps", type=_int_list, default=[6, 10, 20, 40, 100])
    er.add_argument("--t0", type=int, default=400)
    er.add_argument("--s-for", type=int, help="fixed inversion steps (default: same as S)")
    er.add_argument("--limit", type=int, help="evaluate only the first N images")
    er.add_argument("--seed", type=int, default=0)
    er.add_argument("--methods", type=lambda s: s.split(","), default=["ddim", "sdedit"],
                    help="comma-separated: ddim, sdedit, rectified, rectified-other, "
                         "rectified-grey (the last two: the rectifier shown another image / grey)")
    er.add_argument("--rectifier", default="default",
                    help="for the rectified methods: default (the shipped one for each "
                         "inversion), a rectifier folder, or none")
    _add_inversion_args(er, "ddim", many=True)
    _add_runtime(er)
    _add_image_dir(er, "evaluate")
    er.add_argument("--json", help="write the report here")
    er.add_argument("--grid", help="write an image grid (original | each method) here")
    er.add_argument("--force", action="store_true", help="overwrite existing --json/--grid")
    er.add_argument("--reuse", metavar="FILE",
                    help="copy the ddim/sdedit rows of an earlier report with the same model, "
                         "split, t0, seed and images instead of recomputing them")
    er.set_defaults(func=cmd_eval_recon)
    bn = sub.add_parser("bench", help="time per generation step: plain DDIM vs rectified")
    bn.add_argument("--model", default="default")
    bn.add_argument("--rectifier", default="default",
                    help="default, a rectifier folder, or none (none/absent: a fresh one is timed)")
    bn.add_argument("--batches", type=_int_list, default=[1, 16])
    bn.add_argument("--steps", type=int, default=10, help="generation steps per timed chain")
    bn.add_argument("--repeats", type=int, default=2, help="timed chains per batch size")
    bn.add_argument("--unet-pass", action="store_true",
                    help="time one U-Net pass (forward; forward+backward) of --model and the "
                         "memory it adds, instead of generation steps")
    bn.add_argument("--json", help="write the report here")
    bn.add_argument("--force", action="store_true", help="overwrite an existing --json")
    _add_runtime(bn)
    bn.set_defaults(func=cmd_bench)
    ec = ev.add_parser("clip", help="zero-shot tone/gender accuracy, retrieval, pair direction")
    ec.add_argument("--model", default="default", help="default, judge, or a CLIP folder")
    ec.add_argument("--split", default="test")
    ec.add_argument("--size", type=int, default=32, help="OpenMoji render size (pixels)")
    ec.add_argument("--direction", nargs=2, action="append", metavar=("SRC", "TGT"),
                    help="also check that the CLIP's text direction SRC → TGT points from the "
                         "split's glyphs with the source attribute to those with the target one")
    ec.add_argument("--json", help="write the report here")
    ec.add_argument("--force", action="store_true", help="overwrite an existing --json")
    _add_runtime(ec)
    ec.set_defaults(func=cmd_eval_clip)
    ee = ev.add_parser("edit", help="edits vs true targets: gt MAE/PSNR, preservation, judge "
                                    "S_dir and accuracy, timings")
    ee.add_argument("--edit", action="append", required=True,
                    help="a shipped edit name or an edit folder; repeat to compare several")
    ee.add_argument("--model", default="default")
    ee.add_argument("--split", default="test")
    ee.add_argument("--steps", type=_int_list, default=[6, 40], help="S_gen values, e.g. 6,40")
    ee.add_argument("--t0", type=int, help="default: each edit's training t0")
    ee.add_argument("--s-for", type=int, help="inversion steps (default: S_gen)")
    ee.add_argument("--judge", default="judge", help="judge (shipped) or a judge CLIP folder")
    ee.add_argument("--rectifier", help="default: the one each edit was trained with; a folder, "
                                        "or none")
    ee.add_argument("--limit", type=int, help="at most N images per edit")
    ee.add_argument("--no-references", action="store_true",
                    help="skip the reference rows (source unchanged; reconstructed with no edit)")
    ee.add_argument("--json", help="write the report here")
    ee.add_argument("--grid", help="write the image grid (source | true target | each edit) here")
    ee.add_argument("--force", action="store_true", help="overwrite existing --json/--grid")
    _add_runtime(ee)
    ee.set_defaults(func=cmd_eval_edit)

    rec = sub.add_parser("reconstruct", help="invert one image and generate it back")
    rec.add_argument("image")
    rec.add_argument("--steps", type=int, required=True, help="generation steps S_gen")
    rec.add_argument("--t0", type=int, default=400)
    rec.add_argument("--s-for", type=int, help="inversion steps (default: --steps)")
    rec.add_argument("--model", default="default")
    rec.add_argument("--rectifier", default="default", help="default, a folder, or none")
    rec.add_argument("--no-rectifier", action="store_true", help="plain DDIM generation")
    _add_inversion_args(rec, "fixed-point")
    rec.add_argument("--crop", action="store_true", help="centre-crop non-square images")
    rec.add_argument("-o", "--output", required=True)
    rec.add_argument("--force", action="store_true", help="overwrite --output")
    _add_runtime(rec)
    rec.set_defaults(func=cmd_reconstruct)

    ed = sub.add_parser("edit", help="edit an image or a folder of images with trained edits")
    ed.add_argument("input", help="an image file or a folder of images")
    ed.add_argument("--edit", action="append", required=True,
                    help="a shipped edit name or an edit folder; repeat to mix several")
    ed.add_argument("--steps", type=int, required=True, help="generation steps S_gen")
    ed.add_argument("--t0", type=int, help="default: the t0 the edit was trained at")
    ed.add_argument("--s-for", type=int, help="inversion steps (default: --steps)")
    ed.add_argument("--t-edit", type=int, help="the edit acts at levels ≥ t_edit, the base below "
                                               "(default: as the edit was trained)")
    ed.add_argument("--model", default="default")
    ed.add_argument("--rectifier", default="default", help="default, a folder, or none")
    _add_inversion_args(ed, "ddim")
    ed.add_argument("--crop", action="store_true", help="centre-crop non-square images")
    ed.add_argument("-o", "--output", required=True, help="a file, or a folder for a folder input")
    ed.add_argument("--force", action="store_true", help="overwrite existing outputs")
    _add_runtime(ed)
    ed.set_defaults(func=cmd_edit)

    tl = sub.add_parser("translate", help="image-to-image translation from an unseen domain "
                                          "(stochastic forward to t0, then DDIM; optional edits)")
    tl.add_argument("input", help="an image file or a folder of images")
    tl.add_argument("--edit", action="append", help="optional edit(s) to generate with")
    tl.add_argument("--t0", type=int, help="default: the edits' training t0, or 400")
    tl.add_argument("--steps", type=int, default=40, help="generation steps per round")
    tl.add_argument("--repeats", type=int, default=1,
                    help="rounds of re-noising and generation (DiffusionCLIP's n_iter)")
    tl.add_argument("--seed", type=int, default=0)
    tl.add_argument("--model", default="default")
    tl.add_argument("--crop", action="store_true", help="centre-crop non-square images")
    tl.add_argument("-o", "--output", required=True, help="a file, or a folder for a folder input")
    tl.add_argument("--force", action="store_true", help="overwrite existing outputs")
    _add_runtime(tl)
    tl.set_defaults(func=cmd_translate)

    cv = sub.add_parser("convert", help="convert a DDIM-repository or guided-diffusion checkpoint "
                                        "into a diffusers model folder")
    cv.add_argument("--from", dest="source_format", required=True, choices=("ddim", "guided"),
                    help="ddim: ermongroup/ddim's Model (SDEdit/DiffusionCLIP CelebA-HQ, LSUN); "
                         "guided: OpenAI guided/improved-diffusion UNetModel (AFHQ-dog, FFHQ)")
    cv.add_argument("--ckpt", required=True, help=".ckpt/.pt/.pth/.bin (read with "
                                                  "weights_only=True) or .safetensors")
    arch = cv.add_mutually_exclusive_group(required=True)
    arch.add_argument("--preset", help="ddim: celeba_hq, lsun_bedroom, lsun_church; "
                                       "guided: ffhq, afhq_dog")
    arch.add_argument("--config", help="the original's hyper-parameters as JSON (inline or a file)")
    cv.add_argument("--out", required=True, help="the model folder to write")
    cv.add_argument("--force", action="store_true", help="replace an existing --out")
    cv.set_defaults(func=cmd_convert)

    demo = sub.add_parser("demo", help="the main job on the embedded default")
    demo.add_argument("--out", default="outputs/demo")
    demo.add_argument("--model", default="default")
    demo.add_argument("--n-images", type=int, default=8)
    demo.add_argument("--force", action="store_true", help="replace the previous demo outputs")
    _add_runtime(demo)
    demo.set_defaults(func=cmd_demo)

    sv = sub.add_parser("serve", help="a web page for editing uploaded images (Gradio)")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback)")
    sv.add_argument("--port", type=int, default=7860)
    sv.add_argument("--device", default="auto", help="auto (a GPU if there is one), cpu, cuda")
    sv.add_argument("--max-concurrency", type=int, default=1,
                    help="requests run at once, each on its own copy of the models; the rest queue")
    sv.add_argument("--model", default="default", help="default, a shipped name, or a model folder")
    sv.add_argument("--examples", type=int, default=6,
                    help="test-split OpenMoji examples offered on the page (0: none)")
    sv.add_argument("--max-upload-mb", type=float, help="refuse larger uploads (default 10)")
    sv.add_argument("--max-megapixels", type=float, help="refuse larger images (default 16)")
    sv.set_defaults(func=cmd_serve)
    return p


def _close_progress_bars() -> None:
    """A failure inside a loop leaves its progress bar's line open; closing it first puts the
    error on a line of its own."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "num_processes", 1) != 1:
            from hifiedit.train.loop import launch, launched_world_size

            if launched_world_size() == 1:  # start the processes; each runs this command
                return launch(argv, args.num_processes)
            if launched_world_size() != args.num_processes:
                raise HifieditError(f"--num-processes {args.num_processes} under a launcher "
                                    f"that started {launched_world_size()} processes.")
        args.func(args)
    except HifieditError as e:
        _close_progress_bars()
        print(f"hifiedit: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
