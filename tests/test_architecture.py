"""The import graph of compress/ and callbacks/ (as compress.callbacks), read with `ast`: no cycle, and the
layer rules of docs/architecture.md hold. Function-level (lazy) imports count like top-level ones."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = {"compress": ROOT / "compress", "compress.callbacks": ROOT / "callbacks"}

# layer -> the layers it must not import. "lightning" is the lightning package itself.
PLAIN = (
    "compress.distill", "compress.peft", "compress.sparsity", "compress.export",
    "compress.stored", "compress.assets", "compress.safe_load", "compress.gguf_cache", "compress.tiny_models",
)  # fmt: skip
FORBIDDEN = {
    **{
        layer: ("compress.modules", "compress.commands", "compress.callbacks", "lightning") for layer in PLAIN
    },
    "compress.data": ("compress.modules", "compress.commands", "compress.callbacks"),
    "compress.callbacks": ("compress.modules", "compress.commands"),
    "compress.modules": ("compress.commands",),
}


def module_files() -> dict[str, Path]:
    files = {}
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join([package, *parts])
            if not name.startswith("compress.callbacks") or package == "compress.callbacks":
                files[name] = path
    return files


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules (of ``known``, or third-party top-level names) that ``name`` imports anywhere."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known and "." in target:
                target = target.rsplit(".", 1)[0]
            found.add(target if target in known else target.split(".")[0])
    found.discard(name)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    files = module_files()
    return {name: imports_of(name, path, set(files)) for name, path in files.items()}


def _in(module: str, layer: str) -> bool:
    return module == layer or module.startswith(layer + ".")


def test_the_graph_sees_every_module(graph):
    assert "compress.callbacks.magnitude_pruning" in graph
    assert "compress.sparsity.magnitude" in graph["compress.callbacks.magnitude_pruning"]
    assert "compress.commands.pipeline.run" in graph


def test_no_import_cycle(graph):
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if target not in graph:
                continue
            if state.get(target) == 1:
                cycle = path[path.index(target) :] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_layer_rules(graph):
    broken = [
        f"{module} imports {target}"
        for module, targets in graph.items()
        for layer, forbidden in FORBIDDEN.items()
        if _in(module, layer)
        for target in targets
        if any(_in(target, f) for f in forbidden) and not _in(target, layer)
    ]
    assert not broken, "\n".join(sorted(broken))


def test_nothing_imports_commands(graph):
    broken = [
        f"{module} imports {target}"
        for module, targets in graph.items()
        if not _in(module, "compress.commands")
        for target in targets
        if _in(target, "compress.commands")
    ]
    assert not broken, "\n".join(sorted(broken))


def test_callbacks_import_each_other_relatively():
    for path in (ROOT / "callbacks").rglob("*.py"):
        tree = ast.parse(path.read_text())
        absolute = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0]
        assert not [n.module for n in absolute if n.module and n.module.split(".")[0] == "callbacks"], path


def test_every_package_is_in_the_explicit_package_list():
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {name for name, path in module_files().items() if path.name == "__init__.py"} | {
        "compress.configs"
    }
    assert found == listed, (
        f"pyproject.toml [tool.setuptools] packages: add {found - listed}, drop {listed - found}"
    )
