"""The library's layering (docs/design.md): a module imports only from its own layer or below.

    0  geopak_lib.{config, constants, utils, geo, metrics}   the typed config, pure maths and helpers
    1  geopak_lib.data        images, validation, splits, geocells, augmentation, the run folder
    2  geopak_lib.model       encoders, the GEOPAK module, inference, losses
    3  geopak_lib.training    config, cache, sampler, passes, trainer, checkpoints, distributed
    4  geopak_lib.inference   the public API: predictor, model folders, calibration and refinement records,
                              ensembles, groups of photos
    5  geopak_lib.analysis    what the notebooks measure: per-split frames, phase comparison, ablations,
                              baselines, several-photo and ensemble studies, fitting refinement and calibration
    6  geopak_lib.book        the app: runner, reports, figures, demo builder, CLI

Imports inside functions count as much as those at the top of a module.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "geopak_lib"
LAYERS = {"data": 1, "model": 2, "training": 3, "inference": 4, "analysis": 5, "book": 6}


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


def _code_lines(name: str) -> list[str]:
    import json

    cells = json.loads((PACKAGE.parent / "notebooks" / f"{name}.ipynb").read_text())["cells"]
    return [line for c in cells if c["cell_type"] == "code" for line in "".join(c["source"]).splitlines()
            if line.strip()]


def test_evaluation_notebook_is_thin_and_phases_call_one_training_function():
    """06 tells the story and calls named library steps (analysis/evaluation_steps.py, shown by
    book/evaluation_report.py): at most 60 non-blank code lines, parameters included. 03-05 train
    with the one call run_phase, never train_phase or make_loss of their own."""
    assert len(_code_lines("06_evaluation")) <= 60
    for name in ("03_phase1_geography", "04_phase2_adaptation", "05_phase3_finetune"):
        code = "\n".join(_code_lines(name))
        assert code.count("run_phase(settings, inputs") == 1, name
        assert "train_phase(" not in code and "make_loss(" not in code, name
