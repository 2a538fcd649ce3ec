"""The import contract: deepscope's layers, written down once and checked on every module's imports.

Data flows downward: a module imports from its own layer and the layers below it, never above. Besides that,
no two modules import each other (directly or round a longer cycle, function-local imports included), and no
module imports another module's private names (``_name``) or a private module (``_common``) of another package.
The checker reads the source (the AST), so an import inside a function counts as much as one at the top.
``test_the_contract_catches_a_wrong_import`` shows it failing on each kind of wrong import.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "src"

# Top to bottom. The workspace store is a leaf: it imports nothing of deepscope but the foundation.
LAYERS = ["app", "atlas", "metrics", "render", "units", "attribution", "probe", "zoo", "workspace"]
# Modules every layer may import, which import nothing of deepscope themselves.
FOUNDATION = {"deepscope.errors", "deepscope._version"}


def modules_in(source: Path) -> dict[str, str]:
    """Module name -> source text of every module under ``source`` (a package's ``__init__`` as the package)."""
    found = {}
    for path in sorted(source.rglob("*.py")):
        parts = path.relative_to(source).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path.read_text()
    return found


def imports_of(name: str, text: str, modules: set[str]) -> list[tuple[str, int, str | None, str]]:
    """``(imported module, line, imported name or None, the module named after 'from' or 'import')`` for every
    deepscope import in a module's source."""
    package = name if f"{name}.__init__" in modules or _is_package(name, modules) else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            found += [
                (alias.name, node.lineno, None, alias.name)
                for alias in node.names
                if alias.name.startswith("deepscope")
            ]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if not base.startswith("deepscope"):
                continue
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in modules:
                    found.append((submodule, node.lineno, None, base))
                else:
                    found.append((base, node.lineno, alias.name, base))
    return found


def _is_package(name: str, modules: set[str]) -> bool:
    return any(other.startswith(name + ".") for other in modules)


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def _private_module(module: str) -> str | None:
    """The package that owns ``module`` when a part of its path is private (``deepscope.units._forward``)."""
    parts = module.split(".")
    for index, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            return ".".join(parts[:index])
    return None


def violations(modules: dict[str, str]) -> list[str]:
    """Every broken rule of the contract, one line each."""
    names = set(modules)
    graph: dict[str, set[str]] = {}
    problems = []
    for name, text in modules.items():
        graph[name] = set()
        own = layer_of(name)
        if name != "deepscope" and own is None and name not in FOUNDATION and name != "deepscope.__main__":
            problems.append(f"{name}: in no layer; add its package to LAYERS (and docs/reference/layout.md)")
        for target, line, imported, base in imports_of(name, text, names):
            where = f"{name}:{line}"
            graph[name].add(target)
            if name in FOUNDATION and target != name:
                problems.append(f"{where}: the foundation module imports {target}")
            if name.startswith(base + ".") and name != "deepscope.__main__":
                problems.append(
                    f"{where}: imports through its own package's facade {base}; import the module itself"
                )
            theirs = layer_of(target)
            if own and theirs and LAYERS.index(theirs) < LAYERS.index(own):
                problems.append(
                    f"{where}: layer '{own}' imports {target} from the layer above it, '{theirs}'"
                )
            if imported and imported.startswith("_") and not imported.startswith("__") and target != name:
                problems.append(f"{where}: imports the private name {imported} of {target}")
            owner = _private_module(target)
            if owner and not (name == owner or name.startswith(owner + ".")):
                problems.append(f"{where}: imports {target}, a private module of {owner}")
    problems += [f"import cycle: {' -> '.join(cycle)}" for cycle in cycles(graph)]
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected group of modules that import each other (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in graph:
                continue
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1 or node in graph.get(node, ()):
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_through(group, graph) for group in groups]


def _cycle_through(group: list[str], graph: dict[str, set[str]]) -> list[str]:
    """A closed path through the group's first module (breadth-first, so the shortest one)."""
    start, members = group[0], set(group)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for other in sorted(graph[node] & members):
            if other == start:
                return [*paths[node], start]
            if other not in paths:
                paths[other] = [*paths[node], other]
                queue.append(other)
    return group


def test_the_library_keeps_its_layers():
    problems = violations(modules_in(SOURCE))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("module", "source", "complaint"),
    [
        (
            "deepscope.zoo.bad",
            "from deepscope.atlas.scanning.driver import scan\n",
            "layer 'zoo' imports deepscope.atlas.scanning.driver",
        ),
        (
            "deepscope.probe.bad",
            "def f():\n    from deepscope.app import cli\n",
            "from the layer above it, 'app'",
        ),
        ("deepscope.atlas.bad", "from deepscope.atlas.layouts import _sample\n", "the private name _sample"),
        ("deepscope.app.bad", "from deepscope.units._forward import layer_shapes\n", "a private module of"),
        ("deepscope.zoo.loaders", "import deepscope.zoo.bad\n", "import cycle: deepscope.zoo.bad"),
        ("deepscope.errors", "from deepscope.zoo import loaders\n", "the foundation module imports"),
        ("deepscope.monitor.bad", "x = 1\n", "in no layer"),
        ("deepscope.atlas.bad", "from deepscope.atlas import scan\n", "own package's facade deepscope.atlas"),
    ],
)
def test_the_contract_catches_a_wrong_import(module, source, complaint):
    modules = modules_in(SOURCE)
    modules[module] = modules.get(module, "") + source
    if module == "deepscope.zoo.loaders":
        modules["deepscope.zoo.bad"] = "import deepscope.zoo.loaders\n"
    problems = violations(modules)
    assert any(complaint in problem for problem in problems), problems


def test_the_docs_show_the_layers_of_the_contract():
    """The documentation's package layout (and the README's Layout section, while it has one) lists the packages
    top to bottom, as LAYERS does."""
    pages = {"docs/reference/layout.md": (ROOT / "docs" / "reference" / "layout.md").read_text()}
    readme = (ROOT / "README.md").read_text()
    if "## Layout" in readme:
        pages["README.md"] = readme.split("## Layout", 1)[1]
    for page, text in pages.items():
        listed = re.findall(r"^\s*(\w+)/", text.split("```")[1], re.MULTILINE)
        assert listed == LAYERS, page
