"""Strict weight loading (STYLE lesson 7): explicit keys and shapes, an error that names what is
missing, never `strict=False` on a path that should match. Used by library and trainers."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from hifiedit.errors import HifieditError


def read_folder_meta(folder: str | Path, config_name: str, weights_name: str, class_name: str,
                     what: str) -> tuple[dict, Path]:
    """The config.json of a `save_pretrained` folder of ours, checked: both files present, valid
    JSON, written for `class_name`. Returns (config without bookkeeping keys, weights path)."""
    folder = Path(folder)
    cfg_path, w_path = folder / config_name, folder / weights_name
    if not cfg_path.is_file() or not w_path.is_file():
        raise HifieditError(f"{folder} is not {what} folder: it needs {config_name} and {weights_name}.")
    try:
        meta = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise HifieditError(f"{cfg_path} is not valid JSON: {e}.") from e
    if not isinstance(meta, dict) or meta.pop("_class_name", None) != class_name:
        raise HifieditError(f"{cfg_path} does not describe a hifiedit {class_name}.")
    meta.pop("hifiedit_version", None)
    return meta, w_path


def check_model_state(module: torch.nn.Module, tensors: dict[str, torch.Tensor], what: str) -> None:
    """Strict loading with an error that names what is missing or mismatched (STYLE lesson 7)."""
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    wrong = sorted(k for k in set(own) & set(tensors) if own[k].shape != tensors[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{' …' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}{' …' if len(unexpected) > 5 else ''}")
        if wrong:
            parts.append(f"wrong shape {wrong[:5]}")
        raise HifieditError(f"{what} does not match the model: " + "; ".join(parts) + ".")
    module.load_state_dict(tensors, strict=True)
