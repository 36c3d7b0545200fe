"""Training engine: ``train(cfg) -> RunResult`` for notebooks and sweeps, ``load_history(run_dir)``
to read a run's metrics, ``python -m lic_core train --config FILE [--set k=v ...]`` on the command
line (also under ``torchrun``)."""
from lic_core.training.engine import RunResult, Trainer, train
from lic_core.training.logging import load_history

__all__ = ["train", "RunResult", "Trainer", "load_history"]
