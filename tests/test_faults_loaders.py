"""Broken inputs to every loader (base model, rectifier, edit, CLIP, checkpoint, image): each
is refused with one line that names the file or folder, never a traceback, never loaded."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import nonzero_rectifier, randomise, save_tiny_pipeline, tiny_clip, tiny_tokenizer
from faults_support import write_pngs
from safetensors.torch import load_file, save_file

from hifiedit.cli import main
from hifiedit.errors import HifieditError


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """One valid artefact of each kind."""
    from hifiedit.diffusion.backbone import load_backbone, model_digest
    from hifiedit.edit import Edit, EditParams
    from hifiedit.edit.params import EditParamsConfig
    from hifiedit.train.base import BaseTrainConfig, train_base

    root = tmp_path_factory.mktemp("good")
    base = save_tiny_pipeline(root / "base")
    bb = load_backbone(base)
    nonzero_rectifier(bb.unet).save_pretrained(root / "rect", base_digest=model_digest(bb))
    params = EditParams.for_unet(bb.unet, EditParamsConfig(rank=2))
    randomise(params)
    Edit(params, model_digest(bb), {"t0": 20, "rectifier": None}).save_pretrained(root / "edit")
    tokenizer = tiny_tokenizer()
    tiny_clip(tokenizer).save_pretrained(root / "clip")
    tokenizer.save_pretrained(root / "clip")
    config = BaseTrainConfig(image_size=16, block_out_channels=(8, 16), attention_levels=(1,),
                             norm_num_groups=4, attention_head_dim=8, batch_size=2, max_steps=1,
                             eval_every=1000, sample_every=1000)
    g = torch.Generator().manual_seed(0)
    train_base(config, root / "run", train_images=torch.rand((4, 3, 16, 16), generator=g),
               progress=False)
    write_pngs(root / "img", 1)
    return root


# ------------------------------------------------------------------ corruptions


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def garble(path):
    data = bytearray(path.read_bytes())
    g = torch.Generator().manual_seed(0)
    data[8:72] = bytes(torch.randint(0, 256, (64,), generator=g).tolist())
    path.write_bytes(bytes(data))


def _tensors(path):
    """A file's tensors, copied out of the memory map (the file is about to be rewritten)."""
    return {k: v.clone() for k, v in load_file(str(path)).items()}


def pickle_instead(path):
    torch.save(_tensors(path), path)  # what torch.save writes: a zip of pickles


def poison(value):
    def apply(path):
        tensors = _tensors(path)
        name = next(k for k, v in sorted(tensors.items()) if v.is_floating_point())
        tensors[name] = tensors[name].clone()
        tensors[name].view(-1)[0] = value
        save_file(tensors, str(path))
    return apply


def drop_tensor(path):
    tensors = _tensors(path)
    tensors.pop(sorted(tensors)[0])
    save_file(tensors, str(path))


def reshape_tensor(path):
    tensors = _tensors(path)
    name = next(k for k, v in sorted(tensors.items()) if v.ndim >= 2)
    tensors[name] = torch.zeros(tensors[name].shape[0] + 1, *tensors[name].shape[1:])
    save_file(tensors, str(path))


def set_json(**changes):
    def apply(path):
        config = json.loads(path.read_text())
        for key, value in changes.items():
            if callable(value):
                value = value(config[key])
            config[key] = value
        path.write_text(json.dumps(config))
    return apply


def not_json(path):
    path.write_text('{"_class_name": "Rectifier", ')


def empty(path):
    path.write_bytes(b"")


def first_layer_shape(layers):
    name = sorted(layers)[0]
    return {**layers, name: [layers[name][0] * 2, *layers[name][1:]]}


# ------------------------------------------------------------------ loaders


def _cli(argv, capsys):
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert rc == 1, err
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.startswith("hifiedit: error:")]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


def load_via_cli(kind, root, tmp_path, capsys, monkeypatch):
    img, base, out = root / "img" / "img0.png", root / "base", tmp_path / "out.png"
    common = ["--steps", 2, "--t0", 20, "-o", out]
    if kind == "base":
        return _cli(["reconstruct", img, "--model", root / "base", "--no-rectifier", *common], capsys)
    if kind == "rect":
        return _cli(["reconstruct", img, "--model", base, "--rectifier", root / "rect", *common], capsys)
    if kind == "edit":
        return _cli(["edit", img, "--edit", root / "edit", "--model", base, "--rectifier", "none",
                     "--steps", 2, "-o", out], capsys)
    if kind == "run":
        from hifiedit.train import base as base_trainer

        monkeypatch.setattr(base_trainer, "_load_data", lambda config: pytest.fail("loaded"))
        return _cli(["train", "base", "--out", root / "run", "--resume", "--device", "cpu"], capsys)
    if kind == "img":
        return _cli(["reconstruct", img, "--model", base, "--no-rectifier", *common], capsys)
    if kind == "clip":
        from hifiedit.guidance import load_clip

        with pytest.raises(HifieditError) as e:
            load_clip(root / "clip")
        assert "\n" not in str(e.value)
        return str(e.value)
    raise ValueError(kind)


BASE_W = "base/unet/diffusion_pytorch_model.safetensors"
CASES = {
    "base: truncated safetensors": (BASE_W, truncate),
    "base: garbled safetensors": (BASE_W, garble),
    "base: pickle instead of safetensors": (BASE_W, pickle_instead),
    "base: NaN weight": (BASE_W, poison(float("nan"))),
    "base: inf weight": (BASE_W, poison(float("inf"))),
    "base: tensor missing from the file": (BASE_W, drop_tensor),
    "base: config names another architecture": ("base/unet/config.json",
                                                set_json(_class_name="UNet2DConditionModel")),
    "base: config shapes differ from the weights": ("base/unet/config.json",
                                                    set_json(block_out_channels=[16, 32])),
    "base: config value of the wrong type": ("base/unet/config.json", set_json(sample_size="big")),
    "base: config not JSON": ("base/unet/config.json", not_json),
    "base: schedule out of range": ("base/scheduler/scheduler_config.json", set_json(beta_end=2.0)),
    "base: schedule value of the wrong type": ("base/scheduler/scheduler_config.json",
                                               set_json(num_train_timesteps="many")),
    "rectifier: truncated safetensors": ("rect/model.safetensors", truncate),
    "rectifier: pickle instead of safetensors": ("rect/model.safetensors", pickle_instead),
    "rectifier: NaN weight": ("rect/model.safetensors", poison(float("nan"))),
    "rectifier: config names another architecture": ("rect/config.json",
                                                     set_json(_class_name="HifiEdit")),
    "rectifier: layer shapes of another U-Net": ("rect/config.json",
                                                 set_json(layers=first_layer_shape)),
    "rectifier: made for another base model": ("rect/config.json", set_json(base_digest="0" * 64)),
    "rectifier: config value of the wrong type": ("rect/config.json", set_json(norm_groups="4")),
    "rectifier: config value out of range": ("rect/config.json", set_json(time_embed_dim=-2)),
    "rectifier: config not JSON": ("rect/config.json", not_json),
    "edit: truncated safetensors": ("edit/edit.safetensors", truncate),
    "edit: garbled safetensors": ("edit/edit.safetensors", garble),
    "edit: pickle instead of safetensors": ("edit/edit.safetensors", pickle_instead),
    "edit: inf weight": ("edit/edit.safetensors", poison(float("-inf"))),
    "edit: tensor of the wrong shape": ("edit/edit.safetensors", reshape_tensor),
    "edit: made for another base model": ("edit/config.json", set_json(base_digest="0" * 64)),
    "edit: config names another architecture": ("edit/config.json", set_json(_class_name="Rectifier")),
    "edit: config value of the wrong type": ("edit/config.json", set_json(t0="four hundred")),
    "edit: config value out of range": ("edit/config.json",
                                        set_json(params=lambda p: {**p, "rank": -1})),
    "clip: truncated safetensors": ("clip/model.safetensors", truncate),
    "clip: pickle instead of safetensors": ("clip/model.safetensors", pickle_instead),
    "clip: NaN weight": ("clip/model.safetensors", poison(float("nan"))),
    "clip: tensor missing from the file": ("clip/model.safetensors", drop_tensor),
    "clip: config names another architecture": ("clip/config.json", set_json(model_type="bert")),
    "clip: config value of the wrong type": ("clip/config.json", set_json(projection_dim="wide")),
    "checkpoint: truncated safetensors": ("run/checkpoint/model.safetensors", truncate),
    "checkpoint: pickle instead of safetensors": ("run/checkpoint/optimizer.safetensors",
                                                  pickle_instead),
    "checkpoint: NaN weight": ("run/checkpoint/ema.safetensors", poison(float("nan"))),
    "checkpoint: state not JSON": ("run/checkpoint/state.json", not_json),
    "checkpoint: a tensor group missing": ("run/checkpoint/ema.safetensors", lambda p: p.unlink()),
    "image: truncated PNG": ("img/img0.png", truncate),
    "image: garbled PNG": ("img/img0.png", garble),
    "image: empty file": ("img/img0.png", empty),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_broken_input_is_refused_in_one_line_naming_it(case, good, tmp_path, capsys, monkeypatch):
    rel, corrupt = CASES[case]
    root = tmp_path / "copy"
    top = rel.split("/")[0]
    for part in {"base", "img", top}:
        shutil.copytree(good / part, root / part)
    corrupt(root / rel)
    kind = {"rectifier": "rect", "checkpoint": "run", "image": "img"}.get(case.split(":")[0],
                                                                          case.split(":")[0])
    line = load_via_cli(kind, root, tmp_path, capsys, monkeypatch)
    named = root / rel
    assert str(named) in line or str(named.parent) in line or str(root / top) in line, line
    assert not (tmp_path / "out.png").exists()
