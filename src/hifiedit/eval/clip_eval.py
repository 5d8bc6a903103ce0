"""`hifiedit eval clip`: does a CLIP see what our edits change?

All scores are zero-shot on the OpenMoji split (the test split's bases never appear in
training, so they measure generalisation to unseen glyphs):

- `skin_tone_acc`: each glyph that has a tone, or is the yellow default of a toned base, is
  classified among the 6 names of its own base ("thumbs up", "thumbs up light skin tone", …,
  "thumbs up dark skin tone"). Comparing names of the *same* glyph isolates the attribute.
- `gender_acc`: each glyph whose name says man/woman/person, among the 3 names with the gender
  words swapped ("woman cook" vs "man cook" vs "person cook"), tones kept. At 32 px many
  gender variants are (nearly) the same picture, so the report also gives `gender_ceiling`
  (the accuracy of a classifier that is right once per group of renders that no pixel tells
  apart) and `gender_acc_by_pixels` (accuracy against how many pixels tell a glyph from its
  nearest other-gender variant).
- `retrieval_top1/top5`: text → image among all split images, by full name.
- `pair_direction_cos`: mean S_dir of the true light → dark pairs along the text direction
  "light skin tone" → "dark skin tone" (what a perfect edit would score).
- `directions` (on request, `--direction SRC TGT`): for any pair of edit texts, the cosine
  between their text direction and the direction from the split's glyphs that carry the
  source attribute to those that carry the target one (mean unit image embeddings; the
  attributes parsed from the texts as `train edit` chooses its images). Checks, before any
  training, that a CLIP reads the texts the way the data shows them: near 0 or negative, an
  edit guided by these texts has nothing to follow or is pushed the wrong way. Where true
  pairs exist, also whether the CLIP's pixel gradient points from each source towards its
  true target (`gradient_cos`, `gradient_agreement`): a CLIP can order the glyphs right and
  still push pixels the wrong way.

Text embeddings are CLIP's prompt ensemble over the emoji templates. Evaluation is the one
place allowed to load the judge (`allow_judge=True`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from hifiedit.errors import HifieditError
from hifiedit.guidance.clip import image_embeddings
from hifiedit.guidance.losses import ensemble_text_embeddings
from hifiedit.models import portable_name
from hifiedit.runtime import machine_description, resolve_runtime, write_text_atomic

GENDERS = ("man", "woman", "person")
# A pixel tells two renders apart when some channel differs by more than this ([0, 1] scale):
# anti-aliasing alone moves edge pixels by less.
PIXEL_DIFFERENCE = 0.1
PIXEL_BINS = (("0", 0, 0), ("1-16", 1, 16), ("17-64", 17, 64), (">64", 65, 1 << 30))


def telling_pixels(data, index: int, others: list[int]) -> list[int]:
    """For each render in `others`, how many pixels tell it from render `index`."""
    if not others:
        return []
    images = torch.from_numpy(data.images[[index] + others]).float() / 255
    differs = (images[1:] - images[:1]).abs().amax(-1) > PIXEL_DIFFERENCE
    return differs.sum(dim=(1, 2)).tolist()


def gender_visibility(data, records, candidates: list[list[str]]) -> tuple[list[int], float]:
    """For each gender row (a record and its 3 candidate names), the pixels that tell it from
    its nearest other-gender variant in the data (all pixels when it has none), and the
    accuracy ceiling: renders no pixel tells apart form a group, and a classifier that sees
    only pixels gets one of each group right."""
    by_name = {r.name: r.index for r in data.records}
    parent = {r.index: r.index for r in records}

    def root(i):
        while parent[i] != i:
            i = parent[i]
        return i

    pixels = []
    for r, names in zip(records, candidates):
        others = [by_name[n] for n in names if n in by_name and by_name[n] != r.index]
        counts = telling_pixels(data, r.index, others)
        pixels.append(min(counts, default=data.images.shape[1] * data.images.shape[2]))
        for o, count in zip(others, counts):
            if count == 0 and o in parent:
                parent[root(r.index)] = root(o)
    groups = len({root(r.index) for r in records})
    return pixels, (groups / len(records) if records else None)


def clip_metrics(clip, data, split: str = "test") -> dict:
    """The zero-shot figures for one CLIP (`Clip`) on one split of an `OpenMojiSet`."""
    from hifiedit.data.captions import tone_phrases, toned_bases, with_gender, with_tone
    from hifiedit.data.openmoji import SKIN_TONES, edit_pairs
    from hifiedit.guidance.losses import s_dir, text_direction

    idx = data.indices(split)
    if not idx:
        raise HifieditError(f"No images in split {split!r}.")
    records = [data.records[i] for i in idx]
    row = {r.index: k for k, r in enumerate(records)}
    emb = image_embeddings(clip, data.tensor(split))

    def correct(candidates: list[list[str]], labels: list[int], rows: list[int]):
        if not rows:
            return torch.zeros(0)
        flat = [n for c in candidates for n in c]
        text = ensemble_text_embeddings(clip, flat).view(len(candidates), len(candidates[0]), -1)
        scores = torch.einsum("nd,ncd->nc", emb[rows], text)
        return (scores.argmax(1) == torch.tensor(labels)).float()

    def mean(x: torch.Tensor):
        return x.mean().item() if len(x) else None

    # Skin tone: 6 classes, no modifier + 5 tones.
    toned = toned_bases(records)
    classes = (None,) + SKIN_TONES
    tone_rows, tone_cands, tone_labels = [], [], []
    for k, r in enumerate(records):
        if r.skin_tone in SKIN_TONES or (r.skin_tone is None and r.tone_base in toned):
            tone_rows.append(k)
            tone_cands.append([with_tone(r.tone_base, t) for t in classes])
            tone_labels.append(classes.index(r.skin_tone))

    # Gender: 3 classes, tones kept.
    g_rows, g_cands, g_labels = [], [], []
    for k, r in enumerate(records):
        if r.gender in GENDERS:
            suffix = "".join(f" {p}" for p in tone_phrases(r))
            g_rows.append(k)
            g_cands.append([with_gender(r.tone_base, g) + suffix for g in GENDERS])
            g_labels.append(GENDERS.index(r.gender))

    g_correct = correct(g_cands, g_labels, g_rows)
    g_pixels, g_ceiling = gender_visibility(data, [records[k] for k in g_rows], g_cands)
    g_pixels = torch.tensor(g_pixels, dtype=torch.long)
    by_pixels = []
    for label, lo, hi in PIXEL_BINS:
        mask = (g_pixels >= lo) & (g_pixels <= hi)
        by_pixels.append({"pixels": label, "n": int(mask.sum()), "acc": mean(g_correct[mask])})

    # Retrieval: every name against every image of the split.
    names = [r.name for r in records]
    sims = ensemble_text_embeddings(clip, names) @ emb.T
    top = sims.topk(min(5, len(records)), dim=1).indices
    hits = torch.tensor([[names[j] == names[q] for j in top[q].tolist()]
                         for q in range(len(records))])

    pairs = [p for p in edit_pairs(records) if p.kind == "skin_tone"
             and p.source_attr == "light" and p.target_attr == "dark"]
    pair_cos = None
    if pairs:
        direction = text_direction(clip, "light skin tone", "dark skin tone").float().cpu()
        src = emb[[row[p.source] for p in pairs]]
        tgt = emb[[row[p.target] for p in pairs]]
        pair_cos = s_dir(tgt, src, direction).mean().item()

    return {
        "skin_tone_acc": mean(correct(tone_cands, tone_labels, tone_rows)),
        "gender_acc": mean(g_correct),
        "gender_ceiling": g_ceiling,
        "gender_acc_by_pixels": by_pixels,
        "retrieval_top1": hits[:, 0].float().mean().item(),
        "retrieval_top5": hits.any(1).float().mean().item(),
        "pair_direction_cos": pair_cos,
        "n_images": len(records),
        "n_skin_tone": len(tone_rows),
        "n_gender": len(g_rows),
        "n_pairs": len(pairs),
    }


def direction_alignment(clip, data, split: str, src: str, tgt: str, max_pairs: int = 256) -> dict:
    """cos(text direction src → tgt, image direction source glyphs → target glyphs) on one
    split, with the two groups' sizes; for texts with true pairs (skin tone, man ↔ woman) also
    where the CLIP's *gradient* sends an edit (:func:`gradient_cos`): `gradient_cos` (mean)
    and `gradient_agreement` (share of pairs with a positive cosine)."""
    import torch.nn.functional as F

    from hifiedit.data.attributes import edit_attributes, has_attribute, select_images, source_attribute
    from hifiedit.guidance.losses import text_direction

    groups = []
    for text in (src, tgt):
        try:
            field, value = source_attribute(text)
        except HifieditError as e:
            raise HifieditError(f"--direction {src!r} {tgt!r}: {text!r} names no skin tone, "
                                "man/woman/person or facial expression of the data.") from e
        idx = [i for i in data.indices(split) if has_attribute(data.records[i], field, value)]
        if not idx:
            raise HifieditError(f"--direction: no {split}-split glyph has {field} = {value!r} "
                                f"(from {text!r}).")
        groups.append(idx)
    mean_src, mean_tgt = (image_embeddings(clip, data.tensor_at(idx)).mean(0) for idx in groups)
    image_direction = F.normalize(mean_tgt - mean_src, dim=-1)
    direction = text_direction(clip, src, tgt).float()
    report = {"src": src, "tgt": tgt, "cos": (image_direction @ direction.cpu()).item(),
              "n_src": len(groups[0]), "n_tgt": len(groups[1]),
              "gradient_cos": None, "gradient_agreement": None, "n_pairs": 0}
    attrs = edit_attributes(src, tgt)
    pairs = select_images(data, split, attrs, max_pairs) if attrs.ground_truth else []
    if pairs:
        cos = torch.cat([gradient_cos(clip, data.tensor_at([s for s, _ in chunk]),
                                      data.tensor_at([t for _, t in chunk]), direction)
                         for chunk in (pairs[i:i + 64] for i in range(0, len(pairs), 64))])
        report.update(gradient_cos=cos.mean().item(), gradient_agreement=(cos > 0).float().mean().item(),
                      n_pairs=len(pairs))
    return report


def gradient_cos(clip, sources: torch.Tensor, targets: torch.Tensor, direction: torch.Tensor,
                 seed: int = 0) -> torch.Tensor:
    """Per pair, cos(−∇ₓ directional loss at the source, true target − source): positive when
    the first small step of an edit guided by this CLIP moves the image towards its true
    target. The loss is taken 1e-2 of noise away from the source (at the source itself
    E_I(x) − E_I(x0) = 0 has no direction)."""
    from hifiedit.guidance.losses import directional_loss

    with torch.no_grad():
        ref = clip.encode_images(sources)
    noise = torch.randn(sources.shape, generator=torch.Generator().manual_seed(seed))
    x = (sources + 1e-2 * noise).requires_grad_(True)
    (grad,) = torch.autograd.grad(directional_loss(clip.encode_images(x), ref, direction), x)
    return torch.nn.functional.cosine_similarity(-grad.flatten(1), (targets - sources).flatten(1), dim=1)


def run_clip_eval(model: str = "default", split: str = "test", json_path: Path | None = None,
                  force: bool = False, image_size: int = 32, clip=None, data=None,
                  directions: tuple = (), device: str | torch.device = "cpu",
                  precision: str = "fp32") -> dict:
    """Evaluate one CLIP and return the report; optionally write it as JSON.

    Images are rendered at `image_size` (the size edits work at, 32 for the embedded domain)
    and resized to the model's input by its preprocessing, as during guidance. `device` and
    `precision`: where and at what precision the CLIP runs (:func:`hifiedit.runtime.resolve_runtime`)."""
    from hifiedit.data.openmoji import load_openmoji
    from hifiedit.guidance.clip import load_clip

    if json_path is not None:
        json_path = Path(json_path)
        if json_path.exists() and not force:
            raise HifieditError(f"{json_path} exists; pass --force to overwrite it.")
        try:
            json_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise HifieditError(f"Cannot create {json_path.parent}: {e.strerror or e}.") from e
    if clip is None:
        rt = resolve_runtime(device, precision)
        # Evaluation may read the judge.
        clip = load_clip(model, allow_judge=True, device=rt.device, compute_dtype=rt.dtype)
    data = data or load_openmoji(image_size)
    report = {"model": portable_name(model), "path": portable_name(clip.path), "role": clip.role, "split": split,
              "image_size": int(data.images.shape[1]),
              **clip_metrics(clip, data, split), "machine": machine_description()}
    if directions:
        report["directions"] = [direction_alignment(clip, data, split, s, t) for s, t in directions]
    if json_path is not None:
        write_text_atomic(json_path, json.dumps(report, indent=1) + "\n")
    return report


def _number(v: float | None, digits: int) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def format_report(report: dict) -> str:
    keys = ("skin_tone_acc", "gender_acc", "retrieval_top1", "retrieval_top5",
            "pair_direction_cos")
    lines = [f"CLIP {report['model']} ({report['role']})  split {report['split']}  "
             f"n_images {report['n_images']}"]
    lines += [f"  {k:20} {_number(report[k], 4)}" for k in keys]
    if report.get("gender_ceiling") is not None:
        bins = ", ".join(f"{b['pixels']}: {_number(b['acc'], 2)} (n {b['n']})"
                         for b in report["gender_acc_by_pixels"])
        lines.append(f"  gender ceiling {report['gender_ceiling']:.4f} (renders no pixel tells "
                     f"apart); accuracy by pixels that tell a glyph from its nearest other-gender "
                     f"variant: {bins}")
    for d in report.get("directions", []):
        grad = ("" if d["gradient_cos"] is None else f"; gradient towards the true target: cos "
                f"{d['gradient_cos']:+.4f}, positive for {d['gradient_agreement']:.0%} of {d['n_pairs']} pairs")
        lines.append(f"  direction {d['src']!r} → {d['tgt']!r}: cos {d['cos']:+.4f} "
                     f"(glyphs {d['n_src']} → {d['n_tgt']}){grad}")
    return "\n".join(lines)
