"""Runs the Python code blocks of docs/*.md, each page in order, in a fresh folder."""

import re
from pathlib import Path

import pytest

DOCS = sorted(Path(__file__).resolve().parent.parent.joinpath("docs").glob("*.md"))
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


@pytest.mark.parametrize("page", [p for p in DOCS if BLOCK.search(p.read_text())], ids=lambda p: p.name)
def test_doc_code_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for number, block in enumerate(BLOCK.findall(page.read_text()), start=1):
        try:
            exec(compile(block, f"{page.name}[block {number}]", "exec"), namespace)
        except Exception as err:
            raise AssertionError(f"{page.name}, code block {number} failed: {err}") from err
