"""Deterministic DDIM (η = 0) as small pure functions over an ε-callable (DESIGN §1, STYLE 2–3).

Nothing here calls ``torch.no_grad``: inversion caches run without gradients, but the
DiffusionCLIP (Markovian) baseline backpropagates through the whole generation chain, so the
caller decides. Samplers step over explicit ``(t_from, t_to)`` pairs of a timestep list from
:func:`hifiedit.diffusion.schedule.ddim_timesteps`; every convention in which DDIM
implementations differ is a named field of :class:`DDIMConventions`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Literal, Optional, Union

import torch

from hifiedit.diffusion.schedule import SPACINGS, ddim_timesteps
from hifiedit.errors import HifieditError

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x (B,C,H,W), t LongTensor (B,)) -> ε
Callback = Callable[[int, int, int, torch.Tensor], None]  # (move index, t_from, t_to, new x)
AlphaBar = Union[float, torch.Tensor]


# --------------------------------------------------------------------------- formulas


def _roots(alpha_bar: AlphaBar, x: torch.Tensor):
    """(√ᾱ, √(1−ᾱ)) computed in ᾱ's own precision, then cast to x's dtype.

    A Python float (the samplers' case: all samples share t) stays a float64 scalar; a tensor
    of shape (B,) — per-sample t, as in training — is reshaped to broadcast over x.
    """
    if isinstance(alpha_bar, torch.Tensor):
        a = alpha_bar.reshape(-1, *[1] * (x.ndim - 1)) if alpha_bar.ndim == 1 else alpha_bar
        return a.sqrt().to(x.device, x.dtype), (1 - a).sqrt().to(x.device, x.dtype)
    return math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar)


def predict_x0(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar_t: AlphaBar) -> torch.Tensor:
    """The paper's clean-image estimate P_t(ε; x_t) = (x_t − √(1−ᾱ_t)·ε) / √ᾱ_t."""
    sa, s1a = _roots(alpha_bar_t, x_t)
    return (x_t - s1a * eps) / sa


def _from_x0(x0: torch.Tensor, eps: torch.Tensor, alpha_bar_to: AlphaBar) -> torch.Tensor:
    sa, s1a = _roots(alpha_bar_to, x0)
    return sa * x0 + s1a * eps


def ddim_step(x: torch.Tensor, eps: torch.Tensor, alpha_from: AlphaBar, alpha_to: AlphaBar) -> torch.Tensor:
    """One η = 0 DDIM move: √ᾱ_to · P_from(ε; x) + √(1−ᾱ_to) · ε (no clipping).

    The same formula goes up (inversion) or down (generation); with ε held fixed the move
    from a to b is exactly undone by the move from b to a.
    """
    return _from_x0(predict_x0(x, eps, alpha_from), eps, alpha_to)


def stochastic_forward(
    x0: torch.Tensor,
    t: Union[int, torch.Tensor],
    alphas_cumprod: torch.Tensor,
    generator: Optional[torch.Generator] = None,
    noise: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """q(x_t | x0) sample √ᾱ_t·x0 + √(1−ᾱ_t)·z, for SDEdit-style translation (DESIGN §1,
    Inference) and DDPM training. ``t`` is an int or a per-sample LongTensor (B,);
    ``noise`` (z) may be given, otherwise it is drawn with ``generator``."""
    T = len(alphas_cumprod)
    if isinstance(t, torch.Tensor):
        if t.numel() and not (0 <= int(t.min()) and int(t.max()) < T):
            raise HifieditError(f"stochastic_forward: t must lie in [0, {T}), got {t.tolist()}")
        a: AlphaBar = alphas_cumprod.detach().cpu().to(torch.float64)[t.detach().cpu().long()]
    else:
        if not 0 <= int(t) < T:
            raise HifieditError(f"stochastic_forward: t must lie in [0, {T}), got {t}")
        a = float(alphas_cumprod[int(t)])
    if noise is None:
        # Drawn where the generator lives (a CPU generator gives the same noise on any device).
        where = generator.device if generator is not None else x0.device
        noise = torch.randn(x0.shape, generator=generator, device=where, dtype=x0.dtype).to(x0.device)
    return _from_x0(x0, noise, a)


# --------------------------------------------------------------------------- conventions


@dataclass(frozen=True)
class DDIMConventions:
    """Every choice in which DDIM implementations differ, named (STYLE lesson 3).

    Defaults are DiffusionCLIP's (the paper builds on it). diffusers' ``DDIMScheduler`` uses
    the same *generation* step (ε at the source level; last move to ``final_alpha_cumprod`` =
    1 when ``set_alpha_to_one``), on its own grid. Its ``DDIMInverseScheduler`` differs from
    DiffusionCLIP's inversion in two step conventions: it evaluates ε at the *destination*
    timestep (the pipeline calls ``unet(x, t)`` then ``step(ε, t, x)``, which moves x from
    ``t − T/S`` *to* t), and its first move starts from ``initial_alpha_cumprod`` = 1 under
    the default ``set_alpha_to_one=True`` instead of ᾱ_0. (Its grid also differs: the clean
    image sits below t = 0 — our ``τ_0 = -1`` — and it clips x̂₀ unless ``clip_sample=False``.)
    :meth:`diffusers` builds the matching conventions.
    """

    # Grid used by :meth:`timesteps`: "diffusionclip" (float linspace, then truncation),
    # "leading" or "trailing" (diffusers' integer-stride grids). See ddim_timesteps.
    spacing: Literal["diffusionclip", "leading", "trailing"] = "diffusionclip"
    # Inversion only: which level's t the U-Net sees in a move from t_from to t_to (x is
    # always x_{t_from}, P uses ᾱ_{t_from}). "source" = DiffusionCLIP (the explicit Euler
    # step of the DDIM ODE); "destination" = diffusers' DDIMInverseScheduler. Generation
    # always uses the source level: every reference implementation does.
    eps_at: Literal["source", "destination"] = "source"
    # ᾱ of the clean image τ_0 when *inverting*: False = ᾱ_0 = 1 − β_0 (DiffusionCLIP treats
    # x0 as x at t = 0); True = 1 (diffusers' inverse scheduler with set_alpha_to_one).
    invert_from_alpha_one: bool = False
    # ᾱ of τ_0 when *generating*: True = the last move lands on ᾱ = 1, a clean image
    # (DiffusionCLIP; diffusers with set_alpha_to_one); False = ᾱ_0.
    final_alpha_one: bool = True
    # Clamp P_t to [-1, 1] before each move (diffusers' clip_sample). Off by default: it
    # breaks exact invertibility and the paper's P_t-based losses.
    clip_x0: bool = False

    def __post_init__(self) -> None:
        if self.spacing not in SPACINGS:
            raise HifieditError(f"DDIMConventions.spacing must be one of {SPACINGS}, got {self.spacing!r}")
        if self.eps_at not in ("source", "destination"):
            raise HifieditError(f"DDIMConventions.eps_at must be 'source' or 'destination', got {self.eps_at!r}")

    @classmethod
    def diffusers(cls, set_alpha_to_one: bool = True, spacing: str = "leading", clip_sample: bool = False):
        """Conventions of diffusers' DDIMScheduler / DDIMInverseScheduler pair (one config)."""
        return cls(spacing=spacing, eps_at="destination", invert_from_alpha_one=set_alpha_to_one,
                   final_alpha_one=set_alpha_to_one, clip_x0=clip_sample)

    def timesteps(self, t0: int, n_steps: int) -> list[int]:
        return ddim_timesteps(t0, n_steps, self.spacing)


# --------------------------------------------------------------------------- samplers


@dataclass(frozen=True)
class Trajectory:
    """What a sampler visited: ``states[0]`` is the input, ``states[-1]`` the output;
    ``timesteps[i]`` is the level of ``states[i]``; ``x0_preds[i]`` is the P_t of move i
    (the paper's per-step clean estimate, used by the losses and previews)."""

    states: list = field(default_factory=list)
    x0_preds: list = field(default_factory=list)
    timesteps: list = field(default_factory=list)
    # U-Net passes spent per sample (B,): S for plain DDIM; more for fixed-point inversion.
    passes: Optional[torch.Tensor] = None

    @property
    def final(self) -> torch.Tensor:
        return self.states[-1]


def _checked(timesteps, alphas_cumprod: torch.Tensor) -> list[int]:
    levels = [int(t) for t in timesteps]
    T = len(alphas_cumprod)
    if len(levels) < 2 or any(a >= b for a, b in zip(levels, levels[1:])):
        raise HifieditError(f"DDIM timesteps must be a strictly increasing list of >= 2 levels, got {levels}")
    if levels[0] < -1 or levels[-1] >= T:
        raise HifieditError(f"DDIM timesteps must lie in [-1, {T}) for a {T}-step schedule, got {levels}")
    return levels


def _alpha_bars(levels: list[int], alphas_cumprod: torch.Tensor, clean_alpha_one: bool) -> list[float]:
    """ᾱ per level as float64 Python scalars (cast to x.dtype only inside each step, so the
    up and down moves use identical coefficients). τ_0 ≤ 0 is the clean image, whose ᾱ is a
    convention; a list starting above 0 is a partial chain and uses the table throughout."""
    ac = alphas_cumprod.detach().to("cpu", torch.float64)
    out = [float(ac[max(t, 0)]) for t in levels]
    if levels[0] <= 0 and clean_alpha_one:
        out[0] = 1.0
    return out


def _eps(eps_fn: EpsFn, x: torch.Tensor, t: int) -> torch.Tensor:
    if t < 0:
        raise HifieditError(
            "the U-Net cannot be evaluated at the clean level -1; invert from a list starting at 0 "
            "(DiffusionCLIP) or use eps_at='destination' (diffusers)"
        )
    eps = eps_fn(x, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device))
    if eps.shape != x.shape:
        raise HifieditError(f"eps_fn returned shape {tuple(eps.shape)} for input {tuple(x.shape)}; "
                            "a learned-variance model must be split to its ε channels first")
    return eps


def _run(eps_fn, x, pairs, conventions, callback, levels_visited) -> Trajectory:
    """pairs: (t_from, t_to, t_eval, ᾱ_from, ᾱ_to) per move, in order."""
    states, x0_preds = [x], []
    for i, (t_from, t_to, t_eval, a_from, a_to) in enumerate(pairs):
        eps = _eps(eps_fn, x, t_eval)
        x0 = predict_x0(x, eps, a_from)
        if conventions.clip_x0:
            x0 = x0.clamp(-1, 1)
        x = _from_x0(x0, eps, a_to)
        states.append(x)
        x0_preds.append(x0)
        if callback is not None:
            callback(i, t_from, t_to, x)
    passes = torch.full((x.shape[0],), len(pairs), dtype=torch.long)
    return Trajectory(states=states, x0_preds=x0_preds, timesteps=levels_visited, passes=passes)


@dataclass(frozen=True)
class Inversion:
    """How each inversion move is computed.

    ``"ddim"``: one explicit move per step, ε evaluated at the level it leaves (DESIGN §1; the
    conventions decide which). It is not the inverse of generation's move, which evaluates ε at
    the level *it* leaves going down, so few-step reconstructions drift.

    ``"fixed-point"``: each move is iterated (AIDI, Pan et al. 2023; ReNoise, Garibi et al. 2024)
    so that it becomes the exact inverse of generation's move: x_{i+1} is solved from
    x_i = DDIM(x_{i+1}, ε_θ(x_{i+1}, τ_{i+1}), τ_{i+1} → τ_i), starting from the plain move and
    applying ``iters`` times x_{i+1} ← DDIM(x_i, ε_θ(x_{i+1}, τ_{i+1}), τ_i → τ_{i+1}). It costs
    ``iters`` extra U-Net passes per move; with ``tol`` > 0 a sample stops iterating once its
    update's RMS falls below ``tol`` (per sample: the result does not depend on the batch). The
    clean level uses generation's ᾱ (``final_alpha_one``), so generation lands back on x0.
    """

    method: Literal["ddim", "fixed-point"] = "ddim"
    iters: int = 2
    tol: float = 0.0

    def __post_init__(self) -> None:
        if self.method not in ("ddim", "fixed-point"):
            raise HifieditError(f"inversion must be 'ddim' or 'fixed-point', got {self.method!r}")
        if not (isinstance(self.iters, int) and 0 <= self.iters <= 100):
            raise HifieditError(f"fixed-point iterations must be an integer in [0, 100], got {self.iters!r}")
        if not (isinstance(self.tol, (int, float)) and math.isfinite(self.tol) and self.tol >= 0):
            raise HifieditError(f"fixed-point tolerance must be a finite number ≥ 0, got {self.tol!r}")

    @property
    def passes_per_move(self) -> int:
        """U-Net passes of one move at most (the plain move plus the iterations)."""
        return 1 + (self.iters if self.method == "fixed-point" else 0)

    def describe(self) -> str:
        return "ddim" if self.method == "ddim" else f"fixed-point×{self.iters}"


def fixed_point_move(eps_fn: EpsFn, x: torch.Tensor, x_next: torch.Tensor, t_to,
                     alpha_from: AlphaBar, alpha_to: AlphaBar, iters: int, tol: float = 0.0):
    """Refine an inversion move x (at ᾱ_from) → ``x_next`` (an initial guess at level ``t_to``,
    ᾱ_to) by ``iters`` fixed-point iterations (:class:`Inversion`). ``t_to`` is an int or a
    per-sample LongTensor (B,), ᾱ a float or per-sample tensor. Returns (x_next, ε, passes
    per sample (B,)); ε is the one of the last update, so that the generation move
    DDIM(x_next, ε_θ(x_next, t_to)) returns to x up to the remaining fixed-point error."""
    b = x.shape[0]
    t = t_to if isinstance(t_to, torch.Tensor) else torch.full((b,), int(t_to), dtype=torch.long)
    t = t.to(x.device)

    def pick(alpha: AlphaBar, rows: torch.Tensor) -> AlphaBar:
        per_sample = isinstance(alpha, torch.Tensor) and alpha.ndim == 1
        return alpha[rows.to(alpha.device)] if per_sample else alpha

    passes = torch.zeros(b, dtype=torch.long)
    eps = None
    active = torch.arange(b, device=x.device)
    for _ in range(iters):
        if len(active) == 0:
            break
        e = eps_fn(x_next[active], t[active])
        new = ddim_step(x[active], e, pick(alpha_from, active), pick(alpha_to, active))
        change = (new - x_next[active]).detach().float().square().flatten(1).mean(1).sqrt()
        x_next = x_next.index_copy(0, active, new)
        eps = e if eps is None else eps.index_copy(0, active, e)  # the first pass is whole-batch
        passes[active.cpu()] += 1
        if tol > 0:  # only then: the comparison syncs a GPU every iteration
            active = active[change >= tol]
    return x_next, eps, passes


def invert(
    eps_fn: EpsFn,
    x0: torch.Tensor,
    timesteps,
    alphas_cumprod: torch.Tensor,
    conventions: DDIMConventions = DDIMConventions(),
    callback: Optional[Callback] = None,
    inversion: Inversion = Inversion(),
) -> Trajectory:
    """Inversion x0 → x_{τ_S} (DESIGN §1): S = len(timesteps) − 1 moves τ_i → τ_{i+1}, plain
    DDIM or fixed-point (:class:`Inversion`)."""
    levels = _checked(timesteps, alphas_cumprod)
    fixed = inversion.method == "fixed-point"
    # A fixed-point inversion inverts generation, so the clean level takes generation's ᾱ.
    clean_one = conventions.final_alpha_one if fixed else conventions.invert_from_alpha_one
    a = _alpha_bars(levels, alphas_cumprod, clean_one)
    dest = conventions.eps_at == "destination"
    pairs = [(levels[i], levels[i + 1], levels[i + 1] if dest else levels[i], a[i], a[i + 1])
             for i in range(len(levels) - 1)]
    if not fixed:
        return _run(eps_fn, x0, pairs, conventions, callback, levels)
    x, states, x0_preds = x0, [x0], []
    passes = torch.zeros(x0.shape[0], dtype=torch.long)
    for i, (t_from, t_to, t_eval, a_from, a_to) in enumerate(pairs):
        eps = _eps(eps_fn, x, t_eval)  # the plain move is the starting guess
        x_next, refined, p = fixed_point_move(eps_fn, x, ddim_step(x, eps, a_from, a_to), t_to,
                                              a_from, a_to, inversion.iters, inversion.tol)
        passes += 1 + p
        x0_preds.append(predict_x0(x, eps if refined is None else refined, a_from))
        x = x_next
        states.append(x)
        if callback is not None:
            callback(i, t_from, t_to, x)
    return Trajectory(states=states, x0_preds=x0_preds, timesteps=levels, passes=passes)


def generate(
    eps_fn: EpsFn,
    x_t0: torch.Tensor,
    timesteps,
    alphas_cumprod: torch.Tensor,
    conventions: DDIMConventions = DDIMConventions(),
    callback: Optional[Callback] = None,
) -> Trajectory:
    """DDIM generation x_{τ_S} → x0 (DESIGN §1): S moves τ_{i+1} → τ_i, ε at the source level."""
    levels = _checked(timesteps, alphas_cumprod)
    a = _alpha_bars(levels, alphas_cumprod, conventions.final_alpha_one)
    pairs = [(levels[i], levels[i - 1], levels[i], a[i], a[i - 1]) for i in range(len(levels) - 1, 0, -1)]
    return _run(eps_fn, x_t0, pairs, conventions, callback, levels[::-1])
