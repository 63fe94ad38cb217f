"""dra.config is a package along its sections; callers import every name from its top
(`from dra import config as cfg`), so a public name defined in a section must be re-exported there."""

import ast
from pathlib import Path

import dra.config

PACKAGE = Path(dra.config.__file__).parent


def _public_names(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {target.id for target in node.targets if isinstance(target, ast.Name)}
    return {name for name in names if not name.startswith("_")}


def test_every_public_name_of_a_section_is_the_packages_own():
    sections = sorted(path for path in PACKAGE.glob("*.py") if path.name != "__init__.py")
    assert len(sections) >= 6
    seen: dict[str, str] = {}
    for path in sections:
        module = __import__(f"dra.config.{path.stem}", fromlist=["_"])
        for name in _public_names(path):
            assert name not in seen, f"{name} is defined in both {seen[name]} and {path.name}"
            seen[name] = path.name
            assert getattr(dra.config, name, None) is getattr(module, name), f"dra.config does not re-export {name}"
    assert set(dra.config.__all__) == set(seen)
