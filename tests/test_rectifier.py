"""The rectifier hypernetwork and per-sample modulation (DESIGN §1 "Rectifier", STYLE 5–7)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from conftest import save_tiny_pipeline, tiny_unet
from torch import nn

from hifiedit.diffusion import ddim_timesteps, generate
from hifiedit.diffusion.backbone import Backbone, load_backbone
from hifiedit.diffusion.schedule import linear_alphas_cumprod
from hifiedit.errors import HifieditError
from hifiedit.rectifier import (
    Rectifier,
    RectifierConfig,
    modulated_forward,
    modulated_layers,
    rectified_eps,
    rectified_eps_fn,
    unet_down,
    unet_up,
)

SMALL = RectifierConfig(encoder_channels=(8, 16), norm_groups=4, time_embed_dim=16,
                        feature_dim=16, branch_hidden=8, pointwise_rank=2)


@pytest.fixture(scope="module")
def unet():
    return tiny_unet().eval().requires_grad_(False)


@pytest.fixture(scope="module")
def backbone(unet):
    return Backbone(unet=unet, alphas_cumprod=linear_alphas_cumprod(), prediction_type="epsilon",
                    name="tiny", path=None)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand((4, 3, 16, 16), generator=g) * 2 - 1
    x_t = torch.randn((4, 3, 16, 16), generator=g)
    return x0, x_t, torch.tensor([3, 250, 600, 999])


def _random_offsets(rectifier, n, scale=0.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: scale * torch.randn((n, *s), generator=g) for k, s in rectifier.layers.items()}


def _trained(unet, steps=1, seed=0):
    """A rectifier moved off its zero initialisation by `steps` Adam steps on a random loss."""
    torch.manual_seed(seed)
    r = Rectifier.for_unet(unet, SMALL)
    opt = torch.optim.Adam(r.parameters(), lr=1e-2)
    x = torch.randn(2, 3, 16, 16)
    for _ in range(steps):
        out = modulated_forward(unet, x, torch.tensor([10, 500]), r(x, x.flip(-1), torch.tensor([10, 500])))
        loss = (out - torch.randn_like(out)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return r


def test_modulated_layers_are_exactly_the_mid_and_up_convolutions(unet):
    convs = {f"{n}.weight": tuple(m.weight.shape) for n, m in unet.named_modules()
             if isinstance(m, nn.Conv2d)}
    expected = {n: s for n, s in convs.items() if n.startswith(("mid_block.", "up_blocks."))}
    layers = modulated_layers(unet)
    assert layers == expected
    assert len(expected) < len(convs)  # conv_in, down blocks and conv_out exist and are left out
    assert not any(n.startswith(("down_blocks.", "conv_in", "conv_out")) for n in layers)
    r = Rectifier.for_unet(unet, SMALL)
    x = torch.randn(3, 3, 16, 16)
    offsets = r(x, x, torch.tensor([1, 2, 3]))
    assert {k: tuple(v.shape[1:]) for k, v in offsets.items()} == expected
    assert all(v.shape[0] == 3 for v in offsets.values())


def test_zero_rectifier_reproduces_the_base_eps(backbone, unet, batch):
    x0, x_t, t = batch
    r = Rectifier.for_unet(unet, SMALL)
    eps, p_t, offsets = rectified_eps(backbone, r, x_t, t, r.encode_x0(x0), return_parts=True)
    assert all(torch.count_nonzero(d) == 0 for d in offsets.values())  # Δ = 0 exactly
    base = backbone.eps(x_t, t)
    # One sample: the modulated pass is the U-Net's own computation, bit for bit.
    one = rectified_eps(backbone, r, x_t[:1], t[:1], r.encode_x0(x0[:1]))
    assert torch.equal(one, backbone.eps(x_t[:1], t[:1]))
    # A batch: θ̂ = θ bit for bit, but the batch-folded (grouped) convolution sums in another
    # order than the batched one: float32 rounding only.
    torch.testing.assert_close(eps, base, rtol=0, atol=1e-5)
    # And a whole rectified DDIM chain equals the plain one.
    steps = ddim_timesteps(200, 4)
    with torch.no_grad():
        plain = generate(backbone.eps, x_t, steps, backbone.alphas_cumprod).final
        rect = generate(rectified_eps_fn(backbone, r, x0), x_t, steps, backbone.alphas_cumprod).final
    torch.testing.assert_close(rect, plain, rtol=0, atol=1e-4)


def test_zero_rectifier_is_identity_for_v_prediction_models(tmp_path, batch):
    bb = load_backbone(save_tiny_pipeline(tmp_path / "v", prediction_type="v_prediction"))
    x0, x_t, t = batch
    r = Rectifier.for_unet(bb.unet, SMALL)
    eps = rectified_eps(bb, r, x_t[:1], t[:1], r.encode_x0(x0[:1]))
    assert torch.equal(eps, bb.eps(x_t[:1], t[:1]))


def test_gradients_flow_from_the_zero_start(unet):
    r = Rectifier.for_unet(unet, SMALL)
    x = torch.randn(2, 3, 16, 16)
    t = torch.tensor([10, 500])
    before = {k: v.detach().clone() for k, v in r(x, x, t).items()}
    assert all(torch.count_nonzero(v) == 0 for v in before.values())
    out = modulated_forward(unet, x, t, r(x, x.flip(-1), t))
    loss = (out - torch.randn_like(out)).square().mean()
    loss.backward()
    # The zero-initialised spatial head receives gradient because the pointwise factor is 1.
    assert all(b.spatial.weight.grad.abs().sum() > 0 for b in r.branches)
    torch.optim.SGD(r.parameters(), lr=0.1).step()
    after = r(x, x, t)
    assert all(not torch.equal(after[k], before[k]) for k in before)
    assert all(p.grad is None for p in unet.parameters())  # the base stays frozen


def test_gradients_reach_encoder_and_pointwise_factor_after_one_step(unet):
    r = _trained(unet, steps=2)
    x = torch.randn(2, 3, 16, 16)
    t = torch.tensor([10, 500])
    r.zero_grad()
    out = modulated_forward(unet, x, t, r(x, x.flip(-1), t))
    (out - torch.randn_like(out)).square().mean().backward()
    assert r.encoder.stem_p.weight.grad.abs().sum() > 0
    assert all(b.pointwise.grad.abs().sum() > 0 for b in r.branches)


def test_batched_per_sample_modulation_equals_one_by_one(unet, batch):
    _, x, t = batch
    r = Rectifier.for_unet(unet, SMALL)
    offsets = _random_offsets(r, len(x))
    with torch.no_grad():
        grouped = modulated_forward(unet, x, t, offsets, "grouped")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # vmap's per-sample fallback for attention
            vmapped = modulated_forward(unet, x, t, offsets, "vmap")
        singles = torch.cat([modulated_forward(unet, x[i:i + 1], t[i:i + 1],
                                               {k: v[i:i + 1] for k, v in offsets.items()})
                             for i in range(len(x))])
        # A sample run alone with θ̂_b as the U-Net's ordinary weights (no modulation code).
        params = dict(unet.named_parameters())
        for name in offsets:
            params[name] = params[name] * (1 + offsets[name][2])
        reference = torch.func.functional_call(unet, params, (x[2:3], t[2:3])).sample
    assert not torch.allclose(grouped, unet(x, t).sample, atol=1e-3)  # offsets matter
    torch.testing.assert_close(grouped, singles, rtol=0, atol=1e-5)
    torch.testing.assert_close(vmapped, singles, rtol=0, atol=1e-5)
    torch.testing.assert_close(singles[2:3], reference, rtol=0, atol=1e-6)


def test_rectified_eps_batched_equals_one_by_one(backbone, unet, batch):
    x0, x_t, t = batch
    r = _trained(unet)
    with torch.no_grad():
        eps = rectified_eps(backbone, r, x_t, t, r.encode_x0(x0))
        singles = torch.cat([rectified_eps(backbone, r, x_t[i:i + 1], t[i:i + 1], r.encode_x0(x0[i:i + 1]))
                             for i in range(len(x0))])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # vmap's per-sample fallback for attention
            vmapped = rectified_eps(backbone, r, x_t, t, r.encode_x0(x0), method="vmap")
    assert not torch.allclose(eps, backbone.eps(x_t, t), atol=1e-4)
    torch.testing.assert_close(eps, singles, rtol=0, atol=1e-5)
    torch.testing.assert_close(vmapped, singles, rtol=0, atol=1e-5)


def test_split_unet_forward_matches_diffusers(unet, batch):
    _, x, t = batch
    with torch.no_grad():
        assert torch.equal(unet_up(unet, unet_down(unet, x, t)), unet(x, t).sample)


def test_save_load_round_trip_is_exact(unet, tmp_path, batch):
    x0, x_t, t = batch
    r = _trained(unet)
    r.save_pretrained(tmp_path / "rect")
    meta = json.loads((tmp_path / "rect" / "config.json").read_text())
    assert meta["layers"] == {k: list(v) for k, v in modulated_layers(unet).items()}
    loaded = Rectifier.from_pretrained(tmp_path / "rect", unet)
    assert loaded.config == r.config
    a, b = r.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with torch.no_grad():
        out_a, out_b = r(x0, x_t, t), loaded(x0, x_t, t)
    assert all(torch.equal(out_a[k], out_b[k]) for k in out_a)
    frozen = Rectifier.load_frozen(tmp_path / "rect", unet)
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    assert all(torch.equal(a[k], frozen.state_dict()[k]) for k in a)


def test_loading_into_a_different_unet_is_refused(unet, tmp_path):
    Rectifier.for_unet(unet, SMALL).save_pretrained(tmp_path / "rect")
    from diffusers import UNet2DModel

    other = UNet2DModel(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1,
                        block_out_channels=(8, 32), down_block_types=("DownBlock2D", "DownBlock2D"),
                        up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    with pytest.raises(HifieditError, match=r"different U-Net.*up_blocks\.0\.resnets\.0\.conv1\.weight"):
        Rectifier.from_pretrained(tmp_path / "rect", other)


def test_loading_refuses_missing_or_misshaped_weights(unet, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = Rectifier.for_unet(unet, SMALL).save_pretrained(tmp_path / "rect")
    weights = load_file(str(folder / "model.safetensors"))
    weights.pop("branches.0.spatial.weight")
    save_file(weights, str(folder / "model.safetensors"))
    with pytest.raises(HifieditError, match=r"missing \['branches\.0\.spatial\.weight'\]"):
        Rectifier.from_pretrained(folder, unet)
    with pytest.raises(HifieditError, match="not a rectifier folder"):
        Rectifier.from_pretrained(tmp_path / "nowhere", unet)


def test_config_is_validated():
    with pytest.raises(HifieditError, match="divisible"):
        RectifierConfig(encoder_channels=(10,), norm_groups=4).validate()
    with pytest.raises(HifieditError, match="unknown rectifier config keys"):
        RectifierConfig.from_dict({"bogus": 1})


def test_default_rectifier_is_small_enough_to_ship():
    from hifiedit.train.base import BaseTrainConfig, build_unet

    r = Rectifier.for_unet(build_unet(BaseTrainConfig()))
    n_bytes = sum(p.numel() * p.element_size() for p in r.parameters())
    assert n_bytes <= 20e6, n_bytes  # ≤ 20 MB for a committed rectifier
    assert len(r.layers) == 24


def test_modulating_another_network_psi_uses_p_t_from_the_base(backbone, unet, batch):
    """DESIGN §1 editing: ε_{ψ ⊙ (1 + R(x0, P_t^θ))}. With ψ a copy of θ the result equals the
    default path (which reuses θ's down pass); with ψ ≠ θ it differs."""
    import copy

    x0, x_t, t = batch
    r = _trained(unet)
    psi = copy.deepcopy(unet)
    with torch.no_grad():
        same = rectified_eps(backbone, r, x_t, t, r.encode_x0(x0), unet=psi)
        torch.testing.assert_close(same, rectified_eps(backbone, r, x_t, t, r.encode_x0(x0)),
                                   rtol=0, atol=1e-5)
        psi.up_blocks[0].resnets[0].conv1.weight.mul_(1.5)
        edited, p_t, _ = rectified_eps(backbone, r, x_t, t, r.encode_x0(x0), unet=psi, return_parts=True)
    assert not torch.allclose(edited, same, atol=1e-4)
    from hifiedit.diffusion import predict_x0

    a = backbone.alphas_cumprod[t]
    torch.testing.assert_close(p_t, predict_x0(x_t, backbone.eps(x_t, t), a), rtol=0, atol=1e-5)


def test_step_conditioned_rectifier_reads_each_move_size_from_the_grid(backbone, batch):
    from dataclasses import replace

    x0, x_t, _ = batch
    r = Rectifier.for_unet(backbone.unet, replace(SMALL, step_embedding=True))
    with torch.no_grad():  # a non-zero rectifier, so that the step size changes ε
        for b in r.branches:
            b.spatial.weight.normal_(0, 0.05)
    grid = ddim_timesteps(200, 4)  # moves of 50
    fn = rectified_eps_fn(backbone, r, x0, timesteps=grid)
    t = torch.tensor(grid[-1])
    code = r.encode_x0(x0)
    with torch.no_grad():
        torch.testing.assert_close(fn(x_t, t), rectified_eps(backbone, r, x_t, t, code, step=torch.tensor(50)))
        assert not torch.allclose(fn(x_t, t), rectified_eps(backbone, r, x_t, t, code, step=torch.tensor(5)))
    with pytest.raises(HifieditError, match="not a generation level"):
        fn(x_t, torch.tensor(7))
    with pytest.raises(HifieditError, match="step size"):
        rectified_eps_fn(backbone, r, x0)(x_t, t)
