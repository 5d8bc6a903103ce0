"""Reading and writing user images, with clear errors and no silent overwrites."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from hifiedit.errors import HifieditError

SAVE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP"}


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
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise HifieditError(f"Could not write {path}: {e.strerror or e}.") from e
    return path
