"""Atomic, pickle-free training checkpoints (safetensors + JSON) shared by every trainer.

A checkpoint is a folder: one safetensors file per group of tensors (model, EMA, optimizer,
RNG) and `state.json` (step, config, package version). It is written to a temporary sibling
and swapped in with renames, so a crash or a full disk never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from hifiedit import __version__
from hifiedit.errors import HifieditError
from hifiedit.runtime import atomic_folder
from hifiedit.weights import load_safetensors


def save_checkpoint(folder: Path, groups: dict[str, dict[str, torch.Tensor]], state: dict) -> None:
    with atomic_folder(Path(folder), "checkpoint") as tmp:
        for name, tensors in groups.items():
            tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
            save_file(tensors, str(tmp / f"{name}.safetensors"))
        (tmp / "state.json").write_text(json.dumps(
            {**state, "groups": sorted(groups), "version": __version__}, indent=1))


def load_checkpoint(folder: Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    folder = Path(folder)
    if not (folder / "state.json").is_file():
        old = folder.with_name(folder.name + ".old")  # a crash between the two renames
        if (old / "state.json").is_file():
            folder = old
        else:
            raise HifieditError(f"{folder} is not a hifiedit checkpoint (no state.json).")
    try:
        state = json.loads((folder / "state.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HifieditError(f"{folder / 'state.json'} is not valid JSON: {e}.") from e
    if not isinstance(state, dict) or not isinstance(state.get("step"), int) \
            or not isinstance(state.get("config"), dict):
        raise HifieditError(f"{folder / 'state.json'} is not a hifiedit checkpoint state "
                            "(no integer step or no config).")
    missing = [g for g in state.get("groups", []) if not (folder / f"{g}.safetensors").is_file()]
    if missing:
        raise HifieditError(f"{folder} is an incomplete checkpoint: no "
                            f"{', '.join(g + '.safetensors' for g in missing)}.")
    groups = _Groups(folder, {p.stem: load_safetensors(p) for p in sorted(folder.glob("*.safetensors"))})
    return groups, state


class _Groups(dict):
    """A checkpoint's tensor groups; a missing one is named, not a KeyError."""

    def __init__(self, folder: Path, groups: dict):
        super().__init__(groups)
        self.folder = folder

    def __missing__(self, key):
        raise HifieditError(f"{self.folder} is an incomplete checkpoint: no {key}.safetensors.")


def optimizer_state(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """An optimizer's state as flat tensors plus JSON-able parameter groups."""
    sd = opt.state_dict()
    tensors = {
        f"{idx}.{key}": (v if torch.is_tensor(v) else torch.tensor(v))
        for idx, entry in sd["state"].items()
        for key, v in entry.items()
    }
    return tensors, sd["param_groups"]


def load_optimizer_state(
    opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict]
) -> None:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    expected = sum(len(g["params"]) for g in opt.param_groups)
    if sum(len(g["params"]) for g in groups) != expected:
        raise HifieditError("Checkpoint optimizer does not match the model's parameters.")
    opt.load_state_dict({"state": state, "param_groups": groups})
