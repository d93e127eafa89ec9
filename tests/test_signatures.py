"""Public functions with more than four parameters take the rest keyword-only.

Rule (STYLE.md): a public function or method (name without a leading underscore, plus ``__init__``; ``forward``
is exempt because torch calls it positionally) may accept at most four arguments positionally, ``self``/``cls``
not counted. Parameters after ``*`` (or ``*args``) are keyword-only and do not count; ``*args`` itself is a
violation only if more than four named positional parameters precede it. A call inside geopak_lib that passes
more than four positional arguments to such a function would be a TypeError, and is checked too.
"""
import ast
import textwrap
from pathlib import Path

LIB = Path(__file__).resolve().parents[1] / "geopak_lib"
MAX_POSITIONAL = 4
EXEMPT = {"forward"}
FUNCS = (ast.FunctionDef, ast.AsyncFunctionDef)


def _public(name: str) -> bool:
    return name not in EXEMPT and (not name.startswith("_") or name == "__init__")


def _positional(fn) -> list[str]:
    pos = [a.arg for a in fn.args.posonlyargs + fn.args.args]
    return pos[1:] if pos and pos[0] in ("self", "cls") else pos


def violations(source: str, filename: str = "<src>") -> list[str]:
    """'file:line:name (n positional)' for every public def accepting more than four args positionally."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, FUNCS) and _public(node.name):
            n = len(_positional(node))
            if n > MAX_POSITIONAL:
                out.append(f"{filename}:{node.lineno}:{node.name} ({n} positional)")
    return out


def test_no_public_function_takes_more_than_four_positional():
    found = []
    files = sorted(LIB.rglob("*.py"))
    assert len(files) > 20, f"geopak_lib not found at {LIB}"
    for path in files:
        found += violations(path.read_text(), str(path.relative_to(LIB.parent)))
    assert not found, "make these keyword-only after the fourth parameter (insert `*`):\n" + "\n".join(found)


def test_checker_flags_positional_signatures():
    bad = textwrap.dedent("""
        def five(a, b, c, d, e=1):
            pass

        class Model:
            def __init__(self, a, b, c, d, e):
                pass

            def method(self, a, b, c, d, *args, e=0):
                pass

            def fine(self, a, b, c, d, *, e=0, f=1):
                pass

            def forward(self, a, b, c, d, e):
                pass

            def _private(self, a, b, c, d, e):
                pass

        def okay(a, b, c, d):
            pass

        def posonly(a, b, /, c, d, e):
            pass
    """)
    flagged = [v.split(":")[2].split(" ")[0] for v in violations(bad, "bad.py")]
    assert sorted(flagged) == ["__init__", "five", "posonly"]
    assert "bad.py:2:five (5 positional)" in violations(bad, "bad.py")


def _wide_defs() -> dict[str, int]:
    """Name -> number of positional parameters, for public defs with more than four parameters in all."""
    wide = {}
    for path in LIB.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, FUNCS) and _public(node.name):
                n_all = len(_positional(node)) + len(node.args.kwonlyargs)
                if n_all > MAX_POSITIONAL:
                    wide[node.name] = max(wide.get(node.name, 0), len(_positional(node)))
    return wide


def test_no_call_in_lib_passes_more_than_four_positional_to_a_wide_function():
    """By name: a call `f(...)` or `x.f(...)` with more than four positional args, where some public def
    named f has more than four parameters, is one the keyword-only signature would reject."""
    wide = _wide_defs()
    assert wide, "no function with more than four parameters found: the walk is broken"
    bad = []
    for path in sorted(LIB.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
            n_pos = sum(not isinstance(a, ast.Starred) for a in node.args)
            if name in wide and n_pos > MAX_POSITIONAL:
                bad.append(f"{path.relative_to(LIB.parent)}:{node.lineno}:{name} ({n_pos} positional)")
    assert not bad, "pass these by keyword:\n" + "\n".join(bad)
