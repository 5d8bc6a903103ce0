"""The rectifier hypernetwork and per-sample weight modulation (DESIGN §1, "Rectifier")."""

from hifiedit.rectifier.model import (
    MODULATED_PREFIXES,
    DEFAULT_RECTIFIER,
    DEFAULT_RECTIFIERS,
    Rectifier,
    RectifierConfig,
    load_rectifier,
    modulated_layers,
    resolve_rectifier_path,
)
from hifiedit.rectifier.modulate import (
    METHODS,
    DownPass,
    modulated_forward,
    per_sample_convs,
    split_supported,
    unet_down,
    unet_up,
    modulated_weights,
    rectified_eps,
    rectified_eps_fn,
)

__all__ = [
    "METHODS",
    "MODULATED_PREFIXES",
    "DEFAULT_RECTIFIER",
    "DEFAULT_RECTIFIERS",
    "DownPass",
    "Rectifier",
    "RectifierConfig",
    "load_rectifier",
    "modulated_forward",
    "modulated_layers",
    "modulated_weights",
    "per_sample_convs",
    "rectified_eps",
    "rectified_eps_fn",
    "resolve_rectifier_path",
    "split_supported",
    "unet_down",
    "unet_up",
]
