"""Every docstring example (``>>>``) in compress/ and callbacks/ runs, in a fresh folder.

Examples that name the demo's folders (``runs/default/stages/teacher/model``) find a tiny random teacher
there (the ``demo_folders`` fixture), so they run in seconds; their output is compared as doctest does.
"""

from __future__ import annotations

import doctest
import importlib
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"compress": ROOT / "compress", "compress.callbacks": ROOT / "callbacks"}


def modules_with_examples() -> list[str]:
    names = []
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            if ">>>" not in path.read_text():
                continue
            parts = list(path.relative_to(folder).with_suffix("").parts)
            names.append(".".join([package, *(parts[:-1] if parts[-1] == "__init__" else parts)]))
    return names


@pytest.mark.parametrize("name", modules_with_examples())
def test_docstring_examples_run(name, demo_folders, tmp_path, monkeypatch):
    shutil.copytree(demo_folders, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(name)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = [t for t in doctest.DocTestFinder().find(module, name) if t.examples]
    for test in tests:
        runner.run(test, out=lambda text: print(text, end=""))
    failed, attempted = runner.summarize(verbose=False)
    assert attempted > 0, f"{name}: no example found"
    assert failed == 0, f"{name}: {failed} of {attempted} docstring examples failed (output above)"


def test_no_example_is_skipped():
    skipped = [
        f"{path.relative_to(ROOT)}:{number}"
        for folder in PACKAGES.values()
        for path in folder.rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if ">>>" in line and "doctest: +SKIP" in line
    ]
    assert not skipped, "docstring examples that never run: " + ", ".join(skipped)
