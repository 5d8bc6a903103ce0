"""Edit training: the paper's score-matching style vs DiffusionCLIP's Markovian fine-tuning
(DESIGN §1, "Editing training, score-matching style" and "Baseline: DiffusionCLIP").

Both paradigms train the same edit parameters ψ = θ + Δ (:mod:`hifiedit.edit.params`) with
the same loss on a clean-image estimate P̂ (:func:`edit_loss`),

    L = λ_dir · directional(E_I(P̂) − E_I(x0), ΔT) + λ_L1 · ‖P̂ − x0‖₁,

and differ only in *where* P̂ comes from:

* **score-matching** (ours): a random point x_t of the cached *original* DDIM inversion
  trajectory of x0 (θ, S_for steps; :mod:`hifiedit.train.trajectories`) and one edited pass,
  P̂ = P_t(ε_{ψ⊙(1+R(x0, P_t^θ))}(x_t, t)) with the rectifier R frozen (or ε_ψ without one).
  One U-Net forward/backward per sample, no chain. A step-conditioned R is told the move an
  S_train-step generation takes at t, so that P̂ is the estimate the edited chain will see.
* **markovian** (DiffusionCLIP): from the inverted x_{t0}, S_train DDIM steps *with ψ*, each
  step starting from the edited previous state. Three variants:

  - ``full``: the loss on every step's estimate (mean over steps), backpropagated through the
    whole chain, one optimizer update per iteration. (DiffusionCLIP's ``clip_finetune`` also
    backpropagates through the whole chain with one update per batch, but puts the loss on the
    chain's final output only.)
  - ``efficient``: each move's loss (÷ S_train) is backpropagated at once from a detached
    state and the gradients are accumulated into one update per iteration: DiffusionCLIP's
    memory saving at the other variants' budget, so "iterations" and "lr" mean the same for
    every method.
  - ``per-move``: DiffusionCLIP as it runs (``clip_finetune_eff``, the mode its README offers
    "to save GPU memory"): at every move the state is detached, ψ's ε gives that move's x̂0_t,
    the loss (directional CLIP + λ_L1·L1 to x0) on x̂0_t is backpropagated and the optimizer
    steps (the training loop's own update: gradients averaged over the processes, clipped),
    so the next move already runs with the updated ψ. One iteration is still one chain of
    S_train moves over one batch, and so makes S_train optimizer updates (moves below the
    editing interval make none): at equal iterations it sees the same images and U-Net
    passes as ``efficient`` with S_train times the updates; the log's ``s_per_iter`` and
    ``wall_s`` give the equal-wall-clock view.

  What DiffusionCLIP's released ``diffusionclip.py`` (gwang-kim/DiffusionCLIP, read at commit
  794d8ab; the stored copy has lost its line breaks, so statements are named instead of
  lines) does: in ``clip_finetune`` the inner ``for t_it, (i, j)`` loop only chains
  ``x = denoising_step(...)``; after it the loss is computed once on the final ``x`` and
  ``loss.backward(); optim_ft.step()`` run once per batch. In ``clip_finetune_eff`` the same
  loop calls ``denoising_step(..., out_x0_t=True)``, detaches ``x``, computes
  −log((2 − L_dir(x0, x̂0_t)) / 2) + λ_L1 · ‖x̂0_t − x0‖₁ (our ``loss_form="log"``) and runs
  ``loss.backward(); optim_ft.step()`` and clears the gradients inside the loop, after every
  move. Its lr is multiplied by ``sch_gamma`` = 1.3 after each pass over the training images
  (``scheduler_ft.step()``); no variant here grows the lr (no EMA either): it is constant.
* both take an **editing interval** ``t_edit``: ψ acts only at levels t ≥ t_edit (score
  matching draws its points there; the chain moves with θ below), as at inference.

Trainer guarantees as for the others (:mod:`hifiedit.train.run`): one saved
``torch.Generator`` makes a resumed run bit-identical; atomic safetensors checkpoints; a CSV
log with the measured seconds per iteration (``s_per_iter``, the paper's efficiency claim);
the edit exported with ``Edit.save_pretrained`` to ``OUT/edit``.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from hifiedit.diffusion.ddim import DDIMConventions, generate, predict_x0
from hifiedit.edit.params import Edit, EditParams, EditParamsConfig, in_interval
from hifiedit.errors import HifieditError
from hifiedit.rectifier.modulate import move_sizes
from hifiedit.runtime import write_text_atomic
from hifiedit.config import require
from hifiedit.train.loop import Job, Shard, TrainLoop
from hifiedit.train.run import holds_run_lock, torch_threads
from hifiedit.data.attributes import has_attribute, source_attribute
from hifiedit.diffusion.backbone import model_digest
from hifiedit.models import portable_name
from hifiedit.train.trajectories import TrajectoryCache

METHODS = ("score-matching", "markovian")
VARIANTS = ("full", "efficient", "per-move")
# Fields that may differ when resuming: how long and how visibly we train, not what.
RESUMABLE_OVERRIDES = {"iters", "log_every", "checkpoint_every", "threads"}


@dataclass(frozen=True)
class EditTrainConfig:
    src: str = ""  # source text, e.g. "light skin tone"
    tgt: str = ""  # target text, e.g. "dark skin tone"
    method: str = "score-matching"
    markovian_variant: str = "full"
    rectifier: str = "default"  # default (the shipped one), none, or a rectifier folder
    clip: str = "default"  # the guiding CLIP: default or a CLIPModel folder (never the judge)
    # Training images: train-split OpenMoji images carrying the source attribute, or every
    # image of image_dir (its "train" split if its manifest.jsonl gives splits; loaded as
    # hifiedit.data.images.load_image_folder says); `images` > 0 keeps a fixed random subset.
    images: int = 64
    image_dir: str = ""
    crop: bool = False  # centre-crop non-square images of image_dir (else they are refused)
    # DDIM: invert to t0 with S_for steps (θ); both methods train for S_train-step generation
    # (the Markovian chain runs it; score matching tells the rectifier its moves).
    # t0 = 400 as the rest of the package; DiffusionCLIP uses S_for 40 and S_train 6.
    t0: int = 400
    s_for: int = 40
    s_train: int = 6
    # Editing interval [t_edit, t0]: ψ acts only at levels t ≥ t_edit, the base (rectified)
    # below, in training and at inference alike. 0 = every level (the paper, DiffusionCLIP).
    t_edit: int = 0
    # Loss (DESIGN §1). Starting values: a learning-rate search on dev pairs settles each
    # shipped edit's own values; both terms on an equal footing for the two methods.
    w_dir: float = 1.0
    w_l1: float = 0.3
    loss_form: str = "cosine"  # or DiffusionCLIP's "log"
    # Optimisation: Adam on ψ's offsets, constant lr (see the module docstring).
    iters: int = 200
    lr: float = 5e-4
    batch_size: int = 4
    grad_clip: float = 1.0
    # ψ (EditParamsConfig): rank-8 LoRA on every weight is a 1.1 MB checkpoint for the
    # default U-Net (shipped edits stay ≤ 2 MB).
    param_method: str = "lora"
    rank: int = 8
    alpha: float = 8.0
    targets: tuple = ("",)
    seed: int = 0
    threads: int = 0  # 0 = PyTorch's default
    log_every: int = 10
    checkpoint_every: int = 50

    def validate(self) -> None:
        require(bool(self.src.strip()) and bool(self.tgt.strip()),
                "an edit needs non-empty source and target texts (--src, --tgt).")
        require(self.src.strip().lower() != self.tgt.strip().lower(),
                f"source and target texts are the same ({self.src!r}): there is nothing to edit.")
        require(self.method in METHODS, f"method must be one of {METHODS}, got {self.method!r}.")
        require(self.markovian_variant in VARIANTS,
                f"markovian_variant must be one of {VARIANTS}, got {self.markovian_variant!r}.")
        require(self.t0 >= 1, f"t0 must be ≥ 1, got {self.t0}.")  # < T: checked with the model
        require(1 <= self.s_for <= self.t0 and 1 <= self.s_train <= self.t0,
                f"s_for and s_train must be in [1, t0={self.t0}].")
        require(0 <= self.t_edit <= self.t0, f"t_edit must be in [0, t0={self.t0}], got {self.t_edit}.")
        require(self.w_dir >= 0 and self.w_l1 >= 0 and self.w_dir + self.w_l1 > 0,
                "w_dir and w_l1 must be ≥ 0 and not both 0.")
        require(self.loss_form in ("cosine", "log"), "loss_form must be cosine or log.")
        require(self.images >= 0, "images must be ≥ 0 (0 = all).")
        require(self.iters >= 1 and self.batch_size >= 1, "iters and batch_size must be ≥ 1.")
        require(0 < self.lr < 1, f"lr must be in (0, 1), got {self.lr}.")
        require(self.log_every >= 1 and self.checkpoint_every >= 1,
                "log_every and checkpoint_every must be ≥ 1.")
        self.params_config().validate()

    def params_config(self) -> EditParamsConfig:
        return EditParamsConfig(method=self.param_method, rank=self.rank, alpha=self.alpha,
                                targets=tuple(self.targets))


# --------------------------------------------------------------------------- training images


def default_training_images(src: str, size: int) -> torch.Tensor:
    """Train-split OpenMoji images whose attributes carry the source attribute."""
    from hifiedit.data.openmoji import load_openmoji

    field, value = source_attribute(src)
    data = load_openmoji(size)
    idx = [r.index for r in data.records if r.split == "train" and has_attribute(r, field, value)]
    if not idx:
        raise HifieditError(f"no train-split image has {field} = {value!r} (from {src!r}).")
    return data.tensor_at(idx)


def training_images(config: EditTrainConfig, size: int) -> torch.Tensor:
    from hifiedit.data.images import load_image_folder

    # A folder's "train" split when its manifest gives splits, else all its images.
    x = load_image_folder(config.image_dir, size, crop=config.crop, split="train") \
        if config.image_dir else default_training_images(config.src, size)
    if config.images and config.images < len(x):
        pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(config.seed))
        x = x[pick[: config.images].sort().values]
    return x


# --------------------------------------------------------------------------- one iteration


@dataclass
class EditTask:
    """Everything an iteration reads: models (θ frozen, ψ trained, R frozen or None, CLIP),
    the training images with their CLIP embeddings, and their cached inversion trajectories
    (states (N, P, C, H, W) at trajectory indices ``kept`` of the S_for grid ``levels``)."""

    config: EditTrainConfig
    backbone: object
    psi: torch.nn.Module
    rectifier: torch.nn.Module | None
    clip: object | None
    text_dir: torch.Tensor | None
    images: torch.Tensor
    src_emb: torch.Tensor | None
    states: torch.Tensor
    kept: torch.Tensor
    levels: torch.Tensor
    conventions: DDIMConventions = DDIMConventions()
    # The training loop's optimizer update (gradients averaged over the processes, clipped,
    # the step, gradients cleared), given this move's loss; the per-move Markovian variant
    # calls it after every move (:meth:`hifiedit.train.loop.TrainLoop.update`).
    update: Callable[[float], None] | None = None
    checkpoint: bool = False  # gradient checkpointing of the edited passes (hifiedit.rectifier.modulate)

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return self.backbone.alphas_cumprod.to(torch.float64)[t]

    def eps(self, x: torch.Tensor, t: torch.Tensor, x0_code: torch.Tensor | None,
            step: torch.Tensor, edited: bool = True) -> torch.Tensor:
        """ε_{ψ⊙(1+R(x0, P_t^θ))}(x_t, t), or ε_ψ without a rectifier (DESIGN §1); ``step`` is
        the size of the DDIM move this ε serves (the rectifier may be conditioned on it).
        ``edited=False``: the base θ instead of ψ (below the editing interval)."""
        unet = self.psi if edited else None
        checkpoint = self.checkpoint and edited and torch.is_grad_enabled()
        if self.rectifier is None and not checkpoint:
            return self.backbone.eps(x, t, unet=unet)
        from hifiedit.rectifier import modulated_forward, rectified_eps

        if self.rectifier is None:  # ψ's own pass, recomputed block by block in backward
            from types import SimpleNamespace

            run = lambda x, t: SimpleNamespace(  # noqa: E731
                sample=modulated_forward(unet, x, t.reshape(-1).expand(len(x)), {}, checkpoint=True))
            return self.backbone.eps(x, t, unet=run)
        return rectified_eps(self.backbone, self.rectifier, x, t, x0_code, unet=unet, step=step,
                             checkpoint=checkpoint)

    def x0_code(self, x0: torch.Tensor) -> torch.Tensor | None:
        if self.rectifier is None:
            return None
        with torch.no_grad():
            return self.rectifier.encode_x0(x0)

    def loss(self, p_hat: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return edit_loss(self.clip, p_hat, self.images[idx],
                         self.src_emb[idx] if self.src_emb is not None else None,
                         self.text_dir, self.config)


def edit_loss(clip, p_hat: torch.Tensor, x0: torch.Tensor, src_emb: torch.Tensor | None,
              text_dir: torch.Tensor | None, config: EditTrainConfig) -> torch.Tensor:
    """λ_dir · directional(E_I(P̂), E_I(x0), ΔT) + λ_L1 · ‖P̂ − x0‖₁ (DESIGN §1): the one loss
    both paradigms use. ``src_emb`` = E_I(x0), computed once per training image."""
    from hifiedit.guidance import directional_loss

    loss = p_hat.new_zeros(())
    if config.w_dir > 0:
        loss = loss + config.w_dir * directional_loss(clip.encode_images(p_hat), src_emb, text_dir,
                                                      form=config.loss_form)
    if config.w_l1 > 0:
        loss = loss + config.w_l1 * (p_hat - x0).abs().mean()
    return loss


def generation_move(grid, t: torch.Tensor) -> torch.Tensor:
    """The size of the move of the generation grid ``grid`` (ascending levels) that starts at
    or passes through each level t: the move the edited chain takes there."""
    levels = torch.as_tensor(grid, device=t.device)
    j = torch.searchsorted(levels, t).clamp(1, len(levels) - 1)
    return levels[j] - levels[j - 1]


def score_matching_step(task: EditTask, gen: torch.Generator, shard: Shard = Shard()) -> float:
    """One edited pass per sample at a random point (in the editing interval) of its original
    inversion trajectory; backpropagates and returns the loss (of this process's slice of the
    batch, :class:`hifiedit.train.loop.Shard`)."""
    b = task.config.batch_size
    idx = torch.randint(len(task.images), (b,), generator=gen)
    inside = (task.levels[task.kept] >= task.config.t_edit).nonzero().flatten()
    pos = inside[torch.randint(len(inside), (b,), generator=gen)]
    idx, pos = shard.take(idx, pos)
    x, t = task.states[idx, pos], task.levels[task.kept[pos]]
    # A step-conditioned rectifier is told the move it serves at generation (S_train steps),
    # not the S_for grid's small move: P̂ is then the estimate the edited chain will see.
    step = generation_move(task.conventions.timesteps(task.config.t0, task.config.s_train), t)
    eps = task.eps(x, t, task.x0_code(task.images[idx]), step)
    loss = task.loss(predict_x0(x, eps, task.alpha(t)), idx)
    loss.backward()
    return loss.item()


def markovian_step(task: EditTask, gen: torch.Generator, shard: Shard = Shard()) -> float:
    """DiffusionCLIP: S_train DDIM steps with ψ from the inverted x_{t0}, the loss on every
    step's estimate; backpropagates and returns the loss (mean over steps, of this process's
    slice of the batch). The per-move variant also updates ψ after every move
    (``task.update``)."""
    c = task.config
    idx = shard.take(torch.randint(len(task.images), (c.batch_size,), generator=gen))
    code = task.x0_code(task.images[idx])
    grid = task.conventions.timesteps(c.t0, c.s_train)
    step_of = move_sizes(grid)
    x_t0 = task.states[idx, -1]  # kept always ends at the top level t0
    ac = task.backbone.alphas_cumprod

    def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return task.eps(x, t, code, step_of(t), edited=in_interval(t, c.t_edit))

    if c.markovian_variant == "full":
        traj = generate(eps_fn, x_t0, grid, ac, task.conventions)
        loss = torch.stack([task.loss(p, idx) for p in traj.x0_preds]).mean()
        loss.backward()
        return loss.item()
    per_move = c.markovian_variant == "per-move"
    require(not per_move or task.update is not None,
            "the per-move Markovian variant steps the optimizer itself: set EditTask.update.")
    total = 0.0

    def step_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # This move's loss is backpropagated now, from a state with no graph, and the chain
        # continues from detached values (DiffusionCLIP's clip_finetune_eff). Below the
        # editing interval the move is the base's: nothing there reaches ψ.
        nonlocal total
        x = x.detach()
        with torch.set_grad_enabled(in_interval(t, c.t_edit)):
            eps = eps_fn(x, t)
            loss = task.loss(predict_x0(x, eps, task.alpha(t)), idx)
        if loss.requires_grad:
            # efficient: accumulate the mean over moves into the iteration's one update;
            # per-move: DiffusionCLIP's own update after this move, on this move's whole loss.
            (loss if per_move else loss / c.s_train).backward()
            if per_move:
                # Leaves no gradient behind: the loop's update after the iteration is a no-op.
                task.update(loss.item())
        total += loss.item() / c.s_train
        return eps.detach()

    generate(step_eps, x_t0, grid, ac, task.conventions)
    return total


STEPS = {"score-matching": score_matching_step, "markovian": markovian_step}


# --------------------------------------------------------------------------- set-up


def _load_rectifier(config: EditTrainConfig, backbone):
    from hifiedit.rectifier import load_rectifier

    return load_rectifier(config.rectifier, backbone, missing=(
        "no default rectifier is shipped for this base model; train one (`hifiedit train "
        "rectifier`) and pass --rectifier PATH, or --rectifier none."))


def _guidance(config: EditTrainConfig, images: torch.Tensor,
              compute_dtype: torch.dtype = torch.float32):
    """(CLIP, ΔT, E_I(x0) per image), or Nones when λ_dir = 0 (STYLE 8: load only what a
    non-zero loss weight needs)."""
    if config.w_dir == 0:
        return None, None, None
    from hifiedit.guidance import load_clip, text_direction

    clip = load_clip(config.clip, device=images.device, compute_dtype=compute_dtype)
    with torch.no_grad():
        emb = torch.cat([clip.encode_images(images[i:i + 64]) for i in range(0, len(images), 64)])
    return clip, text_direction(clip, config.src, config.tgt), emb


def build_task(config: EditTrainConfig, backbone, images: torch.Tensor, cache_folder: Path,
               progress: bool = False,
               grad_checkpointing: bool = False) -> tuple[EditTask, EditParams, dict]:
    """The models, guidance and cached trajectories of one run; ψ's offsets start at zero.
    Everything is placed on the backbone's device; the CLIP computes at its precision."""
    from hifiedit.diffusion.backbone import module_device

    images = images.to(module_device(backbone.unet))
    require(config.t0 < backbone.num_train_timesteps,
            f"t0={config.t0} is beyond the base model's {backbone.num_train_timesteps} steps.")
    require(images.shape[-1] == backbone.sample_size,
            f"images are {images.shape[-1]} px but the base model takes {backbone.sample_size}.")
    rect, rect_path = _load_rectifier(config, backbone)
    clip, text_dir, src_emb = _guidance(config, images, backbone.compute_dtype)
    # Keep every state of the S_for trajectory: score matching draws from all of them.
    cache = TrajectoryCache(cache_folder, backbone, config.t0, max_points=config.s_for)
    states, kept, grid = cache.get(images, config.s_for, progress=progress)
    params = EditParams.for_unet(backbone.unet, config.params_config(), seed=config.seed)
    params.to(images.device)
    task = EditTask(config, backbone, params.as_unet(backbone.unet), rect, clip, text_dir, images,
                    src_emb, states, torch.tensor(kept), torch.tensor(grid), cache.conventions,
                    checkpoint=grad_checkpointing)
    meta = {"rectifier": rect_path, "cache": {"hits": cache.hits, "misses": cache.misses}}
    return task, params, meta


# --------------------------------------------------------------------------- the run


class EditJob(Job):
    """Training the edit parameters ψ by score matching or the Markovian chain (the loop does
    the rest)."""

    log_header = ["step", "loss", "s_per_iter", "wall_s"]

    def __init__(self, config: EditTrainConfig, out: Path, task: EditTask, params: EditParams,
                 digest: str, info: dict):
        self.config, self.out, self.task, self.params = config, out, task, params
        self.digest, self.info = digest, info
        self.desc = f"train edit ({config.method})"
        self.optimizer = torch.optim.Adam(params.parameters(), lr=config.lr)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.grad_clip = config.grad_clip
        self.run_step = STEPS[config.method]
        # The per-move Markovian variant updates through the loop's own update (set by the
        # loop before the first step).
        task.update = lambda loss: self.update(loss)

    def parameters(self):
        return list(self.params.parameters())

    def loss(self, step, shard):
        return self.run_step(self.task, self.generator, shard)

    def log_row(self, step, window, evals):
        return [f"{window.loss:.6f}", f"{window.step_seconds / window.steps:.4f}"]

    def postfix(self, window, evals):
        return {"loss": f"{window.loss:.4f}", "s_it": f"{window.step_seconds / window.steps:.3f}"}

    def tensors(self):
        return {"edit": self.params.tensors()}

    def load(self, groups, state):
        self.params.load_tensors(groups["edit"], "checkpoint edit weights")

    def meta(self, step):
        return {"base_digest": self.digest, **self.info}

    def export(self, step):
        edit = Edit(self.params, self.digest,
                    {**self.info, "steps": step, "train_s_per_iter": _median(self.step_times)})
        edit.save_pretrained(self.out / "edit")


@holds_run_lock
def train_edit(config: EditTrainConfig, out: Path, base: str | Path = "default",
               resume: bool = False, max_minutes: float | None = None, backbone=None,
               train_images=None, cache_folder: Path | None = None, progress: bool = True,
               stop_after: int | None = None, device: str | torch.device = "cpu",
               precision: str = "fp32", grad_checkpointing: bool = False) -> dict:
    """Train (or resume) an edit of the base model ``base`` into ``out``; returns a summary.

    ``out/checkpoint/`` is the resumable state, ``out/edit/`` the exported edit
    (``Edit.from_pretrained``), ``out/log.csv`` the log. ``backbone`` replaces loading
    ``base``; ``train_images`` the configured images; ``cache_folder`` defaults to
    $HIFIEDIT_CACHE/trajectories; ``stop_after`` stops at that step as if interrupted (the
    resume test); ``device`` and ``precision``: :func:`hifiedit.runtime.resolve_runtime` (a
    given backbone keeps its device); ``grad_checkpointing`` recomputes the edited passes'
    activations in backward (less memory, the same gradients). Under a launcher the global
    batch is split over the processes.
    """
    from hifiedit.data.openmoji import cache_dir
    from hifiedit.diffusion.backbone import load_backbone

    config.validate()
    out = Path(out)
    with torch_threads(config.threads):
        loop = TrainLoop(out, config, resume, RESUMABLE_OVERRIDES, max_steps=config.iters,
                         max_minutes=max_minutes, stop_after=stop_after, progress=progress,
                         device=device, precision=precision)
        loop.shard.check(config.batch_size)
        dtype = loop.runtime.dtype
        backbone = replace(backbone, compute_dtype=dtype) if backbone is not None else \
            load_backbone(base, device=loop.device, compute_dtype=dtype)
        digest = model_digest(backbone)
        if loop.state is not None:
            require(loop.state.get("base_digest") == digest, "Cannot resume: the base model "
                    f"differs from the one this run trained against ({loop.state.get('base_model')}).")
        images = (train_images if train_images is not None
                  else training_images(config, backbone.sample_size))
        task, params, meta = build_task(config, backbone, images,
                                        cache_folder or cache_dir() / "trajectories",
                                        progress and loop.procs.main, grad_checkpointing)
        info = {"base_model": portable_name(backbone.path or base), "method": config.method,
                "markovian_variant": config.markovian_variant if config.method == "markovian" else None,
                "src": config.src, "tgt": config.tgt, "t0": config.t0, "s_for": config.s_for,
                "s_train": config.s_train, "t_edit": config.t_edit, "rectifier": meta["rectifier"],
                "clip": config.clip, "n_train_images": len(images), "training": asdict(config)}
        job = EditJob(config, out, task, params, digest, info)
        result = loop.run(job)
    summary = {**result, "s_per_iter": _median(job.step_times), "out": portable_name(out),
               "edit": portable_name(out / "edit"), "base_digest": digest, "n_edit_params": params.n_params,
               "optimizer_steps": _optimizer_steps(job.optimizer),
               **meta, **{k: info[k] for k in ("method", "markovian_variant", "src", "tgt",
                                              "n_train_images")}}
    if loop.procs.main:
        write_text_atomic(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    return summary


def _median(times: list[float]) -> float | None:
    """Seconds per iteration, without the first one (lazy initialisation) when there are more."""
    return statistics.median(times[1:] if len(times) > 1 else times) if times else None


def _optimizer_steps(opt: torch.optim.Optimizer) -> int:
    """Updates Adam has made (its per-parameter step count): one per iteration, S_train per
    iteration for the per-move Markovian variant."""
    return max((int(s["step"]) for s in opt.state.values() if "step" in s), default=0)
