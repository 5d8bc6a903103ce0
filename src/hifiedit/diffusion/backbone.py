"""Loading a pretrained unconditional diffusion U-Net from a local folder (DESIGN §2).

The U-Net knows nothing about timesteps spacing or samplers (STYLE lesson 1): a `Backbone`
is the network, its training noise schedule ᾱ_t, and one method `eps(x, t)` that returns the
ε-prediction whatever the model was trained to predict.

Accepted folders (always read with `local_files_only=True`, nothing is downloaded):
  - a diffusers pipeline folder: `model_index.json`, `unet/`, `scheduler/` (e.g. a local
    snapshot of google/ddpm-celebahq-256, or the models this package trains);
  - a bare `UNet2DModel` folder: `config.json` + weights, with `scheduler_config.json` beside
    it or in a `scheduler/` sibling.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from hifiedit.diffusion.schedule import alphas_cumprod_from_config
from hifiedit.errors import HifieditError
from hifiedit.models import MODELS_DIR, default_name, portable_name, resolve

DEFAULT_BASE = default_name("base")
_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
_PREDICTIONS = ("epsilon", "v_prediction", "sample")


@dataclass
class Backbone:
    """A frozen pretrained U-Net with the schedule it was trained on."""

    unet: torch.nn.Module
    alphas_cumprod: torch.Tensor  # float64, length T
    prediction_type: str
    name: str
    path: Path
    # The precision of the U-Net's layers (autocast; hifiedit.runtime.Runtime): weights and
    # every sampler quantity stay float32/float64 whatever it is.
    compute_dtype: torch.dtype = torch.float32

    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    @property
    def sample_size(self) -> int:
        return int(self.unet.config.sample_size)

    @property
    def in_channels(self) -> int:
        return int(self.unet.config.in_channels)

    def autocast(self):
        """The context in which this model's layers run at ``compute_dtype``."""
        from hifiedit.runtime import autocast

        return autocast(module_device(self.unet), self.compute_dtype)

    def eps(self, x: torch.Tensor, t: torch.Tensor, unet: torch.nn.Module | None = None):
        """ε_θ(x_t, t). `unet` lets callers pass a modulated or edited copy of the network.
        Returned in x's dtype whatever precision the layers computed in."""
        t = t.to(x.device) if isinstance(t, torch.Tensor) else t
        with self.autocast():
            out = (unet or self.unet)(x, t).sample
        out = out.to(x.dtype)
        if out.shape[1] == 2 * x.shape[1]:
            # Learned-variance models (e.g. guided diffusion) output [ε, v]; DDIM uses only ε.
            out = out[:, : x.shape[1]]
        if self.prediction_type == "epsilon":
            return out
        a = self.alphas_cumprod.to(x.device)[t].to(x.dtype).view(-1, 1, 1, 1)
        if self.prediction_type == "v_prediction":  # v = √ᾱ ε − √(1−ᾱ) x0
            return a.sqrt() * out + (1 - a).sqrt() * x
        return (x - a.sqrt() * out) / (1 - a).sqrt()  # "sample": the model predicts x0


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter (the CPU for one without parameters)."""
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def resolve_model_path(name_or_path: str | Path) -> Path:
    return resolve(name_or_path, "base")


def _find_parts(path: Path) -> tuple[Path, Path]:
    """(unet folder, scheduler config file) inside a pipeline or bare U-Net folder."""
    if not path.is_dir():
        raise HifieditError(f"{path} is not a folder; a diffusers model folder is expected.")
    unet_dir = path / "unet" if (path / "unet").is_dir() else path
    if not (unet_dir / "config.json").is_file():
        raise HifieditError(
            f"{path} is not a diffusers model folder: missing 'unet/config.json' "
            "(pipeline layout) or 'config.json' (bare UNet2DModel folder)."
        )
    candidates = [
        path / "scheduler" / "scheduler_config.json",
        unet_dir / "scheduler_config.json",
        path / "scheduler_config.json",
    ]
    scheduler = next((c for c in candidates if c.is_file()), None)
    if scheduler is None:
        raise HifieditError(
            f"{path} has no noise schedule: missing 'scheduler/scheduler_config.json' "
            "(or 'scheduler_config.json' beside the U-Net config)."
        )
    return unet_dir, scheduler


def load_backbone(
    name_or_path: str | Path = "default",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    compute_dtype: torch.dtype = torch.float32,
) -> Backbone:
    """Load a frozen `UNet2DModel` and its schedule from a local folder or a shipped name.
    ``dtype``: the weights' storage; ``compute_dtype``: the precision its layers run at
    (autocast, :class:`hifiedit.runtime.Runtime`)."""
    from diffusers import UNet2DModel

    from safetensors import SafetensorError

    from hifiedit.weights import check_finite, check_loading_info, check_safetensors_file, short

    path = resolve_model_path(name_or_path)
    unet_dir, scheduler_file = _find_parts(path)
    config, scheduler = _read_json(unet_dir / "config.json"), _read_json(scheduler_file)
    if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise HifieditError(
            f"{unet_dir / 'config.json'} describes a {config['_class_name']}; hifiedit edits "
            "unconditional UNet2DModel networks only."
        )
    sizes = config.get("sample_size", 32)
    for key, value in (("in_channels", config.get("in_channels", 3)),
                       ("out_channels", config.get("out_channels", 3)),
                       *((("sample_size", v) for v in sizes) if isinstance(sizes, list)
                         else [("sample_size", sizes)])):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise HifieditError(f"{unet_dir / 'config.json'}: {key} must be a positive integer, "
                                f"got {value!r}.")
    if not any((unet_dir / w).is_file() for w in _WEIGHT_FILES):
        raise HifieditError(f"{unet_dir} has a config but no weights ({' or '.join(_WEIGHT_FILES)}).")
    if (unet_dir / _WEIGHT_FILES[0]).is_file():
        check_safetensors_file(unet_dir / _WEIGHT_FILES[0])
    prediction = scheduler.get("prediction_type", "epsilon")
    if prediction not in _PREDICTIONS:
        raise HifieditError(f"Unsupported prediction_type {prediction!r} in {scheduler_file}.")
    out_ch, in_ch = config.get("out_channels", 3), config.get("in_channels", 3)
    if out_ch not in (in_ch, 2 * in_ch):
        raise HifieditError(f"U-Net has {in_ch} input but {out_ch} output channels; cannot read ε.")
    try:
        # low_cpu_mem_usage=False: the same result without requiring `accelerate`.
        unet, info = UNet2DModel.from_pretrained(unet_dir, local_files_only=True,
                                                 torch_dtype=dtype, low_cpu_mem_usage=False,
                                                 output_loading_info=True)
    except (OSError, ValueError, RuntimeError, TypeError, KeyError, SafetensorError) as e:
        raise HifieditError(f"Could not load the U-Net in {unet_dir}: {short(e)}") from e
    check_loading_info(info, unet_dir)
    check_finite(unet.state_dict(), unet_dir)
    try:
        alphas_cumprod = alphas_cumprod_from_config(scheduler)
    except HifieditError as e:
        raise HifieditError(f"{scheduler_file}: {e}") from e
    except (TypeError, ValueError) as e:
        raise HifieditError(f"{scheduler_file}: invalid noise schedule ({short(e)}).") from e
    unet.to(device).eval().requires_grad_(False)
    return Backbone(
        unet=unet,
        alphas_cumprod=alphas_cumprod,
        prediction_type=prediction,
        name=path.name,
        path=path,
        compute_dtype=compute_dtype,
    )


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HifieditError(f"{path} is not valid JSON: {e}.") from e
    if not isinstance(value, dict):
        raise HifieditError(f"{path} must hold a JSON object.")
    return value


def model_digest(backbone) -> str:
    """sha256 over the U-Net's parameters and buffers, its prediction type and ᾱ table."""
    h = hashlib.sha256()
    for name, tensor in sorted(backbone.unet.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    h.update(backbone.prediction_type.encode())
    h.update(backbone.alphas_cumprod.detach().cpu().to(torch.float64).numpy().tobytes())
    return h.hexdigest()
