"""The rectifier hypernetwork and per-sample weight modulation (DESIGN §1, "Rectifier")."""

from hifiedit.rectifier.model import (
    MODULATED_PREFIXES,
    Rectifier,
    RectifierConfig,
    modulated_layers,
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
    "DownPass",
    "Rectifier",
    "RectifierConfig",
    "modulated_forward",
    "modulated_layers",
    "modulated_weights",
    "per_sample_convs",
    "rectified_eps",
    "rectified_eps_fn",
    "split_supported",
    "unet_down",
    "unet_up",
]
