"""`hifiedit eval edit` and `hifiedit translate` , on a tiny U-Net, a
tiny random judge CLIP and a hand-made OpenMoji-like set whose true edits are known."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from conftest import randomise as _randomise

from hifiedit.cli import main
from hifiedit.data.openmoji import EmojiRecord, OpenMojiSet, parse_name
from hifiedit.diffusion.backbone import model_digest
from hifiedit.edit import Edit, EditParams, EditParamsConfig
from hifiedit.errors import HifieditError
from hifiedit.eval import edit_eval as ee
from hifiedit.guidance.clip import ROLE_FILE
from hifiedit.pipeline import HifiEditPipeline

# (emoji-package name, split); the "skin" patch of a toned glyph is what a tone edit changes.
GLYPHS = [("thumbs_up", "test"), ("thumbs_up_light_skin_tone", "test"),
          ("thumbs_up_dark_skin_tone", "test"), ("waving_hand_light_skin_tone", "test"),
          ("waving_hand_dark_skin_tone", "test"), ("man_cook", "test"), ("woman_cook", "test"),
          ("neutral_face", "test"), ("ok_hand_light_skin_tone", "train"),
          ("ok_hand_dark_skin_tone", "train"), ("fearful_face", "test")]
TONE_VALUE = {None: 230, "light": 200, "dark": 60}
PATCH = (slice(4, 8), slice(6, 12))  # rows, columns of the skin patch


def fake_openmoji(size=16) -> OpenMojiSet:
    records, images = [], []
    for i, (raw, split) in enumerate(GLYPHS):
        attrs = parse_name(raw)
        records.append(EmojiRecord(index=i, char="?", split=split, **attrs))
        seed = sum(map(ord, attrs["tone_base"]))  # one picture per glyph, whatever its tone
        img = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
        img[PATCH] = TONE_VALUE.get(attrs["skin_tone"], 128)
        images.append(img)
    return OpenMojiSet(np.stack(images), records)


@pytest.fixture(scope="module")
def judge_dir(clip_dir, tmp_path_factory):  # noqa: F811
    folder = tmp_path_factory.mktemp("judge")
    for f in clip_dir.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / ROLE_FILE).write_text(json.dumps({"role": "judge"}))
    return folder


def _edit(bb, folder, src, tgt, seed, method="score-matching", rectifier=None):
    params = EditParams.for_unet(bb.unet, EditParamsConfig(rank=2))
    _randomise(params, seed=seed, scale=0.1)
    info = {"src": src, "tgt": tgt, "method": method, "t0": 200, "rectifier": rectifier,
            "train_s_per_iter": 0.25}
    return Edit(params, model_digest(bb), info).save_pretrained(folder)


class _ToneClip:
    """A differentiable CLIP that sees only the skin patch's brightness p: E_I = unit(−p, p, 1);
    its texts say e0 for "dark", e1 for "light" (swapped when `reads_backwards`)."""

    def __init__(self, reads_backwards=False):
        self.words = ("light", "dark") if reads_backwards else ("dark", "light")

    def encode_images(self, x):
        p = x[:, 0, PATCH[0], PATCH[1]].mean((1, 2))
        return torch.nn.functional.normalize(torch.stack([-p, p, torch.ones_like(p)], 1), dim=1)

    def encode_text(self, texts):
        return torch.eye(3)[[0 if self.words[0] in t else 1 if self.words[1] in t else 2 for t in texts]]


def test_direction_alignment_checks_text_image_and_gradient_directions():
    from hifiedit.eval.clip_eval import direction_alignment

    data = fake_openmoji()
    d = direction_alignment(_ToneClip(), data, "test", "light skin tone", "dark skin tone")
    assert d["cos"] == pytest.approx(1.0, abs=1e-3) and (d["n_src"], d["n_tgt"]) == (2, 2)
    # Its gradient darkens the patch, as the true edits do: only channel 0 of the 3 that
    # change, so the cosine with the true change is 1/√3 of the patch's share.
    assert d["n_pairs"] == 2 and d["gradient_agreement"] == 1.0 and d["gradient_cos"] > 0.5
    # A CLIP whose texts mean the opposite of what its images show points the wrong way.
    backwards = direction_alignment(_ToneClip(True), data, "test", "light skin tone", "dark skin tone")
    assert backwards["cos"] == pytest.approx(-1.0, abs=1e-3)
    assert backwards["gradient_agreement"] == 0.0 and backwards["gradient_cos"] < -0.5
    faces = direction_alignment(_ToneClip(), data, "test", "neutral face", "light skin tone")
    assert faces["n_pairs"] == 0 and faces["gradient_cos"] is None  # no true pairs
    with pytest.raises(HifieditError, match="names no skin tone"):
        direction_alignment(_ToneClip(), data, "test", "light skin tone", "a glowing statue")
    with pytest.raises(HifieditError, match="no train-split glyph"):
        direction_alignment(_ToneClip(), data, "train", "man", "woman")


# ------------------------------------------------------------------ metric functions


def test_gt_metrics_are_exact_for_an_oracle_and_a_known_error():
    tgt = fake_openmoji().tensor_at([2, 4])
    mae, psnr = ee.gt_errors(tgt, tgt)  # the oracle: the edit is the true target
    assert torch.equal(mae, torch.zeros(2)) and torch.allclose(psnr, torch.full((2,), 120.0))
    # A known error: the first channel of half the columns of image 0 inverted, u → 1 − u.
    unit = (tgt + 1) / 2
    shifted = unit.clone()
    shifted[0, 0, :, :8] = 1 - unit[0, 0, :, :8]  # |Δ| = |1 − 2u| per pixel, exactly known
    mae, psnr = ee.gt_errors(shifted * 2 - 1, tgt)
    delta = (1 - 2 * unit[0, 0, :, :8]).abs()
    torch.testing.assert_close(mae[0], delta.sum() / unit[0].numel())
    torch.testing.assert_close(psnr[0], 10 * torch.log10(1 / (delta.square().sum() / unit[0].numel())))
    assert mae[1] == 0


def test_preserve_mask_is_where_source_and_target_agree():
    data = fake_openmoji()
    src, tgt = data.tensor_at([1, 3]), data.tensor_at([2, 4])
    mask = ee.preserve_mask(src, tgt)
    expected = torch.ones(2, 1, 16, 16, dtype=torch.bool)
    expected[:, :, PATCH[0], PATCH[1]] = False
    assert torch.equal(mask, expected)
    # The threshold is on [0, 1] pixels, max over channels: 0.04 agrees, 0.06 does not.
    a = torch.zeros(1, 3, 1, 2)
    b = a.clone()
    b[0, 2, 0, 0], b[0, 1, 0, 1] = 0.04 * 2, 0.06 * 2
    assert ee.preserve_mask(a, b).flatten().tolist() == [True, False]
    # The true target and the source both preserve perfectly; a change outside the patch is
    # measured over the kept pixels only, a change inside it not at all.
    for edited in (tgt, src):
        assert torch.equal(ee.preserve_errors(edited, src, mask), torch.zeros(2))
    inside, outside = src.clone(), src.clone()
    inside[:, :, PATCH[0], PATCH[1]] = -1
    assert torch.equal(ee.preserve_errors(inside, src, mask), torch.zeros(2))
    outside[:, :, 0, :] = (1 - (src[:, :, 0, :] + 1) / 2) * 2 - 1  # invert row 0 (kept pixels)
    err = ee.preserve_errors(outside, src, mask)
    row0 = (1 - 2 * (src[:, :, 0, :] + 1) / 2).abs().mean(1).sum(-1)
    torch.testing.assert_close(err, row0 / mask.flatten(1).sum(1))
    assert ee.preserve_errors(src, src, torch.zeros_like(mask)).isnan().all()  # nothing to keep
    # change_mae looks only at the patch, against the true target: 0 for the target, the
    # patch's own difference for the source, and blind to damage outside the patch.
    assert torch.equal(ee.change_errors(tgt, tgt, mask), torch.zeros(2))
    patch = (src - tgt)[:, :, PATCH[0], PATCH[1]].abs().mean(1).flatten(1).mean(1) / 2
    torch.testing.assert_close(ee.change_errors(src, tgt, mask), patch)
    torch.testing.assert_close(ee.change_errors(outside, tgt, mask), patch)


def test_edit_attributes_images_and_judge_names():
    data = fake_openmoji()
    tone = ee.edit_attributes("light skin tone", "dark skin tone")
    assert (tone.field, tone.source, tone.target, tone.ground_truth) == (
        "skin_tone", "light", "dark", "skin_tone")
    # Test-split pairs only (the train-split ok hand is not used), sources carry "light".
    assert ee.select_images(data, "test", tone) == [(1, 2), (3, 4)]
    assert ee.select_images(data, "test", tone, limit=1) == [(1, 2)]
    assert ee.attribute_names(data.records[1], tone) == ("thumbs up light skin tone",
                                                         "thumbs up dark skin tone")
    gender = ee.edit_attributes("man", "woman")
    assert gender.ground_truth == "gender" and ee.select_images(data, "test", gender) == [(5, 6)]
    assert ee.attribute_names(data.records[5], gender) == ("man cook", "woman cook")
    smile = ee.edit_attributes("neutral face", "smiling face")
    assert smile.ground_truth is None
    assert ee.select_images(data, "test", smile) == [(7, None), (10, None)]  # faces, no smile
    assert ee.attribute_names(data.records[7], smile) == ("neutral face", "smiling face")
    # "neutral" stands for every face without a smile; a glyph with no "neutral" in its name
    # has no word to swap, so the verdict compares the edit's texts (not its name twice).
    assert ee.attribute_names(data.records[10], smile) == ("neutral face", "smiling face")
    grin = ee.edit_attributes("neutral face", "grinning face")
    assert ee.attribute_names(data.records[10], grin) == ("neutral face", "grinning face")
    # A target that names nothing in the data: no ground truth; the judge compares the texts.
    free = ee.edit_attributes("light skin tone", "a glowing statue")
    assert free.target is None and free.ground_truth is None
    assert ee.attribute_names(data.records[1], free) == ("light skin tone", "a glowing statue")
    assert ee.edit_attributes("person", "woman").ground_truth is None  # pairs are man ↔ woman
    with pytest.raises(HifieditError, match="no test-split"):
        ee.select_images(data, "test", ee.edit_attributes("medium skin tone", "dark skin tone"))


# ------------------------------------------------------------------ the command


def test_eval_edit_writes_rows_and_grid(tiny, judge_dir, tmp_path, monkeypatch, capsys):  # noqa: F811
    folder, bb = tiny
    monkeypatch.setattr("hifiedit.data.openmoji.load_openmoji", lambda *a, **k: fake_openmoji())
    tone = _edit(bb, tmp_path / "light-to-dark" / "edit", "light skin tone", "dark skin tone", 1)
    smile = _edit(bb, tmp_path / "smile", "neutral face", "smiling face", 2, method="markovian")
    out_json, out_grid = tmp_path / "r" / "edit.json", tmp_path / "r" / "grid.png"
    args = ["eval", "edit", "--edit", str(tone), "--edit", str(smile), "--model", str(folder),
            "--judge", str(judge_dir), "--steps", "2,3", "--json", str(out_json),
            "--grid", str(out_grid)]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "light-to-dark" in table and "smile" in table
    report = json.loads(out_json.read_text())
    assert Path(report["judge"]).resolve() == judge_dir.resolve() and report["preserve_threshold"] == ee.PRESERVE_THRESHOLD
    rows = report["rows"]
    assert [(r["edit"], r["steps"]) for r in rows] == [
        ("light-to-dark", 2), ("light-to-dark", 3), ("smile", 2), ("smile", 3)]
    keys = {"edit", "method", "rectifier", "steps", "gt_mae", "gt_psnr", "preserve_mae", "s_dir",
            "judge_acc", "train_s_per_iter", "edit_s_per_image", "n_images"}
    for r in rows:
        assert keys <= r.keys() and r["rectifier"] is None and r["train_s_per_iter"] == 0.25
        assert -1 <= r["s_dir"] <= 1 and r["judge_acc"] in (0.0, 0.5, 1.0) and r["edit_s_per_image"] > 0
    for r in rows[:2]:
        assert r["n_images"] == 2 and r["ground_truth"] == "skin_tone" and r["method"] == "score-matching"
        assert 0 < r["gt_mae"] < 1 and r["gt_psnr"] > 0 and 0 <= r["preserve_mae"] < 1
        assert 0 <= r["change_mae"] < 1
        assert r["preserve_fraction"] == pytest.approx(1 - 24 / 256)
    for r in rows[2:]:
        assert r["n_images"] == 2 and r["method"] == "markovian"
        assert r["gt_mae"] is r["gt_psnr"] is r["preserve_mae"] is r["change_mae"] is None
    # References: the unchanged source's error is the skin patch's (200 → 60 on 4×6 of 16×16
    # pixels); its judge verdict and the no-edit reconstructions are scored like edits.
    refs = report["references"]
    assert [(r["reference"], r["steps"], r["tgt"]) for r in refs] == [
        ("unchanged", None, "dark skin tone"), ("reconstruction", 2, "dark skin tone"),
        ("reconstruction", 3, "dark skin tone"), ("unchanged", None, "smiling face"),
        ("reconstruction", 2, "smiling face"), ("reconstruction", 3, "smiling face")]
    assert refs[0]["gt_mae"] == pytest.approx(140 / 255 * 24 / 256, rel=1e-5)
    assert refs[0]["preserve_mae"] == 0 and refs[0]["s_dir"] == 0
    assert refs[0]["change_mae"] == pytest.approx(140 / 255, rel=1e-5)  # the whole patch undone
    assert 0 < refs[1]["preserve_mae"] < 1 and refs[1]["gt_mae"] != refs[0]["gt_mae"]
    assert "no edit, light skin tone → dark skin tone:\n  (unchanged)" in table
    # Grid: one column per image (2), rows source | target | 2 edit rows, then source | 2 rows.
    with Image.open(out_grid) as img:
        assert img.height == 7 * (16 * 3 + 3) + 3 and img.width > 2 * (16 * 3 + 3)
    # Existing outputs are kept without --force, replaced with it.
    before = out_json.read_text()
    assert main(args) == 1 and "--force" in capsys.readouterr().err
    assert out_json.read_text() == before
    assert main([*args, "--force", "--limit", "1"]) == 0
    assert {r["n_images"] for r in json.loads(out_json.read_text())["rows"]} == {1}


def test_rectified_edits_use_their_own_rectifier(tiny, judge_dir, rect_dir, tmp_path):  # noqa: F811
    _, bb = tiny
    edit = _edit(bb, tmp_path / "e", "light skin tone", "dark skin tone", 1, rectifier=str(rect_dir))

    def run(**kw):
        config = ee.EditEvalConfig(edits=(str(edit),), steps=(2,), judge=str(judge_dir), limit=1, **kw)
        return ee.run_edit_eval(config, progress=False, backbone=bb, data=fake_openmoji())["rows"][0]
    rectified, plain = run(), run(rectifier="none")
    assert Path(rectified["rectifier"]).resolve() == rect_dir.resolve() and plain["rectifier"] is None
    assert rectified["gt_mae"] != plain["gt_mae"]  # the rectifier was applied


def test_the_guide_cannot_be_the_judge(tiny, clip_dir, tmp_path, capsys):  # noqa: F811
    folder, bb = tiny
    edit = _edit(bb, tmp_path / "e", "light skin tone", "dark skin tone", 1)
    assert main(["eval", "edit", "--edit", str(edit), "--model", str(folder), "--judge",
                 str(clip_dir), "--json", str(tmp_path / "r.json")]) == 1
    assert "not a judge CLIP" in capsys.readouterr().err and not (tmp_path / "r.json").exists()


# ------------------------------------------------------------------ translation


def test_translate_is_seeded_and_repeats_from_its_own_output(tiny):  # noqa: F811
    from hifiedit.diffusion.ddim import stochastic_forward

    _, bb = tiny
    pipe = HifiEditPipeline(bb)
    x = fake_openmoji().tensor_at([0])

    def run(seed, **kw):
        return pipe.translate(x, t0=100, steps=3, generator=torch.Generator().manual_seed(seed), **kw)
    assert torch.equal(run(0), run(0)) and not torch.equal(run(0), run(1))
    # Two rounds = one round, then the same again from its output, with the noise continuing.
    g = torch.Generator().manual_seed(5)
    once = pipe.translate(x, t0=100, steps=3, generator=g)
    twice = pipe.translate(once, t0=100, steps=3, generator=g)
    torch.testing.assert_close(run(5, repeats=2), twice, rtol=0, atol=0)
    # One round is SDEdit: stochastic forward to t0, DDIM generation with θ.
    x_t0 = stochastic_forward(x, 100, bb.alphas_cumprod, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(run(0), pipe.generate(x_t0, 100, 3).final, rtol=0, atol=0)
    with pytest.raises(HifieditError, match="repeats"):
        run(0, repeats=0)


def test_cli_translate_seed_edit_and_force(tiny, tmp_path, capsys):  # noqa: F811
    folder, bb = tiny
    sketch = tmp_path / "sketch.png"
    blobs = np.full((16, 16, 3), 255, np.uint8)
    blobs[3:9, 4:12] = (230, 180, 40)
    blobs[10:14, 5:11] = (40, 40, 200)
    Image.fromarray(blobs).save(sketch)
    edit = _edit(bb, tmp_path / "e", "light skin tone", "dark skin tone", 3)
    base = ["translate", str(sketch), "--model", str(folder), "--t0", "120", "--steps", "3",
            "--repeats", "2"]
    a, b, c = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    assert main([*base, "-o", str(a)]) == 0 and main([*base, "-o", str(b)]) == 0
    assert a.read_bytes() == b.read_bytes()
    assert main([*base, "--seed", "1", "-o", str(b), "--force"]) == 0
    assert a.read_bytes() != b.read_bytes()
    first = a.read_bytes()
    assert main([*base, "-o", str(a)]) == 1 and "--force" in capsys.readouterr().err
    assert a.read_bytes() == first
    assert main([*base, "--edit", str(edit), "-o", str(c)]) == 0  # translate into the edited domain
    assert c.read_bytes() != first
