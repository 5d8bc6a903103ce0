"""`hifiedit bench`: time per DDIM generation step, plain vs rectified.

A rectified step needs a base pass (for P_t), the rectifier, and a modulated pass at the same
(x_t, t) (DESIGN §1), so ≈ 2× a plain step is the floor of a straight implementation; the
design budget is ≤ 2.5× at batch 16. Each step is timed through ``generate``'s callback, i.e.
exactly what a user's chain pays, ε-function and DDIM update included; the median over steps
(after one warm-up chain) is reported. Timing does not depend on the weights, so without a
trained rectifier a freshly initialised one is timed, and the report says so.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

from hifiedit.errors import HifieditError
from hifiedit.models import portable_name
from hifiedit.runtime import machine_description, write_text_atomic


def step_times_ms(eps_fn, x_t0: torch.Tensor, timesteps, alphas_cumprod, repeats: int) -> list[float]:
    """Wall time of every generation step over ``repeats`` chains, after one warm-up chain."""
    from hifiedit.diffusion.ddim import generate

    times: list[float] = []
    with torch.no_grad():
        generate(eps_fn, x_t0, timesteps, alphas_cumprod)  # warm-up: allocator, kernels
        for _ in range(repeats):
            last = [time.perf_counter()]

            def tick(*_):
                now = time.perf_counter()
                times.append(1000 * (now - last[0]))
                last[0] = now

            generate(eps_fn, x_t0, timesteps, alphas_cumprod, callback=tick)
    return times


def _rectifier(backbone, name: str | None):
    """(rectifier, description): a trained one when available, else a fresh (zero) one."""
    from hifiedit.rectifier import Rectifier, load_rectifier

    rectifier, what = load_rectifier(name, backbone)
    if rectifier is not None:
        return rectifier, what
    fresh = Rectifier.for_unet(backbone.unet).eval().requires_grad_(False)
    return fresh, ("freshly initialised (no trained rectifier given or shipped); step time "
                   "does not depend on the weights")


def run_bench(model: str = "default", rectifier: str | None = "default", batches=(1, 16),
              t0: int = 400, steps: int = 10, repeats: int = 2, json_path: Path | None = None,
              force: bool = False, backbone=None) -> dict:
    from hifiedit.diffusion.backbone import load_backbone
    from hifiedit.diffusion.schedule import ddim_timesteps
    from hifiedit.rectifier import rectified_eps_fn

    if json_path is not None and Path(json_path).exists() and not force:
        raise HifieditError(f"{json_path} exists; pass --force to overwrite it.")
    if steps < 1 or repeats < 1 or not batches or min(batches) < 1:
        raise HifieditError("bench needs steps ≥ 1, repeats ≥ 1 and batch sizes ≥ 1.")
    backbone = backbone or load_backbone(model)
    if not 1 <= steps <= t0 < backbone.num_train_timesteps:
        raise HifieditError(f"bench needs 1 ≤ steps ≤ t0 < {backbone.num_train_timesteps}.")
    rect, rect_desc = _rectifier(backbone, rectifier)
    grid = ddim_timesteps(t0, steps)
    size, ch = backbone.sample_size, backbone.in_channels
    step_ms: dict[str, dict[str, float]] = {"ddim": {}, "rectified": {}}
    for b in batches:
        g = torch.Generator().manual_seed(0)
        x0 = torch.rand((b, ch, size, size), generator=g) * 2 - 1
        x_t0 = torch.randn((b, ch, size, size), generator=g)
        fns = {"ddim": backbone.eps, "rectified": rectified_eps_fn(backbone, rect, x0, timesteps=grid)}
        for name, fn in fns.items():
            times = step_times_ms(fn, x_t0, grid, backbone.alphas_cumprod, repeats)
            step_ms[name][str(b)] = round(statistics.median(times), 2)
    report = {
        "step_ms": step_ms,
        "ratio": {k: round(step_ms["rectified"][k] / step_ms["ddim"][k], 3) for k in step_ms["ddim"]},
        "machine": machine_description(),
        "model": portable_name(backbone.path or model),
        "image_size": size,
        "rectifier": rect_desc,
        "rectifier_params": sum(p.numel() for p in rect.parameters()),
        "timed": f"median of {repeats}×{steps} generation steps (t0 {t0}) after one warm-up chain",
    }
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(Path(json_path), json.dumps(report, indent=1) + "\n")
    return report


def format_bench(report: dict) -> str:
    lines = [f"{'batch':>5} {'ddim ms':>9} {'rectified ms':>13} {'ratio':>6}"]
    for b, plain in report["step_ms"]["ddim"].items():
        lines.append(f"{b:>5} {plain:9.1f} {report['step_ms']['rectified'][b]:13.1f} "
                     f"{report['ratio'][b]:6.2f}")
    lines.append(f"rectifier: {report['rectifier']}")
    lines.append(f"machine: {report['machine']}")
    return "\n".join(lines)
