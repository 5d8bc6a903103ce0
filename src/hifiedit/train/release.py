"""Turning a training run into a shipped model: weights, sample grid, loss plot, model card.

`hifiedit release base --run RUN --to DIR [--eval-json FILE]` copies the run's exported EMA
pipeline folder and writes a model card whose every figure comes from the run's own files
(state.json, log.csv) or from an `hifiedit eval recon` JSON.
"""

from __future__ import annotations

import contextlib
import csv
import json
import shutil
from pathlib import Path

from hifiedit.errors import HifieditError
from hifiedit.runtime import atomic_folder


@contextlib.contextmanager
def staged_release(model_dir: Path, dest: Path, force: bool, eval_json: Path | None = None):
    """Yield a temporary copy of a run's exported `model_dir` (plus the evaluation report the
    card quotes) to add a card and figures to; it replaces `dest` only when the block
    succeeds (a failure leaves `dest` as it was)."""
    dest = Path(dest)
    if dest.exists() and not force:
        raise HifieditError(f"{dest} exists; pass --force to replace it.")
    with atomic_folder(dest, "release", replace=force) as tmp:
        shutil.copytree(model_dir, tmp, dirs_exist_ok=True)
        if eval_json is not None:
            shutil.copyfile(eval_json, tmp / Path(eval_json).name)
        yield tmp


def checked_run(run: Path, weights: Path, max_bytes: int, what: str) -> dict:
    """The run's checkpoint state, after checking that `run` holds a checkpoint and the exported
    `weights`, and that these fit the size a shipped `what` may have."""
    state_file = run / "checkpoint" / "state.json"
    if not state_file.is_file() or not weights.is_file():
        raise HifieditError(f"{run} is not a {what} training run (no checkpoint or "
                            f"{weights.parent.name}/).")
    size = weights.stat().st_size
    if size > max_bytes:
        raise HifieditError(f"{weights} is {size / 2**20:.2f} MB; a shipped {what} must be "
                            f"≤ {max_bytes / 2**20:.1f} MB.")
    return json.loads(state_file.read_text())


def card_tail(commands: list[str], config: dict) -> str:
    """The end every model card shares: how to reproduce it, the config, the data licence."""
    from hifiedit.data.openmoji import ATTRIBUTION

    lines = "\n".join(f"    {c}" for c in commands)
    return (f"\n## Reproduce\n\n{lines}\n\nTraining config (`state.json` of the checkpoint):\n\n"
            f"```json\n{json.dumps(config, indent=1)}\n```\n\n## Data licence\n\n{ATTRIBUTION}\n")


def plot_losses(log_csv: Path, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(log_csv.open()))
    steps = [int(r["step"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, [float(r["loss"]) for r in rows], lw=0.8, label="train (min-SNR weighted)")
    held = [(int(r["step"]), float(r["heldout_loss"])) for r in rows if r["heldout_loss"]]
    if held:
        ax.plot(*zip(*held), "o-", ms=3, label="held-out ε-MSE (val split, EMA)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _table(report: dict) -> str:
    lines = ["| method | S_for | S_gen | MAE | PSNR (dB) | SSIM |", "|---|---|---|---|---|---|"]
    for r in report["rows"]:
        s_for = "– (noise)" if r["method"] == "sdedit" else r["s_for"]
        lines.append(f"| {r['method']} | {s_for} | {r['steps']} | {r['mae']:.4f} | "
                     f"{r['psnr']:.2f} | {r['ssim']:.3f} |")
    return "\n".join(lines)


def machines_line(state: dict) -> str:
    """The card's "machine" entry: each stretch of the run and where it ran."""
    stretches = state.get("machines") or []
    if not stretches:
        return state.get("machine", "not recorded")
    return "; ".join(f"steps {m['from_step']}–{m['to_step']} on {m['machine']} "
                     f"({m['seconds'] / 60:.1f} min)" for m in stretches)


def release_base_model(run: Path, dest: Path, eval_json: Path | None = None,
                       force: bool = False) -> Path:
    from hifiedit.config import config_from_dict
    from hifiedit.train.base import BaseTrainConfig

    run, dest = Path(run), Path(dest)
    state_file = run / "checkpoint" / "state.json"
    if not state_file.is_file() or not (run / "model" / "model_index.json").is_file():
        raise HifieditError(f"{run} is not a finished base-training run (no checkpoint/model).")
    state = json.loads(state_file.read_text())
    config = config_from_dict(BaseTrainConfig, state["config"])
    report = json.loads(Path(eval_json).read_text()) if eval_json else None
    with staged_release(run / "model", dest, force, eval_json) as tmp:
        _write_base_release(tmp, run, dest, state, config, report)
    return dest


def _write_base_release(tmp: Path, run: Path, dest: Path, state: dict, config, report) -> None:
    from hifiedit.diffusion.backbone import load_backbone
    from hifiedit.train.base import sample_grid

    bb = load_backbone(tmp)
    sample_grid(bb.unet, bb.alphas_cumprod.float(), config, tmp / "samples.png")
    plot_losses(run / "log.csv", tmp / "loss.png")
    rows = list(csv.DictReader((run / "log.csv").open()))
    held = [r for r in rows if r["heldout_loss"]]
    last_held = f"{float(held[-1]['heldout_loss']):.4f} at step {held[-1]['step']}" if held else "n/a"
    ips = [float(r["img_per_s"]) for r in rows[-20:]]
    status = ("" if state["step"] >= config.max_steps else
              f"**Snapshot of a run in progress** (step {state['step']} of max_steps "
              f"{config.max_steps}); `hifiedit train base --out RUN --resume` continues it.\n")
    machine = machines_line(state)
    card = f"""# {dest.name}: the embedded default base diffusion model

An unconditional ε-prediction DDPM (`diffusers.UNet2DModel`, {state['n_params'] / 1e6:.2f} M
parameters) for 32×32 OpenMoji glyphs, trained by `hifiedit train base` on the **train split**
of the OpenMoji domain (test split never seen). Same conventions as the CelebA-HQ DDPM the paper
uses (linear β {config.beta_start}…{config.beta_end}, T = {config.num_train_timesteps}), so one
code path serves both. These are the EMA weights (decay {config.ema_decay}).

{status}
- steps: **{state['step']}** (batch {config.batch_size}, {state['images_seen']:,} images seen)
- training wall time: {state['wall_seconds'] / 3600:.2f} h; recent throughput
  {sum(ips) / max(1, len(ips)):.1f} img/s
- machine: {machine}
- held-out ε-MSE (val split, EMA, fixed noise): {last_held}

## Samples from pure noise (DDIM, {config.sample_steps} steps, seed 0)

![samples](samples.png)

## Loss

![loss](loss.png)

## Reconstruction on the test split
"""
    if report:
        card += (f"\n`hifiedit eval recon --model {report['model']} --split {report['split']} "
                 f"--t0 {report['t0']} --limit {report['n_images']}` (the first "
                 f"{report['n_images']} images of the split; "
                 f"seed {report.get('seed', 0)}; {report.get('machine', '')}):\n\n"
                 + _table(report) + "\n")
    else:
        card += "\nNot measured for this release.\n"
    card += card_tail([
        "hifiedit train base --config configs/base-openmoji32.json --out runs/base-openmoji32",
        "hifiedit train base --out runs/base-openmoji32 --resume        # after an interruption",
        f"hifiedit release base --run runs/base-openmoji32 --to {dest} --eval-json FILE",
    ], state["config"])
    (tmp / "README.md").write_text(card)

