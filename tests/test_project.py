"""Project hygiene: pins agree, notebooks are committed clean, every profile fits its notebooks."""

import ast
import json
import re
import subprocess
from pathlib import Path

import papermill
import pytest
import yaml

from geopak_lib.book.runner import PROFILE_SECTIONS, check_profile, load_profile, notebook_paths

ROOT = Path(__file__).resolve().parent.parent


def _pins(lines):
    return {m.group(1).lower().replace("_", "-"): m.group(2)
            for m in (re.match(r"^\s*-?\s*([A-Za-z0-9_.\-]+)==([^\s#]+)", l) for l in lines) if m}


def test_environment_yml_matches_requirements():
    req = _pins((ROOT / "requirements.txt").read_text().splitlines())
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda = _pins(pip_section)
    assert req, "requirements.txt has no pins"
    assert req == conda, f"differ: {set(req.items()) ^ set(conda.items())}"
    assert req["torch"] == "2.14.1" and req["torchvision"] == "0.29.1"


def test_installed_versions_match_pins():
    from importlib.metadata import version

    req = _pins((ROOT / "requirements.txt").read_text().splitlines())
    for name in ("torch", "torchvision", "open-clip-torch", "timm", "hdbscan", "papermill", "folium"):
        assert version(name).split("+")[0] == req[name], name


def test_committed_notebooks_have_no_outputs():
    files = subprocess.run(["git", "ls-files", "*.ipynb"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not files:  # not a git checkout (e.g. an sdist): check the working files instead
        files = [str(p.relative_to(ROOT)) for p in notebook_paths(ROOT)]
    assert files, "no notebooks found"
    dirty = []
    for f in files:
        nb = json.loads((ROOT / f).read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] == "code" and (cell.get("outputs") or cell.get("execution_count") is not None):
                dirty.append(f)
                break
    assert not dirty, f"notebooks committed with outputs: {dirty}"


def test_each_notebook_has_one_literal_parameters_cell_after_imports():
    for nb_path in notebook_paths(ROOT):
        nb = json.loads(nb_path.read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        tagged = [i for i, c in enumerate(code) if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert tagged == [1], f"{nb_path.name}: parameters cell must be the 2nd code cell, got {tagged}"
        src = "".join(code[1]["source"])
        for line in src.splitlines():
            line = line.split("#")[0].strip()
            if line:  # literals only: name = <literal>
                name, _, value = line.partition("=")
                import ast
                ast.literal_eval(value.strip())
        declared = papermill.inspect_notebook(str(nb_path))
        for key in ("run_dir", "seed", "device"):
            assert key in declared, f"{nb_path.name} does not declare common key {key!r}"


@pytest.mark.parametrize("profile", sorted(p.stem for p in (ROOT / "params").glob("*.yaml")))
def test_profiles_fit_notebooks(profile):
    prof = load_profile(profile)
    check_profile(prof, notebook_paths(ROOT))
    assert set(yaml.safe_load(prof.path.read_text())) <= PROFILE_SECTIONS


# Safety switches whose default is the safe value, not the smoke one: a profile that forgets the key
# must not train on random encoders (docs/decisions/encoders.md).
SAFE_DEFAULTS = {"allow_random_weights": False}


def test_smoke_profile_is_the_notebook_defaults():
    """House rule 4: parameter defaults are the smoke settings (safety switches excepted)."""
    prof = load_profile("smoke")
    for nb_path in notebook_paths(ROOT):
        declared = {k: v["default"] for k, v in papermill.inspect_notebook(str(nb_path)).items()}
        for key, value in prof.parameters_for(nb_path.stem).items():
            if key in SAFE_DEFAULTS:
                assert ast.literal_eval(declared[key]) == SAFE_DEFAULTS[key], f"{nb_path.name}: {key}"
                continue
            assert ast.literal_eval(declared[key]) == value, f"{nb_path.name}: {key} default != smoke"
