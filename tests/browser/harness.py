"""End-to-end notebook harness: JupyterLab on localhost driven by headless Chromium.

``JupyterLab`` starts a private server (random token, free port, temporary Jupyter config/data/
runtime/settings/workspace folders, so a user's own settings never interfere) and stops it and its
kernels (process group + children) on exit, also when the test fails. ``Browser`` launches Debian's
``/usr/bin/chromium`` through Playwright's sync API (no browser download) and records console errors.
``NotebookPage`` drives one notebook through the real UI: menu Run > Run All Cells, File save
(Ctrl+S), widget sliders by keyboard, screenshots.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import nbformat

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "browser"
CHROMIUM = os.environ.get("LIC_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]
# Console messages that are not defects of the notebooks: {regex: why it is harmless}. Empty on
# purpose: JupyterLab 4.6 + ipywidgets 8.1 + Chromium 156 logged no error for the fixture and for
# notebooks 01/06; add an entry only with the reason.
BENIGN_CONSOLE: dict[str, str] = {}
# User settings for the private server: no news/update toasts over the page, no windowed notebook
# (cells outside the viewport stay rendered, so every output can be checked and screenshotted).
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
}
_IMG = "img, svg.main-svg"
_NUM = r"-?\d+(?:\.\d+)?(?:e-?\d+)?"
_TRACEBACK = re.compile(r"Traceback \(most recent call last\)|^\s*\w*(Error|Exception)(: |$)", re.M)


class HarnessError(RuntimeError):
    """The server, the browser or the notebook did not reach the awaited state in time."""


def poll(what: str, check: Callable[[], Any], timeout: float, every: float = 0.5) -> Any:
    """Call ``check`` until it returns a truthy value; fail naming ``what`` after ``timeout`` s."""
    end = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise HarnessError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def chromium_available() -> bool:
    """Whether the browser and its driver are installed (``.ci/install-browser.sh``)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False
    return Path(CHROMIUM).exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    """All descendants of ``pid`` (kernels run in their own session, so a group kill misses them)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def prepare_notebook(src: Path, parameters: dict | None = None, name: str | None = None) -> Path:
    """A fresh copy of ``src`` without outputs or widget state, parameters injected by papermill.

    The copy goes to ``test-artifacts/`` (one level below the repo root, like ``notebooks/``), so
    relative paths in the notebook resolve the same way.
    """
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    nb = load_notebook_node(str(src))
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nb.metadata.pop("widgets", None)
    nb.metadata.setdefault("kernelspec", {"name": "python3", "display_name": "Python 3",
                                          "language": "python"})
    if parameters:
        nb = parameterize_notebook(nb, parameters)
    dst = REPO / "test-artifacts" / (name or f"browser-{src.stem}.ipynb")
    dst.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, dst)
    return dst


class JupyterLab:
    """A private JupyterLab server rooted at the repo; a context manager that always stops it."""

    def __init__(self, root: Path = REPO, timeout: float = 180.0) -> None:
        self.root, self.timeout = root, timeout
        self.token = secrets.token_hex(16)
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.home = Path(tempfile.mkdtemp(prefix="lic-lab-"))
        self.log = self.home / "server.log"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: Path) -> str:
        rel = path.resolve().relative_to(self.root).as_posix()
        return f"{self.base}/lab/tree/{rel}?reset&token={self.token}"

    def api(self, path: str, method: str = "GET") -> Any:
        req = urllib.request.Request(f"{self.base}/api/{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def kernels_idle(self) -> bool:
        return all(k["execution_state"] == "idle" for k in self.api("kernels"))

    def shutdown_kernels(self) -> None:
        for kernel in self.api("kernels"):
            self.api(f"kernels/{kernel['id']}", method="DELETE")

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # inline figures
        for var in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR",
                    "JUPYTERLAB_SETTINGS_DIR", "JUPYTERLAB_WORKSPACES_DIR"):
            env[var] = str(self.home / var.lower())
        settings = Path(env["JUPYTERLAB_SETTINGS_DIR"])
        for plugin, values in LAB_SETTINGS.items():
            target = settings / f"{plugin}.jupyterlab-settings"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(values))
        # Kernels import this checkout, as in lic_core.workbench.sweep's papermill jobs (not another install).
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.root), env.get("PYTHONPATH")]))
        return env

    def _start(self) -> None:
        self.port = free_port()
        cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={self.port}",
               "--ServerApp.port_retries=0", "--ServerApp.ip=127.0.0.1",
               f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}"]
        if os.geteuid() == 0:  # CI containers run as root
            cmd.append("--allow-root")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.root, env=self._env(), stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise HarnessError(f"JupyterLab exited ({self.proc.returncode}):\n{self.tail()}")
        try:
            return bool(self.api("status"))
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def tail(self, n: int = 40) -> str:
        lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return "\n".join(lines[-n:])

    def __enter__(self) -> "JupyterLab":
        for attempt in range(3):  # a port taken between free_port() and bind: try another one
            self._start()
            try:
                poll("JupyterLab to answer /api/status", self._ready, self.timeout)
                return self
            except HarnessError:
                self.stop()
                if attempt == 2 or "already in use" not in self.tail():
                    raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Shut kernels and server down politely, then kill whatever of the tree is left."""
        if self.proc is None:
            return
        pids = _children(self.proc.pid)
        if self.proc.poll() is None:
            try:
                self.shutdown_kernels()
                self.api("shutdown", method="POST")
                self.proc.wait(timeout=20)
            except (urllib.error.URLError, OSError, ValueError, subprocess.TimeoutExpired):
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _signal(pids, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc = None
        shutil.rmtree(self.home, ignore_errors=True)


@dataclass
class Console:
    """Browser console errors and uncaught page exceptions, with the benign ones set apart."""

    errors: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        benign = any(re.search(pattern, text) for pattern in BENIGN_CONSOLE)
        (self.ignored if benign else self.errors).append(text)


class Browser:
    """Headless Debian Chromium under Playwright; a fresh temporary profile per launch."""

    def __init__(self, viewport: tuple[int, int] = (1280, 1600)) -> None:
        self.viewport = viewport

    def __enter__(self) -> "Browser":
        from playwright.sync_api import sync_playwright

        self._pw = sync_playwright().start()
        try:
            self.browser = self._pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                    args=CHROMIUM_ARGS)
        except BaseException:
            self._pw.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.browser.close()
        finally:
            self._pw.stop()

    def open(self, lab: JupyterLab, notebook: Path, timeout: float = 180.0) -> "NotebookPage":
        w, h = self.viewport
        context = self.browser.new_context(viewport={"width": w, "height": h})
        context.set_default_timeout(60_000)
        page = context.new_page()
        console = Console()
        page.on("console", lambda m: m.type == "error" and console.add(
            f"{m.text} @ {m.location.get('url', '')}"))
        page.on("pageerror", lambda e: console.add(f"uncaught: {e}"))
        page.goto(lab.url(notebook))
        nbp = NotebookPage(page, lab, notebook, console, timeout)
        nbp.wait_kernel_ready()
        return nbp


class NotebookPage:
    """One notebook open in JupyterLab; every action goes through the UI."""

    def __init__(self, page: Any, lab: JupyterLab, path: Path, console: Console,
                 timeout: float) -> None:
        self.page, self.lab, self.path, self.console, self.timeout = (page, lab, path, console,
                                                                      timeout)

    def close(self) -> None:
        """Close the page and shut its kernel down (the next notebook starts from a clean slate)."""
        try:
            self.page.context.close()
        finally:
            self.lab.shutdown_kernels()

    def __enter__(self) -> "NotebookPage":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def notebook(self) -> Any:
        return self.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook")

    def _status(self) -> str:
        """The kernel state the page shows in its status bar (e.g. "Idle", "Busy")."""
        item = self.page.locator('.jp-StatusBar-TextItem[title^="Change kernel"]')
        return item.first.inner_text() if item.count() else ""

    def wait_kernel_ready(self) -> None:
        self.notebook.wait_for(state="visible", timeout=self.timeout * 1000)
        poll("the kernel to start (status bar: Idle)",
             lambda: self._dismiss_kernel_dialog() or re.search(r"\w.*\| Idle", self._status())
             and "No Kernel" not in self._status(), self.timeout)

    def _dismiss_kernel_dialog(self) -> bool:
        """Accept the kernel proposed by a 'Select Kernel' dialog (a notebook without kernelspec)."""
        dialog = self.page.locator(".jp-Dialog")
        if dialog.count() and "Kernel" in dialog.inner_text():
            self.page.locator(".jp-Dialog .jp-mod-accept").click()
        return False

    def menu(self, *labels: str) -> None:
        """Click through the main menu bar, e.g. ``menu("Run", "Run All Cells")``."""
        self.notebook.click(position={"x": 5, "y": 5})
        self.page.locator(".lm-MenuBar-item", has_text=re.compile(f"^{labels[0]}$")).click()
        for label in labels[1:]:
            self.page.locator(".lm-Menu-item:visible .lm-Menu-itemLabel",
                              has_text=re.compile(f"^{re.escape(label)}$")).click()

    def prompts(self) -> list[str]:
        return self.notebook.locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()

    def run_all(self, timeout: float | None = None) -> None:
        """Run > Run All Cells, then wait until no cell is queued and the kernel stays idle."""
        self.menu("Run", "Run All Cells")
        poll("the first cell to be queued or run", lambda: any(
            "*" in p or re.search(r"\d", p) for p in self.prompts()), 60)
        self.wait_idle(timeout or self.timeout)

    def _settled(self) -> bool:
        return not any("*" in p for p in self.prompts()) and self.lab.kernels_idle()

    def wait_idle(self, timeout: float | None = None) -> None:
        """Wait until no prompt shows [*] and the kernel is idle on two polls in a row."""
        poll("all cells to finish", lambda: self._settled() and (time.sleep(1) or self._settled()),
             timeout or self.timeout)

    def errors(self) -> list[str]:
        """Tracebacks shown in the page (errors render with the stderr mime type, like stderr)."""
        texts = self.notebook.locator(
            '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'
        ).all_inner_texts()
        return [t for t in texts if _TRACEBACK.search(t)]

    def assert_ran_clean(self) -> None:
        """No cell shows a traceback and every non-empty code cell got an execution number."""
        assert not self.errors(), f"{self.path.name}: cell error in the page:\n" + "\n".join(
            t[-3000:] for t in self.errors())
        cells = self.notebook.locator(".jp-CodeCell")
        for i in range(cells.count()):
            source = cells.nth(i).locator(".jp-InputArea-editor").inner_text().strip()
            prompt = cells.nth(i).locator(".jp-InputPrompt").inner_text()
            assert not source or re.search(r"\[\d+\]", prompt), (
                f"{self.path.name}: code cell {i} was not run (prompt {prompt!r})")

    def save(self) -> Any:
        """File save (Ctrl+S); returns the notebook the server wrote, outputs included."""
        before = self.path.stat().st_mtime_ns
        self.notebook.click(position={"x": 5, "y": 5})
        self.page.keyboard.press("Control+s")
        poll(f"{self.path.name} to be saved",
             lambda: self.path.stat().st_mtime_ns != before and not self.page.locator(
                 ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-mod-dirty").count(), 60)
        return nbformat.read(self.path, as_version=4)

    def cell(self, index: int) -> Any:
        return self.notebook.locator(".jp-Cell").nth(index)

    def cell_source(self, index: int) -> str:
        return self.cell(index).locator(".jp-InputArea-editor").inner_text()

    def rendered_images(self, scope: Any | None = None) -> list[dict]:
        """Images in output areas: src, drawn size and a SHA-256 of their bytes (blob/data/http)."""
        root = (scope or self.notebook).element_handle()
        return self.page.evaluate("""async ([root, sel]) => {
            const out = [];
            for (const img of root.querySelectorAll('.jp-OutputArea-output ' + sel)) {
                img.scrollIntoView();
                const box = img.getBoundingClientRect();
                let src = img.src || '', digest = '';
                if (img.tagName === 'IMG') {
                    const bytes = await (await fetch(src)).arrayBuffer();
                    const hash = await crypto.subtle.digest('SHA-256', bytes);
                    digest = Array.from(new Uint8Array(hash)).map(
                        b => b.toString(16).padStart(2, '0')).join('');
                    await img.decode().catch(() => {});
                }
                out.push({src: src.slice(0, 80), sha256: digest, width: box.width,
                          height: box.height, natural: img.naturalWidth ?? box.width});
            }
            return out; }""", [root, _IMG])

    def image_pixels(self, scope: Any | None = None) -> list[Any]:
        """The images of output areas as decoded RGB arrays (H, W, 3 uint8), in page order: the
        bytes the page shows, fetched from their ``src`` in the page."""
        import base64
        import io

        import numpy as np
        from PIL import Image

        root = (scope or self.notebook).element_handle()
        encoded = self.page.evaluate("""async (root) => {
            const out = [];
            for (const img of root.querySelectorAll('.jp-OutputArea-output img')) {
                const bytes = new Uint8Array(await (await fetch(img.src)).arrayBuffer());
                let text = '';
                for (let i = 0; i < bytes.length; i += 0x8000)
                    text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
                out.push(btoa(text));
            }
            return out; }""", root)
        return [np.asarray(Image.open(io.BytesIO(base64.b64decode(b))).convert("RGB")) for b in encoded]

    def slider(self, label: str | re.Pattern) -> Any:
        """The ipywidgets slider whose description matches ``label``."""
        pattern = label if isinstance(label, re.Pattern) else re.compile(re.escape(label), re.I)
        sliders = self.page.locator(".widget-slider, .widget-hslider").filter(
            has=self.page.locator(".widget-label", has_text=pattern))  # usable in filter(has=)
        poll(f"a slider labelled {pattern.pattern!r}", lambda: sliders.count(), 60)
        return sliders.first

    def cell_of(self, inner: Any) -> Any:
        """The notebook cell that contains the element ``inner``."""
        return self.notebook.locator(".jp-Cell").filter(has=inner).last

    def step_slider(self, slider: Any) -> str:
        """Move a slider one step like a user, with the keyboard on its focused handle: right,
        or left when it already sits at its maximum. Returns the key pressed."""
        handle = slider.locator(".noUi-handle, [role=slider]").first
        handle.scroll_into_view_if_needed()
        now, top = (handle.get_attribute(a) for a in ("aria-valuenow", "aria-valuemax"))
        key = "ArrowLeft" if now is not None and now == top else "ArrowRight"
        handle.focus()
        handle.press(key)
        return key

    def readouts(self, key: str, scope: Any | None = None) -> list[float]:
        """Values the outputs show for ``key`` (e.g. 'bpp', 'PSNR'), in page order."""
        texts = (scope or self.notebook).locator(".jp-OutputArea-output").all_inner_texts()
        return readout_values("\n".join(texts), key)

    def screenshot(self, name: str, scope: Any | None = None) -> Path:
        """``test-artifacts/browser/<name>.png`` of the element ``scope`` (or of the page)."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        if scope is not None:
            scope.scroll_into_view_if_needed()
        (scope or self.page).screenshot(path=str(path))
        return path


def readout_values(text: str, key: str) -> list[float]:
    """Numbers written next to ``key`` in ``text``: 'bpp 0.31', 'bpp: 0.31', '0.31 bpp',
    'PSNR 29.1 dB', '29.1 dB PSNR'; in a tab-separated table, the column under a ``key`` header."""
    k = re.escape(key)
    near = re.compile(rf"(?<![\w-]){k}\W{{0,3}}?\s*[:=]?\s*({_NUM})|({_NUM})\s*(?:dB\s*)?{k}(?![\w-])",
                      re.I)
    found: list[float] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        cells = line.split("\t")
        for j, cell in enumerate(cells):
            found += [float(a or b) for a, b in near.findall(cell)]
            if len(cells) > 1 and re.fullmatch(rf"\s*{k}\b.*", cell, re.I) and not re.search(
                    r"\d", cell):  # a table header: the numbers in its column below
                rows = [r.split("\t") for r in lines[i + 1:]]
                found += [float(r[j]) for r in rows
                          if len(r) == len(cells) and re.fullmatch(_NUM, r[j].strip())]
    return found
