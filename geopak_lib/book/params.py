"""One notebook with a profile, outside `geopak book`: papermill's ``-f``, nbval, and the check that a
notebook stops on a parameter it does not declare.

A profile (params/*.yaml) has two sections, ``common`` and ``notebooks``, so it is not what papermill's
``-f`` takes: papermill would inject two dicts named ``common`` and ``notebooks``, warn, and run the
notebook on its own defaults (the smoke run). ``geopak params PROFILE NOTEBOOK`` prints the flat
mapping the runner itself injects (:func:`flat_parameters`), and every notebook calls
:func:`check_parameters` right after its parameters cell, so an injected name it does not declare
stops it with one line instead of being ignored. docs/decisions/papermill.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from geopak_lib.config import notebook_defaults

# Injected values are YAML data; the variables the cells before the parameters cell make are modules,
# functions, paths and UPPER_CASE constants. So a plain-data, not upper-case global that the notebook
# does not declare was injected (every parameter of the book is lower case: geopak_lib/config.py).
PLAIN = (bool, int, float, str, list, dict, tuple, type(None))
IPYTHON_NAMES = {"In", "Out", "exit", "quit", "get_ipython"}


class UndeclaredParameter(NameError):
    """papermill injected a name the notebook's parameters cell does not declare."""


def undeclared(notebook: str, namespace: dict) -> list[str]:
    """Plain-data names in ``namespace`` that ``notebook`` does not declare (sorted)."""
    declared = set(notebook_defaults(notebook))
    return sorted(k for k, v in namespace.items() if not k.startswith("_") and k not in IPYTHON_NAMES
                  and not k.isupper() and k not in declared and isinstance(v, PLAIN))


def check_parameters(notebook: str, namespace: dict) -> None:
    """Raise UndeclaredParameter (one line: the names, and what to do) when papermill injected a name
    ``notebook`` does not declare. A notebook calls it with ``globals()`` after its parameters cell."""
    extra = undeclared(notebook, namespace)
    if not extra:
        return
    if {"common", "notebooks"} & set(extra):
        hint = (f"a book profile was passed to papermill's -f; make the flat parameter file with "
                f"`geopak params PROFILE {notebook} > p.yaml` and pass -f p.yaml")
    else:
        import difflib

        close = {k: difflib.get_close_matches(k, sorted(notebook_defaults(notebook)), n=1, cutoff=0.75) for k in extra}
        hint = "; ".join(f"did you mean {c[0]!r} for {k!r}?" for k, c in close.items() if c) or \
            f"its parameters are: {', '.join(notebook_defaults(notebook))}"
    raise UndeclaredParameter(f"{notebook} does not declare the parameter(s) {', '.join(map(repr, extra))}; {hint}")


def notebook_name(text: str, names) -> str:
    """'01', '01_geocells' or 'notebooks/01_geocells.ipynb' -> '01_geocells' (ValueError if none or several)."""
    stem = Path(text).stem
    hits = [n for n in names if n == stem or n.split("_", 1)[0] == stem]
    if len(hits) != 1:
        raise ValueError(f"{text!r} names no notebook of the book (have: {', '.join(names)})")
    return hits[0]


def flat_parameters(profile_name: str, notebook: str, *, under=None) -> tuple[str, dict]:
    """(notebook name, the parameters `geopak book [--under DIR]` injects into it under the profile), checked."""
    from geopak_lib.book.runner import check_profile, load_profile, notebook_paths

    profile = load_profile(profile_name, under=under)
    paths = notebook_paths()
    check_profile(profile, paths)
    name = notebook_name(notebook, [p.stem for p in paths])
    return name, profile.parameters_for(name)


def parameter_yaml(profile_name: str, notebook: str, *, under=None) -> str:
    """The flat YAML for papermill's -f, with a header that says where it came from."""
    name, params = flat_parameters(profile_name, notebook, under=under)
    how = f"geopak params {profile_name} {name}" + (f" --under {under}" if under is not None else "")
    head = (f"# parameters of {name} under the profile {profile_name!r} (`{how}`);\n"
            f"# papermill notebooks/{name}.ipynb out.ipynb -f this.yaml  runs it on {params.get('run_dir')}\n")
    return head + yaml.safe_dump(params, sort_keys=False)


def write_parameterised(profile_name: str, out_dir, *, under=None) -> list[Path]:
    """Every notebook with the profile's values injected as papermill would (not executed), into
    out_dir: what `make nbval PROFILE=...` runs nbval on (and `make test`, with a temporary ``under``)."""
    import nbformat
    from papermill.iorw import load_notebook_node  # what papermill reads with: every cell gets its tags list
    from papermill.parameterize import parameterize_notebook

    from geopak_lib.book.runner import notebook_paths

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in notebook_paths():
        _, params = flat_parameters(profile_name, path.stem, under=under)
        nb = parameterize_notebook(load_notebook_node(str(path)), params)
        target = out_dir / path.name
        nbformat.write(nb, target)
        written.append(target)
    return written


def main_params(args) -> int:
    """Entry point of `geopak params`."""
    from geopak_lib.book.runner import ProfileError

    try:
        if args.notebooks_to:
            for p in write_parameterised(args.profile, args.notebooks_to, under=args.under):
                print(p)
            return 0
        if not args.notebook:
            print("geopak params: name a NOTEBOOK (e.g. 01_geocells), or --notebooks-to DIR", file=sys.stderr)
            return 2
        sys.stdout.write(parameter_yaml(args.profile, args.notebook, under=args.under))
    except (ProfileError, ValueError) as exc:
        print(f"geopak params: {exc}", file=sys.stderr)
        return 2
    return 0


CELL_SOURCE = ('from geopak_lib.book.params import check_parameters\n\n'
               'check_parameters("{name}", globals())  # a parameter papermill injected but this notebook lacks stops here')
