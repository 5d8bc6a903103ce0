"""Runs every fault kind of the fault-injection suite (tests/test_faults_*.py) and writes a
report: the kinds tried, which passed, and the failure text of any that did not.

    python bench/faults.py [--json bench/faults.json] [--force]

Each parametrised case of those tests is one fault kind: a trainer SIGKILLed at 3 random
points and resumed, a full disk during a checkpoint / release / image write, two writers at
once, a broken file given to a loader, property tests of the image loader and timestep grids.
Exit status 1 when any kind failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FILES = {"test_faults_kill.py": "trainer", "test_faults_disk.py": "cli",
         "test_faults_concurrency.py": "cli", "test_faults_loaders.py": "loader",
         "test_faults_properties.py": "property"}
TITLES = {
    "test_sigkill_at_random_points_then_resume_is_bit_exact": "SIGKILL at 3 random points, then --resume",
    "test_full_disk_during_a_checkpoint": "full disk while a checkpoint is written",
    "test_full_disk_during_a_release": "full disk while a release is written",
    "test_full_disk_while_writing_an_image": "full disk while an output image is written",
    "test_two_trainers_in_one_run_folder": "two trainers in one run folder",
    "test_two_processes_writing_one_output_image": "two processes writing one output image",
    "test_two_releases_to_one_folder": "two releases to one folder",
    "test_a_broken_input_is_refused_in_one_line_naming_it": "broken input",
}


class Collector:
    def __init__(self):
        self.kinds: list[dict] = []

    def pytest_runtest_logreport(self, report):
        if report.when == "call" or (report.when == "setup" and not report.passed):
            file, _, name = report.nodeid.partition("::")
            func, _, param = name.partition("[")
            title = TITLES.get(func, func.removeprefix("test_").replace("_", " "))
            self.kinds.append({
                "kind": f"{title}: {param.rstrip(']')}" if param else title,
                "area": FILES[Path(file).name], "test": report.nodeid,
                "passed": report.passed, "seconds": round(report.duration, 1),
                **({"failure": report.longreprtext[-2000:]} if not report.passed else {}),
                **dict(report.user_properties)})


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=str(ROOT / "bench" / "faults.json"))
    p.add_argument("--force", action="store_true", help="overwrite an existing --json")
    args = p.parse_args()
    out = Path(args.json)
    if out.exists() and not args.force:
        print(f"{out} exists; pass --force to overwrite it.", file=sys.stderr)
        return 1
    import pytest

    from hifiedit.runtime import machine_description, write_text_atomic

    collector = Collector()
    start = time.perf_counter()
    os.chdir(ROOT)
    pytest.main(["-q", "-p", "no:cacheprovider", *(f"tests/{f}" for f in FILES)],
                plugins=[collector])
    kinds = collector.kinds
    failed = [k for k in kinds if not k["passed"]]
    report = {
        "command": "python bench/faults.py",
        "machine": machine_description(),
        "wall_seconds": round(time.perf_counter() - start, 1),
        "cpu_seconds": round(time.process_time(), 1),
        "tried": len(kinds), "passed": len(kinds) - len(failed),
        "by_area": {a: sum(k["area"] == a for k in kinds) for a in sorted(set(FILES.values()))},
        "failed": [k["kind"] for k in failed],
        "kinds": kinds,
    }
    write_text_atomic(out, json.dumps(report, indent=1) + "\n")
    print(f"{report['passed']}/{report['tried']} fault kinds passed; report: {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
