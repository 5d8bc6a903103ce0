import json

import pytest
import torch
from safetensors.torch import load_file

from hifiedit.cli import main
from hifiedit.errors import HifieditError
from hifiedit.train.base import BaseTrainConfig, train_base
from hifiedit.config import config_from_dict, load_config

TINY = dict(image_size=16, block_out_channels=(8, 16), attention_levels=(1,), norm_num_groups=4,
            attention_head_dim=8, batch_size=4, warmup_steps=2, log_every=1, checkpoint_every=3,
            eval_every=2, sample_every=1000, n_samples=4, sample_steps=2)


def _images(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, 3, 16, 16), generator=g) * 2 - 1


def _run(out, steps, **kw):
    config = BaseTrainConfig(**{**TINY, "max_steps": steps})
    return train_base(config, out, train_images=_images(), val_images=_images(2, 1),
                      progress=False, **kw)


def test_resume_continues_identically(tmp_path):
    _run(tmp_path / "straight", 7)
    _run(tmp_path / "split", 7, stop_after=4)  # "interrupted" at step 4 (checkpoint at 4)
    _run(tmp_path / "split", 7, resume=True)
    for group in ("model", "ema", "optimizer"):
        a = load_file(str(tmp_path / "straight" / "checkpoint" / f"{group}.safetensors"))
        b = load_file(str(tmp_path / "split" / "checkpoint" / f"{group}.safetensors"))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{group}/{k}")
    state = json.loads((tmp_path / "split" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 7
    # The exported EMA model is a diffusers pipeline folder that our loader reads.
    from hifiedit.diffusion.backbone import load_backbone

    bb = load_backbone(tmp_path / "split" / "model")
    assert bb.sample_size == 16 and bb.num_train_timesteps == 1000
    log = (tmp_path / "split" / "log.csv").read_text().splitlines()
    assert [int(r.split(",")[0]) for r in log[1:]] == list(range(1, 8))  # no duplicated rows
    # Each process's stretch of the run is recorded with its machine (for the model card).
    assert [(m["from_step"], m["to_step"]) for m in state["machines"]] == [(0, 4), (4, 7)]


def test_learning_rate_warms_up_holds_and_cools_down():
    from hifiedit.train.base import learning_rate

    config = BaseTrainConfig(**{**TINY, "lr": 1e-3, "warmup_steps": 4, "max_steps": 20,
                                "cooldown_steps": 5})
    lrs = [learning_rate(config, s) for s in range(20)]
    assert lrs[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert lrs[4:15] == pytest.approx([1e-3] * 11)
    assert lrs[15:] == pytest.approx([1e-3, 8e-4, 6e-4, 4e-4, 2e-4])  # the last update > 0
    assert learning_rate(BaseTrainConfig(**{**TINY, "warmup_steps": 1}), 10**5) == 3e-4  # no cooldown
    with pytest.raises(HifieditError, match="cooldown_steps"):
        BaseTrainConfig(**{**TINY, "max_steps": 5, "cooldown_steps": 6}).validate()


def test_a_cooled_branch_resumes_from_the_run_and_ends_at_lr_zero(tmp_path, monkeypatch):
    # The run trains at constant lr; a copy resumed with a cooldown is the released branch.
    import shutil

    from hifiedit.train import base

    _run(tmp_path / "run", 4)
    shutil.copytree(tmp_path / "run", tmp_path / "cooled")
    monkeypatch.setattr(base, "_load_data", lambda config: (_images(), _images(2, 1)))
    assert main(["train", "base", "--out", str(tmp_path / "cooled"), "--resume", "--max-steps",
                 "8", "--cooldown-steps", "4", "--device", "cpu"]) == 0
    state = json.loads((tmp_path / "cooled" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 8 and state["config"]["cooldown_steps"] == 4
    rows = (tmp_path / "cooled" / "log.csv").read_text().splitlines()[1:]
    assert [float(r.split(",")[2]) for r in rows[4:]] == pytest.approx([3e-4 * k / 4 for k in (4, 3, 2, 1)])


def test_machine_history_reads_a_checkpoint_that_predates_it():
    from hifiedit.train.run import machine_history

    old = {"step": 10, "wall_seconds": 60.0, "machine": "old box"}
    history = machine_history(old, 10, 60.0, 15, 90.0)
    assert history[0] == {"from_step": 0, "to_step": 10, "seconds": 60.0, "machine": "old box"}
    assert (history[1]["from_step"], history[1]["to_step"], history[1]["seconds"]) == (10, 15, 30.0)


def test_device_names_are_checked():
    from hifiedit.runtime import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(HifieditError, match="Unknown device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(HifieditError, match="sees no CUDA GPU"):
            resolve_device("cuda")


def test_refuses_to_clobber_or_resume_nothing(tmp_path):
    _run(tmp_path / "a", 1)
    with pytest.raises(HifieditError, match="--resume"):
        _run(tmp_path / "a", 2)
    with pytest.raises(HifieditError, match="no checkpoint"):
        _run(tmp_path / "b", 2, resume=True)


def test_resume_with_changed_model_is_refused(tmp_path):
    _run(tmp_path / "a", 1)
    config = BaseTrainConfig(**{**TINY, "max_steps": 2, "lr": 1e-3})
    with pytest.raises(HifieditError, match="lr"):
        train_base(config, tmp_path / "a", resume=True, train_images=_images(), progress=False)


def test_loss_decreases_on_a_tiny_set(tmp_path):
    config = BaseTrainConfig(**{**TINY, "max_steps": 60, "lr": 3e-3, "batch_size": 6, "flip": False,
                                "checkpoint_every": 1000, "eval_every": 1000})
    train_base(config, tmp_path / "a", train_images=_images(), progress=False)
    rows = [l.split(",") for l in (tmp_path / "a" / "log.csv").read_text().splitlines()[1:]]
    losses = [float(r[1]) for r in rows]
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10


@pytest.mark.parametrize(
    "values, message",
    [
        ({"lr": -1}, "lr"),
        ({"batch_size": 0}, "batch_size"),
        ({"bogus": 1}, "Unknown config keys"),
        ({"lr": "fast"}, "must be a number"),
        ({"block_out_channels": [10, 20]}, "divisible"),
        ({"beta_start": 0.1, "beta_end": 0.01}, "beta_start"),
    ],
)
def test_bad_config_values(values, message):
    with pytest.raises(HifieditError, match=message):
        config_from_dict(BaseTrainConfig, values)


def test_config_file_errors(tmp_path):
    with pytest.raises(HifieditError, match="does not exist"):
        load_config(BaseTrainConfig, tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(HifieditError, match="not valid JSON"):
        load_config(BaseTrainConfig, bad)


def test_cli_reports_unwritable_out(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({**TINY, "max_steps": 1}))
    assert main(["train", "base", "--config", str(cfg), "--out", str(blocker / "run")]) == 1
    assert "Cannot write" in capsys.readouterr().err


def test_release_writes_a_model_card(tmp_path):
    from hifiedit.diffusion.backbone import load_backbone
    from hifiedit.train.release import release_base_model

    _run(tmp_path / "run", 3, stop_after=2)  # an unfinished run: the card must say so
    dest = release_base_model(tmp_path / "run", tmp_path / "released")
    card = (dest / "README.md").read_text()
    assert "steps: **2**" in card and "Snapshot of a run in progress" in card
    assert (dest / "samples.png").is_file() and (dest / "loss.png").is_file()
    assert load_backbone(dest).sample_size == 16
    with pytest.raises(HifieditError, match="--force"):
        release_base_model(tmp_path / "run", dest)
