"""Loading a CLIP model from a local folder, and encoding [-1, 1] images and texts with it.

One code path serves every CLIP: a user's snapshot of `openai/clip-vit-base-patch16`
(the model DiffusionCLIP and the paper guide with) and the small OpenMoji CLIPs this package
trains are all Hugging Face `CLIPModel` folders, read with `local_files_only=True`.

Image preprocessing is DiffusionCLIP's (its `CLIPLoss.preprocess`: [-1, 1] → [0, 1], resize,
centre crop, normalise) written with differentiable tensor ops, so that the directional loss
sends gradients back to the pixels of the edited image.

The *judge* (a CLIP trained only to score edits) is refused unless the caller passes
`allow_judge=True`, which only evaluation code does: a model that guided an edit must never
be the one that grades it (DESIGN §3).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from hifiedit.errors import HifieditError
from hifiedit.models import ALIASES, MODELS_DIR, resolve  # noqa: F401

# Names `load_clip` accepts besides a path; trained by `hifiedit train clip` (see the configs).
NAMED_CLIPS = ALIASES["clip"]
# Written by our trainer next to the weights; `role: judge` marks a model that only evaluates.
ROLE_FILE = "hifiedit_clip.json"
# OpenAI CLIP's normalisation, used when a folder has no preprocessor_config.json.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


def preprocess_images(x: torch.Tensor, image_size: int, mean: torch.Tensor, std: torch.Tensor):
    """[-1, 1] images N×3×H×W of any size → CLIP's normalised input, differentiably.

    Like CLIP's processor: the shorter side is resized to `image_size` (bicubic; antialiased,
    which only matters when shrinking), the centre is cropped, then mean/std are applied.
    """
    if x.ndim != 4 or x.shape[1] != 3:
        raise HifieditError(f"CLIP expects N×3×H×W images, got shape {tuple(x.shape)}.")
    x = (x + 1) / 2
    h, w = x.shape[-2:]
    if (h, w) != (image_size, image_size):
        scale = image_size / min(h, w)
        size = (max(image_size, round(h * scale)), max(image_size, round(w * scale)))
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
        top, left = (size[0] - image_size) // 2, (size[1] - image_size) // 2
        x = x[..., top:top + image_size, left:left + image_size]
    mean = mean.to(x.device, x.dtype).view(1, 3, 1, 1)
    std = std.to(x.device, x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def features(output) -> torch.Tensor:
    # transformers ≥ 5 returns a model output whose pooler_output is the projected embedding;
    # older versions return the tensor itself.
    return output if torch.is_tensor(output) else output.pooler_output


@dataclass(eq=False)
class Clip:
    """A frozen CLIPModel with its tokenizer and image normalisation.

    `encode_images` keeps the autograd graph (gradients reach the pixels); `encode_text`
    runs without gradients and caches each text's embedding in this object, so a prompt used
    at every training step is encoded once per model.
    """

    model: torch.nn.Module
    tokenizer: object
    image_size: int
    mean: torch.Tensor
    std: torch.Tensor
    path: str = ""
    role: str = "guide"
    # The precision its layers run at (autocast, hifiedit.runtime.Runtime); embeddings come
    # back in the weights' dtype whatever it is.
    compute_dtype: torch.dtype = torch.float32
    text_cache: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def autocast(self):
        from hifiedit.runtime import autocast

        return autocast(self.device, self.compute_dtype)

    @property
    def max_text_length(self) -> int:
        return int(self.model.config.text_config.max_position_embeddings)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        return preprocess_images(images, self.image_size, self.mean, self.std)

    def encode_images(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Image embeddings (N×D) of [-1, 1] images; unit length unless normalize=False."""
        dtype = next(self.model.parameters()).dtype
        pixels = self.preprocess(images.to(self.device, dtype))
        with self.autocast():
            emb = features(self.model.get_image_features(pixel_values=pixels))
        emb = emb.to(dtype)  # the weights' dtype, whatever precision autocast computed in
        return F.normalize(emb, dim=-1) if normalize else emb

    @torch.no_grad()
    def encode_text(self, texts: list[str] | str, batch_size: int = 256) -> torch.Tensor:
        """Unit-length text embeddings (N×D), computed once per text and cached."""
        if isinstance(texts, str):
            texts = [texts]
        todo = list(dict.fromkeys(t for t in texts if t not in self.text_cache))
        for i in range(0, len(todo), batch_size):
            chunk = todo[i:i + batch_size]
            tokens = self.tokenizer(chunk, padding=True, truncation=True,
                                    max_length=self.max_text_length, return_tensors="pt")
            with self.autocast():
                emb = features(self.model.get_text_features(
                    input_ids=tokens["input_ids"].to(self.device),
                    attention_mask=tokens["attention_mask"].to(self.device)))
            for text, e in zip(chunk, F.normalize(emb.float(), dim=-1)):
                self.text_cache[text] = e
        return torch.stack([self.text_cache[t] for t in texts])


@torch.no_grad()
def image_embeddings(clip: Clip, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """(N, D) float CPU unit image embeddings, in batches (evaluation: no graph is kept)."""
    return torch.cat([clip.encode_images(b).float().cpu() for b in images.split(batch_size)])


def resolve_clip_path(name_or_path: str | Path, allow_judge: bool = False) -> Path:
    """A shipped name ("default", "judge", or a model folder's name) or an existing folder →
    the folder."""
    if str(name_or_path) == "judge" and not allow_judge:
        raise HifieditError("The judge CLIP only scores edits; it cannot guide or train them "
                            "(only evaluation code may load it).")
    return resolve(name_or_path, "clip")


def check_clip_folder(path: Path) -> dict:
    """The folder's config.json, after checking that every part of a CLIP folder is there;
    the error names each missing part (STYLE lesson 7)."""
    if not path.is_dir():
        raise HifieditError(f"{path} is not a folder; a Hugging Face CLIPModel folder is expected.")
    missing = []
    if not (path / "config.json").is_file():
        missing.append("config.json")
    if not any((path / w).is_file() for w in _WEIGHT_FILES):
        missing.append("weights (model.safetensors or pytorch_model.bin)")
    has_fast = (path / "tokenizer.json").is_file()
    has_slow = (path / "vocab.json").is_file() and (path / "merges.txt").is_file()
    if not (has_fast or has_slow):
        missing.append("tokenizer files (tokenizer.json, or vocab.json + merges.txt)")
    if missing:
        raise HifieditError(f"{path} is not a complete CLIP folder: missing {', '.join(missing)}.")
    try:
        config = json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise HifieditError(f"{path / 'config.json'} is not valid JSON: {e}.") from e
    if config.get("model_type") != "clip":
        raise HifieditError(f"{path / 'config.json'} describes a {config.get('model_type')!r} "
                            "model; a CLIPModel (model_type 'clip', both towers) is expected.")
    return config


def _normalisation(path: Path) -> tuple[tuple, tuple]:
    file = path / "preprocessor_config.json"
    if not file.is_file():
        return OPENAI_MEAN, OPENAI_STD
    config = json.loads(file.read_text())
    return tuple(config.get("image_mean", OPENAI_MEAN)), tuple(config.get("image_std", OPENAI_STD))


def clip_role(path: Path) -> str:
    file = Path(path) / ROLE_FILE
    return json.loads(file.read_text()).get("role", "guide") if file.is_file() else "guide"


def load_clip(
    name_or_path: str | Path = "default",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    allow_judge: bool = False,
    compute_dtype: torch.dtype = torch.float32,
) -> Clip:
    """Load a frozen CLIPModel + tokenizer from a local folder or a shipped name; nothing is
    downloaded. `allow_judge=True` is for evaluation code only (see the module docstring).
    ``dtype``: the weights' storage; ``compute_dtype``: the precision its layers run at."""
    from transformers import AutoTokenizer, CLIPModel

    path = resolve_clip_path(name_or_path, allow_judge)
    check_clip_folder(path)
    role = clip_role(path)
    if role == "judge" and not allow_judge:
        raise HifieditError(f"{path} is a judge CLIP: it only scores edits and cannot guide or "
                            "train them (only evaluation code may load it).")
    from huggingface_hub.errors import StrictDataclassError
    from safetensors import SafetensorError

    from hifiedit.weights import check_finite, check_loading_info, check_safetensors_file, short

    if (path / "model.safetensors").is_file():
        check_safetensors_file(path / "model.safetensors")
    try:
        model, info = CLIPModel.from_pretrained(path, local_files_only=True,
                                                output_loading_info=True)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, SafetensorError,
            StrictDataclassError) as e:  # the last: a config value of the wrong type
        raise HifieditError(f"Could not load the CLIP model in {path}: {short(e)}") from e
    check_loading_info(info, path)
    check_finite(model.state_dict(), path)
    model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    mean, std = _normalisation(path)
    return Clip(model=model, tokenizer=tokenizer,
                image_size=int(model.config.vision_config.image_size),
                mean=torch.tensor(mean, dtype=torch.float32),
                std=torch.tensor(std, dtype=torch.float32), path=str(path), role=role,
                compute_dtype=compute_dtype)
