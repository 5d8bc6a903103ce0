"""The shipped default base model: present, loadable, small, and a working DDIM core on it."""

import torch

from hifiedit.data.openmoji import load_openmoji
from hifiedit.diffusion.backbone import DEFAULT_BASE, load_backbone
from hifiedit.models import MODELS_DIR
from hifiedit.eval.recon import ReconConfig, run_recon_eval


def test_default_model_is_shipped_with_a_card():
    folder = MODELS_DIR / DEFAULT_BASE
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    assert weights.is_file() and weights.stat().st_size <= 20 * 2**20
    card = (folder / "README.md").read_text()
    assert "steps" in card and "CC BY-SA" in card
    assert (folder / "samples.png").is_file()


def test_reconstruction_error_falls_as_steps_rise():
    bb = load_backbone("default")
    images = load_openmoji(bb.sample_size, progress=False).tensor("test")[:4]
    config = ReconConfig(steps=(4, 12, 40), t0=400, methods=("ddim",))
    with torch.no_grad():
        rows = run_recon_eval(config, progress=False, backbone=bb, images=images)["rows"]
    psnr = [r["psnr"] for r in rows]
    assert psnr[0] < psnr[1] < psnr[2], psnr
    assert psnr[2] > 30, psnr
