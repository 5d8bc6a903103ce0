"""Reading and writing user images, with clear errors and no silent overwrites."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from hifiedit.errors import HifieditError

SAVE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MANIFEST = "manifest.jsonl"


def load_image(path: Path | str, size: int, crop: bool = False, max_bytes: int | None = None,
               max_pixels: int | None = None) -> torch.Tensor:
    """An image file as a (1, 3, size, size) tensor in [-1, 1].

    Transparency is composited on white (the OpenMoji domain's background); grey, palette and
    CMYK images become RGB. A square image of another size is resized; a non-square one is
    refused unless `crop` (centre crop), since squashing it would change what it shows.
    `max_bytes` and `max_pixels` refuse larger files and images before they are decoded (the
    pixel count is read from the header), for images that come from someone else.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise HifieditError(f"{path}: no such image file.")
    if max_bytes is not None and path.stat().st_size > max_bytes:
        raise HifieditError(f"{path}: the file is {path.stat().st_size / 1e6:.1f} MB, over the "
                            f"{max_bytes / 1e6:g} MB limit.")
    try:
        with Image.open(path) as img:
            if max_pixels is not None and img.width * img.height > max_pixels:
                raise HifieditError(f"{path} is {img.width}×{img.height} "
                                    f"({img.width * img.height / 1e6:.1f} megapixels), over the "
                                    f"{max_pixels / 1e6:g} megapixel limit.")
            img.load()  # decode now: a truncated file fails here, not later
            img = _to_rgb(img)
    except UnidentifiedImageError as e:
        raise HifieditError(f"{path}: not an image Pillow can read.") from e
    except Image.DecompressionBombError as e:
        raise HifieditError(f"{path}: image is too large to decode safely ({e}).") from e
    except OSError as e:
        raise HifieditError(f"{path}: could not decode the image (truncated or corrupt: {e}).") from e
    w, h = img.size
    if w != h:
        if not crop:
            raise HifieditError(f"{path} is {w}×{h}; the model expects square images "
                                f"({size}×{size}). Pass --crop to centre-crop it.")
        s = min(w, h)
        img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.LANCZOS if img.width > size
                         else Image.Resampling.BICUBIC)
    arr = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
    return (arr.float() / 127.5 - 1).unsqueeze(0).contiguous()


def image_files(folder: Path | str) -> list[Path]:
    """The images of a folder (not recursive), sorted by name; refuses an empty one. Files
    whose names do not end in an image suffix (and hidden files) are not images and are
    skipped; a file that has one must decode, or loading it fails with its name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise HifieditError(f"{folder} is not a folder.")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise HifieditError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
    return files


def folder_image_files(folder: Path | str, split: str | None = None) -> list[Path]:
    """The images a user's folder names for a split. With a ``manifest.jsonl`` in the folder
    (one JSON object per line, ``{"file": path relative to the folder, "split": optional}``;
    what ``hifiedit data openmoji`` writes) exactly the files it lists, in its order, only
    those of ``split`` when its lines carry splits; without a manifest, or with one that gives
    no splits, every image (:func:`image_files`) whatever ``split`` says."""
    import json

    folder = Path(folder)
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return image_files(folder)
    entries = []
    for n, line in enumerate(manifest.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            file = entry["file"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise HifieditError(f"{manifest}:{n}: expected a JSON object with a \"file\" "
                                "field.") from None
        entries.append((folder / file, entry.get("split")))
    if split is not None and any(s is not None for _, s in entries):
        entries = [(f, s) for f, s in entries if s == split]
    files = [f for f, _ in entries]
    if not files:
        raise HifieditError(f"{manifest} lists no images{f' in split {split!r}' if split else ''}.")
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise HifieditError(f"{manifest} lists {len(missing)} missing file(s): "
                            f"{', '.join(missing[:3])}{' …' if len(missing) > 3 else ''}.")
    odd = [str(f) for f in files if f.suffix.lower() not in IMAGE_SUFFIXES]
    if odd:
        raise HifieditError(f"{manifest} lists files that are not images ({', '.join(IMAGE_SUFFIXES)}): "
                            f"{', '.join(odd[:3])}.")
    return files


def folder_splits(folder: Path | str) -> set[str]:
    """The splits the folder's manifest assigns its images to (none without a manifest)."""
    import json

    manifest = Path(folder) / MANIFEST
    if not manifest.is_file():
        return set()
    try:
        return {s for line in manifest.read_text().splitlines() if line.strip()
                if (s := json.loads(line).get("split")) is not None}
    except (json.JSONDecodeError, AttributeError):
        return set()  # folder_image_files reports the bad line


def load_image_folder(folder: Path | str, size: int, crop: bool = False,
                      split: str | None = None) -> torch.Tensor:
    """A folder of images (:func:`folder_image_files`) as an (N, 3, size, size) tensor in
    [-1, 1], each image loaded by :func:`load_image`'s rules: sizes may differ (each is
    resized), a non-square image is refused unless ``crop``, a file that does not decode is
    an error naming it."""
    return torch.cat([load_image(f, size, crop=crop) for f in folder_image_files(folder, split)])


def _to_rgb(img):
    from PIL import Image

    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] tensor (N×C×H×W or C×H×W) → uint8 array (N×H×W×C or H×W×C)."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).numpy()


def check_output_path(path: Path | str, force: bool = False) -> Path:
    """Refuse to overwrite without `force`, and refuse formats we cannot write, *before* any
    expensive work runs."""
    path = Path(path)
    if path.suffix.lower() not in SAVE_FORMATS:
        raise HifieditError(f"{path}: unsupported output format; use one of "
                            f"{', '.join(sorted(SAVE_FORMATS))}.")
    if path.exists() and not force:
        raise HifieditError(f"{path} exists; pass --force to overwrite it.")
    if path.is_dir():
        raise HifieditError(f"{path} is a folder; give a file name.")
    return path


def save_image(x: torch.Tensor, path: Path | str, force: bool = False) -> Path:
    """Write a (3, H, W) or (1, 3, H, W) tensor in [-1, 1] atomically (temp file + rename)."""
    from PIL import Image

    path = check_output_path(path, force)
    arr = to_uint8(x[0] if x.ndim == 4 else x)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(tmp, format=SAVE_FORMATS[path.suffix.lower()])
        if force:
            os.replace(tmp, path)
        else:
            publish_new(tmp, path)
    except FileExistsError as e:
        raise HifieditError(f"{path} was written by another process meanwhile; pass --force "
                            "to overwrite it.") from e
    except OSError as e:
        raise HifieditError(f"Could not write {path}: {e.strerror or e}.") from e
    finally:
        tmp.unlink(missing_ok=True)
    return path


def publish_new(tmp: Path, path: Path) -> None:
    """Move the finished `tmp` to `path` only if `path` does not exist, atomically: a hard
    link fails when the name is taken (two processes writing one output: one wins whole, the
    other gets FileExistsError), where a rename would silently replace the winner's file."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: claim the name exclusively first
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
        os.replace(tmp, path)
