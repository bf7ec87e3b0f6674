"""Runs the Python code blocks of README.md and docs/*.md, each page in order, in a fresh folder.

Blocks that name the demo's folders find a tiny random teacher there (the ``demo_folders`` fixture).
"""

import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted(ROOT.joinpath("docs").glob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


@pytest.mark.parametrize("page", [p for p in PAGES if BLOCK.search(p.read_text())], ids=lambda p: p.name)
def test_doc_code_blocks_run(page, demo_folders, tmp_path, monkeypatch):
    shutil.copytree(demo_folders, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for number, block in enumerate(BLOCK.findall(page.read_text()), start=1):
        try:
            exec(compile(block, f"{page.name}[block {number}]", "exec"), namespace)
        except Exception as err:
            raise AssertionError(f"{page.name}, code block {number} failed: {err}") from err


def test_the_readme_has_a_python_example():
    assert BLOCK.search((ROOT / "README.md").read_text())
