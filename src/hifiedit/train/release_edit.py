"""Turning an edit training run into a shipped edit with a model card.

`hifiedit release edit --run RUN --to DIR [--eval-json FILE]` copies the run's exported edit
(``config.json`` + ``edit.safetensors``, ≤ 2 MB), records the base model and rectifier by
shipped name where they are shipped ones (so the edit finds them on any installation), and
writes a card whose figures come from the run's own files (state, log.csv) or from an
`hifiedit eval edit` JSON (its rows for this edit, and its grid).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

from hifiedit.edit.params import MAX_DEFAULT_CHECKPOINT_BYTES, WEIGHTS_NAME
from hifiedit.errors import HifieditError
from hifiedit.train.release import card_tail, checked_run, machines_line, staged_release


def plot_loss(log_csv: Path, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(log_csv.open()))
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot([int(r["step"]) for r in rows], [float(r["loss"]) for r in rows], lw=0.9)
    ax.set(xlabel="iteration", ylabel="λ_dir·directional + λ_L1·L1")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _fmt(v, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def eval_table(rows: list[dict], references: list[dict] = ()) -> str:
    """The edit's rows, then the report's no-edit references for the same texts."""
    lines = ["| output | S_gen | gt MAE | gt PSNR (dB) | preserve MAE | S_dir (judge) | judge acc | n |",
             "|---|---|---|---|---|---|---|---|"]
    named = [("this edit", r) for r in rows]
    named += [(f"no edit: source {r['reference']}", r) for r in references]
    for name, r in named:
        lines.append(f"| {name} | {_fmt(r['steps'], 'd')} | {_fmt(r['gt_mae'], '.4f')} "
                     f"| {_fmt(r['gt_psnr'], '.2f')} | {_fmt(r['preserve_mae'], '.4f')} "
                     f"| {r['s_dir']:.3f} | {r['judge_acc']:.2f} | {r['n_images']} |")
    return "\n".join(lines)


def release_edit_model(run: Path, dest: Path, eval_json: Path | None = None,
                       force: bool = False) -> Path:
    from hifiedit.models import portable_name
    from hifiedit.eval.edit_eval import edit_label

    run, dest = Path(run), Path(dest)
    folder = run / "edit"
    weights = folder / WEIGHTS_NAME
    state = checked_run(run, weights, MAX_DEFAULT_CHECKPOINT_BYTES, "edit")
    rows, report = [], None
    if eval_json:
        report = json.loads(Path(eval_json).read_text())
        label = edit_label(str(folder))
        rows = [r for r in report["rows"] if r["edit"] == label]
        if not rows:
            raise HifieditError(f"{eval_json} has no rows for edit {label!r}: run `hifiedit eval "
                                f"edit --edit {folder}`.")
    with staged_release(folder, dest, force, eval_json) as tmp:
        config = json.loads((tmp / "config.json").read_text())
        for key in ("base_model", "rectifier"):
            if config.get(key):
                config[key] = portable_name(config[key])
        (tmp / "config.json").write_text(json.dumps(config, indent=1) + "\n")
        plot_loss(run / "log.csv", tmp / "training.png")
        if report and report.get("grid") and Path(report["grid"]).is_file():
            shutil.copyfile(report["grid"], tmp / "grid.png")
        _write_card(tmp, run, dest, state, config, report, rows, weights.stat().st_size)
    return dest


def train_command(training: dict, out: Path) -> str:
    t = training
    return (f'hifiedit train edit --src "{t["src"]}" --tgt "{t["tgt"]}" --method {t["method"]}'
            + (f' --markovian-variant {t["markovian_variant"]}' if t["method"] == "markovian" else "")
            + f' --rectifier {t["rectifier"]}'
            + (f' --clip {t["clip"]}' if t.get("clip", "default") != "default" else "")
            + f' --images {t["images"]} --t0 {t["t0"]}'
            f' --s-for {t["s_for"]} --s-train {t["s_train"]}'
            + (f' --t-edit {t["t_edit"]}' if t.get("t_edit") else "")
            + f' --iters {t["iters"]} --lr {t["lr"]}'
            f' --w-dir {t["w_dir"]} --w-l1 {t["w_l1"]} --out {out}')


def _interval(config: dict) -> str:
    t_edit = config.get("t_edit") or 0
    return (f"the edit acts at levels t ≥ {t_edit} (the base finishes below)" if t_edit
            else "the edit acts at every level")


def _write_card(tmp: Path, run: Path, dest: Path, state: dict, config: dict, report, rows,
                n_bytes: int) -> None:
    t = config["training"]
    how = ("score matching (ours): random points of the cached original inversion "
           "trajectories, one edited pass each" if config["method"] == "score-matching" else
           f"DiffusionCLIP's Markovian fine-tuning ({config['markovian_variant']} backprop "
           f"through an S_train = {config['s_train']} chain)")
    card = f"""# {dest.name}: "{config['src']}" → "{config['tgt']}"

A text-driven edit for the default base model, trained by `hifiedit train edit` on
{config['n_train_images']} train-split OpenMoji images that carry the source attribute (the
test split never seen), guided by the directional CLIP loss of the guide CLIP
(`{t['clip']}`, never the judge) + L1.

- method: {how}
- rectifier: {config.get('rectifier') or 'none'}
- base model: `{config['base_model']}` (content hash `{config['base_digest'][:16]}…`); refused
  with any other base
- edit parameters: {t['param_method']} (rank {t['rank']}), {n_bytes / 2**20:.2f} MB
- t0 {config['t0']}, {_interval(config)}, S_for {config['s_for']}, S_train {config['s_train']}; {state['step']}
  iterations of batch {t['batch_size']}, lr {t['lr']} (constant), λ_dir {t['w_dir']},
  λ_L1 {t['w_l1']}
- training: {state['wall_seconds'] / 60:.1f} min, {config['train_s_per_iter']:.2f} s/iteration
- machine: {machines_line(state)}

Use it:

    hifiedit edit IMAGE --edit {dest.name} --steps 6 -o edited.png

![training loss](training.png)

## Measured on the {report['split'] if report else 'test'} split
"""
    if report:
        refs = [r for r in report.get("references", [])
                if (r["src"], r["tgt"]) == (config["src"], config["tgt"])]
        card += (f"\n`hifiedit eval edit --edit {dest.name} --split {report['split']} --steps "
                 f"{','.join(str(r['steps']) for r in rows)}` (judge: the independent judge CLIP; "
                 f"{report.get('machine', '')}):\n\n{eval_table(rows, refs)}\n")
        if (tmp / "grid.png").is_file():
            card += "\nSource | true target | edits (rows):\n\n![grid](grid.png)\n"
    else:
        card += "\nNot measured for this release.\n"
    card += card_tail([train_command(t, run),
                       f"hifiedit release edit --run {run} --to {dest} --eval-json FILE"], t)
    (tmp / "README.md").write_text(card)
