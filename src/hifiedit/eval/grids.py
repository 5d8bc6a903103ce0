"""Image grids and tensor ↔ picture conversion (pictures, not only numbers)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from hifiedit.data.images import to_uint8


def make_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 1, scale: int = 1):
    """A PIL image tiling N images row by row on a white background."""
    from PIL import Image

    arr = to_uint8(images)
    n, h, w, c = arr.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    grid = np.full((ncol * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, np.uint8)
    for i in range(n):
        r, q = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        grid[y : y + h, x : x + w] = arr[i]
    img = Image.fromarray(grid.squeeze(-1) if c == 1 else grid)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    return img


def label_rows(img, labels: list[str], row_height: int, pad: int = 1):
    """Prefix each grid row with a text label (Pillow's built-in font), so a picture says
    what each row is without the README beside it."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    width = 8 + max(int(ImageDraw.Draw(img).textlength(t, font=font)) for t in labels)
    out = Image.new(img.mode, (img.width + width, img.height), "white")
    out.paste(img, (width, 0))
    draw = ImageDraw.Draw(out)
    for i, text in enumerate(labels):
        y = pad + i * (row_height + pad) + row_height // 2
        draw.text((4, y), text, fill="black", font=font, anchor="lm")
    return out


def save_grid(images: torch.Tensor, path: Path, nrow: int | None = None, scale: int = 1,
              row_labels: list[str] | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = make_grid(images, nrow=nrow, scale=scale)
    if row_labels:
        img = label_rows(img, row_labels, images.shape[-2] * scale, pad=scale)
    img.save(path)
    return path
