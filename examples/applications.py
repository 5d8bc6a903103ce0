"""The README's applications figure (the paper's applications: translation and out-of-domain
editing), from the shipped default models:

* image-to-image translation of rough colour-blob sketches (examples/sketches, not OpenMoji
  renders) into the emoji domain: stochastic forward to t0, then DDIM, as `hifiedit translate`;
* out-of-domain editing of the same sketches with shipped edits, as `hifiedit edit`.

    python examples/make_sketches.py
    python examples/applications.py --edit light-to-dark --edit man-to-woman --out docs/applications.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from hifiedit.data.images import load_image
from hifiedit.edit import load_edit
from hifiedit.eval.grids import save_grid
from hifiedit.pipeline import HifiEditPipeline

HERE = Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sketches", default=str(HERE / "sketches"))
    p.add_argument("--t0", type=lambda s: [int(v) for v in s.split(",")], default=[200, 300, 400])
    p.add_argument("--edit", action="append", default=[], help="shipped edit names or folders")
    p.add_argument("--edit-steps", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args()

    pipe = HifiEditPipeline.from_pretrained("default")
    files = sorted(Path(args.sketches).glob("*.png"))
    x = torch.cat([load_image(f, pipe.image_size) for f in files])
    rows, labels = [x], ["sketch"]
    for t0 in args.t0:
        g = torch.Generator().manual_seed(args.seed)
        rows.append(pipe.translate(x, t0=t0, steps=40, generator=g))
        labels.append(f"translate t0={t0}")
    for name in args.edit:
        edit = load_edit(name, pipe.backbone)
        rows.append(pipe.edit(x, edit, steps=args.edit_steps))
        labels.append(f"{Path(name).name}@{args.edit_steps}")
    save_grid(torch.cat(rows), Path(args.out), nrow=len(files), scale=3, row_labels=labels)
    print(f"wrote {args.out} ({', '.join(f.stem for f in files)})")


if __name__ == "__main__":
    main()
