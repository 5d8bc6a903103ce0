"""Fixed-point inversion (diffusion.ddim.Inversion): the exact inverse of generation.

Analytic ε-functions in float64, as in test_ddim.py (STYLE lesson 13).
"""

import pytest
import torch

from hifiedit.diffusion import (
    DDIMConventions,
    Inversion,
    ddim_step,
    ddim_timesteps,
    fixed_point_move,
    generate,
    invert,
    linear_alphas_cumprod,
)
from hifiedit.errors import HifieditError

AC = linear_alphas_cumprod()


def smooth_eps(x, t):
    a = AC[t].to(x.dtype).view(-1, *[1] * (x.ndim - 1))
    return (1 - a).sqrt() * x + 0.1 * torch.sin(3 * x + a)


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def round_trip_error(inversion, steps=6, t0=400, seed=0):
    x0 = rand(3, 2, 4, 4, seed=seed).clamp(-1, 1)
    grid = ddim_timesteps(t0, steps)
    traj = invert(smooth_eps, x0, grid, AC, inversion=inversion)
    rec = generate(smooth_eps, traj.final, grid, AC).final
    return (rec - x0).abs().max().item(), traj


def test_fixed_point_is_generations_exact_inverse():
    plain, _ = round_trip_error(Inversion())
    exact, traj = round_trip_error(Inversion("fixed-point", iters=30))
    assert plain > 1e-3  # plain DDIM inversion does not invert generation at 6 steps
    assert exact < 1e-12
    # Move by move: generation's step from state i+1 lands on state i.
    for i in range(len(traj.states) - 1):
        t_hi, t_lo = traj.timesteps[i + 1], traj.timesteps[i]
        a_hi = float(AC[t_hi])
        a_lo = 1.0 if t_lo == 0 else float(AC[t_lo])
        x_hi = traj.states[i + 1]
        eps = smooth_eps(x_hi, torch.full((x_hi.shape[0],), t_hi))
        assert (ddim_step(x_hi, eps, a_hi, a_lo) - traj.states[i]).abs().max() < 1e-12


def test_fixed_point_converges_geometrically():
    errors = [round_trip_error(Inversion("fixed-point", iters=k))[0] for k in (1, 2, 4, 8)]
    assert all(b < a for a, b in zip(errors, errors[1:]))
    assert errors[-1] < errors[0] * 1e-3


def test_passes_are_counted_per_sample():
    _, plain = round_trip_error(Inversion(), steps=5)
    _, fixed = round_trip_error(Inversion("fixed-point", iters=3), steps=5)
    assert plain.passes.tolist() == [5, 5, 5]
    assert fixed.passes.tolist() == [20, 20, 20]
    assert Inversion("fixed-point", 3).passes_per_move == 4 and Inversion().passes_per_move == 1


def test_tolerance_stops_each_sample_on_its_own():
    # Sample 1 starts far from its fixed point, sample 0 near it: with a tolerance they stop
    # after different numbers of passes, and each result equals the one it gets alone.
    x = torch.stack([rand(2, 4, 4, seed=1) * 0.1, rand(2, 4, 4, seed=2) * 3])
    a_from, a_to, t_to = float(AC[100]), float(AC[200]), 200
    guess = ddim_step(x, smooth_eps(x, torch.full((2,), 100)), a_from, a_to)
    together, _, passes = fixed_point_move(smooth_eps, x, guess, t_to, a_from, a_to, 50, tol=1e-9)
    assert passes[0] != passes[1] and passes.max() < 50
    for i in range(2):
        alone, _, p = fixed_point_move(smooth_eps, x[i:i + 1], guess[i:i + 1], t_to, a_from, a_to,
                                       50, tol=1e-9)
        assert p.item() == passes[i].item()
        assert torch.equal(alone[0], together[i])


def test_per_sample_levels_match_shared_levels():
    # The trainer moves each sample between its own levels (LongTensor t, tensor ᾱ).
    x = rand(2, 2, 4, 4, seed=3)
    levels = [(66, 133), (266, 333)]
    a_from = torch.tensor([float(AC[f]) for f, _ in levels], dtype=torch.float64)
    a_to = torch.tensor([float(AC[t]) for _, t in levels], dtype=torch.float64)
    t_to = torch.tensor([t for _, t in levels])
    batched = fixed_point_move(smooth_eps, x, x.clone(), t_to, a_from, a_to, 5)[0]
    for i, (f, t) in enumerate(levels):
        one = fixed_point_move(smooth_eps, x[i:i + 1], x[i:i + 1].clone(), t, float(AC[f]),
                               float(AC[t]), 5)[0]
        assert torch.allclose(one[0], batched[i], atol=1e-14)


def test_diffusers_conventions_round_trip():
    conv = DDIMConventions.diffusers()
    x0 = rand(2, 2, 4, 4, seed=4).clamp(-1, 1)
    grid = conv.timesteps(400, 8)
    traj = invert(smooth_eps, x0, grid, AC, conv, inversion=Inversion("fixed-point", 30))
    rec = generate(smooth_eps, traj.final, grid, AC, conv).final
    assert (rec - x0).abs().max() < 1e-12


@pytest.mark.parametrize("kwargs, words", [
    ({"method": "exact"}, "'ddim' or 'fixed-point'"),
    ({"method": "fixed-point", "iters": -1}, "iterations"),
    ({"method": "fixed-point", "iters": 2.5}, "iterations"),
    ({"method": "fixed-point", "tol": float("nan")}, "tolerance"),
])
def test_bad_inversion_is_refused(kwargs, words):
    with pytest.raises(HifieditError, match=words):
        Inversion(**kwargs)
