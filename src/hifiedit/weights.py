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


def short(error: BaseException, limit: int = 300) -> str:
    """The first line of a third-party error, for a one-line message (diffusers and
    transformers explain shape mismatches over many lines)."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    text = lines[0] if lines else type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_safetensors_file(path: str | Path) -> None:
    """Refuse, before anything parses it, a file that is not a complete safetensors file: a
    pickle (`torch.save`: hifiedit never unpickles weights, unpickling can run code), a
    truncated or garbled one (the header must be JSON and the data must end where it says)."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            head = f.read(8)
            size = path.stat().st_size
            if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
                raise HifieditError(f"{path} is a pickle (torch.save) file, not safetensors; "
                                    "hifiedit does not unpickle weights (it can run code): "
                                    "re-save them with safetensors.torch.save_file.")
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n <= 0 or 8 + n > size:
                raise HifieditError(f"{path} is not a safetensors file (truncated or garbled "
                                    "header).")
            header = json.loads(f.read(n))
    except OSError as e:
        raise HifieditError(f"{path} cannot be read: {e.strerror or e}.") from e
    except (ValueError, UnicodeDecodeError) as e:
        raise HifieditError(f"{path} is not a safetensors file (garbled header).") from e
    if not isinstance(header, dict):
        raise HifieditError(f"{path} is not a safetensors file (garbled header).")
    ends = [v["data_offsets"][1] for k, v in header.items()
            if k != "__metadata__" and isinstance(v, dict) and isinstance(v.get("data_offsets"), list)
            and len(v["data_offsets"]) == 2 and isinstance(v["data_offsets"][1], int)]
    if 8 + n + max(ends, default=0) != size:
        raise HifieditError(f"{path} is truncated or garbled: its header describes "
                            f"{8 + n + max(ends, default=0)} bytes, the file has {size}.")


def check_finite(tensors: dict[str, torch.Tensor], where: str | Path) -> None:
    """NaN or inf weights would give NaN images without a word: refuse them when loading."""
    bad = [k for k, v in tensors.items()
           if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise HifieditError(f"{where} holds NaN or infinite values in {bad[:3]}"
                            f"{' …' if len(bad) > 3 else ''}.")


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors, checked (complete, not a pickle, finite); every failure is
    one line that names the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    check_safetensors_file(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise HifieditError(f"{path} is not a readable safetensors file: {short(e)}.") from e
    check_finite(tensors, path)
    return tensors


def check_loading_info(info: dict, where: str | Path) -> None:
    """transformers and diffusers fill weights missing from a file with random ones and only
    warn: refuse such a model (STYLE lesson 7). `info`: their `output_loading_info`."""
    parts = [f"{what} {sorted(info.get(key) or [])[:3]}" for key, what in
             (("missing_keys", "missing"), ("unexpected_keys", "unexpected"),
              ("mismatched_keys", "wrong shape")) if info.get(key)]
    if parts:
        raise HifieditError(f"{where}: the weights do not match the config ({'; '.join(parts)}).")
