"""CLIP guidance (DESIGN §1, issue 3): loading a local CLIP, differentiable preprocessing,
directional / global CLIP losses and the S_dir metric."""

from hifiedit.guidance.clip import Clip, load_clip, preprocess_images
from hifiedit.guidance.losses import (
    EMOJI_TEMPLATES,
    directional_loss,
    global_clip_loss,
    s_dir,
    text_direction,
    text_embedding,
)

__all__ = ["Clip", "load_clip", "preprocess_images", "EMOJI_TEMPLATES", "directional_loss",
           "global_clip_loss", "s_dir", "text_direction", "text_embedding"]
