"""CLIP guidance: loading local CLIP folders, differentiable preprocessing, directional loss,
S_dir, captions and our tokenizer. Tiny random models, no downloads."""

import json

import numpy as np
import pytest
import torch

from hifiedit.data.captions import caption_variants, tone_phrases, with_gender, with_tone
from hifiedit.data.openmoji import EmojiRecord, parse_name
from hifiedit.errors import HifieditError
from hifiedit.guidance import (
    directional_loss,
    global_clip_loss,
    load_clip,
    preprocess_images,
    s_dir,
    text_direction,
    text_embedding,
)
from hifiedit.guidance.clip import OPENAI_MEAN, OPENAI_STD, ROLE_FILE

from conftest import tiny_clip as _tiny_clip
from conftest import tiny_tokenizer as _tiny_tokenizer

USER_MEAN, USER_STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


@pytest.fixture(scope="module")
def user_clip_dir(tmp_path_factory):
    """The layout of a user's openai/clip-vit-base-patch16 snapshot, in miniature: weights and
    config from save_pretrained, a tokenizer, and a preprocessor_config.json with its own
    input size and normalisation."""
    from transformers import CLIPImageProcessor

    folder = tmp_path_factory.mktemp("user-clip")
    tokenizer = _tiny_tokenizer()
    _tiny_clip(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24},
                       image_mean=list(USER_MEAN), image_std=list(USER_STD)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clip(user_clip_dir):
    return load_clip(user_clip_dir)


def _images(n=3, h=16, w=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, 3, h, w), generator=g) * 2 - 1


# ------------------------------------------------------------------ loading


def test_user_folder_loads_frozen_with_its_own_preprocessing(user_clip_dir, clip):
    assert clip.image_size == 24 and clip.role == "guide"
    assert not any(p.requires_grad for p in clip.model.parameters()) and not clip.model.training
    torch.testing.assert_close(clip.mean, torch.tensor(USER_MEAN))
    torch.testing.assert_close(clip.std, torch.tensor(USER_STD))
    # Our preprocessing of a model-sized image equals the folder's own CLIPImageProcessor,
    # and our embedding equals CLIPModel's forward on the processor's pixels.
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor.from_pretrained(user_clip_dir)
    rgb = np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    ref = processor(images=rgb, return_tensors="pt")["pixel_values"]
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 127.5 - 1
    torch.testing.assert_close(clip.preprocess(x), ref, atol=1e-5, rtol=1e-5)
    ids = clip.tokenizer(["thumbs up"], return_tensors="pt")
    with torch.no_grad():
        out = clip.model(pixel_values=ref, **ids)
        torch.testing.assert_close(clip.encode_images(x), out.image_embeds, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(clip.encode_text(["thumbs up"]), out.text_embeds,
                                   atol=1e-5, rtol=1e-5)


def test_encode_images_any_size_and_dtype(user_clip_dir):
    clip64 = load_clip(user_clip_dir, dtype=torch.float64)
    assert next(clip64.model.parameters()).dtype == torch.float64
    for h, w in ((16, 16), (40, 28), (24, 24)):
        emb = clip64.encode_images(_images(2, h, w))
        assert emb.shape == (2, 8) and emb.dtype == torch.float64
        torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2, dtype=torch.float64))


def test_preprocess_resizes_crops_and_keeps_gradients():
    mean, std = torch.tensor(OPENAI_MEAN), torch.tensor(OPENAI_STD)
    x = _images(2, 12, 20).requires_grad_(True)
    y = preprocess_images(x, 32, mean, std)
    assert y.shape == (2, 3, 32, 32)
    y.square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    same = preprocess_images(x.detach()[..., :12], 12, mean, std)  # no resize: only normalise
    torch.testing.assert_close(same, ((x.detach()[..., :12] + 1) / 2 - mean.view(1, 3, 1, 1))
                               / std.view(1, 3, 1, 1))
    with pytest.raises(HifieditError, match="N×3×H×W"):
        preprocess_images(torch.zeros(3, 8, 8), 8, mean, std)


def test_text_embeddings_are_cached_per_model(user_clip_dir):
    clip = load_clip(user_clip_dir)
    first = clip.encode_text(["man cook", "thumbs up"])
    assert set(clip.text_cache) == {"man cook", "thumbs up"}
    clip.model.text_projection.weight.data.zero_()  # a cache hit never reaches the model
    torch.testing.assert_close(clip.encode_text("man cook")[0], first[0])
    assert load_clip(user_clip_dir).text_cache == {}  # each loaded model has its own cache


def test_missing_parts_are_named(tmp_path, user_clip_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(HifieditError) as e:
        load_clip(empty)
    assert "config.json" in str(e.value) and "weights" in str(e.value)
    assert "tokenizer" in str(e.value)

    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text((user_clip_dir / "config.json").read_text())
    (partial / "model.safetensors").write_bytes((user_clip_dir / "model.safetensors").read_bytes())
    with pytest.raises(HifieditError, match="missing tokenizer files") as e:
        load_clip(partial)
    assert "config.json" not in str(e.value) and "weights" not in str(e.value)

    vision_only = tmp_path / "vision"
    vision_only.mkdir()
    for f in user_clip_dir.iterdir():
        (vision_only / f.name).write_bytes(f.read_bytes())
    config = json.loads((vision_only / "config.json").read_text())
    (vision_only / "config.json").write_text(json.dumps({**config, "model_type": "clip_vision_model"}))
    with pytest.raises(HifieditError, match="model_type 'clip'"):
        load_clip(vision_only)
    with pytest.raises(HifieditError, match="neither a folder"):
        load_clip(tmp_path / "nowhere")


def test_judge_is_refused_unless_evaluation_asks(tmp_path, user_clip_dir):
    with pytest.raises(HifieditError, match="judge"):
        load_clip("judge")
    judge = tmp_path / "judge"
    judge.mkdir()
    for f in user_clip_dir.iterdir():
        (judge / f.name).write_bytes(f.read_bytes())
    (judge / ROLE_FILE).write_text(json.dumps({"role": "judge"}))
    with pytest.raises(HifieditError, match="judge"):
        load_clip(judge)
    assert load_clip(judge, allow_judge=True).role == "judge"


# ------------------------------------------------------------------ losses and S_dir


@pytest.mark.parametrize("form", ["cosine", "log"])
def test_directional_loss_sends_gradients_to_pixels(clip, form):
    direction = text_direction(clip, "light skin tone", "dark skin tone")
    src = _images(3, 16, 16, seed=1)
    edit = _images(3, 16, 16, seed=2).requires_grad_(True)
    loss = directional_loss(clip.encode_images(edit), clip.encode_images(src), direction, form=form)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(edit.grad).all()
    assert edit.grad.abs().sum() > 0


def test_s_dir_is_one_along_the_text_direction_and_minus_one_against_it():
    g = torch.Generator().manual_seed(0)
    src = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=-1)
    direction = torch.nn.functional.normalize(torch.randn(8, generator=g), dim=-1)
    along, against = src + 0.3 * direction, src - 0.3 * direction
    torch.testing.assert_close(s_dir(along, src, direction), torch.ones(4))
    torch.testing.assert_close(s_dir(against, src, direction), -torch.ones(4))
    torch.testing.assert_close(directional_loss(along, src, direction), torch.tensor(0.0))
    torch.testing.assert_close(directional_loss(against, src, direction), torch.tensor(2.0))
    torch.testing.assert_close(directional_loss(along, src, direction, form="log"),
                               torch.tensor(0.0))
    # DiffusionCLIP's form is −log((1 + cos)/2): cos = 0 gives log 2.
    ortho = torch.nn.functional.normalize(direction.roll(1) - direction.roll(1) @ direction
                                          * direction, dim=-1)
    torch.testing.assert_close(directional_loss(src + ortho, src, direction, form="log"),
                               torch.tensor(float(np.log(2))), atol=1e-6, rtol=0)
    # No change has no direction: 0, not NaN.
    assert s_dir(src, src, direction).abs().max() == 0
    with pytest.raises(HifieditError, match="form"):
        directional_loss(along, src, direction, form="l2")


def test_text_direction_is_unit_and_antisymmetric(clip):
    d = text_direction(clip, "man cook", "a cook who is a woman")
    torch.testing.assert_close(d.norm(), torch.tensor(1.0))
    torch.testing.assert_close(text_direction(clip, "a cook who is a woman", "man cook"), -d)
    with pytest.raises(HifieditError, match="same embedding"):
        text_direction(clip, "thumbs up", "thumbs up")


def test_global_clip_loss(clip):
    target = text_embedding(clip, "dark skin tone")
    torch.testing.assert_close(target.norm(), torch.tensor(1.0))
    torch.testing.assert_close(global_clip_loss(target[None], target), torch.tensor(0.0))
    torch.testing.assert_close(global_clip_loss(-target[None], target), torch.tensor(2.0))
    x = _images(2).requires_grad_(True)
    global_clip_loss(clip.encode_images(x), target).backward()
    assert x.grad.abs().sum() > 0


# ------------------------------------------------------------------ captions and tokenizer


def _record(raw):
    return EmojiRecord(index=0, char="?", **parse_name(raw))


def test_caption_variants():
    tone = caption_variants(_record(":thumbs_up_dark_skin_tone:"))
    assert tone[0] == "thumbs up dark skin tone"
    assert {"thumbs up: dark skin tone", "dark skin tone thumbs up",
            "a hand with dark skin showing thumbs up"} <= set(tone)
    cook = caption_variants(_record(":woman_cook:"), has_tones=True)
    assert {"woman cook", "a cook who is a woman", "a female cook", "yellow woman cook"} <= set(cook)
    assert "a man who is bowing" in caption_variants(_record(":man_bowing:"))
    assert "a man with red hair" in caption_variants(_record(":man_red_hair:"))
    assert caption_variants(_record(":kimono:")) == ["kimono"]
    mixed = _record(":people_holding_hands_light_skin_tone_dark_skin_tone:")
    assert tone_phrases(mixed) == ["light skin tone", "dark skin tone"]
    assert with_gender("kiss woman woman", "man") == "kiss man man"
    assert with_gender("people holding hands", "woman") == "women holding hands"
    assert with_gender("thumbs up", "man") is None
    assert with_tone("thumbs up", None) == "thumbs up"
    assert with_tone("thumbs up", "medium-dark") == "thumbs up medium-dark skin tone"


def test_trained_tokenizer_round_trips_through_from_pretrained(tmp_path):
    from transformers import AutoTokenizer, CLIPTokenizerFast

    tokenizer = _tiny_tokenizer(max_length=16)
    tokenizer.save_pretrained(tmp_path)
    text = "Thumbs up: dark skin tone"
    ids = tokenizer(text)["input_ids"]
    for cls in (AutoTokenizer, CLIPTokenizerFast):
        loaded = cls.from_pretrained(tmp_path, local_files_only=True)
        assert loaded(text)["input_ids"] == ids and loaded.model_max_length == 16
        assert loaded.decode(ids, skip_special_tokens=True) == "thumbs up : dark skin tone"
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    # Characters never seen in training still get byte symbols, never the unknown token
    # (which CLIP shares with EOS: an EOS mid-sentence would end the text early).
    odd = tokenizer("zebra qx ×ß")["input_ids"]
    assert tokenizer.eos_token_id not in odd[1:-1]
    long = tokenizer("thumbs up " * 40, truncation=True, max_length=16)["input_ids"]
    assert len(long) == 16 and long[-1] == tokenizer.eos_token_id
