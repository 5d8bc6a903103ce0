"""Edit parameters ψ (DESIGN §1, "Editing training, score-matching style"): ψ = θ + Δ_edit.

DESIGN §1 leaves the form of ψ open ("full copy, a subset, or low-rank adapters"); all three
are one mechanism here: every edited U-Net parameter θ_ℓ gets an additive offset module, and
ψ_ℓ = θ_ℓ + Δ_ℓ with Δ = 0 at initialisation, so ψ starts exactly at θ.

* ``lora`` (default): Δ_ℓ = (α/r)·B_ℓA_ℓ reshaped to θ_ℓ's shape, on every 2-D (linear) and
  4-D (convolution) weight under ``targets`` (Hu et al. 2021; A random, B zero). DiffusionCLIP
  fine-tunes the whole U-Net (450 MB per attribute for its CelebA-HQ model); a rank-8 adapter
  on every weight of the default 2.5 M-parameter U-Net is 274 k numbers, a 1.1 MB checkpoint,
  inside the 2 MB bound that keeps shipped edits small (rank 16 would not be).
* ``subset``: a dense Δ for every parameter whose name starts with one of ``targets``.
* ``full``: a dense Δ for every parameter (a full fine-tune; checkpoint as large as θ).

The offsets are attached to a frozen copy of the base U-Net with
``torch.nn.utils.parametrize``, so ψ *is* an ordinary ``UNet2DModel`` whose ``conv.weight``
evaluates to θ + Δ with a graph back to the factors: :meth:`Backbone.eps` runs it as is, and
the rectifier modulates it like θ (``rectified_eps(..., unet=ψ)``: ψ ⊙ (1 + R)). Checkpoints
hold only the offsets, plus a config naming the base model by content hash
(:func:`hifiedit.diffusion.backbone.model_digest`): an edit is never applied to another θ.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from hifiedit import __version__
from hifiedit.errors import HifieditError
from hifiedit.runtime import atomic_folder

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "edit.safetensors"
PARAM_METHODS = ("lora", "subset", "full")
# Bound for one edit checkpoint of the default domain: shipped edits stay small in the package.
MAX_DEFAULT_CHECKPOINT_BYTES = 2_000_000


@dataclass(frozen=True)
class EditParamsConfig:
    method: str = "lora"
    rank: int = 8  # lora only: see the module docstring for the size it gives
    alpha: float = 8.0  # lora only: Δ is scaled by alpha / rank (1 here, as in the LoRA paper's default)
    # Parameter-name prefixes to edit ("" = every one). lora: their 2-D/4-D weights; subset:
    # every parameter under them; full: ignored.
    targets: tuple = ("",)

    def validate(self) -> None:
        if self.method not in PARAM_METHODS:
            raise HifieditError(f"edit parameter method must be one of {PARAM_METHODS}, got {self.method!r}.")
        if self.method == "lora" and self.rank < 1:
            raise HifieditError(f"LoRA rank must be ≥ 1, got {self.rank}.")
        if not self.targets or not all(isinstance(t, str) for t in self.targets):
            raise HifieditError("edit targets must be a non-empty list of parameter-name prefixes.")


def edited_layers(unet: nn.Module, config: EditParamsConfig) -> dict[str, tuple[int, ...]]:
    """``{parameter name: shape}`` that ψ offsets, in ``named_parameters()`` order."""
    config.validate()
    targets = ("",) if config.method == "full" else tuple(config.targets)
    layers = {name: tuple(p.shape) for name, p in unet.named_parameters()
              if name.startswith(targets) and (config.method != "lora" or p.ndim in (2, 4))}
    if not layers:
        raise HifieditError(f"no U-Net parameter matches the edit targets {list(config.targets)}"
                            f"{' (2-D/4-D weights only for lora)' if config.method == 'lora' else ''}.")
    return layers


class LowRankDelta(nn.Module):
    """θ ↦ θ + (α/r)·(B A).view(θ.shape); B starts at zero, so ψ starts at θ while
    ∂L/∂B = ∂L/∂W · Aᵀ ≠ 0 lets training move at the first step."""

    def __init__(self, shape: tuple[int, ...], rank: int, scale: float, generator: torch.Generator):
        super().__init__()
        self.shape, self.scale = tuple(shape), float(scale)
        fan_in = math.prod(shape[1:])
        self.lora_A = nn.Parameter(torch.randn(rank, fan_in, generator=generator) / math.sqrt(fan_in))
        self.lora_B = nn.Parameter(torch.zeros(shape[0], rank))

    def delta(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A).view(self.shape) * self.scale

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        return theta + self.delta()


class DenseDelta(nn.Module):
    """θ ↦ θ + Δ with a free Δ (subset and full fine-tuning), zero at the start."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.delta_ = nn.Parameter(torch.zeros(shape))

    def delta(self) -> torch.Tensor:
        return self.delta_

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        return theta + self.delta_


def _contiguous_input(module, args):
    """torch 2.13 (CPU) segfaults in GroupNorm's backward when the weight needs a gradient but
    a non-contiguous input (diffusers' attention blocks return one) does not: subset and full
    edits train norms of the frozen U-Net exactly there. A contiguous copy avoids it; only
    when a graph is built, so inference keeps the U-Net's own kernels (ψ = θ bit for bit)."""
    if not torch.is_grad_enabled():
        return None
    return tuple(a.contiguous() if torch.is_tensor(a) else a for a in args)


# Checkpoint key suffix of each factor (the safetensors file names them by U-Net parameter).
_SUFFIX = {"lora_A": "lora_A", "lora_B": "lora_B", "delta_": "delta"}


class EditParams(nn.Module):
    """The trainable part of ψ: one offset module per edited U-Net parameter."""

    def __init__(self, config: EditParamsConfig, layers: dict[str, tuple[int, ...]], seed: int = 0):
        super().__init__()
        config.validate()
        self.config = config
        self.layers = {n: tuple(int(s) for s in shape) for n, shape in layers.items()}
        gen = torch.Generator().manual_seed(seed)
        scale = config.alpha / config.rank
        self.deltas = nn.ModuleList(
            LowRankDelta(s, config.rank, scale, gen) if config.method == "lora" and len(s) in (2, 4)
            else DenseDelta(s) for s in self.layers.values())

    @classmethod
    def for_unet(cls, unet: nn.Module, config: EditParamsConfig = EditParamsConfig(),
                 seed: int = 0) -> "EditParams":
        """ψ = θ for this U-Net (zero offsets); ``seed`` draws the LoRA A factors."""
        return cls(config, edited_layers(unet, config), seed)

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------------ materialising ψ

    def as_unet(self, unet: nn.Module) -> nn.Module:
        """ψ as a U-Net: a frozen copy of θ whose edited parameters evaluate to θ + Δ.

        The offset modules are *shared* with this object, not copied: gradients of anything
        computed with the returned U-Net reach this object's parameters (training), and a
        later ``load_tensors`` changes it too. Use it wherever θ's U-Net goes:
        ``backbone.eps(x, t, unet=ψ)``, ``rectified_eps(..., unet=ψ)``.
        """
        self.check_unet(unet)
        psi = copy.deepcopy(unet).eval().requires_grad_(False)
        for (name, _), delta in zip(self.layers.items(), self.deltas):
            path, attr = name.rsplit(".", 1)
            module = psi.get_submodule(path)
            parametrize.register_parametrization(module, attr, delta)
            if isinstance(module, nn.GroupNorm) and not module._forward_pre_hooks:
                module.register_forward_pre_hook(_contiguous_input)
        return psi

    def weights(self, unet: nn.Module) -> dict[str, torch.Tensor]:
        """``{name: θ + Δ}`` for the edited parameters: ψ for ``torch.func.functional_call``."""
        self.check_unet(unet)
        params = dict(unet.named_parameters())
        return {name: delta(params[name]) for name, delta in zip(self.layers, self.deltas)}

    def check_unet(self, unet: nn.Module) -> None:
        """Refuse a U-Net that lacks an edited parameter or has it in another shape."""
        params = {n: tuple(p.shape) for n, p in unet.named_parameters()}
        missing = [n for n in self.layers if n not in params]
        wrong = [f"{n} {params[n]} ≠ {s}" for n, s in self.layers.items() if n in params and params[n] != s]
        if missing or wrong:
            raise HifieditError("these edit parameters were built for a different U-Net: "
                                + "; ".join(filter(None, [f"absent {missing[:4]}" if missing else "",
                                                          f"shapes {wrong[:4]}" if wrong else ""])) + ".")

    # ------------------------------------------------------------------ tensors by U-Net name

    def tensors(self) -> dict[str, torch.Tensor]:
        """``{"<U-Net parameter>.lora_A" | ".lora_B" | ".delta": tensor}``: the checkpoint."""
        return {f"{name}.{_SUFFIX[k]}": v.detach().cpu().contiguous()
                for name, delta in zip(self.layers, self.deltas)
                for k, v in delta.named_parameters()}

    def load_tensors(self, tensors: dict[str, torch.Tensor], what: str = "edit weights") -> None:
        """Strict: every expected key, no other, each in its shape (STYLE lesson 7)."""
        own = self.tensors()
        missing = sorted(set(own) - set(tensors))
        unexpected = sorted(set(tensors) - set(own))
        wrong = sorted(k for k in set(own) & set(tensors) if own[k].shape != tensors[k].shape)
        if missing or unexpected or wrong:
            raise HifieditError(f"{what} do not match the edit config: missing {missing[:4]}, "
                                f"unexpected {unexpected[:4]}, wrong shape {wrong[:4]}.")
        with torch.no_grad():
            for name, delta in zip(self.layers, self.deltas):
                for k, v in delta.named_parameters():
                    v.copy_(tensors[f"{name}.{_SUFFIX[k]}"])


def in_interval(t: torch.Tensor, t_edit: int) -> bool:
    """Whether the edit acts at this generation level: the editing interval [t_edit, t0]
    (Asyrp's t_edit). The last, low-noise steps only restore detail, so leaving them to the
    base keeps what the edit should not touch."""
    return int(t.reshape(-1)[0]) >= t_edit


def within_interval(edited, base, t_edit: int):
    """An ε-callable that is ``edited`` inside the editing interval and ``base`` below it;
    ``base`` is a zero-argument factory, called only when the interval leaves it a level."""
    if t_edit <= 0:
        return edited
    base = base()
    return lambda x, t: edited(x, t) if in_interval(t, t_edit) else base(x, t)


@dataclass
class Edit:
    """A trained edit: ψ's offsets, the base model they belong to (by content hash) and what
    produced them (``info``: src/tgt texts, training method, t0, steps, rectifier, …)."""

    params: EditParams
    base_digest: str
    info: dict = field(default_factory=dict)
    name: str = ""
    _unets: dict = field(default_factory=dict, repr=False)

    @property
    def t0(self) -> int:
        return int(self.info.get("t0", 400))

    @property
    def t_edit(self) -> int:
        """The edit acts at levels t ≥ t_edit; the base finishes the image below (0: always)."""
        return int(self.info.get("t_edit") or 0)

    @property
    def rectified(self) -> bool:
        """Whether training applied the rectifier (inference then applies it too)."""
        return self.info.get("rectifier") not in (None, "none")

    def check_base(self, backbone) -> None:
        from hifiedit.diffusion.backbone import model_digest

        if model_digest(backbone) != self.base_digest:
            raise HifieditError(
                f"edit {self.name or '(unnamed)'} was trained on another base model "
                f"({self.info.get('base_model', '?')}, sha256 {self.base_digest[:12]}…) than "
                f"{backbone.name} (sha256 {model_digest(backbone)[:12]}…); it cannot be applied.")

    def unet(self, backbone) -> nn.Module:
        """ψ as a U-Net for ``backbone`` (checked to be the base it was trained on; cached)."""
        key = id(backbone.unet)
        if key not in self._unets:
            from hifiedit.diffusion.backbone import module_device

            self.check_base(backbone)
            self.params.to(module_device(backbone.unet))
            self._unets[key] = self.params.as_unet(backbone.unet)
        return self._unets[key]

    def save_pretrained(self, folder: str | Path) -> Path:
        """config.json + edit.safetensors (offsets only), atomically."""
        from safetensors.torch import save_file

        folder = Path(folder)
        with atomic_folder(folder, "edit") as tmp:
            meta = {"_class_name": "HifiEdit", "hifiedit_version": __version__,
                    "base_digest": self.base_digest, **self.info,
                    "params": asdict(self.params.config),
                    "layers": {n: list(s) for n, s in self.params.layers.items()}}
            (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=1) + "\n")
            save_file(self.params.tensors(), str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path, backbone=None) -> "Edit":
        """Strict loading; with ``backbone``, refuses one that is not the edit's base model."""
        from hifiedit.weights import load_safetensors, read_folder_meta

        folder = Path(folder)
        cfg_path = folder / CONFIG_NAME
        meta, w_path = read_folder_meta(folder, CONFIG_NAME, WEIGHTS_NAME, "HifiEdit", "an edit")
        if "base_digest" not in meta:
            raise HifieditError(f"{cfg_path} does not describe a hifiedit edit (no base_digest).")
        from hifiedit.config import config_from_dict

        try:
            config = config_from_dict(EditParamsConfig, meta.pop("params", {}))
            layers = {n: tuple(int(v) for v in s) for n, s in meta.pop("layers", {}).items()}
            for key in ("t0", "t_edit", "s_for", "s_train"):
                value = meta.get(key)
                if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                          or value < 0):
                    raise HifieditError(f"{key} must be an integer ≥ 0, got {value!r}.")
        except HifieditError as e:
            raise HifieditError(f"{cfg_path}: {e}") from e
        except (AttributeError, TypeError, ValueError) as e:
            raise HifieditError(f"{cfg_path}: invalid edit config ({e}).") from e
        if not layers:
            raise HifieditError(f"{cfg_path} records no edited parameters.")
        edit = cls(EditParams(config, layers), meta.pop("base_digest"), meta, name=folder.name)
        edit.params.load_tensors(load_safetensors(w_path), f"edit weights in {w_path}")
        if backbone is not None:
            try:
                edit.check_base(backbone)
                edit.params.check_unet(backbone.unet)
            except HifieditError as e:
                raise HifieditError(f"{folder}: {e}") from e
        return edit


def resolve_edit_path(name_or_path: str | Path) -> Path:
    """An existing edit folder, or the name of an edit shipped with hifiedit."""
    from hifiedit.models import resolve

    return resolve(name_or_path, "edit")


def load_edit(name_or_path: str | Path, backbone=None) -> Edit:
    return Edit.from_pretrained(resolve_edit_path(name_or_path), backbone)
