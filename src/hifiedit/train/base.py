"""Training the base diffusion model: ε-prediction DDPM, the CelebA-HQ DDPM's conventions.

Linear β 1e-4…0.02, T = 1000, ε-MSE (optionally min-SNR-γ weighted: the target stays ε, only
the per-timestep weight changes), AdamW, EMA, horizontal flips. Resuming from a checkpoint
continues bit-for-bit like an uninterrupted run: every random draw comes from one generator
whose state is saved with the weights.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from hifiedit.weights import check_model_state
from hifiedit.models import portable_name
from hifiedit.runtime import Runtime, atomic_folder
from hifiedit.config import require
from hifiedit.train.loop import Job, TrainLoop
from hifiedit.train.run import holds_run_lock, torch_threads

# Fields that may differ when resuming: they change how long and how visibly we train, not what.
RESUMABLE_OVERRIDES = {"max_steps", "cooldown_steps", "log_every", "checkpoint_every",
                       "sample_every", "eval_every", "threads", "n_samples", "sample_steps"}


@dataclass(frozen=True)
class BaseTrainConfig:
    # Data: the OpenMoji train split at image_size² (val split for the held-out loss).
    image_size: int = 32
    flip: bool = True
    # UNet2DModel. (48, 96, 96) with one layer per block is 2.5 M parameters: ~30 img/s on
    # 2 CPU cores, the largest that leaves hours-not-days training (see the model card).
    block_out_channels: tuple = (48, 96, 96)
    layers_per_block: int = 1
    attention_levels: tuple = (2,)  # attention at 8×8 only: it is the costly part on CPU
    norm_num_groups: int = 16
    attention_head_dim: int = 32
    # Schedule (DDPM / CelebA-HQ conventions).
    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    # Optimisation.
    batch_size: int = 64
    lr: float = 3e-4
    warmup_steps: int = 200
    # lr falls linearly to 0 over the last cooldown_steps before max_steps (warmup-stable-decay):
    # the run itself trains at a constant lr; a copy resumed with a near max_steps and a
    # cooldown is the branch that is released, and the run can still go on from its own state.
    cooldown_steps: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    min_snr_gamma: float = 5.0  # 0 disables; Hang et al. 2023 report ~3× faster convergence
    ema_decay: float = 0.999  # short CPU runs: 0.9999 would average over too few updates
    max_steps: int = 200_000
    seed: int = 0
    threads: int = 0  # 0 = PyTorch's default
    # Monitoring.
    log_every: int = 25
    checkpoint_every: int = 250
    eval_every: int = 500
    sample_every: int = 1000
    n_samples: int = 64
    sample_steps: int = 50

    def validate(self) -> None:
        require(8 <= self.image_size <= 1024, f"image_size must be 8…1024, got {self.image_size}.")
        require(len(self.block_out_channels) >= 2 and all(c > 0 for c in self.block_out_channels),
                "block_out_channels needs at least two positive entries.")
        require(all(c % self.norm_num_groups == 0 for c in self.block_out_channels),
                f"every block_out_channels entry must be divisible by norm_num_groups "
                f"({self.norm_num_groups}).")
        require(all(0 <= i < len(self.block_out_channels) for i in self.attention_levels),
                "attention_levels must index block_out_channels.")
        require(self.layers_per_block >= 1, "layers_per_block must be ≥ 1.")
        require(self.num_train_timesteps >= 2, "num_train_timesteps must be ≥ 2.")
        require(0 < self.beta_start < self.beta_end < 1, "need 0 < beta_start < beta_end < 1.")
        require(self.batch_size >= 1, "batch_size must be ≥ 1.")
        require(0 < self.lr < 1, f"lr must be in (0, 1), got {self.lr}.")
        require(0 <= self.ema_decay < 1, "ema_decay must be in [0, 1).")
        require(self.max_steps >= 1, "max_steps must be ≥ 1.")
        require(0 <= self.cooldown_steps <= self.max_steps,
                f"cooldown_steps must be in [0, max_steps], got {self.cooldown_steps}.")
        require(self.min_snr_gamma >= 0, "min_snr_gamma must be ≥ 0.")
        for k in ("log_every", "checkpoint_every", "eval_every", "sample_every", "sample_steps"):
            require(getattr(self, k) >= 1, f"{k} must be ≥ 1.")
        require(self.sample_steps < self.num_train_timesteps, "sample_steps must be < T.")


def learning_rate(config: BaseTrainConfig, step: int) -> float:
    """lr of update number `step` (0-based): linear warmup, constant, linear cooldown to 0."""
    warmup = min(1.0, (step + 1) / max(1, config.warmup_steps))
    cooldown = min(1.0, (config.max_steps - step) / config.cooldown_steps) if config.cooldown_steps else 1.0
    return config.lr * warmup * cooldown


def build_unet(config: BaseTrainConfig):
    from diffusers import UNet2DModel

    n = len(config.block_out_channels)
    attn = set(config.attention_levels)
    return UNet2DModel(
        sample_size=config.image_size,
        in_channels=3,
        out_channels=3,
        layers_per_block=config.layers_per_block,
        block_out_channels=tuple(config.block_out_channels),
        down_block_types=tuple("AttnDownBlock2D" if i in attn else "DownBlock2D" for i in range(n)),
        up_block_types=tuple(
            "AttnUpBlock2D" if i in attn else "UpBlock2D" for i in reversed(range(n))
        ),
        norm_num_groups=config.norm_num_groups,
        attention_head_dim=config.attention_head_dim,
    )


def build_scheduler(config: BaseTrainConfig):
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        beta_schedule="linear",
        prediction_type="epsilon",
        clip_sample=False,
    )


def diffusion_loss(unet, x0, t, noise, alphas_cumprod, min_snr_gamma: float = 0.0):
    """ε-MSE at q(x_t | x0); with γ > 0 each sample is weighted min(SNR_t, γ) / SNR_t."""
    a = alphas_cumprod[t].to(x0.dtype).view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    per_sample = F.mse_loss(unet(x_t, t).sample.float(), noise, reduction="none").mean(dim=(1, 2, 3))
    if min_snr_gamma > 0:
        snr = alphas_cumprod[t] / (1 - alphas_cumprod[t])
        per_sample = per_sample * (snr.clamp(max=min_snr_gamma) / snr).to(x0.dtype)
    return per_sample.mean()


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    ema_p = [p for p in ema.parameters()]
    model_p = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(ema_p, model_p, 1.0 - decay)


@torch.no_grad()
def heldout_loss(unet, images: torch.Tensor, alphas_cumprod: torch.Tensor, repeats: int = 4):
    """Plain (unweighted) ε-MSE on fixed held-out images, noise and timesteps: comparable
    across steps and runs."""
    g = torch.Generator().manual_seed(1234)
    total, count = 0.0, 0
    for _ in range(repeats):
        for batch in images.split(64):
            t = torch.randint(0, len(alphas_cumprod), (len(batch),), generator=g)
            noise = torch.randn(batch.shape, generator=g)
            t, noise = t.to(batch.device), noise.to(batch.device)
            total += diffusion_loss(unet, batch, t, noise, alphas_cumprod).item() * len(batch)
            count += len(batch)
    return total / count


@torch.no_grad()
def sample_grid(unet, alphas_cumprod, config: BaseTrainConfig, path: Path) -> None:
    """DDIM samples from pure noise (fixed seed) as a PNG grid."""
    from hifiedit.diffusion.ddim import generate
    from hifiedit.diffusion.schedule import ddim_timesteps
    from hifiedit.eval.grids import save_grid

    g = torch.Generator().manual_seed(0)
    size = config.image_size
    x_T = torch.randn((config.n_samples, 3, size, size), generator=g).to(unet.device)
    timesteps = ddim_timesteps(len(alphas_cumprod) - 1, config.sample_steps)
    eps_fn = lambda x, t: unet(x, t).sample  # noqa: E731
    samples = generate(eps_fn, x_T, timesteps, alphas_cumprod).final
    save_grid(samples.cpu(), path, nrow=int(math.sqrt(config.n_samples)), scale=2)


def export_model(ema_unet, config: BaseTrainConfig, folder: Path) -> None:
    """EMA weights as a diffusers pipeline folder (model_index.json, unet/, scheduler/)."""
    from diffusers import DDPMPipeline

    with atomic_folder(folder, "model") as tmp:
        DDPMPipeline(unet=ema_unet, scheduler=build_scheduler(config)).save_pretrained(tmp)


def _load_data(config: BaseTrainConfig):
    from hifiedit.data.openmoji import load_openmoji

    data = load_openmoji(config.image_size)
    return data.tensor("train"), data.tensor("val")[:128]


class BaseJob(Job):
    """ε-prediction DDPM training of a U-Net with EMA (the loop does the rest)."""

    desc = "train base"
    log_header = ["step", "loss", "lr", "img_per_s", "heldout_loss", "wall_s"]

    def __init__(self, config: BaseTrainConfig, out: Path, train_images, val_images, device, shard,
                 runtime: Runtime | None = None):
        shard.check(config.batch_size)
        self.config, self.out, self.device, self.shard = config, out, device, shard
        self.runtime = runtime or Runtime(torch.device(device))
        self.train_images = train_images.to(device)
        self.val_images = val_images.to(device) if val_images is not None else None
        torch.manual_seed(config.seed)
        self.unet = build_unet(config).train()
        self.ema = copy.deepcopy(self.unet).eval().requires_grad_(False)
        self.optimizer = torch.optim.AdamW(self.unet.parameters(), lr=config.lr,
                                           weight_decay=config.weight_decay)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.alphas_cumprod = torch.cumprod(
            1 - torch.linspace(config.beta_start, config.beta_end, config.num_train_timesteps,
                               dtype=torch.float64), 0).float().to(device)
        self.unet.to(device)
        self.ema.to(device)
        self.grad_clip = config.grad_clip
        self.n_params = sum(p.numel() for p in self.unet.parameters())
        self.lr = config.lr

    def parameters(self):
        return list(self.unet.parameters())

    def loss(self, step, shard):
        # The whole global batch is drawn (the same draws in every process), each process
        # trains on its slice: the generator's state is the run's, whatever the process count.
        config, gen, device = self.config, self.generator, self.device
        idx = torch.randint(0, len(self.train_images), (config.batch_size,), generator=gen)
        x0 = self.train_images[idx.to(device)]
        if config.flip:
            flip = torch.rand(config.batch_size, generator=gen) < 0.5
            x0 = torch.where(flip.to(device).view(-1, 1, 1, 1), x0.flip(-1), x0)
        t = torch.randint(0, config.num_train_timesteps, (config.batch_size,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        x0, t, noise = shard.take(x0, t.to(device), noise.to(device))
        self.lr = learning_rate(config, step)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        with self.runtime.autocast():
            loss = diffusion_loss(self.unet, x0, t, noise, self.alphas_cumprod,
                                  config.min_snr_gamma)
        loss.backward()
        return loss

    def after_update(self, step):
        ema_update(self.ema, self.unet, min(self.config.ema_decay, (1 + step) / (10 + step)))

    def evaluate(self, step):
        config = self.config
        if step % config.sample_every == 0:
            sample_grid(self.ema, self.alphas_cumprod, config,
                        self.out / "samples" / f"step_{step:07d}.png")
        if self.val_images is not None and len(self.val_images) and step % config.eval_every == 0:
            return {"heldout": heldout_loss(self.ema, self.val_images, self.alphas_cumprod)}
        return {}

    def log_row(self, step, window, evals):
        ips = window.steps * self.config.batch_size / max(window.seconds, 1e-9)
        heldout = f"{evals['heldout']:.5f}" if evals else ""
        return [f"{window.loss:.5f}", f"{self.lr:.3g}", f"{ips:.1f}", heldout]

    def postfix(self, window, evals):
        ips = window.steps * self.config.batch_size / max(window.seconds, 1e-9)
        return {"loss": f"{window.loss:.4f}", "img_s": f"{ips:.1f}"}

    def tensors(self):
        return {"model": self.unet.state_dict(), "ema": self.ema.state_dict()}

    def load(self, groups, state):
        check_model_state(self.unet, groups["model"], "Checkpoint model")
        check_model_state(self.ema, groups["ema"], "Checkpoint EMA")

    def meta(self, step):
        return {"n_params": self.n_params, "images_seen": step * self.config.batch_size}

    def export(self, step):
        export_model(self.ema, self.config, self.out / "model")


@holds_run_lock
def train_base(
    config: BaseTrainConfig,
    out: Path,
    resume: bool = False,
    max_minutes: float | None = None,
    train_images: torch.Tensor | None = None,
    val_images: torch.Tensor | None = None,
    progress: bool = True,
    stop_after: int | None = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
) -> dict:
    """Train (or resume) into `out`; returns a summary. `stop_after` stops at that step as if
    interrupted (used by the resume test). `device`: where the model trains ("auto": a GPU if
    there is one); every random draw still comes from the one CPU generator, so a run resumes
    on another device with the same data, noise and timesteps. `precision`: fp32 or bf16, the
    U-Net's compute precision under autocast (weights, optimizer and EMA stay float32). Under
    a launcher (accelerate, torchrun, --num-processes) the global batch is split over the
    processes."""
    with torch_threads(config.threads):
        loop = TrainLoop(out, config, resume, RESUMABLE_OVERRIDES, max_minutes=max_minutes,
                         stop_after=stop_after, progress=progress, device=device,
                         precision=precision)
        if train_images is None:
            train_images, val_images = _load_data(config)
        require(train_images.shape[-1] == config.image_size,
                f"images are {train_images.shape[-1]} px but image_size is {config.image_size}.")
        job = BaseJob(config, Path(out), train_images, val_images, loop.device, loop.shard,
                      loop.runtime)
        result = loop.run(job)
    return {**result, "n_params": job.n_params, "out": portable_name(out)}
