"""Running the frozen U-Net with per-sample rectified weights θ̂ = θ ⊙ (1 + Δ) (DESIGN §1).

One function merges weights (:func:`modulated_weights`); offsets stay data (STYLE lesson 5)
and two interchangeable ways run the U-Net with a different θ̂_b for every sample b:

* ``"grouped"`` (default): HyperStyle's folding. Inside :func:`per_sample_convs` each
  modulated ``nn.Conv2d`` runs as *one* convolution over the whole batch with the batch folded
  into groups — input (1, B·C_in, H, W), weight (B·C_out, C_in, k, k), ``groups=B``. Only the
  modulated layers' forward is swapped, for the duration of one call, and restored in
  ``finally``; the rest of diffusers' U-Net runs batched as usual.
* ``"vmap"``: ``torch.func.functional_call`` + ``torch.vmap`` over samples. Nothing is swapped,
  but every op runs under vmap and diffusers' attention (``scaled_dot_product_attention``) has
  no CPU batching rule, so it falls back to a per-sample loop.

Measured (bench/rectifier_modulation.py; default 2.5 M-param U-Net of
configs/base-openmoji32.json, 32×32, 2 CPU cores, torch 2.13, background jobs paused; best of
7, ms). One modulated forward: batch 16 — plain 155, grouped 220, vmap 243; batch 1 — plain 20,
grouped 21, vmap 26. Whole rectified ε step vs plain ε: batch 16 — 396 vs 165 (×2.40) grouped,
565 (×3.42) vmap; batch 1 — 45 vs 20 (×2.29) grouped, 55 (×2.82) vmap. Grouped is the default.

The rectified ε (:func:`rectified_eps`) needs a base pass (for P_t) and a modulated pass at
the same (x_t, t). The down half of a U-Net (time embedding, ``conv_in``, ``down_blocks``) is
never modulated, so its output is identical in both passes: :func:`unet_down` computes it
once and :func:`unet_up` runs the mid and up halves — once with θ, once with θ̂.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from hifiedit.diffusion.ddim import predict_x0
from hifiedit.errors import HifieditError

METHODS = ("grouped", "vmap")


# --------------------------------------------------------------------------- weights


def modulated_weights(unet: nn.Module, deltas: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """{name: θ ⊙ (1 + Δ)} for Δ (B, *θ.shape): the one place where weights and offsets merge.
    Computed as θ + θ·Δ in one fused op (exactly θ where Δ = 0).

    θ is read as the module attribute, not from ``named_parameters()``: for low-rank edit
    parameters ψ (:mod:`hifiedit.edit.params`) ``conv.weight`` is a parametrization θ + BA
    whose graph must reach the adapters, and is listed under another name."""
    params = {n: _current(unet, n) for n in deltas}
    unknown = [n for n, p in params.items() if p is None]
    if unknown:
        raise HifieditError(f"offsets for parameters the U-Net does not have: {unknown[:4]}")
    out = {}
    for name, delta in deltas.items():
        theta = params[name]
        if tuple(delta.shape[1:]) != tuple(theta.shape):
            raise HifieditError(f"offset {name} has shape {tuple(delta.shape)}; "
                                f"expected (B, *{tuple(theta.shape)}).")
        out[name] = torch.addcmul(theta, theta, delta)
    return out


def _submodule(unet: nn.Module, path: str) -> nn.Module | None:
    """A direct lookup: this runs at every sampling step, so no walk over all modules."""
    try:
        return unet.get_submodule(path)
    except AttributeError:
        return None


def _current(unet: nn.Module, name: str) -> torch.Tensor | None:
    path, attr = name.rsplit(".", 1)
    value = getattr(_submodule(unet, path), attr, None)
    return value if isinstance(value, torch.Tensor) else None


@contextlib.contextmanager
def per_sample_convs(unet: nn.Module, weights: Mapping[str, torch.Tensor]):
    """Within the block, each Conv2d whose ``weight`` is named in ``weights`` (B, C_out, C_in/g,
    k, k) convolves sample b of its input with weights[b]: one grouped convolution per layer."""
    targets = []
    for name, w in weights.items():
        path, attr = name.rsplit(".", 1)
        conv = _submodule(unet, path)
        if attr != "weight" or not isinstance(conv, nn.Conv2d):
            raise HifieditError(f"{name} is not the weight of a Conv2d; only convolutions are modulated.")
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise HifieditError(f"{path}: only zero padding with explicit sizes is supported.")
        targets.append((conv, w))
    try:
        for conv, w in targets:
            conv.forward = _grouped_forward(conv, w)  # instance attribute shadows the class method
        yield
    finally:
        for conv, _ in targets:
            conv.__dict__.pop("forward", None)


def _grouped_forward(conv: nn.Conv2d, w: torch.Tensor):
    def forward(x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        if w.shape[0] != b:
            raise HifieditError(f"per-sample weights for {w.shape[0]} samples applied to {b}.")
        if b == 1:  # nothing to fold: the module's own call, bit-identical to it when Δ = 0
            return F.conv2d(x, w[0], conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        bias = conv.bias.repeat(b) if conv.bias is not None else None
        y = F.conv2d(x.reshape(1, b * x.shape[1], *x.shape[2:]), w.reshape(-1, *w.shape[2:]), bias,
                     conv.stride, conv.padding, conv.dilation, b * conv.groups)
        return y.view(b, -1, *y.shape[2:])

    return forward


# --------------------------------------------------------------------------- U-Net halves


@dataclass
class DownPass:
    """What the unmodulated half of a UNet2DModel computed: time embedding, the lowest-level
    features entering ``mid_block``, and the skip connections the up blocks consume."""

    emb: torch.Tensor
    sample: torch.Tensor
    skips: tuple


def split_supported(unet: nn.Module) -> bool:
    """Whether :func:`unet_down`/:func:`unet_up` reproduce ``unet.forward``: plain
    UNet2DModel features only (no class embedding, skip-sample blocks, Fourier time
    embedding or input centring), as in every DDPM checkpoint this package targets."""
    c = unet.config
    blocks = [*unet.down_blocks, *unet.up_blocks]
    return (getattr(unet, "class_embedding", None) is None and unet.mid_block is not None
            and c.get("time_embedding_type", "positional") == "positional"
            and not c.get("center_input_sample", False)
            and not any(hasattr(b, "skip_conv") for b in blocks))


def unet_down(unet: nn.Module, x: torch.Tensor, t: torch.Tensor,
              checkpoint: bool = False) -> DownPass:
    """Steps 1–3 of diffusers' ``UNet2DModel.forward`` (time, ``conv_in``, down blocks).
    ``checkpoint``: keep only each down block's inputs for backward and recompute the rest."""
    t = t.reshape(-1).expand(x.shape[0]) if t.numel() == 1 else t
    emb = unet.time_embedding(unet.time_proj(t).to(dtype=unet.dtype))
    sample = unet.conv_in(x)
    skips = (sample,)
    for block in unet.down_blocks:
        if checkpoint:
            sample, res = _checkpointed(lambda s, e, b=block: b(hidden_states=s, temb=e), sample, emb)
        else:
            sample, res = block(hidden_states=sample, temb=emb)
        skips += res
    return DownPass(emb=emb, sample=sample, skips=skips)


def unet_up(unet: nn.Module, down: DownPass, weights: Mapping[str, torch.Tensor] | None = None,
            checkpoint: bool = False) -> torch.Tensor:
    """Steps 4–6 of diffusers' ``UNet2DModel.forward`` (mid, up blocks, output head).

    With ``checkpoint`` each block keeps only its inputs for backward and is recomputed there,
    with the per-sample weights ``weights`` (names in mid/up blocks) swapped in again for the
    recomputation. diffusers' own gradient checkpointing cannot do this: it recomputes a block
    in backward, after :func:`per_sample_convs` has restored the plain convolutions, and so
    differentiates θ where the forward ran θ̂ (tests/test_grad_checkpointing.py shows the difference)."""
    weights = dict(weights or {})
    if not checkpoint:
        with per_sample_convs(unet, weights):
            return _up(unet, down, lambda prefix, fn, *args: fn(*args))

    def run(prefix, fn, *args):
        mine = {n: w for n, w in weights.items() if n.startswith(prefix)}

        def call(*a):
            with per_sample_convs(unet, mine):
                return fn(*a)

        return _checkpointed(call, *args)

    outside = [n for n in weights if not n.startswith(MODULATED_BLOCKS)]
    if outside:
        raise HifieditError(f"checkpointed modulation covers mid/up block layers only, not {outside[:3]}.")
    return _up(unet, down, run)


MODULATED_BLOCKS = ("mid_block.", "up_blocks.")


def _up(unet: nn.Module, down: DownPass, run) -> torch.Tensor:
    sample = run("mid_block.", unet.mid_block, down.sample, down.emb)
    skips = down.skips
    for i, block in enumerate(unet.up_blocks):
        n = len(block.resnets)
        sample = run(f"up_blocks.{i}.", lambda s, e, *sk, b=block: b(s, sk, e),
                     sample, down.emb, *skips[-n:])
        skips = skips[:-n]
    return unet.conv_out(unet.conv_act(unet.conv_norm_out(sample)))


def _checkpointed(fn, *args):
    from torch.utils.checkpoint import checkpoint

    # Non-reentrant: gradients reach every tensor fn uses (its weights, the offsets) and the
    # autocast state of the forward is restored for the recomputation.
    return checkpoint(fn, *args, use_reentrant=False)


# --------------------------------------------------------------------------- modulated passes


def modulated_forward(unet: nn.Module, x: torch.Tensor, t: torch.Tensor,
                      deltas: Mapping[str, torch.Tensor], method: str = "grouped",
                      down: DownPass | None = None, checkpoint: bool = False) -> torch.Tensor:
    """The U-Net's raw output for x (B, C, H, W) at t (B,) with per-sample weights
    θ̂_b = θ ⊙ (1 + Δ_b) on the layers named in ``deltas`` (every other weight is θ, shared).

    Gradients flow to Δ (and to θ where it requires them: the edit parameters ψ of DESIGN §1
    are modulated the same way). ``down`` (grouped only) reuses a :func:`unet_down` result of
    the same (x, t) when every modulated layer lies in ``mid_block``/``up_blocks``.
    ``checkpoint`` (grouped only): gradient checkpointing per U-Net block (:func:`unet_up`),
    for training at sizes whose activations do not fit.
    """
    if method not in METHODS:
        raise HifieditError(f"unknown modulation method {method!r}; choose from {METHODS}.")
    t = t.reshape(-1).expand(x.shape[0]) if t.numel() == 1 else t
    weights = modulated_weights(unet, deltas)
    if any(w.shape[0] != x.shape[0] for w in weights.values()):
        raise HifieditError(f"offsets carry a batch of {next(iter(weights.values())).shape[0]} "
                            f"but x has {x.shape[0]} samples.")
    if checkpoint and (method != "grouped" or not split_supported(unet)):
        raise HifieditError("gradient checkpointing needs the grouped method and a plain "
                            "UNet2DModel (see split_supported).")
    if method == "vmap":
        from torch.func import functional_call, vmap

        def one(x1, t1, w1):
            return functional_call(unet, w1, (x1[None], t1[None]), {"return_dict": False})[0][0]

        return vmap(one)(x, t, weights) if weights else unet(x, t, return_dict=False)[0]
    if (down is not None or checkpoint) and not all(n.startswith(MODULATED_BLOCKS) for n in weights):
        raise HifieditError("a reused down pass and checkpointing need every modulated layer in "
                            "mid/up blocks.")
    if checkpoint:
        down = down if down is not None else unet_down(unet, x, t, checkpoint=True)
        return unet_up(unet, down, weights, checkpoint=True)
    with per_sample_convs(unet, weights):
        return unet_up(unet, down) if down is not None else unet(x, t, return_dict=False)[0]


def _as_eps(backbone, raw: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Raw U-Net output → ε through Backbone.eps, which owns the v/x0-prediction conversion."""
    return backbone.eps(x, t, unet=lambda *_: SimpleNamespace(sample=raw))


def rectified_eps(backbone, rectifier, x: torch.Tensor, t: torch.Tensor, x0_code: torch.Tensor,
                  unet: nn.Module | None = None, method: str = "grouped",
                  return_parts: bool = False, step: torch.Tensor | None = None,
                  checkpoint: bool = False):
    """ε_{θ̂}(x_t, t), θ̂ = θ' ⊙ (1 + R(x0, P_t(ε_θ(x_t, t)), t)) (DESIGN §1).

    P_t always comes from the frozen base θ (``backbone.unet``) and enters R as an input (no
    gradient flows back through the base pass); the modulated pass uses ``unet`` if given
    (θ' = ψ, the edited network) and θ otherwise. ``x0_code`` is ``rectifier.encode_x0(x0)``.
    ``step`` is the size t − t_next of the move (for a step-conditioned rectifier).
    With ``return_parts`` returns (ε, P_t, offsets). ``checkpoint``: gradient checkpointing of
    the modulated pass (:func:`modulated_forward`). The networks run at the backbone's
    ``compute_dtype``; ε and P_t come back in x's dtype.
    """
    with backbone.autocast():
        return _rectified_eps(backbone, rectifier, x, t, x0_code, unet, method, return_parts,
                              step, checkpoint)


def _rectified_eps(backbone, rectifier, x, t, x0_code, unet, method, return_parts, step,
                   checkpoint):
    base = backbone.unet
    t = t.to(x.device)
    t = t.reshape(-1).expand(x.shape[0]) if t.numel() == 1 else t
    step = step.to(x.device) if step is not None else None
    target = base if unet is None else unet
    reuse = target is base and method == "grouped" and split_supported(base)
    # Shared by both passes; keeps x's graph.
    down = unet_down(base, x, t, checkpoint and torch.is_grad_enabled()) if reuse else None
    with torch.no_grad():
        raw = unet_up(base, down) if reuse else base(x, t, return_dict=False)[0]
    alpha = backbone.alphas_cumprod.to(x.device)[t.long()]
    p_t = predict_x0(x, _as_eps(backbone, raw, x, t), alpha)
    deltas = rectifier(None, p_t, t, x0_code=x0_code, step=step)
    raw = modulated_forward(target, x, t, deltas, method, down,
                            checkpoint=checkpoint and torch.is_grad_enabled())
    eps = _as_eps(backbone, raw, x, t)
    return (eps, p_t, deltas) if return_parts else eps


def move_sizes(timesteps) -> Callable[[torch.Tensor], torch.Tensor]:
    """t → t − t_next on the generation grid ``timesteps`` (ascending levels): the size of the
    move a step-conditioned rectifier serves at level t. Refuses a t that is not on the grid."""
    levels = [int(v) for v in timesteps]
    size = {levels[i]: levels[i] - levels[i - 1] for i in range(1, len(levels))}

    def lookup(t: torch.Tensor) -> torch.Tensor:
        try:
            return torch.tensor([size[int(v)] for v in t.reshape(-1)], device=t.device)
        except KeyError as e:
            raise HifieditError(f"rectified ε called at t = {e.args[0]}, which is not a "
                                f"generation level of its grid {levels}.") from None

    return lookup


def rectified_eps_fn(backbone, rectifier, x0: torch.Tensor, unet: nn.Module | None = None,
                     method: str = "grouped",
                     timesteps=None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """An ε-callable for :func:`~hifiedit.diffusion.ddim.generate` that rectifies every step
    towards the original images ``x0`` (B, C, H, W). The x0 half of the rectifier's encoder
    runs here, once per image, instead of at every step. ``timesteps``: the generation grid
    (ascending levels, as given to ``generate``), which tells a step-conditioned rectifier
    the size of each move."""
    x0_code = rectifier.encode_x0(x0)
    step_of = move_sizes(timesteps) if timesteps is not None else None

    def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != x0.shape[0]:
            raise HifieditError(f"rectified ε for {x0.shape[0]} images called with {x.shape[0]}.")
        step = step_of(t) if step_of is not None else None
        return rectified_eps(backbone, rectifier, x, t, x0_code, unet=unet, method=method,
                             step=step)

    return eps_fn
