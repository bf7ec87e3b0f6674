"""The built wheel works away from the checkout: installed offline into a fresh venv that reuses this one's
dependencies, `compress --help` and the tiny pipeline run from another folder, with the packaged configs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SKIPPED = (".git", ".venv", "runs", "build", "*.egg-info", "__pycache__", "lightning_logs")


def run(*command: str | Path, cwd: Path) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": ""}
    done = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{command} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed (no index, no dependencies: this venv's are reused)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"  # a copy: building writes build/ and *.egg-info next to the sources
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*SKIPPED))
    pip = [sys.executable, "-m", "pip"]
    run(*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp / "dist", source, cwd=tmp)
    (wheel,) = (tmp / "dist").glob("compress-*.whl")
    fresh = tmp / "venv"
    venv.create(fresh, with_pip=False)
    python = fresh / "bin" / "python"
    run(*pip, "--python", python, "install", "--no-deps", "--no-index", "-q", wheel, cwd=tmp)
    site = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp).strip()
    # appended after the fresh site-packages, and not a site dir: this venv's editable finder stays off
    (Path(site) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return fresh


def test_the_wheel_holds_compress_callbacks_and_configs_and_no_top_level_callbacks(installed, tmp_path):
    python = installed / "bin" / "python"
    probe = (
        "import importlib.util, compress, compress.callbacks\n"
        "from compress.commands.pipeline.run import default_pipeline\n"
        "with default_pipeline() as path: print(compress.__file__, path, path.is_file())\n"
        "print(importlib.util.find_spec('callbacks'))\n"
    )
    package, default, exists, top_level = run(python, "-c", probe, cwd=tmp_path).split()
    assert package.startswith(str(installed)) and default.startswith(str(installed)), (package, default)
    assert exists == "True" and top_level == "None"


def test_the_installed_command_runs_the_tiny_pipeline_from_another_folder(installed, tmp_path):
    compress = installed / "bin" / "compress"
    assert "pipeline" in run(compress, "--help", cwd=tmp_path)
    configs = run(
        installed / "bin" / "python", "-c", "import compress.configs as c; print(c.__path__[0])", cwd=tmp_path
    )
    tiny = Path(configs.strip()) / "pipelines" / "tiny.yaml"
    out = run(compress, "pipeline", "--config", tiny, "--output", tmp_path / "run", cwd=tmp_path)
    assert "report" in out and (tmp_path / "run" / "report.md").is_file()
    assert (tmp_path / "run" / "export" / "hf" / "config.json").is_file()
