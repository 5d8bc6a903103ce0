"""CLIP guidance (DESIGN §1): loading a local CLIP, differentiable preprocessing,
directional / global CLIP losses and the S_dir metric."""

from hifiedit.guidance.clip import Clip, image_embeddings, load_clip, preprocess_images
from hifiedit.guidance.losses import (
    EMOJI_TEMPLATES,
    directional_loss,
    ensemble_text_embeddings,
    global_clip_loss,
    s_dir,
    text_direction,
    text_embedding,
)

__all__ = ["Clip", "image_embeddings", "load_clip", "preprocess_images", "EMOJI_TEMPLATES",
           "directional_loss", "ensemble_text_embeddings", "global_clip_loss", "s_dir",
           "text_direction", "text_embedding"]
