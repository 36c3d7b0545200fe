"""Run logging: one JSON object per line in ``<run>/metrics.jsonl`` (what the notebooks read), the
same records to wandb (offline by default, its files inside the run folder), a tqdm bar."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from lic_core.atomic import write_file

METRICS_FILE = "metrics.jsonl"


def _plain(v: Any) -> Any:
    """JSON-safe value: tensors to numbers, non-finite floats to strings JSON can hold."""
    if hasattr(v, "tolist"):
        v = v.tolist()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # "nan", "inf", "-inf"
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def load_history(run_dir: str | Path, kind: str | None = None) -> list[dict[str, Any]]:
    """Records of ``<run_dir>/metrics.jsonl`` (``kind``: "train", "eval", "skip" or None for all).

    Non-finite values come back as floats. ``pandas.DataFrame(load_history(run))`` is a table.
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        rec = {k: float(v) if v in ("nan", "inf", "-inf") else v for k, v in rec.items()}
        if kind is None or rec.get("kind") == kind:
            rows.append(rec)
    return rows


def truncate_history(run_dir: str | Path, step: int) -> None:
    """Drop records after ``step`` (written by a run that died after its last checkpoint)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
    write_file(path, "".join(ln + "\n" for ln in keep))


class RunLogger:
    """JSONL + wandb + progress bar of one run; a no-op on ranks other than 0."""

    def __init__(self, run_dir: Path, cfg: Any, total: int, start: int, active: bool = True):
        self.active = active
        self.bar = self.fh = self.wandb = None
        if not active:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        self.fh = open(run_dir / METRICS_FILE, "a", buffering=1)
        self.bar = tqdm(total=total, initial=start, desc=run_dir.name, dynamic_ncols=True,
                        disable=not cfg.run.progress)
        mode = os.environ.get("WANDB_MODE", cfg.run.wandb_mode)
        if mode != "disabled":
            import wandb

            self.wandb = wandb.init(project=cfg.run.wandb_project, name=cfg.run.wandb_name or run_dir.name,
                                    dir=str(run_dir), mode=mode, config=cfg.to_dict(), resume="allow",
                                    id=run_dir.name.replace("/", "-"), reinit=True)

    def log(self, record: dict[str, Any]) -> None:
        if not self.active:
            return
        rec = {k: _plain(v) for k, v in record.items()}
        self.fh.write(json.dumps(rec) + "\n")
        if self.wandb is not None:
            kind = rec.get("kind", "train")
            self.wandb.log({f"{kind}/{k}": v for k, v in record.items()
                            if k not in ("kind", "step") and isinstance(v, (int, float))},
                           step=int(rec["step"]))

    def advance(self, n: int, postfix: dict[str, float] | None = None) -> None:
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.fh is not None:
            self.fh.close()
        if self.wandb is not None:
            self.wandb.finish()
        self.bar = self.fh = self.wandb = None
