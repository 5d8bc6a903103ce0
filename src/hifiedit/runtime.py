"""Small facts about where code runs, and atomic writes, shared by reports and trainers."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import tempfile
from pathlib import Path

import torch

from hifiedit.errors import HifieditError


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return (f"{cpu}, {os.cpu_count()} CPU cores{gpu}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """"auto" → the first CUDA GPU when there is one, else the CPU; other names as torch reads
    them, refused clearly when that device is absent."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise HifieditError(f"Unknown device {name!r}: use auto, cpu or cuda[:N].") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise HifieditError(f"Device {name!r} asked for, but this PyTorch sees no CUDA GPU.")
    return device


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a temporary sibling and rename: readers never see a half-written file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise HifieditError(f"Could not write {path}: {e.strerror or e}.") from e


@contextlib.contextmanager
def atomic_folder(dest: Path, what: str = "output"):
    """Yield a temporary sibling of `dest` to fill; when the block succeeds it replaces `dest`
    by renames, when anything fails (full disk, interruption) it is removed and `dest` is left
    as it was. A crash between the two renames leaves `dest.old`, which readers may fall back to.
    """
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp", dir=dest.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; these are ordinary folders
    except OSError as e:
        raise HifieditError(f"Cannot write to {dest.parent}: {e.strerror or e}.") from e
    try:
        yield tmp
        old = dest.with_name(dest.name + ".old")
        if dest.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise HifieditError(f"Writing {what} {dest} failed ({e.strerror or e}); "
                            "nothing was changed.") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
