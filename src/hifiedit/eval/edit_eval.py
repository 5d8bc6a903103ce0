"""`hifiedit eval edit`: trained edits measured against the true edit (DESIGN §3).

One row per (edit, S_gen). Images: the split's sources that carry the edit's source attribute
and have a *true* target (OpenMoji skin-tone and man ↔ woman pairs, :func:`edit_pairs`), or,
for an edit with no ground truth (e.g. neutral → smiling), every split image that carries the
source attribute. Each edit is applied exactly as `hifiedit edit` applies it: DDIM inversion
with θ (S_for, default S_gen), generation with ψ at S_gen, rectified when the edit was
trained with a rectifier.

- `gt_mae`, `gt_psnr`: edited vs the true target, on [0, 1] pixels (pair edits only).
- `preserve_mae`: edited vs source on the pixels the edit should leave alone: those where the
  source and the true target agree, max over channels |src − tgt| < ``PRESERVE_THRESHOLD``
  = 0.05 in [0, 1] units (13 of 255 levels: above the anti-aliasing noise between two renders
  of one glyph, far below any tone or gender change). Mean over those pixels per image, then
  over images. `preserve_fraction` is the mean share of such pixels.
- `change_mae`: edited vs the true target on the other pixels, those the edit should change
  (the skin, the hair): how far the edit got. gt_mae is roughly preserve_fraction ×
  preserve_mae + (1 − preserve_fraction) × change_mae, so the two say which part of the error
  is damage and which is an edit left undone or overdone.
- `s_dir`: directional CLIP similarity cos(E_I(edit) − E_I(src), ΔT) measured with the
  **judge** CLIP, never with the CLIP that guided training: the CLIP given by ``--judge`` must
  be marked ``role: judge`` (:data:`hifiedit.guidance.clip.ROLE_FILE`), which training refuses
  to load.
- `judge_acc`: the judge's zero-shot verdict per image, as `eval clip` classifies tones: is the
  edited image closer to its own glyph's name with the target attribute ("thumbs up dark skin
  tone") than with the source attribute ("thumbs up light skin tone")? Text embeddings are the
  prompt ensemble. When the target text names no attribute of the data, the edit's own
  src/tgt texts are compared instead.
- `train_s_per_iter` from the edit's config; `edit_s_per_image`: measured wall time of
  inversion + generation, per image.

Beside the rows, ``references`` (on by default) puts every score in context, per pair of
texts: the source left **unchanged** (the gt error of doing nothing; the judge's verdict on
an unedited source) and the source **reconstructed** with no edit at each S_gen (the error
that inversion + generation alone add). An edit whose gt_mae is not below "unchanged" has
not moved the image towards its true target.

The grid is the paper's Figure 5 turned on its side: one column per image, rows source | true
target | each (edit, S_gen), one block per (src, tgt) pair of texts.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from hifiedit.data.attributes import EditAttributes, edit_attributes, select_images
from hifiedit.errors import HifieditError
from hifiedit.runtime import machine_description, resolve_runtime, write_text_atomic

PRESERVE_THRESHOLD = 0.05


@dataclass(frozen=True)
class EditEvalConfig:
    edits: tuple = ()
    model: str = "default"
    split: str = "test"
    steps: tuple = (6, 40)
    t0: int | None = None  # None: each edit's training t0
    s_for: int | None = None  # None: S_for = S_gen, as `hifiedit edit`
    judge: str = "judge"
    # None: each rectified edit uses the rectifier it was trained with (else the shipped one);
    # "none": no rectifier; or a rectifier folder for every edit.
    rectifier: str | None = None
    limit: int | None = None
    # Reference rows beside the edits: the source unchanged and reconstructed with no edit.
    references: bool = True
    batch_size: int = 16
    grid_images: int = 8

    def validate(self) -> None:
        if not self.edits:
            raise HifieditError("eval edit needs at least one --edit.")
        if not self.steps or any(s < 1 for s in self.steps):
            raise HifieditError(f"--steps must be positive integers, got {list(self.steps)}.")
        if self.limit is not None and self.limit < 1:
            raise HifieditError("--limit must be ≥ 1.")
        if self.batch_size < 1 or self.grid_images < 0:
            raise HifieditError("batch_size must be ≥ 1 and grid_images ≥ 0.")


# --------------------------------------------------------------------------- what an edit asks


def attribute_names(record, attrs: EditAttributes) -> tuple[str, str]:
    """(source name, target name) of one glyph for the judge's verdict: its own name with the
    attribute set to the source and to the target value; the edit's texts when the target
    names no attribute of the data."""
    from hifiedit.data.captions import tone_phrases, with_gender, with_tone

    if attrs.target is None:
        return attrs.src, attrs.tgt
    if attrs.field == "skin_tone":
        return tuple(with_tone(record.tone_base, v) for v in (attrs.source, attrs.target))
    if attrs.field == "gender":
        suffix = "".join(f" {p}" for p in tone_phrases(record))
        return tuple(with_gender(record.tone_base, v) + suffix for v in (attrs.source, attrs.target))
    words = record.name.split(" ")  # expression: swap the word in the glyph's name
    if attrs.source not in words:
        # "neutral" stands for every face without a smile (has_attribute); "fearful face"
        # has no word to swap (its two names would be equal), so the edit's texts decide.
        return attrs.src, attrs.tgt
    return tuple(" ".join(v if w == attrs.source else w for w in words)
                 for v in (attrs.source, attrs.target))


# --------------------------------------------------------------------------- metrics


def gt_errors(edited: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image (MAE, PSNR) of edited vs true target, images in [-1, 1], metrics on [0, 1]."""
    from hifiedit.eval.metrics import mae, psnr, to_unit

    a, b = to_unit(edited), to_unit(target)
    return mae(a, b), psnr(a, b)


def preserve_mask(source: torch.Tensor, target: torch.Tensor,
                  threshold: float = PRESERVE_THRESHOLD) -> torch.Tensor:
    """(N, 1, H, W) bool: pixels where source and true target agree, i.e. what the edit
    should not change (max over channels of |src − tgt| < threshold, [0, 1] units)."""
    from hifiedit.eval.metrics import to_unit

    return (to_unit(source) - to_unit(target)).abs().amax(1, keepdim=True) < threshold


def masked_errors(edited: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-image MAE of edited vs reference over the masked pixels (NaN for an empty mask)."""
    from hifiedit.eval.metrics import to_unit

    err = (to_unit(edited) - to_unit(reference)).abs().mean(1, keepdim=True)
    m = mask.to(err.dtype)
    return (err * m).flatten(1).sum(1) / m.flatten(1).sum(1)


def preserve_errors(edited: torch.Tensor, source: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-image MAE of edited vs source where the edit should change nothing (``mask``)."""
    return masked_errors(edited, source, mask)


def change_errors(edited: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-image MAE of edited vs the true target where the edit should change the image
    (outside the preserve ``mask``): how well the edit did what was asked."""
    return masked_errors(edited, target, ~mask)


def _mean(values: torch.Tensor) -> float | None:
    values = values[~values.isnan()]
    return values.mean().item() if len(values) else None


def judge_scores(judge, edited: torch.Tensor, src_emb: torch.Tensor, records,
                 attrs: EditAttributes) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image S_dir along the edit's text direction and the judge's verdict (1 = the
    edited image is closer to its target name than to its source name)."""
    from hifiedit.guidance.clip import image_embeddings
    from hifiedit.guidance.losses import ensemble_text_embeddings, s_dir, text_direction

    emb = image_embeddings(judge, edited)
    direction = text_direction(judge, attrs.src, attrs.tgt).float().cpu()
    names = [n for r in records for n in attribute_names(r, attrs)]
    text = ensemble_text_embeddings(judge, names).view(len(records), 2, -1)
    scores = torch.einsum("nd,ncd->nc", emb, text)
    return s_dir(emb, src_emb, direction), (scores[:, 1] > scores[:, 0]).float()


# --------------------------------------------------------------------------- loading


def load_judge(name: str, device: str | torch.device = "cpu",
               compute_dtype: torch.dtype = torch.float32):
    """The judge CLIP, refusing any CLIP not marked as a judge (a guide must never grade)."""
    from hifiedit.guidance.clip import ROLE_FILE, clip_role, load_clip, resolve_clip_path

    path = resolve_clip_path(name, allow_judge=True)
    if clip_role(path) != "judge":
        raise HifieditError(
            f"--judge {name}: {path} is not a judge CLIP (role {clip_role(path)!r}). Edits are "
            f"scored only by a CLIP that never guided one: train one with `hifiedit train clip "
            f"--config configs/judge-openmoji32.json`, or mark a folder with {ROLE_FILE} "
            '{"role": "judge"}.')
    # Evaluation is the one place that may.
    return load_clip(path, allow_judge=True, device=device, compute_dtype=compute_dtype)


def edit_label(name_or_path: str) -> str:
    """How a row names an edit: a shipped name as given; a folder by its name, or by its run's
    name for the `OUT/edit` folder that `train edit` writes."""
    path = Path(name_or_path)
    if not path.exists():
        return str(name_or_path)
    path = path.resolve()
    return path.parent.name if path.name == "edit" else path.name


class _Rectifiers:
    """Rectifiers by folder, loaded once: each rectified edit is evaluated with the rectifier
    it was trained with unless the run overrides it."""

    def __init__(self, backbone, override: str | None):
        self.backbone, self.override, self.loaded = backbone, override, {}

    def for_edit(self, edit):
        """(rectifier, its portable name) for one edit, or (None, None) for a plain edit."""
        from hifiedit.rectifier import resolve_rectifier_path

        if not edit.rectified or self.override == "none":
            return None, None
        if self.override is not None:
            path = resolve_rectifier_path(self.override)
        else:  # the trained one: a shipped name or a folder; a path from another machine → default
            try:
                path = resolve_rectifier_path(edit.info.get("rectifier") or "default")
            except HifieditError:
                path = resolve_rectifier_path("default")
        if path is None:
            raise HifieditError(f"edit {edit.name} was trained with a rectifier "
                                f"({edit.info.get('rectifier')}) that is not here and none is "
                                "shipped: pass --rectifier PATH or none.")
        return self.load(path)

    def load(self, path):
        from hifiedit.models import portable_name

        key = str(Path(path).resolve())
        if key not in self.loaded:
            from hifiedit.rectifier import Rectifier

            self.loaded[key] = Rectifier.load_frozen(path, self.backbone)
        return self.loaded[key], portable_name(path)


def _block(data, config: EditEvalConfig, attrs: EditAttributes, judge) -> dict:
    """The images one (src, tgt) pair of texts is measured on, with what every score needs."""
    from hifiedit.guidance.clip import image_embeddings

    chosen = select_images(data, config.split, attrs, config.limit)
    sources = data.tensor_at([s for s, _ in chosen])
    targets = data.tensor_at([t for _, t in chosen]) if attrs.ground_truth else None
    return {"attrs": attrs, "sources": sources, "targets": targets,
            "records": [data.records[s] for s, _ in chosen],
            "src_emb": image_embeddings(judge, sources),
            "mask": preserve_mask(sources, targets) if targets is not None else None, "rows": {}}


def _scores(block: dict, edited: torch.Tensor, judge) -> dict:
    """The metrics of one set of outputs against the block's sources and true targets."""
    sdir, verdict = judge_scores(judge, edited, block["src_emb"], block["records"], block["attrs"])
    scores = {"ground_truth": block["attrs"].ground_truth, "gt_mae": None, "gt_psnr": None,
              "preserve_mae": None, "change_mae": None, "preserve_fraction": None}
    if block["targets"] is not None:
        gt_mae, gt_psnr = gt_errors(edited, block["targets"])
        scores.update(gt_mae=gt_mae.mean().item(), gt_psnr=gt_psnr.mean().item(),
                      preserve_mae=_mean(preserve_errors(edited, block["sources"], block["mask"])),
                      change_mae=_mean(change_errors(edited, block["targets"], block["mask"])),
                      preserve_fraction=block["mask"].float().mean().item())
    return {**scores, "s_dir": sdir.mean().item(), "judge_acc": verdict.mean().item()}


def _reference_rows(block: dict, config: EditEvalConfig, pipe, rect_name: str | None,
                    judge) -> list[dict]:
    """What the edits are measured against: the source left unchanged (the error of doing
    nothing, and how often the judge already sees the target in a source) and the source
    reconstructed with no edit at each S_gen (what inversion + generation alone cost),
    rectified with the rectifier of the block's first rectified edit, if any."""
    a, sources, t0 = block["attrs"], block["sources"], block["t0"]
    common = {"src": a.src, "tgt": a.tgt, "t0": t0, "n_images": len(sources)}
    refs = [{"reference": "unchanged", "rectifier": None, "steps": None, **common,
             **_scores(block, sources, judge)}]
    for steps in config.steps:
        out = torch.cat([pipe.reconstruct(b, steps=steps, t0=t0, s_for=config.s_for)
                         for b in sources.split(config.batch_size)]).cpu()
        refs.append({"reference": "reconstruction", "rectifier": rect_name, "steps": steps, **common,
                     **_scores(block, out, judge)})
    return refs


# --------------------------------------------------------------------------- the run


def run_edit_eval(config: EditEvalConfig, json_path: Path | None = None,
                  grid_path: Path | None = None, force: bool = False, progress: bool = True,
                  backbone=None, data=None, device: str | torch.device = "cpu",
                  precision: str = "fp32") -> dict:
    """Evaluate every (edit, S_gen) and return the report; optionally write the JSON and the
    grid. `backbone` and `data` (an `OpenMojiSet`) override loading them. `device` and
    `precision`: where and at what precision the U-Net and the judge run
    (:func:`hifiedit.runtime.resolve_runtime`)."""
    from tqdm import tqdm

    from hifiedit.diffusion.backbone import load_backbone
    from hifiedit.edit import load_edit
    from hifiedit.models import portable_name
    from hifiedit.eval.recon import _check_outputs
    from hifiedit.pipeline import HifiEditPipeline

    config.validate()
    json_path = Path(json_path) if json_path is not None else None
    grid_path = Path(grid_path) if grid_path is not None else None
    _check_outputs([json_path, grid_path], force)
    rt = resolve_runtime(device, precision)
    judge = load_judge(config.judge, rt.device, rt.dtype)
    backbone = backbone or load_backbone(config.model, device=rt.device, compute_dtype=rt.dtype)
    edits = [(edit_label(e), load_edit(e, backbone)) for e in config.edits]
    if data is None:
        from hifiedit.data.openmoji import load_openmoji

        data = load_openmoji(backbone.sample_size, progress=progress)
    if data.images.shape[1] != backbone.sample_size:
        raise HifieditError(f"the images are {data.images.shape[1]}px but the model works at "
                            f"{backbone.sample_size}px.")
    rectifiers = _Rectifiers(backbone, config.rectifier)

    rows, references, blocks = [], [], {}
    jobs = [(label, edit, steps) for label, edit in edits for steps in config.steps]
    bar = tqdm(total=len(jobs), desc="eval edit", disable=not progress)
    for label, edit in edits:
        if not edit.info.get("src") or not edit.info.get("tgt"):
            raise HifieditError(f"edit {label} records no src/tgt texts; it cannot be evaluated.")
        attrs = edit_attributes(edit.info["src"], edit.info["tgt"])
        rect, rect_path = rectifiers.for_edit(edit)
        pipe = HifiEditPipeline(backbone, rect)
        edit.unet(backbone)  # build ψ (and check its base) outside the timed loop
        t0 = config.t0 if config.t0 is not None else edit.t0
        if (attrs.src, attrs.tgt) not in blocks:
            blocks[(attrs.src, attrs.tgt)] = {**_block(data, config, attrs, judge), "t0": t0}
        block = blocks[(attrs.src, attrs.tgt)]
        if rect is not None and "rectifier" not in block:
            block["rectifier"] = (rect, rect_path)  # the reconstruction reference's
        for steps in config.steps:
            start = time.perf_counter()
            edited = torch.cat([pipe.edit(b, edit, steps=steps, t0=config.t0, s_for=config.s_for)
                                for b in block["sources"].split(config.batch_size)]).cpu()
            seconds = time.perf_counter() - start
            row = {"edit": label, "method": edit.info.get("method"),
                   "markovian_variant": edit.info.get("markovian_variant"),
                   "rectifier": rect_path, "src": attrs.src, "tgt": attrs.tgt, "steps": steps,
                   "t0": t0, "t_edit": edit.t_edit, "s_for": config.s_for or steps,
                   **_scores(block, edited, judge),
                   "train_s_per_iter": edit.info.get("train_s_per_iter"),
                   "edit_s_per_image": seconds / len(edited), "n_images": len(edited)}
            rows.append(row)
            block["rows"][f"{label}@{steps}"] = edited
            bar.update(1)
    bar.close()
    if config.references:
        for block in tqdm(blocks.values(), desc="no-edit references", disable=not progress):
            rect, rect_path = block.get("rectifier", (None, None))
            references += _reference_rows(block, config, HifiEditPipeline(backbone, rect),
                                          rect_path, judge)

    report = {"model": portable_name(config.model), "split": config.split, "judge": portable_name(judge.path),
              "preserve_threshold": PRESERVE_THRESHOLD, "machine": machine_description(),
              "rows": rows, "references": references}
    if grid_path is not None:
        save_edit_grid(list(blocks.values()), grid_path, config.grid_images)
        report["grid"] = portable_name(grid_path)
    if json_path is not None:
        write_text_atomic(json_path, json.dumps(report, indent=1) + "\n")
    return report


def save_edit_grid(blocks: list[dict], path: Path, n_images: int = 8) -> Path:
    """One column per image, rows: source | true target (when known) | each edit@S_gen; one
    block of rows per (src, tgt). Blocks with fewer images are padded with white."""
    from hifiedit.eval.grids import save_grid

    width = max(min(n_images, len(b["sources"])) for b in blocks)
    rows, labels = [], []
    for b in blocks:
        a = b["attrs"]
        named = [(f"source: {a.source}", b["sources"])]
        if b["targets"] is not None:
            named.append((f"true target: {a.target}", b["targets"]))
        named += list(b["rows"].items())
        for label, images in named:
            images = images[:width]
            pad = torch.ones((width - len(images), *images.shape[1:]), dtype=images.dtype)
            rows.append(torch.cat([images, pad]))
            labels.append(label)
    return save_grid(torch.cat(rows), path, nrow=width, scale=3, row_labels=labels)


def format_table(report: dict) -> str:
    def f(v, spec):
        return "n/a" if v is None else format(v, spec)

    def line(name, method, rect, steps, r):
        return (f"{name[:28]:28} {method[:15]:15} {'yes' if rect else 'no':>4} "
                f"{'-' if steps is None else steps:>5} {r['n_images']:>4} {f(r['gt_mae'], '7.4f'):>7} "
                f"{f(r['gt_psnr'], '7.2f'):>7} {f(r['preserve_mae'], '8.4f'):>8} "
                f"{f(r['change_mae'], '8.4f'):>8} {f(r['s_dir'], '6.3f'):>6} "
                f"{f(r['judge_acc'], '5.2f'):>5} "
                f"{f(r.get('train_s_per_iter'), '6.2f'):>6} {f(r.get('edit_s_per_image'), '6.3f'):>6}")

    lines = [f"split {report['split']}  judge {report['judge']}",
             f"{'edit':28} {'method':15} {'rect':>4} {'steps':>5} {'n':>4} {'gt_MAE':>7} "
             f"{'gt_PSNR':>7} {'keep_MAE':>8} {'chg_MAE':>8} {'S_dir':>6} {'acc':>5} "
             f"{'s/iter':>6} {'s/img':>6}"]
    lines += [line(r["edit"], r["method"] or "?", r["rectifier"], r["steps"], r) for r in report["rows"]]
    pair = None
    for r in report.get("references", []):
        if (r["src"], r["tgt"]) != pair:
            pair = (r["src"], r["tgt"])
            lines.append(f"no edit, {r['src']} → {r['tgt']}:")
        lines.append(line(f"  ({r['reference']})", "no edit", r["rectifier"], r["steps"], r))
    return "\n".join(lines)
