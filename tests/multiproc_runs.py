"""Tiny runs of the base, rectifier and edit trainers in whatever processes run this script.

    python tests/multiproc_runs.py WHAT FIXTURES OUT STEPS [--procs N] [--resume] [--hang-after K]

WHAT: base, rect, edit or all (all three, in OUT/base, OUT/rect, OUT/edit). FIXTURES holds the
tiny models (`make_fixtures`). --procs N starts N processes of this script (gloo);
--hang-after K makes process 0 stall after its first checkpoint at step ≥ K, so that a test
can kill the run mid-way at a known point. test_accelerate.py also runs the same functions in
one process, to compare.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

BASE = dict(image_size=16, block_out_channels=(8, 16), attention_levels=(1,), norm_num_groups=4,
            attention_head_dim=8, batch_size=4, warmup_steps=2, log_every=1, checkpoint_every=3,
            eval_every=4, sample_every=1000, n_samples=4, sample_steps=2, threads=1)
RECT = dict(encoder_channels=(8, 16), norm_groups=4, time_embed_dim=16, feature_dim=16,
            branch_hidden=8, pointwise_rank=2, t0=200, step_grids=(3, 6), cache_points=4,
            rollout_max=2, batch_size=4, warmup_steps=1, log_every=1, checkpoint_every=2,
            eval_every=2, eval_steps=(3,), n_val_images=2, threads=1)
EDIT = dict(src="light skin tone", tgt="dark skin tone", t0=200, s_for=6, s_train=3,
            batch_size=4, rank=2, alpha=2.0, log_every=1, checkpoint_every=2, lr=1e-2, threads=1)


def images(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, 3, 16, 16), generator=g) * 2 - 1


def make_fixtures(folder: Path) -> Path:
    """A tiny DDPM, a tiny CLIP (tokenizer saved, so every process reads the same) and a
    tiny rectifier with non-zero offsets."""
    from conftest import nonzero_rectifier, save_tiny_pipeline, tiny_clip, tiny_tokenizer

    from hifiedit.diffusion.backbone import load_backbone

    save_tiny_pipeline(folder / "ddpm")
    tokenizer = tiny_tokenizer()
    tiny_clip(tokenizer).save_pretrained(folder / "clip")
    tokenizer.save_pretrained(folder / "clip")
    nonzero_rectifier(load_backbone(folder / "ddpm").unet).save_pretrained(folder / "rect")
    return folder


def run_base(fixtures: Path, out: Path, steps: int, **kw) -> dict:
    from hifiedit.train.base import BaseTrainConfig, train_base

    return train_base(BaseTrainConfig(**{**BASE, "max_steps": steps}), out,
                      train_images=images(8, 0), val_images=images(2, 1), progress=False,
                      device="cpu", **kw)


def run_rect(fixtures: Path, out: Path, steps: int, **kw) -> dict:
    from hifiedit.train.rectifier import RectifierTrainConfig, train_rectifier

    return train_rectifier(RectifierTrainConfig(**{**RECT, "max_steps": steps}), out,
                           base=fixtures / "ddpm", train_images=images(6, 0),
                           val_images=images(2, 1), cache_folder=fixtures / "cache",
                           progress=False, device="cpu", **kw)


def run_edit(fixtures: Path, out: Path, steps: int, **kw) -> dict:
    from hifiedit.train.edit import EditTrainConfig, train_edit

    config = EditTrainConfig(**{**EDIT, "iters": steps, "clip": str(fixtures / "clip"),
                                "rectifier": str(fixtures / "rect")})
    return train_edit(config, out, base=fixtures / "ddpm", train_images=images(5, 0),
                      cache_folder=fixtures / "cache", progress=False, **kw)


def run_edit_per_move(fixtures: Path, out: Path, steps: int, **kw) -> dict:
    """The Markovian per-move variant: S_train updates per step, each on gradients all-reduced
    over the processes."""
    from hifiedit.train.edit import EditTrainConfig, train_edit

    config = EditTrainConfig(**{**EDIT, "iters": steps, "clip": str(fixtures / "clip"),
                                "rectifier": str(fixtures / "rect"), "method": "markovian",
                                "markovian_variant": "per-move", "lr": 1e-3})
    return train_edit(config, out, base=fixtures / "ddpm", train_images=images(5, 0),
                      cache_folder=fixtures / "cache", progress=False, **kw)


RUNS = {"base": run_base, "rect": run_rect, "edit": run_edit, "edit-per-move": run_edit_per_move}


def main(argv: list[str]) -> int:
    from hifiedit.train.loop import launch_command, launched_world_size

    what, fixtures, out, steps, *flags = argv
    procs = int(flags[flags.index("--procs") + 1]) if "--procs" in flags else 1
    if procs > 1 and launched_world_size() == 1:
        return launch_command([sys.executable, __file__, *argv], procs)
    if "--hang-after" in flags:
        from hifiedit.train.base import BaseJob

        hang_after, export = int(flags[flags.index("--hang-after") + 1]), BaseJob.export

        def export_then_stall(self, step):
            export(self, step)
            if step >= hang_after:
                time.sleep(600)

        BaseJob.export = export_then_stall
    kw = {"resume": True} if "--resume" in flags else {}
    for name in (RUNS if what == "all" else [what]):
        RUNS[name](Path(fixtures), Path(out) / name if what == "all" else Path(out), int(steps), **kw)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    sys.exit(main(sys.argv[1:]))
