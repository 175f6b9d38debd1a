"""Our modules import one another without circles, counting imports inside functions too
(a lazy import that closes a circle is a circle a reader has to untangle)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INSTALLED = ("ib_vectorizer", "pipelines")  # what pip installs; benchmarks/ is not
PACKAGES = (*INSTALLED, "benchmarks")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of ours that ``name`` imports anywhere in its file (a package's names
    come from its ``__init__``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            candidates = [f"{module}.{alias.name}" for alias in node.names] + [module]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        for candidate in candidates:
            if candidate in known and candidate != name:
                targets.add(candidate)
                break
    return targets


def test_no_module_imports_itself_through_others():
    known = modules()
    graph = defaultdict(set)
    for name, path in known.items():
        if path.name != "__init__.py":
            graph[name] = {
                m for m in imports_of(name, path, known) if known[m].name != "__init__.py"
            }
    circles = set()

    def visit(node: str, trail: list[str]) -> None:
        for nxt in graph[node]:
            if nxt in trail:
                circles.add(" -> ".join([*trail[trail.index(nxt) :], nxt]))
            elif nxt not in seen:
                seen.add(nxt)
                visit(nxt, [*trail, nxt])

    for start in sorted(graph):
        seen = {start}
        visit(start, [start])
    assert sorted(circles) == []


def _is_benchmarks(module: str) -> bool:
    return module == "benchmarks" or module.startswith("benchmarks.")


def names_benchmarks(node: ast.AST) -> bool:
    """An import of ``benchmarks``, or a string naming one of its modules (``import_module``,
    ``python -m benchmarks.x``): either breaks every installed copy, which has no benchmarks."""
    if isinstance(node, ast.Import):
        return any(_is_benchmarks(alias.name) for alias in node.names)
    if isinstance(node, ast.ImportFrom):
        return node.level == 0 and _is_benchmarks(node.module or "")
    is_text = isinstance(node, ast.Constant) and isinstance(node.value, str)
    return is_text and _is_benchmarks(node.value)


def test_what_finds_a_use_of_benchmarks():
    uses = (
        "import benchmarks",
        "import benchmarks.help_time as h",
        "from benchmarks import scale_dataset",
        "from benchmarks.ingest_job import run_job",
        "importlib.import_module('benchmarks.photo_decode')",
    )
    for code in uses:
        assert any(names_benchmarks(node) for node in ast.walk(ast.parse(code))), code
    for code in ("import benchmarking", "from .benchmarks import x", "x = 'benchmarks are slow'"):
        assert not any(names_benchmarks(node) for node in ast.walk(ast.parse(code))), code


def test_the_installed_packages_never_use_benchmarks():
    """benchmarks/ sits beside the packages and is not installed: the packages must not
    import it, lazily or by name."""
    found = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for package in INSTALLED
        for path in sorted((ROOT / package).rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if names_benchmarks(node)
    ]
    assert found == []


COMMANDS = (
    "pipelines.ingest.command",
    "pipelines.tag.command",
    "pipelines.query",
    "pipelines.stack",
    "pipelines.search.server",
    "pipelines.runners.command",
    "ib_vectorizer.cli",
)


def test_the_commands_read_their_flags_without_importing_torch():
    """``--help`` and a bad flag answer at once: torch (about 2 s to import) comes later."""
    import subprocess
    import sys

    probe = (
        "import importlib, sys\n"
        + "".join(f"importlib.import_module({name!r})\n" for name in COMMANDS)
        + "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))"
    )
    found = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", probe], capture_output=True, text=True, check=True
    )
    assert found.stdout.strip() == "[]"
