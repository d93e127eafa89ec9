"""``make lab [PROFILE=demo]``: JupyterLab on the book as the last run of a profile left it.

The executed notebooks of that run (``<run_dir>/notebooks/``, written by ``geopak book``) carry
their outputs and, after the parameters cell, papermill's injected parameters: re-running a cell
works on that run. With no run yet, one line says which command makes one, and JupyterLab opens
the clean sources in ``notebooks/`` (their defaults are the smoke profile's).

    python -m geopak_lib.book.lab demo [--no-browser --port 8890 ...]   # extra args go to jupyter-lab
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from geopak_lib.book.runner import REPO_ROOT, ProfileError, load_profile, notebook_paths


def lab_target(profile: str, root: Path = REPO_ROOT) -> tuple[str, str]:
    """(notebook to open, relative to root; a one-line note, "" when the profile's run exists)."""
    prof = load_profile(profile, root)
    run_dir = str(prof.common.get("run_dir", f"runs/{prof.name}")).rstrip("/")
    executed = sorted((root / run_dir / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if executed:
        return executed[0].relative_to(root).as_posix(), ""
    first = notebook_paths(root)[0].relative_to(root).as_posix()
    return first, (f"no run of profile {prof.name} yet ({run_dir}/notebooks/ is empty): make one with "
                   f"`make book PROFILE={prof.name}`; opening the clean notebooks in notebooks/ instead")


def lab_command(profile: str, extra=(), root: Path = REPO_ROOT) -> tuple[list[str], str]:
    """(argv of jupyter-lab from this Python's environment, the note of lab_target)."""
    notebook, note = lab_target(profile, root)
    argv = [str(Path(sys.executable).parent / "jupyter-lab"), f"--ServerApp.root_dir={root}",
            f"--ServerApp.default_url=/lab/tree/{notebook}"]
    if hasattr(os, "getuid") and os.getuid() == 0:
        argv.append("--allow-root")
    return argv + list(extra), note


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    profile = args.pop(0) if args and not args[0].startswith("-") else "demo"
    try:
        cmd, note = lab_command(profile, args)
    except ProfileError as e:
        print(f"make lab: {e}", file=sys.stderr)
        return 2
    print(note or f"JupyterLab on the last run of profile {profile}: {cmd[2].split('/lab/tree/')[1]}", flush=True)
    os.execv(cmd[0], cmd)  # jupyter-lab itself, not a wrapper: Ctrl-C and its PID are its own


if __name__ == "__main__":
    sys.exit(main())
