"""Training our own CLIP: exact resume, learning on a tiny set, export, judge role, CLI smoke."""

import csv
import json

import pytest
import torch
from safetensors.torch import load_file

from hifiedit.cli import main
from hifiedit.errors import HifieditError
from hifiedit.guidance import load_clip
from hifiedit.train.clip import (
    CaptionedImages,
    ClipTrainConfig,
    augment,
    sample_batch,
    train_clip,
    tokenizer_digest,
    train_tokenizer,
)
from hifiedit.config import config_from_dict

TINY = dict(image_size=16, patch_size=4, vision_width=16, vision_layers=1, vision_heads=2,
            text_width=16, text_layers=1, text_heads=2, max_text_length=16, projection_dim=8,
            vocab_size=600, batch_size=8, family_size=2, warmup_steps=2, log_every=1,
            checkpoint_every=3, eval_every=1000, threads=1)  # tiny models: 1 thread is fastest
COLOURS = {"red": (1, -1, -1), "green": (-1, 1, -1), "blue": (-1, -1, 1), "yellow": (1, 1, -1)}


def _data():
    """8 glyph-like images: a coloured square on white, top-left or bottom-right."""
    images, captions, family = [], [], []
    for f, (name, rgb) in enumerate(COLOURS.items()):
        for where, (y, x) in (("top", (2, 2)), ("bottom", (8, 8))):
            img = torch.ones(3, 16, 16)
            img[:, y:y + 6, x:x + 6] = torch.tensor(rgb, dtype=torch.float32).view(3, 1, 1)
            images.append(img)
            captions.append([f"{name} square at the {where}", f"a {where} {name} square"])
            family.append(f)
    return CaptionedImages(torch.stack(images), captions, family)


@pytest.fixture(scope="module")
def tokenizer():
    data = _data()
    # The tokenizers BPE trainer breaks ties by hash order, so runs that must match share one.
    return train_tokenizer([c for v in data.captions for c in v], 600, 16)


def _run(out, steps, tokenizer, **kw):
    config = ClipTrainConfig(**{**TINY, "max_steps": steps, **kw.pop("config", {})})
    return train_clip(config, out, data=_data(), tokenizer=tokenizer, progress=False, **kw)


def test_resume_continues_identically(tmp_path, tokenizer):
    _run(tmp_path / "straight", 7, tokenizer)
    _run(tmp_path / "split", 7, tokenizer, stop_after=4)  # "interrupted" at step 4
    _run(tmp_path / "split", 7, None, resume=True)  # the run's own tokenizer folder is reused
    for group in ("model", "optimizer", "rng"):
        a = load_file(str(tmp_path / "straight" / "checkpoint" / f"{group}.safetensors"))
        b = load_file(str(tmp_path / "split" / "checkpoint" / f"{group}.safetensors"))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{group}/{k}")
    state = json.loads((tmp_path / "split" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 7
    log = (tmp_path / "split" / "log.csv").read_text().splitlines()
    assert [int(r.split(",")[0]) for r in log[1:]] == list(range(1, 8))
    # The export is a CLIP folder that the guidance loader reads like any user's CLIP.
    clip = load_clip(tmp_path / "split" / "model")
    assert clip.image_size == 16 and clip.role == "guide"
    assert clip.encode_images(_data().images[:2]).shape == (2, 8)
    assert clip.encode_text(["red square at the top"]).shape == (1, 8)


def test_loss_falls_on_a_tiny_set(tmp_path, tokenizer):
    _run(tmp_path / "a", 120, tokenizer, config=dict(lr=3e-3, warmup_steps=5,
                                                      checkpoint_every=1000))
    losses = [float(r["loss"]) for r in csv.DictReader((tmp_path / "a" / "log.csv").open())]
    assert sum(losses[-10:]) / 10 < 0.65 * sum(losses[:10]) / 10, losses
    # What it learnt is the pairing: images find their own caption far above chance (1/8).
    clip = load_clip(tmp_path / "a" / "model")
    data = _data()
    with torch.no_grad():
        sim = clip.encode_images(data.images) @ clip.encode_text([c[0] for c in data.captions]).T
    assert (sim.argmax(1) == torch.arange(8)).float().mean() >= 0.5


def test_judge_export_is_refused_to_guidance(tmp_path, tokenizer):
    _run(tmp_path / "j", 1, tokenizer, config=dict(role="judge", seed=1))
    with pytest.raises(HifieditError, match="judge"):
        load_clip(tmp_path / "j" / "model")
    assert load_clip(tmp_path / "j" / "model", allow_judge=True).role == "judge"


def test_refuses_to_clobber_resume_nothing_or_change_config(tmp_path, tokenizer):
    _run(tmp_path / "a", 1, tokenizer)
    with pytest.raises(HifieditError, match="--resume"):
        _run(tmp_path / "a", 2, tokenizer)
    with pytest.raises(HifieditError, match="no checkpoint"):
        _run(tmp_path / "b", 2, tokenizer, resume=True)
    with pytest.raises(HifieditError, match="lr"):
        _run(tmp_path / "a", 2, None, resume=True, config=dict(lr=1e-3))


def test_batches_hold_families_and_augmentation_keeps_colours(tokenizer):
    data = _data()
    config = ClipTrainConfig(**{**TINY, "max_rotate_deg": 0, "max_scale": 0})
    idx, captions = sample_batch(data, config, torch.Generator().manual_seed(0))
    assert len(idx) == len(captions) == 8
    for a, b in idx.view(-1, 2).tolist():  # each anchor comes with a sibling of its family
        assert a != b and data.family[a] == data.family[b]
    x = data.images[idx]
    y = augment(x, config, torch.Generator().manual_seed(0))
    # A shift moves pixels but invents no colour: every output pixel is a blend of the
    # glyph's own colours (here white and one pure colour), never a recoloured one.
    for xi, yi in zip(x, y):
        colour = xi.reshape(3, -1).min(1).values  # the square's channels that are −1
        assert ((yi.reshape(3, -1) >= colour.view(3, 1) - 1e-5)).all()


@pytest.mark.parametrize("values, message", [
    ({"role": "teacher"}, "role"),
    ({"image_size": 30}, "multiple of patch_size"),
    ({"vision_width": 30, "vision_heads": 4}, "vision_width"),
    ({"batch_size": 1}, "batch_size"),
    ({"family_size": 0}, "family_size"),
    ({"vocab_size": 100}, "vocab_size"),
])
def test_config_validation(values, message):
    with pytest.raises(HifieditError, match=message):
        config_from_dict(ClipTrainConfig, {**TINY, **values})


def test_shipped_configs_are_valid_and_differ():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "configs"
    guide = config_from_dict(ClipTrainConfig, json.loads((root / "clip-openmoji32.json").read_text()))
    judge = config_from_dict(ClipTrainConfig, json.loads((root / "judge-openmoji32.json").read_text()))
    assert guide.role == "guide" and judge.role == "judge"
    assert guide.seed != judge.seed
    assert (guide.vision_width, guide.vision_layers) != (judge.vision_width, judge.vision_layers)


def test_fine_tuning_starts_from_a_clip_and_noise_changes_the_images(tmp_path, tokenizer):
    _run(tmp_path / "start", 3, tokenizer, config={"lr": 1e-2})
    start = load_file(str(tmp_path / "start" / "model" / "model.safetensors"))
    tuned = {"init_from": str(tmp_path / "start" / "model"), "noise_std": 0.5, "lr": 1e-12}
    _run(tmp_path / "tuned", 1, None, config=tuned)  # tokenizer: the starting CLIP's
    after = load_file(str(tmp_path / "tuned" / "model" / "model.safetensors"))
    for k in start:  # one step at lr 1e-12: still the starting weights
        torch.testing.assert_close(after[k], start[k], rtol=0, atol=1e-8, msg=k)
    assert (tmp_path / "tuned" / "tokenizer" / "tokenizer.json").read_text() == \
        (tmp_path / "start" / "model" / "tokenizer.json").read_text()
    # The noise reaches training: the same step with and without it lands elsewhere.
    plain, noisy = ({**tuned, "lr": 1e-2, "noise_std": n} for n in (0.0, 0.5))
    _run(tmp_path / "plain", 1, None, config=plain)
    _run(tmp_path / "noisy", 1, None, config=noisy)
    a, b = (load_file(str(tmp_path / r / "model" / "model.safetensors")) for r in ("plain", "noisy"))
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("vision_model"))
    with pytest.raises(HifieditError, match="architecture fields must match"):
        _run(tmp_path / "wider", 1, None, config={**tuned, "vision_width": 32})
    with pytest.raises(HifieditError, match="noise_std"):
        ClipTrainConfig(**{**TINY, "noise_std": -0.1}).validate()
    from hifiedit.guidance.clip import ROLE_FILE

    (tmp_path / "start" / "model" / ROLE_FILE).write_text(json.dumps({"role": "judge"}))
    with pytest.raises(HifieditError, match="judge CLIP: training cannot start from it"):
        _run(tmp_path / "from-judge", 1, None, config=tuned)


@pytest.fixture
def small_openmoji(monkeypatch, tmp_path):
    """A few real glyphs (train, val and test bases) in a private render cache."""
    from hifiedit.data import openmoji

    keep = {f":{b}{t}:" for b in ("thumbs_up", "woman_dancing", "man_dancing", "person_tipping_hand",
                                  "woman_tipping_hand", "man_tipping_hand")
            for t in ("", "_light_skin_tone", "_dark_skin_tone")} | {":grinning_face:", ":kimono:"}
    chars = [(c, n) for c, n in openmoji.emoji_names() if n in keep]
    monkeypatch.setattr(openmoji, "emoji_names", lambda: chars)
    monkeypatch.setenv("HIFIEDIT_CACHE", str(tmp_path / "cache"))
    return chars


def test_cli_train_and_eval_smoke(tmp_path, small_openmoji, capsys):
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps({**TINY, "max_steps": 2, "eval_every": 2, "batch_size": 4}))
    out = tmp_path / "run"
    assert main(["train", "clip", "--config", str(cfg), "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == 2
    rows = list(csv.DictReader((out / "log.csv").open()))
    assert rows[-1]["val_skin_tone_acc"] != ""  # val-split zero-shot accuracy is logged
    assert main(["train", "clip", "--out", str(out), "--resume", "--max-steps", "3"]) == 1
    assert "max_steps" in capsys.readouterr().err  # the cosine schedule would change

    report_path = tmp_path / "eval" / "clip.json"
    args = ["eval", "clip", "--model", str(out / "model"), "--split", "test", "--size", "16",
            "--json", str(report_path), "--direction", "light skin tone", "dark skin tone"]
    assert main(args) == 0
    report = json.loads(report_path.read_text())
    (d,) = report["directions"]  # light → dark among the three tipping hands and the thumbs
    assert -1 <= d["cos"] <= 1 and (d["n_src"], d["n_tgt"]) == (3, 3)
    assert report["n_images"] == 9 and report["n_skin_tone"] == 9 and report["n_gender"] == 9
    assert report["n_pairs"] == 3  # light → dark for man, woman, person tipping hand
    for k in ("skin_tone_acc", "gender_acc", "retrieval_top1", "retrieval_top5"):
        assert 0 <= report[k] <= 1
    assert -1 <= report["pair_direction_cos"] <= 1
    assert report["retrieval_top1"] <= report["retrieval_top5"]
    assert "skin_tone_acc" in capsys.readouterr().out
    assert main(args) == 1  # an existing report is not overwritten without --force
    assert "--force" in capsys.readouterr().err
    assert main(args + ["--force"]) == 0

    dest = tmp_path / "shipped"
    assert main(["release", "clip", "--run", str(out), "--to", str(dest), "--eval-json",
                 str(report_path)]) == 0
    card = (dest / "README.md").read_text()
    assert "steps: **2**" in card and "skin_tone_acc" in card and "CC BY-SA" in card
    assert "| light skin tone → dark skin tone |" in card and "gradient right for" in card
    assert (dest / "training.png").is_file() and load_clip(dest).role == "guide"
    assert main(["release", "clip", "--run", str(out), "--to", str(dest)]) == 1  # no clobber


def test_tokenizer_digest_ignores_call_state_and_survives_a_save(tmp_path, tokenizer):
    # A fresh tokenizer is saved at the start of a run; the digest is taken after batches
    # have set padding/truncation on the backend. Resume compares it with the saved copy.
    from transformers import AutoTokenizer

    data = _data()
    fresh = train_tokenizer([c for v in data.captions for c in v], 600, 16)
    fresh.save_pretrained(tmp_path / "tok")
    fresh(["red square", "a blue circle at the top"], padding=True, truncation=True)
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "tok", local_files_only=True)
    assert tokenizer_digest(fresh) == tokenizer_digest(reloaded)
    other = train_tokenizer(["completely different words only"] * 4, 300, 16)
    assert tokenizer_digest(other) != tokenizer_digest(reloaded)


def test_gender_ceiling_counts_renders_no_pixel_tells_apart():
    """Two of three cook variants are the same picture: a pixel-only classifier gets one of
    them right at best, so the ceiling is 2/3; the pixel counts say which glyphs differ."""
    import numpy as np

    from hifiedit.data.openmoji import EmojiRecord, OpenMojiSet, parse_name
    from hifiedit.eval.clip_eval import gender_visibility

    names = ["man_cook", "woman_cook", "person_cook"]
    records = [EmojiRecord(index=i, char="?", split="test", **parse_name(n))
               for i, n in enumerate(names)]
    images = np.full((3, 8, 8, 3), 255, dtype=np.uint8)
    images[1, :2, :2] = 0  # the woman differs from both others in 4 pixels
    images[2, 0, 0] = 250  # the person differs from the man below the pixel threshold
    candidates = [[f"{g} cook" for g in ("man", "woman", "person")]] * 3
    pixels, ceiling = gender_visibility(OpenMojiSet(images, records), records, candidates)
    assert pixels == [0, 4, 0]
    assert ceiling == pytest.approx(2 / 3)
