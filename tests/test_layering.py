"""The one-way layering: trainers -> pipeline -> labelstore; labelstore imports neither (except cli.py)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_pipeline_never_imports_trainers():
    bad = {str(p.relative_to(ROOT)): sorted(n for n in _imports(p) if n.startswith("labelstore.trainers"))
           for p in (ROOT / "pipeline").rglob("*.py")}
    assert not {k: v for k, v in bad.items() if v}


def test_labelstore_imports_neither_except_cli():
    bad = {}
    for p in (ROOT / "labelstore").rglob("*.py"):
        if p.name == "cli.py":
            continue
        hits = sorted(n for n in _imports(p) if n.startswith(("labelstore.pipeline", "labelstore.trainers")))
        if hits:
            bad[str(p.relative_to(ROOT))] = hits
    assert not bad


def test_every_module_imports():
    """Every module of the package imports (a moved name leaves no dangling import)."""
    import importlib
    import pkgutil

    names = []
    for pkg in ("labelstore", "labelstore.pipeline", "labelstore.trainers", "labelstore.trainers.losses"):
        names += [m.name for m in pkgutil.iter_modules(importlib.import_module(pkg).__path__, pkg + ".")]
    assert "labelstore.trainers.retrieval_demo" in names and "labelstore.pipeline.stage" in names
    for name in names:
        importlib.import_module(name)
