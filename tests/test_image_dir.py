"""--image-dir: a plain folder of the user's images (optional manifest.jsonl) for train
rectifier, train edit and eval recon, loaded by the same rules as a single image."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from hifiedit.data.images import folder_image_files, folder_splits, load_image, load_image_folder
from hifiedit.errors import HifieditError


def _img(path, w, h, seed=0, mode="RGB"):
    g = torch.Generator().manual_seed(seed)
    arr = (torch.rand((h, w, 3), generator=g) * 255).to(torch.uint8).numpy()
    Image.fromarray(arr).convert(mode).save(path)
    return path


@pytest.fixture
def mixed(tmp_path):
    """Square images of several sizes and formats, with files that are not images."""
    d = tmp_path / "faces"
    d.mkdir()
    _img(d / "b.png", 16, 16, 1)
    _img(d / "a.jpg", 40, 40, 2)
    _img(d / "c.webp", 9, 9, 3)
    _img(d / "d.png", 24, 24, 4, mode="RGBA")
    (d / "notes.txt").write_text("not an image")
    (d / "sub").mkdir()
    _img(d / "sub" / "deeper.png", 16, 16, 5)  # not recursive
    _img(d / ".hidden.png", 16, 16, 6)
    return d


def test_mixed_sizes_become_one_batch_in_name_order(mixed):
    files = folder_image_files(mixed)
    assert [f.name for f in files] == ["a.jpg", "b.png", "c.webp", "d.png"]
    x = load_image_folder(mixed, 16)
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32
    assert -1 <= x.min() and x.max() <= 1
    for i, f in enumerate(files):  # the same rules as one image
        assert torch.equal(x[i], load_image(f, 16)[0])


def test_non_square_is_refused_unless_cropped(mixed):
    _img(mixed / "wide.png", 30, 20)
    with pytest.raises(HifieditError, match=r"wide.png is 30×20.*--crop"):
        load_image_folder(mixed, 16)
    x = load_image_folder(mixed, 16, crop=True)
    assert x.shape == (5, 3, 16, 16)


def test_an_image_that_does_not_decode_is_named(mixed):
    (mixed / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(HifieditError, match="broken.png"):
        load_image_folder(mixed, 16)


def test_an_empty_or_missing_folder_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("x")
    with pytest.raises(HifieditError, match="holds no images"):
        load_image_folder(tmp_path / "empty", 16)
    with pytest.raises(HifieditError, match="is not a folder"):
        load_image_folder(tmp_path / "nope", 16)


def _manifest(folder, entries):
    (folder / "manifest.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))


def test_manifest_lists_files_in_its_order_and_selects_splits(mixed):
    _manifest(mixed, [{"file": "d.png", "split": "train"}, {"file": "sub/deeper.png", "split": "val"},
                      {"file": "a.jpg", "split": "train"}])
    assert folder_splits(mixed) == {"train", "val"}
    assert [f.name for f in folder_image_files(mixed, "train")] == ["d.png", "a.jpg"]
    assert [f.name for f in folder_image_files(mixed, "val")] == ["deeper.png"]
    with pytest.raises(HifieditError, match="no images in split 'test'"):
        folder_image_files(mixed, "test")
    _manifest(mixed, [{"file": "c.webp"}, {"file": "b.png"}])  # no splits: all, any split asked
    assert folder_splits(mixed) == set()
    assert [f.name for f in folder_image_files(mixed, "train")] == ["c.webp", "b.png"]


@pytest.mark.parametrize("entries, message", [
    ([{"file": "gone.png"}], "1 missing file"),
    ([{"file": "notes.txt"}], "not images"),
    (["just a string"], r"manifest.jsonl:1: expected a JSON object"),
])
def test_bad_manifests(mixed, entries, message):
    _manifest(mixed, entries)
    with pytest.raises(HifieditError, match=message):
        load_image_folder(mixed, 16)


def test_rectifier_training_images_follow_the_manifest_splits(mixed):
    from hifiedit.train.rectifier import RectifierTrainConfig, _load_images

    config = RectifierTrainConfig(image_dir=str(mixed), n_images=0)
    train, val = _load_images(config, 16)
    assert train.shape[0] == 4 and val.shape[0] == 0  # no manifest: all trained on, none held out
    _manifest(mixed, [{"file": "a.jpg", "split": "train"}, {"file": "b.png", "split": "train"},
                      {"file": "c.webp", "split": "val"}, {"file": "d.png", "split": "test"}])
    train, val = _load_images(config, 16)
    assert torch.equal(train, load_image_folder(mixed, 16, split="train"))
    assert torch.equal(val, load_image(mixed / "c.webp", 16))


def test_edit_training_images_come_from_the_folder(mixed):
    from hifiedit.train.edit import EditTrainConfig, training_images

    config = EditTrainConfig(src="a", tgt="b", image_dir=str(mixed), images=2)
    x = training_images(config, 16)
    assert x.shape == (2, 3, 16, 16)
    full = load_image_folder(mixed, 16)
    assert all(any(torch.equal(a, b) for b in full) for a in x)


def test_eval_recon_on_a_folder(mixed, tiny_model_dir, tmp_path, capsys):
    from hifiedit.cli import main

    report = tmp_path / "r.json"
    assert main(["eval", "recon", "--model", str(tiny_model_dir), "--image-dir", str(mixed),
                 "--steps", "2", "--t0", "50", "--methods", "ddim", "--device", "cpu",
                 "--json", str(report)]) == 0
    r = json.loads(report.read_text())
    assert r["n_images"] == 4 and r["image_dir"] == str(mixed) and r["split"] is None
    assert r["rows"][0]["psnr"] > 20
    _img(mixed / "wide.png", 30, 20)
    assert main(["eval", "recon", "--model", str(tiny_model_dir), "--image-dir", str(mixed),
                 "--steps", "2", "--t0", "50", "--methods", "ddim", "--json", str(report),
                 "--force"]) == 1
    assert "--crop" in capsys.readouterr().err
