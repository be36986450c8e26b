"""The tree reads as README.md's "Layout and contracts" says: every module of arch/, train/ and
experiments/common/ is named there and every file named there exists; no source file outgrows
~450 lines; experiments never import one another."""

import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
FOLDERS = ("arch", "train", "train/tasks", "train/measure", "experiments/common")
MAX_LINES = 460  # "about 450"


def layout_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Layout and contracts", 1)[1]
    return section.split("```", 2)[1]


def modules(folder: str) -> set[str]:
    return {p.name for p in (ROOT / folder).glob("*.py") if p.name != "__init__.py"}


def test_the_layout_names_every_module_and_only_modules_that_exist():
    block = layout_block()
    named = set(re.findall(r"\b([a-z_0-9]+\.py)\b", block))
    existing = set().union(*(modules(folder) for folder in FOLDERS)) | {"helpers.py"}
    assert existing - named == set(), "modules the README's Layout does not name"
    assert named - existing == set(), "names in the README's Layout that are not modules"
    for folder in ("arch/", "train/", "experiments/", "tests/", "tasks/", "measure/", "common/"):
        assert folder in block


def test_no_source_file_outgrows_the_limit():
    sources = [p for top in ("arch", "train", "experiments") for p in (ROOT / top).rglob("*.py")]
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in sources}
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


def test_experiments_import_only_the_shared_layer():
    for path in (ROOT / "experiments").glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        others = {m for m in imported if m.startswith("experiments.")}
        assert all(m.startswith("experiments.common") for m in others), (path.name, others)
