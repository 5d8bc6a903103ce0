"""Edit parameters ψ, edit checkpoints, both edit trainers, `pipeline.edit` and `hifiedit edit`
(training, checkpoints, application), on a tiny U-Net and a tiny random CLIP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import RECT, save_tiny_pipeline
from conftest import nonzero_rectifier as _nonzero_rectifier
from conftest import randomise as _randomise
from PIL import Image
from safetensors.torch import load_file

from hifiedit.cli import main
from hifiedit.diffusion.backbone import load_backbone
from hifiedit.edit import Edit, EditParams, EditParamsConfig, load_edit
from hifiedit.errors import HifieditError
from hifiedit.pipeline import HifiEditPipeline
from hifiedit.rectifier import Rectifier, rectified_eps
from hifiedit.train.edit import (STEPS, EditTrainConfig, build_task, generation_move,
                                 source_attribute, train_edit)
from hifiedit.diffusion.backbone import model_digest

def _images(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, 3, 16, 16), generator=g) * 2 - 1


TINY = dict(src="light skin tone", tgt="dark skin tone", t0=200, s_for=6, s_train=3,
            batch_size=3, rank=2, alpha=2.0, log_every=1, checkpoint_every=1000)


def _config(clip_dir, rect, **kw):
    return EditTrainConfig(**{**TINY, "clip": str(clip_dir), "rectifier": str(rect), **kw})


def _run(tiny, out, cache, config, **kw):
    folder, bb = tiny
    return train_edit(config, out, base=folder, backbone=bb, train_images=_images(5, 0),
                      cache_folder=cache, progress=False, **kw)


# ------------------------------------------------------------------ ψ


@pytest.mark.parametrize("method", ["lora", "subset", "full"])
def test_zero_edit_is_theta_and_gradients_reach_the_offsets(tiny, method):
    _, bb = tiny
    config = EditParamsConfig(method=method, rank=2, targets=("up_blocks.1.", "mid_block."))
    params = EditParams.for_unet(bb.unet, config)
    psi = params.as_unet(bb.unet)
    x, t = _images(2, 3), torch.tensor([10, 150])
    with torch.no_grad():
        torch.testing.assert_close(bb.eps(x, t, unet=psi), bb.eps(x, t), rtol=0, atol=0)
    # Plain ψ and ψ modulated by a rectifier whose P_t comes from θ (DESIGN §1).
    rect = _nonzero_rectifier(bb.unet)
    for eps in (bb.eps(x, t, unet=psi), rectified_eps(bb, rect, x, t, rect.encode_x0(x), unet=psi,
                                                        step=torch.tensor([10, 50]))):
        params.zero_grad()
        eps.square().sum().backward()
        grads = [p.grad for p in params.parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads)
    assert not any(p.requires_grad for p in bb.unet.parameters())  # θ stays frozen
    names = list(params.layers)
    if method == "lora":
        assert all(n.startswith(("up_blocks.1.", "mid_block.")) and n.endswith("weight") for n in names)
    elif method == "subset":
        assert any(n.endswith("bias") for n in names) and all(
            n.startswith(("up_blocks.1.", "mid_block.")) for n in names)
    else:
        assert len(names) == len(list(bb.unet.parameters()))
    # The weights dict for functional_call is the same ψ.
    _randomise(params)
    from torch.func import functional_call

    with torch.no_grad():
        ref = bb.eps(x, t, unet=psi)
        torch.testing.assert_close(functional_call(bb.unet, params.weights(bb.unet), (x, t)).sample, ref)


def test_edit_checkpoint_round_trip_size_and_base_check(tiny, tmp_path):
    _, bb = tiny
    params = EditParams.for_unet(bb.unet, EditParamsConfig(rank=3))
    _randomise(params)
    info = {"src": "light skin tone", "tgt": "dark skin tone", "method": "score-matching",
            "t0": 200, "steps": 7, "rectifier": None}
    Edit(params, model_digest(bb), info).save_pretrained(tmp_path / "e")
    loaded = Edit.from_pretrained(tmp_path / "e", bb)
    assert loaded.info == info and loaded.t0 == 200 and not loaded.rectified
    a, b = params.tensors(), loaded.params.tensors()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x, t = _images(2, 4), torch.tensor([5, 100])
    with torch.no_grad():
        assert torch.equal(bb.eps(x, t, unet=loaded.unet(bb)), bb.eps(x, t, unet=params.as_unet(bb.unet)))
    # Only the offsets are stored: 4 bytes a number plus the safetensors header.
    size = (tmp_path / "e" / "edit.safetensors").stat().st_size
    assert params.n_params * 4 < size <= params.n_params * 4 + 100 * len(a) + 1024
    cfg = json.loads((tmp_path / "e" / "config.json").read_text())
    assert cfg["base_digest"] == model_digest(bb) and cfg["params"]["rank"] == 3
    # Another base model (same architecture, other weights) is refused, here and in edit().
    other = load_backbone(save_tiny_pipeline(tmp_path / "other"))
    with torch.no_grad():
        other.unet.conv_out.bias.add_(0.01)
    with pytest.raises(HifieditError, match="another base model"):
        Edit.from_pretrained(tmp_path / "e", other)
    with pytest.raises(HifieditError, match="another base model"):
        HifiEditPipeline(other).edit(_images(1, 0), loaded, steps=2)
    # A missing or extra tensor is named, never loaded loosely.
    tensors = load_file(str(tmp_path / "e" / "edit.safetensors"))
    tensors.pop(next(iter(tensors)))
    with pytest.raises(HifieditError, match="missing"):
        loaded.params.load_tensors(tensors)
    with pytest.raises(HifieditError, match="No edit"):
        load_edit(tmp_path / "nope")


def test_default_lora_edit_of_the_default_unet_is_under_2mb(tmp_path):
    from hifiedit.edit.params import MAX_DEFAULT_CHECKPOINT_BYTES

    bb = load_backbone("default")
    params = EditParams.for_unet(bb.unet, EditTrainConfig(src="a", tgt="b").params_config())
    Edit(params, "0" * 64, {}).save_pretrained(tmp_path / "e")
    size = (tmp_path / "e" / "edit.safetensors").stat().st_size
    assert params.n_params * 4 < size <= MAX_DEFAULT_CHECKPOINT_BYTES, size


# ------------------------------------------------------------------ training


def _fixed_loss(task, method):
    """The training loss of one fixed draw (the gradients it leaves are discarded)."""
    loss = STEPS[method](task, torch.Generator().manual_seed(123))
    task.psi.zero_grad(set_to_none=True)
    return loss


@pytest.mark.parametrize("method, variant, rectified", [
    ("score-matching", "full", True), ("markovian", "full", False), ("markovian", "efficient", True)])
def test_trainers_lower_their_loss(tiny, clip_dir, rect_dir, tmp_path, method, variant, rectified):
    _, bb = tiny
    config = _config(clip_dir, rect_dir if rectified else "none", method=method,
                     markovian_variant=variant, iters=25, lr=2e-2)
    summary = _run(tiny, tmp_path / "run", tmp_path / "cache", config)
    assert summary["step"] == 25 and summary["s_per_iter"] > 0
    if rectified:  # named relative to the project, found again from it
        assert Path(summary["rectifier"]).resolve() == rect_dir.resolve()
    else:
        assert summary["rectifier"] is None
    task, params, _ = build_task(config, bb, _images(5, 0), tmp_path / "cache")
    before = _fixed_loss(task, method)
    edit = Edit.from_pretrained(tmp_path / "run" / "edit", bb)
    params.load_tensors(edit.params.tensors())
    after = _fixed_loss(task, method)
    assert after < 0.8 * before, (before, after)
    assert edit.info["method"] == method and edit.info["steps"] == 25 and edit.rectified == rectified
    assert edit.info["train_s_per_iter"] > 0 and edit.info["src"] == "light skin tone"
    log = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert log[0] == "step,loss,s_per_iter,wall_s" and len(log) == 26
    assert all(float(r.split(",")[2]) > 0 for r in log[1:])


def test_resume_continues_identically(tiny, clip_dir, rect_dir, tmp_path):
    config = _config(clip_dir, rect_dir, iters=4, lr=1e-2)
    cache = tmp_path / "cache"
    _run(tiny, tmp_path / "straight", cache, config)
    _run(tiny, tmp_path / "split", cache, config, stop_after=2)
    _run(tiny, tmp_path / "split", cache, config, resume=True)
    for group in ("edit", "optimizer", "rng"):
        a = load_file(str(tmp_path / "straight" / "checkpoint" / f"{group}.safetensors"))
        b = load_file(str(tmp_path / "split" / "checkpoint" / f"{group}.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), group
    log = (tmp_path / "split" / "log.csv").read_text().splitlines()
    assert [int(r.split(",")[0]) for r in log[1:]] == [1, 2, 3, 4]
    with pytest.raises(HifieditError, match="--resume"):
        _run(tiny, tmp_path / "split", cache, config)
    with pytest.raises(HifieditError, match="w_l1"):
        _run(tiny, tmp_path / "split", cache, _config(clip_dir, rect_dir, iters=5, w_l1=0.9),
             resume=True)


def _per_move_by_hand(bb, clip_dir, rect_dir, config, images, cache):
    """DiffusionCLIP's clip_finetune_eff for one batch, written out: at every move of the
    S_train chain a detached state, ψ's (rectified) ε, the loss on that move's x̂0, backward,
    clip, Adam step; the chain moves on with the ε of the weights before the step."""
    from hifiedit.diffusion.ddim import DDIMConventions, ddim_step, predict_x0
    from hifiedit.guidance import load_clip, text_direction
    from hifiedit.train.edit import edit_loss

    task, _, _ = build_task(config, bb, images, cache)  # only for the cached inverted x_t0
    params = EditParams.for_unet(bb.unet, config.params_config(), seed=config.seed)
    psi = params.as_unet(bb.unet)
    opt = torch.optim.Adam(params.parameters(), lr=config.lr)
    rect = Rectifier.load_frozen(rect_dir, bb.unet)
    clip = load_clip(str(clip_dir))
    with torch.no_grad():
        src_emb = clip.encode_images(images)
    direction = text_direction(clip, config.src, config.tgt)
    idx = torch.randint(len(images), (config.batch_size,),
                        generator=torch.Generator().manual_seed(config.seed))
    x, x0 = task.states[idx, -1], images[idx]
    with torch.no_grad():
        code = rect.encode_x0(x0)
    grid = DDIMConventions().timesteps(config.t0, config.s_train)
    ac = bb.alphas_cumprod.to(torch.float64)
    alpha = lambda t: 1.0 if t == 0 else float(ac[t])  # noqa: E731  the last move lands on ᾱ = 1
    steps = 0
    for t_from, t_to in zip(grid[::-1][:-1], grid[::-1][1:]):
        x = x.detach()
        t = torch.full((len(x),), t_from)
        eps = rectified_eps(bb, rect, x, t, code, unet=psi, step=torch.full((len(x),), t_from - t_to))
        loss = edit_loss(clip, predict_x0(x, eps, ac[t]), x0, src_emb[idx], direction, config)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params.parameters(), config.grad_clip)
        opt.step()
        steps += 1
        x = ddim_step(x, eps.detach(), alpha(t_from), alpha(t_to))
    return params, steps


def test_per_move_variant_is_diffusionclips_loop(tiny, clip_dir, rect_dir, tmp_path):
    _, bb = tiny
    config = _config(clip_dir, rect_dir, method="markovian", markovian_variant="per-move",
                     iters=1, lr=1e-3)
    images = _images(5, 0)
    summary = _run(tiny, tmp_path / "run", tmp_path / "cache", config)
    assert summary["step"] == 1 and summary["optimizer_steps"] == config.s_train
    want, steps = _per_move_by_hand(bb, clip_dir, rect_dir, config, images, tmp_path / "cache")
    assert steps == config.s_train == 3
    got = load_file(str(tmp_path / "run" / "checkpoint" / "edit.safetensors"))
    ref = want.tensors()
    assert got.keys() == ref.keys()
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=1e-6)
    # The weights moved: one update per move, not none.
    assert max((ref[k] - v).abs().max() for k, v in
               EditParams.for_unet(bb.unet, config.params_config(), seed=0).tensors().items()) > 1e-4
    # Adam counted S_train updates for every offset.
    opt = load_file(str(tmp_path / "run" / "checkpoint" / "optimizer.safetensors"))
    counts = {float(v) for k, v in opt.items() if k.endswith("step")}
    assert counts == {float(config.s_train)}, counts


def test_per_move_resumes_identically_and_counts_updates(tiny, clip_dir, tmp_path):
    config = _config(clip_dir, "none", method="markovian", markovian_variant="per-move",
                     iters=4, lr=1e-3, t_edit=100)  # S_train 3 over t0 200: moves at 200, 133, 66
    cache = tmp_path / "cache"
    straight = _run(tiny, tmp_path / "straight", cache, config)
    _run(tiny, tmp_path / "split", cache, config, stop_after=2)
    split = _run(tiny, tmp_path / "split", cache, config, resume=True)
    for group in ("edit", "optimizer", "rng"):
        a = load_file(str(tmp_path / "straight" / "checkpoint" / f"{group}.safetensors"))
        b = load_file(str(tmp_path / "split" / "checkpoint" / f"{group}.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), group
    # Two of the three moves lie in the editing interval: two updates per iteration.
    assert straight["optimizer_steps"] == split["optimizer_steps"] == 4 * 2
    log = [r.split(",") for r in (tmp_path / "split" / "log.csv").read_text().splitlines()]
    assert log[0] == ["step", "loss", "s_per_iter", "wall_s"]
    assert [int(r[0]) for r in log[1:]] == [1, 2, 3, 4] and all(float(r[2]) > 0 for r in log[1:])
    with pytest.raises(HifieditError, match="markovian_variant"):
        EditTrainConfig(src="man", tgt="woman", markovian_variant="per_move").validate()


def test_bad_texts_and_sources_are_refused(tmp_path, capsys):
    with pytest.raises(HifieditError, match="non-empty"):
        EditTrainConfig(src=" ", tgt="dark skin tone").validate()
    with pytest.raises(HifieditError, match="same"):
        EditTrainConfig(src="Dark skin tone", tgt="dark skin tone").validate()
    assert source_attribute("light skin tone") == ("skin_tone", "light")
    assert source_attribute("medium-dark skin tone") == ("skin_tone", "medium-dark")
    assert source_attribute("a man") == ("gender", "man")
    assert source_attribute("neutral face") == ("expression", "neutral")
    with pytest.raises(HifieditError, match="--image-dir"):
        source_attribute("a cat")
    assert main(["train", "edit", "--src", "man", "--tgt", "man", "--out", str(tmp_path / "r")]) == 1
    assert "nothing to edit" in capsys.readouterr().err and not (tmp_path / "r").exists()


# ------------------------------------------------------------------ using edits


def _zero_edit(bb, rectifier="r"):
    return Edit(EditParams.for_unet(bb.unet, EditParamsConfig(rank=2)), model_digest(bb),
                {"t0": 200, "rectifier": rectifier})


def test_zero_edit_with_zero_rectifier_is_plain_reconstruction(tiny):
    _, bb = tiny
    pipe = HifiEditPipeline(bb, Rectifier.for_unet(bb.unet, RECT).eval())
    x = _images(3, 5)
    edit = _zero_edit(bb)
    rec = pipe.reconstruct(x, steps=4, t0=200, rectify=False)
    torch.testing.assert_close(pipe.edit(x, edit, steps=4), rec, atol=1e-5, rtol=1e-5)
    # Several edits mix their ε (DiffusionCLIP): two copies of one edit are that edit.
    torch.testing.assert_close(pipe.edit(x, [edit, _zero_edit(bb)], steps=4), rec, atol=1e-5, rtol=1e-5)
    with pytest.raises(HifieditError, match="needs a rectifier"):
        HifiEditPipeline(bb).edit(x, edit, steps=4, rectify=True)


def test_edits_change_the_image_and_mix(tiny):
    _, bb = tiny
    pipe = HifiEditPipeline(bb)
    x = _images(2, 6)
    a, b = _zero_edit(bb, None), _zero_edit(bb, None)
    _randomise(a.params, seed=1, scale=0.2)
    _randomise(b.params, seed=2, scale=0.2)
    one, two, both = (pipe.edit(x, e, steps=3) for e in (a, b, [a, b]))
    plain = pipe.reconstruct(x, steps=3, t0=200, rectify=False)
    assert (one - plain).abs().mean() > 1e-3 and (both - one).abs().mean() > 1e-4
    assert (both - two).abs().mean() > 1e-4


def test_editing_interval_leaves_the_low_levels_to_the_base(tiny):
    _, bb = tiny
    pipe, x = HifiEditPipeline(bb), _images(2, 7)
    edit = _zero_edit(bb, None)
    _randomise(edit.params, seed=3, scale=0.2)
    grid = pipe.timesteps(200, 4)  # [0, 50, 100, 150, 200]
    # Above t_edit ψ's ε, below θ's, exactly.
    edit.info["t_edit"] = 100
    eps = pipe._mixed_eps_fn([edit], None, grid)
    psi = edit.unet(bb)
    for t in grid[1:]:
        tt = torch.tensor(t)
        want = bb.eps(x, tt, unet=psi) if t >= 100 else bb.eps(x, tt)
        torch.testing.assert_close(eps(x, tt), want)
    # The interval changes the output; t_edit 0 is the whole chain (the paper's editing).
    inside = pipe.edit(x, edit, steps=4)
    torch.testing.assert_close(pipe.edit(x, edit, steps=4, t_edit=100), inside)
    whole = pipe.edit(x, edit, steps=4, t_edit=0)  # the caller overrides the trained interval
    edit.info["t_edit"] = 0
    torch.testing.assert_close(pipe.edit(x, edit, steps=4), whole)
    assert (inside - whole).abs().mean() > 1e-4
    with pytest.raises(HifieditError, match="t_edit"):
        pipe.edit(x, edit, steps=4, t_edit=500)


@pytest.mark.parametrize("variant", ["full", "efficient", "per-move"])
def test_markovian_chain_uses_the_base_below_the_interval(tiny, clip_dir, tmp_path, monkeypatch,
                                                          variant):
    _, bb = tiny
    config = _config(clip_dir, "none", method="markovian", t_edit=100,  # S_train 3: 200, 133, 66
                     markovian_variant=variant)
    task, _, _ = build_task(config, bb, _images(5, 0), tmp_path / "cache")
    calls = []
    real = task.backbone.eps
    monkeypatch.setattr(task.backbone, "eps", lambda x, t, unet=None:
                        calls.append((int(t.reshape(-1)[0]), unet is not None)) or real(x, t, unet=unet))
    task.update = lambda loss: calls.append("update")
    STEPS["markovian"](task, torch.Generator().manual_seed(0))
    if variant == "per-move":  # an update after each move inside the interval, none below
        assert calls == [(200, True), "update", (133, True), "update", (66, False)]
    else:
        assert calls == [(200, True), (133, True), (66, False)]


def test_score_matching_draws_only_inside_the_interval(tiny, clip_dir, tmp_path, monkeypatch):
    _, bb = tiny
    config = _config(clip_dir, "none", t_edit=120)  # S_for 6 over t0 200: levels 33, 66, …, 200
    task, _, _ = build_task(config, bb, _images(5, 0), tmp_path / "cache")
    seen = []
    real = task.backbone.eps
    monkeypatch.setattr(task.backbone, "eps", lambda x, t, unet=None: seen.append(t) or real(x, t, unet=unet))
    gen = torch.Generator().manual_seed(0)
    for _ in range(8):
        STEPS["score-matching"](task, gen)
    levels = {int(v) for t in seen for v in t.reshape(-1)}
    assert levels and min(levels) >= 120 and len(levels) > 1
    with pytest.raises(HifieditError, match="t_edit"):
        EditTrainConfig(src="man", tgt="woman", t0=200, t_edit=300).validate()


def test_score_matching_tells_the_rectifier_the_generation_move(tiny, clip_dir, rect_dir, tmp_path,
                                                               monkeypatch):
    import hifiedit.rectifier

    _, bb = tiny
    assert generation_move([0, 66, 133, 200], torch.tensor([200, 150, 133, 100, 66, 33])).tolist() \
        == [67, 67, 67, 67, 66, 66]
    # S_for 6 over t0 200 (levels 33, 66, …, 200) and S_train 3 (moves 200→133→66→0): R must
    # hear of the S_train move through each sampled level, not of S_for's move of ~33.
    task, _, _ = build_task(_config(clip_dir, rect_dir), bb, _images(5, 0), tmp_path / "cache")
    seen = []
    real = hifiedit.rectifier.rectified_eps
    monkeypatch.setattr(hifiedit.rectifier, "rectified_eps",
                        lambda bb_, r, x, t, code, unet=None, step=None, **kw:
                        seen.append((t.tolist(), step.tolist()))
                        or real(bb_, r, x, t, code, unet=unet, step=step, **kw))
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        STEPS["score-matching"](task, gen)
    pairs = {(t, s) for ts, ss in seen for t, s in zip(ts, ss)}
    assert len(pairs) > 2 and all(s == (66 if t <= 66 else 67) for t, s in pairs)


def test_cli_train_edit_then_edit_refusing_to_overwrite(tiny, clip_dir, tmp_path, capsys):
    folder, bb = tiny
    src = tmp_path / "in"
    src.mkdir()
    for i, c in enumerate([(200, 30, 30), (30, 200, 30)]):
        Image.new("RGB", (16, 16), c).save(src / f"img{i}.png")
    assert main(["train", "edit", "--base", str(folder), "--clip", str(clip_dir), "--rectifier",
                 "none", "--image-dir", str(src), "--src", "light skin tone", "--tgt",
                 "dark skin tone", "--method", "markovian", "--t0", "100", "--s-for", "3",
                 "--s-train", "2", "--iters", "2", "--rank", "2", "--out", str(tmp_path / "run")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["step"] == 2 and summary["n_train_images"] == 2
    edit_dir = tmp_path / "run" / "edit"
    assert load_edit(edit_dir, bb).t0 == 100
    base = ["edit", "--edit", str(edit_dir), "--model", str(folder), "--rectifier", "none",
            "--steps", "2"]
    out = tmp_path / "out.png"
    assert main([*base, str(src / "img0.png"), "-o", str(out)]) == 0
    first = out.read_bytes()
    assert main([*base, str(src / "img0.png"), "-o", str(out)]) == 1
    assert "--force" in capsys.readouterr().err and out.read_bytes() == first
    assert main([*base, str(src / "img1.png"), "-o", str(out), "--force"]) == 0
    assert out.read_bytes() != first
    outdir = tmp_path / "outdir"
    assert main([*base, str(src), "-o", str(outdir)]) == 0
    assert sorted(p.name for p in outdir.iterdir()) == ["img0.png", "img1.png"]
    assert main([*base, str(src), "-o", str(outdir)]) == 1
    assert "--force" in capsys.readouterr().err
    assert main([*base, str(src), "-o", str(outdir), "--force"]) == 0


def test_release_ships_the_edit_with_a_card_and_refuses_a_foreign_report(tiny, clip_dir,
                                                                          rect_dir, tmp_path):
    from hifiedit.edit import load_edit
    from hifiedit.train.release_edit import release_edit_model

    run = tmp_path / "l2d"
    _run(tiny, run, tmp_path / "cache", _config(clip_dir, rect_dir, iters=2, lr=1e-2))
    report = {"split": "test", "machine": "m", "rows": [
        {"edit": "l2d", "steps": 6, "gt_mae": 0.05, "gt_psnr": 20.0, "preserve_mae": 0.01,
         "s_dir": 0.3, "judge_acc": 0.9, "n_images": 4}], "references": [
        {"reference": "unchanged", "src": "light skin tone", "tgt": "dark skin tone", "steps": None,
         "gt_mae": 0.06, "gt_psnr": 19.0, "preserve_mae": 0.0, "s_dir": 0.0, "judge_acc": 0.1,
         "n_images": 4},
        {"reference": "unchanged", "src": "man", "tgt": "woman", "steps": None, "gt_mae": 0.07,
         "gt_psnr": 18.0, "preserve_mae": 0.0, "s_dir": 0.0, "judge_acc": 0.2, "n_images": 5}]}
    (tmp_path / "ok.json").write_text(json.dumps(report))
    dest = release_edit_model(run, tmp_path / "shipped", tmp_path / "ok.json")
    card = (dest / "README.md").read_text()
    assert "| this edit | 6 | 0.0500 | 20.00 | 0.0100 | 0.300 | 0.90 | 4 |" in card
    assert "| no edit: source unchanged | – | 0.0600 | 19.00 | 0.0000 | 0.000 | 0.10 | 4 |" in card
    assert "0.0700" not in card  # another edit's reference
    assert "hifiedit train edit --src \"light skin tone\"" in card
    # The shipped copy loads and is the trained edit.
    shipped, trained = load_edit(dest, tiny[1]), load_edit(run / "edit", tiny[1])
    assert all(torch.equal(a, b) for a, b in zip(shipped.params.parameters(),
                                                  trained.params.parameters()))
    report["rows"][0]["edit"] = "another-edit"
    (tmp_path / "foreign.json").write_text(json.dumps(report))
    with pytest.raises(HifieditError, match="no rows for edit 'l2d'"):
        release_edit_model(run, tmp_path / "shipped2", tmp_path / "foreign.json")
    with pytest.raises(HifieditError, match="exists"):
        release_edit_model(run, dest)


def test_a_neutral_source_means_any_face_that_does_not_smile():
    from types import SimpleNamespace

    from hifiedit.data.attributes import has_attribute as _has

    face = lambda name, *expr: SimpleNamespace(name=name, expression=expr)  # noqa: E731
    assert _has(face("neutral face", "neutral"), "expression", "neutral")
    assert _has(face("weary face", "weary"), "expression", "neutral")
    assert not _has(face("grinning face", "grinning"), "expression", "neutral")
    assert not _has(face("cat", ), "expression", "neutral")
    assert _has(face("grinning face", "grinning"), "expression", "grinning")


def test_card_train_command_reproduces_the_guide_and_interval():
    from dataclasses import asdict

    from hifiedit.train.release_edit import train_command

    plain = asdict(EditTrainConfig(src="a b", tgt="c d"))
    assert "--clip" not in train_command(plain, "OUT") and "--t-edit" not in train_command(plain, "OUT")
    tuned = train_command({**plain, "clip": "openmoji32-clip-noise", "t_edit": 133}, "OUT")
    assert " --clip openmoji32-clip-noise " in tuned and " --t-edit 133 " in tuned
