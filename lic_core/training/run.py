"""A training run on disk, read back through its typed config.

A run folder, as :class:`~lic_core.training.engine.Trainer` leaves it, holds ``config.yaml`` (its
:class:`~lic_core.config.TrainConfig`), ``metrics.jsonl`` (its log records) and ``checkpoints/``.
:func:`load_run` reads one into a :class:`Run`; λ, mode, seed, steps and every other setting come
from the config, never from the folder's name. :func:`find_runs` lists the runs under a folder.

λ is a float: to match runs by λ, compare :func:`lmbda_key` strings (or the runs themselves), not
floats read from different texts.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lic_core.config import TrainConfig, from_dict, read_yaml
from lic_core.errors import ConfigError
from lic_core.training import checkpoint as ckpt
from lic_core.training.logging import METRICS_FILE, load_history

__all__ = ["CONFIG_FILE", "CKPT_DIR", "Run", "load_run", "find_runs", "lmbda_key"]

CONFIG_FILE = "config.yaml"  # the run's TrainConfig, written by the engine
CKPT_DIR = "checkpoints"  # step_<n>.pt, best.pt


def lmbda_key(lmbda: float) -> str:
    """A λ as a key that equal λ values share whatever text they were read from (``"0.013"``):
    six significant digits, as ``f"{λ:g}"`` and run names write it."""
    return f"{float(lmbda):g}"


@dataclass(frozen=True)
class Run:
    """One training run folder and its typed config (:func:`load_run`)."""

    run_dir: Path
    config: TrainConfig

    @property
    def lmbda(self) -> float:
        return self.config.loss.lmbda

    @property
    def key(self) -> str:
        """:func:`lmbda_key` of this run's λ."""
        return lmbda_key(self.lmbda)

    @property
    def mode(self) -> str:
        return self.config.loss.mode

    @property
    def metric(self) -> str:
        return self.config.loss.metric

    @property
    def seed(self) -> int:
        return self.config.run.seed

    @property
    def steps(self) -> int:
        return self.config.run.steps

    @property
    def model(self) -> str:
        return self.config.model.name

    @property
    def init(self) -> str:
        """The checkpoint the run was fine-tuned from (``finetune.init``; empty: from scratch)."""
        return self.config.finetune.init

    @property
    def stage(self) -> str:
        """``finetune`` when the run started from a checkpoint, else ``train``."""
        return "finetune" if self.init else "train"

    def settings(self) -> dict[str, Any]:
        """``{"mode", "lmbda", "seed"}``: what names a run's point on an R-D curve."""
        return {"mode": self.mode, "lmbda": self.lmbda, "seed": self.seed}

    # -------------------------------------------------------------------------------- files
    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / CKPT_DIR

    @property
    def checkpoints(self) -> list[Path]:
        """The step checkpoints on disk, oldest first."""
        return [p for _, p in ckpt.step_checkpoints(self.checkpoint_dir)]

    @property
    def latest(self) -> Path | None:
        """The newest step checkpoint on disk (None when there is none)."""
        return ckpt.latest(self.checkpoint_dir)

    @property
    def final(self) -> Path:
        """Where the checkpoint of the last step (``run.steps``) is, or was when its weights are gone."""
        return ckpt.step_file(self.checkpoint_dir, self.steps)

    @property
    def logged(self) -> bool:
        """Whether the run has written log records (``metrics.jsonl``)."""
        return (self.run_dir / METRICS_FILE).is_file()

    def history(self, kind: str | None = None) -> list[dict[str, Any]]:
        """The run's log records (:func:`~lic_core.training.logging.load_history`)."""
        return load_history(self.run_dir, kind)


def load_run(run_dir: str | Path) -> Run:
    """The run in ``run_dir`` from its ``config.yaml``; a missing file, or one that is not a
    training config (an unknown key, a wrong type), is a ConfigError naming it."""
    run_dir = Path(run_dir)
    data = read_yaml(run_dir / CONFIG_FILE, "run config")
    if not all(isinstance(data.get(k), dict) for k in ("loss", "run")):
        raise ConfigError(f"{run_dir / CONFIG_FILE}: not a training run config (no loss and run sections)")
    try:
        return Run(run_dir, from_dict(data))
    except ConfigError as err:
        raise ConfigError(f"{run_dir / CONFIG_FILE}: not a training run config: {err}") from err


def find_runs(root: str | Path, logged: bool = False) -> list[Run]:
    """Every run under ``root`` (recursive, sorted by path), read by :func:`load_run`; a
    ``config.yaml`` that is no training config (e.g. wandb's) is skipped. ``logged``: only runs
    that have written log records."""
    runs = []
    for path in sorted(Path(root).rglob(CONFIG_FILE)):
        try:
            run = load_run(path.parent)
        except ConfigError:
            continue
        if not logged or run.logged:
            runs.append(run)
    return runs
