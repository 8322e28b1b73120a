"""The README's Layout table is the house's plan, and the package is held to it: every module
has one row, and its imports point at its own layer or the ones below, never up and never
round in a circle."""

import ast
import os
import pathlib
import re

from tests.broker_process import ROOT

PACKAGE = pathlib.Path(ROOT, "greenmq")

# What each layer may import besides itself. The client stands apart from the broker: it
# shares only the vocabulary of the `shared` layer.
MAY_IMPORT = {
    "shared": set(),
    "leaf": {"shared"},
    "store": {"leaf", "shared"},
    "core": {"store", "leaf", "shared"},
    "front end": {"core", "store", "leaf", "shared"},
    "process": {"front end", "core", "store", "leaf", "shared", "client"},
    "client": {"shared"},
}


def readme_layers():
    """{module name in the package: its layer}, from the README's Layout table."""
    with open(os.path.join(ROOT, "README.md")) as readme:
        layout = readme.read().split("\n## Layout\n")[1].split("\n## ")[0]
    layers = {}
    for layer, name in re.findall(r"^\| ([a-z ]+) \| `([a-z_]+)(?:\.py|/)` \|", layout, re.M):
        assert name not in layers, f"{name} has two rows"
        layers[name] = layer
    return layers


def module_of(path):
    """A file's room: its module, or the subpackage it belongs to."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def imports(path, top_level_only=False):
    """The rooms of the package a file imports (its own room left out)."""
    tree = ast.parse(path.read_text(), str(path))
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            inside_subpackage = path.parent != PACKAGE
            if node.level == 1 and not inside_subpackage or node.level == 2:
                names = [node.module] if node.module else [alias.name for alias in node.names]
            elif node.level == 0 and (node.module or "").startswith("greenmq."):
                names = [node.module.split(".")[1]]
            else:
                continue
        elif isinstance(node, ast.Import):
            names = [alias.name.split(".")[1] for alias in node.names if alias.name.startswith("greenmq.")]
        else:
            continue
        found |= {name.split(".")[0] for name in names}
    return found - {module_of(path)}


def rooms():
    return {module_of(path) for path in PACKAGE.rglob("*.py") if path.name != "__init__.py" or
            path.parent != PACKAGE}


def test_every_module_of_the_package_has_one_row_in_the_readmes_layout():
    assert set(readme_layers()) == rooms()


def test_every_import_points_at_its_own_layer_or_one_below():
    layers = readme_layers()
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "__init__.py":
            continue
        layer = layers[module_of(path)]
        upward += [f"{path.relative_to(ROOT)} ({layer}) imports {name} ({layers[name]})"
                   for name in sorted(imports(path)) if layers[name] not in MAY_IMPORT[layer] | {layer}]
    assert upward == []


def test_no_modules_import_each_other_round_a_circle():
    """At import time, that is: a function may import what its module cannot (the store
    picks its implementation when asked)."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        if path != PACKAGE / "__init__.py":
            graph.setdefault(module_of(path), set()).update(imports(path, top_level_only=True))
    done, on_path = set(), []

    def visit(room):
        assert room not in on_path, " -> ".join(on_path[on_path.index(room):] + [room])
        if room not in done:
            on_path.append(room)
            for other in sorted(graph.get(room, ())):
                visit(other)
            on_path.pop()
            done.add(room)

    for room in sorted(graph):
        visit(room)
