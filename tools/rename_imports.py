"""Rename the import names `pipeline` / `trainers` to `labelstore.pipeline` / `labelstore.trainers`.

The repository keeps its folders pipeline/ and trainers/ at the top level; the wheel installs them
inside the labelstore package (setuptools package-dir mapping in pyproject.toml), so installing
labelstore claims no generic top-level names (a user's own pipeline.py keeps working).

This script makes every reference follow, and is idempotent (run it again after merging branches):
  - `from pipeline import x`, `from pipeline.teach import y`  -> `from labelstore.pipeline ...`
  - `import pipeline.teach` / `import trainers` (whole statement) -> `import labelstore.pipeline.teach`
    (a bare `import pipeline` is reported, not rewritten: its uses would need `as pipeline`)
  - dotted references to an existing module or export, in code strings and docs:
    "trainers.videoqa_models:videoqa_teacher", `pipeline.teach.teach`   -> labelstore.trainers... / ...
  - pyproject.toml: the package-dir mapping.
File paths (pipeline/teach.py) and a user's `pipeline.py` are left alone. Files containing the
marker `rename_imports: skip` are not touched.

    python tools/rename_imports.py [--check]     (--check: exit 1 if anything would change)
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "trainers")
SKIP_DIRS = {".git", ".venv", "runs", "build", "dist", "__pycache__", ".pytest_cache"}
MARKER = "rename_imports: " + "skip"  # split so this file does not mark itself

PYPROJECT_OLD = '''[tool.setuptools.packages.find]
include = ["labelstore*", "pipeline*", "trainers*"]'''
PYPROJECT_NEW = '''[tool.setuptools]
# the repository keeps pipeline/ and trainers/ at its top level; they install as labelstore.pipeline
# and labelstore.trainers (tools/rename_imports.py), so the wheel claims no generic top-level names
packages = ["labelstore", "labelstore.pipeline", "labelstore.trainers", "labelstore.trainers.losses"]

[tool.setuptools.package-dir]
"labelstore" = "labelstore"
"labelstore.pipeline" = "pipeline"
"labelstore.trainers" = "trainers"'''


def known_names(package: str) -> set[str]:
    """Modules and subpackages of a package folder, and the names its __init__.py imports."""
    folder = ROOT / package
    names = {p.stem for p in folder.glob("*.py") if p.stem != "__init__"}
    names |= {p.name for p in folder.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    init = folder / "__init__.py"
    if init.exists():
        for group in re.findall(r"^from \.\w* import \(?([\w, \n]+)\)?", init.read_text(), re.M):
            names |= {n.strip() for n in group.split(",") if n.strip()}
    return names


def rewrite(text: str, names: dict[str, set[str]]) -> tuple[str, list[str]]:
    """The renamed text, and warnings for what cannot be rewritten safely."""
    pkg = "|".join(PACKAGES)
    # from pipeline import x / from pipeline.teach import y
    text = re.sub(rf"(?<![\w.])from ({pkg})(?=\.\w|\s+import\b)", r"from labelstore.\1", text)
    # import pipeline.teach [as t] / import trainers.models
    text = re.sub(rf"^(\s*)import ({pkg})(\.[\w.]+)(?=\s|$)", r"\1import labelstore.\2\3", text, flags=re.M)
    # dotted references to a known module or export: "trainers.videoqa_models:videoqa_teacher", pipeline.teach.teach
    for p in PACKAGES:
        alts = "|".join(sorted(map(re.escape, names[p]), key=len, reverse=True))
        text = re.sub(rf"(?<![\w./-]){p}\.({alts})\b(?!\.py\b)", rf"labelstore.{p}.\1", text)
    warnings = [f"bare `import {m.group(1)}`" for m in re.finditer(rf"^\s*import ({pkg})\s*$", text, re.M)]
    return text, warnings


def files() -> list[Path]:
    out = []
    for path in ROOT.rglob("*"):
        rel = path.relative_to(ROOT)
        if any(part in SKIP_DIRS or part.endswith(".egg-info") for part in rel.parts) or not path.is_file():
            continue
        if path.suffix in (".py", ".md", ".cfg", ".ini", ".txt") or path.name in ("Makefile", "run"):
            if path.resolve() != Path(__file__).resolve():
                out.append(path)
    return sorted(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="Change nothing; exit 1 if something would change.")
    args = ap.parse_args()
    names = {p: known_names(p) for p in PACKAGES}
    changed = []
    for path in files():
        try:
            old = path.read_text()
        except UnicodeDecodeError:
            continue
        if MARKER in old:
            continue
        new, warnings = rewrite(old, names)
        for w in warnings:
            print(f"{path.relative_to(ROOT)}: {w}: rewrite it by hand", file=sys.stderr)
        if new != old:
            changed.append(path)
            if not args.check:
                path.write_text(new)
    pyproject = ROOT / "pyproject.toml"
    if PYPROJECT_OLD in pyproject.read_text():
        changed.append(pyproject)
        if not args.check:
            pyproject.write_text(pyproject.read_text().replace(PYPROJECT_OLD, PYPROJECT_NEW))
    for path in changed:
        print(("would change " if args.check else "changed ") + str(path.relative_to(ROOT)))
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
