"""Models shipped with hifiedit, by name, and how reports name any model folder.

One resolver for every kind of model (base U-Net, rectifier, CLIP, edit): a command accepts
an existing folder, a shipped model's folder name, or an alias ("default", "judge"). The
shipped models live in ``src/hifiedit/assets/models`` with a model card each. This module sits
at the bottom of the package (it imports nothing of hifiedit but the error type), so the
loaders of every layer and every report writer can use it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from hifiedit.errors import HifieditError

MODELS_DIR = Path(__file__).resolve().parent / "assets" / "models"

KINDS = ("base", "rectifier", "clip", "edit")
# Aliases a command accepts besides a folder or a shipped name.
ALIASES = {
    "base": {"default": "openmoji32-ddpm"},
    "rectifier": {"default": "openmoji32-rectifier"},
    "clip": {"default": "openmoji32-clip", "judge": "openmoji32-judge"},
    "edit": {},
}
_LABELS = {"base": "base model", "rectifier": "rectifier", "clip": "CLIP model", "edit": "edit"}
# How to make an alias's model when an installation lacks it (a trimmed or fresh checkout).
_HOW_TO_TRAIN = {
    "base": "hifiedit train base --config configs/base-openmoji32.json --out DIR",
    "rectifier": "hifiedit train rectifier --out DIR",
    "clip": "hifiedit train clip --config configs/clip-openmoji32.json --out DIR",
    "judge": "hifiedit train clip --config configs/judge-openmoji32.json --out DIR",
}


def _class_name(folder: Path) -> str | None:
    try:
        meta = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return meta.get("_class_name") if isinstance(meta, dict) else None


def is_kind(folder: Path, kind: str) -> bool:
    """Whether a shipped folder holds a model of ``kind`` (by the files each kind is saved with)."""
    if kind == "base":
        return any((folder / f).is_file() for f in
                   ("model_index.json", "unet/config.json", "scheduler_config.json"))
    if kind == "rectifier":
        return _class_name(folder) == "Rectifier"
    if kind == "edit":
        return _class_name(folder) == "HifiEdit"
    if kind == "clip":
        return (folder / "config.json").is_file() and any(
            (folder / f).is_file() for f in ("tokenizer.json", "vocab.json"))
    raise ValueError(f"unknown model kind {kind!r}; one of {KINDS}")


def shipped(kind: str) -> list[str]:
    """Names of the shipped models of one kind."""
    if not MODELS_DIR.is_dir():
        return []
    return sorted(p.name for p in MODELS_DIR.iterdir() if p.is_dir() and is_kind(p, kind))


def default_name(kind: str, alias: str = "default") -> str | None:
    return ALIASES[kind].get(alias)


def is_shipped(name_or_path: str | Path, kind: str) -> bool:
    """Whether an alias or name refers to a model of ``kind`` shipped in this installation."""
    name = ALIASES[kind].get(str(name_or_path), str(name_or_path))
    return bool(name) and "/" not in name and is_kind(MODELS_DIR / name, kind)


def resolve(name_or_path: str | Path, kind: str) -> Path:
    """The folder of a model of ``kind``: an existing path as given, else an alias or a shipped
    model's name. One clear error otherwise, naming what is shipped."""
    name = str(name_or_path)
    alias = ALIASES[kind].get(name)
    if alias is None:
        path = Path(name_or_path)
        if name and path.exists():
            return path
    target = alias or name
    if target and "/" not in target and is_kind(MODELS_DIR / target, kind):
        return MODELS_DIR / target
    label = _LABELS[kind]
    if alias is not None:
        how = _HOW_TO_TRAIN.get(name if name == "judge" else kind)
        raise HifieditError(f"The {name!r} {label} ({alias}) is not shipped in this installation"
                            + (f"; train one with `{how}` and pass its folder." if how else "."))
    have = shipped(kind)
    raise HifieditError(f"No {label} {name!r}: neither a folder nor the name of a {label} "
                        f"shipped with hifiedit (shipped: {', '.join(have) or 'none'}).")


def project_root() -> Path:
    """The folder relative paths in reports are taken against: the working directory (commands
    run from the project's root)."""
    return Path.cwd().resolve()


def portable_name(path: str | Path, root: str | Path | None = None) -> str:
    """How reports and configs name a folder or file: a shipped model by its name (found again
    on any installation), any other path relative to the project (``root``, default the working
    directory), so that a report never holds an absolute path of the machine it was written on
    and a config read back from the project's root still finds what it names."""
    raw = str(path)
    path = Path(path)
    try:
        resolved = path.resolve()
    except OSError:
        resolved = path.absolute()
    try:
        if resolved.parent == MODELS_DIR.resolve():
            return resolved.name
    except OSError:
        pass
    root = Path(root).resolve() if root is not None else project_root()
    if resolved == root:
        return "."
    if resolved.is_relative_to(root):
        return resolved.relative_to(root).as_posix()
    if not path.is_absolute():
        return Path(os.path.normpath(raw)).as_posix()
    try:
        return Path(os.path.relpath(resolved, root)).as_posix()
    except ValueError:  # another drive (Windows): no relative path exists
        return raw
