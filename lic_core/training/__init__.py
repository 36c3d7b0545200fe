"""Training engine: ``train(cfg) -> RunResult`` for notebooks and sweeps, ``load_run(run_dir)`` to
read a finished run back (its typed config, checkpoints and metrics), ``load_history(run_dir)`` for
its metrics alone, ``python -m lic_core train --config FILE [--set k=v ...]`` on the command line
(also under ``torchrun``). Names are imported on first use, so that ``lic_core.config`` can read
the registry of training modes (``training.objectives``) without loading the engine."""
from __future__ import annotations

import importlib
from typing import Any

_API = {"train": "engine", "RunResult": "engine", "Trainer": "engine", "load_history": "logging",
        "Run": "run", "load_run": "run", "find_runs": "run"}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'lic_core.training' has no attribute {name!r}")
    return getattr(importlib.import_module(f"lic_core.training.{_API[name]}"), name)
