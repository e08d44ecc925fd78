"""The import layering, read from the code with ``ast`` (module- and function-level imports).

    mmapp      the application: command line, demo, e-commerce catalogue   -> mmfusion, xdeepfm, mmcore
    mmfusion   the sentiment model           xdeepfm   the ranking model     -> mmcore (never each other)
    mmcore     shared infrastructure                                        -> nothing of the project

``train.py`` and ``evaluate.py`` are thin command lines over ``mmapp``. There is no import cycle
among the project's modules, and no project module is imported inside a function (such imports
existed to dodge cycles; with one-way layers none is needed).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mmcore", "mmfusion", "xdeepfm", "mmapp")
ALLOWED = {
    "mmcore": {"mmcore"},
    "mmfusion": {"mmcore", "mmfusion"},
    "xdeepfm": {"mmcore", "xdeepfm"},
    "mmapp": {"mmcore", "mmfusion", "xdeepfm", "mmapp"},
    "train": {"mmapp"},
    "evaluate": {"mmapp"},
}


def module_files() -> dict[str, Path]:
    """Every project module (dotted name -> file): the four packages and the two top-level scripts."""
    files = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    for script in ("train", "evaluate"):
        files[script] = ROOT / f"{script}.py"
    return files


def imports(name: str, path: Path, known: set[str]) -> list[tuple[str, int, bool]]:
    """(imported project module, line, inside a function?) for every import statement of a file."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            targets: list[str] = []
            if isinstance(child, ast.Import):
                targets = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in child.names]
            for target in targets:
                while target and target not in known:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    found.append((target, child.lineno, in_function))
            visit(child, nested)

    visit(tree, False)
    return found


def graph() -> tuple[dict[str, Path], dict[str, list[tuple[str, int, bool]]]]:
    files = module_files()
    known = set(files)
    return files, {name: imports(name, path, known) for name, path in files.items()}


def test_the_walk_finds_every_layer():
    files, edges = graph()
    for package in PACKAGES:
        assert sum(name.split(".")[0] == package for name in files) >= 1, package
    assert len(files) > 60 and sum(len(e) for e in edges.values()) > 100  # the walk really reads the imports


def test_every_import_follows_the_layers():
    files, edges = graph()
    broken = [f"{files[name].relative_to(ROOT)}:{line}: {name} imports {target}"
              for name, targets in edges.items() for target, line, _ in targets
              if target.split(".")[0] not in ALLOWED[name.split(".")[0]]]
    assert not broken, "imports against the layering:\n" + "\n".join(broken)


def test_no_project_module_is_imported_inside_a_function():
    files, edges = graph()
    nested = [f"{files[name].relative_to(ROOT)}:{line}: {target}" for name, targets in edges.items()
              for target, line, in_function in targets if in_function]
    assert not nested, "function-level imports of project modules:\n" + "\n".join(nested)


def test_no_import_cycle():
    _, edges = graph()
    successors = {name: sorted({target for target, _, _ in targets}) for name, targets in edges.items()}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in successors.get(node, ()):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for start in sorted(successors):
        if start not in state and (cycle := visit(start)):
            raise AssertionError("import cycle: " + " -> ".join(cycle))


def test_the_check_sees_a_violation(tmp_path):
    """The walker itself: a function-level import of an upper layer is found (so the rules above can fail)."""
    bad = tmp_path / "bad.py"
    bad.write_text("import os\n\ndef f():\n    from xdeepfm.train import train\n    return train\n")
    known = {"xdeepfm", "xdeepfm.train", "mmfusion.bad"}
    assert imports("mmfusion.bad", bad, known) == [("xdeepfm.train", 4, True)]
