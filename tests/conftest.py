"""Shared fixtures: tiny models and images, no downloads."""

from __future__ import annotations

import pytest
import torch

from hifiedit.diffusion.backbone import load_backbone
from hifiedit.edit import EditParams
from hifiedit.rectifier import Rectifier, RectifierConfig


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


# ------------------------------------------------------------------ tiny CLIP, rectifier, edits

TINY_TEXTS = ["thumbs up", "thumbs up: dark skin tone", "a cook who is a woman", "man cook",
              "light skin tone", "dark skin tone", "an emoji of a grinning face"] * 3


def tiny_tokenizer(max_length=16):
    from hifiedit.train.clip import train_tokenizer

    return train_tokenizer(TINY_TEXTS, vocab_size=600, max_length=max_length)


def tiny_clip(tokenizer, image_size=24, patch=8, seed=0):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    text = dict(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=16,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=2, image_size=image_size, patch_size=patch)
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8))


RECT = RectifierConfig(encoder_channels=(8, 16), norm_groups=4, time_embed_dim=16,
                       feature_dim=16, branch_hidden=8, pointwise_rank=2,
                       step_embedding=True)  # as the trainer makes them


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = save_tiny_pipeline(tmp_path_factory.mktemp("tiny") / "ddpm")
    return folder, load_backbone(folder)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    tokenizer = tiny_tokenizer()
    tiny_clip(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def nonzero_rectifier(unet, seed=0):
    """A rectifier whose offsets are small but not zero, so that ψ ⊙ (1 + R) ≠ ψ."""
    rect = Rectifier.for_unet(unet, RECT)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for b in rect.branches:
            b.spatial.weight.copy_(torch.randn(b.spatial.weight.shape, generator=g) * 0.05)
    return rect.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def rect_dir(tiny, tmp_path_factory):
    return nonzero_rectifier(tiny[1].unet).save_pretrained(tmp_path_factory.mktemp("r") / "rect")


def randomise(params: EditParams, seed=1, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
