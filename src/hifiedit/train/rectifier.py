"""Reconstruction training of the rectifier R_φ (DESIGN §1, "Reconstruction training of R").

The base U-Net θ stays frozen. Each training image is inverted once per step-count grid
(cached by content hash, :mod:`hifiedit.train.trajectories`). Each iteration draws a step
count S from a small set of grids (so one rectifier serves 6…200 steps while the caches stay
affordable on CPU), B images, a roll-out length k ~ U{0…rollout_max} and, per image, a level
of its S-step grid; then k rectified DDIM moves without gradient (the states an imperfect
chain drifts to: scheduled sampling) and ``grad_chain_steps`` rectified moves with gradient,
each scored on its clean estimate P̂ = P_t(ε_θ̂) against a target P* (``target``):

* ``"trajectory"`` (default): P* is the estimate whose DDIM move lands exactly on the next
  state of the image's *inversion* trajectory (for the last move, onto x0 itself: P* = x0,
  the paper's ‖P_t − x0‖²). The chain then retraces the inversion and ends at x0; the
  correction this asks for shrinks with the step size (plain DDIM is near-exact at S = 100),
  which the rectifier sees (``RectifierConfig.step_embedding``), so it can leave large-S
  chains alone. Start states: inversion states, computed by k + grad_chain_steps inversion
  moves (θ, no gradient) from a cached state or x0.
* ``"x0"``: P* = x0 at every move, the paper's loss taken literally, from start states on the
  *ideal* path x*_τ = √ᾱ_τ x0 + √(1−ᾱ_τ) n* (n* the noise implied by the inverted x_t0),
  which a chain whose every P_t is x0 follows exactly.

Measured on the default base (val split, 16 images, EMA after 250 iterations,
``bench/rectifier_paths.py``): x0 targets at *inversion* points gave +1.5 dB at S = 6 and
−9 dB at S = 20 (the rectified chain runs 2e-4…1e-2 MSE away from the
inversion trajectory, near the ideal path); x0 targets on the ideal path gave +3.1 dB at S = 6
but still −5.4 dB at S = 20: P̂ stays ~10 % of θ's error along the path, and the drift that
leaves is more than plain DDIM's own error at S ≥ 20. Hence ``"trajectory"``.

``loss``: ``"log_ratio"`` (default) scores each move by log((e_R + c)/(e_θ + c)), e the
squared error of the rectified and of θ's own estimate against P* — a gain in dB, so the
tiny errors of large-S moves count as much as the big ones of S = 6 (an absolute MSE would
let them be traded away); ``"mse"`` is ‖P̂ − P*‖² (+ ``ssim_weight`` · (1 − SSIM)).

Trainer guarantees as for the base model (:mod:`hifiedit.train.base`): one saved
``torch.Generator`` makes a resumed run bit-identical to an uninterrupted one; atomic
safetensors checkpoints; EMA of φ, exported with ``save_pretrained`` to ``OUT/rectifier``;
SIGTERM/SIGINT checkpoint and stop; a CSV log with held-out PSNR of rectified reconstruction.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from hifiedit.diffusion.ddim import Inversion, ddim_step, fixed_point_move, generate, predict_x0
from hifiedit.errors import HifieditError
from hifiedit.weights import check_model_state
from hifiedit.rectifier import Rectifier, RectifierConfig, rectified_eps, rectified_eps_fn
from hifiedit.runtime import write_text_atomic
from hifiedit.train.base import ema_update
from hifiedit.train.loop import Job, Shard, TrainLoop
from hifiedit.train.run import holds_run_lock, torch_threads
from hifiedit.config import require
from hifiedit.diffusion.backbone import model_digest, module_device
from hifiedit.models import portable_name
from hifiedit.train.trajectories import TrajectoryCache

# Fields that may differ when resuming: they change how long and how visibly we train, not what.
# Squared errors below this (images in [-1, 1]; ≈ 86 dB) are not worth a gradient.
LOG_FLOOR = 1e-9
RESUMABLE_OVERRIDES = {"max_steps", "log_every", "checkpoint_every", "eval_every", "threads"}
_ARCH_FIELDS = ("encoder_channels", "norm_groups", "time_embed_dim", "feature_dim",
                "branch_hidden", "pointwise_rank", "step_embedding")


@dataclass(frozen=True)
class RectifierTrainConfig:
    # Rectifier architecture (RectifierConfig; its defaults are sized for ≤ 2.5× a plain step).
    encoder_channels: tuple = (32, 64, 128)
    norm_groups: int = 8
    time_embed_dim: int = 128
    feature_dim: int = 128
    branch_hidden: int = 32
    pointwise_rank: int = 2
    step_embedding: bool = True  # the rectifier sees the move's size (RectifierConfig)
    # Trajectories: DESIGN §3 evaluates at t0 = 400 with S_for = S_gen = S ∈ {6, 10, 20, 40,
    # 100}; a step count between or beyond the grids (200) is served by its neighbours: R sees
    # t and P_t, not S, and plain DDIM is already within ~0.1 dB of exact at S ≥ 100. Adding
    # 200 costs 200 more U-Net passes per image (bench/rectifier_train_speed.py).
    t0: int = 400
    step_grids: tuple = (6, 10, 20, 40, 100)
    # Inverting one image over these grids costs 176 U-Net passes, measured ≈ 4.7 s per image
    # on one contended core: a fixed random subset of the train split keeps the one-off cache
    # build to ~20 min (0 = the whole split, ~4 h). Roll-outs add state diversity per image.
    n_images: int = 256
    cache_points: int = 24  # kept states per trajectory (all of them for S ≤ 24)
    # Which inversion the trajectories (and the chains the rectifier corrects) come from:
    # "ddim", or "fixed-point" with fp_iters iterations per move (diffusion.ddim.Inversion).
    # A fixed-point x_{t0} is generation's exact start, so the rectifier only has to undo
    # the few-step generation's own error, not the inversion's as well.
    inversion: str = "ddim"
    fp_iters: int = 2
    # What each move is scored against, and how (module docstring).
    target: str = "trajectory"  # or "x0"
    loss: str = "log_ratio"  # or "mse"
    # k ~ U{0…rollout_max} rectified no-grad moves, then grad_chain_steps moves with gradient.
    rollout_max: int = 4
    grad_chain_steps: int = 1
    ssim_weight: float = 0.0  # loss "mse" only
    # Optimisation.
    batch_size: int = 16
    lr: float = 2e-4
    warmup_steps: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    max_steps: int = 20_000
    seed: int = 0
    threads: int = 0  # 0 = PyTorch's default
    # Start from a trained rectifier (a folder or shipped name) instead of zero offsets, e.g.
    # the one of the base model's previous release ("" = from zero; the architecture must match).
    init_from: str = ""
    # Train on the images of this folder instead of OpenMoji (hifiedit.data.images
    # .load_image_folder): its manifest's "train" split, and "val" for the held-out PSNR, when
    # the manifest gives splits; else every image, none held out. `crop` centre-crops
    # non-square images (else they are refused).
    image_dir: str = ""
    crop: bool = False
    # Monitoring: held-out PSNR of rectified reconstruction (EMA φ) on the val split.
    log_every: int = 10
    checkpoint_every: int = 100
    eval_every: int = 250
    eval_steps: tuple = (6, 20)
    n_val_images: int = 16

    def validate(self) -> None:
        self.rectifier_config().validate()
        require(self.t0 >= 1, f"t0 must be ≥ 1, got {self.t0}.")  # < T: checked with the model
        require(len(self.step_grids) >= 1 and all(1 <= s <= self.t0 for s in self.step_grids),
                f"step_grids must be step counts in [1, t0={self.t0}].")
        require(all(1 <= s <= self.t0 for s in self.eval_steps), "eval_steps must be in [1, t0].")
        require(self.n_images >= 0 and self.n_val_images >= 0, "n_images/n_val_images must be ≥ 0.")
        require(self.cache_points >= 1, "cache_points must be ≥ 1.")
        self.inversion_spec()  # raises on a bad method or iteration count
        require(self.target in ("trajectory", "x0"),
                f"target must be 'trajectory' or 'x0', got {self.target!r}.")
        require(self.loss in ("log_ratio", "mse"), f"loss must be 'log_ratio' or 'mse', got {self.loss!r}.")
        require(self.ssim_weight == 0 or self.loss == "mse", "ssim_weight needs loss 'mse'.")
        require(self.rollout_max >= 0, "rollout_max must be ≥ 0.")
        require(1 <= self.grad_chain_steps <= min(self.step_grids),
                "grad_chain_steps must be between 1 and the smallest step grid.")
        require(self.ssim_weight >= 0, "ssim_weight must be ≥ 0.")
        require(self.batch_size >= 1, "batch_size must be ≥ 1.")
        require(0 < self.lr < 1, f"lr must be in (0, 1), got {self.lr}.")
        require(0 <= self.ema_decay < 1, "ema_decay must be in [0, 1).")
        require(self.max_steps >= 1, "max_steps must be ≥ 1.")
        for k in ("log_every", "checkpoint_every", "eval_every"):
            require(getattr(self, k) >= 1, f"{k} must be ≥ 1.")

    def rectifier_config(self) -> RectifierConfig:
        return RectifierConfig(**{k: getattr(self, k) for k in _ARCH_FIELDS},
                               trained_inversion=self.inversion)

    def inversion_spec(self) -> Inversion:
        return Inversion(self.inversion, self.fp_iters)


# --------------------------------------------------------------------------- one iteration


@dataclass
class Points:
    """Cached inversion states of one step grid: states (N, P, C, H, W) at trajectory indices
    ``kept`` (P,) of the grid ``levels`` (S + 1,), and the noise n* (N, C, H, W) that the
    inverted x_{t0} implies (the ideal path of target "x0", module docstring)."""

    states: torch.Tensor
    kept: torch.Tensor
    levels: torch.Tensor
    noise: torch.Tensor


def implied_noise(x_t0: torch.Tensor, x0: torch.Tensor, alpha_t0: torch.Tensor) -> torch.Tensor:
    """n* with x_{t0} = √ᾱ x0 + √(1−ᾱ) n*."""
    return (x_t0 - alpha_t0.sqrt() * x0) / (1 - alpha_t0).sqrt()


def ideal_states(x0: torch.Tensor, noise: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """√ᾱ x0 + √(1−ᾱ) n*, per sample: the path of a chain whose every P_t is x0."""
    a = alpha.to(x0.device, x0.dtype).reshape(-1, *[1] * (x0.ndim - 1))
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


@dataclass
class Draw:
    """One iteration's samples: step count S, roll-out length k, images x0 (B, C, H, W),
    start states x at grid indices j (B,), and for target "trajectory" the inversion states
    each gradient move must land on (``landing[r]`` for move r), else None."""

    s: int
    k: int
    x0: torch.Tensor
    x: torch.Tensor
    j: torch.Tensor
    landing: list[torch.Tensor] | None


def draw_batch(backbone, points: dict[int, Points], images: torch.Tensor,
               config: RectifierTrainConfig, gen: torch.Generator, shard: Shard = Shard()) -> Draw:
    """S, k, and per sample an image and a start index j ≥ k + grad moves (so the chain never
    passes the clean level). Always the same number of random draws per iteration; the samples
    are this process's slice of the batch (:class:`hifiedit.train.loop.Shard`)."""
    grids = sorted(points)
    m = config.grad_chain_steps
    s = grids[int(torch.randint(len(grids), (1,), generator=gen))]
    k = min(int(torch.randint(config.rollout_max + 1, (1,), generator=gen)), s - m)
    idx = torch.randint(len(images), (config.batch_size,), generator=gen)
    u = torch.rand(config.batch_size, generator=gen)
    idx, u = shard.take(idx, u)
    p, x0 = points[s], images[idx]
    if config.target == "x0":  # ideal-path start at any level from k + m to S
        j = k + m + (u * (s + 1 - k - m)).long().clamp(max=s - k - m)
        return Draw(s, k, x0, ideal_states(x0, p.noise[idx], backbone.alphas_cumprod[p.levels[j]]),
                    j, None)
    # An inversion state x_i (x0 or a cached one, i + k + m ≤ S), then k + m inversion moves.
    known = torch.cat([torch.zeros(1, dtype=p.kept.dtype), p.kept])
    n_ok = int((known <= s - k - m).sum())
    pos = (u * n_ok).long().clamp(max=n_ok - 1)
    i = known[pos]
    rows = torch.arange(len(idx))
    states = torch.cat([x0[:, None], p.states[idx]], dim=1)
    if len(p.kept) == s:  # every state of this grid is cached: look the moves up, don't rerun them
        path = [states[rows, i + r] for r in range(k + m + 1)]
        return Draw(s, k, x0, path[-1], i + k + m, [path[m - 1 - r] for r in range(m)])
    x = states[rows, pos]
    path = [x]
    inversion = config.inversion_spec()
    with torch.no_grad():
        for r in range(k + m):
            t_from, t_to = p.levels[i + r], p.levels[i + r + 1]
            if inversion.method == "ddim":
                x = ddim_step(x, backbone.eps(x, t_from), _alpha(backbone, t_from), _alpha(backbone, t_to))
            else:  # the cached trajectory's own move: fixed-point from generation's clean ᾱ
                a_from, a_to = _landing_alpha(backbone, t_from), _alpha(backbone, t_to)
                guess = ddim_step(x, backbone.eps(x, t_from), a_from, a_to)
                x = fixed_point_move(backbone.eps, x, guess, t_to, a_from, a_to, inversion.iters)[0]
            path.append(x)
    return Draw(s, k, x0, x, i + k + m, [path[m - 1 - r] for r in range(m)])


def _alpha(backbone, levels: torch.Tensor) -> torch.Tensor:
    return backbone.alphas_cumprod.to(torch.float64)[levels]


def _landing_alpha(backbone, levels: torch.Tensor) -> torch.Tensor:
    """ᾱ a generation move lands on: 1 at the clean level (DDIMConventions.final_alpha_one)."""
    return torch.where(levels == 0, torch.ones((), dtype=torch.float64), _alpha(backbone, levels))


def _step(levels: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    return levels[j] - levels[j - 1]


@torch.no_grad()
def rollout(backbone, rectifier, x, x0_code, levels: torch.Tensor, j: torch.Tensor, k: int):
    """k rectified DDIM generation moves τ_j → τ_{j−1} → … (per-sample j); returns (x, j − k)."""
    for _ in range(k):
        t_from, t_to = levels[j], levels[j - 1]
        eps = rectified_eps(backbone, rectifier, x, t_from, x0_code, step=_step(levels, j))
        x = ddim_step(x, eps, _alpha(backbone, t_from), _landing_alpha(backbone, t_to))
        j = j - 1
    return x, j


def landing_target(x: torch.Tensor, x_next: torch.Tensor, a: torch.Tensor,
                   a_next: torch.Tensor) -> torch.Tensor:
    """P* such that the DDIM move √ᾱ' P + √(1−ᾱ') (x − √ᾱ P)/√(1−ᾱ) from x lands on x_next."""
    shape = (-1, *[1] * (x.ndim - 1))
    a, a_next = a.to(x.device, x.dtype).reshape(shape), a_next.to(x.device, x.dtype).reshape(shape)
    keep = ((1 - a_next) / (1 - a)).sqrt()
    return (x_next - keep * x) / (a_next.sqrt() - keep * a.sqrt())


def chain_loss(backbone, rectifier, draw: Draw, x, x0_code, levels: torch.Tensor,
               j: torch.Tensor, config: RectifierTrainConfig,
               checkpoint: bool = False) -> torch.Tensor:
    """Mean over ``config.grad_chain_steps`` rectified moves from x at τ_j of the move loss
    (module docstring), gradients flowing through the chain into φ. ``checkpoint``: gradient
    checkpointing of the modulated passes (the same gradients, less memory)."""
    from hifiedit.eval.metrics import ssim, to_unit

    losses = []
    for r in range(config.grad_chain_steps):
        t, t_next = levels[j - r], levels[j - r - 1]
        a, a_next = _alpha(backbone, t), _landing_alpha(backbone, t_next)
        eps, p_base, _ = rectified_eps(backbone, rectifier, x, t, x0_code,
                                       step=_step(levels, j - r), return_parts=True,
                                       checkpoint=checkpoint)
        p_hat = predict_x0(x, eps, a)
        target = draw.x0 if draw.landing is None else landing_target(x, draw.landing[r], a, a_next)
        err = (p_hat - target).square().flatten(1).mean(1)
        if config.loss == "log_ratio":
            base_err = (p_base - target).square().flatten(1).mean(1)
            loss = (torch.log(err + LOG_FLOOR) - torch.log(base_err + LOG_FLOOR)).mean()
        else:
            loss = err.mean()
            if config.ssim_weight > 0:
                loss = loss + config.ssim_weight * (1 - ssim(to_unit(p_hat), to_unit(target))).mean()
        losses.append(loss)
        if r + 1 < config.grad_chain_steps:
            x = ddim_step(x, eps, a, a_next)
    return torch.stack(losses).mean()


def iteration_loss(backbone, rectifier, points, images, config, gen,
                   shard: Shard = Shard(), checkpoint: bool = False) -> torch.Tensor:
    draw = draw_batch(backbone, points, images, config, gen, shard)
    levels = points[draw.s].levels
    with backbone.autocast():
        code = rectifier.encode_x0(draw.x0)
    x, j = rollout(backbone, rectifier, draw.x, code, levels, draw.j, draw.k)
    return chain_loss(backbone, rectifier, draw, x, code, levels, j, config, checkpoint)


# --------------------------------------------------------------------------- held-out PSNR


@torch.no_grad()
def heldout_psnr(backbone, rectifier, images, cache: TrajectoryCache, steps) -> dict[str, float]:
    """Mean PSNR of reconstruction at t0 with S_for = S_gen = S: the rectified chain (or plain
    DDIM when ``rectifier`` is None) from the cached S-step inversion x_{t0}."""
    from hifiedit.eval.metrics import psnr, to_unit

    out = {}
    for s in steps:
        states, _, grid = cache.get(images, s)
        eps_fn = (backbone.eps if rectifier is None else
                  rectified_eps_fn(backbone, rectifier, images, timesteps=grid))
        rec = generate(eps_fn, states[:, -1], grid, backbone.alphas_cumprod, cache.conventions).final
        out[str(s)] = psnr(to_unit(rec), to_unit(images)).mean().item()
    return out


# --------------------------------------------------------------------------- the run


def _initial_weights(config: RectifierTrainConfig, backbone) -> dict:
    """The weights of the rectifier a run starts from (``init_from``), and where they are."""
    from hifiedit.rectifier import resolve_rectifier_path

    path = resolve_rectifier_path(config.init_from)
    require(path is not None, f"init_from {config.init_from!r}: no such rectifier is shipped.")
    start = Rectifier.from_pretrained(path, backbone.unet)
    theirs, ours = asdict(start.config), asdict(config.rectifier_config())
    differ = [f"{k} {theirs[k]} ≠ {ours[k]}" for k in ours
              if k != "trained_inversion" and theirs[k] != ours[k]]
    require(not differ, f"init_from {path}: its architecture differs from this run's ({', '.join(differ)}).")
    return {"weights": start.state_dict(), "source": portable_name(path)}


def training_subset(n_train: int, config: RectifierTrainConfig) -> torch.Tensor:
    """Positions in the train split of the images a run with ``config`` trains on."""
    if not config.n_images or config.n_images >= n_train:
        return torch.arange(n_train)
    pick = torch.randperm(n_train, generator=torch.Generator().manual_seed(config.seed))
    return pick[: config.n_images].sort().values


def _load_images(config: RectifierTrainConfig, size: int):
    if config.image_dir:
        from hifiedit.data.images import folder_splits, load_image_folder

        splits = folder_splits(config.image_dir)
        train = load_image_folder(config.image_dir, size, crop=config.crop,
                                  split="train" if splits else None)
        val = load_image_folder(config.image_dir, size, crop=config.crop, split="val") \
            if "val" in splits else train[:0]
        return train[training_subset(len(train), config)], val[: config.n_val_images]
    from hifiedit.data.openmoji import load_openmoji

    data = load_openmoji(size)
    train, val = data.tensor("train"), data.tensor("val")
    return train[training_subset(len(train), config)], val[: config.n_val_images]


def build_points(cache: TrajectoryCache, images: torch.Tensor, grids, progress: bool):
    points = {}
    for s in grids:
        states, kept, grid = cache.get(images, s, progress=progress)
        noise = implied_noise(states[:, -1], images, cache.backbone.alphas_cumprod[grid[-1]])
        # States live where the images do; grid indices stay on the CPU with the generator.
        points[s] = Points(states.to(images.device), torch.tensor(kept), torch.tensor(grid),
                           noise.to(images.device))
    return points


class RectifierJob(Job):
    """Reconstruction training of R_φ with EMA against a frozen base (the loop does the rest)."""

    desc = "train rectifier"

    def __init__(self, config: RectifierTrainConfig, out: Path, backbone, train_images,
                 val_images, cache: TrajectoryCache, points, start_from_init: bool, device,
                 shard, grad_checkpointing: bool = False):
        shard.check(config.batch_size)
        self.config, self.out, self.backbone, self.cache = config, out, backbone, cache
        self.points, self.train_images, self.val_images = points, train_images, val_images
        self.shard, self.grad_checkpointing = shard, grad_checkpointing
        self.log_header = ["step", "loss", "lr", "it_per_s",
                           *[f"val_psnr_{s}" for s in config.eval_steps], "wall_s"]
        torch.manual_seed(config.seed)
        self.rect = Rectifier.for_unet(backbone.unet, config.rectifier_config()).to(device).train()
        self.ema = copy.deepcopy(self.rect).eval().requires_grad_(False)
        self.optimizer = torch.optim.AdamW(self.rect.parameters(), lr=config.lr,
                                           weight_decay=config.weight_decay)
        self.generator = torch.Generator().manual_seed(config.seed)
        init = _initial_weights(config, backbone) if start_from_init else None
        if init is not None:
            self.rect.load_state_dict(init["weights"])
            self.ema.load_state_dict(init["weights"])
        self.init_source = init["source"] if init else None
        self.grad_clip = config.grad_clip
        self.has_val = val_images is not None and len(val_images) > 0
        self.last_val: dict = {}
        self.lr = config.lr

    def parameters(self):
        return list(self.rect.parameters())

    def loss(self, step, shard):
        config = self.config
        self.lr = config.lr * min(1.0, (step + 1) / max(1, config.warmup_steps))
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        loss = iteration_loss(self.backbone, self.rect, self.points, self.train_images, config,
                              self.generator, shard, self.grad_checkpointing)
        loss.backward()
        return loss

    def after_update(self, step):
        ema_update(self.ema, self.rect, min(self.config.ema_decay, (1 + step) / (10 + step)))

    def evaluate(self, step):
        if self.has_val and step % self.config.eval_every == 0:
            self.last_val = heldout_psnr(self.backbone, self.ema, self.val_images, self.cache,
                                         self.config.eval_steps)
            return self.last_val
        return {}

    def log_row(self, step, window, evals):
        ips = window.steps / max(window.seconds, 1e-9)
        return [f"{window.loss:.6f}", f"{self.lr:.3g}", f"{ips:.3f}",
                *[f"{evals[str(s)]:.3f}" if evals else "" for s in self.config.eval_steps]]

    def postfix(self, window, evals):
        ips = window.steps / max(window.seconds, 1e-9)
        return {"loss": f"{window.loss:.5f}", "it_s": f"{ips:.2f}",
                **{f"psnr{s}": f"{v:.2f}" for s, v in self.last_val.items()}}

    def tensors(self):
        return {"model": self.rect.state_dict(), "ema": self.ema.state_dict()}

    def load(self, groups, state):
        check_model_state(self.rect, groups["model"], "Checkpoint rectifier")
        check_model_state(self.ema, groups["ema"], "Checkpoint EMA rectifier")

    def meta(self, step):
        return self.info

    def export(self, step):
        self.ema.save_pretrained(self.out / "rectifier",
                                 base_digest=self.info.get("base_digest"))


@holds_run_lock
def train_rectifier(config: RectifierTrainConfig, out: Path, base: str | Path = "default",
                    resume: bool = False, max_minutes: float | None = None, backbone=None,
                    train_images=None, val_images=None, cache_folder: Path | None = None,
                    progress: bool = True, stop_after: int | None = None,
                    device: str | torch.device = "cpu", precision: str = "fp32",
                    grad_checkpointing: bool = False) -> dict:
    """Train (or resume) a rectifier for the base model ``base`` into ``out``; returns a summary.

    ``out/checkpoint/`` is the resumable state, ``out/rectifier/`` the exported EMA rectifier
    (``Rectifier.from_pretrained``), ``out/log.csv`` the log. ``backbone`` replaces loading
    ``base``; ``train_images``/``val_images`` the OpenMoji splits; ``cache_folder`` defaults to
    $HIFIEDIT_CACHE/trajectories; ``stop_after`` stops at that step as if interrupted (the
    resume test); ``device`` "auto" is a GPU if there is one (random draws stay on the CPU
    generator, as in the base trainer); ``precision`` the U-Net's compute precision
    (:func:`hifiedit.runtime.resolve_runtime`; a given backbone keeps its device);
    ``grad_checkpointing`` recomputes the modulated passes' activations in backward (less
    memory, the same gradients). Under a launcher the global batch is split over the
    processes.
    """
    from hifiedit.data.openmoji import cache_dir
    from hifiedit.diffusion.backbone import load_backbone

    config.validate()
    out = Path(out)
    with torch_threads(config.threads):
        loop = TrainLoop(out, config, resume, RESUMABLE_OVERRIDES, max_minutes=max_minutes,
                         stop_after=stop_after, progress=progress, device=device,
                         precision=precision)
        dtype = loop.runtime.dtype
        backbone = replace(backbone, compute_dtype=dtype) if backbone is not None else \
            load_backbone(base, device=loop.device, compute_dtype=dtype)
        device = module_device(backbone.unet)
        require(config.t0 < backbone.num_train_timesteps,
                f"t0={config.t0} is beyond the base model's {backbone.num_train_timesteps} steps.")
        digest = model_digest(backbone)
        if loop.state is not None and loop.state.get("base_digest") != digest:
            raise HifieditError(f"Cannot resume: the base model differs from the one this run "
                                f"trained against ({loop.state.get('base')}).")
        if train_images is None:
            train_images, val_images = _load_images(config, backbone.sample_size)
        require(train_images.shape[-1] == backbone.sample_size,
                f"images are {train_images.shape[-1]} px but the base model takes "
                f"{backbone.sample_size}.")
        train_images = train_images.to(device)
        val_images = val_images.to(device) if val_images is not None else None
        cache = TrajectoryCache(cache_folder or cache_dir() / "trajectories", backbone, config.t0,
                                max_points=config.cache_points, inversion=config.inversion_spec())
        points = build_points(cache, train_images, config.step_grids, progress and loop.procs.main)
        job = RectifierJob(config, out, backbone, train_images, val_images, cache, points,
                           bool(config.init_from) and loop.saved is None, device, loop.shard,
                           grad_checkpointing)
        plain = (heldout_psnr(backbone, None, val_images, cache, config.eval_steps)
                 if job.has_val else {})
        job.info = {"base": portable_name(backbone.path or base), "base_digest": digest,
                    "n_params": sum(p.numel() for p in job.rect.parameters()),
                    "n_train_images": len(train_images), "val_psnr_ddim": plain,
                    "init_from": job.init_source or (loop.state or {}).get("init_from")}
        result = loop.run(job)
    summary = {**result, "out": portable_name(out), "rectifier": portable_name(out / "rectifier"),
               "cache": {"hits": cache.hits, "misses": cache.misses},
               "val_psnr_rectified": job.last_val, **job.info}
    if loop.procs.main:
        write_text_atomic(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    return summary
