"""The package's shape: no long modules, no import circles, transport below backends.

Three rules over the source under ringcomm/, read as text and parsed with `ast` (nothing is
imported):

- no module (.py, .c, .h) is over MAX_LINES lines;
- no circle of imports among ringcomm's modules as they load: counting the imports at module
  level (in a module's body, its class bodies and its module-level ``if``/``try``/``with``
  blocks), not those inside functions or under ``if TYPE_CHECKING:``; and none either when
  the imports inside functions are counted too, as moving an import into a function hides a
  circle without removing it (``TYPE_CHECKING`` imports never run: they never count);
- nothing under ringcomm/transport/ imports from ringcomm/backends/, wherever the import is
  (in a function, under TYPE_CHECKING): the transport is the layer below the backends.

The tree breaks each rule today and a refactor of the layout is under way to mend it: each
known violation is in an allow-list below with its reason. A new violation fails, and so does
an allow-listed one that is gone, so that its entry is removed and the list only shrinks.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ringcomm"
MAX_LINES = 500
REFACTOR = "issue: layout refactor in progress"

# Modules over MAX_LINES lines, by path from the repository's root.
ALLOWED_LONG: dict[str, str] = {}
# Imports that close a circle ("importer -> imported"), counting imports in functions: every
# import between two modules of one circle (one strongly connected part of the import graph).
ALLOWED_CIRCLES: dict[str, str] = {}
# Imports from ringcomm/transport/ into ringcomm/backends/ ("importer -> imported").
ALLOWED_LAYER: dict[str, str] = {}


@dataclass(frozen=True)
class Import:
    """One import of a ringcomm module by another, and when it runs: "load" (as the importer
    is loaded), "call" (in a function, when called) or "never" (under TYPE_CHECKING)."""

    importer: str
    imported: str
    line: int
    runs: str


def sources(suffixes: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*") if p.suffix in suffixes and p.is_file()
                  and "__pycache__" not in p.parts)


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    """Return every module of the package by its dotted name."""
    return {module_name(p): p for p in sources((".py",))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _statements(body: list[ast.stmt], runs: str) -> Iterator[tuple[ast.stmt, str]]:
    """Yield every statement under `body` with when it runs ("load", "call", "never")."""
    for node in body:
        yield node, runs
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from _statements(node.body, "call" if runs == "load" else runs)
        elif isinstance(node, ast.If):
            yield from _statements(node.body, "never" if _is_type_checking(node.test) else runs)
            yield from _statements(node.orelse, runs)
        else:  # class bodies, for, while, with, try, match: they run when the module does
            for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                for child in getattr(node, field, []):
                    if isinstance(child, (ast.ExceptHandler, ast.match_case)):
                        yield from _statements(child.body, runs)
                    elif isinstance(child, ast.stmt):
                        yield from _statements([child], runs)


def imports_of(path: Path, known: dict[str, Path]) -> list[Import]:
    """Return the ringcomm modules that the module at `path` imports."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []

    def add(target: str, node: ast.stmt, runs: str) -> None:
        while target and target not in known:  # a name inside a module: the module
            target = target.rpartition(".")[0]
        if target and target != name:
            found.append(Import(name, target, node.lineno, runs))

    for node, runs in _statements(ast.parse(path.read_text(), str(path)).body, "load"):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "ringcomm":
                    add(alias.name, node, runs)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != "ringcomm":
                continue
            for alias in node.names:
                # `from package import module` imports the module; `from module import name`
                # the module.
                sub = f"{source}.{alias.name}"
                add(sub if sub in known else source, node, runs)
    return found


def all_imports() -> list[Import]:
    known = modules()
    return [imp for path in known.values() for imp in imports_of(path, known)]


def _strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Return the strongly connected parts of `graph` (Tarjan's algorithm, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    parts: list[set[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                part = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    part.add(member)
                    if member == node:
                        break
                parts.append(part)
    return parts


def circle_imports(imports: list[Import], runs: tuple[str, ...]) -> dict[str, int]:
    """Return every import that runs when `runs` says and closes a circle of such imports, as
    "importer -> imported" by path, with its line."""
    known = modules()
    counted = [imp for imp in imports if imp.runs in runs]
    graph: dict[str, set[str]] = {m: set() for m in known}
    for imp in counted:
        graph[imp.importer].add(imp.imported)
    found: dict[str, int] = {}
    for part in _strongly_connected(graph):
        for imp in counted:
            if imp.importer in part and imp.imported in part and len(part) > 1:
                found.setdefault(f"{rel(known[imp.importer])} -> {rel(known[imp.imported])}",
                                 imp.line)
    return found


def layer_imports(imports: list[Import]) -> dict[str, int]:
    """Return every import from ringcomm.transport into ringcomm.backends, by path."""
    known = modules()
    return {f"{rel(known[imp.importer])} -> {rel(known[imp.imported])}": imp.line
            for imp in imports
            if imp.importer.startswith("ringcomm.transport")
            and (imp.imported + ".").startswith("ringcomm.backends.")}


def long_modules() -> dict[str, int]:
    """Return every module over MAX_LINES lines with its length."""
    return {rel(p): n for p in sources((".py", ".c", ".h"))
            if (n := len(p.read_text(errors="replace").splitlines())) > MAX_LINES}


def assert_matches_allowed(found: dict[str, int], allowed: dict[str, str], what: str) -> None:
    new = {k: v for k, v in found.items() if k not in allowed}
    gone = sorted(k for k in allowed if k not in found)
    assert not new, f"new {what} (line or length shown); mend it, do not add it to the list: {new}"
    assert not gone, f"allow-listed {what} no longer found; remove them from the list: {gone}"


def test_no_module_is_over_500_lines() -> None:
    assert_matches_allowed(long_modules(), ALLOWED_LONG, f"modules over {MAX_LINES} lines")


def test_no_import_circle_among_ringcomms_modules_as_they_load() -> None:
    assert_matches_allowed(circle_imports(all_imports(), ("load",)), {},
                           "imports in a circle of module-level imports")


def test_no_import_circle_among_ringcomms_modules_through_imports_in_functions() -> None:
    # An import moved into a function breaks a circle as the modules load, not the circle.
    assert_matches_allowed(circle_imports(all_imports(), ("load", "call")), ALLOWED_CIRCLES,
                           "imports in a circle (imports in functions counted)")


def test_the_transport_does_not_import_the_backends() -> None:
    assert_matches_allowed(layer_imports(all_imports()), ALLOWED_LAYER,
                           "imports from ringcomm/transport/ into ringcomm/backends/")


def test_every_allowed_violation_says_why() -> None:
    for allowed in (ALLOWED_LONG, ALLOWED_CIRCLES, ALLOWED_LAYER):
        assert all(reason.startswith("issue: ") for reason in allowed.values()), allowed


# -- the checks themselves, on small trees ----------------------------------------------------


def _tree(tmp_path: Path, files: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "ringcomm")


def test_the_checks_find_circles_of_every_kind_of_import(tmp_path, monkeypatch) -> None:
    _tree(tmp_path, {
        "ringcomm/__init__.py": "",
        "ringcomm/a.py": "from . import b\n",  # a <-> b: `from . import module`
        "ringcomm/b.py": "from .a import thing\n",
        "ringcomm/sub/__init__.py": "from .c import x\n",  # sub -> c -> d -> sub
        "ringcomm/sub/c.py": "import ringcomm.sub.d\n",
        "ringcomm/sub/d.py": "from .. import sub\nfrom ..sub import c\n",
        "ringcomm/e.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                         "    from ringcomm import f\n",  # never runs
        "ringcomm/f.py": "def later():\n    from ringcomm import e\n",
        "ringcomm/g.py": "try:\n    from ringcomm.h import y\nexcept ImportError:\n    pass\n",
        "ringcomm/h.py": "class K:\n    from . import g\n",  # both run as the modules load
        "ringcomm/i.py": "def later():\n    from .j import z\n",  # a circle through a function
        "ringcomm/j.py": "import ringcomm.i\n",
    }, monkeypatch)
    loading = {"ringcomm/a.py -> ringcomm/b.py", "ringcomm/b.py -> ringcomm/a.py",
               "ringcomm/sub/__init__.py -> ringcomm/sub/c.py",
               "ringcomm/sub/c.py -> ringcomm/sub/d.py",
               "ringcomm/sub/d.py -> ringcomm/sub/__init__.py",
               "ringcomm/sub/d.py -> ringcomm/sub/c.py",
               "ringcomm/g.py -> ringcomm/h.py", "ringcomm/h.py -> ringcomm/g.py"}
    assert set(circle_imports(all_imports(), ("load",))) == loading
    assert set(circle_imports(all_imports(), ("load", "call"))) == loading | {
        "ringcomm/i.py -> ringcomm/j.py", "ringcomm/j.py -> ringcomm/i.py"}


def test_the_checks_find_layer_breaks_anywhere_and_long_modules(tmp_path, monkeypatch) -> None:
    _tree(tmp_path, {
        "ringcomm/__init__.py": "",
        "ringcomm/backends/__init__.py": "",
        "ringcomm/backends/sig.py": "x = 1\n",
        "ringcomm/transport/__init__.py": "",
        "ringcomm/transport/a.py": "from ..backends.sig import x\n",
        "ringcomm/transport/b.py": "def f():\n    import ringcomm.backends\n",
        "ringcomm/transport/c.py": "from ringcomm import backends\n",
        "ringcomm/transport/ok.py": "from . import a\n" + "\n" * 499,
        "ringcomm/core.c": "\n" * 501,
        "ringcomm/core.h": "\n" * 500,
    }, monkeypatch)
    assert set(layer_imports(all_imports())) == {
        "ringcomm/transport/a.py -> ringcomm/backends/sig.py",
        "ringcomm/transport/b.py -> ringcomm/backends/__init__.py",
        "ringcomm/transport/c.py -> ringcomm/backends/__init__.py"}
    assert long_modules() == {"ringcomm/core.c": 501}
    with pytest.raises(AssertionError, match="new modules over"):
        assert_matches_allowed(long_modules(), {}, "modules over 500 lines")
    with pytest.raises(AssertionError, match="no longer found"):
        assert_matches_allowed({}, {"ringcomm/core.c": REFACTOR}, "modules over 500 lines")
