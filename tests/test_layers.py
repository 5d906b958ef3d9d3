"""The package's imports run one way, down the layers of docs/internals.md, and form no cycle.

Every ``import`` of every module is read (top level and inside functions alike), resolved to the
d2_pillars module it names, and checked against the layer table below.
"""

import ast
import os
from collections import defaultdict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "d2_pillars")

#: Bottom first. A module may import its own sub-package and the sub-packages of lower layers.
LAYERS = [
    ("structures", "layers", "utils", "class_names"),
    ("config", "data", "modeling", "synthetic"),
    ("checkpoint", "visualization"),
    ("evaluation",),
    ("engine",),
    ("deploy",),
    ("benchmark",),
]
LEVEL = {name: i for i, names in enumerate(LAYERS) for name in names}


def _modules():
    """{dotted module name: path} of every module of the package."""
    out = {}
    for root, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(root, f)
                rel = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
                out[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = path
    return out


def _imports(name, path, modules):
    """(line, imported d2_pillars module) of every import in the module ``name``."""
    is_package = path.endswith("__init__.py")
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    found = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # "from x import y": y may be a module of package x, or a name in x
            targets = [f"{prefix}.{a.name}" for a in node.names] + [prefix]
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t.startswith("d2_pillars") and t != name:
                found.append((node.lineno, t))
    return sorted(set(found))


def _subpackage(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_subpackage_has_a_layer():
    modules = _modules()
    missing = {_subpackage(m) for m in modules} - set(LEVEL) - {""}
    assert not missing, f"add {sorted(missing)} to LAYERS (and to docs/internals.md)"


def test_imports_only_go_down():
    modules = _modules()
    problems = []
    for name, path in modules.items():
        own = _subpackage(name)
        if not own:  # d2_pillars/__init__.py: the package's face
            continue
        for line, target in _imports(name, path, modules):
            other = _subpackage(target)
            if other and other != own and LEVEL[other] >= LEVEL[own]:
                rel = os.path.relpath(path, REPO)
                problems.append(f"{rel}:{line}: {own} (layer {LEVEL[own]}) imports {target}")
    assert not problems, "imports that do not go down:\n" + "\n".join(problems)


def test_no_import_cycle_between_modules():
    modules = _modules()
    graph = defaultdict(set)
    for name, path in modules.items():
        for _, target in _imports(name, path, modules):
            # a module's package __init__ runs first; it is not an edge of the module itself
            if not name.startswith(target + "."):
                graph[name].add(target)
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in list(modules):
        if v not in index:
            visit(v)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)
