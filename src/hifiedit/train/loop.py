"""The one training loop every trainer runs (STYLE lesson 16, after lucidrains' `Trainer` and
accelerate's examples).

A trainer brings a :class:`Job`: its config, its state (models, optimizer, one
``torch.Generator`` that every random draw of the run comes from) and its loss step. The
:class:`TrainLoop` owns the rest: the run folder, device and processes, atomic safetensors
checkpoints, exact resume (weights, optimizer, the generator and torch's own RNG), the CSV
log, the progress bar, ``--max-minutes`` and SIGTERM/SIGINT clean stops.

Several processes (``accelerate launch``, ``torchrun``, or ``--num-processes N``): every
process draws the *whole* global batch from the shared generator and trains on its own slice
of it (:class:`Shard`), and the gradients are averaged before the update. The update is then
that of one process on the whole batch (up to float summation order), every process holds the
same weights, optimizer and generator, and process 0 alone writes checkpoints, logs and
exports. A checkpoint therefore resumes with any number of processes; with the same number,
bit-for-bit.
"""

from __future__ import annotations

import atexit
import csv
import math
import os
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Callable

import torch

from hifiedit.config import require
from hifiedit.errors import HifieditError
from hifiedit.runtime import Runtime, machine_description, resolve_device, resolve_runtime
from hifiedit.train.checkpoint import (
    load_checkpoint,
    load_optimizer_state,
    optimizer_state,
    save_checkpoint,
)
from hifiedit.train.run import (
    StopFlag,
    check_same_config,
    machine_history,
    prepare_run_dir,
    trim_log,
)

# How long the processes of a finished run wait for each other before closing their process
# group; a process that never arrives (it crashed) must not keep the others alive.
EXIT_BARRIER_SECONDS = 300


# --------------------------------------------------------------------------- processes


def launched_world_size() -> int:
    """How many processes a launcher (accelerate, torchrun, --num-processes) started this one
    among; 1 when it runs alone."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError as e:
        raise HifieditError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number.") from e


class Processes:
    """The processes one run trains on: this one alone, or the group a launcher started
    (through accelerate, which picks gloo on CPUs and NCCL on GPUs)."""

    def __init__(self, device: str | torch.device = "cpu"):
        self.count = launched_world_size()
        self.index = 0
        self.accelerator = None
        if self.count == 1:
            self.device = resolve_device(device)
            return
        from accelerate import Accelerator
        from accelerate.utils import InitProcessGroupKwargs

        cpu = resolve_device(device).type == "cpu"
        self.accelerator = Accelerator(cpu=cpu, kwargs_handlers=[InitProcessGroupKwargs(
            backend="gloo" if cpu else None, timeout=timedelta(minutes=30))])
        self.index, self.device = self.accelerator.process_index, self.accelerator.device
        require(self.accelerator.num_processes == self.count,
                f"accelerate sees {self.accelerator.num_processes} processes, WORLD_SIZE says "
                f"{self.count}.")
        atexit.register(self.close)

    @property
    def main(self) -> bool:
        return self.index == 0

    def agree(self, ok: bool) -> bool:
        """True when every process says ok (a failure on one stops them all, nobody hangs)."""
        if self.count == 1:
            return ok
        flag = torch.tensor([1.0 if ok else 0.0], device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        return bool(flag.item())

    def mean_and_any(self, value: float, flag: bool) -> tuple[float, bool]:
        """The mean of `value` over the processes, and whether any of them raised `flag`."""
        if self.count == 1:
            return value, flag
        t = torch.tensor([value, 1.0 if flag else 0.0], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return t[0].item() / self.count, t[1].item() > 0

    def average_gradients(self, params) -> None:
        """Each process's gradient is the mean over its slice; their mean is the mean over
        the global batch (the slices are equal). One collective for all parameters."""
        if self.count == 1:
            return
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        flat /= self.count
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def barrier(self, seconds: float = EXIT_BARRIER_SECONDS) -> None:
        if self.count == 1:
            return
        if torch.distributed.get_backend() == "gloo":
            torch.distributed.monitored_barrier(timeout=timedelta(seconds=seconds))
        else:
            torch.distributed.barrier()

    def close(self) -> None:
        """Close the process group at exit (a run's end already waited, bounded, for the
        others): a process that exits with its group open aborts in the communication
        threads' destructors ("terminate called without an active exception")."""
        if self.count > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


_PROCESSES: Processes | None = None


def processes(device: str | torch.device = "cpu") -> Processes:
    """This process's place among the run's processes, set up once per process."""
    global _PROCESSES
    if _PROCESSES is None or (_PROCESSES.count == 1 and launched_world_size() == 1):
        _PROCESSES = Processes(device)
    return _PROCESSES


def is_main_process() -> bool:
    return _PROCESSES is None or _PROCESSES.main


@dataclass(frozen=True)
class Shard:
    """This process's slice of a global batch."""

    index: int = 0
    count: int = 1

    def check(self, batch_size: int, what: str = "batch_size") -> None:
        require(batch_size % self.count == 0,
                f"{what} {batch_size} does not split over {self.count} processes: use a multiple.")

    def take(self, *tensors: torch.Tensor):
        """The slice of each tensor (first dimension: the global batch) this process trains on."""
        if self.count == 1:
            return tensors if len(tensors) > 1 else tensors[0]
        n = len(tensors[0])
        part = slice(self.index * n // self.count, (self.index + 1) * n // self.count)
        out = tuple(t[part] for t in tensors)
        return out if len(out) > 1 else out[0]


# --------------------------------------------------------------------------- the job


@dataclass
class Window:
    """The steps since the last log row."""

    loss: float  # mean loss over the window's steps
    steps: int
    seconds: float  # wall time since the last log row
    step_seconds: float  # summed time inside the steps


class Job:
    """What a trainer brings: set ``desc``, ``log_header``, ``optimizer``, ``generator`` and
    ``grad_clip``; implement ``parameters``, ``loss``, ``tensors``, ``load`` and ``export``;
    the other hooks are optional."""

    desc = "train"
    log_header: list[str] = ["step", "loss", "wall_s"]
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    grad_clip: float = 0.0
    # Seconds of each step this process ran (kept by the loop; trainers report their median).
    step_times: list[float]
    # Set by the loop before the first step: its own optimizer update (gradients averaged over
    # the processes, clipped, the step, gradients cleared), given the loss whose gradients it
    # applies, for a job that updates inside its loss step (DiffusionCLIP's per-move
    # fine-tuning). Every process must call it equally often; gradients it leaves cleared make
    # the loop's update after the step a no-op.
    update: Callable[[float], None]

    def parameters(self) -> list[torch.nn.Parameter]:
        raise NotImplementedError

    def loss(self, step: int, shard: Shard) -> torch.Tensor | float:
        """Draw the step's global batch, set the lr, and backpropagate the loss of this
        process's slice into the gradients (zeroed by the loop); return the loss."""
        raise NotImplementedError

    def after_update(self, step: int) -> None:
        """After the optimizer step (EMA, clamps)."""

    def evaluate(self, step: int) -> dict:
        """Held-out numbers due after update number `step` (1-based), or {}. Process 0 only."""
        return {}

    def log_row(self, step: int, window: Window, evals: dict) -> list:
        """The log columns between "step" and "wall_s"."""
        return [f"{window.loss:.6f}"]

    def postfix(self, window: Window, evals: dict) -> dict:
        return {"loss": f"{window.loss:.4f}"}

    def tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        """Checkpoint groups besides the optimizer and the RNG, e.g. {"model": …, "ema": …}."""
        raise NotImplementedError

    def load(self, groups: dict[str, dict[str, torch.Tensor]], state: dict) -> None:
        """Restore `tensors()` from a checkpoint."""
        raise NotImplementedError

    def meta(self, step: int) -> dict:
        """Extra fields of the checkpoint's state.json at update number `step`."""
        return {}

    def export(self, step: int) -> None:
        """Write the usable model (next to the checkpoint)."""


# --------------------------------------------------------------------------- the loop


class TrainLoop:
    """Set up with the run folder and config (checks and reads the checkpoint to resume), then
    ``run(job)``. Between the two the trainer builds its job, reading ``saved``/``state`` for
    its own resume checks and ``device``/``runtime``/``shard`` for where, at which precision
    and what it trains."""

    def __init__(self, out: Path, config, resume: bool = False, may_change: set[str] = frozenset(),
                 max_steps: int | None = None, max_minutes: float | None = None,
                 stop_after: int | None = None, progress: bool = True,
                 device: str | torch.device = "cpu", distributed: bool = True,
                 precision: str = "fp32"):
        self.out, self.config = Path(out), config
        # --device and --precision are refused before anything is written or a process
        # group is started.
        dtype = resolve_runtime(device, precision, training=True).dtype
        self.procs = processes(device)
        require(distributed or self.procs.count == 1,
                "this trainer runs in one process only; start it without a launcher.")
        self.device = self.procs.device
        # The compute precision (autocast) of the job's networks on this process's device.
        self.runtime = Runtime(self.device, dtype)
        self.shard = Shard(self.procs.index, self.procs.count)
        ok, error = True, None
        if self.procs.main:
            try:
                self.ckpt_dir = prepare_run_dir(self.out, resume)
            except HifieditError as e:
                ok, error = False, e
        if not self.procs.agree(ok):
            raise error or HifieditError("process 0 could not start the run (see its message).")
        self.ckpt_dir = self.out / "checkpoint"
        self.step, self.wall, self.saved, self.state = 0, 0.0, None, None
        if resume:
            self.saved, self.state = load_checkpoint(self.ckpt_dir)
            check_same_config(self.state["config"], config, may_change)
            self.step, self.wall = self.state["step"], self.state["wall_seconds"]
        self.start_step, self.start_wall = self.step, self.wall
        self.max_steps = max_steps if max_steps is not None else config.max_steps
        self.target = min(self.max_steps, stop_after or self.max_steps)
        self.max_minutes, self.progress = max_minutes, progress

    # ----------------------------------------------------------------- checkpoints

    def _restore(self, job: Job) -> None:
        job.load(self.saved, self.state)
        load_optimizer_state(job.optimizer, self.saved["optimizer"], self.state["param_groups"])
        rng = self.saved["rng"]
        job.generator.set_state(rng["generator"])
        # torch's own RNGs (dropout, anything drawn without the generator): absent from
        # checkpoints written before they were saved, which needed none.
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)

    def checkpoint(self, job: Job) -> None:
        """Process 0 writes the checkpoint (atomically) and the exported model."""
        if not self.procs.main:
            return
        tensors, groups = optimizer_state(job.optimizer)
        rng = {"generator": job.generator.get_state(), "torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        save_checkpoint(
            self.ckpt_dir, {**job.tensors(), "optimizer": tensors, "rng": rng},
            {"step": self.step, "wall_seconds": self.wall, "config": asdict(self.config),
             "param_groups": groups, "processes": self.procs.count,
             "machine": machine_description(),
             "machines": machine_history(self.state, self.start_step, self.start_wall,
                                         self.step, self.wall),
             **job.meta(self.step)})
        job.export(self.step)

    # ----------------------------------------------------------------- the update

    def _apply(self, job: Job, params: list[torch.nn.Parameter]) -> None:
        """The update from this process's gradients: their mean over the processes (the
        global batch's gradient), clipped, one optimizer step."""
        self.procs.average_gradients(params)
        if job.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, job.grad_clip)
        job.optimizer.step()

    def _update_within(self, job: Job, params: list[torch.nn.Parameter], loss: float) -> None:
        """``job.update``: an update inside a step, checked and applied as the step's own."""
        loss, _ = self.procs.mean_and_any(loss, False)
        if not math.isfinite(loss):
            raise HifieditError(f"Loss became {loss} in step {self.step}; lower the lr.")
        self._apply(job, params)
        job.optimizer.zero_grad(set_to_none=True)

    # ----------------------------------------------------------------- the loop

    def run(self, job: Job) -> dict:
        """Train `job` to the target step (or a clean stop); returns step, wall_seconds and
        stopped_early. The last state is checkpointed."""
        from tqdm import tqdm

        job.step_times = []
        if self.saved is not None:
            self._restore(job)
        else:  # torch's own RNG streams start from the seed, not from what the process did before
            torch.manual_seed(self.config.seed)
        main = self.procs.main
        log_path = self.out / "log.csv"
        if main:
            trim_log(log_path, self.step)
        deadline = time.monotonic() + 60 * self.max_minutes if self.max_minutes else math.inf
        every_log, every_ckpt = self.config.log_every, self.config.checkpoint_every
        params = job.parameters()
        job.update = lambda loss: self._update_within(job, params, loss)
        bar = tqdm(total=self.target, initial=self.step, disable=not (self.progress and main),
                   desc=job.desc, dynamic_ncols=True)
        window_loss, window_n, window_s, window_t = 0.0, 0, 0.0, time.perf_counter()
        stopped_early = False
        with StopFlag() as flag, _log_file(log_path, main, job.log_header) as log:
            while self.step < self.target:
                t_start = time.perf_counter()
                job.optimizer.zero_grad(set_to_none=True)
                loss = job.loss(self.step, self.shard)
                loss = loss.item() if torch.is_tensor(loss) else float(loss)
                stop = flag.stop or time.monotonic() > deadline
                loss, stop = self.procs.mean_and_any(loss, stop)
                if not math.isfinite(loss):
                    raise HifieditError(f"Loss became {loss} at step {self.step}; lower the lr.")
                self._apply(job, params)
                job.after_update(self.step)
                elapsed = time.perf_counter() - t_start
                self.step += 1
                self.wall += elapsed
                job.step_times.append(elapsed)
                window_loss += loss
                window_n += 1
                window_s += elapsed
                bar.update(1)

                evals = job.evaluate(self.step) if main else {}
                if main and (self.step % every_log == 0 or evals):
                    now = time.perf_counter()
                    window = Window(window_loss / window_n, window_n, now - window_t, window_s)
                    log.writerow([self.step, *job.log_row(self.step, window, evals),
                                  f"{self.wall:.1f}"])
                    log.flush()
                    bar.set_postfix(**job.postfix(window, evals))
                    window_loss, window_n, window_s, window_t = 0.0, 0, 0.0, now
                if self.step % every_ckpt == 0:
                    self.checkpoint(job)
                if stop:
                    stopped_early = self.step < self.target
                    break
        bar.close()
        if self.step % every_ckpt != 0:
            self.checkpoint(job)
        self.procs.barrier()  # every process leaves with the run's last checkpoint written
        return {"step": self.step, "wall_seconds": self.wall, "stopped_early": stopped_early}


class _log_file:
    """The run's CSV log, appended to by process 0 (the others get a writer that drops rows)."""

    def __init__(self, path: Path, main: bool, header: list[str]):
        self.path, self.main, self.header = path, main, header

    def __enter__(self):
        if not self.main:
            return _NoLog()
        self.file = open(self.path, "a", newline="")
        self.writer = csv.writer(self.file)
        if self.path.stat().st_size == 0:
            self.writer.writerow(self.header)
        return self

    def writerow(self, row) -> None:
        self.writer.writerow(row)

    def flush(self) -> None:
        self.file.flush()

    def __exit__(self, *_):
        if self.main:
            self.file.close()


class _NoLog:
    def writerow(self, row) -> None:
        pass

    def flush(self) -> None:
        pass


# --------------------------------------------------------------------------- launching


def launch(argv: list[str], count: int) -> int:
    """Run ``python -m hifiedit ARGV`` as `count` processes on this machine."""
    import sys

    return launch_command([sys.executable, "-m", "hifiedit", *argv], count)


def launch_command(command: list[str], count: int) -> int:
    """Run `command` as `count` processes on this machine (ranks 0…count−1, the environment
    torchrun would give them; gloo on CPUs) and wait for them. The exit status is the first
    failure's, and a failure stops the others (they would wait for it forever).
    SIGINT/SIGTERM are passed on, so the run checkpoints and stops."""
    import signal
    import socket
    import subprocess

    require(count >= 1, f"--num-processes must be ≥ 1, got {count}.")
    with socket.socket() as s:  # a free port for process 0's rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // count))
    base_env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                "WORLD_SIZE": str(count), "LOCAL_WORLD_SIZE": str(count),
                "OMP_NUM_THREADS": threads}
    children = [subprocess.Popen(command,
                                 env={**base_env, "RANK": str(i), "LOCAL_RANK": str(i)},
                                 preexec_fn=_die_with_parent)
                for i in range(count)]

    def forward(signum, _frame):
        for c in children:
            if c.poll() is None:
                c.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    status = 0
    try:
        running = list(children)
        while running:
            time.sleep(0.05)
            for c in list(running):
                rc = c.poll()
                if rc is None:
                    continue
                running.remove(c)
                if rc != 0 and status == 0:
                    status = rc if rc > 0 else 1
                    for other in running:  # it will wait for the failed one forever
                        other.terminate()
        return status
    finally:
        for c in children:
            if c.poll() is None:
                c.kill()
                c.wait()
        for s, h in old.items():
            signal.signal(s, h)


def _die_with_parent() -> None:
    """Linux: a rank whose launcher is killed is killed too, not left holding its peers."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
