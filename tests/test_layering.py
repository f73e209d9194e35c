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


STORE_LAYER = ("labelstore/schema.py", "labelstore/views.py", "labelstore/report.py")


def _task_names() -> list[str]:
    from labelstore.trainers.tasks import TASKS

    assert {"classification", "retrieval", "videoqa"} <= set(TASKS)
    return list(TASKS)


def test_store_layer_names_no_task():
    """The store layer knows no task: no task's name anywhere in its source text (case-insensitive);
    each task's arrays, statistics and report section are its own modules (pipeline/<task>_*.py)."""
    names = _task_names()
    hits = [f"{f}:{i}: {line.strip()}" for f in STORE_LAYER
            for i, line in enumerate((ROOT / f).read_text().splitlines(), 1)
            if any(t in line.lower() for t in names)]
    assert not hits, "\n".join(hits)


def test_no_task_module_imports_another_tasks():
    """A module named after a task (pipeline/classification_inspect.py, trainers/videoqa_cli.py, ...) imports
    no module named after another task."""
    names = _task_names()
    bad = {}
    for p in [*(ROOT / "pipeline").glob("*.py"), *(ROOT / "trainers").glob("*.py")]:
        own = [t for t in names if t in p.stem]
        if len(own) != 1:
            continue
        others = [t for t in names if t != own[0]]
        imported = set()  # the last part of every module named, and every name imported from a package
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.rsplit(".", 1)[-1] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                imported |= {(node.module or "").rsplit(".", 1)[-1]} | {a.name for a in node.names}
        hits = sorted(n for n in imported if any(t in n for t in others))
        if hits:
            bad[str(p.relative_to(ROOT))] = hits
    assert not bad
