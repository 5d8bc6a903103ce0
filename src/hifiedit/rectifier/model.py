"""The rectifier hypernetwork R_φ (DESIGN §1, "Rectifier"; the paper's Sec. 3.2).

R_φ sees the original image and the current clean estimate, ``concat(x0, P_t)``, plus t,
through a *global encoder*, and one *branch* per modulated convolution of the frozen U-Net's
middle and up-sampling blocks predicts that layer's weight offset Δ_ℓ, applied as
θ̂_ℓ = θ_ℓ ⊙ (1 + Δ_ℓ) by :mod:`hifiedit.rectifier.modulate`.

Offsets are data (STYLE lesson 5): :meth:`Rectifier.forward` returns
``{U-Net parameter name: Δ of shape (B, *weight.shape)}``. The modulated layers are discovered
from the U-Net's ``named_parameters()`` (:func:`modulated_layers`), never from a shape table,
and are recorded in the saved config so that a rectifier is never loaded into a U-Net it was
not built for (STYLE lesson 7).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn

from hifiedit import __version__
from hifiedit.errors import HifieditError
from hifiedit.models import MODELS_DIR, default_name, is_shipped, portable_name, resolve
from hifiedit.runtime import atomic_folder

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
# DESIGN §1: "the convolutions of the U-Net's middle and up-sampling blocks".
MODULATED_PREFIXES = ("mid_block.", "up_blocks.")


def modulated_layers(unet: nn.Module) -> dict[str, tuple[int, ...]]:
    """``{parameter name: weight shape}`` of every 4-D (convolution) weight in the U-Net's
    ``mid_block`` and ``up_blocks``, in ``named_parameters()`` order. Attention projections
    are ``nn.Linear`` (2-D) in diffusers and are therefore not modulated, as in the paper."""
    layers = {name: tuple(p.shape) for name, p in unet.named_parameters()
              if name.startswith(MODULATED_PREFIXES) and p.ndim == 4}
    if not layers:
        raise HifieditError("the U-Net has no convolution weights in mid_block/up_blocks: "
                            "is it a diffusers UNet2DModel?")
    return layers


@dataclass(frozen=True)
class RectifierConfig:
    # Global encoder: one diffusers ResnetBlock2D per level (the first at full resolution, each
    # next one halving it), then global average pooling. Small on purpose: the rectifier runs
    # at every step of the chain; the budget is ≤ 2.5× a plain step at batch 16.
    encoder_channels: tuple = (32, 64, 128)
    norm_groups: int = 8
    time_embed_dim: int = 128
    feature_dim: int = 128  # the global code h shared by every branch
    # Per-branch hidden width and rank of the per-sample pointwise factor (0 = no pointwise
    # factor: Δ is HyperStyle's per-input-channel k×k offset repeated over output channels).
    branch_hidden: int = 32
    pointwise_rank: int = 2
    # Also embed the size of the move being taken, t − t_next: the correction that makes a
    # DDIM move retrace the inversion is first order in the step size (large at S = 6, nearly
    # nothing at S = 100), so one rectifier serves every step count only if it knows the step.
    # Off = the paper's R(x0, P_t, t); our trainer turns it on.
    step_embedding: bool = False
    in_channels: int = 3  # image channels; the encoder sees 2× this (x0 and P_t)
    # Not architecture: the inversion ("ddim" or "fixed-point") whose trajectories it was trained
    # on. A rectifier corrects the chain that inversion starts; on the other one it hurts
    # (docs/results.md), so the pipeline picks its default rectifier by this field.
    trained_inversion: str = "ddim"

    def validate(self) -> None:
        if not self.encoder_channels or any(c <= 0 for c in self.encoder_channels):
            raise HifieditError("RectifierConfig.encoder_channels needs positive entries.")
        if any(c % self.norm_groups for c in self.encoder_channels):
            raise HifieditError(f"every encoder channel count must be divisible by norm_groups "
                                f"({self.norm_groups}), got {self.encoder_channels}.")
        for k in ("time_embed_dim", "feature_dim", "branch_hidden", "in_channels"):
            if getattr(self, k) < 1:
                raise HifieditError(f"RectifierConfig.{k} must be ≥ 1.")
        if self.pointwise_rank < 0:
            raise HifieditError("RectifierConfig.pointwise_rank must be ≥ 0.")
        if self.time_embed_dim % 2:
            raise HifieditError("RectifierConfig.time_embed_dim must be even (sin/cos pairs).")
        if self.trained_inversion not in ("ddim", "fixed-point"):
            raise HifieditError("RectifierConfig.trained_inversion must be 'ddim' or 'fixed-point'.")

    @classmethod
    def from_dict(cls, values: dict) -> "RectifierConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise HifieditError(f"unknown rectifier config keys {unknown}; valid: {sorted(names)}.")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        config = cls(**values)
        config.validate()
        return config


class GlobalEncoder(nn.Module):
    """concat(x0, P_t) and t → global code h (B, feature_dim).

    The stem is a 3×3 convolution over the 6-channel concatenation, stored as its two halves:
    conv(concat(x0, P)) = conv_x0(x0) + conv_P(P) exactly, so the x0 half — the same at every
    step of a chain — is computed once per image (:meth:`encode_x0`) and reused.
    """

    def __init__(self, config: RectifierConfig):
        super().__init__()
        from diffusers.models.embeddings import TimestepEmbedding, Timesteps
        from diffusers.models.resnet import ResnetBlock2D

        c0, temb = config.encoder_channels[0], config.time_embed_dim
        self.stem_x0 = nn.Conv2d(config.in_channels, c0, 3, padding=1)
        self.stem_p = nn.Conv2d(config.in_channels, c0, 3, padding=1, bias=False)
        self.time_proj = Timesteps(temb, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(temb, temb)
        self.step_embed = TimestepEmbedding(temb, temb) if config.step_embedding else None
        blocks, prev = [], c0
        for i, c in enumerate(config.encoder_channels):
            blocks.append(ResnetBlock2D(in_channels=prev, out_channels=c, temb_channels=temb,
                                        groups=config.norm_groups, down=i > 0))
            prev = c
        self.blocks = nn.ModuleList(blocks)
        self.norm_out = nn.GroupNorm(config.norm_groups, prev)
        self.head = nn.Sequential(nn.Linear(prev + temb, config.feature_dim), nn.SiLU())

    def encode_x0(self, x0: torch.Tensor) -> torch.Tensor:
        return self.stem_x0(x0)

    def forward(self, p_t: torch.Tensor, t: torch.Tensor, x0_code: torch.Tensor,
                step: torch.Tensor | None = None) -> torch.Tensor:
        t = t.reshape(-1).expand(p_t.shape[0]) if t.numel() == 1 else t
        temb = self.time_embed(self.time_proj(t).to(p_t.dtype))
        if self.step_embed is not None:
            if step is None:
                raise HifieditError("this rectifier is conditioned on the step size t − t_next: "
                                    "pass step= (or timesteps= to rectified_eps_fn).")
            step = step.reshape(-1).expand(p_t.shape[0]) if step.numel() == 1 else step
            temb = temb + self.step_embed(self.time_proj(step).to(p_t.dtype))
        h = x0_code + self.stem_p(p_t)
        for block in self.blocks:
            h = block(h, temb)
        pooled = nn.functional.silu(self.norm_out(h)).mean(dim=(2, 3))
        return self.head(torch.cat([pooled, nn.functional.silu(temb)], dim=1))


class SeparableBranch(nn.Module):
    """One modulated convolution's offset Δ (B, C_out, C_in, k, k) in separable form:

        Δ[b, o, i, :, :] = S_b[i, :, :] · M_b[o, i]

    S_b, a per-input-channel k×k *spatial* factor, and M_b, a C_out×C_in *pointwise* factor
    (the depthwise-then-pointwise factorisation of DESIGN §1). Why this form rather than
    HyperStyle's outer product a[o] ⊗ b[i, k, k]: it keeps the paper's "spatial × pointwise"
    split, and with M ≡ 1 it *is* HyperStyle's per-channel offset (k×k×C_in shared across
    output channels), so the branch starts from that and learns, per sample, how each output
    channel re-weights it through a rank-r code: M_b = 1 + U·z_b (U: C_out·C_in × r). The
    numbers predicted per sample are C_in·k² + r instead of C_out·C_in·k².

    Initialisation (DESIGN: "last layer of every branch zero-initialised: R starts as
    identity"): only the spatial head is zeroed, so Δ = 0 exactly, while M = 1 ≠ 0 carries
    gradient into S at the first step. Zeroing both factors would make every gradient zero
    (∂Δ/∂S = M = 0 and ∂Δ/∂M = S = 0), and training would never start.
    """

    def __init__(self, shape: tuple[int, ...], config: RectifierConfig):
        super().__init__()
        c_out, c_in, kh, kw = shape
        self.shape = tuple(shape)
        self.hidden = nn.Sequential(nn.Linear(config.feature_dim, config.branch_hidden), nn.SiLU())
        self.spatial = nn.Linear(config.branch_hidden, c_in * kh * kw)
        nn.init.zeros_(self.spatial.weight)
        nn.init.zeros_(self.spatial.bias)
        self.rank = config.pointwise_rank
        if self.rank:
            self.code = nn.Linear(config.branch_hidden, self.rank)
            # U small so M starts near 1 while the spatial factor is still being learned.
            self.pointwise = nn.Parameter(torch.randn(c_out * c_in, self.rank) / (10 * math.sqrt(self.rank)))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        c_out, c_in, kh, kw = self.shape
        z = self.hidden(h)
        s = self.spatial(z).view(-1, 1, c_in, kh, kw)
        if not self.rank:
            return s.expand(-1, c_out, -1, -1, -1)
        m = 1 + (self.code(z) @ self.pointwise.T).view(-1, c_out, c_in, 1, 1)
        return s * m


class Rectifier(nn.Module):
    """R_φ(x0, P_t, t) → {U-Net parameter name: Δ (B, *weight.shape)} (DESIGN §1)."""

    def __init__(self, config: RectifierConfig, layers: dict[str, tuple[int, ...]]):
        super().__init__()
        config.validate()
        self.config = config
        self.layers = {name: tuple(int(s) for s in shape) for name, shape in layers.items()}
        bad = [n for n, s in self.layers.items() if len(s) != 4]
        if bad:
            raise HifieditError(f"rectifier layers must be 4-D conv weights; not: {bad[:5]}")
        self.encoder = GlobalEncoder(config)
        # Content hash of the base model it was trained for (model_digest), when known: a
        # rectifier of another base with the same architecture would load and silently harm.
        self.base_digest: str | None = None
        # Branches are indexed in layer order; the names live in self.layers (and config.json).
        self.branches = nn.ModuleList(SeparableBranch(s, config) for s in self.layers.values())

    @classmethod
    def for_unet(cls, unet: nn.Module, config: RectifierConfig = RectifierConfig()) -> "Rectifier":
        """A zero (identity) rectifier for this U-Net's mid and up-block convolutions."""
        if unet.config.in_channels != config.in_channels:
            raise HifieditError(f"the U-Net takes {unet.config.in_channels} channels but the "
                                f"rectifier config says {config.in_channels}.")
        return cls(config, modulated_layers(unet))

    def encode_x0(self, x0: torch.Tensor) -> torch.Tensor:
        """The x0 half of the encoder's work: compute once per image, pass as ``x0_code``."""
        return self.encoder.encode_x0(x0)

    def forward(self, x0: torch.Tensor | None, p_t: torch.Tensor, t: torch.Tensor,
                x0_code: torch.Tensor | None = None,
                step: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``step``: the size t − t_next of the move this ε serves (config.step_embedding)."""
        if x0_code is None:
            if x0 is None:
                raise HifieditError("Rectifier needs x0 or its precomputed x0_code.")
            x0_code = self.encode_x0(x0)
        h = self.encoder(p_t, t, x0_code, step)
        return {name: branch(h) for name, branch in zip(self.layers, self.branches)}

    # ------------------------------------------------------------------ persistence (STYLE 4, 7)

    def check_unet(self, unet: nn.Module) -> None:
        """Refuse a U-Net whose mid/up convolutions differ from the ones this was built for."""
        theirs = modulated_layers(unet)
        missing = [n for n in self.layers if n not in theirs]
        extra = [n for n in theirs if n not in self.layers]
        wrong = [f"{n} {theirs[n]} ≠ {self.layers[n]}" for n in self.layers
                 if n in theirs and theirs[n] != self.layers[n]]
        if missing or extra or wrong:
            parts = []
            if missing:
                parts.append(f"layers absent from the U-Net {missing[:4]}{' …' if len(missing) > 4 else ''}")
            if extra:
                parts.append(f"U-Net layers the rectifier lacks {extra[:4]}{' …' if len(extra) > 4 else ''}")
            if wrong:
                parts.append(f"shape mismatches {wrong[:4]}{' …' if len(wrong) > 4 else ''}")
            raise HifieditError("this rectifier was built for a different U-Net: " + "; ".join(parts) + ".")

    def save_pretrained(self, folder: str | Path, base_digest: str | None = None) -> Path:
        """config.json (config + modulated layer names and shapes + the base model's content
        hash) + model.safetensors, written to a temporary sibling and renamed into place."""
        from safetensors.torch import save_file

        folder = Path(folder)
        digest = base_digest or self.base_digest
        with atomic_folder(folder, "rectifier") as tmp:
            meta = {"_class_name": "Rectifier", "hifiedit_version": __version__,
                    **asdict(self.config), **({"base_digest": digest} if digest else {}),
                    "layers": {n: list(s) for n, s in self.layers.items()}}
            (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=1) + "\n")
            tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
            save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path, unet: nn.Module | None = None,
                        device: str | torch.device = "cpu",
                        base_digest: str | None = None) -> "Rectifier":
        """Strict loading. With ``unet``, refuses one whose mid/up convolutions differ; with
        ``base_digest``, a rectifier recorded as trained for another base model."""
        from hifiedit.config import config_from_dict
        from hifiedit.weights import check_model_state, load_safetensors, read_folder_meta

        folder = Path(folder)
        cfg_path = folder / CONFIG_NAME
        meta, w_path = read_folder_meta(folder, CONFIG_NAME, WEIGHTS_NAME, "Rectifier", "a rectifier")
        layers = meta.pop("layers", {})
        recorded = meta.pop("base_digest", None)
        if not layers or not isinstance(layers, dict):
            raise HifieditError(f"{cfg_path} records no modulated layers.")
        try:
            layers = {n: tuple(int(v) for v in s) for n, s in layers.items()}
            rectifier = cls(config_from_dict(RectifierConfig, meta), layers)
        except HifieditError as e:
            raise HifieditError(f"{cfg_path}: {e}") from e
        except (TypeError, ValueError) as e:
            raise HifieditError(f"{cfg_path}: invalid rectifier config ({e}).") from e
        if base_digest is not None and recorded is not None and recorded != base_digest:
            raise HifieditError(f"{folder} is a rectifier for another base model (sha256 "
                                f"{recorded[:12]}…, this one {base_digest[:12]}…); train one "
                                "for this base with `hifiedit train rectifier`.")
        rectifier.base_digest = recorded
        if unet is not None:
            try:
                rectifier.check_unet(unet)
            except HifieditError as e:
                raise HifieditError(f"{folder}: {e}") from e
        check_model_state(rectifier, load_safetensors(w_path), f"Rectifier weights in {w_path}")
        return rectifier.to(device)

    @classmethod
    def load_frozen(cls, folder: str | Path, backbone) -> "Rectifier":
        """For use beside ``backbone`` (a Backbone, checked by content hash when the rectifier
        records its base, or a bare U-Net): on its device, in eval mode, no grads."""
        digest = None
        if hasattr(backbone, "unet"):
            from hifiedit.diffusion.backbone import model_digest

            digest, backbone = model_digest(backbone), backbone.unet
        return cls.from_pretrained(folder, backbone, backbone.device,
                                   base_digest=digest).eval().requires_grad_(False)


# The shipped rectifier for each inversion: a rectifier corrects the chain its inversion
# starts, and on the other inversion's chain it costs fidelity (docs/results.md).
DEFAULT_RECTIFIERS = {"ddim": default_name("rectifier"), "fixed-point": "openmoji32-rectifier-fp"}
DEFAULT_RECTIFIER = DEFAULT_RECTIFIERS["ddim"]


def resolve_rectifier_path(name_or_path: str | Path | None, inversion=None) -> Path | None:
    """A rectifier folder: an existing path, a shipped name, "default" (the shipped one for
    ``inversion``, an `Inversion` or its method name; None when this installation ships none),
    or None/"none" for no rectifier."""
    if name_or_path is None or str(name_or_path) == "none":
        return None
    if str(name_or_path) == "default":
        method = getattr(inversion, "method", inversion) or "ddim"
        name = DEFAULT_RECTIFIERS[str(method)]
        return resolve(name, "rectifier") if is_shipped(name, "rectifier") else None
    return resolve(name_or_path, "rectifier")


def _is_default_base(backbone) -> bool:
    base = MODELS_DIR / default_name("base")
    return getattr(backbone, "path", None) is not None and Path(backbone.path).resolve() == base.resolve()


def load_rectifier(name_or_path: str | Path | None, backbone, missing: str | None = None,
                   inversion=None) -> tuple[Rectifier | None, str | None]:
    """A frozen rectifier beside ``backbone`` (checked against its U-Net, on its device) and the
    name reports give it (:func:`hifiedit.models.portable_name`).

    None or "none": no rectifier. "default": the shipped rectifier, for the shipped base model
    only (the one for ``inversion``): it was trained on that base's trajectories and modulates
    its layers, so for any other base "default" means none. When the name gives no rectifier, ``missing`` (if given) is
    raised as the error; otherwise the result is (None, None)."""
    wanted = name_or_path is not None and str(name_or_path) != "none"
    if str(name_or_path) == "default" and not _is_default_base(backbone):
        name_or_path = None
    path = resolve_rectifier_path(name_or_path, inversion)
    if path is None:
        if missing is not None and wanted:
            raise HifieditError(missing)
        return None, None
    return Rectifier.load_frozen(path, backbone), portable_name(path)
