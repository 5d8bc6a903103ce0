"""`hifiedit convert`: DDIM-repository and guided-diffusion checkpoints → diffusers folders.

The references below are small re-implementations, written for these tests from the originals'
published architectures (ermongroup/ddim models/diffusion.py; openai/guided-diffusion
guided_diffusion/unet.py), with their parameters named as the originals name them. They share
nothing with diffusers or with the converter, so a converted model that computes the same
outputs shows that the key map, the splits of fused tensors and the config are right.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hifiedit.cli import main
from hifiedit.diffusion.backbone import load_backbone
from hifiedit.diffusion.convert import (PRESETS, DDIMArch, GuidedArch, arch_from_config,
                                        convert_state_dict, meta_unet)
from hifiedit.diffusion.schedule import linear_alphas_cumprod


def _gn(c, eps):
    return nn.GroupNorm(32, c, eps=eps)


def _conv(cin, cout, k=3, **kw):
    return nn.Conv2d(cin, cout, k, padding=k // 2, **kw)


# ------------------------------------------------------------------ DDIM `Model`


class DResnet(nn.Module):
    def __init__(self, cin, cout, temb):
        super().__init__()
        self.norm1, self.conv1 = _gn(cin, 1e-6), _conv(cin, cout)
        self.temb_proj = nn.Linear(temb, cout)
        self.norm2, self.conv2 = _gn(cout, 1e-6), _conv(cout, cout)
        if cin != cout:
            self.nin_shortcut = _conv(cin, cout, 1)

    def forward(self, x, e):
        h = self.conv1(F.silu(self.norm1(x))) + self.temb_proj(F.silu(e))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class DAttn(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm = _gn(c, 1e-6)
        self.q, self.k, self.v, self.proj_out = (_conv(c, c, 1) for _ in range(4))

    def forward(self, x):
        b, c, hh, ww = x.shape
        n = self.norm(x)
        q, k, v = (m(n).flatten(2) for m in (self.q, self.k, self.v))
        w = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / math.sqrt(c), dim=-1)
        return x + self.proj_out(torch.einsum("bij,bcj->bci", w, v).reshape(b, c, hh, ww))


class DDIMModel(nn.Module):
    def __init__(self, a: DDIMArch):
        super().__init__()
        ch, n, L, T = a.ch, a.num_res_blocks, len(a.ch_mult), 4 * a.ch
        self.ch = ch
        self.temb = nn.Module()
        self.temb.dense = nn.ModuleList([nn.Linear(ch, T), nn.Linear(T, T)])
        self.conv_in = _conv(a.in_channels, ch)
        in_mult, res, cin = (1,) + a.ch_mult, a.image_size, ch
        self.down = nn.ModuleList()
        for i in range(L):
            lvl = nn.Module()
            lvl.block, lvl.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(n):
                lvl.block.append(DResnet(cin, ch * a.ch_mult[i], T))
                cin = ch * a.ch_mult[i]
                if res in a.attn_resolutions:
                    lvl.attn.append(DAttn(cin))
            if i != L - 1:
                lvl.downsample = nn.Module()
                lvl.downsample.conv = nn.Conv2d(cin, cin, 3, stride=2)
                res //= 2
            self.down.append(lvl)
        self.mid = nn.Module()
        self.mid.block_1, self.mid.attn_1, self.mid.block_2 = DResnet(cin, cin, T), DAttn(cin), DResnet(cin, cin, T)
        ups = []
        for i in reversed(range(L)):
            lvl = nn.Module()
            lvl.block, lvl.attn = nn.ModuleList(), nn.ModuleList()
            for j in range(n + 1):
                skip = ch * (in_mult[i] if j == n else a.ch_mult[i])
                lvl.block.append(DResnet(cin + skip, ch * a.ch_mult[i], T))
                cin = ch * a.ch_mult[i]
                if res in a.attn_resolutions:
                    lvl.attn.append(DAttn(cin))
            if i != 0:
                lvl.upsample = nn.Module()
                lvl.upsample.conv = _conv(cin, cin)
                res *= 2
            ups.insert(0, lvl)
        self.up = nn.ModuleList(ups)
        self.norm_out, self.conv_out = _gn(cin, 1e-6), _conv(cin, a.out_ch)

    def forward(self, x, t):
        half = self.ch // 2  # Ho et al.: sin | cos at 10000^(-i/(half-1))
        arg = t.float()[:, None] * torch.exp(-math.log(10000) * torch.arange(half) / (half - 1))
        e = torch.cat([arg.sin(), arg.cos()], 1)
        e = self.temb.dense[1](F.silu(self.temb.dense[0](e)))
        hs = [self.conv_in(x)]
        for lvl in self.down:
            for j, block in enumerate(lvl.block):
                h = block(hs[-1], e)
                hs.append(lvl.attn[j](h) if len(lvl.attn) else h)
            if hasattr(lvl, "downsample"):
                hs.append(lvl.downsample.conv(F.pad(hs[-1], (0, 1, 0, 1))))
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(hs[-1], e)), e)
        for lvl in reversed(self.up):
            for j, block in enumerate(lvl.block):
                h = block(torch.cat([h, hs.pop()], 1), e)
                h = lvl.attn[j](h) if len(lvl.attn) else h
            if hasattr(lvl, "upsample"):
                h = lvl.upsample.conv(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))


# ------------------------------------------------------------------ guided-diffusion `UNetModel`


class GResnet(nn.Module):
    def __init__(self, cin, cout, temb, scale_shift, resample=None):
        super().__init__()
        self.scale_shift, self.resample = scale_shift, resample
        self.in_layers = nn.Sequential(_gn(cin, 1e-5), nn.SiLU(), _conv(cin, cout))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(temb, cout * (2 if scale_shift else 1)))
        self.out_layers = nn.Sequential(_gn(cout, 1e-5), nn.SiLU(), nn.Dropout(0.0), _conv(cout, cout))
        self.skip_connection = nn.Identity() if cin == cout else _conv(cin, cout, 1)

    def forward(self, x, e):
        h = self.in_layers[1](self.in_layers[0](x))
        if self.resample == "down":
            h, x = F.avg_pool2d(h, 2), F.avg_pool2d(x, 2)
        elif self.resample == "up":
            h, x = F.interpolate(h, scale_factor=2, mode="nearest"), F.interpolate(x, scale_factor=2, mode="nearest")
        h = self.in_layers[2](h)
        emb = self.emb_layers(e)[:, :, None, None]
        if self.scale_shift:
            scale, shift = emb.chunk(2, dim=1)
            h = self.out_layers[3](F.silu(self.out_layers[0](h) * (1 + scale) + shift))
        else:
            h = self.out_layers(h + emb)
        return self.skip_connection(x) + h


class GAttn(nn.Module):
    def __init__(self, c, heads, legacy):
        super().__init__()
        self.heads, self.legacy = heads, legacy
        self.norm, self.qkv, self.proj_out = _gn(c, 1e-5), nn.Conv1d(c, 3 * c, 1), nn.Conv1d(c, c, 1)

    def forward(self, x):
        b, c, hh, ww = x.shape
        qkv, d = self.qkv(self.norm(x.flatten(2))), c // self.heads
        if self.legacy:  # heads first, then q | k | v
            q, k, v = qkv.reshape(b * self.heads, 3 * d, -1).split(d, dim=1)
        else:  # q | k | v first, then heads
            q, k, v = (z.reshape(b * self.heads, d, -1) for z in qkv.chunk(3, dim=1))
        w = torch.softmax(torch.einsum("bct,bcs->bts", q, k) / math.sqrt(d), dim=-1)
        a = torch.einsum("bts,bcs->bct", w, v).reshape(b, c, -1)
        return x + self.proj_out(a).reshape(b, c, hh, ww)


class GDown(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.op = nn.Conv2d(c, c, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class GUp(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = _conv(c, c)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class GSeq(nn.ModuleList):
    def forward(self, x, e):
        for m in self:
            x = m(x, e) if isinstance(m, GResnet) else m(x)
        return x


class GuidedModel(nn.Module):
    def __init__(self, a: GuidedArch):
        super().__init__()
        mc, n, T, ss = a.num_channels, a.num_res_blocks, 4 * a.num_channels, a.use_scale_shift_norm
        mult = a.channel_mult or (1, 1, 2, 2, 4, 4)
        attn_ds = {a.image_size // r for r in a.attention_resolutions}
        self.mc = mc

        def attn(c, heads):
            return GAttn(c, c // a.num_head_channels if a.num_head_channels != -1 else heads,
                         legacy=not a.use_new_attention_order)

        self.time_embed = nn.Sequential(nn.Linear(mc, T), nn.SiLU(), nn.Linear(T, T))
        ch = int(mult[0] * mc)
        self.input_blocks, chans, ds = nn.ModuleList([GSeq([_conv(a.in_channels, ch)])]), [ch], 1
        for level, m in enumerate(mult):
            for _ in range(n):
                layers = [GResnet(ch, int(m * mc), T, ss)]
                ch = int(m * mc)
                if ds in attn_ds:
                    layers.append(attn(ch, a.num_heads))
                self.input_blocks.append(GSeq(layers))
                chans.append(ch)
            if level != len(mult) - 1:
                self.input_blocks.append(GSeq([GResnet(ch, ch, T, ss, "down") if a.resblock_updown else GDown(ch)]))
                chans.append(ch)
                ds *= 2
        self.middle_block = GSeq([GResnet(ch, ch, T, ss), attn(ch, a.num_heads), GResnet(ch, ch, T, ss)])
        up_heads = a.num_heads if a.num_heads_upsample == -1 else a.num_heads_upsample
        self.output_blocks = nn.ModuleList()
        for level, m in list(enumerate(mult))[::-1]:
            for i in range(n + 1):
                layers = [GResnet(ch + chans.pop(), int(mc * m), T, ss)]
                ch = int(mc * m)
                if ds in attn_ds:
                    layers.append(attn(ch, up_heads))
                if level and i == n:
                    layers.append(GResnet(ch, ch, T, ss, "up") if a.resblock_updown else GUp(ch))
                    ds //= 2
                self.output_blocks.append(GSeq(layers))
        out_ch = a.in_channels * (2 if a.learn_sigma else 1)
        self.out = nn.Sequential(_gn(ch, 1e-5), nn.SiLU(), _conv(ch, out_ch))

    def forward(self, x, t):
        half = self.mc // 2  # guided-diffusion: cos | sin at 10000^(-i/half)
        arg = t.float()[:, None] * torch.exp(-math.log(10000) * torch.arange(half) / half)
        e = self.time_embed(torch.cat([arg.cos(), arg.sin()], 1))
        hs, h = [], x
        for m in self.input_blocks:
            h = m(h, e)
            hs.append(h)
        h = self.middle_block(h, e)
        for m in self.output_blocks:
            h = m(torch.cat([h, hs.pop()], 1), e)
        return self.out(h)


# ------------------------------------------------------------------ helpers

TINY_DDIM = DDIMArch(image_size=16, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,))
# learned σ, scale-shift norm, residual resampling, 64 channels per head (2 heads at 64 wide)
TINY_GUIDED = GuidedArch(image_size=16, num_channels=32, num_res_blocks=1, channel_mult=(1, 2, 2),
                         attention_resolutions=(8, 4), num_head_channels=32)
# the other branch of every option: plain norm, conv resampling, a fixed head count, new qkv order
TINY_GUIDED_PLAIN = replace(TINY_GUIDED, learn_sigma=False, use_scale_shift_norm=False,
                            resblock_updown=False, num_head_channels=-1, num_heads=2,
                            use_new_attention_order=True)


def _random(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random values everywhere (the originals zero-initialise some layers, which would hide a
    wrong map)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3 / math.sqrt(max(p[0].numel(), 1)))
            if p.ndim == 1:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def _config_json(a) -> str:
    return json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in asdict(a).items()})


def _convert(tmp_path, fmt, arch, state, name="src.ckpt", extra=()):
    ckpt = tmp_path / name
    if name.endswith(".safetensors"):
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in state.items()}, str(ckpt))
    else:
        torch.save(state, ckpt)
    out = tmp_path / "converted"
    code = main(["convert", "--from", fmt, "--ckpt", str(ckpt), "--config", _config_json(arch),
                 "--out", str(out), *extra])
    return code, out


def _check_same_function(ref, out, in_channels=3, size=16):
    bb = load_backbone(out)
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(2, in_channels, size, size, generator=g), torch.tensor([7, 613])
    with torch.no_grad():
        want = ref(x, t)
        got = bb.unet(x, t).sample
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(bb.eps(x, t), want[:, :in_channels], rtol=1e-4, atol=1e-5)
    return bb


# ------------------------------------------------------------------ same function after conversion


def test_ddim_model_converts_to_the_same_function(tmp_path, capsys):
    ref = _random(DDIMModel(TINY_DDIM))
    code, out = _convert(tmp_path, "ddim", TINY_DDIM, ref.state_dict())
    assert code == 0, capsys.readouterr().err
    bb = _check_same_function(ref, out)
    torch.testing.assert_close(bb.alphas_cumprod, linear_alphas_cumprod())  # β 1e-4…0.02, T 1000
    record = json.loads((out / "conversion.json").read_text())
    assert record["source_tensors"] == len(ref.state_dict()) and record["format"] == "ddim"
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary left


@pytest.mark.parametrize("arch, name", [(TINY_GUIDED, "src.pt"), (TINY_GUIDED_PLAIN, "src.safetensors")])
def test_guided_model_converts_to_the_same_function(tmp_path, arch, name, capsys):
    ref = _random(GuidedModel(arch), seed=3)
    code, out = _convert(tmp_path, "guided", arch, ref.state_dict(), name=name)
    assert code == 0, capsys.readouterr().err
    bb = _check_same_function(ref, out)
    assert bb.unet.config.out_channels == (6 if arch.learn_sigma else 3)  # learned σ kept
    sched = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert sched["variance_type"] == ("learned_range" if arch.learn_sigma else "fixed_large")


def test_ddim_training_checkpoint_uses_its_ema_weights(tmp_path, capsys):
    # ermongroup/ddim saves [model, optimizer, epoch, step, ema] from DataParallel ("module.").
    model, ema = _random(DDIMModel(TINY_DDIM), 0), _random(DDIMModel(TINY_DDIM), 1)
    prefixed = [{f"module.{k}": v for k, v in m.state_dict().items()} for m in (model, ema)]
    code, out = _convert(tmp_path, "ddim", TINY_DDIM, [prefixed[0], {}, 3, 1000, prefixed[1]])
    assert code == 0, capsys.readouterr().err
    _check_same_function(ema, out)
    assert "EMA" in capsys.readouterr().out


# ------------------------------------------------------------------ full-size key inventory


# OpenAI's ImageNet 256 unconditional model, with the flags of guided-diffusion's README: three
# attention levels of different widths, 2 res blocks, 256 channels.
IMAGENET_UNCOND = arch_from_config("guided", {
    "attention_resolutions": "32,16,8", "class_cond": False, "diffusion_steps": 1000,
    "image_size": 256, "learn_sigma": True, "noise_schedule": "linear", "num_channels": 256,
    "num_head_channels": 64, "num_res_blocks": 2, "resblock_updown": True, "use_fp16": True,
    "use_scale_shift_norm": True})


@pytest.mark.parametrize("fmt, preset", [(f, p) for f in PRESETS for p in PRESETS[f]]
                         + [("guided", "imagenet_uncond")])
def test_full_size_presets_consume_every_key_with_matching_shapes(fmt, preset):
    arch = IMAGENET_UNCOND if preset == "imagenet_uncond" else PRESETS[fmt][preset]
    with torch.device("meta"):  # the real 256-px layout, no memory
        source = (DDIMModel if fmt == "ddim" else GuidedModel)(arch).state_dict()
    config, out = convert_state_dict(fmt, arch, source)
    target = meta_unet(config).state_dict()
    assert {k: v.shape for k, v in out.items()} == {k: v.shape for k, v in target.items()}
    n_source, n_target = (sum(t.numel() for t in d.values()) for d in (source, out))
    assert n_source == n_target
    if fmt == "ddim":
        # the DDPM CelebA-HQ network, as google/ddpm-celebahq-256 has it: 113.7 M parameters
        assert round(n_source / 1e6, 1) == 113.7
    else:
        assert config["out_channels"] == 6 and config["attention_head_dim"] == 64


# ------------------------------------------------------------------ refusals


def _error(capsys, code):
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and err.startswith("hifiedit: error:"), err
    return err


class NotATensor:
    pass


def test_pickled_objects_are_refused_not_run(tmp_path, capsys):
    code, out = _convert(tmp_path, "ddim", TINY_DDIM, {"model": NotATensor()})
    assert "weights_only=True" in _error(capsys, code)
    assert not out.exists()


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.pop("mid.attn_1.q.weight"), "missing: mid.attn_1.q.weight"),
    (lambda s: s.update(logvar=torch.zeros(1000)), "left over: logvar"),
    (lambda s: s.update({"conv_in.weight": torch.zeros(32, 3, 5, 5)}), "wrong shape"),
])
def test_mismatched_checkpoints_name_what_is_wrong(tmp_path, capsys, edit, message):
    state = _random(DDIMModel(TINY_DDIM)).state_dict()
    edit(state)
    code, out = _convert(tmp_path, "ddim", TINY_DDIM, state)
    assert message in _error(capsys, code)
    assert not out.exists()


def test_a_guided_checkpoint_is_not_read_as_ddim(tmp_path, capsys):
    code, _ = _convert(tmp_path, "ddim", TINY_DDIM, _random(GuidedModel(TINY_GUIDED)).state_dict())
    assert "missing" in (err := _error(capsys, code)) and "left over" in err


def test_existing_output_needs_force(tmp_path, capsys):
    ref = _random(DDIMModel(TINY_DDIM))
    assert _convert(tmp_path, "ddim", TINY_DDIM, ref.state_dict())[0] == 0
    other = _random(DDIMModel(TINY_DDIM), seed=5)
    code, out = _convert(tmp_path, "ddim", TINY_DDIM, other.state_dict())
    assert "--force" in _error(capsys, code)
    _check_same_function(ref, out)  # untouched
    assert _convert(tmp_path, "ddim", TINY_DDIM, other.state_dict(), extra=["--force"])[0] == 0
    _check_same_function(other, out)


@pytest.mark.parametrize("change, message", [
    (dict(class_cond=True), "class_cond"),
    (dict(num_head_channels=-1, num_heads=2, num_heads_upsample=4), "num_heads_upsample"),
    (dict(num_head_channels=-1, num_heads=4, attention_resolutions=(16, 8)), "num_heads 4"),
    (dict(channel_mult=(2, 2, 2)), "channel_mult"),
])
def test_variants_unet2dmodel_cannot_express_are_refused_by_name(tmp_path, capsys, change, message):
    code, out = _convert(tmp_path, "guided", replace(TINY_GUIDED, **change), {"x": torch.zeros(1)})
    assert message in _error(capsys, code)
    assert not out.exists()


def test_arguments_are_checked(tmp_path, capsys):
    assert "unknown guided hyper-parameter" in _error(capsys, main([
        "convert", "--from", "guided", "--ckpt", "x.pt", "--config", '{"num_chanels": 3}',
        "--out", str(tmp_path / "o")]))
    assert "Unknown ddim preset" in _error(capsys, main([
        "convert", "--from", "ddim", "--ckpt", "x.pt", "--preset", "ffhq", "--out", str(tmp_path / "o")]))
    assert "No checkpoint file" in _error(capsys, main([
        "convert", "--from", "ddim", "--ckpt", str(tmp_path / "none.ckpt"), "--preset", "celeba_hq",
        "--out", str(tmp_path / "o")]))


# ------------------------------------------------------------------ bench of a converted folder


def test_bench_unet_pass_reports_time_and_memory(tmp_path, capsys):
    ref = _random(DDIMModel(TINY_DDIM))
    assert _convert(tmp_path, "ddim", TINY_DDIM, ref.state_dict())[0] == 0
    report_path = tmp_path / "bench.json"
    args = ["bench", "--model", str(tmp_path / "converted"), "--unet-pass", "--batches", "1,2",
            "--repeats", "1", "--device", "cpu", "--json", str(report_path)]
    assert main(args) == 0
    report = json.loads(report_path.read_text())
    assert report["parameters"] == sum(p.numel() for p in ref.parameters())
    for kind in ("forward", "forward_backward"):
        assert set(report["unet_pass"][kind]) == {"1", "2"}
        assert all(r["ms"] > 0 and r["added_memory_mb"] >= 0 for r in report["unet_pass"][kind].values())
    assert report["process_peak_mb"] > report["weights_mb"] > 0
    assert "--force" in _error(capsys, main(args))


def test_ddim_yaml_sections_read_as_the_preset():
    # DiffusionCLIP's configs/celeba.yml, as JSON: the celeba_hq preset.
    yml = {"data": {"dataset": "CelebA_HQ", "image_size": 256, "channels": 3},
           "model": {"type": "simple", "in_channels": 3, "out_ch": 3, "ch": 128,
                     "ch_mult": [1, 1, 2, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [16],
                     "dropout": 0.0, "var_type": "fixedsmall", "ema_rate": 0.999, "ema": True,
                     "resamp_with_conv": True},
           "diffusion": {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02,
                         "num_diffusion_timesteps": 1000}}
    assert arch_from_config("ddim", yml) == PRESETS["ddim"]["celeba_hq"]
