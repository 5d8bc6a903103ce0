"""Per-image reconstruction metrics on images in [0, 1] (DESIGN §3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] → [0, 1], clamped: metrics are computed on what a viewer would see."""
    return ((x.float() + 1) / 2).clamp(0, 1)


def mae(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs().flatten(1).mean(1)


def psnr(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    mse = (a - b).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp(min=eps))


def _gaussian_window(size: int, sigma: float, channels: int, dtype) -> torch.Tensor:
    coords = torch.arange(size, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """SSIM of Wang et al. (2004): Gaussian window 11/σ 1.5, K1 0.01, K2 0.03, data range 1,
    'valid' filtering (as scikit-image with gaussian_weights=True), mean over channels."""
    # float64: σ² = E[x²] − μ² cancels badly in float32 against the small constant C2.
    out_dtype = a.dtype
    a, b = a.double(), b.double()
    c = a.shape[1]
    win = _gaussian_window(window, sigma, c, a.dtype).to(a.device)
    filt = lambda x: F.conv2d(x, win, groups=c)  # noqa: E731
    mu_a, mu_b = filt(a), filt(b)
    var_a = filt(a * a) - mu_a**2
    var_b = filt(b * b) - mu_b**2
    cov = filt(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1).to(out_dtype)
