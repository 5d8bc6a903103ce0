"""Every trainer SIGKILLed at 3 random points of a real run, then resumed with `--resume`: the
final weights equal an uninterrupted run's bit for bit, and no kill costs more than one
checkpoint interval of work.

Kill points are drawn (seeded, so a failure reproduces; HIFIEDIT_FAULT_SEED varies them) from
the events the uninterrupted run went through after the resume point: optimizer steps, each
safetensors file written, each rename, so kills land mid-checkpoint and between the two
renames that swap a checkpoint in, not only between steps.
"""

from __future__ import annotations

import os
import random

import pytest
from faults_support import Setup, assert_bitwise_equal, checkpoint_step, run_cli, tensors_of

SEED = os.environ.get("HIFIEDIT_FAULT_SEED", "0")


def killed_and_resumed(trainer: str, tmp_path, n_kills: int = 3) -> list[dict]:
    """Returns what each kill hit (for the fault report)."""
    from safetensors.torch import load_file

    setup = Setup(trainer, tmp_path / "setup")
    work = tmp_path / "children"
    ref = tmp_path / "reference"
    setup.prepare(ref)
    rc, log, report = run_cli(setup.argv(ref, resume=False), work, trainer, count=True)
    assert rc == 0, log
    events = [tuple(e) for e in report["events"]]
    assert sum(kind == "optimizer step" for _, kind in events) == setup.steps

    rng = random.Random(f"{SEED}-{trainer}")
    out, kills = tmp_path / "run", []
    setup.prepare(out)
    for i in range(n_kills):
        start = checkpoint_step(out)
        if start is None and kills:
            # Killed before any checkpoint existed: --resume must say so in one line.
            rc, log, _ = run_cli(setup.argv(out, resume=True), work, trainer)
            assert rc == 1 and "holds no checkpoint" in log and len(log.strip().splitlines()) == 1, log
        ahead = [e for e in events if e[0] > (start or 0)]
        # Kill i falls in the first 1/(n − i) of what is left, so all n land before the end.
        kill_at = rng.randint(1, max(1, len(ahead) // (n_kills - i)))
        rc, log, hit = run_cli(setup.argv(out, resume=start is not None), work, trainer,
                               count=True, start_step=start or 0, kill_at=kill_at)
        assert rc == -9, f"expected a SIGKILL at event {kill_at} ({ahead[kill_at - 1]}): {log}"
        # (A resumed run may take a few events fewer than the reference: a kill between the
        # two renames of an export leaves no folder to move aside the next time.)
        assert hit["n"] == kill_at and hit["step"] > (start or 0)
        after = checkpoint_step(out)
        lost = hit["step"] - (after or 0)
        assert lost <= setup.every, (f"kill at step {hit['step']} ({hit['event']}) left the "
                                     f"checkpoint at {after}: {lost} steps lost")
        if after is not None:
            tensors_of(out / "checkpoint")  # loadable, whatever the kill interrupted
        kills.append({"step": hit["step"], "event": hit["event"], "checkpoint_after": after})

    start = checkpoint_step(out)
    rc, log, _ = run_cli(setup.argv(out, resume=start is not None), work, trainer)
    assert rc == 0, log
    assert checkpoint_step(out) == setup.steps
    assert_bitwise_equal(tensors_of(ref / "checkpoint"), tensors_of(out / "checkpoint"), "checkpoint")
    assert_bitwise_equal(load_file(str(setup.exported(ref))), load_file(str(setup.exported(out))),
                         "exported weights")
    rows = (out / "log.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(1, setup.steps + 1))  # no repeats
    return kills


@pytest.mark.parametrize("trainer", ["base", "clip", "rectifier", "edit"])
def test_sigkill_at_random_points_then_resume_is_bit_exact(trainer, tmp_path, record_property):
    kills = killed_and_resumed(trainer, tmp_path)
    record_property("kills", kills)  # where each kill landed, for bench/faults.json
    assert len(kills) == 3
