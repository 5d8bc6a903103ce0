"""Training our own CLIP for OpenMoji: a guide for edits, or an independent judge.

No CLIP can be downloaded here, so the embedded domain gets one of its own: a small Hugging
Face `CLIPModel` (so the guidance loader treats it exactly like a user's ViT-B/16 folder), a
byte-level BPE tokenizer in CLIP's own format trained on the caption corpus, and the
symmetric contrastive (InfoNCE) loss on the *train* split.

What the edits need the model to see is skin tone and man/woman/person, so:
  - batches hold *families*: each anchor glyph brings siblings of its base (other tones, other
    genders), the hard negatives that force the model to read exactly those attributes;
  - augmentation is geometric only (small rotation, scale, shift); no colour jitter, because
    skin tone *is* colour;
  - glyphs sharing a caption in a batch are all positives (multi-positive targets), not
    false negatives.

The judge is the same recipe with another seed and size (`configs/judge-openmoji32.json`);
its exported folder says `role: judge`, which the guidance loader refuses unless an
evaluation asks for it.

Resuming continues bit-for-bit like an uninterrupted run: every random draw comes from one
generator saved with the weights, and the tokenizer is trained once and stored in the run.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from hifiedit.errors import HifieditError
from hifiedit.weights import check_model_state
from hifiedit.models import portable_name
from hifiedit.runtime import Runtime, atomic_folder, write_text_atomic
from hifiedit.train.loop import Job, TrainLoop
from hifiedit.train.run import holds_run_lock, torch_threads
from hifiedit.config import require

# Fields that may differ when resuming: they change how visibly we train, not what.
RESUMABLE_OVERRIDES = {"log_every", "checkpoint_every", "eval_every", "threads"}
ROLES = ("guide", "judge")
# CLIP's byte-level BPE conventions (transformers' CLIPTokenizer builds exactly this pipeline
# from vocab + merges, so a tokenizer trained with them loads like OpenAI's).
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
_SPLIT_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


@dataclass(frozen=True)
class ClipTrainConfig:
    # "guide" may steer edits; "judge" only scores them (the loader enforces it).
    role: str = "guide"
    image_size: int = 32
    # Vision tower: patch 4 on 32×32 gives 64 patches, fine enough to see a 4-px skin region.
    patch_size: int = 4
    vision_width: int = 128
    vision_layers: int = 4
    vision_heads: int = 4
    # Text tower: captions are ≤ 20 BPE tokens; 32 positions leave room for templates.
    text_width: int = 128
    text_layers: int = 4
    text_heads: int = 4
    max_text_length: int = 32
    projection_dim: int = 128
    # Target BPE vocabulary (the corpus has ~13 k distinct captions, ~2 k distinct words).
    vocab_size: int = 2000
    # Augmentation: geometric only (no colour jitter: skin tone is colour). No flips either:
    # "left arrow" and "right arrow" are different glyphs.
    max_rotate_deg: float = 8.0
    max_scale: float = 0.08  # scale drawn from [1 − s, 1 + s]
    max_shift: float = 0.06  # fraction of the image side
    # Gaussian noise of a per-image std drawn from U(0, noise_std), after the geometric
    # augmentation (zero-mean: colours stay unbiased). It smooths the pixel gradients a guide
    # hands to an edit: the plain guide's gradient for "dark → light skin tone" points away
    # from the true change for 87 % of the train pairs (`eval clip --direction`).
    noise_std: float = 0.0
    # Batches: batch_size // family_size anchors, each with family_size − 1 siblings.
    batch_size: int = 128
    family_size: int = 4
    template_prob: float = 0.5  # caption wrapped in an emoji template ("an emoji of {}") or bare
    # Optimisation: AdamW, linear warm-up then cosine decay to 10 % over max_steps.
    lr: float = 5e-4
    warmup_steps: int = 200
    weight_decay: float = 0.1  # on matrices only, as in CLIP
    # Fine-tune instead of training from scratch: a CLIP folder or shipped name whose model and
    # tokenizer this run starts from (same architecture fields as this config).
    init_from: str = ""
    grad_clip: float = 1.0
    max_steps: int = 6000
    seed: int = 0
    threads: int = 0
    # Monitoring.
    log_every: int = 25
    checkpoint_every: int = 250
    eval_every: int = 500

    def validate(self) -> None:
        require(self.role in ROLES, f"role must be one of {ROLES}, got {self.role!r}.")
        require(8 <= self.image_size <= 1024, f"image_size must be 8…1024, got {self.image_size}.")
        require(self.patch_size >= 1 and self.image_size % self.patch_size == 0,
                "image_size must be a multiple of patch_size.")
        for tower in ("vision", "text"):
            width, heads = getattr(self, f"{tower}_width"), getattr(self, f"{tower}_heads")
            require(width >= 1 and heads >= 1 and width % heads == 0,
                    f"{tower}_width must be a positive multiple of {tower}_heads.")
            require(getattr(self, f"{tower}_layers") >= 1, f"{tower}_layers must be ≥ 1.")
        require(self.max_text_length >= 8, "max_text_length must be ≥ 8.")
        require(self.projection_dim >= 1, "projection_dim must be ≥ 1.")
        require(self.vocab_size >= 600, "vocab_size must be ≥ 600 (512 byte symbols + merges).")
        require(0 <= self.max_rotate_deg <= 45, "max_rotate_deg must be in [0, 45].")
        require(0 <= self.max_scale < 0.5, "max_scale must be in [0, 0.5).")
        require(0 <= self.max_shift < 0.5, "max_shift must be in [0, 0.5).")
        require(self.noise_std >= 0, "noise_std must be ≥ 0.")
        require(self.batch_size >= 2, "batch_size must be ≥ 2 (contrastive loss).")
        require(1 <= self.family_size <= self.batch_size, "family_size must be 1…batch_size.")
        require(0 <= self.template_prob <= 1, "template_prob must be in [0, 1].")
        require(0 < self.lr < 1, f"lr must be in (0, 1), got {self.lr}.")
        require(self.weight_decay >= 0, "weight_decay must be ≥ 0.")
        require(self.max_steps >= 1, "max_steps must be ≥ 1.")
        for k in ("log_every", "checkpoint_every", "eval_every"):
            require(getattr(self, k) >= 1, f"{k} must be ≥ 1.")


# ---------------------------------------------------------------- tokenizer


def train_tokenizer(texts: list[str], vocab_size: int, max_length: int):
    """A CLIP-format byte-level BPE tokenizer (transformers' `CLIPTokenizer`) trained on
    `texts` with the `tokenizers` library.

    All 256 byte symbols, alone and word-final ("x</w>"), are kept in the vocabulary as in
    OpenAI's, so no input text ever maps to the unknown token (which CLIP shares with EOS).
    """
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers, trainers
    from tokenizers.models import BPE
    from transformers import CLIPTokenizer

    tok = Tokenizer(BPE(continuing_subword_prefix="", end_of_word_suffix="</w>", unk_token=EOS,
                        fuse_unk=False))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_SPLIT_PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[BOS, EOS], end_of_word_suffix="</w>",
        initial_alphabet=alphabet, min_frequency=2, show_progress=False)
    tok.train_from_iterator(texts, trainer)
    vocab = dict(tok.get_vocab())
    for ch in sorted(alphabet):
        for symbol in (ch, ch + "</w>"):
            vocab.setdefault(symbol, len(vocab))
    merges = [tuple(m) if not isinstance(m, str) else tuple(m.split(" "))
              for m in json.loads(tok.to_str())["model"]["merges"]]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def tokenizer_digest(tokenizer) -> str:
    """Content hash of a tokenizer (vocabulary and merges), stored in checkpoints.

    Only the BPE model section is hashed: the backend tokenizer also serialises the padding
    and truncation state left by the last call, which changes after the first batch."""
    bpe = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    return hashlib.sha256(json.dumps(bpe, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- model


def build_clip(config: ClipTrainConfig, tokenizer):
    from transformers import CLIPConfig, CLIPModel

    text = dict(vocab_size=len(tokenizer), hidden_size=config.text_width,
                intermediate_size=4 * config.text_width, num_hidden_layers=config.text_layers,
                num_attention_heads=config.text_heads,
                max_position_embeddings=config.max_text_length,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id, projection_dim=config.projection_dim)
    vision = dict(hidden_size=config.vision_width, intermediate_size=4 * config.vision_width,
                  num_hidden_layers=config.vision_layers,
                  num_attention_heads=config.vision_heads, image_size=config.image_size,
                  patch_size=config.patch_size, projection_dim=config.projection_dim)
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision,
                                projection_dim=config.projection_dim))


def export_clip(model, tokenizer, config: ClipTrainConfig, folder: Path, step: int) -> None:
    """The model as a Hugging Face CLIP folder (safetensors, tokenizer, image processor) plus
    `hifiedit_clip.json` with its role, written to a temporary sibling and renamed."""
    from hifiedit.guidance.clip import OPENAI_MEAN, OPENAI_STD, ROLE_FILE

    with atomic_folder(Path(folder), "CLIP") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        # The image-processor settings of OpenAI's CLIP folders, at our size, written as JSON
        # (constructing CLIPImageProcessor would need torchvision on transformers ≥ 5).
        size = config.image_size
        (tmp / "preprocessor_config.json").write_text(json.dumps({
            "image_processor_type": "CLIPImageProcessor", "do_resize": True,
            "size": {"shortest_edge": size}, "resample": 3, "do_center_crop": True,
            "crop_size": {"height": size, "width": size}, "do_rescale": True,
            "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(OPENAI_MEAN),
            "image_std": list(OPENAI_STD), "do_convert_rgb": True}, indent=1))
        (tmp / ROLE_FILE).write_text(json.dumps(
            {"role": config.role, "step": step, "config": asdict(config)}, indent=1))


# ---------------------------------------------------------------- data


@dataclass
class CaptionedImages:
    """Training images ([-1, 1], N×3×H×W), their caption variants, and family ids."""

    images: torch.Tensor
    captions: list[list[str]]
    family: list[int]  # images with one family id are variants of one base (hard negatives)

    def __post_init__(self):
        require(len(self.images) == len(self.captions) == len(self.family),
                "images, captions and families must have the same length.")
        require(len(self.images) >= 2, "need at least two training images.")
        groups: dict[int, list[int]] = {}
        for i, f in enumerate(self.family):
            groups.setdefault(f, []).append(i)
        self.members = [torch.tensor(groups[f]) for f in self.family]


def openmoji_training_set(image_size: int, split: str = "train") -> CaptionedImages:
    from hifiedit.data.captions import caption_corpus
    from hifiedit.data.openmoji import load_openmoji

    data = load_openmoji(image_size)
    idx = data.indices(split)
    corpus = caption_corpus(data.records)
    bases = {b: i for i, b in enumerate(sorted({data.records[i].split_base for i in idx}))}
    return CaptionedImages(data.tensor(split), [corpus[i] for i in idx],
                           [bases[data.records[i].split_base] for i in idx])


def augment(x: torch.Tensor, config: ClipTrainConfig, gen: torch.Generator) -> torch.Tensor:
    """Random rotation, scale and shift per image (bilinear, border padding: glyphs sit on
    white, so the border colour is the background). Colours are never changed."""
    n = len(x)
    u = torch.rand((n, 4), generator=gen) * 2 - 1
    angle = u[:, 0] * math.radians(config.max_rotate_deg)
    scale = 1 + u[:, 1] * config.max_scale
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, u[:, 2] * 2 * config.max_shift], -1),
                         torch.stack([sin, cos, u[:, 3] * 2 * config.max_shift], -1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def sample_batch(data: CaptionedImages, config: ClipTrainConfig, gen: torch.Generator):
    """Indices and captions of one batch: anchors plus siblings from their families."""
    from hifiedit.guidance.losses import EMOJI_TEMPLATES

    n_anchor = math.ceil(config.batch_size / config.family_size)
    anchors = torch.randint(0, len(data.images), (n_anchor,), generator=gen)
    picks = torch.rand((n_anchor, config.family_size - 1), generator=gen)
    idx = []
    for a, r in zip(anchors.tolist(), picks):
        members = data.members[a]
        others = members[members != a]
        idx.append(a)
        if len(others):
            idx += others[(r * len(others)).long()].tolist()
        else:  # a base with one glyph: fill with random images
            idx += (r * len(data.images)).long().tolist()
    idx = idx[:config.batch_size]
    u = torch.rand((len(idx), 3), generator=gen)
    captions = []
    for i, (uv, ut, up) in zip(idx, u.tolist()):
        variants = data.captions[i]
        text = variants[int(uv * len(variants))]
        if up < config.template_prob:
            text = EMOJI_TEMPLATES[int(ut * len(EMOJI_TEMPLATES))].format(text)
        captions.append(text)
    return torch.tensor(idx), captions


def contrastive_loss(image_emb, text_emb, logit_scale, positives):
    """Symmetric InfoNCE with several positives per row: targets are uniform over the
    positives (the same glyph, or another glyph with the identical caption)."""
    logits = logit_scale * image_emb @ text_emb.T
    target = positives.float() / positives.sum(1, keepdim=True)
    loss_i = -(target * logits.log_softmax(1)).sum(1).mean()
    loss_t = -(target.T * logits.T.log_softmax(1)).sum(1).mean()
    return (loss_i + loss_t) / 2


def clip_step_loss(model, tokenizer, images, captions, idx, mean, std, image_size):
    from hifiedit.guidance.clip import features, preprocess_images

    device = model.logit_scale.device
    tokens = tokenizer(captions, padding=True, truncation=True,
                       max_length=model.config.text_config.max_position_embeddings,
                       return_tensors="pt").to(device)
    # Embeddings in float32 whatever precision autocast ran the towers at.
    img = F.normalize(features(model.get_image_features(
        pixel_values=preprocess_images(images.to(device), image_size, mean, std))).float(), dim=-1)
    txt = F.normalize(features(model.get_text_features(
        input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])).float(), dim=-1)
    same = (idx[:, None] == idx[None, :]) | torch.tensor(
        [[a == b for b in captions] for a in captions])
    same = same.to(device)
    return contrastive_loss(img, txt, model.logit_scale.exp(), same)


# ---------------------------------------------------------------- training


def _lr(config: ClipTrainConfig, step: int) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _val_metrics(model, tokenizer, config, mean, std) -> dict:
    """Zero-shot skin-tone / gender accuracy on the val split (never the test split)."""
    from hifiedit.data.openmoji import load_openmoji
    from hifiedit.eval.clip_eval import clip_metrics
    from hifiedit.guidance.clip import Clip

    data = load_openmoji(config.image_size)
    clip = Clip(model=model, tokenizer=tokenizer, image_size=config.image_size, mean=mean, std=std)
    return clip_metrics(clip, data, "val")


class ClipJob(Job):
    """Contrastive training of a CLIP (the loop does the rest)."""

    log_header = ["step", "loss", "lr", "logit_scale", "img_per_s", "val_skin_tone_acc",
                  "val_gender_acc", "wall_s"]

    def __init__(self, config: ClipTrainConfig, out: Path, data: CaptionedImages, tokenizer,
                 init_path, val_metrics: bool, runtime: Runtime | None = None):
        from hifiedit.guidance.clip import OPENAI_MEAN, OPENAI_STD

        self.config, self.out, self.data, self.tokenizer = config, out, data, tokenizer
        self.val_metrics = val_metrics
        self.desc = f"train clip ({config.role})"
        torch.manual_seed(config.seed)
        self.runtime = runtime or Runtime(torch.device("cpu"))
        self.model = build_clip(config, tokenizer).train()
        if init_path is not None:
            from transformers import CLIPModel

            start = CLIPModel.from_pretrained(init_path, local_files_only=True)
            check_model_state(self.model, start.state_dict(),
                              f"init_from {init_path} (architecture fields must match)")
        decay = [p for p in self.model.parameters() if p.ndim >= 2]
        no_decay = [p for p in self.model.parameters() if p.ndim < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay},
             {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.model.to(self.runtime.device)
        self.grad_clip = config.grad_clip
        self.mean, self.std = torch.tensor(OPENAI_MEAN), torch.tensor(OPENAI_STD)
        self.n_params = sum(p.numel() for p in self.model.parameters())
        self.lr = config.lr

    def parameters(self):
        return list(self.model.parameters())

    def loss(self, step, shard):
        config, gen = self.config, self.generator
        idx, captions = sample_batch(self.data, config, gen)
        images = augment(self.data.images[idx], config, gen)
        if config.noise_std:
            sigma = torch.rand((len(images), 1, 1, 1), generator=gen) * config.noise_std
            images = images + sigma * torch.randn(images.shape, generator=gen)
        self.lr = _lr(config, step)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        with self.runtime.autocast():
            loss = clip_step_loss(self.model, self.tokenizer, images, captions, idx, self.mean,
                                  self.std, config.image_size)
        loss.backward()
        return loss

    def after_update(self, step):
        with torch.no_grad():  # CLIP's clamp: a temperature below 1/100 destabilises training
            self.model.logit_scale.clamp_(0, math.log(100))

    def evaluate(self, step):
        if not (self.val_metrics and step % self.config.eval_every == 0):
            return {}
        self.model.eval()
        val = _val_metrics(self.model, self.tokenizer, self.config, self.mean, self.std)
        self.model.train()
        return val

    def log_row(self, step, window, evals):
        ips = window.steps * self.config.batch_size / max(window.seconds, 1e-9)
        return [f"{window.loss:.5f}", f"{self.lr:.3g}",
                f"{self.model.logit_scale.exp().item():.2f}", f"{ips:.1f}",
                f"{evals['skin_tone_acc']:.4f}" if evals else "",
                f"{evals['gender_acc']:.4f}" if evals else ""]

    def postfix(self, window, evals):
        ips = window.steps * self.config.batch_size / max(window.seconds, 1e-9)
        return {"loss": f"{window.loss:.3f}", "img_s": f"{ips:.0f}",
                **({"val_tone": f"{evals['skin_tone_acc']:.2f}"} if evals else {})}

    def tensors(self):
        return {"model": self.model.state_dict()}

    def load(self, groups, state):
        check_model_state(self.model, groups["model"], "Checkpoint model")

    def meta(self, step):
        return {"n_params": self.n_params, "images_seen": step * self.config.batch_size,
                "tokenizer": tokenizer_digest(self.tokenizer)}

    def export(self, step):
        export_clip(self.model, self.tokenizer, self.config, self.out / "model", step)


@holds_run_lock
def train_clip(
    config: ClipTrainConfig,
    out: Path,
    resume: bool = False,
    max_minutes: float | None = None,
    data: CaptionedImages | None = None,
    tokenizer=None,
    progress: bool = True,
    stop_after: int | None = None,
    val_metrics: bool = True,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
) -> dict:
    """Train (or resume) a CLIP into `out`; returns a summary.

    `out/tokenizer/` holds the tokenizer (trained from the captions on the first run unless
    one is passed), `out/checkpoint/` the resumable state, `out/model/` the exported folder
    that `load_clip` reads. `data` (CaptionedImages) replaces the OpenMoji train split;
    `stop_after` stops at that step as if interrupted (the resume test). `config.threads`
    applies for the run only. One process only: the contrastive loss needs the whole batch.
    `device` and `precision`: :func:`hifiedit.runtime.resolve_runtime`.
    """
    from transformers import AutoTokenizer

    from hifiedit.guidance.clip import clip_role, resolve_clip_path

    out = Path(out)
    with torch_threads(config.threads):
        loop = TrainLoop(out, config, resume, RESUMABLE_OVERRIDES, max_minutes=max_minutes,
                         stop_after=stop_after, progress=progress, distributed=False,
                         device=device, precision=precision)
        if data is None:
            data = openmoji_training_set(config.image_size)
        else:
            val_metrics = False  # custom data: the OpenMoji val split says nothing about it
        require(data.images.shape[-1] == config.image_size,
                f"images are {data.images.shape[-1]} px but image_size is {config.image_size}.")

        init_path = resolve_clip_path(config.init_from) if config.init_from else None
        require(init_path is None or clip_role(init_path) != "judge",
                f"init_from {config.init_from!r} is a judge CLIP: training cannot start from it.")
        tok_dir = out / "tokenizer"
        if (tok_dir / "tokenizer.json").is_file():
            tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
        else:
            if init_path is not None:
                tokenizer = AutoTokenizer.from_pretrained(init_path, local_files_only=True)
            elif tokenizer is None:
                texts = [c for variants in data.captions for c in variants]
                tokenizer = train_tokenizer(texts, config.vocab_size, config.max_text_length)
            tokenizer.save_pretrained(tok_dir)
        if loop.state is not None and loop.state.get("tokenizer") != tokenizer_digest(tokenizer):
            raise HifieditError(f"{tok_dir} is not the tokenizer this run was trained with.")

        job = ClipJob(config, out, data, tokenizer, init_path if loop.saved is None else None,
                      val_metrics, loop.runtime)
        result = loop.run(job)
    summary = {**result, "n_params": job.n_params, "role": config.role, "out": portable_name(out),
               "model": portable_name(out / "model")}
    summary = {k: summary[k] for k in ("step", "wall_seconds", "n_params", "role",
                                       "stopped_early", "out", "model")}
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    return summary
