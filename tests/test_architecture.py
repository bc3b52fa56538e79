"""The import rules of docs/ARCHITECTURE.md, read from the code (every import statement, also those inside
functions): each part of tag2mask imports only parts of a lower layer, so the arrows stay one-way."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import tag2mask

PACKAGE = Path(tag2mask.__file__).parent

LAYERS: dict[str, int] = {
    # 0: no tag2mask import at all
    "tag2mask": 0, "errors": 0, "hashing": 0,
    # 1: small shared utilities
    "io": 1, "lock": 1, "progress": 1, "maps": 1, "amp": 1, "metrics": 1,
    # 2: data and models (loading), drawing, the training loops' resume state
    "data": 2, "models": 2, "viz": 2, "testing": 2, "resume": 2,
    # 3: the method's algorithms on models and masks
    "superpixels": 3, "cam": 3,
    # 4: seeding on superpixels; the config (it reads the superpixel patterns and the weight names)
    "seeding": 4, "config": 4,
    # 5: the two trainings
    "prompt_training": 5, "segmenters": 5,
    # 6: stages: IO, progress, resume, sharding, and the run folder's books
    "stages": 6,
    # 7: the report reads what the stages wrote
    "viz.report": 7,
    # 8, 9: the commands, and the command line's parser and dispatch
    "commands": 8, "cli": 9,
}
"""Layer of each part (a top-level module or package of tag2mask; ``viz.report`` apart from the rest of viz)."""


def part_of(module: str) -> str:
    """``tag2mask.stages.cams`` → ``stages``; ``tag2mask.viz.report.run`` → ``viz.report``; ``tag2mask`` → itself."""
    parts = module.split(".")
    if len(parts) == 1:
        return "tag2mask"
    if parts[1] == "viz" and len(parts) > 2 and parts[2] == "report":
        return "viz.report"
    return parts[1]


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, name: str) -> list[tuple[int, str]]:
    """``(line, module)`` of every tag2mask module the file ``path`` of module ``name`` imports
    (``from tag2mask import amp`` gives ``tag2mask.amp``; relative imports are resolved)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            if base == "tag2mask":  # from tag2mask import amp, resume
                out += [(node.lineno, f"tag2mask.{a.name}") for a in node.names if a.name != "__version__"]
                out += [(node.lineno, "tag2mask") for a in node.names if a.name == "__version__"]
            else:
                out.append((node.lineno, base))
    return [(line, m) for line, m in out if m == "tag2mask" or m.startswith("tag2mask.")]


def edges() -> list[tuple[str, int, str, str, str]]:
    """``(file, line, importing part, imported part, imported module)`` across parts."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        here = part_of(module_name(path))
        for line, module in imported_modules(path, module_name(path)):
            there = part_of(module)
            if there != here:
                out.append((str(path.relative_to(PACKAGE)), line, here, there, module))
    return out


def test_every_part_has_a_layer() -> None:
    parts = {part_of(module_name(p)) for p in PACKAGE.rglob("*.py")}
    assert parts - set(LAYERS) == set(), "give the new part a layer here and in docs/ARCHITECTURE.md"


def violations(found: list[tuple[str, int, str, str, str]]) -> list[str]:
    """The imports of ``found`` that do not go down the layers (same layer included)."""
    return [f"{f}:{line}: {a} (layer {LAYERS[a]}) imports {m} ({b}, layer {LAYERS[b]})"
            for f, line, a, b, m in found if LAYERS[b] >= LAYERS[a]]


def test_imports_go_down_the_layers_only() -> None:
    wrong = violations(edges())
    assert wrong == [], "\n".join(wrong)


def test_the_rules_see_lazy_and_relative_imports_and_can_fail(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("from . import sams\nfrom tag2mask import amp\n\n\ndef f():\n"
                     "    from tag2mask.stages.common import open_split\n    return open_split\n")
    found = imported_modules(probe, "tag2mask.seeding.probe")
    assert found == [(1, "tag2mask.seeding"), (2, "tag2mask.amp"), (6, "tag2mask.stages.common")]
    edge = ("seeding/probe.py", 6, "seeding", "stages", "tag2mask.stages.common")
    assert violations([edge]) == ["seeding/probe.py:6: seeding (layer 4) imports tag2mask.stages.common (stages, layer 6)"]
    assert violations([("seeding/probe.py", 2, "seeding", "amp", "tag2mask.amp")]) == []
    assert violations([("cam/x.py", 1, "cam", "superpixels", "tag2mask.superpixels")]) != []  # same layer: no


def test_the_layers_table_of_the_docs_matches() -> None:
    """docs/ARCHITECTURE.md's table lists every part with the layer the test enforces."""
    doc = PACKAGE.parents[1] / "docs" / "ARCHITECTURE.md"
    if not doc.is_file():
        pytest.skip("docs/ARCHITECTURE.md is not part of an installed package")
    rows = {}
    for line in doc.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].isdigit():
            for part in cells[1].replace("`", "").split(","):
                rows[part.strip()] = int(cells[0])
    assert rows == LAYERS
