import numpy as np
import pytest
import torch
from PIL import Image

from hifiedit.cli import main
from hifiedit.data.images import load_image, save_image
from hifiedit.diffusion.backbone import load_backbone
from hifiedit.errors import HifieditError
from hifiedit.pipeline import HifiEditPipeline


def _png(path, size=(16, 16), mode="RGB", color=(200, 30, 30)):
    Image.new(mode, size, color if mode != "RGBA" else (*color, 0)).save(path)
    return path


def test_image_round_trip(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (1, 3, 16, 16), generator=g).float() / 127.5 - 1
    save_image(x, tmp_path / "a.png")
    torch.testing.assert_close(load_image(tmp_path / "a.png", 16), x)
    with pytest.raises(HifieditError, match="--force"):
        save_image(x, tmp_path / "a.png")
    save_image(-x, tmp_path / "a.png", force=True)
    torch.testing.assert_close(load_image(tmp_path / "a.png", 16), -x)


def test_transparent_becomes_white_and_sizes(tmp_path):
    x = load_image(_png(tmp_path / "t.png", (32, 32), "RGBA"), 16)  # fully transparent
    assert x.shape == (1, 3, 16, 16) and torch.allclose(x, torch.ones_like(x))
    grey = load_image(_png(tmp_path / "g.png", (16, 16), "L", 128), 16)
    assert grey.shape == (1, 3, 16, 16)
    with pytest.raises(HifieditError, match="--crop"):
        load_image(_png(tmp_path / "w.png", (40, 30)), 16)
    assert load_image(tmp_path / "w.png", 16, crop=True).shape == (1, 3, 16, 16)


@pytest.mark.parametrize("content, message", [
    (b"not an image", "not an image"),
    (None, "truncated"),
])
def test_bad_image_files(tmp_path, content, message):
    path = tmp_path / "bad.png"
    if content is None:  # a real PNG cut short
        data = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(data).save(tmp_path / "full.png")
        content = (tmp_path / "full.png").read_bytes()[:300]
    path.write_bytes(content)
    with pytest.raises(HifieditError, match=message):
        load_image(path, 16)
    with pytest.raises(HifieditError, match="no such image"):
        load_image(tmp_path / "missing.png", 16)


def test_pipeline_reconstruct_matches_samplers(tiny_model_dir, tiny_images):
    from hifiedit.diffusion import ddim_timesteps, generate, invert

    pipe = HifiEditPipeline.from_pretrained(tiny_model_dir, rectifier=None)
    bb = pipe.backbone
    with torch.no_grad():
        expected = generate(bb.eps, invert(bb.eps, tiny_images, ddim_timesteps(200, 10),
                                           bb.alphas_cumprod).final,
                            ddim_timesteps(200, 4), bb.alphas_cumprod).final
    out = pipe.reconstruct(tiny_images, steps=4, t0=200, s_for=10)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("kw, message", [
    (dict(steps=0, t0=100), "steps must be"),
    (dict(steps=500, t0=100), "steps must be"),
    (dict(steps=5, t0=1000), "t0 must be"),
])
def test_pipeline_refuses_absurd_steps(tiny_model_dir, tiny_images, kw, message):
    pipe = HifiEditPipeline(load_backbone(tiny_model_dir))
    with pytest.raises(HifieditError, match=message):
        pipe.reconstruct(tiny_images, **kw)


def test_pipeline_refuses_wrong_shapes(tiny_model_dir):
    pipe = HifiEditPipeline(load_backbone(tiny_model_dir))
    with pytest.raises(HifieditError, match="expected images of shape"):
        pipe.reconstruct(torch.zeros(1, 3, 8, 8), steps=2)


@pytest.mark.parametrize("step_embedding", [False, True])  # True: the pipeline passes its grid
def test_pipeline_with_zero_rectifier_equals_plain(tiny_model_dir, tiny_images, tmp_path,
                                                   step_embedding):
    from hifiedit.rectifier import Rectifier, RectifierConfig

    bb = load_backbone(tiny_model_dir)
    config = RectifierConfig(encoder_channels=(8, 8), feature_dim=16, branch_hidden=8,
                             step_embedding=step_embedding)
    Rectifier.for_unet(bb.unet, config).save_pretrained(tmp_path / "rect")
    pipe = HifiEditPipeline.from_pretrained(tiny_model_dir, rectifier=tmp_path / "rect")
    assert pipe.rectifier is not None
    x = tiny_images[:2]
    torch.testing.assert_close(pipe.reconstruct(x, steps=3, t0=100),
                               pipe.reconstruct(x, steps=3, t0=100, rectify=False),
                               atol=1e-5, rtol=1e-5)


def test_cli_reconstruct(tiny_model_dir, tmp_path, capsys):
    img = _png(tmp_path / "in.png")
    out = tmp_path / "out.png"
    args = ["reconstruct", str(img), "--steps", "3", "--t0", "100", "--model", str(tiny_model_dir),
            "-o", str(out)]
    assert main(args) == 0 and out.is_file()
    assert Image.open(out).size == (16, 16)
    before = out.read_bytes()
    assert main(args) == 1  # refuses to overwrite
    assert "--force" in capsys.readouterr().err and out.read_bytes() == before
    assert main(args + ["--force", "--no-rectifier"]) == 0
