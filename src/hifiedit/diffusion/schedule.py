"""Noise schedules and DDIM timestep grids: numbers only (DESIGN §1, STYLE lesson 1).

ᾱ_t is read from the model's own scheduler config (a diffusers ``scheduler_config.json``
dict), so one code path serves the embedded OpenMoji DDPM and the CelebA-HQ DDPM.

Timestep lists follow one rule everywhere in the package: an *increasing* list
``τ_0 < τ_1 < … < τ_S`` whose first entry ``τ_0`` is the clean image and whose S consecutive
pairs are the S moves (= S U-Net evaluations) of inversion (upwards) or generation
(downwards). ``τ_0`` is either ``0`` (DiffusionCLIP: the clean image shares the label t = 0)
or ``-1`` (diffusers: the clean image is a level *below* the grid, the U-Net is never
evaluated there). Which ᾱ the clean level gets (1 or ᾱ_0) is a sampler convention, see
:class:`hifiedit.diffusion.ddim.DDIMConventions`.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from hifiedit.errors import HifieditError

SPACINGS = ("diffusionclip", "leading", "trailing")
CLEAN = -1  # label of a clean level below the grid (diffusers' "prev_timestep < 0")


# --------------------------------------------------------------------------- ᾱ_t


def _cosine_betas(num_train_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    # Nichol & Dhariwal's cosine schedule, discretised as diffusers' betas_for_alpha_bar does.
    def alpha_bar(s: float) -> float:
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    n = num_train_timesteps
    return np.array([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)])


def alphas_cumprod_from_config(config: dict) -> torch.Tensor:
    """ᾱ_t = ∏_{s≤t} (1 − β_s) as a float64 tensor of length ``num_train_timesteps``.

    ``config`` is a diffusers scheduler config (DDPM/DDIM): ``num_train_timesteps``,
    ``beta_start``, ``beta_end``, ``beta_schedule`` in {linear, scaled_linear,
    squaredcos_cap_v2}, or an explicit ``trained_betas`` list. Missing keys take diffusers'
    defaults. ``num_diffusion_timesteps`` (the DDPM/DiffusionCLIP yaml name) is accepted too.
    Computed in float64 (diffusers uses float32) so that DDIM steps are as invertible as the
    caller's dtype allows.
    """
    if config.get("rescale_betas_zero_snr"):
        # ᾱ_{T-1} = 0 would make P_t divide by zero at the top level.
        raise HifieditError("scheduler config: rescale_betas_zero_snr=True is not supported")
    T = int(config.get("num_train_timesteps", config.get("num_diffusion_timesteps", 1000)))
    b0 = float(config.get("beta_start", 1e-4))
    b1 = float(config.get("beta_end", 0.02))
    schedule = config.get("beta_schedule", "linear")
    if config.get("trained_betas") is not None:
        betas = np.asarray(config["trained_betas"], dtype=np.float64)
        T = len(betas)
    elif schedule == "linear":
        betas = np.linspace(b0, b1, T, dtype=np.float64)
    elif schedule == "scaled_linear":  # latent-diffusion schedule: linear in √β
        betas = np.linspace(b0**0.5, b1**0.5, T, dtype=np.float64) ** 2
    elif schedule == "squaredcos_cap_v2":
        betas = _cosine_betas(T)
    else:
        raise HifieditError(
            f"scheduler config: unknown beta_schedule {schedule!r}; "
            "expected 'linear', 'scaled_linear', 'squaredcos_cap_v2' or explicit 'trained_betas'"
        )
    if T < 1 or not np.all((betas > 0) & (betas < 1)):
        raise HifieditError(f"scheduler config gives invalid betas (T={T}); every β must lie in (0, 1)")
    return torch.from_numpy(np.cumprod(1.0 - betas))


def linear_alphas_cumprod(
    num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
) -> torch.Tensor:
    """ᾱ for the linear DDPM schedule (Ho et al.; the CelebA-HQ DDPM and our default model)."""
    return alphas_cumprod_from_config(
        {"num_train_timesteps": num_train_timesteps, "beta_start": beta_start,
         "beta_end": beta_end, "beta_schedule": "linear"}
    )


# --------------------------------------------------------------------------- τ grids


# No diffusion model has more than a few thousand training levels; a bound keeps the float
# grid exact and the lists small whatever a caller passes.
MAX_LEVEL = 10**6


def _integer(value, name: str) -> int:
    """An integer level or step count; int(400.7) would silently become 400."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer, float)) \
            or (isinstance(value, float) and not value.is_integer()):
        raise HifieditError(f"{name} must be an integer, got {value!r}.")
    return int(value)


def ddim_timesteps(t0: int, n_steps: int, spacing: str = "diffusionclip") -> list[int]:
    """Increasing levels ``[τ_0, …, τ_S]`` (S = ``n_steps`` moves = U-Net evaluations) up to ``t0``.

    ``spacing``:

    * ``"diffusionclip"`` (default, DESIGN §1): ``int(linspace(0, 1, S+1) · t0)`` — float
      linspace, then truncation, *not* an integer stride (t0=14, S=7 gives ``…, 8, 9, 12, …``).
      ``τ_0 = 0`` is the clean image, ``τ_S = t0``. Mapping to DiffusionCLIP's flags: its
      ``seq = int(linspace(0, 1, N) · t0)`` has N points; inversion with ``n_inv_step = N``
      steps over ``zip(seq[:-1], seq[1:])`` = N − 1 moves, i.e. exactly
      ``ddim_timesteps(t0, N − 1)``. Its generation with ``n_train_step = N`` makes N moves:
      the same N − 1 plus one more from t = 0 to ᾱ = 1 (its ``seq_next = [-1] + seq``), i.e.
      ``[-1] + ddim_timesteps(t0, N − 1)``; our default ``generate`` instead lands the move
      out of τ_1 directly on ᾱ = 1 (S evaluations each way).
      Requires ``1 ≤ S ≤ t0``. For S < t0 the exact gap t0/S ≥ 1 + 1/S, so truncation can
      never produce duplicates; for S = t0 (gap exactly 1) float rounding *does* (e.g. t0=7),
      so that case returns the intended grid ``0, 1, …, t0``.
    * ``"leading"`` / ``"trailing"``: diffusers' ``set_timesteps(S)`` grids for a model with
      ``t0 + 1`` training steps, with the clean level ``-1`` prepended (diffusers steps from
      its lowest grid point to ``final_alpha_cumprod``). "leading": integer stride
      ``k = (t0+1) // S`` from 0, ``[-1, 0, k, …, (S−1)k]`` — the top may fall short of t0
      (999, 50 → top 980). "trailing": anchored at t0, ``round((t0+1)·j/S) − 1`` for j = 1…S.
      With ``t0 = T − 1`` both equal diffusers' DDIMScheduler grids exactly. ``1 ≤ S ≤ t0 + 1``.
    """
    t0, n = _integer(t0, "t0"), _integer(n_steps, "the number of steps")
    if t0 > MAX_LEVEL:
        raise HifieditError(f"t0={t0} is beyond any noise schedule (at most {MAX_LEVEL:,} levels).")
    if spacing not in SPACINGS:
        raise HifieditError(f"unknown timestep spacing {spacing!r}; expected one of {SPACINGS}")
    limit = t0 if spacing == "diffusionclip" else t0 + 1
    if t0 < 1 or n < 1 or n > limit:
        raise HifieditError(
            f"cannot take {n} DDIM steps up to t0={t0} with {spacing!r} spacing: need "
            f"t0 >= 1 and 1 <= steps <= {limit} (more steps than timesteps would repeat levels)"
        )
    if spacing == "diffusionclip":
        if n == t0:
            return list(range(t0 + 1))
        levels = [int(s) for s in np.linspace(0, 1, n + 1) * t0]
    elif spacing == "leading":
        stride = (t0 + 1) // n
        levels = [CLEAN] + [i * stride for i in range(n)]
    else:  # trailing; exact integer numerators avoid np.arange's float-step length surprises
        levels = [CLEAN] + [int(v) - 1 for v in np.round((t0 + 1) * np.arange(1, n + 1) / n)]
    assert len(levels) == n + 1 and all(a < b for a, b in zip(levels, levels[1:])), levels
    return levels
