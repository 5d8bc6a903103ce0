"""A full disk while a checkpoint, a release or an output image is written: one clear line,
the previous checkpoint / release / image intact and loadable, no partial file left.

The disk fills through RLIMIT_FSIZE, set in the child process before the command runs: any
write that would grow a file past the limit fails with EFBIG, as a full disk fails with ENOSPC
(both OSError), with no root rights or mounts needed.
"""

from __future__ import annotations

import pytest
import torch
from faults_support import Setup, error_line, run_cli, tensors_of, tiny_base_dir, write_pngs

LIMIT = 4096  # bytes: above the logs and JSON files, below every weights file and the PNG


def leftovers(folder):
    return sorted(p.name for p in folder.rglob("*") if ".tmp" in p.name or p.name.endswith(".old"))


def test_full_disk_during_a_checkpoint(tmp_path):
    from hifiedit.diffusion.backbone import load_backbone

    setup = Setup("base", tmp_path / "setup", steps=2, every=2)
    out, work = tmp_path / "run", tmp_path / "children"
    rc, log, _ = run_cli(setup.argv(out, resume=False), work, "base")
    assert rc == 0, log
    before = tensors_of(out / "checkpoint")
    rc, log, _ = run_cli(["train", "base", "--out", out, "--resume", "--max-steps", 4,
                          "--device", "cpu"], work, "base", fsize=LIMIT)
    assert rc == 1
    line = error_line(log)
    assert "checkpoint" in line and "File too large" in line and str(out) in line, line
    after = tensors_of(out / "checkpoint")  # the step-2 checkpoint, whole
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in after)
    assert load_backbone(out / "model").sample_size == 16
    assert leftovers(out) == []
    # And the run goes on from it once there is room again.
    rc, log, _ = run_cli(["train", "base", "--out", out, "--resume", "--max-steps", 4,
                          "--device", "cpu"], work, "base")
    assert rc == 0, log


def test_full_disk_during_a_release(tmp_path):
    from hifiedit.diffusion.backbone import load_backbone

    setup = Setup("base", tmp_path / "setup", steps=2, every=2)
    run, dest, work = tmp_path / "run", tmp_path / "released", tmp_path / "children"
    assert run_cli(setup.argv(run, resume=False), work, "base")[0] == 0
    rc, log, _ = run_cli(["release", "base", "--run", run, "--to", dest], work)
    assert rc == 0, log
    card = (dest / "README.md").read_text()
    rc, log, _ = run_cli(["release", "base", "--run", run, "--to", dest, "--force"], work,
                         fsize=LIMIT)
    assert rc == 1
    line = error_line(log)
    assert "release" in line and str(dest) in line and "File too large" in line, line
    assert (dest / "README.md").read_text() == card and load_backbone(dest).sample_size == 16
    assert leftovers(tmp_path / "released") == [] and not list(tmp_path.glob(".released.tmp*"))
    assert not (tmp_path / "released.old").exists()


@pytest.mark.parametrize("force", [False, True], ids=["new", "overwrite"])
def test_full_disk_while_writing_an_image(tmp_path, force):
    from PIL import Image

    model = tiny_base_dir(tmp_path)
    src = write_pngs(tmp_path / "in", 1) / "img0.png"
    out, work = tmp_path / "out" / "rec.png", tmp_path / "children"
    cmd = ["reconstruct", src, "--model", model, "--no-rectifier", "--steps", 2, "--t0", 20,
           "-o", out]
    if force:
        assert run_cli(cmd, work)[0] == 0
        previous = out.read_bytes()
    rc, log, _ = run_cli(cmd + (["--force"] if force else []), work, fsize=64)
    assert rc == 1
    line = error_line(log)
    assert str(out) in line and "File too large" in line, line
    if force:
        assert out.read_bytes() == previous
        Image.open(out).load()
    else:
        assert not out.exists()
    assert sorted(p.name for p in out.parent.iterdir()) == (["rec.png"] if force else [])
