"""Converting the community's pretrained checkpoints into diffusers folders (`hifiedit convert`).

Two source formats, read from their public code (the layouts below are those of the originals'
`state_dict()`; no code of theirs is used):

  ddim    the DDIM repository's `Model` (ermongroup/ddim, models/diffusion.py): Ho et al.'s DDPM
          U-Net in PyTorch. SDEdit and DiffusionCLIP use its CelebA-HQ, LSUN bedroom and LSUN
          church checkpoints at 256 px.
  guided  OpenAI's guided-diffusion / improved-diffusion `UNetModel` (guided_diffusion/unet.py):
          scale-shift norm, residual up/down-sampling blocks, multi-head attention, learned σ
          (6 output channels). DiffusionCLIP uses it for AFHQ-dog and FFHQ at 256 px.

Both become a diffusers `UNet2DModel` pipeline folder (`model_index.json`, `unet/`,
`scheduler/`) that `load_backbone` reads. The map from source to target keys is explicit
(`key_map`): every source key is consumed exactly once, every target key produced exactly once,
and every shape is checked against the target built on the meta device (STYLE lesson 7). A
variant that `UNet2DModel` cannot express is refused by name rather than approximated.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from hifiedit.errors import HifieditError

FORMATS = ("ddim", "guided")


# ------------------------------------------------------------------ architectures


@dataclass(frozen=True)
class DDIMArch:
    """The DDIM repository's `Model` hyper-parameters, named as in its yaml configs (the `model`,
    `data` and `diffusion` sections flattened)."""

    image_size: int = 256
    in_channels: int = 3
    out_ch: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.0
    resamp_with_conv: bool = True
    var_type: str = "fixedsmall"
    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    num_diffusion_timesteps: int = 1000


@dataclass(frozen=True)
class GuidedArch:
    """guided-diffusion's `create_model` arguments, named as its script flags.
    `attention_resolutions` are resolutions in pixels ("16" at 256 px = attention where the
    feature map is 16×16), as the flag is given; an empty `channel_mult` means the script's
    default for the image size."""

    image_size: int = 256
    in_channels: int = 3
    num_channels: int = 128
    num_res_blocks: int = 1
    channel_mult: tuple[float, ...] = ()
    learn_sigma: bool = True
    class_cond: bool = False
    attention_resolutions: tuple[int, ...] = (16,)
    num_heads: int = 4
    num_head_channels: int = 64
    num_heads_upsample: int = -1
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    use_new_attention_order: bool = False
    conv_resample: bool = True
    dropout: float = 0.0
    predict_xstart: bool = False
    diffusion_steps: int = 1000
    noise_schedule: str = "linear"


# Presets from the originals' configs. ddim: SDEdit's / DiffusionCLIP's configs/celeba.yml,
# bedroom.yml and church.yml (ch 128, ch_mult 1,1,2,2,4,4, 2 res blocks, attention at 16×16,
# linear β 1e-4…0.02, T 1000); the three share one architecture. guided: DiffusionCLIP's
# models/improved_ddpm/script_util.py AFHQ_DICT, used for both AFHQ-dog and FFHQ (the ILVR / P2
# checkpoints): 128 channels, 1 res block, attention at 16×16 with 64 channels per head,
# scale-shift norm, residual resampling, learned σ, linear schedule, T 1000.
PRESETS: dict[str, dict[str, DDIMArch | GuidedArch]] = {
    "ddim": {"celeba_hq": DDIMArch(), "lsun_bedroom": DDIMArch(), "lsun_church": DDIMArch()},
    "guided": {"ffhq": GuidedArch(), "afhq_dog": GuidedArch()},
}

# Keys of the originals' configs that do not change the network or its schedule.
_IGNORED = {
    "ddim": {"type", "ema", "ema_rate", "dataset", "category", "channels", "logit_transform",
             "uniform_dequantization", "gaussian_dequantization", "random_flip", "rescaled",
             "num_workers"},
    "guided": {"use_fp16", "use_checkpoint", "timestep_respacing", "use_kl",
               "rescale_learned_sigmas", "rescale_timesteps"},
}


def _as_tuple(value, cast):
    if isinstance(value, str):  # guided-diffusion flags: "32,16,8"; "" = the default
        return tuple(cast(v) for v in value.split(",") if v.strip())
    if isinstance(value, (list, tuple)):
        return tuple(cast(v) for v in value)
    return (cast(value),)


def arch_from_config(fmt: str, config: dict) -> DDIMArch | GuidedArch:
    """An architecture from a JSON config named like the original's: the DDIM yaml (sections
    `model`/`data`/`diffusion`, nested or flattened) or guided-diffusion's script flags."""
    cls = DDIMArch if fmt == "ddim" else GuidedArch
    if not isinstance(config, dict):
        raise HifieditError("--config must be a JSON object of the original's hyper-parameters.")
    flat: dict = {}
    for key, value in config.items():
        if key in ("model", "data", "diffusion") and isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    if fmt == "ddim" and flat.get("type", "simple") != "simple":
        raise HifieditError(f"DDIM model type {flat['type']!r} is not supported (only 'simple': "
                            "the 'bayesian' variant's per-timestep logvar has no UNet2DModel place).")
    if fmt == "ddim" and "channels" in flat and "in_channels" not in flat:
        flat["in_channels"] = flat["channels"]
    if fmt == "guided" and flat.get("rescale_timesteps") and int(flat.get("diffusion_steps", 1000)) != 1000:
        raise HifieditError("guided rescale_timesteps with diffusion_steps ≠ 1000 feeds the network "
                            "rescaled timesteps, which UNet2DModel's timestep embedding does not do.")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(k for k in flat if k not in known and k not in _IGNORED[fmt])
    if unknown:
        raise HifieditError(f"--config: unknown {fmt} hyper-parameter(s) {unknown}; known: "
                            f"{sorted(known)}.")
    values = {}
    for key, value in flat.items():
        if key not in known:
            continue
        default = known[key].default
        try:
            if isinstance(default, tuple):
                cast = int if key != "channel_mult" else float
                values[key] = _as_tuple(value, cast)
            elif isinstance(default, bool):
                if not isinstance(value, bool):
                    raise ValueError("expected true or false")
                values[key] = value
            else:
                values[key] = type(default)(value)
        except (TypeError, ValueError) as e:
            raise HifieditError(f"--config: {key}={value!r} is not valid ({e}).") from e
    return cls(**values)


def _guided_channel_mult(a: GuidedArch) -> tuple[float, ...]:
    if a.channel_mult:
        return a.channel_mult
    # guided-diffusion's script_util defaults, by image size.
    defaults = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4),
                64: (1, 2, 3, 4)}
    if a.image_size not in defaults:
        raise HifieditError(f"guided image_size {a.image_size} has no default channel_mult; "
                            "give channel_mult explicitly.")
    return defaults[a.image_size]


# ------------------------------------------------------------------ target configs


def unet_config(fmt: str, a: DDIMArch | GuidedArch) -> dict:
    """The `UNet2DModel` arguments that compute the same function as the source network."""
    if fmt == "ddim":
        return _ddim_unet_config(a)
    return _guided_unet_config(a)


def _ddim_unet_config(a: DDIMArch) -> dict:
    if not a.resamp_with_conv:
        raise HifieditError("DDIM resamp_with_conv=false (average-pool / conv-free resampling) "
                            "is not expressible as a diffusers UNet2DModel.")
    if a.ch_mult[0] != 1:
        raise HifieditError(f"DDIM ch_mult starting with {a.ch_mult[0]} (≠ 1) is not expressible: "
                            "UNet2DModel's input conv has the first level's width.")
    chans = [a.ch * m for m in a.ch_mult]
    attn = [a.image_size // 2**i in a.attn_resolutions for i in range(len(chans))]
    return dict(
        sample_size=a.image_size, in_channels=a.in_channels, out_channels=a.out_ch,
        # Ho et al.'s embedding: sin then cos, frequencies 10000^(-i/(half-1)).
        time_embedding_type="positional", flip_sin_to_cos=False, freq_shift=1,
        down_block_types=["AttnDownBlock2D" if x else "DownBlock2D" for x in attn],
        up_block_types=["AttnUpBlock2D" if x else "UpBlock2D" for x in reversed(attn)],
        block_out_channels=chans, layers_per_block=a.num_res_blocks,
        # The original pads (0, 1, 0, 1) then convolves with stride 2 and no padding.
        downsample_padding=0, downsample_type="conv", upsample_type="conv",
        dropout=a.dropout, act_fn="silu", attention_head_dim=None,  # one head per attention
        norm_num_groups=32, norm_eps=1e-6, resnet_time_scale_shift="default",
        mid_block_scale_factor=1, add_attention=True,
    )


def _guided_heads(a: GuidedArch, attn_channels: list[int], up_attn_channels: list[int]) -> int | None:
    """UNet2DModel's one `attention_head_dim` for all attention layers, or a refusal."""
    if a.num_head_channels != -1:
        bad = sorted({c for c in attn_channels if c % a.num_head_channels})
        if bad:
            raise HifieditError(f"guided num_head_channels {a.num_head_channels} does not divide "
                                f"attention widths {bad}.")
        return a.num_head_channels
    up_heads = a.num_heads if a.num_heads_upsample == -1 else a.num_heads_upsample
    if up_attn_channels and up_heads != a.num_heads:
        raise HifieditError(f"guided num_heads_upsample {up_heads} ≠ num_heads {a.num_heads} is not "
                            "expressible: UNet2DModel uses one head layout for all attention.")
    if a.num_heads == 1:
        return None  # one head of the full width, whatever the level
    dims = {c // a.num_heads for c in attn_channels}
    if len(dims) != 1 or any(c % a.num_heads for c in attn_channels):
        raise HifieditError(f"guided num_heads {a.num_heads} over attention widths "
                            f"{sorted(set(attn_channels))} gives different head widths per level, "
                            "which UNet2DModel (one attention_head_dim) cannot express; a "
                            "num_head_channels model can be converted.")
    return dims.pop()


def _guided_unet_config(a: GuidedArch) -> dict:
    if a.class_cond:
        raise HifieditError("guided class_cond=true (a class-conditional model, label_emb) is not "
                            "supported: hifiedit edits unconditional models.")
    if not a.conv_resample and not a.resblock_updown:
        raise HifieditError("guided conv_resample=false (conv-free resampling) is not expressible "
                            "as a diffusers UNet2DModel.")
    mult = _guided_channel_mult(a)
    if mult[0] != 1:
        raise HifieditError(f"guided channel_mult starting with {mult[0]} (≠ 1) is not expressible: "
                            "UNet2DModel's timestep embedding has the first level's width.")
    chans = [int(m * a.num_channels) for m in mult]
    attention_ds = {a.image_size // r for r in a.attention_resolutions}
    attn = [2**i in attention_ds for i in range(len(chans))]
    attn_channels = [c for c, x in zip(chans, attn) if x] + [chans[-1]]  # + the middle block
    head_dim = _guided_heads(a, attn_channels, [c for c, x in zip(chans, attn) if x])
    plain_down, plain_up = ("ResnetDownsampleBlock2D", "ResnetUpsampleBlock2D") if a.resblock_updown \
        else ("DownBlock2D", "UpBlock2D")
    return dict(
        sample_size=a.image_size, in_channels=a.in_channels,
        out_channels=2 * a.in_channels if a.learn_sigma else a.in_channels,
        # guided-diffusion's embedding: cos then sin, frequencies 10000^(-i/half).
        time_embedding_type="positional", flip_sin_to_cos=True, freq_shift=0,
        down_block_types=["AttnDownBlock2D" if x else plain_down for x in attn],
        up_block_types=["AttnUpBlock2D" if x else plain_up for x in reversed(attn)],
        block_out_channels=chans, layers_per_block=a.num_res_blocks,
        downsample_padding=1,
        downsample_type="resnet" if a.resblock_updown else "conv",
        upsample_type="resnet" if a.resblock_updown else "conv",
        dropout=a.dropout, act_fn="silu", attention_head_dim=head_dim,
        norm_num_groups=32, norm_eps=1e-5,
        # Explicit: with scale-shift resnets diffusers otherwise drops the middle attention's norm.
        attn_norm_num_groups=32,
        resnet_time_scale_shift="scale_shift" if a.use_scale_shift_norm else "default",
        mid_block_scale_factor=1, add_attention=True,
    )


def scheduler_config(fmt: str, a: DDIMArch | GuidedArch) -> dict:
    """`DDPMScheduler` arguments for the schedule the source was trained with."""
    if fmt == "ddim":
        if a.beta_schedule != "linear":
            raise HifieditError(f"DDIM beta_schedule {a.beta_schedule!r} is not supported (linear only).")
        return dict(num_train_timesteps=a.num_diffusion_timesteps, beta_start=a.beta_start,
                    beta_end=a.beta_end, beta_schedule="linear", clip_sample=False,
                    prediction_type="epsilon",
                    variance_type="fixed_large" if a.var_type == "fixedlarge" else "fixed_small")
    T = a.diffusion_steps
    if a.noise_schedule == "linear":
        scale = 1000 / T  # guided-diffusion scales the DDPM range so that T ≠ 1000 ends alike
        betas = dict(beta_start=scale * 1e-4, beta_end=scale * 0.02, beta_schedule="linear")
    elif a.noise_schedule == "cosine":
        betas = dict(beta_schedule="squaredcos_cap_v2")  # Nichol & Dhariwal's, β capped at 0.999
    else:
        raise HifieditError(f"guided noise_schedule {a.noise_schedule!r} is not supported "
                            "(linear or cosine).")
    return dict(num_train_timesteps=T, clip_sample=False, **betas,
                prediction_type="sample" if a.predict_xstart else "epsilon",
                variance_type="learned_range" if a.learn_sigma else "fixed_large")


# ------------------------------------------------------------------ the key maps


@dataclass(frozen=True)
class _Part:
    """One target tensor made from a source tensor."""

    dst: str
    kind: str = "copy"  # "copy" | "squeeze" (1×1 conv → linear) | "qkv" (one third of a fused qkv)
    index: int = 0  # q, k, v = 0, 1, 2
    heads: int = 1  # the legacy order interleaves q, k, v per head
    legacy: bool = False

    def source_shape(self, dst_shape: tuple[int, ...], spatial: int) -> tuple[int, ...]:
        if self.kind == "copy":
            return dst_shape
        tail = (1,) * spatial if len(dst_shape) == 2 else ()
        if self.kind == "squeeze":
            return dst_shape + tail
        return (3 * dst_shape[0],) + dst_shape[1:] + tail

    def take(self, t: torch.Tensor, dst_shape: tuple[int, ...]) -> torch.Tensor:
        if self.kind == "qkv":
            c = dst_shape[0]
            rest = t.shape[1:]
            if self.legacy:  # QKVAttentionLegacy: rows are [head][q|k|v][channel]
                t = t.reshape(self.heads, 3, c // self.heads, *rest)[:, self.index]
            else:  # QKVAttention: rows are [q|k|v][head][channel]
                t = t.reshape(3, c, *rest)[self.index]
            t = t.clone()  # its own storage: safetensors refuses tensors that share memory
        return t.reshape(dst_shape)


KeyMap = list[tuple[str, list[_Part]]]


class _MapBuilder:
    def __init__(self, spatial: int):
        self.rules: KeyMap = []
        self.spatial = spatial  # 2: attention projections are Conv2d (ddim); 1: Conv1d (guided)

    def wb(self, src: str, dst: str, kind: str = "copy") -> None:
        for s in ("weight", "bias"):
            self.rules.append((f"{src}.{s}", [_Part(f"{dst}.{s}", kind)]))

    def qkv(self, src: str, dst: str, heads: int, legacy: bool) -> None:
        for s in ("weight", "bias"):
            self.rules.append((f"{src}.{s}", [
                _Part(f"{dst}.{n}.{s}", "qkv", i, heads, legacy)
                for i, n in enumerate(("to_q", "to_k", "to_v"))]))


def key_map(fmt: str, a: DDIMArch | GuidedArch, config: dict | None = None) -> KeyMap:
    """[(source key, [target parts])] for an architecture; `config` is its `unet_config`."""
    config = config or unet_config(fmt, a)
    return _ddim_map(a, config) if fmt == "ddim" else _guided_map(a, config)


def _ddim_map(a: DDIMArch, cfg: dict) -> KeyMap:
    m = _MapBuilder(spatial=2)
    chans, n, L = cfg["block_out_channels"], a.num_res_blocks, len(a.ch_mult)
    has_attn = [t.startswith("Attn") for t in cfg["down_block_types"]]

    def resnet(src, dst, cin, cout):
        for s, d in (("norm1", "norm1"), ("conv1", "conv1"), ("temb_proj", "time_emb_proj"),
                     ("norm2", "norm2"), ("conv2", "conv2")):
            m.wb(f"{src}.{s}", f"{dst}.{d}")
        if cin != cout:  # the original's `nin_shortcut` (a 1×1 conv; conv_shortcut is never used)
            m.wb(f"{src}.nin_shortcut", f"{dst}.conv_shortcut")

    def attn(src, dst):
        m.wb(f"{src}.norm", f"{dst}.group_norm")
        for s, d in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0")):
            m.wb(f"{src}.{s}", f"{dst}.{d}", "squeeze")

    m.wb("temb.dense.0", "time_embedding.linear_1")
    m.wb("temb.dense.1", "time_embedding.linear_2")
    m.wb("conv_in", "conv_in")
    skips, cin = [a.ch], a.ch
    for i in range(L):
        for j in range(n):
            resnet(f"down.{i}.block.{j}", f"down_blocks.{i}.resnets.{j}", cin, chans[i])
            cin = chans[i]
            if has_attn[i]:
                attn(f"down.{i}.attn.{j}", f"down_blocks.{i}.attentions.{j}")
            skips.append(cin)
        if i != L - 1:
            m.wb(f"down.{i}.downsample.conv", f"down_blocks.{i}.downsamplers.0.conv")
            skips.append(cin)
    resnet("mid.block_1", "mid_block.resnets.0", cin, cin)
    attn("mid.attn_1", "mid_block.attentions.0")
    resnet("mid.block_2", "mid_block.resnets.1", cin, cin)
    for i in reversed(range(L)):
        u = L - 1 - i  # the original stores up levels by resolution, diffusers in call order
        for j in range(n + 1):
            resnet(f"up.{i}.block.{j}", f"up_blocks.{u}.resnets.{j}", cin + skips.pop(), chans[i])
            cin = chans[i]
            if has_attn[i]:
                attn(f"up.{i}.attn.{j}", f"up_blocks.{u}.attentions.{j}")
        if i != 0:
            m.wb(f"up.{i}.upsample.conv", f"up_blocks.{u}.upsamplers.0.conv")
    m.wb("norm_out", "conv_norm_out")
    m.wb("conv_out", "conv_out")
    return m.rules


def _guided_map(a: GuidedArch, cfg: dict) -> KeyMap:
    m = _MapBuilder(spatial=1)
    chans, n, L = cfg["block_out_channels"], a.num_res_blocks, len(cfg["block_out_channels"])
    has_attn = [t.startswith("Attn") for t in cfg["down_block_types"]]
    head_dim = cfg["attention_head_dim"]

    def resnet(src, dst, cin, cout):
        for s, d in (("in_layers.0", "norm1"), ("in_layers.2", "conv1"),
                     ("emb_layers.1", "time_emb_proj"), ("out_layers.0", "norm2"),
                     ("out_layers.3", "conv2")):
            m.wb(f"{src}.{s}", f"{dst}.{d}")
        if cin != cout:  # a 1×1 skip conv (UNetModel never sets use_conv on its blocks)
            m.wb(f"{src}.skip_connection", f"{dst}.conv_shortcut")

    def attn(src, dst, c):
        m.wb(f"{src}.norm", f"{dst}.group_norm")
        m.qkv(f"{src}.qkv", dst, heads=1 if head_dim is None else c // head_dim,
              legacy=not a.use_new_attention_order)
        m.wb(f"{src}.proj_out", f"{dst}.to_out.0", "squeeze")

    m.wb("time_embed.0", "time_embedding.linear_1")
    m.wb("time_embed.2", "time_embedding.linear_2")
    m.wb("input_blocks.0.0", "conv_in")
    k, cin, skips = 1, chans[0], [chans[0]]
    for i in range(L):
        for j in range(n):
            resnet(f"input_blocks.{k}.0", f"down_blocks.{i}.resnets.{j}", cin, chans[i])
            cin = chans[i]
            if has_attn[i]:
                attn(f"input_blocks.{k}.1", f"down_blocks.{i}.attentions.{j}", cin)
            skips.append(cin)
            k += 1
        if i != L - 1:
            if a.resblock_updown:
                resnet(f"input_blocks.{k}.0", f"down_blocks.{i}.downsamplers.0", cin, cin)
            else:
                m.wb(f"input_blocks.{k}.0.op", f"down_blocks.{i}.downsamplers.0.conv")
            skips.append(cin)
            k += 1
    resnet("middle_block.0", "mid_block.resnets.0", cin, cin)
    attn("middle_block.1", "mid_block.attentions.0", cin)
    resnet("middle_block.2", "mid_block.resnets.1", cin, cin)
    k = 0
    for i in reversed(range(L)):
        u = L - 1 - i
        for j in range(n + 1):
            resnet(f"output_blocks.{k}.0", f"up_blocks.{u}.resnets.{j}", cin + skips.pop(), chans[i])
            cin, sub = chans[i], 1
            if has_attn[i]:
                attn(f"output_blocks.{k}.1", f"up_blocks.{u}.attentions.{j}", cin)
                sub = 2
            if i and j == n:
                if a.resblock_updown:
                    resnet(f"output_blocks.{k}.{sub}", f"up_blocks.{u}.upsamplers.0", cin, cin)
                else:
                    m.wb(f"output_blocks.{k}.{sub}.conv", f"up_blocks.{u}.upsamplers.0.conv")
            k += 1
    m.wb("out.0", "conv_norm_out")
    m.wb("out.2", "conv_out")
    return m.rules


# ------------------------------------------------------------------ conversion


def _listing(keys, limit: int = 6) -> str:
    keys = sorted(keys)
    more = f" … (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def meta_unet(config: dict):
    """The target `UNet2DModel` on the meta device: shapes without memory."""
    from diffusers import UNet2DModel

    with torch.device("meta"):
        return UNet2DModel(**config)


def convert_state_dict(fmt: str, a: DDIMArch | GuidedArch, source: dict[str, torch.Tensor],
                       what: str = "checkpoint") -> tuple[dict, dict[str, torch.Tensor]]:
    """(UNet2DModel config, its state dict) from a source state dict. Works on meta tensors too
    (the key/shape inventory of full-size models needs no memory)."""
    config = unet_config(fmt, a)
    rules = key_map(fmt, a, config)
    target = {k: tuple(v.shape) for k, v in meta_unet(config).state_dict().items()}
    produced = [p.dst for _, parts in rules for p in parts]
    if len(set(produced)) != len(produced) or set(produced) != set(target) \
            or len({s for s, _ in rules}) != len(rules):
        raise HifieditError(  # a map that does not fit its own target is a converter bug
            f"internal: the {fmt} key map does not cover UNet2DModel exactly (unmapped "
            f"{_listing(set(target) - set(produced))}; unknown {_listing(set(produced) - set(target))}).")
    mapped = {s for s, _ in rules}
    missing, leftover = mapped - set(source), set(source) - mapped
    if missing or leftover:
        parts = []
        if missing:
            parts.append(f"{len(missing)} key(s) the architecture needs are missing: {_listing(missing)}")
        if leftover:
            parts.append(f"{len(leftover)} key(s) would be left over: {_listing(leftover)}")
        raise HifieditError(f"{what} is not a {fmt} model of this architecture ({'; '.join(parts)}); "
                            "check --from and --preset/--config.")
    spatial = 2 if fmt == "ddim" else 1
    wrong = []
    for src, parts in rules:
        want = parts[0].source_shape(target[parts[0].dst], spatial)
        if tuple(source[src].shape) != want:
            wrong.append(f"{src} {tuple(source[src].shape)} (expected {want})")
    if wrong:
        raise HifieditError(f"{what} has {len(wrong)} tensor(s) of the wrong shape for this "
                            f"architecture: {_listing(wrong, 4)}; check --preset/--config.")
    out: dict[str, torch.Tensor] = {}
    for src, parts in rules:
        t = source[src]
        if not t.is_floating_point():
            raise HifieditError(f"{what}: {src} is not a floating-point tensor ({t.dtype}).")
        t = t.to(torch.float32)
        for p in parts:
            out[p.dst] = p.take(t, target[p.dst]).contiguous()
    return config, out


# ------------------------------------------------------------------ reading checkpoints


def _unwrap(obj, path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The tensor dict inside a loaded checkpoint, and which part was taken."""
    taken = "state dict"
    if isinstance(obj, (list, tuple)):
        # The DDIM repository's training checkpoints: [model, optimizer, epoch, step(, ema)];
        # its sampler uses the EMA weights when there are any, so do we.
        if len(obj) == 5 and isinstance(obj[4], dict):
            obj, taken = obj[4], "EMA weights (element 5 of a DDIM training checkpoint)"
        elif obj and isinstance(obj[0], dict):
            obj, taken = obj[0], "model weights (element 1 of a DDIM training checkpoint)"
    if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("ema", "state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj, taken = obj[key], f"'{key}' entry"
                break
    if not isinstance(obj, dict) or not obj or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise HifieditError(f"{path} does not hold a state dict (a mapping of names to tensors).")
    names = list(obj)
    if all(k.startswith("module.") for k in names):  # saved from torch.nn.DataParallel
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj, taken


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """A state dict from `.safetensors`, or `.ckpt/.pt/.pth/.bin` read with
    `torch.load(weights_only=True)`: a checkpoint that needs arbitrary pickled objects is refused,
    never executed."""
    path = Path(path)
    if not path.is_file():
        raise HifieditError(f"No checkpoint file {path}.")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return _unwrap(load_file(str(path)), path)
        except (SafetensorError, OSError) as e:
            raise HifieditError(f"{path} is not a readable safetensors file: {e}.") from e
    if suffix not in (".ckpt", ".pt", ".pth", ".bin"):
        raise HifieditError(f"{path}: unknown checkpoint type {suffix!r} "
                            "(.ckpt, .pt, .pth, .bin or .safetensors).")
    import pickle

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HifieditError(
            f"{path} holds pickled Python objects that torch.load(weights_only=True) refuses to "
            f"run ({first[:160]}); re-save only its state dict, or as safetensors, where it was "
            "made.") from e
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise HifieditError(f"{path} is not a readable PyTorch checkpoint: "
                            f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}.") from e
    return _unwrap(obj, path)


# ------------------------------------------------------------------ the command


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def resolve_arch(fmt: str, preset: str | None, config: str | dict | None) -> tuple[DDIMArch | GuidedArch, str]:
    """(architecture, how it was named) from --preset or --config (a JSON file or inline JSON)."""
    if fmt not in FORMATS:
        raise HifieditError(f"Unknown source format {fmt!r}; use {' or '.join(FORMATS)}.")
    if (preset is None) == (config is None):
        raise HifieditError(f"Give exactly one of --preset ({', '.join(PRESETS[fmt])}) or --config JSON.")
    if preset is not None:
        if preset not in PRESETS[fmt]:
            raise HifieditError(f"Unknown {fmt} preset {preset!r}; known: {', '.join(PRESETS[fmt])}.")
        return PRESETS[fmt][preset], f"preset {preset}"
    if isinstance(config, str):
        text = config
        if not config.lstrip().startswith("{"):
            p = Path(config)
            if not p.is_file():
                raise HifieditError(f"--config {config!r} is neither a JSON object nor a file.")
            text = p.read_text()
        try:
            config = json.loads(text)
        except json.JSONDecodeError as e:
            raise HifieditError(f"--config is not valid JSON: {e}.") from e
    return arch_from_config(fmt, config), "config"


def convert_checkpoint(fmt: str, ckpt: str | Path, out: str | Path, preset: str | None = None,
                       config: str | dict | None = None, force: bool = False) -> dict:
    """`hifiedit convert`: checkpoint → diffusers pipeline folder, written to a temporary sibling
    and renamed into place. Returns a summary (also written as `conversion.json`)."""
    import diffusers
    from diffusers import DDPMScheduler
    from safetensors.torch import save_file

    from hifiedit import __version__
    from hifiedit.runtime import atomic_folder

    out, ckpt = Path(out), Path(ckpt)
    arch, named = resolve_arch(fmt, preset, config)
    if out.exists() and not force:
        raise HifieditError(f"{out} exists; pass --force to replace it.")
    unet_cfg = unet_config(fmt, arch)  # refuse unsupported variants before reading any weights
    sched_cfg = scheduler_config(fmt, arch)
    state, taken = read_checkpoint(ckpt)
    config_out, tensors = convert_state_dict(fmt, arch, state, what=str(ckpt))
    summary = {
        "source": ckpt.name, "source_sha256": _sha256(ckpt), "format": fmt, "architecture": named,
        "hyperparameters": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(arch).items()},
        "taken": taken, "source_tensors": len(state), "unet_tensors": len(tensors),
        "parameters": sum(t.numel() for t in tensors.values()),
        "learned_variance": config_out["out_channels"] == 2 * config_out["in_channels"],
        "hifiedit_version": __version__,
    }
    with atomic_folder(out, "converted model") as tmp:
        unet = meta_unet(config_out)
        (tmp / "unet").mkdir()
        unet.save_config(tmp / "unet")
        save_file(tensors, str(tmp / "unet" / "diffusion_pytorch_model.safetensors"))
        DDPMScheduler(**sched_cfg).save_config(tmp / "scheduler")
        (tmp / "model_index.json").write_text(json.dumps({
            "_class_name": "DDPMPipeline", "_diffusers_version": diffusers.__version__,
            "scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DModel"]},
            indent=2) + "\n")
        (tmp / "conversion.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary
