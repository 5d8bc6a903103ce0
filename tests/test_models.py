"""One resolver for shipped model names, and reports that name folders portably."""

import json
import re
import subprocess
from pathlib import Path

import pytest

from hifiedit import models
from hifiedit.errors import HifieditError
from hifiedit.eval.bench import run_bench
from hifiedit.eval.recon import ReconConfig, run_recon_eval
from hifiedit.models import MODELS_DIR, portable_name, resolve


def test_every_kind_resolves_aliases_names_and_folders(tmp_path):
    assert resolve("default", "base") == MODELS_DIR / "openmoji32-ddpm"
    assert resolve("openmoji32-ddpm", "base") == MODELS_DIR / "openmoji32-ddpm"
    assert resolve("default", "rectifier") == MODELS_DIR / "openmoji32-rectifier"
    assert resolve("judge", "clip") == MODELS_DIR / "openmoji32-judge"
    assert resolve("light-to-dark", "edit") == MODELS_DIR / "light-to-dark"
    assert resolve(tmp_path, "edit") == tmp_path  # an existing folder is taken as given
    assert "openmoji32-clip-noise" in models.shipped("clip")
    assert "openmoji32-ddpm" not in models.shipped("clip")


def test_a_name_of_another_kind_is_refused_with_what_is_shipped():
    with pytest.raises(HifieditError, match=r"No rectifier 'openmoji32-ddpm'.*shipped: openmoji32-rectifier"):
        resolve("openmoji32-ddpm", "rectifier")
    with pytest.raises(HifieditError, match="No edit 'no-such-edit'.*light-to-dark"):
        resolve("no-such-edit", "edit")


def test_a_missing_alias_says_how_to_make_it(monkeypatch, tmp_path):
    monkeypatch.setattr(models, "MODELS_DIR", tmp_path)
    with pytest.raises(HifieditError, match="'judge' CLIP model.*not shipped.*judge-openmoji32.json"):
        resolve("judge", "clip")
    assert not models.is_shipped("default", "rectifier") and models.shipped("edit") == []


def test_portable_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "a").mkdir(parents=True)
    assert portable_name(MODELS_DIR / "openmoji32-ddpm") == "openmoji32-ddpm"
    assert portable_name(tmp_path / "runs" / "a") == "runs/a"
    assert portable_name("runs/b/../a") == "runs/a"
    assert portable_name(tmp_path) == "."
    assert portable_name("default") == "default"
    outside = tmp_path.parent / "elsewhere" / "model"
    assert portable_name(outside) == "../elsewhere/model"  # still found from the project's root


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _assert_no_absolute_path(report_file: Path, *roots: Path):
    text = report_file.read_text()
    for root in roots:
        assert str(root) not in text
    absolute = [s for s in _strings(json.loads(text)) if s.startswith(("/", "~")) or ":\\" in s]
    assert not absolute, absolute


def test_written_reports_hold_no_absolute_path(tiny, rect_dir, tiny_images, tmp_path, monkeypatch):
    folder, bb = tiny
    project = tmp_path / "project"
    (project / "out").mkdir(parents=True)
    monkeypatch.chdir(project)
    # Models outside the project, outputs inside it, given as absolute paths.
    config = ReconConfig(model=str(folder), methods=("ddim", "rectified"), rectifier=str(rect_dir),
                         steps=(2,), t0=100, limit=2, grid_images=2)
    run_recon_eval(config, json_path=project / "out" / "r.json", grid_path=project / "out" / "g.png",
                   progress=False, backbone=bb, images=tiny_images)
    report = json.loads((project / "out" / "r.json").read_text())
    assert (project / report["model"]).resolve() == folder.resolve()
    rectified = next(r for r in report["rows"] if r["method"] == "rectified")
    assert (project / rectified["rectifier"]).resolve() == rect_dir.resolve()
    assert report["plot"] == "out/r_psnr.png"
    _assert_no_absolute_path(project / "out" / "r.json", tmp_path, folder, rect_dir)

    run_bench(model=str(folder), rectifier=str(rect_dir), batches=(1,), t0=100, steps=2, repeats=1,
              json_path=project / "out" / "b.json", backbone=bb)
    _assert_no_absolute_path(project / "out" / "b.json", tmp_path, folder, rect_dir)


def _project_files(root: Path, pattern: str) -> list[Path]:
    """The project's files (tracked ones in a git checkout: outputs lying around are not its)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", pattern], cwd=root, capture_output=True,
                             check=True).stdout.decode()
        return [root / f for f in out.split("\0") if f]
    except (OSError, subprocess.CalledProcessError):
        return [f for f in root.rglob(pattern) if ".venv" not in f.parts]


def test_committed_reports_hold_no_absolute_path():
    root = Path(__file__).resolve().parent.parent
    bad = []
    for f in _project_files(root, "*.json"):
        try:
            report = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        bad += [f"{f.relative_to(root)}: {s}" for s in _strings(report)
                if re.match(r"/[\w.-]+/", s)]
    assert not bad, bad
