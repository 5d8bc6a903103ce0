"""Fault-injection helpers: tiny training set-ups and a child-process driver that counts the
events of a run (optimizer steps, safetensors writes, renames) and SIGKILLs itself at one.

Children are forked from the test process, so each run is a real, separate OS process (its
own memory and file descriptors, killed by SIGKILL with no clean-up, atexit or buffer flush)
that starts in milliseconds instead of re-importing torch, diffusers and transformers (tens of
seconds on a 2-core machine). Each child runs the `hifiedit` CLI with one intra-op thread, so
every run computes the same floating-point sums.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import re
import signal
import sys
import threading
from pathlib import Path

import torch

from conftest import TINY_TEXTS, save_tiny_pipeline, tiny_clip, tiny_tokenizer

FORK = multiprocessing.get_context("fork")
_CHILDREN = itertools.count()


def warm_imports() -> None:
    """Import in the parent what children would otherwise each import again (diffusers and
    transformers resolve their classes lazily, at ~10 s of CPU each on a 2-core machine)."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel  # noqa: F401
    from transformers import AutoTokenizer, CLIPModel, CLIPConfig  # noqa: F401

    import hifiedit.cli  # noqa: F401
    import hifiedit.train.base  # noqa: F401
    import hifiedit.train.clip  # noqa: F401
    import hifiedit.train.edit  # noqa: F401
    import hifiedit.train.rectifier  # noqa: F401


def images(n: int, seed: int, size: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, 3, size, size), generator=g) * 2 - 1


def write_pngs(folder: Path, n: int, seed: int = 0) -> Path:
    from hifiedit.data.images import save_image

    folder.mkdir(parents=True, exist_ok=True)
    for i, x in enumerate(images(n, seed)):
        save_image(x, folder / f"img{i}.png")
    return folder


# ------------------------------------------------------------------ the child


def _install_data(trainer: str) -> None:
    """The trainers' OpenMoji loaders replaced by a few synthetic images (the edit trainer
    reads a folder of PNGs through --image-dir instead)."""
    if trainer == "base":
        from hifiedit.train import base

        base._load_data = lambda config: (images(6, 0), images(2, 1))
    elif trainer == "clip":
        from hifiedit.train import clip

        def data(image_size, split="train"):
            texts = TINY_TEXTS[:6]
            return clip.CaptionedImages(images(6, 0), [[t, t + "!"] for t in texts], [0, 0, 1, 1, 2, 2])

        clip.openmoji_training_set = data
    elif trainer == "rectifier":
        from hifiedit.train import rectifier

        rectifier._load_images = lambda config, size: (images(6, 0), images(0, 1))


class _Events:
    """Counts the events after this process's first optimizer step; SIGKILLs at `kill_at`."""

    def __init__(self, start_step: int, kill_at: int | None, report: Path):
        self.step, self.start, self.kill_at, self.report = start_step, start_step, kill_at, report
        self.seen: list[tuple[int, str]] = []

    def __call__(self, kind: str) -> None:
        kind = re.sub(r"\.tmp\w+", ".tmp", kind)  # temporary names differ from run to run
        if self.step == self.start:  # set-up (data, caches, tokenizer): not a kill point
            return
        self.seen.append((self.step, kind))
        if self.kill_at is not None and len(self.seen) == self.kill_at:
            self.report.write_text(json.dumps({"step": self.step, "event": kind,
                                               "n": len(self.seen)}))
            os.kill(os.getpid(), signal.SIGKILL)

    def optimizer_stepped(self, *_):
        self.step += 1
        self("optimizer step")


def _install_events(events: _Events) -> None:
    import safetensors.torch as st

    import hifiedit.train.checkpoint as ck

    real_replace, real_save = os.replace, st.save_file

    def replace(*a, **k):
        events(f"rename {Path(a[0]).name} -> {Path(a[1]).name}")
        return real_replace(*a, **k)

    def save_file(tensors, filename, *a, **k):
        events(f"write {Path(filename).parent.name}/{Path(filename).name}")
        return real_save(tensors, filename, *a, **k)

    os.replace, st.save_file, ck.save_file = replace, save_file, save_file
    from torch.optim.optimizer import register_optimizer_step_post_hook

    register_optimizer_step_post_hook(events.optimizer_stepped)


def _child(spec: dict, pipe: int) -> None:
    # Output goes to a pipe, not a file: a file would count against RLIMIT_FSIZE.
    os.dup2(pipe, 1)
    os.dup2(pipe, 2)
    sys.stdout = open(1, "w", closefd=False)
    sys.stderr = open(2, "w", closefd=False)
    os.environ["HIFIEDIT_CACHE"] = spec["cache"]
    torch.set_num_threads(1)
    rc = 1
    try:
        _install_data(spec["trainer"])
        events = _Events(spec["start_step"], spec.get("kill_at"), Path(spec["report"]))
        if spec.get("count"):
            _install_events(events)
        if spec.get("fsize") is not None:
            import resource

            resource.setrlimit(resource.RLIMIT_FSIZE, (spec["fsize"], spec["fsize"]))
        from hifiedit.cli import main

        rc = main(spec["argv"])
        if spec.get("count"):
            Path(spec["report"]).write_text(json.dumps({"events": events.seen}))
    except BaseException:  # an uncaught crash is a failed fault test: keep its traceback
        import traceback

        traceback.print_exc()
        rc = 2
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)


def run_cli(argv: list[str], workdir: Path, trainer: str = "", *, count: bool = False,
            start_step: int = 0, kill_at: int | None = None, fsize: int | None = None,
            timeout: float = 120, wait: bool = True):
    """Run `hifiedit ARGV` in a forked child. Returns (exit code, its stdout+stderr, its report)
    (exit code −9: killed by SIGKILL), or the started process when `wait` is False."""
    workdir.mkdir(parents=True, exist_ok=True)
    n = next(_CHILDREN)
    spec = {"argv": [str(a) for a in argv], "trainer": trainer, "count": count,
            "start_step": start_step, "kill_at": kill_at, "fsize": fsize,
            "log": str(workdir / f"child{n}.log"), "report": str(workdir / f"child{n}.json"),
            "cache": str(workdir / "cache")}
    warm_imports()
    sys.stdout.flush()
    sys.stderr.flush()
    read, write = os.pipe()
    proc = FORK.Process(target=_child, args=(spec, write))
    proc.start()
    os.close(write)
    chunks: list[bytes] = []
    reader = threading.Thread(target=_drain, args=(read, chunks), daemon=True)
    reader.start()
    proc.spec, proc.output = spec, (reader, chunks)
    return finish(proc, timeout) if wait else proc


def _drain(fd: int, chunks: list[bytes]) -> None:
    with os.fdopen(fd, "rb") as f:
        for chunk in iter(lambda: f.read1(65536), b""):
            chunks.append(chunk)


def finish(proc, timeout: float = 120):
    spec, (reader, chunks) = proc.spec, proc.output
    proc.join(timeout)
    if proc.exitcode is None:
        proc.kill()
        proc.join()
        raise AssertionError(f"child {spec['argv']} did not finish in {timeout} s")
    reader.join(10)
    log = b"".join(chunks).decode(errors="replace")
    Path(spec["log"]).write_text(log)
    report = Path(spec["report"])
    return proc.exitcode, log, json.loads(report.read_text()) if report.is_file() else None


# ------------------------------------------------------------------ tiny set-ups


def tiny_base_dir(root: Path) -> Path:
    folder = root / "tiny-ddpm"
    if not folder.is_dir():
        save_tiny_pipeline(folder)
    return folder


def tiny_clip_dir(root: Path) -> Path:
    folder = root / "tiny-clip"
    if not folder.is_dir():
        tokenizer = tiny_tokenizer()
        tiny_clip(tokenizer).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return folder


def tiny_rectifier_dir(root: Path) -> Path:
    from conftest import nonzero_rectifier

    from hifiedit.diffusion.backbone import load_backbone, model_digest

    folder = root / "tiny-rect"
    if not folder.is_dir():
        bb = load_backbone(tiny_base_dir(root))
        nonzero_rectifier(bb.unet).save_pretrained(folder, base_digest=model_digest(bb))
    return folder


BASE = dict(image_size=16, block_out_channels=(8, 16), attention_levels=(1,), norm_num_groups=4,
            attention_head_dim=8, batch_size=4, warmup_steps=2, log_every=1, eval_every=1000,
            sample_every=1000, n_samples=4, sample_steps=2)
CLIP = dict(image_size=16, patch_size=8, vision_width=16, vision_layers=1, vision_heads=2,
            text_width=16, text_layers=1, text_heads=2, max_text_length=16, projection_dim=8,
            vocab_size=600, batch_size=4, family_size=2, warmup_steps=2, log_every=1,
            eval_every=1000, threads=1)
RECTIFIER = dict(encoder_channels=(8, 16), norm_groups=4, time_embed_dim=16, feature_dim=16,
                 branch_hidden=8, pointwise_rank=2, t0=60, step_grids=(2, 3), cache_points=3,
                 rollout_max=1, batch_size=2, warmup_steps=1, log_every=1, eval_every=1000,
                 eval_steps=(2,), n_val_images=0, threads=1)
EDIT = dict(src="light skin tone", tgt="dark skin tone", t0=60, s_for=3, s_train=2,
            batch_size=2, rank=2, alpha=2.0, log_every=1, images=0, threads=1)


class Setup:
    """How to start, resume and judge one trainer's tiny run."""

    def __init__(self, trainer: str, root: Path, steps: int = 7, every: int = 3):
        self.trainer, self.root, self.steps, self.every = trainer, root, steps, every
        root.mkdir(parents=True, exist_ok=True)
        self.extra: list[str] = []
        if trainer == "base":
            config = {**BASE, "max_steps": steps, "checkpoint_every": every}
            self.extra = ["--device", "cpu"]
        elif trainer == "clip":
            config = {**CLIP, "max_steps": steps, "checkpoint_every": every}
            # BPE training breaks ties by hash order: runs that must agree share one tokenizer.
            self.tokenizer = root / "tokenizer"
            if not self.tokenizer.is_dir():
                from hifiedit.train.clip import train_tokenizer

                texts = [t for t in TINY_TEXTS[:6]] + [t + "!" for t in TINY_TEXTS[:6]]
                train_tokenizer(texts, 600, 16).save_pretrained(self.tokenizer)
        elif trainer == "rectifier":
            config = {**RECTIFIER, "max_steps": steps, "checkpoint_every": every}
            self.extra = ["--base", tiny_base_dir(root), "--device", "cpu"]
        elif trainer == "edit":
            config = {**EDIT, "iters": steps, "checkpoint_every": every,
                      "clip": str(tiny_clip_dir(root)), "rectifier": str(tiny_rectifier_dir(root)),
                      "image_dir": str(write_pngs(root / "pngs", 3))}
            self.extra = ["--base", tiny_base_dir(root)]
        else:
            raise ValueError(trainer)
        self.config = root / f"{trainer}.json"
        self.config.write_text(json.dumps(config))

    def prepare(self, out: Path) -> None:
        if self.trainer == "clip" and not (out / "tokenizer").is_dir():
            import shutil

            shutil.copytree(self.tokenizer, out / "tokenizer")

    def argv(self, out: Path, resume: bool) -> list:
        how = ["--resume"] if resume else ["--config", self.config]
        return ["train", self.trainer, "--out", out, *how, *self.extra]

    def exported(self, out: Path) -> Path:
        """The exported weights a user loads."""
        return {"base": out / "model" / "unet" / "diffusion_pytorch_model.safetensors",
                "clip": out / "model" / "model.safetensors",
                "rectifier": out / "rectifier" / "model.safetensors",
                "edit": out / "edit" / "edit.safetensors"}[self.trainer]


def checkpoint_step(out: Path) -> int | None:
    """The step of the run's checkpoint as `--resume` reads it, or None when there is none."""
    from hifiedit.train.checkpoint import load_checkpoint

    ckpt = out / "checkpoint"
    if not (ckpt / "state.json").is_file() and not (out / "checkpoint.old" / "state.json").is_file():
        return None
    return int(load_checkpoint(ckpt)[1]["step"])


def tensors_of(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    from hifiedit.train.checkpoint import load_checkpoint

    groups, _ = load_checkpoint(folder)
    return {f"{g}/{k}": v for g, ts in groups.items() for k, v in ts.items()}


def assert_bitwise_equal(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), f"{what}: keys differ {sorted(set(a) ^ set(b))[:4]}"
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), f"{what}: {k} differs"


def error_line(log: str) -> str:
    """The one `hifiedit: error:` line of a failed command (no traceback, no second error)."""
    assert "Traceback" not in log, log
    lines = [ln for ln in log.replace("\r", "\n").splitlines() if ln.startswith("hifiedit: error:")]
    assert len(lines) == 1, log
    return lines[0]
