"""DDIM core (DESIGN §1): golden grids, schedule and step parity with diffusers, round trips.

All CPU, analytic ε-functions only (STYLE lesson 13); float64 where tolerances are tight.
"""

import math

import numpy as np
import pytest
import torch

from hifiedit.diffusion import (
    DDIMConventions,
    alphas_cumprod_from_config,
    ddim_step,
    ddim_timesteps,
    generate,
    invert,
    linear_alphas_cumprod,
    predict_x0,
    stochastic_forward,
)
from hifiedit.errors import HifieditError

AC = linear_alphas_cumprod()  # float64, T = 1000, β 1e-4…0.02


def dclip_seq(t0, n_points):
    """DiffusionCLIP's grid, written out as its code does: float linspace, then int()."""
    return [int(s) for s in list(np.linspace(0, 1, n_points) * t0)]


def smooth_eps(x, t):
    """A deterministic, non-trivial ε(x, t) for parity tests: exact for N(0, I) data plus a
    smooth perturbation, so states stay O(1) like a real model's (absolute tolerances mean
    something)."""
    a = AC[t].to(x.dtype).view(-1, *[1] * (x.ndim - 1))
    return (1 - a).sqrt() * x + 0.1 * torch.sin(3 * x + a)


def rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --------------------------------------------------------------------------- timestep grids


def test_diffusionclip_grid_golden():
    # t0 = 117, 40 moves: DiffusionCLIP with n_inv_step = 41.
    ts = ddim_timesteps(117, 40)
    assert ts == dclip_seq(117, 41)
    assert len(ts) == 41 and ts[0] == 0 and ts[-1] == 117
    assert ts[:6] == [0, 2, 5, 8, 11, 14] and ts[12:16] == [35, 38, 40, 43] and ts[-3:] == [111, 114, 117]
    assert ddim_timesteps(400, 6) == [0, 66, 133, 200, 266, 333, 400]
    assert ddim_timesteps(500, 40)[:5] == [0, 12, 25, 37, 50]
    # Float truncation is not an integer stride: 10 would be exact, 9 is DiffusionCLIP's.
    assert ddim_timesteps(14, 7) == [0, 2, 4, 6, 8, 9, 12, 14]
    assert ddim_timesteps(1, 1) == [0, 1]
    assert DDIMConventions().timesteps(400, 6) == ddim_timesteps(400, 6)


def test_diffusionclip_grid_never_repeats():
    # S < t0: the exact gap t0/S ≥ 1 + 1/S, so truncation cannot collide (checked exhaustively).
    for t0 in range(1, 121):
        for n in range(1, t0):
            ts = ddim_timesteps(t0, n)
            assert ts == dclip_seq(t0, n + 1)
            assert all(a < b for a, b in zip(ts, ts[1:])) and ts[0] == 0 and ts[-1] == t0
    # S = t0: the raw formula repeats levels (7 → …, 3, 3, …); we return every level instead.
    assert len(set(dclip_seq(7, 8))) < 8
    assert ddim_timesteps(7, 7) == list(range(8))
    assert ddim_timesteps(200, 200) == list(range(201))


@pytest.mark.parametrize("t0,n,spacing", [(100, 0, "diffusionclip"), (100, 101, "diffusionclip"),
                                          (0, 1, "diffusionclip"), (99, 101, "leading"),
                                          (99, 101, "trailing"), (100, 5, "linspace")])
def test_timestep_errors(t0, n, spacing):
    with pytest.raises(HifieditError):
        ddim_timesteps(t0, n, spacing)


def test_diffusers_grids_match():
    from diffusers import DDIMInverseScheduler, DDIMScheduler

    for spacing in ("leading", "trailing"):
        for n in (3, 7, 16, 50):
            fwd, inv = DDIMScheduler(timestep_spacing=spacing), DDIMInverseScheduler(timestep_spacing=spacing)
            fwd.set_timesteps(n)
            inv.set_timesteps(n)
            ours = ddim_timesteps(999, n, spacing)
            assert ours[0] == -1 and len(ours) == n + 1
            assert ours[1:] == sorted(fwd.timesteps.tolist()) == inv.timesteps.tolist()
    assert ddim_timesteps(999, 50, "leading")[-1] == 980  # diffusers' top falls short of t0
    assert ddim_timesteps(400, 6, "leading") == [-1, 0, 66, 132, 198, 264, 330]
    # round-half-even, as diffusers: 401·3/6 = 200.5 → 200 → level 199
    assert ddim_timesteps(400, 6, "trailing") == [-1, 66, 133, 199, 266, 333, 400]


# --------------------------------------------------------------------------- ᾱ schedules


@pytest.mark.parametrize("kw", [{"beta_schedule": "linear"}, {"beta_schedule": "squaredcos_cap_v2"},
                                {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
                                {"num_train_timesteps": 50, "trained_betas": list(np.linspace(0.001, 0.2, 50))}])
def test_alphas_cumprod_match_diffusers(kw):
    from diffusers import DDIMScheduler, DDPMScheduler

    ref = DDPMScheduler(**kw)
    ours = alphas_cumprod_from_config(dict(ref.config))  # a real diffusers config dict
    assert ours.dtype == torch.float64 and ours.shape == ref.alphas_cumprod.shape
    torch.testing.assert_close(ours, ref.alphas_cumprod.double(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ours, DDIMScheduler(**kw).alphas_cumprod.double(), atol=1e-6, rtol=1e-5)


def test_alphas_cumprod_config_variants():
    torch.testing.assert_close(AC, alphas_cumprod_from_config({}), rtol=0, atol=0)  # diffusers defaults
    yaml_style = {"num_diffusion_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear"}
    torch.testing.assert_close(AC, alphas_cumprod_from_config(yaml_style), rtol=0, atol=0)
    assert AC[0].item() == pytest.approx(1 - 1e-4, abs=1e-15)
    with pytest.raises(HifieditError, match="beta_schedule"):
        alphas_cumprod_from_config({"beta_schedule": "warp"})
    with pytest.raises(HifieditError):
        alphas_cumprod_from_config({"rescale_betas_zero_snr": True})


# --------------------------------------------------------------------------- formulas


def test_step_formulas_golden():
    x, eps = torch.tensor([1.0]), torch.tensor([0.5])
    assert predict_x0(x, eps, 0.64).item() == pytest.approx(0.875)  # (1 − 0.6·0.5)/0.8
    assert ddim_step(x, eps, 0.64, 0.36).item() == pytest.approx(0.925)  # 0.6·0.875 + 0.8·0.5
    # Per-sample ᾱ (training at random t) broadcasts over (B, C, H, W).
    xb, eb = rand(2, 3, 4, 4), rand(2, 3, 4, 4, seed=1)
    a = torch.tensor([0.64, 0.25], dtype=torch.float64)
    got = predict_x0(xb, eb, a)
    torch.testing.assert_close(got[1], predict_x0(xb[1], eb[1], 0.25))
    # With ε held fixed a move is exactly undone by the reverse move.
    torch.testing.assert_close(ddim_step(ddim_step(xb, eb, 0.9, 0.2), eb, 0.2, 0.9), xb, atol=1e-12, rtol=0)


def test_stochastic_forward():
    x0, z = rand(2, 3, 4, 4), rand(2, 3, 4, 4, seed=1)
    a = AC[300].item()
    torch.testing.assert_close(stochastic_forward(x0, 300, AC, noise=z), math.sqrt(a) * x0 + math.sqrt(1 - a) * z)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    torch.testing.assert_close(stochastic_forward(x0, 300, AC, g1), stochastic_forward(x0, 300, AC, g2))
    per_sample = stochastic_forward(x0, torch.tensor([300, 10]), AC, noise=z)
    torch.testing.assert_close(per_sample[1], stochastic_forward(x0[1:], 10, AC, noise=z[1:])[0])
    with pytest.raises(HifieditError):
        stochastic_forward(x0, 1000, AC)


# --------------------------------------------------------------------------- parity


def test_matches_diffusionclip_loops():
    """Our calls reproduce DiffusionCLIP's inversion (n_inv_step = N) and generation (N moves)."""
    t0, N = 117, 41
    seq = dclip_seq(t0, N)
    seq_next = [-1] + seq[:-1]

    def dclip_step(x, t, t_next):  # its denoising_step with eta = 0, ᾱ(−1) = 1
        e = smooth_eps(x, torch.full((x.shape[0],), t))
        at, an = AC[t].item(), 1.0 if t_next == -1 else AC[t_next].item()
        return math.sqrt(an) * (x - e * math.sqrt(1 - at)) / math.sqrt(at) + math.sqrt(1 - an) * e

    x0 = rand(2, 3, 4, 4)
    ref = x0
    for i, j in zip(seq_next[1:], seq[1:]):
        ref = dclip_step(ref, i, j)
    inv = invert(smooth_eps, x0, ddim_timesteps(t0, N - 1), AC)
    assert len(inv.x0_preds) == N - 1
    torch.testing.assert_close(inv.final, ref, atol=1e-12, rtol=0)

    gen_ref = ref
    for i, j in zip(reversed(seq), reversed(seq_next)):
        gen_ref = dclip_step(gen_ref, i, j)
    exact = generate(smooth_eps, ref, [-1] + ddim_timesteps(t0, N - 1), AC)
    assert len(exact.x0_preds) == N
    torch.testing.assert_close(exact.final, gen_ref, atol=1e-12, rtol=0)
    # Our default generation lands τ_1 directly on ᾱ = 1 (N − 1 moves): close, not identical.
    merged = generate(smooth_eps, ref, ddim_timesteps(t0, N - 1), AC).final
    assert 0 < (merged - gen_ref).abs().max() < 1e-2


@pytest.mark.parametrize("set_alpha_to_one", [True, False])
def test_generation_matches_diffusers_ddim(set_alpha_to_one):
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(clip_sample=False, set_alpha_to_one=set_alpha_to_one)
    sched.set_timesteps(50)
    ts = ddim_timesteps(999, 50, "leading")
    assert ts[1:] == sorted(sched.timesteps.tolist())
    x = rand(2, 3, 8, 8, dtype=torch.float32)
    ref = [x]
    for t in sched.timesteps:
        ref.append(sched.step(smooth_eps(ref[-1], t.repeat(2)), t, ref[-1]).prev_sample)
    conv = DDIMConventions.diffusers(set_alpha_to_one)
    ours = generate(smooth_eps, x, ts, sched.alphas_cumprod, conv)
    assert ours.timesteps == ts[::-1] and len(ours.states) == len(ref) == 51
    for a, b in zip(ours.states, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("set_alpha_to_one", [True, False])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_inversion_matches_diffusers_inverse(set_alpha_to_one, spacing):
    from diffusers import DDIMInverseScheduler

    sched = DDIMInverseScheduler(clip_sample=False, set_alpha_to_one=set_alpha_to_one, timestep_spacing=spacing)
    sched.set_timesteps(20)
    x = rand(2, 3, 8, 8, dtype=torch.float32)
    ref = [x]
    for t in sched.timesteps:  # as diffusers' pipelines call it: unet(x, t), then step(ε, t, x)
        ref.append(sched.step(smooth_eps(ref[-1], t.repeat(2)), t, ref[-1]).prev_sample)
    conv = DDIMConventions.diffusers(set_alpha_to_one, spacing)
    ours = invert(smooth_eps, x, conv.timesteps(999, 20), sched.alphas_cumprod, conv)
    for a, b in zip(ours.states, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    # DiffusionCLIP's ε-at-source convention cannot evaluate the clean level below t = 0.
    with pytest.raises(HifieditError, match="clean level"):
        invert(smooth_eps, x, conv.timesteps(999, 20), sched.alphas_cumprod)


# --------------------------------------------------------------------------- round trips


def test_constant_eps_round_trip_is_exact_and_pins_alpha_conventions():
    x0, c = rand(2, 3, 4, 4), rand(2, 3, 4, 4, seed=1)
    const = lambda x, t: c  # noqa: E731
    ts = ddim_timesteps(400, 6)
    matched = DDIMConventions(invert_from_alpha_one=True)
    back = generate(const, invert(const, x0, ts, AC, matched).final, ts, AC, matched).final
    torch.testing.assert_close(back, x0, atol=1e-12, rtol=0)
    # Defaults (DiffusionCLIP): invert starts at ᾱ_0, generation ends at 1. In x̄ = x/√ᾱ,
    # σ = √((1−ᾱ)/ᾱ) each move adds Δσ·ε, so the round trip gives x0/√ᾱ_0 − σ_0·c.
    a0 = AC[0].item()
    back = generate(const, invert(const, x0, ts, AC).final, ts, AC).final
    torch.testing.assert_close(back, x0 / math.sqrt(a0) - math.sqrt((1 - a0) / a0) * c, atol=1e-12, rtol=0)


def test_gaussian_data_exact_eps_converges():
    """x0 ~ N(μ, σ²I) has the exact ε*(x_t, t) = √(1−ᾱ)(x_t − √ᾱ μ)/(ᾱσ² + 1 − ᾱ), and the DDIM
    ODE keeps z = (x_t − √ᾱ μ)/√(ᾱσ² + 1 − ᾱ) constant: a known answer for the sampler.
    DDIM is an Euler step of that ODE, so errors must fall at first order (≈ 1/S)."""
    mu, sig, t0 = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 2 - 1, 0.5, 200
    x0 = mu + sig * rand(2, 3, 8, 8)

    def eps_star(x, t):
        a = AC[t].view(-1, 1, 1, 1)
        return (1 - a).sqrt() * (x - a.sqrt() * mu) / (a * sig**2 + 1 - a)

    def scale(a):
        return math.sqrt(a * sig**2 + 1 - a)

    a0, at = AC[0].item(), AC[t0].item()
    exact_top = math.sqrt(at) * mu + scale(at) * (x0 - math.sqrt(a0) * mu) / scale(a0)
    top_err, trip_err = [], []
    for S in (10, 50, 200):
        ts = ddim_timesteps(t0, S)
        top = invert(eps_star, x0, ts, AC).final
        top_err.append((top - exact_top).abs().max().item())
        trip_err.append((generate(eps_star, top, ts, AC).final - x0).abs().max().item())
    for errs in (top_err, trip_err):
        assert errs[2] < 1e-2
        assert errs[0] / errs[1] > 3 and errs[1] / errs[2] > 3  # 5× and 4× more steps
    assert top_err[2] < 7e-3 and trip_err[2] < 1e-2


def test_linear_eps_round_trip_is_approximate():
    eps_lin = lambda x, t: 0.3 * x + 0.1  # noqa: E731
    x0 = rand(2, 3, 4, 4)
    errs = []
    for S in (5, 20, 80):
        ts = ddim_timesteps(400, S)
        errs.append((generate(eps_lin, invert(eps_lin, x0, ts, AC).final, ts, AC).final - x0).abs().max().item())
    assert errs[0] > errs[1] > errs[2] > 0 and errs[0] > 1e-3


# --------------------------------------------------------------------------- behaviour


def test_gradients_flow_through_invert_and_generate():
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 3, 3, padding=1)
    eps_fn = lambda x, t: net(x) + 1e-3 * t.view(-1, 1, 1, 1)  # noqa: E731
    x0 = torch.randn(2, 3, 8, 8, requires_grad=True)
    ts = ddim_timesteps(100, 3)
    traj = generate(eps_fn, invert(eps_fn, x0, ts, AC).final, ts, AC)
    (traj.final ** 2).mean().backward()
    for g in (x0.grad, net.weight.grad):
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


def test_trajectory_and_callback():
    ts = ddim_timesteps(400, 6)
    x0 = rand(2, 3, 4, 4)
    calls = []
    inv = invert(smooth_eps, x0, ts, AC, callback=lambda i, a, b, x: calls.append((i, a, b, x)))
    assert [c[:3] for c in calls] == [(i, ts[i], ts[i + 1]) for i in range(6)]
    assert all(c[3] is s for c, s in zip(calls, inv.states[1:]))
    assert inv.timesteps == ts and inv.states[0] is x0 and inv.final is inv.states[-1]
    assert len(inv.states) == 7 and len(inv.x0_preds) == 6

    calls.clear()
    gen = generate(smooth_eps, inv.final, ts, AC, callback=lambda i, a, b, x: calls.append((i, a, b)))
    assert calls == [(0, 400, 333), (1, 333, 266), (2, 266, 200), (3, 200, 133), (4, 133, 66), (5, 66, 0)]
    assert gen.timesteps == ts[::-1]


def test_eps_sees_right_levels_and_dtype():
    seen = []

    def spy(x, t):
        assert t.dtype == torch.long and t.shape == (x.shape[0],)
        seen.append(int(t[0]))
        return torch.zeros_like(x)

    ts = ddim_timesteps(400, 6)
    x = rand(2, 3, 4, 4, dtype=torch.float32)
    assert invert(spy, x, ts, AC).final.dtype == torch.float32
    assert seen == ts[:-1]
    seen.clear()
    invert(spy, x, ts, AC, DDIMConventions(eps_at="destination"))
    assert seen == ts[1:]
    seen.clear()
    generate(spy, x, ts, AC)
    assert seen == ts[:0:-1]


def test_clip_x0():
    big = lambda x, t: -3 * torch.ones_like(x)  # noqa: E731
    traj = generate(big, rand(1, 3, 4, 4), ddim_timesteps(400, 4), AC, DDIMConventions(clip_x0=True))
    assert all(p.abs().max() <= 1 for p in traj.x0_preds)


def test_sampler_errors():
    x = rand(1, 3, 4, 4)
    for bad in ([0], [0, 5, 5], [5, 0], [-2, 0, 5], [0, 500, 1000]):
        with pytest.raises(HifieditError):
            invert(smooth_eps, x, bad, AC)
    with pytest.raises(HifieditError, match="shape"):
        generate(lambda x, t: torch.cat([x, x], 1), x, [0, 10], AC)
    with pytest.raises(HifieditError):
        DDIMConventions(eps_at="middle")
