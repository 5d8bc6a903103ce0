"""Turning a CLIP training run into a shipped model folder with a model card.

`hifiedit release clip --run RUN --to DIR [--eval-json FILE]` copies the run's exported CLIP
folder and writes a model card whose every figure comes from the run's own files
(checkpoint state, log.csv) or from an `hifiedit eval clip` JSON.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from hifiedit.errors import HifieditError
from hifiedit.train.release import card_tail, staged_release

MAX_BYTES = 10 * 2**20  # each shipped CLIP ≤ 10 MB: the package stays small
_KEYS = ("skin_tone_acc", "gender_acc", "retrieval_top1", "retrieval_top5", "pair_direction_cos")


def _plot(log_csv: Path, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(log_csv.open()))
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.3))
    ax[0].plot([int(r["step"]) for r in rows], [float(r["loss"]) for r in rows], lw=0.8)
    ax[0].set(xlabel="step", ylabel="contrastive loss (train)")
    val = [r for r in rows if r["val_skin_tone_acc"]]
    for key, label in (("val_skin_tone_acc", "skin tone"), ("val_gender_acc", "gender")):
        ax[1].plot([int(r["step"]) for r in val], [float(r[key]) for r in val], "o-", ms=3,
                   label=label)
    ax[1].set(xlabel="step", ylabel="zero-shot accuracy (val split)", ylim=(0, 1))
    ax[1].legend()
    for a in ax:
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def release_clip_model(run: Path, dest: Path, eval_json: Path | None = None,
                       force: bool = False) -> Path:
    from hifiedit.guidance.clip import ROLE_FILE

    run, dest = Path(run), Path(dest)
    state_file = run / "checkpoint" / "state.json"
    if not state_file.is_file() or not (run / "model" / ROLE_FILE).is_file():
        raise HifieditError(f"{run} is not a CLIP training run (no checkpoint or model/).")
    weights = run / "model" / "model.safetensors"
    if weights.stat().st_size > MAX_BYTES:
        raise HifieditError(f"{weights} is {weights.stat().st_size / 2**20:.1f} MB; shipped CLIPs "
                            f"must be ≤ {MAX_BYTES / 2**20:.0f} MB (choose a smaller config).")
    state = json.loads(state_file.read_text())
    report = json.loads(Path(eval_json).read_text()) if eval_json else None
    with staged_release(run / "model", dest, force, eval_json) as tmp:
        _write_clip_release(tmp, run, dest, state, report)
    return dest


def _write_clip_release(tmp: Path, run: Path, dest: Path, state: dict, report) -> None:
    from hifiedit.guidance.clip import NAMED_CLIPS

    config = state["config"]
    _plot(run / "log.csv", tmp / "training.png")
    rows = list(csv.DictReader((run / "log.csv").open()))
    ips = [float(r["img_per_s"]) for r in rows[-20:]]
    role = config["role"]
    default = " and is the `default` of `load_clip`" if dest.name == NAMED_CLIPS["default"] else ""
    use = (f"Guides edits (directional CLIP loss){default}." if role == "guide" else
           "**Judge**: scores edits only. `load_clip` refuses it unless evaluation code passes "
           "`allow_judge=True`; it never guides training.")
    noise = config.get("noise_std", 0)
    augmentation = ("geometric augmentation only" if not noise else "geometric augmentation and "
                    f"Gaussian noise of a per-image std drawn from U(0, {noise})")
    start = (f" Fine-tuned from `{Path(config['init_from']).name}` (its weights and tokenizer)."
             if config.get("init_from") else "")
    card = f"""# {dest.name}: OpenMoji CLIP ({role})

A small Hugging Face `CLIPModel` ({state['n_params'] / 1e6:.2f} M parameters) with its own
byte-level BPE tokenizer, trained contrastively by `hifiedit train clip` on the **train split**
of the OpenMoji domain (captions built from names and attributes; {augmentation}; the test
split never seen).{start}

- vision: ViT, patch {config['patch_size']} on {config['image_size']}², width {config['vision_width']}, {config['vision_layers']} layers; text: width {config['text_width']}, {config['text_layers']} layers
- role: {use}
- steps: **{state['step']}** (batch {config['batch_size']}, {state['images_seen']:,} images seen, seed {config['seed']})
- training wall time: {state['wall_seconds'] / 3600:.2f} h; recent throughput {sum(ips) / max(1, len(ips)):.1f} img/s
- machine: {state.get('machine', 'not recorded')}

![training](training.png)

## Zero-shot evaluation
"""
    if report:
        flags = "".join(f' --direction "{d["src"]}" "{d["tgt"]}"' for d in report.get("directions", []))
        card += (f"\n`hifiedit eval clip --model {report['model']} --split {report['split']}{flags}` on "
                 f"{report['n_images']} images ({report.get('machine', '')}):\n\n"
                 "| metric | value |\n|---|---|\n"
                 + "".join(f"| {k} | {'n/a' if report[k] is None else f'{report[k]:.4f}'} |\n"
                           for k in _KEYS))
        if report.get("directions"):
            card += ("\nWhere its text directions and pixel gradients point (`--direction SRC TGT`; "
                     "gradient: −∇ of the directional loss at each source against the true "
                     "change):\n\n| direction | text vs image cos | gradient cos | gradient "
                     "right for | pairs |\n|---|---|---|---|---|\n")
            for d in report["directions"]:
                grad = ("– | –" if d["gradient_cos"] is None else
                        f"{d['gradient_cos']:+.4f} | {d['gradient_agreement']:.0%}")
                card += f"| {d['src']} → {d['tgt']} | {d['cos']:+.4f} | {grad} | {d['n_pairs']} |\n"
    else:
        card += "\nNot measured for this release.\n"
    card += card_tail([
        f"hifiedit train clip --config CONFIG.json --out {run}    # CONFIG.json: the config below",
        f"hifiedit train clip --out {run} --resume        # after an interruption",
        f"hifiedit eval clip --model {run}/model --split test --json FILE",
        f"hifiedit release clip --run {run} --to {dest} --eval-json FILE",
    ], config)
    (tmp / "README.md").write_text(card)
