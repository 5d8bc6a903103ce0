"""The web app's request handler without a browser: bad uploads get one clear line (the CLI's
reader's message), good ones the pipeline's own images, also when requests overlap."""

from __future__ import annotations

import re
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from hifiedit.errors import HifieditError
from hifiedit.eval.grids import to_uint8

serve = pytest.importorskip("hifiedit.serve")


@pytest.fixture(scope="module")
def service():
    g = torch.Generator().manual_seed(1)
    glyph = torch.rand((1, 3, 32, 32), generator=g) * 2 - 1
    return serve.EditService("default", device="cpu", slots=2, examples={"noise": glyph},
                             max_bytes=50_000, max_pixels=300 * 300)


def _png(path, w=32, h=32, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize("kind, message", [
    ("text", "bad.png: not an image Pillow can read."),
    ("bytes", "bad.png: the file is 0.1 MB, over the 0.05 MB limit."),
    ("pixels", "bad.png is 400×300 (0.1 megapixels), over the 0.09 megapixel limit."),
    ("oblong", "bad.png is 48×32; the model expects square images (32×32). "
               "Tick “centre-crop non-square images” to crop it."),
    ("truncated", "bad.png: could not decode the image (truncated or corrupt"),
])
def test_bad_upload_one_clear_line(service, tmp_path, kind, message):
    bad = tmp_path / "bad.png"
    if kind == "text":
        bad.write_text("not a picture")
    elif kind == "bytes":
        _png(bad, 150, 150)  # random pixels do not compress: ~68 kB
    elif kind == "pixels":
        Image.new("RGB", (400, 300), "white").save(bad)  # tiny file, too many pixels
    elif kind == "oblong":
        _png(bad, 48, 32)
    else:
        bad.write_bytes(_png(tmp_path / "ok.png").read_bytes()[:200])
    with pytest.raises(HifieditError) as e:
        service.run(bad, edits=["light-to-dark"], steps=1)
    assert str(e.value).startswith(message)
    assert str(tmp_path) not in str(e.value)  # the server's upload path is not shown
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kwargs, message", [
    ({"edits": []}, "Choose at least one edit"),
    ({"edits": ["no-such-edit"]}, "No shipped edit 'no-such-edit'"),
    ({"edits": [], "local_edit": "/nonexistent/edit"}, "No edit '/nonexistent/edit'"),
    ({"edits": ["light-to-dark"], "steps": 500}, "steps must be in [1, t0=400]"),
    ({"edits": ["light-to-dark"], "t0": 5000}, "t0 must be in [1, 1000)"),
])
def test_bad_request(service, kwargs, message):
    with pytest.raises(HifieditError, match=re.escape(message)):
        service.run(example="noise", **{"steps": 1, **kwargs})


def test_no_image_at_all(service):
    with pytest.raises(HifieditError, match="Upload an image or choose an example"):
        service.run(edits=["light-to-dark"], steps=1)


def test_good_upload_is_the_pipelines_answer(service, tmp_path):
    from hifiedit.data.images import load_image
    from hifiedit.edit import load_edit

    path = _png(tmp_path / "wide.png", 40, 32, seed=3)
    r = service.run(path, edits=["light-to-dark", "man-to-woman"], steps=2, t0=300, crop=True)
    slot = service._pool.queue[0]
    pipe = slot.pipe
    x0 = load_image(path, 32, crop=True)
    edits = [load_edit(n, pipe.backbone) for n in ("light-to-dark", "man-to-woman")]
    assert np.array_equal(r.source, to_uint8(x0[0]))
    assert np.array_equal(r.reconstruction, to_uint8(pipe.reconstruct(x0, steps=2, t0=300)[0]))
    assert np.array_equal(r.edited, to_uint8(pipe.edit(x0, edits, steps=2, t0=300)[0]))
    assert r.edited.shape == (32, 32, 3) and not np.array_equal(r.edited, r.source)
    assert "light-to-dark + man-to-woman · 2 steps · t0 300 · rectifier on" in r.summary


def test_local_edit_folder_and_rectifier_off(service):
    from hifiedit.diffusion.backbone import MODELS_DIR

    by_name = service.run(example="noise", edits=["light-to-dark"], steps=1, rectify=False)
    by_path = service.run(example="noise", local_edit=str(MODELS_DIR / "light-to-dark"),
                          steps=1, rectify=False)
    assert np.array_equal(by_name.edited, by_path.edited)
    assert "rectifier off" in by_path.summary


def test_overlapping_requests_equal_single_ones(service):
    """Two slots, four threads: the rectifier's swapped conv forwards must not cross."""
    settings = [dict(edits=["light-to-dark"], steps=2), dict(edits=["man-to-woman"], steps=2),
                dict(edits=["dark-to-light"], steps=1), dict(edits=["light-to-dark"], steps=1)]
    alone = [service.run(example="noise", **s).edited for s in settings]
    together = [None] * len(settings)

    def work(i):
        together[i] = service.run(example="noise", **settings[i]).edited

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(settings))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(alone, together):
        assert np.array_equal(a, b)


def test_gradio_handler_turns_errors_into_page_messages(service, tmp_path):
    gr = pytest.importorskip("gradio")
    app = serve.build_app(service)
    handle = next(f.fn for f in app.fns.values() if f.api_name == "edit")
    progress = lambda *a, **k: None  # noqa: E731 - the page's bar, not needed here
    bad = tmp_path / "notes.png"
    bad.write_text("hello")
    with pytest.raises(gr.Error, match="notes.png: not an image Pillow can read."):
        handle(str(bad), None, False, ["light-to-dark"], "", 1, 400, True, progress=progress)
    src, rec, out, info = handle(str(_png(tmp_path / "ok.png")), None, False, ["light-to-dark"],
                                 "", 1, 400, True, progress=progress)
    assert src.shape == rec.shape == out.shape == (32, 32, 3) and src.dtype == np.uint8
    assert "1 steps" in info
