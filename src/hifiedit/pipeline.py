"""The one object users hold: invert an image with θ, generate it back (rectified, later edited).

It is the only place that wires the backbone, the rectifier and the DDIM samplers together
(STYLE lesson 1); the samplers stay pure functions and the models know nothing of timesteps.

    pipe = HifiEditPipeline.from_pretrained("default")
    x0 = load_image("emoji.png", pipe.image_size)
    out = pipe.reconstruct(x0, steps=6)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from hifiedit.diffusion.backbone import Backbone, load_backbone
from hifiedit.diffusion.ddim import DDIMConventions, Inversion, Trajectory, generate, invert
from hifiedit.errors import HifieditError
from hifiedit.rectifier import (  # noqa: F401  (the pipeline's names for them)
    DEFAULT_RECTIFIER,
    DEFAULT_RECTIFIERS,
    load_rectifier,
    resolve_rectifier_path,
)


def as_inversion(inversion: "Inversion | str | None") -> Inversion:
    """An :class:`Inversion` from itself, a method name ("ddim", "fixed-point") or None."""
    if isinstance(inversion, Inversion):
        return inversion
    return Inversion() if inversion is None else Inversion(str(inversion))


@dataclass
class HifiEditPipeline:
    backbone: Backbone
    rectifier: torch.nn.Module | None = None
    conventions: DDIMConventions = DDIMConventions()
    # How images are inverted (diffusion.ddim.Inversion): plain DDIM, or fixed-point, the exact
    # inverse of generation (+9 dB at 6 steps on the default model, docs/results.md).
    inversion: Inversion = Inversion()

    @classmethod
    def from_pretrained(cls, base: str | Path = "default", rectifier: str | Path | None = "default",
                        device: str | torch.device = "cpu",
                        inversion: Inversion | str | None = None,
                        precision: str = "fp32") -> "HifiEditPipeline":
        """``rectifier="default"`` is the shipped rectifier trained for ``inversion``'s
        trajectories, if the base is the shipped one and such a rectifier ships. ``device``:
        auto, cpu or cuda; ``precision``: fp32, bf16 or fp16, the precision of the networks'
        layers (the samplers stay float32/64; :func:`hifiedit.runtime.resolve_runtime`)."""
        from hifiedit.runtime import resolve_runtime

        inversion = as_inversion(inversion)
        rt = resolve_runtime(device, precision)
        backbone = load_backbone(base, device=rt.device, compute_dtype=rt.dtype)
        return cls(backbone, load_rectifier(rectifier, backbone, inversion=inversion)[0],
                   inversion=inversion)

    @property
    def image_size(self) -> int:
        return self.backbone.sample_size

    def timesteps(self, t0: int, steps: int) -> list[int]:
        """The DDIM grid, after checking the request is meaningful for this model."""
        T = self.backbone.num_train_timesteps
        if not 1 <= t0 < T:
            raise HifieditError(f"t0 must be in [1, {T}) for this model, got {t0}.")
        if not 1 <= steps <= t0:
            raise HifieditError(f"steps must be in [1, t0={t0}], got {steps}.")
        return self.conventions.timesteps(t0, steps)

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        s, c = self.image_size, self.backbone.in_channels
        if x.ndim != 4 or x.shape[1:] != (c, s, s):
            raise HifieditError(f"expected images of shape (B, {c}, {s}, {s}), got {tuple(x.shape)}.")
        return x.to(self.backbone.unet.device, self.backbone.unet.dtype)

    def invert(self, x0: torch.Tensor, t0: int = 400, steps: int = 40,
               progress: bool = False) -> Trajectory:
        """Deterministic inversion with the frozen base θ (never rectified or edited), plain
        DDIM or fixed-point as this pipeline's ``inversion`` says."""
        x0, timesteps = self._check(x0), self.timesteps(t0, steps)
        with _progress(progress, steps, "invert") as cb:
            return invert(self.backbone.eps, x0, timesteps, self.backbone.alphas_cumprod,
                          self.conventions, callback=cb, inversion=self.inversion)

    def generate(self, x_t0: torch.Tensor, t0: int, steps: int, x0: torch.Tensor | None = None,
                 unet: torch.nn.Module | None = None, progress: bool = False) -> Trajectory:
        """DDIM generation from x_t0. With a rectifier and the original images `x0`, every
        step is rectified towards x0 (DESIGN §1); `unet` swaps in edited weights ψ."""
        x_t0 = self._check(x_t0)
        eps_fn = self.eps_fn(x0, unet, self.timesteps(t0, steps))
        return self._generate(eps_fn, x_t0, t0, steps, progress)

    def eps_fn(self, x0: torch.Tensor | None = None, unet: torch.nn.Module | None = None,
               timesteps=None):
        """The ε-callable of generation over the grid `timesteps`: θ or ψ (`unet`), rectified
        towards `x0` when this pipeline has a rectifier and `x0` is given."""
        if self.rectifier is not None and x0 is not None:
            from hifiedit.rectifier import rectified_eps_fn

            return rectified_eps_fn(self.backbone, self.rectifier, self._check(x0), unet=unet,
                                    timesteps=timesteps)
        return (lambda x, t: self.backbone.eps(x, t, unet=unet)) if unet else self.backbone.eps

    def _generate(self, eps_fn, x_t0: torch.Tensor, t0: int, steps: int, progress: bool) -> Trajectory:
        timesteps = self.timesteps(t0, steps)
        with _progress(progress, steps, "generate") as cb:
            return generate(eps_fn, x_t0, timesteps, self.backbone.alphas_cumprod,
                            self.conventions, callback=cb)

    @torch.no_grad()
    def edit(self, x0: torch.Tensor, edits, steps: int, t0: int | None = None,
             s_for: int | None = None, rectify: bool | None = None,
             t_edit: int | None = None, progress: bool = False) -> torch.Tensor:
        """Edit images (DESIGN §1, "Inference"): invert x0 with θ (S_for steps, default
        `steps`), generate with the edited ψ modulated by R(x0, ·) at `steps` steps.

        `edits`: one :class:`~hifiedit.edit.Edit` or several; several are applied at once by
        DiffusionCLIP's noise mixing, the mean of their ε at every step. `t0` defaults to the
        edits' training t0 (which must then agree). `rectify` defaults to how the edits were
        trained; it needs this pipeline to hold a rectifier. `t_edit` overrides the editing
        interval each edit was trained with: ψ acts at levels ≥ t_edit, the base below.
        """
        edits = list(edits) if isinstance(edits, (list, tuple)) else [edits]
        if not edits:
            raise HifieditError("edit() needs at least one edit.")
        t0 = _edits_t0(edits, t0)
        if t_edit is not None and not 0 <= t_edit <= t0:
            raise HifieditError(f"t_edit must be in [0, t0={t0}], got {t_edit}.")
        if rectify is None:
            rectify = all(e.rectified for e in edits) and self.rectifier is not None
        if rectify and self.rectifier is None:
            raise HifieditError("rectified editing needs a rectifier; load the pipeline with one.")
        x0 = self._check(x0)
        eps_fn = self._mixed_eps_fn(edits, x0 if rectify else None, self.timesteps(t0, steps), t_edit)
        x_t0 = self.invert(x0, t0, s_for or steps, progress).final
        return self._generate(eps_fn, x_t0, t0, steps, progress).final

    def _mixed_eps_fn(self, edits, x0: torch.Tensor | None, timesteps=None,
                      t_edit: int | None = None):
        """ε of ψ for one edit (the base's below its t_edit); DiffusionCLIP's noise mixing
        (mean ε) for several."""
        from hifiedit.edit import within_interval

        @functools.cache
        def base():  # built once, and only if some edit leaves the base a level
            return self.eps_fn(x0, None, timesteps)

        fns = [within_interval(self.eps_fn(x0, e.unet(self.backbone), timesteps), base,
                               e.t_edit if t_edit is None else t_edit) for e in edits]
        return fns[0] if len(fns) == 1 else (lambda x, t: torch.stack([f(x, t) for f in fns]).mean(0))

    @torch.no_grad()
    def translate(self, x: torch.Tensor, edits=(), t0: int | None = None, steps: int = 40,
                  repeats: int = 1, generator: torch.Generator | None = None,
                  progress: bool = False) -> torch.Tensor:
        """Image-to-image translation from an unseen domain (DESIGN §1, "Inference"; the
        paper's applications): a stochastic forward q(x_t0 | x) to t0, then `steps` DDIM steps into the trained
        domain, with θ or with the mixed ψ of `edits`. Repeated `repeats` times as DiffusionCLIP
        does, each round re-noising the previous round's output. No rectifier: it would pull
        every step back towards the out-of-domain input, which is what translation discards.
        `t0` defaults to the edits' training t0, or 400 without edits."""
        from hifiedit.diffusion.ddim import stochastic_forward

        edits = list(edits) if isinstance(edits, (list, tuple)) else [edits]
        t0 = _edits_t0(edits, t0) if edits else (400 if t0 is None else t0)
        if repeats < 1:
            raise HifieditError(f"repeats must be ≥ 1, got {repeats}.")
        self.timesteps(t0, steps)  # refuse a bad t0/steps before drawing noise
        x = self._check(x)
        eps_fn = self._mixed_eps_fn(edits, None) if edits else self.backbone.eps
        for _ in range(repeats):
            x_t0 = stochastic_forward(x, t0, self.backbone.alphas_cumprod, generator=generator)
            x = self._generate(eps_fn, x_t0, t0, steps, progress).final
        return x

    @torch.no_grad()
    def reconstruct(self, x0: torch.Tensor, steps: int, t0: int = 400, s_for: int | None = None,
                    rectify: bool = True, progress: bool = False) -> torch.Tensor:
        """Invert with S_for steps (default: `steps`), generate back with `steps`."""
        x_t0 = self.invert(x0, t0, s_for or steps, progress).final
        return self.generate(x_t0, t0, steps, x0 if rectify else None, progress=progress).final


def _edits_t0(edits, t0: int | None) -> int:
    """`t0` if given, else the t0 the edits were trained at (which must then agree)."""
    if t0 is not None:
        return t0
    if len({e.t0 for e in edits}) > 1:
        raise HifieditError(f"the edits were trained at different t0 "
                            f"({sorted({e.t0 for e in edits})}); pass t0.")
    return edits[0].t0


class _progress:
    """A tqdm bar fed by the samplers' callback (STYLE lesson 2: no printing in the loops)."""

    def __init__(self, enabled: bool, total: int, desc: str):
        self.enabled, self.total, self.desc = enabled, total, desc

    def __enter__(self):
        if not self.enabled:
            return None
        from tqdm import tqdm

        self.bar = tqdm(total=self.total, desc=self.desc, leave=False)
        return lambda *_: self.bar.update(1)

    def __exit__(self, *_):
        if self.enabled:
            self.bar.close()
