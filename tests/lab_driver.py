"""Drive JupyterLab in headless Chromium for the browser checks (tests/test_lab.py).

``JupyterLab`` starts what ``make lab`` starts (geopak_lib/book/lab.py: ``jupyter-lab`` itself, not
the ``jupyter lab`` wrapper, with the project's Python and kernel) on a free port with a token,
and stops it by its own PID. ``run_notebook`` opens a notebook, runs all cells through JupyterLab's
own command, waits for the kernel, and returns the error outputs; ``screenshot`` saves a PNG.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from geopak_lib.book.lab import lab_command
from geopak_lib.book.runner import REPO_ROOT

CHROMIUM = shutil.which("chromium")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class JupyterLab:
    """``with JupyterLab(profile, tmp) as lab:`` a server on lab.url, the page at lab.page."""

    def __init__(self, profile: str, tmp: Path, root: Path = REPO_ROOT):
        self.profile, self.tmp, self.root = profile, Path(tmp), root
        self.port, self.token = free_port(), secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        from playwright.sync_api import sync_playwright

        extra = ["--no-browser", f"--port={self.port}", "--ServerApp.ip=127.0.0.1",
                 f"--IdentityProvider.token={self.token}", "--LabApp.expose_app_in_browser=True",
                 f"--LabApp.workspaces_dir={self.tmp / 'workspaces'}", f"--LabApp.user_settings_dir={self.tmp / 'settings'}"]
        self.argv, self.note = lab_command(self.profile, extra, self.root)
        settings = {"apputils-extension/notification": '{"fetchNews": "false"}',  # no news toast in screenshots
                    "docmanager-extension/plugin": '{"autosave": false}'}  # leave the run's notebooks as they are
        for name, text in settings.items():
            path = self.tmp / "settings" / "@jupyterlab" / f"{name}.jupyterlab-settings"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        # the kernels import this project's library wherever the lab's root is (a test's run: a tmp folder)
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "JUPYTER_RUNTIME_DIR": str(self.tmp / "runtime"),
               "HF_HUB_OFFLINE": "1"}
        env.pop("MPLBACKEND", None)  # conftest sets Agg for tests; notebooks keep inline figures
        self.log = open(self.tmp / "jupyter-lab.log", "w")
        self.proc = subprocess.Popen(self.argv, cwd=self.root, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self._wait_for_server()
        self._pw = sync_playwright().start()
        self.browser = self._pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        self.page = self.browser.new_page(viewport={"width": 1400, "height": 1800})
        return self

    def _wait_for_server(self, timeout: float = 120) -> None:
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter-lab exited: {(self.tmp / 'jupyter-lab.log').read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"{self.url}/api/status?token={self.token}", timeout=2)
                return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"jupyter-lab did not answer on {self.url} within {timeout} s")

    def __exit__(self, *exc):
        for close in (self.browser.close, self._pw.stop):
            try:
                close()
            except Exception:  # noqa: BLE001  (best effort; the server must still be stopped)
                pass
        self.proc.terminate()  # our own jupyter-lab by its PID; it shuts its kernels down
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()

    def default_notebook(self) -> str:
        """The notebook `make lab` opens (relative to the root)."""
        return self.argv[2].split("/lab/tree/", 1)[1]

    def run_notebook(self, notebook: str, timeout_s: float = 600) -> list[dict]:
        """Open ``notebook`` (relative to the root), run all cells, wait; -> its error outputs
        ({cell, ename, evalue}); the kernel is idle when it returns."""
        page = self.page
        self._opened = getattr(self, "_opened", 0) + 1
        # a workspace of its own for each notebook, reset: JupyterLab restores no earlier panel, so the
        # current widget is this notebook and its own kernel (not the one the last notebook left open)
        page.goto(f"{self.url}/lab/workspaces/check{self._opened}/tree/{notebook}?reset&token={self.token}")
        page.wait_for_function("nb => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
                               " return !!(w && w.context && w.context.path === nb && w.sessionContext); }",
                               arg=notebook, timeout=120_000)
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
        page.set_default_timeout(timeout_s * 1000)
        page.evaluate("""async () => {
            const panel = window.jupyterapp.shell.currentWidget;
            await panel.sessionContext.ready;
            await window.jupyterapp.commands.execute('notebook:run-all-cells');
        }""")
        # idle, and no cell still queued or running (its prompt shows [*])
        page.wait_for_function("""() => {
            const w = window.jupyterapp.shell.currentWidget;
            const k = w && w.sessionContext.session && w.sessionContext.session.kernel;
            if (!k || k.status !== 'idle') return false;
            return ![...w.node.querySelectorAll('.jp-InputArea-prompt')].some(p => p.textContent.includes('*'));
        }""")
        return page.evaluate("""() => {
            const cells = window.jupyterapp.shell.currentWidget.content.widgets;
            const errors = [];
            cells.forEach((c, i) => {
                if (c.model.type !== 'code') return;
                for (const o of c.model.outputs.toJSON())
                    if (o.output_type === 'error') errors.push({cell: i, ename: o.ename, evalue: o.evalue});
            });
            return errors;
        }""")

    def screenshot(self, path) -> Path:
        self.page.screenshot(path=str(path), full_page=True)
        return Path(path)
