import json
import shutil

import pytest
import torch

from conftest import save_tiny_pipeline, tiny_unet
from hifiedit.diffusion.backbone import Backbone, load_backbone
from hifiedit.diffusion.schedule import linear_alphas_cumprod
from hifiedit.errors import HifieditError


def test_loads_pipeline_folder(tiny_model_dir):
    bb = load_backbone(tiny_model_dir)
    assert bb.prediction_type == "epsilon" and bb.sample_size == 16
    torch.testing.assert_close(bb.alphas_cumprod, linear_alphas_cumprod())
    assert not any(p.requires_grad for p in bb.unet.parameters())  # frozen explicitly
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 500])
    torch.testing.assert_close(bb.eps(x, t), bb.unet(x, t).sample)


def test_loads_bare_unet_folder_with_scheduler_beside_it(tiny_model_dir, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(tiny_model_dir / "unet", bare)
    with pytest.raises(HifieditError, match="scheduler_config.json"):
        load_backbone(bare)
    shutil.copy(tiny_model_dir / "scheduler" / "scheduler_config.json", bare)
    assert load_backbone(bare).sample_size == 16


@pytest.mark.parametrize("remove, message", [
    ("unet/config.json", "unet/config.json"),
    ("unet/diffusion_pytorch_model.safetensors", "no weights"),
])
def test_partial_folder_names_what_is_missing(tiny_model_dir, remove, message):
    (tiny_model_dir / remove).unlink()
    with pytest.raises(HifieditError, match=message):
        load_backbone(tiny_model_dir)


def test_non_diffusers_folder_and_unknown_name(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(HifieditError, match="not a diffusers model folder"):
        load_backbone(tmp_path)
    with pytest.raises(HifieditError, match="neither a folder"):
        load_backbone("no-such-model")


def test_other_model_class_is_refused(tiny_model_dir):
    cfg = tiny_model_dir / "unet" / "config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "_class_name": "UNet2DConditionModel"}))
    with pytest.raises(HifieditError, match="UNet2DConditionModel"):
        load_backbone(tiny_model_dir)


class _Oracle(torch.nn.Module):
    """Returns a fixed prediction, so the ε conversion can be checked exactly."""

    def __init__(self, out):
        super().__init__()
        self.out = out

    def forward(self, x, t):
        return type("Out", (), {"sample": self.out})()


def _noisy(t):
    ac = linear_alphas_cumprod().float()
    x0, eps = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    a = ac[t].view(-1, 1, 1, 1)
    return ac, x0, eps, a.sqrt() * x0 + (1 - a).sqrt() * eps, a


@pytest.mark.parametrize("prediction", ["v_prediction", "sample"])
def test_v_and_sample_predictions_become_eps(prediction):
    t = torch.tensor([10, 700])
    ac, x0, eps, x_t, a = _noisy(t)
    target = a.sqrt() * eps - (1 - a).sqrt() * x0 if prediction == "v_prediction" else x0
    bb = Backbone(_Oracle(target), ac.double(), prediction, "oracle", None)
    torch.testing.assert_close(bb.eps(x_t, t), eps, atol=1e-4, rtol=1e-4)


def test_learned_variance_keeps_eps_channels(tmp_path):
    folder = save_tiny_pipeline(tmp_path / "lv", out_channels=6)
    bb = load_backbone(folder)
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([5])
    torch.testing.assert_close(bb.eps(x, t), bb.unet(x, t).sample[:, :3])


def test_eps_can_run_an_edited_copy(tiny_model_dir):
    bb = load_backbone(tiny_model_dir)
    other = tiny_unet(seed=1)
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([5])
    torch.testing.assert_close(bb.eps(x, t, unet=other), other(x, t).sample)
