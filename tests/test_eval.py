import json
import math
from pathlib import Path

import pytest
import torch

from hifiedit.cli import main
from hifiedit.diffusion.backbone import load_backbone
from hifiedit.eval import metrics
from hifiedit.eval.recon import ReconConfig, run_recon_eval
from hifiedit.errors import HifieditError


def test_psnr_mae_golden():
    a = torch.zeros(1, 3, 8, 8)
    b = torch.full_like(a, 0.1)  # MSE 0.01 → 20 dB
    assert metrics.psnr(a, b).item() == pytest.approx(20.0, abs=1e-4)
    assert metrics.mae(a, b).item() == pytest.approx(0.1)


def test_ssim_properties():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 16, 16, generator=g)
    assert torch.allclose(metrics.ssim(a, a), torch.ones(2))
    noisy = (a + 0.1 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    noisier = (a + 0.3 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    s1, s2 = metrics.ssim(a, noisy), metrics.ssim(a, noisier)
    assert (s2 < s1).all() and (s1 < 1).all()
    torch.testing.assert_close(metrics.ssim(noisy, a), s1)  # symmetric
    # A constant shift of the mean only changes the luminance term: closed form.
    c = torch.full((1, 1, 11, 11), 0.5)
    lum = (2 * 0.5 * 0.6 + 1e-4) / (0.25 + 0.36 + 1e-4)
    assert metrics.ssim(c, c + 0.1).item() == pytest.approx(lum, rel=1e-5)


def test_recon_eval_rows_and_outputs(tiny_model_dir, tiny_images, tmp_path):
    config = ReconConfig(model=str(tiny_model_dir), steps=(2, 8), t0=100, limit=4, grid_images=2)
    report = run_recon_eval(config, json_path=tmp_path / "r.json", grid_path=tmp_path / "g.png",
                            progress=False, images=tiny_images)
    assert report["n_images"] == 4
    assert [(r["method"], r["steps"]) for r in report["rows"]] == [
        ("ddim", 2), ("ddim", 8), ("sdedit", 2), ("sdedit", 8)]
    on_disk = json.loads((tmp_path / "r.json").read_text())
    assert set(on_disk) >= {"model", "split", "t0", "n_images", "rows"}
    assert set(on_disk["rows"][0]) == {"method", "s_for", "steps", "mae", "psnr", "ssim",
                                       "inversion", "unet_passes"}
    assert set(on_disk["rows"][2]) == {"method", "s_for", "steps", "mae", "psnr", "ssim",
                                       "unet_passes"}  # SDEdit does not invert
    assert [r["unet_passes"] for r in report["rows"]] == [4, 16, 2, 8]
    # Deterministic inversion of an untrained model still reconstructs better with more steps.
    assert report["rows"][1]["psnr"] > report["rows"][0]["psnr"]
    assert (tmp_path / "g.png").is_file()
    with pytest.raises(HifieditError, match="--force"):
        run_recon_eval(config, json_path=tmp_path / "r.json", progress=False, images=tiny_images)


def test_recon_eval_is_reproducible_with_a_seed(tiny_model_dir, tiny_images):
    config = ReconConfig(model=str(tiny_model_dir), steps=(3,), t0=200, methods=("sdedit",))
    bb = load_backbone(tiny_model_dir)
    a = run_recon_eval(config, progress=False, backbone=bb, images=tiny_images)
    b = run_recon_eval(config, progress=False, backbone=bb, images=tiny_images)
    assert a["rows"] == b["rows"] and math.isfinite(a["rows"][0]["psnr"])


@pytest.mark.parametrize("args, message", [
    (["--t0", "1000"], "--t0"),
    (["--steps", "500"], "Step counts"),
    (["--methods", "magic"], "Unknown methods"),
])
def test_cli_eval_bad_arguments(tiny_model_dir, args, message, capsys):
    assert main(["eval", "recon", "--model", str(tiny_model_dir), *args]) == 1
    assert message in capsys.readouterr().err


def test_cli_non_diffusers_model(tmp_path, capsys):
    assert main(["eval", "recon", "--model", str(tmp_path)]) == 1
    assert "not a diffusers model folder" in capsys.readouterr().err


def test_recon_eval_reuses_matching_rows_of_an_earlier_report(tiny_model_dir, tiny_images, tmp_path):
    bb = load_backbone(tiny_model_dir)
    config = ReconConfig(model=str(tiny_model_dir), steps=(2, 4), t0=100, limit=4, grid_images=2)
    run_recon_eval(config, json_path=tmp_path / "a.json", progress=False, backbone=bb,
                   images=tiny_images)
    earlier = json.loads((tmp_path / "a.json").read_text())
    earlier["rows"][0]["psnr"] = 99.0  # marks the row: a copied row keeps it
    (tmp_path / "a.json").write_text(json.dumps(earlier))
    # One more step count: the old rows are copied, the new ones computed.
    more = ReconConfig(**{**config.__dict__, "steps": (2, 4, 3)})
    again = run_recon_eval(more, grid_path=tmp_path / "g.png", progress=False, backbone=bb,
                           images=tiny_images, reuse=tmp_path / "a.json")
    fresh = run_recon_eval(more, progress=False, backbone=bb, images=tiny_images)
    assert [(r["method"], r["steps"]) for r in again["rows"]] == [
        (r["method"], r["steps"]) for r in fresh["rows"]]
    assert again["rows"][0] == earlier["rows"][0]
    for a, b in zip(again["rows"][1:], fresh["rows"][1:]):
        assert a["psnr"] == pytest.approx(b["psnr"], abs=1e-4)
    assert Path(again["reused_rows_from"]).resolve() == (tmp_path / "a.json").resolve() and (tmp_path / "g.png").is_file()
    other_t0 = ReconConfig(**{**config.__dict__, "t0": 50})
    with pytest.raises(HifieditError, match="other settings.*t0"):
        run_recon_eval(other_t0, progress=False, backbone=bb, images=tiny_images,
                       reuse=tmp_path / "a.json")


def test_recon_eval_fixed_point_rows(tiny_model_dir, tiny_images):
    config = ReconConfig(model=str(tiny_model_dir), steps=(3,), t0=100, limit=4, methods=("ddim",),
                         inversions=("ddim", "fixed-point"), fp_iters=3)
    rows = run_recon_eval(config, progress=False, images=tiny_images)["rows"]
    assert [(r["inversion"], r["unet_passes"]) for r in rows] == [("ddim", 6), ("fixed-point×3", 15)]
    # Even an untrained model reconstructs better once inversion inverts generation exactly.
    assert rows[1]["psnr"] > rows[0]["psnr"] + 3


def test_recon_eval_conditioning_check(tiny_model_dir, tiny_images, tmp_path):
    """The conditioning probes show the rectifier another image's x0 and a grey one; a
    rectifier that ignores x0 scores the same on all three, one that reads it does not."""
    from hifiedit.diffusion.backbone import load_backbone
    from hifiedit.rectifier import Rectifier, RectifierConfig

    bb = load_backbone(tiny_model_dir)
    rect = Rectifier.for_unet(bb.unet, RectifierConfig(encoder_channels=(8,), norm_groups=4,
                                                       time_embed_dim=8, feature_dim=8,
                                                       branch_hidden=4)).eval()
    config = ReconConfig(model=str(tiny_model_dir), steps=(3,), t0=100, limit=4, batch_size=3,
                         methods=("ddim", "rectified", "rectified-other", "rectified-grey"))
    blind = run_recon_eval(config, progress=False, backbone=bb, images=tiny_images, rectifier=rect)
    # Zero-initialised offsets: R is the identity whatever it is shown.
    (check,) = blind["conditioning"]
    assert check["own_minus_other_db"] == 0 and check["own_minus_grey_db"] == 0
    gains = {r["method"]: r["gain_db"] for r in blind["rows"] if "gain_db" in r}
    assert set(gains) == {"rectified", "rectified-other", "rectified-grey"}
    assert all(abs(g) < 1e-4 for g in gains.values())  # grouped-conv rounding only
    with torch.no_grad():  # now make the offsets depend on x0
        for p in rect.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    seeing = run_recon_eval(config, progress=False, backbone=bb, images=tiny_images, rectifier=rect)
    (check,) = seeing["conditioning"]
    assert check["own_minus_other_db"] != 0 and check["own_minus_grey_db"] != 0
    rows = {r["method"]: r for r in seeing["rows"]}
    assert rows["rectified"]["unet_passes"] == 3 + 6 and 0 <= rows["rectified"]["share_worse"] <= 1
    # "Another image" is image i+1 of the evaluated set, whatever the batch size.
    again = run_recon_eval(ReconConfig(**{**config.__dict__, "batch_size": 4}), progress=False,
                           backbone=bb, images=tiny_images, rectifier=rect)
    assert again["conditioning"][0]["own_minus_other_db"] == pytest.approx(
        check["own_minus_other_db"], abs=1e-4)
