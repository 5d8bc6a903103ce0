"""Schedules, P_t and DDIM inversion/generation (DESIGN §1)."""

from hifiedit.diffusion.ddim import (
    DDIMConventions,
    Inversion,
    Trajectory,
    ddim_step,
    fixed_point_move,
    generate,
    invert,
    predict_x0,
    stochastic_forward,
)
from hifiedit.diffusion.schedule import (
    alphas_cumprod_from_config,
    ddim_timesteps,
    linear_alphas_cumprod,
)

__all__ = [
    "DDIMConventions",
    "Inversion",
    "Trajectory",
    "alphas_cumprod_from_config",
    "ddim_step",
    "ddim_timesteps",
    "fixed_point_move",
    "generate",
    "invert",
    "linear_alphas_cumprod",
    "predict_x0",
    "stochastic_forward",
]
