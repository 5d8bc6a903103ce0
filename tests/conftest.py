"""Shared fixtures: tiny models and images, no downloads."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # The OpenMoji render cache is shared across tests (rendering takes seconds) but kept
    # out of the user's home.
    monkeypatch.setenv("HIFIEDIT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def tiny_unet(sample_size: int = 16, out_channels: int = 3, seed: int = 0):
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=sample_size, in_channels=3, out_channels=out_channels, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4, attention_head_dim=8,
    )


def save_tiny_pipeline(folder, prediction_type: str = "epsilon", out_channels: int = 3):
    from diffusers import DDPMPipeline, DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear",
                              prediction_type=prediction_type)
    DDPMPipeline(unet=tiny_unet(out_channels=out_channels), scheduler=scheduler).save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_model_dir(tmp_path):
    return save_tiny_pipeline(tmp_path / "tiny-ddpm")


@pytest.fixture
def tiny_images():
    g = torch.Generator().manual_seed(0)
    return torch.rand((6, 3, 16, 16), generator=g) * 2 - 1
