"""Small facts about where code runs, and atomic text writes, shared by reports and trainers."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from hifiedit.errors import HifieditError


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return (f"{cpu}, {os.cpu_count()} CPU cores{gpu}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


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
