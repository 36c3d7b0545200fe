"""lic_core: HPCM (ICCV 2025) with Balanced Rate-Distortion Optimization (CVPR 2025).

The public API, imported lazily so ``import lic_core`` stays cheap (torch loads on first use)::

    from lic_core import hpcm, compress, decompress, train, evaluate, bd_table
"""
from __future__ import annotations

import importlib
import warnings
from typing import Any

# compressai 1.2.8 calls torch.jit.script at import; torch 2.14 deprecates it. Not ours to fix.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

__version__ = "0.1.0"

_API: dict[str, str] = {
    "hpcm": "lic_core.models.hpcm",
    "HPCM": "lic_core.models.hpcm",
    "HPCMConfig": "lic_core.models.hpcm",
    "save_checkpoint": "lic_core.models.hpcm",
    "load_checkpoint": "lic_core.models.loading",
    "encode": "lic_core.coding.codec",
    "compress": "lic_core.coding.codec",
    "decompress": "lic_core.coding.codec",
    "CautiousAdam": "lic_core.optim",
    "TaskWeighting": "lic_core.optim",
    "QPWeighting": "lic_core.optim",
    "TrainConfig": "lic_core.config",
    "train": "lic_core.training.engine",  # the function; the package is lic_core.training
    "load_history": "lic_core.training.logging",
    "evaluate": "lic_core.analysis.evaluation",  # the function; the module is lic_core.analysis.evaluation
    "bd_table": "lic_core.analysis.bdrate",
    "run_sweep": "lic_core.workbench.sweep",
    "sweep_results": "lic_core.workbench.sweep",
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'lic_core' has no attribute {name!r}")
    return getattr(importlib.import_module(_API[name]), name)
