"""`hifiedit eval recon`: how faithfully the base model reconstructs held-out images.

Methods (DESIGN §3, issue "Foundation" item 7):
  ddim   — deterministic inversion to t0 (S_for steps) then generation (S steps). Reconstructs
           well even with a poor model, so it checks the sampler more than the model.
  sdedit — stochastic forward to t0 (seeded Gaussian noise), then S DDIM steps: how well the
           model *generates* from a half-noised image, which editing and translation lean on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from hifiedit.errors import HifieditError
from hifiedit.runtime import machine_description, write_text_atomic

METHODS = ("ddim", "sdedit")


@dataclass(frozen=True)
class ReconConfig:
    model: str = "default"
    split: str = "test"
    steps: tuple = (6, 10, 20, 40, 100)
    t0: int = 400
    s_for: int | None = None  # fixed inversion steps; None = the same S as generation
    limit: int | None = None
    seed: int = 0
    methods: tuple = METHODS
    batch_size: int = 128
    grid_images: int = 8

    def validate(self, num_train_timesteps: int) -> None:
        if not 1 <= self.t0 < num_train_timesteps:
            raise HifieditError(f"--t0 must be in [1, {num_train_timesteps}), got {self.t0}.")
        bad = [s for s in self.steps if not 1 <= s <= self.t0]
        if bad or (self.s_for is not None and not 1 <= self.s_for <= self.t0):
            raise HifieditError(f"Step counts must be in [1, t0={self.t0}]; got "
                                f"{bad or [self.s_for]}.")
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown:
            raise HifieditError(f"Unknown methods {unknown}; choose from {list(METHODS)}.")
        if self.limit is not None and self.limit < 1:
            raise HifieditError("--limit must be ≥ 1.")


def reconstruct(backbone, x0: torch.Tensor, method: str, steps: int, t0: int,
                s_for: int | None = None, generator: torch.Generator | None = None):
    """One reconstruction of a batch in [-1, 1] by `method` (see module docstring)."""
    from hifiedit.diffusion.ddim import generate, invert, stochastic_forward
    from hifiedit.diffusion.schedule import ddim_timesteps

    ac = backbone.alphas_cumprod
    with torch.no_grad():
        if method == "ddim":
            x_t0 = invert(backbone.eps, x0, ddim_timesteps(t0, s_for or steps), ac).final
        elif method == "sdedit":
            x_t0 = stochastic_forward(x0, t0, ac, generator=generator)
        else:
            raise HifieditError(f"Unknown method {method!r}.")
        return generate(backbone.eps, x_t0, ddim_timesteps(t0, steps), ac).final


def _check_outputs(paths: list[Path | None], force: bool) -> None:
    for p in paths:
        if p is not None and p.exists() and not force:
            raise HifieditError(f"{p} exists; pass --force to overwrite it.")
        if p is not None:
            try:
                p.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise HifieditError(f"Cannot create {p.parent}: {e.strerror or e}.") from e


def run_recon_eval(config: ReconConfig, json_path: Path | None = None,
                   grid_path: Path | None = None, force: bool = False,
                   progress: bool = True, backbone=None, images: torch.Tensor | None = None):
    """Evaluate and return the report dict; optionally write the JSON and an image grid
    (rows: original, then each method × steps, for the first `grid_images` images)."""
    from tqdm import tqdm

    from hifiedit.diffusion.backbone import load_backbone
    from hifiedit.eval import metrics

    _check_outputs([json_path, grid_path], force)
    backbone = backbone or load_backbone(config.model)
    config.validate(backbone.num_train_timesteps)
    if images is None:
        from hifiedit.data.openmoji import load_openmoji

        images = load_openmoji(backbone.sample_size).tensor(config.split)
    if config.limit:
        images = images[: config.limit]
    if len(images) == 0:
        raise HifieditError(f"No images in split {config.split!r}.")

    rows, grid_rows = [], [images[: config.grid_images]]
    jobs = [(m, s) for m in config.methods for s in config.steps]
    for method, steps in tqdm(jobs, desc="eval recon", disable=not progress):
        g = torch.Generator().manual_seed(config.seed)  # same noise for every S: comparable rows
        sums = {"mae": 0.0, "psnr": 0.0, "ssim": 0.0}
        first = None
        for batch in images.split(config.batch_size):
            rec = reconstruct(backbone, batch, method, steps, config.t0, config.s_for, g)
            first = rec if first is None else first
            a, b = metrics.to_unit(rec), metrics.to_unit(batch)
            for name in sums:
                sums[name] += getattr(metrics, name)(a, b).sum().item()
        rows.append({"method": method, "s_for": (config.s_for or steps) if method == "ddim" else 0,
                     "steps": steps, **{k: v / len(images) for k, v in sums.items()}})
        grid_rows.append(first[: config.grid_images])

    report = {"model": str(config.model), "split": config.split, "t0": config.t0,
              "n_images": len(images), "seed": config.seed, "machine": machine_description(),
              "rows": rows}
    if json_path is not None:
        write_text_atomic(json_path, json.dumps(report, indent=1) + "\n")
    if grid_path is not None:
        from hifiedit.eval.grids import save_grid

        save_grid(torch.cat(grid_rows), grid_path, nrow=len(grid_rows[0]), scale=3)
    return report


def format_table(report: dict) -> str:
    lines = [f"model {report['model']}  split {report['split']}  t0 {report['t0']}  "
             f"n_images {report['n_images']}",
             f"{'method':8} {'s_for':>5} {'steps':>5} {'MAE':>8} {'PSNR':>7} {'SSIM':>6}"]
    for r in report["rows"]:
        lines.append(f"{r['method']:8} {r['s_for']:>5} {r['steps']:>5} {r['mae']:8.4f} "
                     f"{r['psnr']:7.2f} {r['ssim']:6.3f}")
    return "\n".join(lines)


def run_demo(out: Path, model: str = "default", n_images: int = 8, force: bool = False) -> str:
    """The main job on the embedded default: reconstruct a few test-split emoji at 6 and 40
    steps (DDIM and SDEdit) and write a side-by-side grid and a metrics JSON."""
    out = Path(out)
    config = ReconConfig(model=model, steps=(6, 40), limit=n_images, grid_images=n_images)
    report = run_recon_eval(config, json_path=out / "metrics.json",
                            grid_path=out / "reconstructions.png", force=force)
    return (format_table(report) + f"\n\nwrote {out / 'reconstructions.png'} (rows: original, "
            + ", ".join(f"{r['method']}@{r['steps']}" for r in report["rows"])
            + f") and {out / 'metrics.json'}")

