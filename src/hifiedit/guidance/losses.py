"""CLIP losses and the directional-similarity metric, as stateless functions (STYLE lesson 8).

The paper's editing loss (DESIGN §1) is

    λ_dir · (1 − cos(E_I(P̂) − E_I(x0), E_T(y_tgt) − E_T(y_src))) + λ_L1 · ‖P̂ − x0‖₁

with DiffusionCLIP's / StyleGAN-NADA's conventions: image embeddings are unit-normalised
before their difference is taken, and the text direction is the mean over prompt templates
of (target − source) unit text embeddings, normalised once more. DiffusionCLIP trains with
the form −log((1 + cos)/2) of the same cosine; both forms are offered (`form=`).

`text_direction` returns a tensor that the caller keeps for the whole run; the image-side
functions take embeddings (from `Clip.encode_images`), so nothing here holds a model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hifiedit.errors import HifieditError

# DiffusionCLIP averages over 79 ImageNet photo templates ("a bad photo of a {}", ...); those
# describe photographs. For emoji a few templates that fit the domain; "{}" keeps the bare text.
EMOJI_TEMPLATES = (
    "{}",
    "an emoji of {}",
    "a {} emoji",
    "a picture of {}",
    "an icon of {}",
    "a drawing of {}",
    "a small picture of {}",
    "{}, as an emoji",
)
LOSS_FORMS = ("cosine", "log")


def prompts(text: str, templates=EMOJI_TEMPLATES) -> list[str]:
    return [t.format(text) for t in templates]


def text_embedding(clip, text: str, templates=EMOJI_TEMPLATES) -> torch.Tensor:
    """CLIP's prompt ensemble: mean of the unit embeddings of `text` in every template,
    normalised (D,). `clip` is anything with `encode_text(list[str]) -> N×D unit vectors`."""
    return F.normalize(clip.encode_text(prompts(text, templates)).mean(0), dim=-1)


def ensemble_text_embeddings(clip, names: list[str], templates=EMOJI_TEMPLATES) -> torch.Tensor:
    """(N, D) float CPU prompt-ensemble embeddings of ``names`` (zero-shot classification's
    class texts), each distinct name embedded once."""
    unique = list(dict.fromkeys(names))
    table = {n: text_embedding(clip, n, templates).float().cpu() for n in unique}
    return torch.stack([table[n] for n in names])


def text_direction(clip, source: str, target: str, templates=EMOJI_TEMPLATES) -> torch.Tensor:
    """ΔT (D,): mean over templates of E_T(target) − E_T(source), unit length (StyleGAN-NADA's
    `compute_text_direction`, which DiffusionCLIP uses)."""
    src = clip.encode_text(prompts(source, templates))
    tgt = clip.encode_text(prompts(target, templates))
    direction = (tgt - src).mean(0)
    if direction.norm() < 1e-12:
        raise HifieditError(f"The texts {source!r} and {target!r} give the same embedding; "
                            "there is no direction to edit along.")
    return F.normalize(direction, dim=-1)


def s_dir(img_emb_edit: torch.Tensor, img_emb_src: torch.Tensor,
          text_dir: torch.Tensor) -> torch.Tensor:
    """Directional CLIP similarity per sample, cos(E_I(edit) − E_I(src), ΔT) in [−1, 1].

    Takes unit image embeddings (as `Clip.encode_images` returns them). An edit that leaves
    the image unchanged has no direction: its cosine is 0 (not NaN).
    """
    delta = img_emb_edit - img_emb_src
    return F.cosine_similarity(delta, text_dir.to(delta).expand_as(delta), dim=-1, eps=1e-8)


def directional_loss(img_emb_edit: torch.Tensor, img_emb_src: torch.Tensor,
                     text_dir: torch.Tensor, form: str = "cosine",
                     reduction: str = "mean") -> torch.Tensor:
    """The paper's directional loss: `cosine` is 1 − cos(ΔI, ΔT) ∈ [0, 2]; `log` is
    DiffusionCLIP's −log((1 + cos)/2) ∈ [0, ∞), steeper for badly aligned edits."""
    cos = s_dir(img_emb_edit, img_emb_src, text_dir)
    if form == "cosine":
        loss = 1 - cos
    elif form == "log":
        # The clamp only guards cos = −1 exactly (log 0); it never binds in practice.
        loss = -torch.log(((1 + cos) / 2).clamp_min(1e-8))
    else:
        raise HifieditError(f"Unknown directional loss form {form!r}; use one of {LOSS_FORMS}.")
    return _reduce(loss, reduction)


def global_clip_loss(img_emb: torch.Tensor, text_emb: torch.Tensor,
                     reduction: str = "mean") -> torch.Tensor:
    """1 − cos(E_I(x), E_T(y)): pulls the image towards the target text itself (DiffusionCLIP's
    global loss, `1 − logits_per_image / 100`, is the same number)."""
    cos = F.cosine_similarity(img_emb, text_emb.to(img_emb).expand_as(img_emb), dim=-1, eps=1e-8)
    return _reduce(1 - cos, reduction)


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise HifieditError(f"Unknown reduction {reduction!r}; use mean, sum or none.")
