"""Small facts about where code runs, and atomic writes, shared by reports and trainers."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError

from hifiedit.errors import HifieditError


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return (f"{cpu}, {os.cpu_count()} CPU cores{gpu}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """"auto" → the first CUDA GPU when there is one, else the CPU; other names as torch reads
    them, refused clearly when that device is absent."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise HifieditError(f"Unknown device {name!r}: use auto, cpu or cuda[:N].") from e
    if device.type not in ("cpu", "cuda"):
        raise HifieditError(f"Device {name!r} is not supported: use auto, cpu or cuda[:N].")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise HifieditError(f"Device {name!r} asked for, but this PyTorch sees no CUDA GPU "
                            "(use --device cpu or auto).")
    if device.type == "cuda" and device.index is not None \
            and device.index >= torch.cuda.device_count():
        raise HifieditError(f"Device {name!r} asked for, but this machine has "
                            f"{torch.cuda.device_count()} CUDA GPU(s).")
    return device


@dataclass(frozen=True)
class Runtime:
    """Where the networks run and the precision of their convolutions and matrix products.

    Precision is applied by autocast, never by casting weights. Trained parameters (the
    rectifier φ, the edit's offsets ψ, a base model) and their optimizer states stay float32
    master copies, as mixed-precision training needs; one loaded U-Net serves every precision
    (its content digest, which keys caches and edits, does not change); and the models hand ε
    and embeddings back in float32, so every sampler quantity (ᾱ, DDIM coefficients, P_t, the
    chain's states) stays float32/float64 whatever the layers computed in. A caveat either way:
    the convolution sees the merged θ ⊙ (1 + Δ) rounded to bf16, so rectifier offsets below
    about 2⁻⁹ of a weight are lost in bf16.
    """

    device: torch.device
    dtype: torch.dtype = torch.float32

    @property
    def precision(self) -> str:
        return precision_name(self.dtype)

    def autocast(self):
        return autocast(self.device, self.dtype)


def precision_name(dtype: torch.dtype) -> str:
    """fp32, bf16 or fp16: how commands and reports name a compute dtype."""
    return next(k for k, v in PRECISIONS.items() if v == dtype)


def autocast(device: torch.device | str, dtype: torch.dtype):
    """The U-Net's and CLIP's compute precision; a no-op for float32."""
    device = torch.device(device)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


def resolve_runtime(device: str | torch.device = "auto", precision: str = "fp32",
                    training: bool = False) -> Runtime:
    """The one place where --device and --precision become a device and a compute dtype, for
    every command. fp16 is refused on the CPU (PyTorch's CPU autocast is meant for bf16, and
    half-precision CPU kernels are slower than float32), and in training (float16 gradients
    underflow without loss scaling, which the trainers do not do; bf16 has float32's range)."""
    dev = resolve_device(device)
    if precision not in PRECISIONS:
        raise HifieditError(f"Unknown precision {precision!r}: use {', '.join(PRECISIONS)}.")
    if precision == "fp16" and dev.type == "cpu":
        raise HifieditError("--precision fp16 needs a CUDA GPU; on the CPU use bf16 or fp32.")
    if precision == "fp16" and training:
        raise HifieditError("--precision fp16 is for inference only: training in float16 needs "
                            "loss scaling; use bf16 (or fp32).")
    if precision == "bf16" and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise HifieditError(f"{torch.cuda.get_device_name(dev)} has no bfloat16 support; use "
                            "--precision fp16 or fp32.")
    return Runtime(dev, PRECISIONS[precision])


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
def atomic_folder(dest: Path, what: str = "output", replace: bool = True):
    """Yield a temporary sibling of `dest` to fill; when the block succeeds it replaces `dest`
    by renames, when anything fails (full disk, interruption) it is removed and `dest` is left
    as it was. A crash between the two renames leaves `dest.old`, which readers may fall back to.
    With `replace` False an existing `dest` is never replaced: when another process has
    written it meanwhile, this one refuses (a rename onto a non-empty folder fails).
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
        if not replace:
            try:
                os.rename(tmp, dest)
            except OSError as e:
                if dest.exists():
                    raise HifieditError(f"{dest} was written by another process meanwhile; "
                                        "pass --force to replace it.") from e
                raise
            return
        old = dest.with_name(dest.name + ".old")
        if dest.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    except (OSError, SafetensorError) as e:  # safetensors reports a full disk as its own error
        shutil.rmtree(tmp, ignore_errors=True)
        raise HifieditError(f"Writing {what} {dest} failed ({_reason(e)}); "
                            "nothing was changed.") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _reason(error: Exception) -> str:
    """One short reason: shutil.copytree gathers every failed file into one error; its first
    one says why."""
    if isinstance(error, shutil.Error) and error.args and isinstance(error.args[0], list):
        first = error.args[0][0] if error.args[0] else None
        return f"{first[2]}" if first and len(first) == 3 else "copy failed"
    return getattr(error, "strerror", None) or str(error)
