"""The install as a JupyterLab user meets it: a kernel started in notebooks/, with no PYTHONPATH
help, imports this checkout's lic_core (``./run`` installs it; CI runs in a fresh venv)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from jupyter_client.manager import KernelManager

from lic_core.workbench.notebooks import ENCRYPTION
from lic_core.paths import REPO

NOTEBOOKS = REPO / "notebooks"
PROBE = "import lic_core, pathlib; print(pathlib.Path(lic_core.__file__).resolve().parent.parent)"


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def test_kernel_started_in_notebooks_imports_this_checkout():
    """JupyterLab starts a notebook's kernel in the notebook's folder with the server's environment."""
    km = KernelManager(kernel_name="python3", transport_encryption=ENCRYPTION)
    km.start_kernel(cwd=str(NOTEBOOKS), env=_env())
    kc = km.client()
    kc.start_channels()
    out: list[str] = []
    try:
        kc.wait_for_ready(timeout=120)
        reply = kc.execute_interactive(PROBE, timeout=120, output_hook=lambda msg: out.append(
            msg["content"].get("text", "") or msg["content"].get("evalue", "")))
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert reply["content"]["status"] == "ok", f"kernel in notebooks/ cannot import lic_core: {''.join(out)}"
    assert Path("".join(out).strip()) == REPO.resolve(), f"kernel imported another lic_core: {''.join(out)}"


def test_python_outside_the_checkout_imports_this_checkout():
    """What ``./run`` checks before it decides to install: the import from a folder outside the repo."""
    res = subprocess.run([sys.executable, "-c", PROBE], cwd="/", env=_env(), capture_output=True, text=True)
    assert res.returncode == 0, f"lic_core is not installed in {sys.prefix}: {res.stderr.strip().splitlines()[-1:]}"
    assert Path(res.stdout.strip()) == REPO.resolve()
