"""What every trainer shares around its loop: the run folder, resume checks, the CSV log and
clean stops. Trainers import this; nothing in the library imports trainers (STYLE lesson 12)."""

from __future__ import annotations

import contextlib
import csv
import shutil
import signal
from dataclasses import asdict
from pathlib import Path

import torch

from hifiedit.errors import HifieditError


_LOCKS: dict[Path, int] = {}  # run folder → file descriptor holding its lock


def lock_run_dir(out: Path) -> None:
    """Hold an exclusive lock on `out` (flock on OUT/.lock) so that a second process training
    into the same folder refuses at once instead of interleaving checkpoints and log rows. The
    kernel drops the lock when the process ends, however it ends (SIGKILL included), so a
    killed run never leaves a stale lock behind."""
    import fcntl
    import os

    key = Path(out).resolve()
    if key in _LOCKS:
        return
    try:
        fd = os.open(key / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise HifieditError(f"Cannot write to {out}: {e.strerror or e}.") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise HifieditError(f"{out} is in use by another training process (pid {holder}); "
                            "wait for it to finish or choose another --out.") from e
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _LOCKS[key] = fd


def release_run_locks(before: set[Path]) -> None:
    import os

    for key in set(_LOCKS) - before:
        os.close(_LOCKS.pop(key))


def holds_run_lock(train):
    """Decorator for a trainer: the run-folder lock that `prepare_run_dir` takes is released
    when the trainer returns or raises."""
    import functools

    @functools.wraps(train)
    def wrapper(*args, **kwargs):
        before = set(_LOCKS)
        try:
            return train(*args, **kwargs)
        finally:
            release_run_locks(before)

    return wrapper


def has_checkpoint(out: Path) -> bool:
    """Whether `out` holds a checkpoint to resume (or the previous one, left as checkpoint.old
    by a crash between the two renames that swap a new one in)."""
    out = Path(out)
    return ((out / "checkpoint" / "state.json").is_file()
            or (out / "checkpoint.old" / "state.json").is_file())


def no_checkpoint(out: Path) -> HifieditError:
    return HifieditError(f"--resume given but {Path(out) / 'checkpoint'} holds no checkpoint "
                         "(the run stopped before its first one: start it again without --resume).")


def prepare_run_dir(out: Path, resume: bool) -> Path:
    """Lock `out` for this process and check it before any work: refuse to clobber a run
    without --resume, refuse --resume with nothing to resume, and make sure the folder is
    writable. Returns the checkpoint path."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise HifieditError(f"Cannot write to {out}: {e.strerror or e}.") from e
    lock_run_dir(out)
    # Temporary siblings left by a killed process (only the lock holder writes here).
    for stale in out.glob(".*.tmp*"):
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    ckpt_dir = out / "checkpoint"
    has_ckpt = has_checkpoint(out)
    if has_ckpt and not resume:
        raise HifieditError(f"{out} already holds a checkpoint: pass --resume to continue it, "
                            "or choose another --out.")
    if resume and not has_ckpt:
        raise no_checkpoint(out)
    try:
        (out / ".write_test").write_text("ok")
        (out / ".write_test").unlink()
    except OSError as e:
        raise HifieditError(f"Cannot write to {out}: {e.strerror or e}.") from e
    return ckpt_dir


def check_same_config(saved: dict, config, may_change: set[str]) -> None:
    """Resuming must not silently change what is trained. Fields added to the config class
    after the checkpoint was written are skipped (they take their defaults)."""
    norm = lambda v: list(v) if isinstance(v, (list, tuple)) else v  # noqa: E731 (JSON lists)
    changed = sorted(k for k, v in asdict(config).items()
                     if k in saved and k not in may_change and norm(saved[k]) != norm(v))
    if changed:
        raise HifieditError(f"Cannot resume with a different config: {changed} changed "
                            f"(only {sorted(may_change)} may).")


def optimizer_step(opt, loss, params, grad_clip: float, step: int) -> None:
    """One update. A non-finite loss stops the run with a clear error instead of writing NaN
    weights into the next checkpoint."""
    if not torch.isfinite(loss):
        raise HifieditError(f"Loss became {loss.item()} at step {step}; lower the lr.")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    opt.step()


def machine_history(saved_state: dict | None, start_step: int, start_wall: float,
                    step: int, wall: float) -> list[dict]:
    """Where each stretch of a run trained (a run may start on a CPU and go on on a GPU): the
    stretches recorded in the checkpoint (one older than this record counts as one stretch on
    its last machine), then this process's own."""
    from hifiedit.runtime import machine_description

    past = list((saved_state or {}).get("machines", []))
    if saved_state and not past and start_step:
        past = [{"from_step": 0, "to_step": start_step, "seconds": round(start_wall, 1),
                 "machine": saved_state.get("machine", "not recorded")}]
    if step > start_step:
        past.append({"from_step": start_step, "to_step": step,
                     "seconds": round(wall - start_wall, 1), "machine": machine_description()})
    return past


def trim_log(path: Path, step: int) -> None:
    """Drop log rows written after the checkpoint we resume from (they will be redone)."""
    if not path.is_file():
        return
    rows = list(csv.reader(path.open()))
    keep = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= step] if rows else []
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(keep)


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block with `n` intra-op threads (0 = leave PyTorch's setting), then restore it."""
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class StopFlag:
    """SIGTERM/SIGINT ask the loop to checkpoint and stop, instead of killing it mid-write."""

    def __init__(self):
        self.stop = False

    def __enter__(self):
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def _handle(self, *_):
        self.stop = True

    def __exit__(self, *_):
        for s, h in self._old.items():
            signal.signal(s, h)


def config_for_run(cls, config_file: Path | None, out: Path, resume: bool, overrides: dict):
    """The config of a `train …` command: the file plus overrides; or, when resuming without
    a file, the run's own saved config (plus overrides), so a resume continues as configured."""
    from hifiedit.train.checkpoint import load_checkpoint
    from hifiedit.config import config_from_dict, load_config

    if resume and config_file is None:
        if not has_checkpoint(out):
            raise no_checkpoint(out)
        _, state = load_checkpoint(Path(out) / "checkpoint")
        values = {**state["config"], **{k: v for k, v in overrides.items() if v is not None}}
        return config_from_dict(cls, values)
    return load_config(cls, config_file, overrides)
