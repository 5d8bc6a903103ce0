"""Two processes writing one run folder, one output image or one release at once: one wins
whole, the other refuses with one line; no file mixes the two."""

from __future__ import annotations

import time

import numpy as np
from faults_support import Setup, error_line, finish, run_cli, tensors_of, tiny_base_dir, write_pngs


def _wait_for(path, timeout=120):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_two_trainers_in_one_run_folder(tmp_path):
    setup = Setup("base", tmp_path / "setup", steps=6, every=2)
    out, work = tmp_path / "run", tmp_path / "children"
    first = run_cli(setup.argv(out, resume=False), work, "base", wait=False)
    _wait_for(out / "log.csv")  # written after the lock is taken, before the first step
    rc, log, _ = run_cli(setup.argv(out, resume=False), work, "base")
    assert rc == 1 and "in use by another training process" in error_line(log), log
    rc, log, _ = finish(first)
    assert rc == 0, log
    rows = (out / "log.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(1, 7))
    assert tensors_of(out / "checkpoint")  # one whole checkpoint, step 6
    # The lock goes with its process: the finished run can be resumed at once.
    rc, log, _ = run_cli(["train", "base", "--out", out, "--resume", "--max-steps", 7,
                          "--device", "cpu"], work, "base")
    assert rc == 0, log


def test_two_processes_writing_one_output_image(tmp_path):
    from PIL import Image

    model = tiny_base_dir(tmp_path)
    pngs = write_pngs(tmp_path / "in", 2)
    work = tmp_path / "children"

    def cmd(src, out):
        return ["reconstruct", src, "--model", model, "--no-rectifier", "--steps", 2, "--t0", 20,
                "-o", out]

    # What each would write alone.
    alone = []
    for i in range(2):
        assert run_cli(cmd(pngs / f"img{i}.png", tmp_path / f"alone{i}.png"), work)[0] == 0
        alone.append(np.asarray(Image.open(tmp_path / f"alone{i}.png")))
    assert not np.array_equal(alone[0], alone[1])
    target = tmp_path / "out" / "same.png"
    procs = [run_cli(cmd(pngs / f"img{i}.png", target), work, wait=False) for i in range(2)]
    results = [finish(p) for p in procs]
    assert sorted(rc for rc, _, _ in results) == [0, 1], results
    loser = next(log for rc, log, _ in results if rc == 1)
    assert str(target) in error_line(loser)
    winner = next(i for i, (rc, _, _) in enumerate(results) if rc == 0)
    assert np.array_equal(np.asarray(Image.open(target)), alone[winner])
    assert [p.name for p in target.parent.iterdir()] == ["same.png"]


def test_two_releases_to_one_folder(tmp_path):
    setup = Setup("base", tmp_path / "setup", steps=2, every=2)
    run, work = tmp_path / "run", tmp_path / "children"
    assert run_cli(setup.argv(run, resume=False), work, "base")[0] == 0
    dest = tmp_path / "released"
    procs = [run_cli(["release", "base", "--run", run, "--to", dest], work, wait=False)
             for _ in range(2)]
    results = [finish(p) for p in procs]
    assert sorted(rc for rc, _, _ in results) == [0, 1], results
    line = error_line(next(log for rc, log, _ in results if rc == 1))
    assert str(dest) in line and ("--force" in line), line
    from hifiedit.diffusion.backbone import load_backbone

    assert load_backbone(dest).sample_size == 16 and (dest / "README.md").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if "released" in p.name) == ["released"]
