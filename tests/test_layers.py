import ast
from pathlib import Path

import spillover

SRC = Path(spillover.__file__).resolve().parent

# The import graph reads top to bottom, the way the data flows; a module may import its own layer or
# any layer below it. The two registries that name a higher module by string (models.sources for the
# organism's model source, pipeline.registry for the built-in cell pipelines) are not imports.
LAYERS = {
    0: ("__init__", "config", "rundir", "progress", "testing", "data", "models"),
    1: ("sae", "geometry", "theory", "finetune", "generate", "judge", "metrics", "filtering", "report"),
    2: ("organism",),
    3: ("chain", "realmodel"),
    4: ("studies",),
    5: ("pipeline",),
    6: ("cli", "__main__"),
}
LAYER = {name: level for level, names in LAYERS.items() for name in names}


def _module(path: Path) -> str:
    parts = ["spillover", *path.relative_to(SRC).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, package: str | None = None) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text())
    if package is None:
        package = _module(path) if path.name == "__init__.py" else _module(path).rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                found.append((".".join([*base, node.module or ""]).rstrip("."), node.lineno))
            elif node.module:
                found.append((node.module, node.lineno))
    return [(name, line) for name, line in found if name.split(".")[0] == "spillover"]


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _edges() -> list[tuple[str, str, int]]:
    return [
        (_module(path), target, line) for path in sorted(SRC.rglob("*.py")) for target, line in _imports(path)
    ]


def test_every_top_level_module_has_a_layer():
    tops = {p.stem if p.is_file() else p.name for p in SRC.iterdir() if p.suffix == ".py" or p.is_dir()}
    tops -= {"__pycache__"}
    assert tops <= set(LAYER), f"give these a layer in tests/test_layers.py: {sorted(tops - set(LAYER))}"


def test_no_module_imports_a_higher_layer():
    upward = [
        f"{source}:{line} imports {target}"
        for source, target, line in _edges()
        if LAYER[_top(target)] > LAYER[_top(source)]
    ]
    assert upward == []


def test_only_the_command_line_imports_the_command_line():
    outside = [
        f"{source}:{line} imports {target}"
        for source, target, line in _edges()
        if _top(target) == "cli" and _top(source) not in ("cli", "__main__")
    ]
    assert outside == []


def test_the_layer_check_sees_lazy_and_relative_imports(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import os\ndef f():\n    from spillover.organism import x\nfrom .stats import y\n")
    assert sorted(_imports(sample, package="spillover.geometry"), key=lambda x: x[1]) == [
        ("spillover.organism", 3),
        ("spillover.geometry.stats", 4),
    ]
