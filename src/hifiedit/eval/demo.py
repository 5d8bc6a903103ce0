"""`hifiedit demo` / `make demo`: the main job on the embedded default.

Reconstruction of a few test-split emoji at 6 and 40 steps (DDIM, rectified DDIM when the
default base and its rectifier ship, SDEdit), then, when default edits and the judge ship,
those edits on test-split images with their true targets (the README's editing figures, small).
"""

from __future__ import annotations

from pathlib import Path

from hifiedit.eval.recon import DEFAULT_METHODS, ReconConfig, format_table, run_recon_eval

# Shipped edits the demo applies, when present (the default domain's edits).
DEMO_EDITS = ("light-to-dark", "dark-to-light", "man-to-woman", "neutral-to-smiling")


def shipped_demo_edits() -> list[str]:
    from hifiedit.models import is_shipped

    return [e for e in DEMO_EDITS if is_shipped(e, "edit")]


def run_demo(out: Path, model: str = "default", n_images: int = 8, force: bool = False,
             device: str = "cpu", precision: str = "fp32") -> str:
    """Write reconstructions.png + metrics.json (and edits.png + edits.json) under `out`;
    return the printed summary. `device`, `precision`: :func:`hifiedit.runtime.resolve_runtime`."""
    from hifiedit.models import is_shipped
    from hifiedit.rectifier import DEFAULT_RECTIFIERS

    out = Path(out)
    rectify = model == "default" and is_shipped("default", "rectifier")
    methods = ("ddim", "rectified", "sdedit") if rectify else DEFAULT_METHODS
    # Both inversions, when each has its rectifier (or none is used): fixed-point inversion is
    # what `hifiedit reconstruct` does by default.
    both = not rectify or is_shipped(DEFAULT_RECTIFIERS["fixed-point"], "rectifier")
    config = ReconConfig(model=model, steps=(6, 40), limit=n_images, grid_images=n_images,
                         methods=methods, inversions=("ddim", "fixed-point") if both else ("ddim",))
    report = run_recon_eval(config, json_path=out / "metrics.json",
                            grid_path=out / "reconstructions.png", force=force, device=device,
                            precision=precision)
    text = (format_table(report) + f"\n\nwrote {out / 'reconstructions.png'} (rows: original, "
            + ", ".join(f"{r['method']}{'' if r.get('inversion') in (None, 'ddim') else ' ' + r['inversion']}"
                        f"@{r['steps']}" for r in report["rows"])
            + f") and {out / 'metrics.json'}")
    edits = shipped_demo_edits() if model == "default" else []
    if edits and _judge_ships():
        from hifiedit.eval.edit_eval import EditEvalConfig, format_table as edit_table, run_edit_eval

        config = EditEvalConfig(edits=tuple(edits), steps=(6,), limit=n_images,
                                grid_images=n_images)
        report = run_edit_eval(config, json_path=out / "edits.json", grid_path=out / "edits.png",
                               force=force, device=device, precision=precision)
        text += (f"\n\n{edit_table(report)}\n\nwrote {out / 'edits.png'} (per edit: source | true "
                 f"target | edited at 6 steps) and {out / 'edits.json'}")
    return text


def _judge_ships() -> bool:
    from hifiedit.models import is_shipped

    return is_shipped("judge", "clip")
