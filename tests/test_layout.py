"""The house rules of the package layout (issue 21), checked on the source itself.

Modules stay small enough to read, the top of `sicube/` shows only the entry points and the
shared facts, no module reaches into another's private names, and the README's layout tree
names every module there is.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sicube"
README = PACKAGE.parent / "README.md"
MAX_LINES = 800
MAX_TOP_LEVEL = 12


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _dotted(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_module_is_over_800_lines():
    long = {_dotted(p): n for p in _modules()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_the_top_of_the_package_stays_small():
    top = [p.name for p in PACKAGE.glob("*.py")]
    assert len(top) <= MAX_TOP_LEVEL, sorted(top)


def _private_uses(tree: ast.Module, own: str) -> list[str]:
    """`from sicube.x import _y` and `x._y` where `x` is another sicube module."""
    aliases: dict[str, str] = {}  # local name -> sicube module it stands for
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sicube"):
            for alias in node.names:
                target = f"{node.module}.{alias.name}"
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    if node.module != own:
                        found.append(target)
                else:
                    aliases[alias.asname or alias.name] = target
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("sicube.") and alias.asname:
                    aliases[alias.asname] = alias.name
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in aliases and node.attr.startswith("_")
                and not node.attr.startswith("__") and aliases[node.value.id] != own):
            found.append(f"{aliases[node.value.id]}.{node.attr}")
    return found


def test_no_module_reaches_into_another_modules_private_names():
    reaches = {}
    for path in [*_modules(), *(PACKAGE.parent / "tools").glob("*.py")]:
        own = _dotted(path) if PACKAGE in path.parents else path.stem
        uses = _private_uses(ast.parse(path.read_text()), own)
        if uses:
            reaches[own] = sorted(set(uses))
    assert reaches == {}


def _readme_tree() -> set[str]:
    """The module paths (relative to sicube/) the README's layout tree names."""
    text = README.read_text()
    section = text[text.index("## Development"):]
    block = section[section.index("```text"):]
    block = block[:block.index("```", 3)]
    listed, folder = set(), ""
    for line in block.splitlines():
        match = re.match(r"^(\s*[│├└─\s]*)(\w+)(/|\.py)(?=\s|$)", line)
        if not match:
            continue
        prefix, name, kind = match.groups()
        depth = len(prefix) // 4  # 4 characters a level (after the list item's 2)
        if kind == "/":
            folder = name if depth == 1 else ""
        elif depth == 1:
            listed.add(f"{name}.py")
        else:
            listed.add(f"{folder}/{name}.py")
    return listed


def test_the_readme_layout_tree_names_every_module():
    listed = _readme_tree()
    actual = {str(p.relative_to(PACKAGE)) for p in _modules()}
    actual -= {p for p in actual if p.endswith("__init__.py") and "/" in p}  # the folders
    assert sorted(actual - listed) == [], "modules missing from README's layout tree"
    assert sorted(listed - actual) == [], "README's layout tree names modules that do not exist"
