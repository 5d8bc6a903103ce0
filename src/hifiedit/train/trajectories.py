"""Cached DDIM inversion trajectories for rectifier training (DESIGN §1, "Reconstruction
training of R": "Invert each training image once (S_for, cacheable trajectories)").

Each entry is one image inverted with the frozen base θ over one timestep grid, stored as a
safetensors file named by a content hash of everything that determines it (STYLE lesson 10):
the image's bytes, a digest of the model (weights, prediction type, ᾱ table), the timestep
list, the DDIM conventions, which trajectory points are kept, and a cache format version.
Never a name built from arguments: a retrained base model, another t0 or another
convention is a miss, not a silently reused stale file.

Only ``max_points`` states per trajectory are kept (evenly spaced, always including the top
level t0): with S = 200 the full trajectory would cost 2.4 MB per image at 32×32, and the
training roll-outs (see :mod:`hifiedit.train.rectifier`) visit the levels in between anyway.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from hifiedit.diffusion.backbone import model_digest
from hifiedit.diffusion.ddim import DDIMConventions, Inversion, invert
from hifiedit.errors import HifieditError

CACHE_VERSION = 1


def kept_points(n_steps: int, max_points: int) -> list[int]:
    """Indices 1…S of the trajectory states to keep: all of them when S ≤ max_points, else
    ``max_points`` evenly spaced ones ending at S (index 0 is x0 itself, never a loss point)."""
    if n_steps <= max_points:
        return list(range(1, n_steps + 1))
    return sorted({int(round(v)) for v in np.linspace(1, n_steps, max_points)})


class TrajectoryCache:
    """``get(images, n_steps)`` → (states (N, P, C, H, W), kept indices, timestep grid)."""

    def __init__(self, folder: Path, backbone, t0: int,
                 conventions: DDIMConventions = DDIMConventions(), max_points: int = 24,
                 batch_size: int = 64, inversion: Inversion = Inversion()):
        if max_points < 1:
            raise HifieditError("the trajectory cache needs max_points ≥ 1.")
        self.folder = Path(folder)
        self.backbone = backbone
        self.t0 = int(t0)
        self.conventions = conventions
        self.inversion = inversion
        self.max_points = int(max_points)
        self.batch_size = int(batch_size)
        self.model = model_digest(backbone)
        self.hits = 0
        self.misses = 0

    def grid(self, n_steps: int) -> list[int]:
        return self.conventions.timesteps(self.t0, n_steps)

    def key(self, image: torch.Tensor, n_steps: int) -> str:
        h = hashlib.sha256()
        h.update(image.detach().cpu().to(torch.float32).contiguous().numpy().tobytes())
        h.update(str(tuple(image.shape)).encode())
        meta = {"version": CACHE_VERSION, "model": self.model, "timesteps": self.grid(n_steps),
                "conventions": asdict(self.conventions),
                "kept": kept_points(n_steps, self.max_points), "dtype": "float32"}
        if self.inversion != Inversion():  # plain DDIM keeps the keys it always had
            meta["inversion"] = asdict(self.inversion)
        compute = getattr(self.backbone, "compute_dtype", torch.float32)
        if compute != torch.float32:  # float32 keeps the keys it had before precisions existed
            meta["compute_dtype"] = str(compute)
        h.update(json.dumps(meta, sort_keys=True).encode())
        return h.hexdigest()

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.safetensors"

    def get(self, images: torch.Tensor, n_steps: int, progress: bool = False):
        kept = kept_points(n_steps, self.max_points)
        keys = [self.key(img, n_steps) for img in images]
        shape = (len(kept), *images.shape[1:])
        states = [self._read(self._path(key), shape, str(images.device)) for key in keys]
        todo = [i for i, s in enumerate(states) if s is None]
        self.hits += len(images) - len(todo)
        self.misses += len(todo)
        for chunk in _chunks(todo, self.batch_size, progress, f"inverting (S={n_steps})"):
            computed = self._invert(images[chunk], n_steps, kept)
            for i, s in zip(chunk, computed):
                states[i] = s
                self._write(keys[i], s)
        return torch.stack(states), kept, self.grid(n_steps)

    @staticmethod
    def _read(path: Path, shape: tuple, device: str) -> torch.Tensor | None:
        """A cached entry, or None when it is absent or unusable (a truncated file from a
        killed run, a full disk): a bad entry costs recomputation, never the training run."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        if not path.is_file():
            return None
        try:
            states = load_file(str(path), device=device)["states"]
        except (SafetensorError, OSError, KeyError):
            return None
        return states if tuple(states.shape) == shape and torch.isfinite(states).all() else None

    def _invert(self, images: torch.Tensor, n_steps: int, kept: list[int]) -> torch.Tensor:
        bb = self.backbone
        with torch.no_grad():
            traj = invert(bb.eps, images, self.grid(n_steps), bb.alphas_cumprod, self.conventions,
                          inversion=self.inversion)
        return torch.stack([traj.states[i] for i in kept], dim=1).contiguous()

    def _write(self, key: str, states: torch.Tensor) -> None:
        """Atomic (temporary sibling + rename); a read-only cache only costs recomputation."""
        from safetensors import SafetensorError
        from safetensors.torch import save_file

        path = self._path(key)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file({"states": states.contiguous()}, str(tmp))
            os.replace(tmp, path)
        except (OSError, SafetensorError):  # a full disk: safetensors raises its own error
            tmp.unlink(missing_ok=True)


def _chunks(indices: list[int], size: int, progress: bool, desc: str):
    from tqdm import tqdm

    chunks = [indices[i:i + size] for i in range(0, len(indices), size)]
    return tqdm(chunks, desc=desc, disable=not progress or not chunks, dynamic_ncols=True)
