"""The library's layering (docs/design.md): a module imports only from its own layer or below.

    0  geopak_lib.{config, constants, utils, geo, metrics}   the typed config, pure maths and helpers
    1  geopak_lib.data        images, validation, splits, geocells, augmentation, the run folder
    2  geopak_lib.model       encoders, the GEOPAK module, inference, losses
    3  geopak_lib.training    config, cache, sampler, passes, trainer, checkpoints, distributed
    4  geopak_lib.evaluation  baselines, predictions frame, calibration, predictor
    5  geopak_lib.book        the app: runner, reports, figures, demo builder, CLI

Imports inside functions count as much as those at the top of a module.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "geopak_lib"
LAYERS = {"data": 1, "model": 2, "training": 3, "evaluation": 4, "book": 5}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str, package: str) -> int | None:
    """Layer of a module of ``package`` (None for a module outside it)."""
    parts = module.split(".")
    if parts[0] != package:
        return None
    return LAYERS.get(parts[1], 0) if len(parts) > 1 else 0


def imported_modules(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, relative ones resolved."""
    is_pkg = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = module.split(".") if is_pkg else module.split(".")[:-1]
                parent = parent[: len(parent) - (node.level - 1)]
                base = ".".join(parent + ([node.module] if node.module else []))
            found += [(node.lineno, f"{base}.{a.name}") for a in node.names] if not node.module else []
            found.append((node.lineno, base))
    return found


def layer_violations(package_dir: Path) -> list[str]:
    """'file:line: module (layer a) imports target (layer b)' for each import of a higher layer."""
    package_dir = Path(package_dir)
    package = package_dir.name
    out = []
    for path in sorted(package_dir.rglob("*.py")):
        module = module_name(path, package_dir)
        own = layer_of(module, package)
        for line, target in imported_modules(path, module):
            other = layer_of(target, package)
            if other is not None and other > own:
                out.append(f"{path.relative_to(package_dir.parent)}:{line}: {module} (layer {own}) "
                           f"imports {target} (layer {other})")
    return out


def test_lower_layers_never_import_upper_ones():
    assert layer_violations(PACKAGE) == []


def test_every_subpackage_has_a_layer():
    subpackages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert subpackages == set(LAYERS), "a new subpackage needs a layer in LAYERS and in docs/design.md"


@pytest.mark.parametrize("source, expect", [
    ("from geopak_lib.book.report import offline_map\n", True),           # data -> book: upward
    ("def f():\n    from ..training import cache\n", True),               # hidden in a function, relative
    ("from geopak_lib.geo import haversine_km\n", False),                # data -> base: downward
    ("from . import images\n", False),                                    # own layer
])
def test_the_check_catches_an_upward_import(tmp_path, source, expect):
    pkg = tmp_path / "geopak_lib"
    for sub in ("", "data", "training", "book"):
        (pkg / sub).mkdir(parents=True, exist_ok=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "data" / "images.py").write_text("")
    (pkg / "data" / "splits.py").write_text(source)
    found = layer_violations(pkg)
    assert bool(found) == expect, found
    if expect:
        assert found[0].startswith("geopak_lib/data/splits.py:") and "(layer 1)" in found[0]
