"""`hifiedit eval recon`: how faithfully the base model reconstructs held-out images.

Methods (DESIGN §3):
  ddim   — deterministic inversion to t0 (S_for steps) then generation (S steps). Reconstructs
           well even with a poor model, so it checks the sampler more than the model.
  sdedit — stochastic forward to t0 (seeded Gaussian noise), then S DDIM steps: how well the
           model *generates* from a half-noised image, which editing and translation lean on.
  rectified — DDIM inversion with θ as for ddim, then generation with the rectifier modulating
           every step towards the original (DESIGN §1, "Rectifier"). With "ddim" in
           the same run, the report also gets the paper's Figure-1 analog next to the JSON: PSNR
           vs steps for every method (``*_psnr.png``) and a grid original | DDIM@6 |
           rectified@6 | DDIM@40 | rectified@40 (``*_grid.png``).
  rectified-other, rectified-grey — the conditioning check: the same rectified chain, but the
           rectifier is shown another image's x0 (image i gets image i+1 of the evaluated set,
           whatever the batching) or a uniform grey x0. A rectifier that uses the original image
           loses fidelity; one that ignores it does not (report key ``conditioning``).

Inverted methods run once per inversion (``inversions``: plain DDIM and/or fixed-point, see
:class:`hifiedit.diffusion.ddim.Inversion`); each row records its inversion and the U-Net passes
spent per image. Rectified rows also record their mean per-image gain over the plain row of the
same inversion and steps (``gain_db``) and the share of images it makes worse (``share_worse``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from hifiedit.errors import HifieditError
from hifiedit.models import portable_name
from hifiedit.runtime import (machine_description, precision_name, resolve_runtime,
                              write_text_atomic)

METHODS = ("ddim", "sdedit", "rectified", "rectified-other", "rectified-grey")
DEFAULT_METHODS = ("ddim", "sdedit")
INVERTED = ("ddim", "rectified", "rectified-other", "rectified-grey")
RECTIFIED = ("rectified", "rectified-other", "rectified-grey")


@dataclass(frozen=True)
class ReconConfig:
    model: str = "default"
    split: str = "test"
    steps: tuple = (6, 10, 20, 40, 100)
    t0: int = 400
    s_for: int | None = None  # fixed inversion steps; None = the same S as generation
    limit: int | None = None
    seed: int = 0
    methods: tuple = DEFAULT_METHODS
    batch_size: int = 128
    grid_images: int = 8
    # Used by the rectified methods only: "default" (the shipped one for each inversion), a
    # folder, or "none".
    rectifier: str = "default"
    inversions: tuple = ("ddim",)  # "ddim" and/or "fixed-point"
    fp_iters: int = 2
    # A folder of the user's images instead of OpenMoji (hifiedit.data.images.load_image_folder:
    # `split` selects from its manifest.jsonl when that gives splits, else every image is used);
    # `crop` centre-crops its non-square images.
    image_dir: str = ""
    crop: bool = False

    def inversion_specs(self) -> list:
        from hifiedit.diffusion.ddim import Inversion

        if not self.inversions or len(set(self.inversions)) != len(self.inversions):
            raise HifieditError(f"--inversion needs distinct methods, got {list(self.inversions)}.")
        return [Inversion(m, self.fp_iters) for m in self.inversions]

    def validate(self, num_train_timesteps: int) -> None:
        if not 1 <= self.t0 < num_train_timesteps:
            raise HifieditError(f"--t0 must be in [1, {num_train_timesteps}), got {self.t0}.")
        bad = [s for s in self.steps if not 1 <= s <= self.t0]
        if bad or (self.s_for is not None and not 1 <= self.s_for <= self.t0):
            raise HifieditError(f"Step counts must be in [1, t0={self.t0}]; got "
                                f"{bad or [self.s_for]}.")
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown:
            raise HifieditError(f"Unknown methods {unknown}; choose from {list(METHODS)}.")
        if self.limit is not None and self.limit < 1:
            raise HifieditError("--limit must be ≥ 1.")
        if set(RECTIFIED) & set(self.methods) and str(self.rectifier).lower() == "none":
            raise HifieditError("the rectified methods need a rectifier: pass --rectifier default|PATH.")
        self.inversion_specs()


def reconstruct(backbone, x0: torch.Tensor, method: str, steps: int, t0: int,
                s_for: int | None = None, generator: torch.Generator | None = None,
                rectifier=None, inversion=None, condition: torch.Tensor | None = None,
                memo: dict | None = None):
    """One reconstruction of a batch in [-1, 1] by `method` (see module docstring); returns
    (images, U-Net passes per image). ``condition`` is the x0 the rectifier sees (default:
    ``x0`` itself; the conditioning check passes another). ``memo``, a dict kept by the caller
    for this batch, holds its inversions so that every inverted method reuses them."""
    from hifiedit.diffusion.ddim import Inversion, generate, invert, stochastic_forward
    from hifiedit.diffusion.schedule import ddim_timesteps

    ac = backbone.alphas_cumprod
    eps_fn = backbone.eps
    passes = torch.zeros(len(x0), dtype=torch.long)
    with torch.no_grad():
        if method in INVERTED:  # inversion always uses the frozen base θ
            inversion = inversion or Inversion()
            key = (inversion, s_for or steps)
            memo = {} if memo is None else memo
            if key not in memo:
                traj = invert(backbone.eps, x0, ddim_timesteps(t0, s_for or steps), ac,
                              inversion=inversion)
                memo[key] = (traj.final, traj.passes)
            x_t0, passes = memo[key][0], memo[key][1].clone()
        elif method == "sdedit":
            x_t0 = stochastic_forward(x0, t0, ac, generator=generator)
        else:
            raise HifieditError(f"Unknown method {method!r}.")
        if method in RECTIFIED:
            if rectifier is None:
                raise HifieditError(f"method {method!r} needs a rectifier.")
            from hifiedit.rectifier import rectified_eps_fn

            seen = x0 if condition is None else condition
            eps_fn = rectified_eps_fn(backbone, rectifier, seen, timesteps=ddim_timesteps(t0, steps))
            passes += steps  # each rectified step also runs θ once for the rectifier's P_t
        return generate(eps_fn, x_t0, ddim_timesteps(t0, steps), ac).final, passes + steps


def conditions(method: str, images: torch.Tensor) -> torch.Tensor | None:
    """What the rectifier is shown for the whole evaluated set (module docstring)."""
    if method == "rectified-other":
        return images.roll(-1, dims=0)
    if method == "rectified-grey":
        return torch.zeros_like(images)
    return None


def _check_outputs(paths: list[Path | None], force: bool) -> None:
    for p in paths:
        if p is not None and p.exists() and not force:
            raise HifieditError(f"{p} exists; pass --force to overwrite it.")
        if p is not None:
            try:
                p.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise HifieditError(f"Cannot create {p.parent}: {e.strerror or e}.") from e


def figure_paths(json_path: Path | None, methods) -> tuple[Path | None, Path | None]:
    """(PSNR-vs-steps plot, comparison grid) written next to the JSON when rectified rows are
    asked for (the grid also needs ddim rows to compare against)."""
    if json_path is None or "rectified" not in methods:
        return None, None
    stem = json_path.with_suffix("")
    grid = Path(f"{stem}_grid.png") if "ddim" in methods else None
    return Path(f"{stem}_psnr.png"), grid


def load_rectifier(name: str, backbone, inversion=None):
    """A frozen rectifier for ``backbone`` by folder or shipped name ("default": the shipped one
    for ``inversion``), and how reports name it (:func:`hifiedit.models.portable_name`)."""
    from hifiedit.rectifier import load_rectifier as load

    kind = f" for {inversion.method} inversion" if inversion is not None else ""
    return load(name, backbone, inversion=inversion, missing=(
        f"the rectified methods need a rectifier and none is shipped{kind}: train one with "
        "`hifiedit train rectifier --out DIR`, then pass --rectifier DIR/rectifier."))


def reusable_rows(path: Path, config: ReconConfig, n_images: int, settings: dict | None = None) -> dict:
    """Rows of an earlier report (`--reuse FILE`) that this evaluation would compute again:
    same model, split, t0, seed and image count, matched by (method, steps, s_for). The
    rectified rows are never reused (the rectifier may differ)."""
    try:
        old = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise HifieditError(f"Cannot read --reuse {path}: {e}.") from e
    mine = {"model": portable_name(config.model), "split": config.split, "t0": config.t0,
            "seed": config.seed, "n_images": n_images, **(settings or {})}
    differ = {k: (old.get(k), v) for k, v in mine.items() if old.get(k) != v}
    if differ:
        raise HifieditError(f"--reuse {path} was measured under other settings "
                            f"(theirs, ours): {differ}.")
    return {(r["method"], r.get("inversion", "ddim"), r["steps"], r["s_for"]): r
            for r in old.get("rows", []) if r["method"] not in RECTIFIED}


def run_recon_eval(config: ReconConfig, json_path: Path | None = None,
                   grid_path: Path | None = None, force: bool = False,
                   progress: bool = True, backbone=None, images: torch.Tensor | None = None,
                   rectifier=None, device: str | torch.device = "cpu",
                   reuse: Path | None = None, precision: str = "fp32"):
    """Evaluate and return the report dict; optionally write the JSON and an image grid
    (rows: original, then each method × steps, for the first `grid_images` images), plus the
    Figure-1 plot and comparison grid of :func:`figure_paths`. ``rectifier`` (a Rectifier)
    overrides ``config.rectifier``. ``device``: where the networks run ("auto": a GPU if there
    is one); SDEdit noise comes from a CPU generator, so every device sees the same noise.
    ``precision``: the networks' compute precision (:func:`hifiedit.runtime.resolve_runtime`).
    ``reuse``: an earlier report whose matching rows are copied, not recomputed (only their
    `grid_images` figure images are); e.g. a rectifier's evaluation reusing the base's DDIM
    rows."""
    from tqdm import tqdm

    from hifiedit.diffusion.backbone import load_backbone
    from hifiedit.eval import metrics

    json_path = Path(json_path) if json_path is not None else None
    plot_path, compare_path = figure_paths(json_path, config.methods)
    if grid_path is not None and Path(grid_path) in (plot_path, compare_path):
        raise HifieditError(f"--grid {grid_path} is where the comparison figures go "
                            f"({compare_path}, {plot_path}); choose another name.")
    _check_outputs([json_path, grid_path, plot_path, compare_path], force)
    if backbone is None:
        rt = resolve_runtime(device, precision)
        backbone = load_backbone(config.model, device=rt.device, compute_dtype=rt.dtype)
    config.validate(backbone.num_train_timesteps)
    split = config.split
    if images is None and config.image_dir:
        from hifiedit.data.images import folder_splits, load_image_folder

        split = config.split if folder_splits(config.image_dir) else None
        images = load_image_folder(config.image_dir, backbone.sample_size, crop=config.crop,
                                   split=split)
    elif images is None:
        from hifiedit.data.openmoji import load_openmoji

        images = load_openmoji(backbone.sample_size).tensor(config.split)
    if config.limit:
        images = images[: config.limit]
    if len(images) == 0:
        raise HifieditError(f"No images in split {config.split!r}.")
    images = images.to(backbone.unet.device)
    # What else a report records about its images and precision (absent: OpenMoji, float32).
    settings = {"split": split, "image_dir": str(config.image_dir) if config.image_dir else None,
                "precision": None if backbone.compute_dtype == torch.float32
                else precision_name(backbone.compute_dtype)}
    reused = reusable_rows(reuse, config, len(images), settings) if reuse is not None else {}
    rectifiers = {}  # inversion method -> (rectifier, its name in the report)
    if set(RECTIFIED) & set(config.methods):
        for inv in config.inversion_specs():
            rectifiers[inv.method] = ((rectifier, "given") if rectifier is not None
                                      else load_rectifier(config.rectifier, backbone, inv))

    rows, firsts, per_image = [], {}, {}
    memos = {}  # per batch: its inversions, shared by the inverted methods
    methods = sorted(config.methods, key=METHODS.index)  # plain rows first: the gains need them
    jobs = [(m, inv, s) for m in methods
            for inv in (config.inversion_specs() if m in INVERTED else [None])
            for s in config.steps]
    for method, inv, steps in tqdm(jobs, desc="eval recon", disable=not progress):
        g = torch.Generator().manual_seed(config.seed)  # same noise for every S: comparable rows
        s_for = (config.s_for or steps) if inv is not None else 0
        inv_name = inv.describe() if inv is not None else None
        old = reused.get((method, inv_name or "ddim", steps, s_for))
        rect, rect_name = rectifiers.get(inv.method, (None, None)) if inv is not None else (None, None)
        cond = conditions(method, images)
        sums = {"mae": 0.0, "psnr": 0.0, "ssim": 0.0, "unet_passes": 0.0}
        psnrs, first = [], None
        # A reused row only needs its figure images.
        todo = images[: config.grid_images] if old is not None else images
        for i, batch in zip(range(0, len(todo), config.batch_size), todo.split(config.batch_size)):
            seen = None if cond is None else cond[i:i + len(batch)]
            rec, passes = reconstruct(backbone, batch, method, steps, config.t0, config.s_for, g,
                                      rect if method in RECTIFIED else None, inv, seen,
                                      memos.setdefault((i, len(batch)), {}))
            first = rec if first is None else first
            if old is not None:
                continue
            a, b = metrics.to_unit(rec), metrics.to_unit(batch)
            for name in ("mae", "ssim"):
                sums[name] += getattr(metrics, name)(a, b).sum().item()
            psnrs.append(metrics.psnr(a, b).cpu())
            sums["unet_passes"] += passes.sum().item()
        if old is None:
            psnr = torch.cat(psnrs)
            per_image[(method, inv_name, steps)] = psnr
            sums["psnr"] = psnr.sum().item()
            row = {"method": method, "s_for": s_for, "steps": steps,
                   **{k: v / len(images) for k, v in sums.items()}}
            if inv_name is not None:
                row["inversion"] = inv_name
            plain = per_image.get(("ddim", inv_name, steps))
            if method in RECTIFIED:
                row["rectifier"] = rect_name
                if plain is not None:  # image by image, against the same inversion unrectified
                    row["gain_db"] = (psnr - plain).mean().item()
                    row["share_worse"] = (psnr < plain).float().mean().item()
        else:
            row = old
        rows.append(row)
        firsts[(method, inv_name, steps)] = first[: config.grid_images].cpu()

    report = {"model": portable_name(config.model), "split": split, "t0": config.t0,
              "n_images": len(images), "seed": config.seed, "machine": machine_description(),
              "rows": rows}
    report.update({k: v for k, v in settings.items() if k != "split" and v is not None})
    checks = conditioning(per_image)
    if checks:
        report["conditioning"] = checks
    if reused:
        report["reused_rows_from"] = portable_name(reuse)
    originals = images[: config.grid_images].cpu()
    if grid_path is not None:
        from hifiedit.eval.grids import save_grid

        grid_rows = [originals, *firsts.values()]
        labels = ["original"] + [f"{m}{'' if i in (None, 'ddim') else ' ' + i}@{s}"
                                 for m, i, s in firsts]
        save_grid(torch.cat(grid_rows), grid_path, nrow=len(originals), scale=3, row_labels=labels)
    if plot_path is not None:
        plot_psnr_vs_steps(report, plot_path)
        report["plot"] = portable_name(plot_path)
    if compare_path is not None:
        first_inv = config.inversion_specs()[0].describe()
        save_comparison_grid(originals, {(m, s): v for (m, i, s), v in firsts.items()
                                         if i == first_inv}, config.steps, compare_path)
        report["comparison_grid"] = portable_name(compare_path)
    if json_path is not None:
        write_text_atomic(json_path, json.dumps(report, indent=1) + "\n")
    return report


def conditioning(per_image: dict) -> list[dict]:
    """Own-x0 PSNR minus other-x0 and grey-x0 PSNR (mean per image, dB), per inversion and S:
    near 0 means the rectifier does not read the original image."""
    out = []
    for (method, inv, steps), own in per_image.items():
        if method != "rectified":
            continue
        entry = {"inversion": inv, "steps": steps}
        for probe in ("other", "grey"):
            theirs = per_image.get((f"rectified-{probe}", inv, steps))
            if theirs is not None:
                entry[f"own_minus_{probe}_db"] = (own - theirs).mean().item()
        if len(entry) > 2:
            out.append(entry)
    return out


def comparison_steps(steps) -> tuple[int, int]:
    """The few- and many-step columns are @6 and @40; other step lists use their smallest and
    largest."""
    high = 40 if 40 in steps else max(steps)
    low = 6 if 6 in steps and 6 < high else min(steps)
    return low, high


def save_comparison_grid(originals: torch.Tensor, firsts: dict, steps, path: Path) -> Path:
    """One row per image: original | DDIM@low | rectified@low | DDIM@high | rectified@high."""
    from hifiedit.eval.grids import save_grid

    low, high = comparison_steps(steps)
    columns = [originals] + [firsts[(m, s)] for s in dict.fromkeys((low, high))
                             for m in ("ddim", "rectified")]
    tiles = torch.stack(columns, dim=1).flatten(0, 1)
    return save_grid(tiles, path, nrow=len(columns), scale=3)


def plot_psnr_vs_steps(report: dict, path: Path) -> Path:
    """PSNR against the number of generation steps, one line per method (Figure-1 analog)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    def name(r):
        inv = r.get("inversion", "ddim")
        return r["method"] if inv == "ddim" else f"{r['method']} ({inv})"

    for label in dict.fromkeys(name(r) for r in report["rows"]):
        rows = sorted((r for r in report["rows"] if name(r) == label), key=lambda r: r["steps"])
        ax.plot([r["steps"] for r in rows], [r["psnr"] for r in rows], "o-", label=label)
    steps = sorted({r["steps"] for r in report["rows"]})
    ax.set_xscale("log")
    ax.set_xticks(steps)
    ax.set_xticklabels([str(s) for s in steps])
    ax.minorticks_off()
    ax.set_xlabel("generation steps S")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(f"reconstruction, {report['split']} split, t0 {report['t0']}, "
                 f"{report['n_images']} images", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def format_table(report: dict) -> str:
    lines = [f"model {report['model']}  split {report['split']}  t0 {report['t0']}  "
             f"n_images {report['n_images']}",
             f"{'method':15} {'inversion':14} {'s_for':>5} {'steps':>5} {'passes':>6} {'MAE':>8} "
             f"{'PSNR':>7} {'SSIM':>6} {'gain':>6} {'worse':>6}"]
    for r in report["rows"]:
        gain = f"{r['gain_db']:+6.2f}" if "gain_db" in r else f"{'':6}"
        worse = f"{r['share_worse']:6.1%}" if "share_worse" in r else ""
        passes = f"{r['unet_passes']:6.0f}" if "unet_passes" in r else f"{'':6}"
        lines.append(f"{r['method']:15} {r.get('inversion') or '-':14} {r['s_for']:>5} "
                     f"{r['steps']:>5} {passes} {r['mae']:8.4f} {r['psnr']:7.2f} {r['ssim']:6.3f} "
                     f"{gain} {worse}")
    for c in report.get("conditioning", []):
        lines.append(f"conditioning {c['inversion']} S={c['steps']}: " + ", ".join(
            f"{k} {v:+.3f}" for k, v in c.items() if k.endswith("_db")))
    return "\n".join(lines)
