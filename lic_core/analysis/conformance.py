"""``python -m lic_core conformance``: how far this implementation is from the reference data, printed.

* HPCM Base / Large against the authors' function, and the generalized-Gaussian likelihoods alone
  (:mod:`lic_core.models.conformance`).
* Solution 1 and its Adam baseline on the toy problem of ``reference/balanced_toy``: the largest
  relative difference over every column of the trajectory, and of the final parameters.

The tests (``tests/test_conformance.py``, ``test_entropy.py``, ``test_balanced_toy.py``) assert the
tolerances on the same computations; this command prints the numbers the README quotes.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from lic_core.errors import LicError, command
from lic_core.models.conformance import entropy_rows, model_rows
from lic_core.paths import reference_root


def toy_rows(reference: Path | None = None) -> list[dict[str, Any]]:
    from lic_core.optim import toy

    folder = (reference or reference_root()) / "balanced_toy"
    consts = json.loads((folder / "constants.json").read_text())
    rows = []
    for mode, csv in (("balanced", "trajectory.csv"), ("adam", "trajectory_adam.csv")):
        got, want = toy.run(toy.ToyConfig(mode=mode)), toy.read_csv(folder / csv)
        rel = max(abs(g[c] - v) / max(abs(v), 1e-300) for g, w in zip(got, want) for c, v in w.items() if v)
        final = [float(v) for v in consts[f"theta_final_{mode}"]]
        rel_theta = max(abs(g - v) / abs(v) for g, v in zip(got[-1]["theta"], final))
        rows += [{"check": f"toy {mode}: trajectory, every column", "difference": rel, "tolerance": 1e-6,
                  "unit": "max rel"},
                 {"check": f"toy {mode}: final parameters", "difference": rel_theta, "tolerance": 1e-6,
                  "unit": "max rel"}]
    return rows


PARTS = {"base": lambda: model_rows("base"), "large": lambda: model_rows("large"),
         "entropy": entropy_rows, "toy": toy_rows}


@command("conformance")
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lic_core conformance", description=__doc__.split("\n")[0])
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    ap.add_argument("--json", type=Path, help="also write the rows to this file")
    a = ap.parse_args(argv)
    parts = [p for p in a.parts.split(",") if p]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise LicError(f"--parts: unknown {unknown[0]!r} (choose from {', '.join(PARTS)})")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = [r for p in parts for r in PARTS[p]()]
    for r in rows:
        ok = "ok" if r["difference"] <= r["tolerance"] else "FAIL"
        print(f"{r['check']:<44} {r['unit']:<8} {r['difference']:<10.3g} (tolerance {r['tolerance']:g})  {ok}")
    if a.json:
        from lic_core.atomic import write_file

        write_file(a.json, json.dumps(rows, indent=1) + "\n")
    return 0 if all(r["difference"] <= r["tolerance"] for r in rows) else 1
