"""--device / --precision: one resolution for every command, and what bf16 does to the numbers
(the networks compute in bf16, the samplers stay float32)."""

from __future__ import annotations

import pytest
import torch
from conftest import nonzero_rectifier
from PIL import Image

from hifiedit.cli import main
from hifiedit.diffusion.backbone import load_backbone
from hifiedit.errors import HifieditError
from hifiedit.pipeline import HifiEditPipeline
from hifiedit.runtime import resolve_runtime


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def fake_gpu(monkeypatch):
    """A CUDA GPU as resolve_runtime sees one: nothing here touches it."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Test GPU")


def test_auto_is_the_gpu_when_there_is_one(fake_gpu):
    rt = resolve_runtime("auto", "bf16")
    assert rt.device == torch.device("cuda") and rt.dtype == torch.bfloat16
    assert resolve_runtime("cuda:0", "fp16").dtype == torch.float16


def test_auto_is_the_cpu_without_one(no_gpu):
    rt = resolve_runtime()
    assert rt.device == torch.device("cpu") and rt.dtype == torch.float32 and rt.precision == "fp32"


@pytest.mark.parametrize("device, precision, kw, message", [
    ("cuda", "fp32", {}, "sees no CUDA GPU"),
    ("cuda:1", "fp32", {}, "sees no CUDA GPU"),
    ("tpu", "fp32", {}, "Unknown device"),
    ("meta", "fp32", {}, "not supported"),
    ("cpu", "fp16", {}, "fp16 needs a CUDA GPU"),
    ("auto", "fp16", {}, "fp16 needs a CUDA GPU"),
    ("cpu", "int8", {}, "Unknown precision"),
])
def test_refusals_without_a_gpu(no_gpu, device, precision, kw, message):
    with pytest.raises(HifieditError, match=message):
        resolve_runtime(device, precision, **kw)


def test_refusals_with_a_gpu(fake_gpu, monkeypatch):
    with pytest.raises(HifieditError, match="has 1 CUDA GPU"):
        resolve_runtime("cuda:3")
    with pytest.raises(HifieditError, match="inference only"):
        resolve_runtime("cuda", "fp16", training=True)
    assert resolve_runtime("cuda", "bf16", training=True).dtype == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with pytest.raises(HifieditError, match="Test GPU has no bfloat16"):
        resolve_runtime("cuda", "bf16")


def _png(path, size=16):
    g = torch.Generator().manual_seed(3)
    arr = (torch.rand((size, size, 3), generator=g) * 255).to(torch.uint8).numpy()
    Image.fromarray(arr).save(path)
    return path


@pytest.mark.parametrize("argv", [
    ["reconstruct", "IMG", "--steps", "2", "-o", "OUT"],
    ["edit", "IMG", "--edit", "light-to-dark", "--steps", "2", "-o", "OUT"],
    ["translate", "IMG", "-o", "OUT"],
    ["eval", "recon", "--limit", "1"],
    ["bench"],
    ["train", "edit", "--src", "a", "--tgt", "b", "--out", "OUTDIR"],
])
def test_cli_refuses_fp16_on_the_cpu_in_one_line(no_gpu, tiny_model_dir, tmp_path, capsys, argv):
    argv = [a.replace("IMG", str(_png(tmp_path / "in.png"))).replace("OUTDIR", str(tmp_path / "run"))
            .replace("OUT", str(tmp_path / "out.png")) for a in argv]
    assert main(argv + ["--model" if argv[0] != "train" else "--base", str(tiny_model_dir),
                        "--device", "cpu", "--precision", "fp16"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fp16" in err[0] and "CUDA GPU" in err[0]
    assert not (tmp_path / "out.png").exists()


def test_cli_refuses_a_missing_gpu_in_one_line(no_gpu, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out.png"
    assert main(["reconstruct", str(_png(tmp_path / "in.png")), "--steps", "2", "--model",
                 str(tiny_model_dir), "--device", "cuda", "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CUDA GPU" in err[0] and not out.exists()


def test_bf16_on_the_cpu_is_close_to_fp32_and_keeps_the_sampler_in_fp32(tiny_model_dir, tiny_images):
    pipes = {p: HifiEditPipeline.from_pretrained(tiny_model_dir, rectifier=None, device="cpu",
                                                 precision=p) for p in ("fp32", "bf16")}
    traj = {p: pipe.invert(tiny_images, t0=300, steps=5) for p, pipe in pipes.items()}
    assert all(s.dtype == torch.float32 for s in traj["bf16"].states)
    rec = {p: pipe.reconstruct(tiny_images, steps=5, t0=300) for p, pipe in pipes.items()}
    assert rec["bf16"].dtype == torch.float32
    diff = (rec["bf16"] - rec["fp32"]).abs()
    assert 0 < diff.max() < 0.05 and diff.mean() < 0.01  # bf16 ran, and stayed close
    assert (rec["fp32"] - tiny_images).abs().mean() < 0.1  # the reference itself is sane


def test_bf16_rectified_eps_is_close_to_fp32(tiny_model_dir, tiny_images):
    from hifiedit.rectifier import rectified_eps_fn

    bb = {p: load_backbone(tiny_model_dir, compute_dtype=d)
          for p, d in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    rect = nonzero_rectifier(bb["fp32"].unet)
    x = torch.randn_like(tiny_images)
    t = torch.full((len(x),), 200)
    eps = {p: rectified_eps_fn(b, rect, tiny_images, timesteps=[0, 100, 200])(x, t)
           for p, b in bb.items()}
    assert eps["bf16"].dtype == torch.float32
    diff = (eps["bf16"] - eps["fp32"]).abs()
    assert 0 < diff.max() < 0.05 * eps["fp32"].abs().max()


def test_bf16_clip_embeddings_are_close_to_fp32(clip_dir, tiny_images):
    from hifiedit.guidance import load_clip

    emb = {d: load_clip(clip_dir, compute_dtype=d).encode_images(tiny_images)
           for d in (torch.float32, torch.bfloat16)}
    assert emb[torch.bfloat16].dtype == torch.float32
    cos = (emb[torch.bfloat16] * emb[torch.float32]).sum(-1)
    assert cos.min() > 0.99 and not torch.equal(emb[torch.bfloat16], emb[torch.float32])


def test_trajectory_cache_keys_differ_by_precision(tiny_model_dir, tiny_images, tmp_path):
    from dataclasses import replace

    from hifiedit.train.trajectories import TrajectoryCache

    bb = load_backbone(tiny_model_dir)
    keys = [TrajectoryCache(tmp_path, b, 100).key(tiny_images[0], 4)
            for b in (bb, replace(bb, compute_dtype=torch.bfloat16))]
    assert keys[0] != keys[1]
