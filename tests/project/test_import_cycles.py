"""softxent's modules import each other without a cycle (read from the source, every import counted).

A package importing its own submodules is not a cycle (Python loads a package before its children);
anything else that leads back to where it started is. The control case shows the check finds one.
"""

import ast
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[2] / "src" / "softxent"


def module_names(root: Path) -> dict[str, Path]:
    names = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def import_graph(modules: dict[str, str]) -> dict[str, set[str]]:
    """module -> the softxent modules it imports, at any depth of its code (function-level imports too)."""
    graph = {name: set() for name in modules}
    for name, text in modules.items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    child = f"{node.module}.{alias.name}"
                    target = child if child in modules else node.module
                    if target in modules:
                        graph[name].add(target)
            elif isinstance(node, ast.Import):
                graph[name].update(alias.name for alias in node.names if alias.name in modules)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycle = stack[stack.index(nxt):] + [nxt]
                if not all(b.startswith(a + ".") or a.startswith(b + ".") for a, b in zip(cycle, cycle[1:])):
                    found.append(cycle)
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_no_import_cycle_in_softxent():
    modules = {name: path.read_text() for name, path in module_names(SOURCE).items()}
    assert len(modules) > 30  # the whole package was read
    assert cycles(import_graph(modules)) == []


def test_the_check_finds_a_cycle():
    modules = {"pkg": "", "pkg.a": "from pkg.b import f\n", "pkg.b": "def f():\n    from pkg import a\n"}
    assert cycles(import_graph(modules)) == [["pkg.a", "pkg.b", "pkg.a"]]
