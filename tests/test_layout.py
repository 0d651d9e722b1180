"""The code's shape: modules talk through public names, and rooms stay small enough to read.

A module's ``_private`` names are its own business: importing one from another module
ties the two together where no reader looks. A file over 500 lines, or a function over
100, usually holds several jobs; the few that do not are listed below with the reason.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "bench"

MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 100

# path relative to the repo -> why it may be longer than MAX_FILE_LINES
ALLOWED_FILES: dict[str, str] = {}

# "path::Qualified.name" -> why it may be longer than MAX_FUNCTION_LINES
ALLOWED_FUNCTIONS: dict[str, str] = {}


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _private_uses(path: Path) -> list[str]:
    """``from bench.x import _y`` and ``bench.x._y`` (through an imported module) where
    bench.x is another module than this one."""
    me = _module_name(path)
    tree = ast.parse(path.read_text(), filename=str(path))
    found, module_aliases = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source = _resolve(node, me, path.name == "__init__.py")
            if not source.startswith("bench"):
                continue
            for alias in node.names:
                if _is_private(alias.name) and source != me:
                    found.append(f"line {node.lineno}: from {source} import {alias.name}")
                elif not _is_private(alias.name):
                    module_aliases[alias.asname or alias.name] = f"{source}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("bench"):
                    if alias.asname:
                        module_aliases[alias.asname] = alias.name
                    else:  # `import bench.x` binds the name `bench`
                        module_aliases["bench"] = "bench"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            target = _dotted(node.value, module_aliases)
            if target and target != me and _is_bench_module(target):
                found.append(f"line {node.lineno}: {target}.{node.attr}")
    return found


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    """``a.b.c`` as a module path, its first name looked up among the imports."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name) or node.id not in aliases:
        return None
    return ".".join([aliases[node.id], *reversed(parts)])


def _is_bench_module(dotted: str) -> bool:
    path = PACKAGE.parent / dotted.replace(".", "/")
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _functions(tree: ast.AST, prefix: str = ""):
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            name = prefix + node.name
            yield name, node.end_lineno - node.lineno + 1
            yield from _functions(node, name + ".")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, prefix + node.name + ".")


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_no_module_imports_another_modules_private_names():
    problems = [f"{_rel(p)} {use}" for p in _modules() for use in _private_uses(p)]
    assert not problems, "private names used across modules:\n" + "\n".join(problems)


def test_the_private_import_check_catches_both_forms(tmp_path, monkeypatch):
    pkg = tmp_path / "bench"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "other.py").write_text("_secret = 1\n")
    (pkg / "sub" / "a.py").write_text(
        "from bench.other import _secret\nfrom ..other import _secret as s\n"
        "import bench.other\nx = bench.other._secret\n"
    )
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    monkeypatch.setattr(__import__(__name__), "PACKAGE", pkg)
    uses = _private_uses(pkg / "sub" / "a.py")
    assert len(uses) == 3, uses


def test_files_are_short_or_say_why():
    long = {
        _rel(p): n
        for p in _modules()
        if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES and _rel(p) not in ALLOWED_FILES
    }
    assert not long, (
        f"files over {MAX_FILE_LINES} lines (split them, or allow with a reason): {long}"
    )


def test_functions_are_short_or_say_why():
    long = {}
    for p in _modules():
        for name, n in _functions(ast.parse(p.read_text())):
            key = f"{_rel(p)}::{name}"
            if n > MAX_FUNCTION_LINES and key not in ALLOWED_FUNCTIONS:
                long[key] = n
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_allow_lists_hold_only_real_exceptions():
    """An entry whose file or function is short again (or gone) must leave the list."""
    sizes = {_rel(p): len(p.read_text().splitlines()) for p in _modules()}
    stale = [f for f in ALLOWED_FILES if sizes.get(f, 0) <= MAX_FILE_LINES]
    functions = {
        f"{_rel(p)}::{name}": n
        for p in _modules()
        for name, n in _functions(ast.parse(p.read_text()))
    }
    stale += [f for f in ALLOWED_FUNCTIONS if functions.get(f, 0) <= MAX_FUNCTION_LINES]
    assert not stale, f"allow-list entries that are no longer needed: {stale}"
    assert all(reason.strip() for reason in {**ALLOWED_FILES, **ALLOWED_FUNCTIONS}.values())


# Phrases that narrate how the project was made rather than what it does.
HISTORY = re.compile(
    r"\bsession \d|\bsessions? (so far|before)|\bwave \d|\bstage \d|from a review|"
    r"\(review\)|no GPU (yet|then|so far)|had no GPU|first GPU run",
    re.IGNORECASE,
)


def test_nothing_narrates_the_projects_history():
    files = [ROOT / "README.md", *ROOT.glob("docs/**/*.md"), *_modules()]
    files += [*ROOT.glob("tests/*.py"), *ROOT.glob("scripts/*"), *ROOT.glob("experiments/*")]
    hits = []
    for f in files:
        if f.is_file() and f != Path(__file__).resolve():
            for i, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
                if HISTORY.search(line):
                    hits.append(f"{f.relative_to(ROOT)}:{i}: {line.strip()[:80]}")
    assert not hits, "history narration:\n" + "\n".join(hits)
