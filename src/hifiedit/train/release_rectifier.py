"""Turning a rectifier training run into a shipped model folder with a model card.

`hifiedit release rectifier --run RUN --to DIR [--eval-json FILE]` copies the run's exported
EMA rectifier and writes a card whose every figure comes from the run's own files (checkpoint
state, log.csv) or from an `hifiedit eval recon --methods ddim,rectified` JSON, whose PSNR plot
and comparison grid are copied next to the card.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

from hifiedit.errors import HifieditError
from hifiedit.train.release import card_tail, checked_run, machines_line, staged_release

MAX_BYTES = 20 * 2**20  # the default rectifier ≤ 20 MB: the package stays small


def plot_training(log_csv: Path, reference: dict, path: Path) -> None:
    """Training loss, and held-out PSNR of the EMA rectifier against plain DDIM (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(log_csv.open()))
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.3))
    ax[0].plot([int(r["step"]) for r in rows], [float(r["loss"]) for r in rows], lw=0.8)
    ax[0].set(xlabel="step", ylabel="training loss (see config: target, loss)")
    for key in [k for k in rows[0] if k.startswith("val_psnr_")] if rows else []:
        s = key.removeprefix("val_psnr_")
        val = [(int(r["step"]), float(r[key])) for r in rows if r[key]]
        if val:
            line, = ax[1].plot(*zip(*val), "o-", ms=3, label=f"rectified, S={s}")
            if s in reference:
                ax[1].axhline(reference[s], ls="--", color=line.get_color(), label=f"DDIM, S={s}")
    ax[1].set(xlabel="step", ylabel="PSNR (dB), val split")
    ax[1].legend(fontsize=7)
    for a in ax:
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _table(report: dict) -> str:
    by = {(r["method"], r["steps"]): r for r in report["rows"]}
    steps = sorted({r["steps"] for r in report["rows"]})
    lines = ["| S | DDIM PSNR (dB) | rectified PSNR (dB) | gain (dB) | DDIM SSIM | rectified SSIM |",
             "|---|---|---|---|---|---|"]
    for s in steps:
        d, r = by.get(("ddim", s)), by.get(("rectified", s))
        if d and r:
            lines.append(f"| {s} | {d['psnr']:.2f} | {r['psnr']:.2f} | {r['psnr'] - d['psnr']:+.2f} "
                         f"| {d['ssim']:.3f} | {r['ssim']:.3f} |")
    return "\n".join(lines)


def release_rectifier_model(run: Path, dest: Path, eval_json: Path | None = None,
                            force: bool = False) -> Path:
    run, dest = Path(run), Path(dest)
    weights = run / "rectifier" / "model.safetensors"
    state = checked_run(run, weights, MAX_BYTES, "rectifier")
    report = json.loads(Path(eval_json).read_text()) if eval_json else None
    if report is not None and not any(r["method"] == "rectified" for r in report["rows"]):
        raise HifieditError(f"{eval_json} has no rectified rows: run `hifiedit eval recon "
                            "--methods ddim,rectified --rectifier RUN/rectifier`.")
    with staged_release(run / "rectifier", dest, force, eval_json) as tmp:
        _write_card(tmp, run, dest, state, report, weights.stat().st_size)
    return dest


def _write_card(tmp: Path, run: Path, dest: Path, state: dict, report, n_bytes: int) -> None:
    config = state["config"]
    plot_training(run / "log.csv", state.get("val_psnr_ddim", {}), tmp / "training.png")
    rows = list(csv.DictReader((run / "log.csv").open()))
    its = [float(r["it_per_s"]) for r in rows[-20:]]
    n_layers = len(json.loads((tmp / "config.json").read_text())["layers"])
    init_line = (f"\n- started from the rectifier `{Path(state['init_from']).name}` (trained for an earlier "
                 "base model) and fine-tuned for this one" if state.get("init_from") else "")
    card = f"""# {dest.name}: the rectifier for the default base model

The hypernetwork R_φ of Hou, Wei & Chen (AAAI 2024): from the original image x0 and each step's
estimate P_t it modulates the frozen base U-Net's **{n_layers} mid- and up-block convolutions**,
θ̂ = θ ⊙ (1 + Δ), so that DDIM reconstruction stays faithful at few steps. Trained by
`hifiedit train rectifier` on {state['n_train_images']} images of the OpenMoji **train split**
(the test split never seen); these are the EMA weights.

- base model: `{Path(state['base']).name}` (content hash `{state['base_digest'][:16]}…`); use it
  with that model only
- {state['n_params'] / 1e6:.2f} M parameters, {n_bytes / 2**20:.1f} MB{init_line}
- steps: **{state['step']}** (batch {config['batch_size']}, lr {config['lr']}, t0 {config['t0']},
  step grids {config['step_grids']}, roll-outs of up to {config['rollout_max']} rectified steps)
- training wall time: {state['wall_seconds'] / 3600:.2f} h; recent speed
  {sum(its) / max(1, len(its)):.2f} it/s
- machine: {machines_line(state)}

![training](training.png)

## Reconstruction on the test split
"""
    if report:
        for key, name in (("plot", "psnr_vs_steps.png"), ("comparison_grid", "comparison.png")):
            if report.get(key) and Path(report[key]).is_file():
                shutil.copyfile(report[key], tmp / name)
        inverted = [r for r in report["rows"] if r["method"] != "sdedit"]
        s_for = ("S_for = S_gen" if all(r["s_for"] == r["steps"] for r in inverted)
                 else f"S_for = {inverted[0]['s_for']}")
        card += (f"\n`hifiedit eval recon --methods ddim,rectified --rectifier "
                 f"{report.get('rectifier', '…')} --split {report['split']} "
                 f"--t0 {report['t0']} --limit {report['n_images']}` (the first "
                 f"{report['n_images']} images of the split, {s_for}; {report.get('machine', '')}):"
                 f"\n\n{_table(report)}\n")
        if (tmp / "psnr_vs_steps.png").is_file():
            card += "\n![PSNR vs steps](psnr_vs_steps.png)\n"
        if (tmp / "comparison.png").is_file():
            card += ("\nOriginal | DDIM@6 | rectified@6 | DDIM@40 | rectified@40:\n\n"
                     "![comparison](comparison.png)\n")
    else:
        card += "\nNot measured for this release.\n"
    card += card_tail([
        f"hifiedit train rectifier --base default --config configs/rectifier-openmoji32.json --out {run}",
        f"hifiedit train rectifier --base default --out {run} --resume     # after an interruption",
        f"hifiedit eval recon --methods ddim,rectified --rectifier {run}/rectifier "
        f"--limit {report['n_images'] if report else 64} --json FILE",
        f"hifiedit release rectifier --run {run} --to {dest} --eval-json FILE",
    ], config)
    (tmp / "README.md").write_text(card)
