"""The shape of the code, read from its source (ast), so that it stays as ARCHITECTURE.md draws it.

* Imports point one way: storage/ (the foundation) < imaging/ < maternal/ < consult/ < film/ < edge/ < workspace/
  < web/, workers/
  < lancang/ (CLI, serve). A module imports only from its own package or from a lower layer;
  web/ and workers/ never import each other.
* No import circles between modules, counting imports inside functions.
* No project import inside a function unless a `lazy:` comment beside it (on its line or in
  the comment block right above) gives the measured reason.
* No product function longer than 60 lines unless a `long:` comment in it says why.

Each rule is also run on a small made-up tree that breaks it, so the checks themselves
cannot silently pass everything.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"storage": 0, "imaging": 1, "maternal": 2, "consult": 3, "film": 4, "edge": 4.5, "workspace": 5,
          "web": 6, "workers": 6, "lancang": 7}
# Alembic loads its environment by file path and needs every domain's tables: it is a script
# run from the top, not a module of the foundation.
SCRIPTS = {"storage.migrations.env"}
MAX_FUNCTION_LINES = 60


@dataclass(frozen=True)
class Import:
    source: str
    target: str
    line: int
    in_function: bool
    reason: bool  # a `lazy:` comment stands beside it


def product_modules(root: Path = ROOT) -> dict[str, str]:
    """{module name: source} of every product module (migrations' versions excluded)."""
    found = {}
    for package in LAYERS:
        for path in sorted((root / package).rglob("*.py")):
            if "migrations/versions" in path.as_posix():
                continue
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path.read_text(encoding="utf-8")
    return found


def _resolve(name: str, modules: dict[str, str]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _targets(node: ast.AST, module: str, is_package: bool, modules: dict[str, str]) -> set[str]:
    """The project modules an import statement loads (`from pkg import submodule` -> the submodule)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            anchor = module.split(".")
            anchor = anchor if is_package else anchor[:-1]
            anchor = anchor[:len(anchor) - node.level + 1]
            base = ".".join(anchor + ([base] if base else []))
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
    found = set()
    for name in names:
        if name.split(".")[0] in LAYERS:
            resolved = _resolve(name, modules)
            if resolved and resolved != module:
                found.add(resolved)
    return found


def _has_reason(lines: list[str], lineno: int, word: str) -> bool:
    """`word` in a comment on the line, or in the comment lines directly above it."""
    if f"# {word}" in lines[lineno - 1] or f"#{word}" in lines[lineno - 1]:
        return True
    index = lineno - 2
    while index >= 0 and lines[index].strip().startswith(("#", "from ", "import ")):
        if f"# {word}" in lines[index]:
            return True
        index -= 1
    return False


def imports_of(modules: dict[str, str]) -> list[Import]:
    found = []
    packages = {m.rpartition(".")[0] for m in modules}
    for module, source in modules.items():
        _walk(ast.parse(source), module, module in packages, modules, source.splitlines(), found,
              in_function=False, type_only=False)
    return found


def _walk(node, module, is_package, modules, lines, found, *, in_function, type_only):
    for child in ast.iter_child_nodes(node):
        inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
        typing_only = type_only or (isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test))
        if isinstance(child, (ast.Import, ast.ImportFrom)) and not typing_only:
            for target in _targets(child, module, is_package, modules):
                found.append(Import(module, target, child.lineno, in_function,
                                    _has_reason(lines, child.lineno, "lazy:")))
        _walk(child, module, is_package, modules, lines, found, in_function=inside, type_only=typing_only)


def upward(imports: list[Import]) -> list[Import]:
    bad = []
    for imp in imports:
        if imp.source in SCRIPTS:
            continue
        mine, theirs = imp.source.split(".")[0], imp.target.split(".")[0]
        if LAYERS[theirs] > LAYERS[mine] or (LAYERS[theirs] == LAYERS[mine] and theirs != mine):
            bad.append(imp)
    return bad


def circles(imports: list[Import]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        graph.setdefault(imp.source, set()).add(imp.target)
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in list(graph):
        if node not in index:
            visit(node)
    return groups


def unexplained_lazy(imports: list[Import]) -> list[Import]:
    return [imp for imp in imports if imp.in_function and not imp.reason]


def long_functions(modules: dict[str, str]) -> list[str]:
    found = []
    for module, source in modules.items():
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                body = "\n".join(lines[node.lineno - 1:node.end_lineno])
                if length > MAX_FUNCTION_LINES and "# long:" not in body:
                    found.append(f"{module}.{node.name} ({length} lines)")
    return found


# -- the product ------------------------------------------------------------------------


def test_imports_point_downward_only():
    assert [f"{i.source}:{i.line} imports {i.target}" for i in upward(imports_of(product_modules()))] == []


def test_no_module_import_circles():
    assert circles(imports_of(product_modules())) == []


def test_every_import_inside_a_function_says_why():
    assert [f"{i.source}:{i.line} imports {i.target}"
            for i in unexplained_lazy(imports_of(product_modules()))] == []


def test_no_product_function_over_60_lines_without_a_reason():
    assert long_functions(product_modules()) == []


# -- the checks catch what they are for --------------------------------------------------


def test_the_checks_catch_an_upward_import_a_circle_a_silent_lazy_import_and_a_long_function():
    made_up = {
        "storage": "", "storage.db": "from lancang.settings import get_settings\n",  # foundation importing the roof
        "lancang": "", "lancang.settings": "X = 1\n",
        "web": "", "web.app": "from workers import tasks\n",  # one top package into another
        "workers": "", "workers.tasks": "",
        "imaging": "", "imaging.scp": "def run():\n    from imaging import multiproc\n",
        "imaging.multiproc": "from imaging.scp import run\n",
        "consult": "", "consult.ok": "def f():\n    # lazy: costs 2 s at start\n    from imaging import scp\n",
        "film": "", "film.long": "def f():\n" + "    x = 1\n" * 70,
    }
    imports = imports_of(made_up)
    assert {(i.source, i.target) for i in upward(imports)} == {("storage.db", "lancang.settings"),
                                                               ("web.app", "workers.tasks")}
    assert circles(imports) == [["imaging.multiproc", "imaging.scp"]]
    assert [(i.source, i.target) for i in unexplained_lazy(imports)] == [("imaging.scp", "imaging.multiproc")]
    assert long_functions(made_up) == ["film.long.f (71 lines)"]


def test_the_checks_catch_the_upward_imports_this_regroup_removed():
    """Shapes from before the regroup (issue 15): settings in lancang/ imported by storage/,
    the runtime lazily importing the worker's Celery app."""
    made_up = {"storage": "", "storage.db": "from lancang.settings import Settings\n",
               "lancang": "", "lancang.settings": "", "lancang.runtime":
               "def bootstrap():\n    from workers.app import make_celery\n",
               "workers": "", "workers.app": ""}
    imports = imports_of(made_up)
    assert [(i.source, i.target) for i in upward(imports)] == [("storage.db", "lancang.settings")]
    assert [(i.source, i.target) for i in unexplained_lazy(imports)] == [("lancang.runtime", "workers.app")]


# -- configuration -------------------------------------------------------------------------


def test_only_settings_read_the_environment():
    """Every LANCANG_* variable goes through storage/settings.py (documented, validated once)."""
    readers = [module for module, source in product_modules().items()
               if module != "storage.settings" and ("os.environ" in source or "getenv(" in source)]
    assert readers == []


def test_every_setting_is_in_the_readme_table():
    from storage.settings import Settings

    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    missing = []
    for name in Settings.model_fields:
        parts = name.upper().split("_")
        # A row may group related variables: `LANCANG_DICOM_ACSE_TIMEOUT` / `_DIMSE_TIMEOUT`.
        spellings = [(f"`LANCANG_{name.upper()}`", "")] + [
            ("LANCANG_" + "_".join(parts[:k]), "`_" + "_".join(parts[k:]) + "`") for k in range(1, len(parts))]
        if not any(head in line and tail in line for line in lines for head, tail in spellings):
            missing.append(f"LANCANG_{name.upper()}")
    assert missing == []


def test_every_package_is_installed_and_shipped():
    """A package missing from the wheel or the image imports in the repository and nowhere else
    (the image lacked workspace/ until this test)."""
    import tomllib

    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    copied = {line.split()[1] for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("COPY ")}
    for package in LAYERS:
        assert f"{package}*" in include, package
        assert package in copied, package
