"""Seconds per iteration of `hifiedit train base` on a small config, in 1 and in N processes.

    python bench/multiproc_speed.py [--procs 1,2] [--steps 30] [--json FILE [--force]]

Each run is the CLI itself (`--num-processes N --device cpu`, the OpenMoji train split at
32 px) with the same global batch; s/iter is measured from the run's own log (process 0's
wall clock over the steps after the first five, which pay for start-up). The machine and its
load average go in the report: on a shared machine the load, not the code, can set the pace.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CONFIG = dict(image_size=32, block_out_channels=[16, 32], attention_levels=[1], norm_num_groups=8,
              attention_head_dim=16, batch_size=32, warmup_steps=5, log_every=1,
              checkpoint_every=10_000, eval_every=10_000, sample_every=10_000, threads=1)
SKIP = 5


def run(procs: int, steps: int, tmp: Path) -> dict:
    cfg = tmp / "config.json"
    cfg.write_text(json.dumps({**CONFIG, "max_steps": steps}))
    out = tmp / f"run-{procs}"
    cmd = [sys.executable, "-m", "hifiedit", "train", "base", "--config", str(cfg), "--out",
           str(out), "--device", "cpu", "--num-processes", str(procs)]
    load_before = os.getloadavg()[0]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"run with {procs} processes failed:\n{done.stderr[-2000:]}")
    rows = list(csv.DictReader((out / "log.csv").open()))
    wall = [float(r["wall_s"]) for r in rows]
    return {"processes": procs, "steps": steps, "global_batch": CONFIG["batch_size"],
            "s_per_iter": round((wall[-1] - wall[SKIP - 1]) / (len(wall) - SKIP), 4),
            "load_average_before": load_before, "load_average_after": os.getloadavg()[0],
            "command": " ".join(["hifiedit", *cmd[3:]]).replace(str(tmp), "TMP")}


def main() -> None:
    from hifiedit.runtime import machine_description, write_text_atomic

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--procs", default="1,2")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--json")
    p.add_argument("--force", action="store_true")
    args = p.parse_args()
    if args.json and Path(args.json).exists() and not args.force:
        sys.exit(f"{args.json} exists: pass --force to replace it.")
    with tempfile.TemporaryDirectory() as tmp:
        runs = [run(int(n), args.steps, Path(tmp)) for n in args.procs.split(",")]
    report = {"machine": machine_description(), "config": CONFIG, "runs": runs}
    for r in runs:
        print(f"{r['processes']} process(es): {r['s_per_iter']:.3f} s/iter "
              f"(load average {r['load_average_before']:.1f} → {r['load_average_after']:.1f})")
    if args.json:
        write_text_atomic(Path(args.json), json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
