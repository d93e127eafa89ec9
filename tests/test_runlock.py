"""One book per run folder: a second holder of the run lock is refused at once, naming the pid."""
import os
import subprocess
import sys
import time

import pytest

from geopak_lib.book.runlock import LOCK_NAME, RunLocked, run_lock


def test_second_holder_refused_with_pid(tmp_path):
    code = ("import sys,time; from geopak_lib.book.runlock import run_lock\n"
            f"with run_lock({str(tmp_path)!r}):\n    print('held', flush=True); time.sleep(30)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert child.stdout.readline().strip() == "held"
        t0 = time.time()
        with pytest.raises(RunLocked, match=rf"pid {child.pid}\b"):
            with run_lock(tmp_path):
                pass
        assert time.time() - t0 < 2  # refused at once, not after waiting
    finally:
        child.kill()
        child.wait()
    # the holder died: the kernel released the lock, the stale file does not block
    with run_lock(tmp_path) as p:
        assert p.read_text().strip() == str(os.getpid())
    assert (tmp_path / LOCK_NAME).exists()


def test_main_book_exit_2_when_locked(tmp_path, monkeypatch, capsys):
    from geopak_lib.book import runner

    def locked(*a, **k):
        raise RunLocked("runs/x is in use by another `geopak book` (pid 123)")
    monkeypatch.setattr(runner, "run_book", locked)
    args = type("A", (), {"profile": "demo", "only": None, "start": None, "under": None})()
    assert runner.main_book(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pid 123" in err[0]


def test_internal_error_one_line_exit_3(monkeypatch, capsys):
    from geopak_lib.book import cli

    def boom(args):
        raise ValueError("bad state")
    monkeypatch.setattr(cli, "_cmd_site", boom)
    monkeypatch.delenv("GEOPAK_DEBUG", raising=False)
    parser = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: _with_func(parser(), boom))
    assert cli.main(["site", "demo"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "internal error, please report" in err[0] and "bad state" in err[0]
    with pytest.raises(ValueError):
        cli.main(["--debug", "site", "demo"])


def _with_func(parser, func):
    for action in parser._subparsers._group_actions:
        action.choices["site"].set_defaults(func=func)
    return parser
