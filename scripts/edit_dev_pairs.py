"""Skin-tone and man ↔ woman edits measured on dev pairs, off the val and test splits.

Dev pairs: train-split pairs (light→dark by default; `--src dark --tgt light` for the way
back, `--src man --tgt woman` for gender) whose source is not among the training images of
any given edit (the default samples, up to the largest `--images` among them). Used to
choose settings (t_edit, λ_L1, lr, number of training images) without touching the val or
test split (val has only 8 light→dark pairs: too few to choose by).

    python scripts/edit_dev_pairs.py --edit runs/edits/A/edit --edit ... [--n 48] [--steps 6] \
        [--src light --tgt dark] [--rectify trained|on|off|below-t-edit|on-edited] --json FILE

Each edit is applied as `hifiedit edit` applies it (its own t0, t_edit and rectifier; `--rectify
on|off|below-t-edit|on-edited` overrides the last, to see what the rectifier does to an edit). Prints and writes
{"rows": [{"edit", "t_edit", "steps", "rectified", "gt_mae", "preserve_mae", "change_mae", "n_images"}, ...],
"unchanged_gt_mae"}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from hifiedit.data.openmoji import SKIN_TONES, edit_pairs, load_openmoji
from hifiedit.diffusion import generate
from hifiedit.edit import load_edit, within_interval
from hifiedit.eval.edit_eval import (change_errors, edit_label, gt_errors, preserve_errors,
                                     preserve_mask)
from hifiedit.pipeline import HifiEditPipeline
from hifiedit.runtime import machine_description, write_text_atomic
from hifiedit.train.edit import EditTrainConfig, training_images


def dev_pairs(data, n: int, seed: int = 0, src: str = "light", tgt: str = "dark",
              n_trained: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    records = [data.records[i] for i in data.indices("train")]
    kind = "skin_tone" if src in SKIN_TONES else "gender"
    pairs = sorted((p.source, p.target) for p in edit_pairs(records) if p.kind == kind
                   and p.source_attr == src and p.target_attr == tgt)
    text = (lambda v: f"{v} skin tone") if kind == "skin_tone" else (lambda v: v)
    trained = training_images(EditTrainConfig(src=text(src), tgt=text(tgt), images=n_trained),
                              data.images.shape[1])
    sources = data.tensor_at([s for s, _ in pairs])
    unseen = [i for i in range(len(pairs)) if not any(torch.equal(sources[i], t) for t in trained)]
    pick = torch.randperm(len(unseen), generator=torch.Generator().manual_seed(seed))[:n]
    keep = [unseen[i] for i in pick]
    return sources[keep], data.tensor_at([pairs[i][1] for i in keep])


RECTIFY = {"trained": None, "on": True, "off": False}  # --rectify → pipe.edit(rectify=...)


@torch.no_grad()
def edit_with_rectifier_variant(pipe, x0, edit, steps: int, variant: str) -> torch.Tensor:
    """Like `pipe.edit`, with the rectifier used otherwise: "below-t-edit", ψ unrectified at
    levels ≥ t_edit and the rectified base below; "on-edited", rectified throughout but with
    R conditioned on the unrectified edit's output instead of the source image."""
    grid = pipe.timesteps(edit.t0, steps)
    if variant == "below-t-edit":
        psi_cond, base_cond = None, x0
    else:
        psi_cond = base_cond = pipe.edit(x0, edit, steps=steps, rectify=False)
    eps = within_interval(pipe.eps_fn(psi_cond, edit.unet(pipe.backbone), grid),
                          lambda: pipe.eps_fn(base_cond, None, grid), edit.t_edit)
    x_t0 = pipe.invert(x0, edit.t0, steps).final
    return generate(eps, x_t0, grid, pipe.backbone.alphas_cumprod, pipe.conventions).final


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edit", action="append", required=True)
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--src", default="light", help="source skin tone, or man / woman")
    ap.add_argument("--tgt", default="dark", help="target skin tone, or woman / man")
    ap.add_argument("--rectify", choices=["trained", "on", "off", "below-t-edit", "on-edited"],
                    default="trained",
                    help="apply the rectifier as each edit was trained (default), always, never, "
                         "only to the base's steps below t_edit (the edit's steps unrectified), or "
                         "always but conditioned on the unrectified edit's output, not the source")
    ap.add_argument("--json")
    args = ap.parse_args()
    pipe = HifiEditPipeline.from_pretrained()
    edits = {name: load_edit(name, pipe.backbone) for name in args.edit}
    # pairs none of the edits trained on (the default samples grow by extension with --images)
    n_trained = max(e.info.get("n_train_images") or 64 for e in edits.values())
    sources, targets = dev_pairs(load_openmoji(pipe.image_size), args.n, src=args.src,
                                 tgt=args.tgt, n_trained=n_trained)
    mask = preserve_mask(sources, targets)
    rows = []
    for name, edit in edits.items():
        if args.rectify in ("below-t-edit", "on-edited"):
            out = edit_with_rectifier_variant(pipe, sources, edit, args.steps, args.rectify)
        else:
            out = pipe.edit(sources, edit, steps=args.steps, rectify=RECTIFY[args.rectify])
        rows.append({"edit": edit_label(name), "t_edit": edit.t_edit, "steps": args.steps,
                     "rectified": edit.rectified if args.rectify == "trained"
                     else RECTIFY.get(args.rectify, args.rectify),
                     "gt_mae": gt_errors(out, targets)[0].mean().item(),
                     "preserve_mae": preserve_errors(out, sources, mask).nanmean().item(),
                     "change_mae": change_errors(out, targets, mask).nanmean().item(),
                     "n_images": len(sources)})
        print(json.dumps(rows[-1]), flush=True)
    report = {"purpose": __doc__.splitlines()[0], "pairs": f"{args.src} → {args.tgt}",
              "excluded_training_images": n_trained,
              "machine": machine_description(),
              "unchanged_gt_mae": gt_errors(sources, targets)[0].mean().item(), "rows": rows}
    if args.json:
        write_text_atomic(Path(args.json), json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}))


if __name__ == "__main__":
    main()
