"""Strict weight loading (STYLE lesson 7): explicit keys and shapes, an error that names what is
missing, never `strict=False` on a path that should match. Used by library and trainers."""

from __future__ import annotations

import torch

from hifiedit.errors import HifieditError


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
