"""Gradient checkpointing of the rectified (per-sample modulated) U-Net: the gradients it gives
must be the gradients of the uncheckpointed pass, for the rectifier φ and for edit weights ψ."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_unet

from hifiedit.diffusion.backbone import Backbone
from hifiedit.diffusion.schedule import linear_alphas_cumprod
from hifiedit.edit import EditParams, EditParamsConfig
from hifiedit.errors import HifieditError
from hifiedit.rectifier import Rectifier, RectifierConfig, modulated_forward, rectified_eps

SMALL = RectifierConfig(encoder_channels=(8, 16), norm_groups=4, time_embed_dim=16,
                        feature_dim=16, branch_hidden=8, pointwise_rank=2)


@pytest.fixture(scope="module")
def backbone():
    unet = tiny_unet().eval().requires_grad_(False)
    return Backbone(unet=unet, alphas_cumprod=linear_alphas_cumprod(), prediction_type="epsilon",
                    name="tiny", path=None)


def _rectifier(unet):
    """Off its zero initialisation (else Δ = 0 and θ̂ = θ would hide a wrong recomputation)."""
    torch.manual_seed(0)
    r = Rectifier.for_unet(unet, SMALL)
    with torch.no_grad():
        for p in r.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return r


def _inputs():
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand((3, 3, 16, 16), generator=g) * 2 - 1
    return x0, torch.randn((3, 3, 16, 16), generator=g), torch.tensor([5, 300, 800])


def _grads(module, loss_fn):
    module.zero_grad(set_to_none=True)
    loss_fn().backward()
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def _assert_same(a, b):
    assert a.keys() == b.keys() and a
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=1e-5, atol=1e-7, msg=n)


def test_rectifier_gradients_with_checkpointing_equal_those_without(backbone):
    rect = _rectifier(backbone.unet)
    x0, x_t, t = _inputs()

    def loss(checkpoint):
        eps = rectified_eps(backbone, rect, x_t, t, rect.encode_x0(x0), checkpoint=checkpoint)
        return lambda: (eps - x0).square().mean()

    plain = _grads(rect, lambda: loss(False)())
    _assert_same(plain, _grads(rect, lambda: loss(True)()))


def test_edit_gradients_through_a_rectified_pass_with_checkpointing_equal_those_without(backbone):
    rect = _rectifier(backbone.unet).requires_grad_(False)
    params = EditParams.for_unet(backbone.unet, EditParamsConfig(method="lora", rank=2), seed=0)
    with torch.no_grad():  # move the adapters off zero so both factors get gradients
        for p in params.parameters():
            p.add_(0.05 * torch.randn_like(p))
    psi = params.as_unet(backbone.unet)
    x0, x_t, t = _inputs()
    x_t = x_t.requires_grad_(True)  # a chain state with a graph: the down half is checkpointed too

    def loss(checkpoint):
        return lambda: rectified_eps(backbone, rect, x_t, t, rect.encode_x0(x0), unet=psi,
                                     checkpoint=checkpoint).square().mean()

    _assert_same(_grads(params, loss(False)), _grads(params, loss(True)))


def test_diffusers_own_checkpointing_differentiates_the_wrong_weights(backbone):
    """Why modulate.py checkpoints by itself: diffusers' recomputation in backward runs after
    the per-sample convolutions are restored, so it recomputes θ's pass, not θ̂'s. torch 2.13
    notices (the recomputation saves other tensors than the forward did) and stops; where it
    did not, φ would get wrong gradients."""
    rect = _rectifier(backbone.unet)
    x0, x_t, t = _inputs()
    unet = backbone.unet

    def loss():
        deltas = rect(x0, x0.flip(-1), t)
        return modulated_forward(unet, x_t, t, deltas).square().mean()

    plain = _grads(rect, loss)
    unet.enable_gradient_checkpointing()
    try:
        theirs = _grads(rect, loss)
    except torch.utils.checkpoint.CheckpointError:
        theirs = None
    finally:
        unet.disable_gradient_checkpointing()
    assert theirs is None or max((plain[n] - theirs[n]).abs().max() for n in plain) > 1e-4
    ours = _grads(rect, lambda: modulated_forward(unet, x_t, t, rect(x0, x0.flip(-1), t),
                                                  checkpoint=True).square().mean())
    _assert_same(plain, ours)


def test_checkpointing_refuses_what_it_cannot_recompute(backbone):
    rect = _rectifier(backbone.unet)
    x0, x_t, t = _inputs()
    deltas = rect(x0, x0, t)
    with pytest.raises(HifieditError, match="grouped"):
        modulated_forward(backbone.unet, x_t, t, deltas, method="vmap", checkpoint=True)
    w = backbone.unet.conv_in.weight
    with pytest.raises(HifieditError, match="mid/up"):
        modulated_forward(backbone.unet, x_t, t, {"conv_in.weight": torch.zeros(3, *w.shape)},
                          checkpoint=True)


# ------------------------------------------------------------------ the trainers, end to end


def _images(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, 3, 16, 16), generator=g) * 2 - 1


def _weights(folder):
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    assert files
    return {f"{f.name}/{k}": v for f in files for k, v in load_file(str(f)).items()}


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=k)


@pytest.mark.parametrize("method, rectified", [("score-matching", True), ("markovian", True),
                                               ("score-matching", False)])
def test_edit_training_with_checkpointing_trains_the_same_weights(tiny, clip_dir, rect_dir, tmp_path,
                                                                  method, rectified):
    from hifiedit.train.edit import EditTrainConfig, train_edit

    folder, bb = tiny
    config = EditTrainConfig(src="light skin tone", tgt="dark skin tone", t0=200, s_for=6,
                             s_train=3, batch_size=3, rank=2, alpha=2.0, iters=2, lr=1e-2,
                             method=method, clip=str(clip_dir),
                             rectifier=str(rect_dir) if rectified else "none")
    out = {}
    for ckpt in (False, True):
        train_edit(config, tmp_path / str(ckpt), base=folder, backbone=bb,
                   train_images=_images(4, 0), cache_folder=tmp_path / "cache", progress=False,
                   grad_checkpointing=ckpt)
        out[ckpt] = _weights(tmp_path / str(ckpt) / "edit")
    _assert_same_weights(out[False], out[True])


def test_rectifier_training_with_checkpointing_trains_the_same_weights(tiny, tmp_path):
    from hifiedit.train.rectifier import RectifierTrainConfig, train_rectifier

    folder, bb = tiny
    # Two moves with gradient: the second starts from a state with a graph, so the shared
    # down half is checkpointed too.
    config = RectifierTrainConfig(encoder_channels=(8, 16), norm_groups=4, time_embed_dim=16,
                                  feature_dim=16, branch_hidden=8, pointwise_rank=2, t0=200,
                                  step_grids=(3, 6), cache_points=4, rollout_max=1,
                                  grad_chain_steps=2, batch_size=3, warmup_steps=1, max_steps=2,
                                  eval_every=100, n_val_images=0, lr=1e-2)
    out = {}
    for ckpt in (False, True):
        train_rectifier(config, tmp_path / str(ckpt), base=folder, backbone=bb,
                        train_images=_images(4, 0), val_images=_images(0, 1),
                        cache_folder=tmp_path / "cache", progress=False, grad_checkpointing=ckpt)
        out[ckpt] = _weights(tmp_path / str(ckpt) / "checkpoint")
    _assert_same_weights(out[False], out[True])
