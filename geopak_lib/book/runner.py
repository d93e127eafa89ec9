"""Run the numbered notebooks headless with a profile from params/, and render their reports.

A profile (docs/design.md) has two sections: ``common`` (keys every notebook declares) and
``notebooks`` (per-notebook keys). The demo dataset is built by 00_data_audit when its
``demo_n_images`` parameter is positive and the dataset is missing. Every key is
checked against the notebook's declared parameters before anything runs, because papermill only
warns about an unknown parameter and a misspelled one would silently fall back to its default.
``Profile.under(root)`` (``geopak book --under DIR``) moves everything a run writes under another
folder, e.g. a test's temporary one (docs/decisions/config.md).
"""

from __future__ import annotations

import os
import re
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml
from geopak_lib.book.kernels import kernel_options
from geopak_lib.book.report import export_html
from geopak_lib.book.runlock import RunLocked, run_lock
from geopak_lib.config import NOTEBOOKS, BookConfig, ConfigError, notebook_defaults

REPO_ROOT = Path(__file__).resolve().parents[2]
PROFILE_SECTIONS = {"common", "notebooks"}
NOTEBOOK_RE = re.compile(r"^\d\d_[a-z0-9_]+\.ipynb$")


class ProfileError(ValueError):
    """A profile names a key, section or notebook that does not exist."""


@dataclass
class Profile:
    name: str
    path: Path
    common: dict = field(default_factory=dict)
    notebooks: dict = field(default_factory=dict)
    root: Path = REPO_ROOT  # the reports go to root/reports/<name>/ (another root: under())

    def parameters_for(self, notebook: str) -> dict:
        """The parameters papermill injects into ``notebook``: common keys, then its own."""
        return {**self.common, **(self.notebooks.get(notebook) or {})}

    def run_dir(self) -> Path:
        """The run folder (a relative run_dir is relative to the repository, the notebooks' cwd)."""
        return REPO_ROOT / str(self.common.get("run_dir", f"runs/{self.name}"))

    def report_dir(self) -> Path:
        """HTML reports, and the site in its site/ folder."""
        return self.root / "reports" / self.name

    def under(self, root) -> "Profile":
        """This profile with everything its run writes under ``root`` (`geopak book --under`): the run
        folder, the feature cache, the reports and, when 00 builds the demo dataset (demo_n_images > 0),
        the dataset. A relative path p becomes root/p; an absolute one stays; a real dataset is read where it is."""
        root = Path(root).resolve()

        def moved(p) -> str:
            return str(p if Path(p).is_absolute() else root / p)

        notebooks = {k: dict(v or {}) for k, v in self.notebooks.items()}
        for nb, keys in (("00_data_audit", ("data_csv", "image_dir")), ("02_phase0_province", ("cache_dir",)),
                         ("03_phase1_geography", ("cache_dir",))):  # 02 and 03 both, or neither: one cache
            values = {**notebook_defaults(nb), **self.parameters_for(nb)}
            n_demo = values.get("demo_n_images", 1)  # a value of the wrong type is check_profile's to report
            if not isinstance(n_demo, (int, float)) or n_demo > 0:
                notebooks.setdefault(nb, {}).update({k: moved(values[k]) for k in keys})
        run_dir = moved(self.common.get("run_dir", f"runs/{self.name}"))
        return replace(self, common={**self.common, "run_dir": run_dir}, notebooks=notebooks, root=root)


def notebook_paths(root: Path = REPO_ROOT) -> list[Path]:
    """The numbered notebooks of the book, in order."""
    return sorted(p for p in (root / "notebooks").glob("*.ipynb") if NOTEBOOK_RE.match(p.name))


def resolve_profile_path(profile: str, root: Path = REPO_ROOT) -> Path:
    """'demo' -> params/demo.yaml; a path to a YAML file is taken as is."""
    p = Path(profile)
    if p.suffix in (".yaml", ".yml"):
        cand = p if p.is_absolute() else (Path.cwd() / p if (Path.cwd() / p).exists() else root / p)
    else:
        cand = root / "params" / f"{profile}.yaml"
    if not cand.exists():
        known = ", ".join(sorted(x.stem for x in (root / "params").glob("*.yaml")))
        raise ProfileError(f"profile {profile!r} not found ({cand}); known profiles: {known}")
    return cand


def load_profile(profile: str, root: Path = REPO_ROOT, *, under=None) -> Profile:
    """Read and check the structure of a profile (not yet against the notebooks); ``under``: a folder
    that takes what its run writes (:meth:`Profile.under`; created here, or a one-line ProfileError)."""
    path = resolve_profile_path(profile, root)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise ProfileError(f"{path}: not valid YAML{at} ({getattr(exc, 'problem', None) or exc})") from None
    if not isinstance(raw, dict):
        raise ProfileError(f"{path}: expected a mapping with sections {sorted(PROFILE_SECTIONS)}")
    unknown = set(raw) - PROFILE_SECTIONS
    if unknown:
        raise ProfileError(f"{path}: unknown section(s) {sorted(unknown)}; allowed: {sorted(PROFILE_SECTIONS)}")
    for sec in PROFILE_SECTIONS:
        if not isinstance(raw.get(sec) or {}, dict):
            raise ProfileError(f"{path}: section {sec!r} must be a mapping")
    common = raw.get("common") or {}
    _refuse_foreign_run_dir(path, common.get("run_dir"), root)
    # no run_dir: runs/<profile>, injected like any key, or the notebooks would use their own default (smoke)
    common = {"run_dir": f"runs/{path.stem}", **common}
    loaded = Profile(name=path.stem, path=path, common=common, notebooks=raw.get("notebooks") or {})
    if under is None:
        return loaded
    try:
        Path(under).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ProfileError(f"cannot create --under {under} ({e.strerror or e}); choose another folder") from None
    return loaded.under(under)


def _refuse_foreign_run_dir(path: Path, run_dir, root: Path) -> None:
    """A profile copied from another keeps its run_dir and would write into that profile's run."""
    if not run_dir:
        return
    owner = Path(str(run_dir)).name
    if owner != path.stem and (root / "params" / f"{owner}.yaml").is_file() \
            and Path(str(run_dir)).parent == Path("runs"):
        raise ProfileError(f"{path}: run_dir {run_dir!r} belongs to the profile {owner!r}; "
                           f"use run_dir: runs/{path.stem} or delete the line (that is the default)")


def declared_parameters(notebook: Path) -> dict:
    """{name: default source} of the notebook's ``parameters`` cell, via papermill."""
    import papermill

    return {k: v["default"] for k, v in papermill.inspect_notebook(str(notebook)).items()}


def check_profile(profile: Profile, notebooks: list[Path]) -> None:
    """Raise ProfileError naming every key a notebook does not declare, and unknown notebooks."""
    names = {nb.stem for nb in notebooks}
    errors = [f"section 'notebooks' names {k!r}, which is not a notebook (have: {', '.join(sorted(names))})"
              for k in profile.notebooks if k not in names]
    for nb in notebooks:
        declared = declared_parameters(nb)
        if not declared:
            errors.append(f"{nb.name} has no cell tagged 'parameters'")
            continue
        for key in profile.parameters_for(nb.stem):
            if key not in declared:
                where = "common" if key in profile.common else f"notebooks.{nb.stem}"
                close = [d for d in declared if _similar(key, d)]
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                errors.append(f"key {key!r} (section {where}) is not a parameter of {nb.name}{hint}")
    if errors:
        raise ProfileError(f"{profile.path}:\n  - " + "\n  - ".join(errors))
    book_config(profile)  # the values' types, and one cache for 02 and 03


def book_config(profile: Profile) -> BookConfig:
    """The profile as the typed config (geopak_lib.config), for the book's own notebooks; a value of
    the wrong type or a key no section declares raises ProfileError naming it."""
    try:
        return BookConfig.from_profile(profile.common, {k: v for k, v in profile.notebooks.items() if k in NOTEBOOKS},
                                       str(profile.path))
    except ConfigError as e:
        raise ProfileError(str(e)) from None


def _similar(a: str, b: str) -> bool:
    import difflib

    return difflib.SequenceMatcher(None, a, b).ratio() > 0.75


@contextmanager
def inline_figures():
    """Kernels inherit the environment, and MPLBACKEND=Agg (set by tests and some CI) would make
    every figure vanish from the executed notebooks; the kernel then picks its inline backend."""
    saved = os.environ.pop("MPLBACKEND", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["MPLBACKEND"] = saved


def run_book(profile_name: str, *, only: list[str] | None = None, start: str | None = None,
             kernel: str = "python3", log=print, site: bool = True, under=None) -> list[Path]:
    """Run the book's notebooks in order with a profile; return the HTML reports written.

    Executed notebooks go to ``<run_dir>/notebooks/``; reports to ``reports/<profile>/``. When the
    run reaches the end of the book (no ``only``), the site is rebuilt into ``reports/<profile>/site/``.
    ``under``: a folder that takes all of it, and the cache and demo dataset (:meth:`Profile.under`).
    """
    profile = load_profile(profile_name, under=under)
    notebooks = notebook_paths()
    check_profile(profile, notebooks)  # the whole profile, even when running a subset
    if only:
        missing = [o for o in only if o not in {nb.stem for nb in notebooks}]
        if missing:
            raise ProfileError(f"no such notebook(s): {missing}")
        notebooks = [nb for nb in notebooks if nb.stem in only]
    if start:
        notebooks = [nb for nb in notebooks if nb.stem >= start]
    run_dir = profile.run_dir()
    with run_lock(run_dir):
        return _run_notebooks(profile, notebooks, run_dir, only=only, kernel=kernel, log=log, site=site)


def _run_notebooks(profile: Profile, notebooks: list[Path], run_dir: Path, *, only, kernel, log, site):
    """The body of run_book, under the run folder's lock."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    report_dir = profile.report_dir()
    reports = []
    t_book = time.time()
    for i, nb in enumerate(notebooks, 1):
        out_nb = run_dir / "notebooks" / nb.name
        out_nb.parent.mkdir(parents=True, exist_ok=True)
        log(f"[{i}/{len(notebooks)}] {nb.stem}  (profile {profile.name})")
        t0 = time.time()
        try:
            with inline_figures():
                papermill.execute_notebook(str(nb), str(out_nb), parameters=profile.parameters_for(nb.stem),
                                           cwd=str(REPO_ROOT), kernel_name=kernel, progress_bar=True,
                                           report_mode=False, **kernel_options())
        except PapermillExecutionError as e:
            raise BookError(f"{nb.name} failed in cell {e.exec_count}: {e.ename}: {e.evalue}\n"
                            f"  full traceback in the executed notebook: {out_nb}") from None
        html = export_html(out_nb, report_dir / f"{nb.stem}.html")
        reports.append(html)
        log(f"      done in {time.time() - t0:.0f} s -> {_shown(html)}")
    log(f"book finished in {time.time() - t_book:.0f} s; reports in {report_dir}")
    if site and not only:
        build_book_site(profile, run_dir, log)
    elif site:
        log(f"site not rebuilt (only some notebooks ran); `geopak site {profile.name}` rebuilds it")
    return reports


def build_book_site(profile: Profile, run_dir: Path, log=print) -> Path:
    """The site of a run (geopak_lib.book.site) into reports/<profile>/site/."""
    from geopak_lib.book.site import SiteError, build_site

    try:
        return build_site(run_dir, profile.name, profile.report_dir() / "site", REPO_ROOT, log=log)
    except SiteError as e:
        raise BookError(str(e)) from None


def _shown(path: Path) -> Path:
    return path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path


class BookError(RuntimeError):
    """A notebook failed; the message names it, the cell and where the full traceback is."""


def main_book(args) -> int:
    """Entry point for ``geopak book``."""
    try:
        run_book(args.profile, only=args.only.split(",") if args.only else None, start=args.start, under=args.under)
    except (ProfileError, BookError, RunLocked) as e:
        print(f"geopak book: {e}", file=sys.stderr)
        return 2
    return 0


def main_site(args) -> int:
    """Entry point for ``geopak site``: rebuild the site of a profile's last run."""
    try:
        profile = load_profile(args.profile, under=args.under)
        build_book_site(profile, profile.run_dir())
    except (ProfileError, BookError) as e:
        print(f"geopak site: {e}", file=sys.stderr)
        return 2
    return 0


UNDER_HELP = ("write everything the run makes under DIR instead of the repository: DIR/<run_dir>, "
              "DIR/reports/<profile>/ (reports and site), DIR/<cache_dir> and, when 00 builds the demo "
              "dataset, DIR/<data_csv's folder>; absolute paths of the profile are kept (tests use it)")
