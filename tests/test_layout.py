"""The package's layering, checked on the source: who may import whom."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "saeseeds"
# Every top-level module and subpackage of the project, as import names.
PROJECT = tuple(
    sorted(
        f"saeseeds.{path.stem}"
        for path in PACKAGE.iterdir()
        if path.stem != "__init__"
        and ((path.is_dir() and (path / "__init__.py").is_file()) or path.suffix == ".py")
    )
)
RULES = {
    # analysis reads run folders through the contract only: no training code, models or SAEs.
    "analysis": ("saeseeds.training", "saeseeds.activations", "saeseeds.sae", "saeseeds.config"),
    # an SAE is plain maths: nothing of the project but the error classes.
    "sae": tuple(name for name in PROJECT if name not in ("saeseeds.sae", "saeseeds.errors")),
    # sources know nothing of SAEs, training or analysis.
    "activations": ("saeseeds.training", "saeseeds.analysis", "saeseeds.sae"),
    # schemas never reach into what they configure at import time.
    "config": ("saeseeds.training", "saeseeds.activations", "saeseeds.analysis"),
}  # fmt: skip


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
    return modules


@pytest.mark.parametrize("layer", sorted(RULES))
def test_layer_imports_nothing_forbidden(layer):
    violations = [
        f"{path.relative_to(PACKAGE)} imports {module}"
        for path in sorted((PACKAGE / layer).rglob("*.py"))
        for module in sorted(imported_modules(path))
        if any(module == banned or module.startswith(banned + ".") for banned in RULES[layer])
    ]
    assert not violations, "\n".join(violations)


def test_contract_and_errors_import_no_torch_and_nothing_of_the_project():
    for name in ("contract.py", "errors.py"):
        modules = imported_modules(PACKAGE / name)
        assert not {m for m in modules if m.startswith(("torch", "saeseeds"))}, name


def test_nothing_in_the_package_imports_the_studies():
    """saeseeds.studies (the reproductions and the results page) sits on top of everything."""
    violations = [
        f"{path.relative_to(PACKAGE)} imports {module}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if "studies" not in path.relative_to(PACKAGE).parts
        for module in sorted(imported_modules(path))
        if module == "saeseeds.studies" or module.startswith("saeseeds.studies.")
    ]
    assert not violations, "\n".join(violations)
