"""`hifiedit edit INPUT`: one image or a folder of images through ``HifiEditPipeline.edit``.

Outputs are checked before any model work (nothing is overwritten without ``force``) and each
image is written atomically by :func:`hifiedit.data.images.save_image`.
"""

from __future__ import annotations

from pathlib import Path

from hifiedit.errors import HifieditError

from hifiedit.data.images import IMAGE_SUFFIXES, image_files  # noqa: F401 (re-exported)


def plan_outputs(source: Path, output: Path, force: bool = False) -> list[tuple[Path, Path]]:
    """(input, output) pairs: a file to a file, or a folder to OUTPUT/<name>.png for each of its
    images. Refuses existing outputs without ``force``, before anything runs."""
    from hifiedit.data.images import check_output_path

    source, output = Path(source), Path(output)
    if source.is_file():
        return [(source, check_output_path(output, force))]
    if not source.is_dir():
        raise HifieditError(f"{source}: no such image file or folder.")
    if output.exists() and not output.is_dir():
        raise HifieditError(f"{output} is a file; the output of a folder is a folder.")
    pairs = [(f, output / f"{f.stem}.png") for f in image_files(source)]
    existing = [str(o) for _, o in pairs if o.exists()]
    if existing and not force:
        raise HifieditError(f"{len(existing)} output(s) exist ({', '.join(existing[:3])}"
                            f"{' …' if len(existing) > 3 else ''}); pass --force to overwrite them.")
    return pairs


def edit_paths(pipe, edits, source: Path, output: Path, steps: int, t0: int | None = None,
               s_for: int | None = None, force: bool = False, crop: bool = False,
               batch_size: int = 16, progress: bool = False,
               t_edit: int | None = None) -> list[Path]:
    """Edit ``source`` (an image or a folder) into ``output``; returns the files written."""
    import torch

    from hifiedit.data.images import load_image, save_image

    pairs = plan_outputs(source, output, force)
    written = []
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i:i + batch_size]
        x0 = torch.cat([load_image(src, pipe.image_size, crop=crop) for src, _ in chunk])
        out = pipe.edit(x0, edits, steps=steps, t0=t0, s_for=s_for, t_edit=t_edit, progress=progress)
        written += [save_image(img, dst, force) for img, (_, dst) in zip(out, chunk)]
    return written
