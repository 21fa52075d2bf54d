"""The layers of the package hold: each part imports only the parts below it.

core < models < tasks < batch < datasets < api < widgets (napari adapters in
``layers``; ``cli`` on top), ``demo`` (tiny models and sample strokes) beside
tasks, and nothing shipped imports ``testing``. Every import counts, the lazy
ones inside functions too. A new top-level module or package needs its line in
:data:`ALLOWED`.
"""

import ast
from pathlib import Path

import pytest

import napari_segsuite

PACKAGE = Path(napari_segsuite.__file__).parent
BELOW_API = {"core", "models", "tasks", "batch", "datasets"}

#: top-level part -> the parts it may import ("__init__" is the package itself: its version)
ALLOWED: dict[str, set[str]] = {
    "__init__": {"_version"},
    "_version": set(),
    "core": set(),
    "models": {"core"},
    # tasks/yolo_training.py writes its training data with the datasets exporter
    "tasks": {"core", "models", "datasets"},
    "demo": {"core", "models"},
    "batch": {"core", "models", "tasks"},
    "datasets": {"core", "models", "tasks", "batch"},
    "api": BELOW_API,
    "layers": {"core"},
    "sample_data": {"demo"},
    "widgets": BELOW_API | {"api", "layers", "demo", "sample_data"},
    "cli": BELOW_API | {"api", "layers", "demo", "sample_data", "widgets"},
    "__main__": {"cli"},
}
#: test support: may use anything shipped, and is used by nothing shipped
TEST_SUPPORT = "testing"


def _part(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "napari_segsuite":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[tuple[str, int]]:
    """(imported part, line) for every import of napari_segsuite in ``path``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(p, node.lineno) for a in node.names if (p := _part(a.name))]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            part = _part(node.module)
            if part == "__init__":  # from napari_segsuite import x: a submodule or the package's own names
                out += [(a.name if (PACKAGE / a.name).exists() or (PACKAGE / f"{a.name}.py").exists()
                         else "__init__", node.lineno) for a in node.names]
            elif part:
                out.append((part, node.lineno))
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            raise AssertionError(f"{path}:{node.lineno}: relative import; the package uses absolute imports")
    return out


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        yield (rel.parts[0] if len(rel.parts) > 1 else rel.stem), rel, path


def test_every_top_level_part_has_a_place_in_the_layers():
    parts = {part for part, _, _ in _modules()}
    unknown = parts - set(ALLOWED) - {TEST_SUPPORT}
    assert not unknown, f"new top-level parts {sorted(unknown)}: give each its line in ALLOWED"


def test_each_part_imports_only_the_parts_below_it():
    violations = []
    for part, rel, path in _modules():
        if part == TEST_SUPPORT:
            continue
        allowed = ALLOWED.get(part, set()) | {part, "__init__"}
        for imported, line in _imports(path):
            if imported not in allowed:
                violations.append(f"{rel}:{line} ({part}) imports {imported}")
    assert not violations, "layer violations:\n" + "\n".join(violations)


def test_nothing_shipped_imports_the_test_support():
    users = [f"{rel}:{line}" for part, rel, path in _modules() if part != TEST_SUPPORT
             for imported, line in _imports(path) if imported == TEST_SUPPORT]
    assert not users, f"shipped modules import napari_segsuite.testing: {users}"


@pytest.mark.parametrize("source, expected", [
    ("from napari_segsuite.tasks.instance import x", [("tasks", 1)]),
    ("def f():\n    import napari_segsuite.testing.coins", [("testing", 2)]),
    ("from napari_segsuite import api, __version__", [("api", 1), ("__init__", 1)]),
    ("import numpy", []),
])
def test_the_checker_sees_lazy_and_package_imports(tmp_path, source, expected):
    path = tmp_path / "m.py"
    path.write_text(source)
    assert _imports(path) == expected
