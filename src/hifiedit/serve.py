"""`hifiedit serve`: a web page for editing one's own image with the shipped edits.

Two layers. :class:`EditService` holds the models and answers one request (an image file or an
example, the edits, steps, t0, rectifier on/off) with source | reconstruction | edited; it
knows nothing of the web. :func:`build_app` puts a Gradio page in front of it and
:func:`serve` runs that page. Like the CLI this is a top layer: no library module imports it.

Concurrency. The rectified ε swaps the ``forward`` of the U-Net's modulated convolutions for
the length of one call (:func:`hifiedit.rectifier.modulate.per_sample_convs`), and an edit's ψ
is a U-Net of its own; two requests must never run through the same modules at once. So the
service loads one pipeline (with its own copies of every edit) per concurrent slot and hands
each request a pipeline from that pool; Gradio's queue admits at most that many at once.

Uploads. Gradio stores uploads in ``GRADIO_TEMP_DIR``; :func:`serve` points it at a fresh
temporary folder that Gradio prunes while running and that is removed when the server stops.
Images are read by :func:`hifiedit.data.images.load_image`, the CLI's own reader, with caps on
bytes and pixels, so a bad upload gets the CLI's message.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hifiedit.errors import HifieditError

MAX_UPLOAD_BYTES = 10_000_000
MAX_UPLOAD_PIXELS = 16_000_000
# Examples from the test split (never trained on): (skin tone, gender) of glyphs the shipped
# edits act on, the first of each in the split's order.
EXAMPLE_KINDS = (("light", "man"), ("dark", "woman"), ("light", "woman"), ("dark", "man"),
                 ("medium", "man"), ("medium-light", "woman"))
_CROP_HINT = ("Pass --crop to centre-crop it.", "Tick “centre-crop non-square images” to crop it.")


def shipped_edits() -> list[str]:
    """The names of the edits shipped with hifiedit, sorted."""
    from hifiedit.diffusion.backbone import MODELS_DIR
    from hifiedit.edit.params import CONFIG_NAME, WEIGHTS_NAME

    return sorted(p.parent.name for p in MODELS_DIR.glob(f"*/{WEIGHTS_NAME}")
                  if (p.parent / CONFIG_NAME).is_file())


def openmoji_examples(n: int = len(EXAMPLE_KINDS), size: int = 32) -> dict[str, torch.Tensor]:
    """Up to `n` test-split OpenMoji glyphs, {name: (1, 3, size, size) tensor in [-1, 1]}."""
    from hifiedit.data.openmoji import load_openmoji

    if n <= 0:
        return {}
    data = load_openmoji(size, progress=False)
    test = [r for r in data.records if r.split == "test"]
    picked = [next((r for r in test if (r.skin_tone, r.gender) == kind), None)
              for kind in EXAMPLE_KINDS]
    picked = [r for r in picked if r is not None][:n]
    return {r.name: data.tensor_at([r.index]) for r in picked}


@dataclass
class EditResult:
    """Source (after crop/resize), reconstruction and edited image as H×W×3 uint8 arrays."""

    source: np.ndarray
    reconstruction: np.ndarray
    edited: np.ndarray
    seconds: float
    summary: str


class _Slot:
    """One pipeline with its own edits: used by one request at a time."""

    def __init__(self, model: str, device: torch.device, edits: list[str]):
        from hifiedit.edit import load_edit
        from hifiedit.pipeline import HifiEditPipeline

        self.pipe = HifiEditPipeline.from_pretrained(model, device=device)
        self.edits = {name: load_edit(name, self.pipe.backbone) for name in edits}
        self.local: dict[str, object] = {}  # resolved folder → Edit, loaded on first use

    def edit(self, name: str):
        if name in self.edits:
            return self.edits[name]
        from hifiedit.edit import load_edit

        key = str(Path(name).expanduser().resolve())
        if key not in self.local:
            if len(self.local) >= 8:  # a few local folders stay loaded; older ones are dropped
                self.local.pop(next(iter(self.local)))
            self.local[key] = load_edit(Path(name).expanduser(), self.pipe.backbone)
        return self.local[key]


class EditService:
    """The models behind the page, loaded once: `slots` pipelines for as many concurrent
    requests, the shipped edits on each, and the example images."""

    def __init__(self, model: str = "default", device: str = "cpu", slots: int = 1,
                 examples: dict[str, torch.Tensor] | None = None,
                 max_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int = MAX_UPLOAD_PIXELS):
        from hifiedit.runtime import resolve_device

        if slots < 1:
            raise HifieditError(f"max concurrency must be ≥ 1, got {slots}.")
        self.device = resolve_device(device)
        self.max_bytes, self.max_pixels = max_bytes, max_pixels
        self.edit_names = shipped_edits() if model == "default" else []
        self._pool: queue.Queue[_Slot] = queue.Queue()
        for _ in range(slots):
            self._pool.put(_Slot(model, self.device, self.edit_names))
        self.slots = slots
        first = self._pool.queue[0].pipe
        self.image_size, self.has_rectifier = first.image_size, first.rectifier is not None
        self.examples = dict(examples or {})

    def load(self, upload: str | Path | None, example: str | None, crop: bool) -> torch.Tensor:
        """The request's image as a (1, 3, S, S) tensor: an upload (checked as the CLI checks
        files, plus size caps) or else a named example."""
        from hifiedit.data.images import load_image

        if upload:
            path = Path(upload)
            try:
                return load_image(path, self.image_size, crop=bool(crop), max_bytes=self.max_bytes,
                                  max_pixels=self.max_pixels)
            except HifieditError as e:
                # The temporary upload path means nothing to the person who sent the file.
                raise HifieditError(str(e).replace(str(path), path.name)
                                    .replace(*_CROP_HINT)) from None
        if example:
            if example not in self.examples:
                raise HifieditError(f"No example {example!r}.")
            return self.examples[example]
        raise HifieditError("Upload an image or choose an example.")

    def run(self, upload: str | Path | None = None, example: str | None = None,
            edits: list[str] | tuple[str, ...] = (), local_edit: str | None = None,
            steps: int = 6, t0: int = 400, rectify: bool = True, crop: bool = False,
            progress: bool = False) -> EditResult:
        """Reconstruct and edit one image (the edits mixed, as `hifiedit edit --edit A --edit B`).
        Every bad request raises a HifieditError with one clear line."""
        names = [*(edits or []), *([local_edit.strip()] if local_edit and local_edit.strip() else [])]
        if not names:
            raise HifieditError("Choose at least one edit (or give a local edit folder).")
        unknown = [n for n in edits or [] if n not in self.edit_names]
        if unknown:
            raise HifieditError(f"No shipped edit {unknown[0]!r}; shipped: "
                                f"{', '.join(self.edit_names) or 'none'}.")
        try:
            steps, t0 = int(steps), int(t0)
        except (TypeError, ValueError):
            raise HifieditError(f"steps and t0 must be whole numbers, got {steps!r} and {t0!r}.") from None
        if rectify and not self.has_rectifier:
            raise HifieditError("This model has no rectifier; untick “rectifier”.")
        x0 = self.load(upload, example, crop)
        slot = self._pool.get()
        try:
            chosen = [slot.edit(n) for n in names]
            start = time.perf_counter()
            with torch.no_grad():
                rec = slot.pipe.reconstruct(x0, steps=steps, t0=t0, rectify=bool(rectify),
                                            progress=progress)
                mid = time.perf_counter()
                out = slot.pipe.edit(x0, chosen, steps=steps, t0=t0, rectify=bool(rectify),
                                     progress=progress)
            end = time.perf_counter()
        finally:
            self._pool.put(slot)
        from hifiedit.eval.grids import to_uint8

        summary = (f"{end - start:.2f} s on {self.device.type} (reconstruction {mid - start:.2f} s, "
                   f"edit {end - mid:.2f} s) · {' + '.join(Path(n).name for n in names)} · "
                   f"{steps} steps · t0 {t0} · rectifier {'on' if rectify else 'off'}")
        return EditResult(to_uint8(x0[0]), to_uint8(rec[0]), to_uint8(out[0]), end - start, summary)


# ------------------------------------------------------------------ the page

CSS = """
.pixels img { image-rendering: pixelated; object-fit: contain; width: 100%; height: 100%; }
"""


def build_app(service: EditService):
    """The Gradio page in front of `service` (queue not yet configured)."""
    import gradio as gr

    def handle(upload, example, crop, edits, local_edit, steps, t0, rectify,
               progress=gr.Progress(track_tqdm=True)):
        progress(0, desc="reading the image")
        try:
            r = service.run(upload, example, edits, local_edit, steps, t0, rectify, crop,
                            progress=True)
        except HifieditError as e:
            raise gr.Error(str(e), print_exception=False) from None
        return r.source, r.reconstruction, r.edited, r.summary

    def preview(example):
        return _preview(service, example)

    names = service.edit_names
    with gr.Blocks(title="hifiedit", delete_cache=(600, 1800)) as app:
        gr.Markdown(
            "## hifiedit: high-fidelity diffusion-based image editing\n"
            f"Invert an image with the diffusion model, then generate it back "
            f"(reconstruction) and with the chosen edits (several are mixed). Images are "
            f"worked on at {service.image_size}×{service.image_size}; larger square ones are "
            f"resized. Uploads up to {service.max_bytes / 1e6:g} MB and "
            f"{service.max_pixels / 1e6:g} megapixels.")
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="Your image (PNG, JPEG, WebP, BMP)", type="filepath",
                                 elem_id="upload")
                example = gr.Dropdown(choices=list(service.examples), value=None,
                                      label="…or a test-split example", elem_id="example")
                crop = gr.Checkbox(label="centre-crop non-square images", value=False,
                                   elem_id="crop")
                edits = gr.CheckboxGroup(choices=names, value=names[:1], label="Shipped edits",
                                         elem_id="edits")
                local_edit = gr.Textbox(label="…and/or a local edit folder (on this machine)",
                                        placeholder="path/to/edit", elem_id="local-edit")
                with gr.Row():
                    steps = gr.Slider(1, 100, value=6, step=1, label="steps", elem_id="steps")
                    t0 = gr.Slider(1, 999, value=400, step=1, label="t0", elem_id="t0")
                rectify = gr.Checkbox(label="rectifier", value=service.has_rectifier,
                                      elem_id="rectify")
                run = gr.Button("Edit", variant="primary", elem_id="run")
            with gr.Column(scale=2):
                with gr.Row():
                    kw = dict(type="numpy", format="png", interactive=False, height=224,
                              elem_classes=["pixels"], buttons=["download"])
                    source = gr.Image(label="source", elem_id="source", **kw)
                    recon = gr.Image(label="reconstruction", elem_id="reconstruction", **kw)
                    edited = gr.Image(label="edited", elem_id="edited", **kw)
                info = gr.Markdown(elem_id="info")
        example.change(preview, inputs=example, outputs=source, api_name=False, queue=False)
        run.click(handle, inputs=[upload, example, crop, edits, local_edit, steps, t0, rectify],
                  outputs=[source, recon, edited, info], api_name="edit")
    return app


def _preview(service: EditService, example: str | None):
    from hifiedit.eval.grids import to_uint8

    return to_uint8(service.examples[example][0]) if example in service.examples else None


@contextlib.contextmanager
def upload_folder():
    """A fresh temporary folder for Gradio's uploads and outputs, removed on leaving. Gradio
    reads ``GRADIO_TEMP_DIR`` at import, so this must be entered before it is imported."""
    tmp = Path(tempfile.mkdtemp(prefix="hifiedit-serve-"))
    os.environ["GRADIO_TEMP_DIR"] = str(tmp)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def launch(service: EditService, host: str = "127.0.0.1", port: int = 7860, block: bool = True):
    """Serve the page for `service`; requests queue, `service.slots` of them run at once.
    With ``block=False`` returns the running app (``app.close()`` stops it)."""
    app = build_app(service)
    app.queue(default_concurrency_limit=service.slots, max_size=64 * service.slots)
    # An upload larger than twice the cap is cut off by Gradio; up to that, the service
    # refuses it with its own message.
    app.launch(server_name=host, server_port=port, max_file_size=2 * service.max_bytes, css=CSS,
               ssr_mode=False, show_error=True, quiet=not block, inbrowser=False,
               prevent_thread_lock=not block)
    return app


def serve(host: str = "127.0.0.1", port: int = 7860, device: str = "auto",
          max_concurrency: int = 1, model: str = "default", examples: int = len(EXAMPLE_KINDS),
          max_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int = MAX_UPLOAD_PIXELS) -> None:
    """`hifiedit serve`: load the models, then serve the page until interrupted (Ctrl-C or
    SIGTERM); uploads live in a temporary folder that goes with the server."""
    # SIGTERM as Ctrl-C: Gradio then closes its server threads, and upload_folder cleans up.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with upload_folder() as tmp:
        service = EditService(model, device, max_concurrency,
                              openmoji_examples(examples) if model == "default" else {},
                              max_bytes, max_pixels)
        print(f"hifiedit serve: {max_concurrency} pipeline(s) on {service.device}; uploads are "
              f"kept in {tmp} until the server stops", flush=True)
        launch(service, host, port)
