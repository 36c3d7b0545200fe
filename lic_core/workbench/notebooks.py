"""Executing a notebook headless, as the sweeps, the demo and the tests do (papermill).

Kernels are started with jupyter_client's CurveZMQ transport encryption where the installed ZeroMQ
supports it (``transport_encryption="auto"``; plain TCP otherwise), so the traffic on localhost is
encrypted and ipykernel has no reason to warn, at every kernel start, that it is not. The kernel's
idle OpenMP threads sleep and it uses the cores it may run on (:mod:`lic_core.threads`). The kernel's
own log is kept to critical messages: jupyter_client interrupts a kernel before shutting it down, and
ipykernel logs that interrupt as an error when it lands in a message handler. A failing cell still
fails the run (papermill raises with the cell's traceback).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

ENCRYPTION = "auto"  # jupyter_client's KernelManager.transport_encryption


def execute(src: str | Path, dst: str | Path, parameters: dict[str, Any] | None = None,
            cwd: str | Path | None = None, kernel: str = "python3", **kw: Any) -> Any:
    """``papermill.execute_notebook(src, dst, parameters)`` in ``cwd`` (default: the notebook's
    folder, as JupyterLab starts kernels), without a progress bar; extra keywords go to papermill."""
    import papermill
    from traitlets.config import Config

    from lic_core.threads import for_children

    config = Config()
    config.KernelManager.transport_encryption = ENCRYPTION
    with for_children():  # the kernel inherits it before it imports torch
        return papermill.execute_notebook(str(src), str(dst), parameters=parameters or {}, kernel_name=kernel,
                                          cwd=str(cwd or Path(src).parent), progress_bar=False,
                                          config=config, extra_arguments=["--IPKernelApp.log_level=CRITICAL"],
                                          **kw)
