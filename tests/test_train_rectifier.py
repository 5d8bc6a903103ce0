"""Rectifier reconstruction training, its trajectory cache, the rectified eval rows and the
step-time bench, all on tiny U-Nets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import save_tiny_pipeline
from safetensors.torch import load_file

from hifiedit.cli import main
from hifiedit.diffusion import DDIMConventions, Inversion, ddim_timesteps, invert
from hifiedit.diffusion.backbone import load_backbone
from hifiedit.errors import HifieditError
from hifiedit.rectifier import Rectifier
from hifiedit.train.rectifier import (
    RectifierTrainConfig,
    build_points,
    draw_batch,
    ideal_states,
    implied_noise,
    iteration_loss,
    landing_target,
    train_rectifier,
    training_subset,
)
from hifiedit.train.trajectories import TrajectoryCache, kept_points

TINY = dict(encoder_channels=(8, 16), norm_groups=4, time_embed_dim=16, feature_dim=16,
            branch_hidden=8, pointwise_rank=2, t0=200, step_grids=(3, 6), cache_points=4,
            rollout_max=2, batch_size=4, warmup_steps=1, log_every=1, checkpoint_every=3,
            eval_every=2, eval_steps=(3,), n_val_images=2)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = save_tiny_pipeline(tmp_path_factory.mktemp("tiny") / "ddpm")
    return folder, load_backbone(folder)


def _images(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, 3, 16, 16), generator=g) * 2 - 1


def _run(tiny, out, cache, steps, **kw):
    folder, bb = tiny
    config = RectifierTrainConfig(**{**TINY, "max_steps": steps, **kw.pop("config", {})})
    return train_rectifier(config, out, base=folder, backbone=bb, train_images=_images(6, 0),
                           val_images=_images(2, 1), cache_folder=cache, progress=False, **kw)


def test_cache_hit_is_identical_and_keyed_by_content(tiny, tmp_path):
    _, bb = tiny
    x = _images(3, 0)
    cache = TrajectoryCache(tmp_path / "c", bb, t0=200, max_points=4)
    states, kept, grid = cache.get(x, 6)
    assert (cache.hits, cache.misses) == (0, 3)
    assert kept == kept_points(6, 4) == [1, 3, 4, 6] and grid == ddim_timesteps(200, 6)
    with torch.no_grad():  # the cached states are the inversion trajectory itself
        traj = invert(bb.eps, x, grid, bb.alphas_cumprod)
    assert torch.equal(states, torch.stack([traj.states[i] for i in kept], 1))
    again = TrajectoryCache(tmp_path / "c", bb, t0=200, max_points=4)
    assert torch.equal(again.get(x, 6)[0], states) and (again.hits, again.misses) == (3, 0)
    # Another timestep grid, convention, image or model is a miss, never a stale hit.
    misses = [TrajectoryCache(tmp_path / "c", bb, t0=199, max_points=4).get(x, 6),
              TrajectoryCache(tmp_path / "c", bb, t0=200, max_points=4,
                              conventions=DDIMConventions(invert_from_alpha_one=True)).get(x, 6),
              TrajectoryCache(tmp_path / "c", bb, t0=200, max_points=4).get(x.flip(-1), 6)]
    assert all(not torch.equal(m[0], states) for m in misses)
    other = TrajectoryCache(tmp_path / "c", bb, t0=200, max_points=4)
    other.get(x, 5)
    assert other.misses == 3
    bb2 = load_backbone(save_tiny_pipeline(tmp_path / "other"))
    with torch.no_grad():
        bb2.unet.conv_out.bias.add_(0.01)
    changed = TrajectoryCache(tmp_path / "c", bb2, t0=200, max_points=4)
    changed.get(x, 6)
    assert changed.misses == 3


def test_ideal_path_is_the_chain_of_a_perfect_rectifier(tiny, tmp_path):
    # A chain whose every estimate P_t is x0 (ε = the implied noise n*) walks exactly
    # √ᾱ x0 + √(1−ᾱ) n* and ends at x0: the "ideal" start states the trainer draws.
    from hifiedit.diffusion import generate

    _, bb = tiny
    x0 = _images(3, 0)
    cache = TrajectoryCache(tmp_path / "c", bb, t0=200, max_points=4)
    points = build_points(cache, x0, (6,), progress=False)
    p, ac = points[6], bb.alphas_cumprod
    assert torch.allclose(p.noise, implied_noise(p.states[:, -1], x0, ac[200]))
    traj = generate(lambda x, t: p.noise, p.states[:, -1], p.levels.tolist(), ac)
    for i, state in enumerate(traj.states[:-1]):  # generation runs from level S down to 1
        level = p.levels[len(p.levels) - 1 - i].expand(3)
        torch.testing.assert_close(state, ideal_states(x0, p.noise, ac[level]), atol=1e-5, rtol=0)
    torch.testing.assert_close(traj.final, x0, atol=1e-5, rtol=0)  # the last move lands on ᾱ = 1
    # Drawn start states (target "x0") lie on that path at their level, ≥ k + 1 steps above 0.
    config = RectifierTrainConfig(**{**TINY, "step_grids": (6,), "target": "x0"})
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        d = draw_batch(bb, points, x0, config, gen)
        assert d.s == 6 and d.landing is None and ((d.j >= d.k + 1) & (d.j <= 6)).all()
        noise = torch.stack([p.noise[(x0 == a).flatten(1).all(1).nonzero()[0, 0]] for a in d.x0])
        torch.testing.assert_close(d.x, ideal_states(d.x0, noise, ac[p.levels[d.j]]))


@pytest.mark.parametrize("inversion", ["ddim", "fixed-point"])
@pytest.mark.parametrize("cache_points", [4, 6])  # some states recomputed / all looked up
def test_trajectory_draws_are_inversion_states_and_targets_land_on_them(tiny, tmp_path, inversion,
                                                                        cache_points):
    _, bb = tiny
    x0 = _images(3, 0)
    spec = Inversion(inversion, 2)
    cache = TrajectoryCache(tmp_path / "c", bb, t0=200, max_points=cache_points, inversion=spec)
    points = build_points(cache, x0, (6,), progress=False)
    p, ac = points[6], bb.alphas_cumprod
    with torch.no_grad():  # (N, S+1, ...)
        inv = torch.stack(invert(bb.eps, x0, p.levels.tolist(), ac, inversion=spec).states, 1)
    config = RectifierTrainConfig(**{**TINY, "step_grids": (6,), "grad_chain_steps": 2,
                                     "cache_points": cache_points, "inversion": inversion})
    gen = torch.Generator().manual_seed(1)
    for _ in range(6):
        d = draw_batch(bb, points, x0, config, gen)
        rows = [int((x0 == a).flatten(1).all(1).nonzero()[0, 0]) for a in d.x0]
        assert ((d.j >= d.k + 2) & (d.j <= 6)).all()
        torch.testing.assert_close(d.x, inv[rows, d.j], atol=1e-5, rtol=0)  # recomputed moves
        for r, landing in enumerate(d.landing):  # move r lands k + r + 1 levels below the start
            torch.testing.assert_close(landing, inv[rows, d.j - d.k - r - 1], atol=1e-5, rtol=0)
    # The target P* makes the DDIM move land exactly, also on the clean level (ᾱ = 1).
    from hifiedit.diffusion.ddim import ddim_step

    x, x_next = inv[:, 3], inv[:, 2]
    a, a_next = ac[p.levels[3]].expand(3), ac[p.levels[2]].expand(3)
    target = landing_target(x, x_next, a, a_next)
    eps = (x - a.sqrt().view(-1, 1, 1, 1) * target) / (1 - a).sqrt().view(-1, 1, 1, 1)
    torch.testing.assert_close(ddim_step(x, eps, a, a_next).float(), x_next, atol=1e-5, rtol=0)
    torch.testing.assert_close(landing_target(inv[:, 1], x0, a, torch.ones(3)), x0)


def _fixed_loss(bb, rect, points, x0, config):
    """The training loss (log error ratio to θ's, in nepers) on 8 fixed draws."""
    gen = torch.Generator().manual_seed(123)
    with torch.no_grad():
        return sum(iteration_loss(bb, rect, points, x0, config, gen).item() for _ in range(8)) / 8


def test_training_lowers_the_loss(tiny, tmp_path):
    _, bb = tiny
    summary = _run(tiny, tmp_path / "run", tmp_path / "cache", 40,
                   config={"lr": 3e-3, "ema_decay": 0.0, "checkpoint_every": 1000,
                           "eval_every": 1000})
    assert summary["step"] == 40 and summary["cache"]["misses"] == 6 * 2 + 2  # train grids + val
    x0 = _images(6, 0)
    config = RectifierTrainConfig(**TINY)
    points = build_points(TrajectoryCache(tmp_path / "cache", bb, 200, max_points=4), x0, (6,), False)
    zero = Rectifier.for_unet(bb.unet, config.rectifier_config())
    trained = Rectifier.from_pretrained(tmp_path / "run" / "rectifier", bb.unet)
    before = _fixed_loss(bb, zero, points, x0, config)
    after = _fixed_loss(bb, trained, points, x0, config)
    assert abs(before) < 1e-6  # a zero rectifier is θ itself: error ratio 1
    assert after < -0.1, after  # ≥ 0.4 dB closer to the landing targets than θ
    log = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert log[0] == "step,loss,lr,it_per_s,val_psnr_3,wall_s" and len(log) == 41


# Backprop through 2-step chains with the SSIM term: the most state a resume must restore.
CHAIN = {"grad_chain_steps": 2, "ssim_weight": 0.1, "loss": "mse"}


def test_resume_continues_identically(tiny, tmp_path):
    cache = tmp_path / "cache"
    _run(tiny, tmp_path / "straight", cache, 5, config=CHAIN)
    _run(tiny, tmp_path / "split", cache, 5, config=CHAIN, stop_after=3)
    _run(tiny, tmp_path / "split", cache, 5, config=CHAIN, resume=True)
    for group in ("model", "ema", "optimizer", "rng"):
        a = load_file(str(tmp_path / "straight" / "checkpoint" / f"{group}.safetensors"))
        b = load_file(str(tmp_path / "split" / "checkpoint" / f"{group}.safetensors"))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{group}/{k}"
    a = load_file(str(tmp_path / "straight" / "rectifier" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "rectifier" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = (tmp_path / "split" / "log.csv").read_text().splitlines()
    assert [int(r.split(",")[0]) for r in log[1:]] == [1, 2, 3, 4, 5]
    # The exported EMA differs from the zero start: it was trained.
    ema = Rectifier.from_pretrained(tmp_path / "split" / "rectifier", tiny[1].unet)
    assert any(torch.count_nonzero(b.spatial.weight) for b in ema.branches)


def test_a_run_can_start_from_a_rectifier_trained_for_another_base(tiny, tmp_path):
    cache = tmp_path / "cache"
    _run(tiny, tmp_path / "old", cache, 3, config={"lr": 3e-3})
    old = load_file(str(tmp_path / "old" / "rectifier" / "model.safetensors"))
    folder, bb = tiny
    newer = load_backbone(save_tiny_pipeline(tmp_path / "newer"))  # the base trained on
    with torch.no_grad():
        newer.unet.conv_out.bias.add_(0.01)
    start = {"init_from": str(tmp_path / "old" / "rectifier"), "lr": 1e-12, "ema_decay": 0.0}
    config = RectifierTrainConfig(**{**TINY, "max_steps": 1, **start})
    train_rectifier(config, tmp_path / "new", backbone=newer, train_images=_images(6, 0),
                    cache_folder=cache, progress=False)
    new = load_file(str(tmp_path / "new" / "rectifier" / "model.safetensors"))
    assert any(torch.count_nonzero(v) for v in old.values())
    for k in old:  # one step at lr 1e-12 leaves the starting weights
        torch.testing.assert_close(new[k], old[k], rtol=0, atol=1e-9)
    state = json.loads((tmp_path / "new" / "checkpoint" / "state.json").read_text())
    assert Path(state["init_from"]).resolve() == Path(config.init_from).resolve()
    assert not Path(state["init_from"]).is_absolute() and state["base_digest"] != json.loads(
        (tmp_path / "old" / "checkpoint" / "state.json").read_text())["base_digest"]
    wider = RectifierTrainConfig(**{**TINY, "max_steps": 1, **start, "feature_dim": 8})
    with pytest.raises(HifieditError, match="feature_dim 16 ≠ 8"):
        train_rectifier(wider, tmp_path / "wider", backbone=newer, train_images=_images(6, 0),
                        cache_folder=cache, progress=False)


def test_refuses_clobber_changed_config_and_changed_base(tiny, tmp_path):
    cache = tmp_path / "cache"
    _run(tiny, tmp_path / "a", cache, 1)
    with pytest.raises(HifieditError, match="--resume"):
        _run(tiny, tmp_path / "a", cache, 2)
    with pytest.raises(HifieditError, match="rollout_max"):
        _run(tiny, tmp_path / "a", cache, 2, resume=True, config={"rollout_max": 3})
    folder, bb = tiny
    other = load_backbone(save_tiny_pipeline(tmp_path / "other"))
    with torch.no_grad():
        other.unet.conv_out.bias.add_(0.01)
    with pytest.raises(HifieditError, match="base model differs"):
        train_rectifier(RectifierTrainConfig(**{**TINY, "max_steps": 2}), tmp_path / "a",
                        backbone=other, train_images=_images(6, 0), cache_folder=cache,
                        progress=False, resume=True)
    with pytest.raises(HifieditError, match="grad_chain_steps"):
        RectifierTrainConfig(**{**TINY, "grad_chain_steps": 4}).validate()


def test_eval_recon_rectified_rows_plot_and_grid(tiny, tmp_path):
    from hifiedit.eval.recon import ReconConfig, run_recon_eval

    folder, bb = tiny
    _run(tiny, tmp_path / "run", tmp_path / "cache", 2)
    config = ReconConfig(model=str(folder), steps=(3, 6), t0=200, limit=3, grid_images=2,
                         methods=("ddim", "rectified"), rectifier=str(tmp_path / "run" / "rectifier"))
    report = run_recon_eval(config, json_path=tmp_path / "r.json", progress=False,
                            backbone=bb, images=_images(4, 2))
    assert [(r["method"], r["steps"], r["s_for"]) for r in report["rows"]] == [
        ("ddim", 3, 3), ("ddim", 6, 6), ("rectified", 3, 3), ("rectified", 6, 6)]
    on_disk = json.loads((tmp_path / "r.json").read_text())
    assert on_disk["rows"] == report["rows"]
    assert all(r["rectifier"].endswith("rectifier") for r in on_disk["rows"][2:])
    from PIL import Image

    assert Image.open(tmp_path / "r_psnr.png").size[0] > 100
    # original | ddim@3 | rectified@3 | ddim@6 | rectified@6 for 2 images, 16 px tiles ×3.
    assert Image.open(tmp_path / "r_grid.png").size == ((5 * 17 + 1) * 3, (2 * 17 + 1) * 3)
    (tmp_path / "r2_psnr.png").touch()  # an existing figure is not overwritten without force
    with pytest.raises(HifieditError, match="--force"):
        run_recon_eval(config, json_path=tmp_path / "r2.json", progress=False, backbone=bb,
                       images=_images(4, 2))
    # A zero (identity) rectifier reproduces plain DDIM's numbers.
    zero = Rectifier.for_unet(bb.unet, RectifierTrainConfig(**TINY).rectifier_config())
    same = run_recon_eval(config, progress=False, backbone=bb, images=_images(4, 2), rectifier=zero)
    for d, r in zip(same["rows"][:2], same["rows"][2:]):
        assert r["psnr"] == pytest.approx(d["psnr"], abs=1e-3)

    # Release: the EMA rectifier loads from the shipped folder; the card carries the table
    # and the eval's figures; an existing release is kept unless --force.
    dest = tmp_path / "released"
    assert main(["release", "rectifier", "--run", str(tmp_path / "run"), "--to", str(dest),
                 "--eval-json", str(tmp_path / "r.json")]) == 0
    Rectifier.from_pretrained(dest, bb.unet)
    card = (dest / "README.md").read_text()
    rect6 = next(r for r in report["rows"] if r["method"] == "rectified" and r["steps"] == 6)
    assert f"{rect6['psnr']:.2f}" in card and f"`{folder.name}`" in card
    assert {"training.png", "psnr_vs_steps.png", "comparison.png"} <= {p.name for p in dest.iterdir()}
    assert main(["release", "rectifier", "--run", str(tmp_path / "run"), "--to", str(dest)]) == 1
    assert main(["release", "rectifier", "--run", str(tmp_path / "nope"), "--to", str(tmp_path / "x")]) == 1
    assert not (tmp_path / "x").exists()


def test_cli_eval_recon_rectified_needs_a_rectifier(tiny, capsys):
    folder, _ = tiny
    args = ["eval", "recon", "--model", str(folder), "--methods", "rectified", "--t0", "100"]
    assert main([*args, "--rectifier", "none"]) == 1
    assert "need a rectifier" in capsys.readouterr().err
    assert main([*args, "--rectifier", "/no/such/rectifier"]) == 1
    assert "No rectifier" in capsys.readouterr().err


def test_bench_writes_step_times(tiny, tmp_path, capsys):
    folder, _ = tiny
    out = tmp_path / "bench.json"
    assert main(["bench", "--model", str(folder), "--rectifier", "none", "--batches", "1,2",
                 "--steps", "2", "--repeats", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["step_ms"]) == {"ddim", "rectified"}
    assert set(report["step_ms"]["ddim"]) == set(report["step_ms"]["rectified"]) == {"1", "2"}
    assert all(v > 0 for m in report["step_ms"].values() for v in m.values())
    assert set(report["ratio"]) == {"1", "2"} and "freshly initialised" in report["rectifier"]
    assert "CPU cores" in report["machine"]
    assert main(["bench", "--model", str(folder), "--json", str(out)]) == 1  # no clobbering
    assert "--force" in capsys.readouterr().err


def test_cli_train_rectifier_reports_a_missing_base(tmp_path, capsys):
    assert main(["train", "rectifier", "--base", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "run")]) == 1
    assert "No base model" in capsys.readouterr().err


def test_training_subset_is_a_fixed_sorted_sample_that_grows_by_extension():
    small = training_subset(100, RectifierTrainConfig(n_images=10))
    large = training_subset(100, RectifierTrainConfig(n_images=40))
    assert small.tolist() == sorted(set(small.tolist())) and len(small) == 10
    assert torch.equal(small, training_subset(100, RectifierTrainConfig(n_images=10)))
    # A wider run keeps the narrower one's images (and so their cached trajectories).
    assert set(small.tolist()) <= set(large.tolist())
    assert not torch.equal(small, training_subset(100, RectifierTrainConfig(n_images=10, seed=1)))
    assert training_subset(30, RectifierTrainConfig(n_images=40)).tolist() == list(range(30))
    assert training_subset(30, RectifierTrainConfig(n_images=0)).tolist() == list(range(30))
