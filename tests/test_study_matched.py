"""A pre-registered trunk-and-branch study at micro size: point sets shared by arms (matched
controls), fine-tune seeds per trunk, curves over chosen point sets, and the trunk-level analysis
(t-interval over trunks, two-level bootstrap, decision rule, equivalence)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import yaml
from PIL import Image

from lic_core.analysis.stats import mean_ci, two_level_bootstrap
from lic_core.config import PRESETS
from lic_core.errors import ConfigError
from studies import trunk_branch as study

COMPARE = {
    "seeds": [100], "trunk_seeds": {0: [100, 101]}, "steps": 2,
    "arms": {"adam": {"loss.mode": "standard", "optim.optimizer": "adam"},
             "balanced": {"loss.mode": "balanced"}},
    "point_sets": {"own": [[0.0067, 0.0067], [0.025, 0.025]], "half": [[0.0067, 0.00335], [0.025, 0.0125]],
                   "top": [[0.025, 0.05]]},
    "arm_points": {"adam": ["own", "half", "top"], "balanced": ["own", "top"]},
    "analysis": {"min_overlap": 0.0, "samples": 20,
                 "comparisons": [{"test": "balanced[own+top]", "anchor": "adam[half+top]"}],
                 "equivalence": [{"test": "balanced[own+top]", "anchor": "adam[own+top]"}]},
}


def write_study(root, compare=COMPARE, **extra):
    raw = {"name": "matched", "out": "runs", "store": "store", "batch": 2, "patch": 64,
           "train_dir": extra.pop("train_dir", ""), "test_dir": "test", "test_patch": 64, "jobs": 2,
           "overrides": {"model.overrides": PRESETS["micro"]["model.overrides"]},
           "trunk": {"lmbda": 0.0067, "seeds": [0, 1], "gate_ld": 1e-6, "check_every": 2, "max_steps": 2},
           "branch": {"lambdas": [0.0067, 0.025], "steps": 2}, "compare": compare, **extra}
    (root / "study.yaml").write_text(yaml.safe_dump(raw))
    return root / "study.yaml"


@pytest.fixture(scope="module")
def matched(tmp_path_factory, kodak_dir, wikiphotos_dir) -> study.Study:
    root = tmp_path_factory.mktemp("matched")
    (root / "test").mkdir()
    for p in sorted(kodak_dir.glob("*.png"))[:2]:
        Image.open(p).convert("RGB").crop((0, 0, 64, 64)).save(root / "test" / p.name)
    st = study.load_study(write_study(root, train_dir=str(wikiphotos_dir)), root)
    states = study.run_stage(st, "evaluate")
    assert set(states.values()) == {"done"}, states
    return st


def test_arms_share_points_and_trunks_have_their_own_fine_tune_seeds(matched):
    assert study.blocks(matched) == [(0, 100), (1, 100), (0, 101)]
    assert study.arm_lambdas(matched, "adam") == [0.0067, 0.025, 0.00335, 0.0125, 0.05]
    assert study.curve_points(matched, "balanced[own+top]") == ("balanced", [0.0067, 0.025, 0.05])
    assert study.base_lmbda(matched, 0.0125) == 0.025 and study.base_lmbda(matched, 0.00335) == 0.0067
    runs = {t.name for t in study.tasks(matched, "compare") if t.fn is study.run_compare}
    assert len(runs) == 3 * (5 + 3) and "adam-l0.00335-s1-f100" in runs and "balanced-l0.05-s0-f101" in runs
    assert not any(n.endswith("-s1-f101") for n in runs)  # trunk 1 has one fine-tune seed
    # a matched point starts from its base, and the curve reads its own evaluations
    cfg = yaml.safe_load((matched.out_dir / "adam-l0.0125-s0-f100" / "config.yaml").read_text())
    assert cfg["finetune"]["init"].endswith("base-l0.025-s0.pt") and cfg["loss"]["lmbda"] == 0.0125
    assert study.load_image_curve(matched, "adam[half+top]", 0, 101).bpp.shape == (3, 2)


def test_report_gives_trunk_level_values_and_the_decision(matched):
    text, summary, _ = study.report_markdown(matched)
    assert "#### Pre-registered analysis (trunks as the unit)" in text
    assert "undefined: " in text and "the rule needs at least 3" in text  # 2 trunks
    primary = next(r for r in summary if r["method"] == "pchip" and r["anchor"] == "adam[half+top]")
    rows = [r for r in study.bd_rows(matched) if r["method"] == "pchip" and r["anchor"] == "adam[half+top]"]
    by_trunk = {s: [r["bd_rate"] for r in rows if r["seed"] == s and math.isfinite(r["bd_rate"])] for s in (0, 1)}
    expect = {s: float(np.mean(v)) for s, v in by_trunk.items() if v}
    assert primary["trunks"] == pytest.approx(expect) and primary["n"] == len(expect)
    assert "Equivalence, `balanced[own+top]` against `adam[own+top]`" in text
    assert "| balanced[own+top] vs adam[half+top] | pchip | " in text  # the per-block table


def test_decision_rule_reads_the_t_interval():
    base = {"n": 4, "mean": -1.0, "boot_low": float("nan"), "boot_high": float("nan")}
    assert "**helps**" in study.decision({**base, "t_low": -2.0, "t_high": -0.1})
    assert "**hurts**" in study.decision({**base, "mean": 1.0, "t_low": 0.1, "t_high": 2.0})
    assert "**no effect detected**" in study.decision({**base, "t_low": -2.0, "t_high": 0.5})
    split = study.decision({**base, "t_low": -2.0, "t_high": -0.1, "boot_low": -2.0, "boot_high": 0.3})
    assert "another side of 0" in split
    assert study.decision({**base, "n": 2}).startswith("undefined")
    assert study.equivalent({"n": 4, "t_low": -0.3, "t_high": 0.4}, 0.5).startswith("the same R-D")
    assert study.equivalent({"n": 4, "t_low": -0.6, "t_high": 0.4}, 0.5).startswith("not shown")


def test_trunk_means_average_blocks_within_a_trunk_first():
    rows = [{"seed": 0, "bd_rate": -1.0}, {"seed": 0, "bd_rate": -3.0}, {"seed": 1, "bd_rate": 1.0},
            {"seed": 2, "bd_rate": float("nan")}]
    assert study.trunk_means(rows) == {0: -2.0, 1: 1.0}
    ci = mean_ci(list(study.trunk_means(rows).values()))
    assert ci.n == 2 and ci.mean == pytest.approx(-0.5)


def test_two_level_bootstrap_resamples_units_and_images():
    values = np.array([[1.0, 3.0], [5.0, 7.0], [9.0, 11.0]])  # unit x image
    seen_units, seen_images = set(), set()

    def stat(units: np.ndarray, idx: np.ndarray) -> float:
        seen_units.update(units.tolist())
        seen_images.update(idx.tolist())
        return float(values[units][:, idx].mean())

    b = two_level_bootstrap(3, 2, stat, samples=400, seed=1)
    assert b["samples"] == 400 and b["dropped"] == 0
    assert seen_units == {0, 1, 2} and seen_images == {0, 1}
    assert 1.0 <= b["low"] < values.mean() < b["high"] <= 11.0


@pytest.mark.parametrize("change, needle", [
    ({"arm_points": {"adam": ["nope"]}}, "compare.arm_points.adam"),
    ({"point_sets": {**COMPARE["point_sets"], "own": [[0.004, 0.004]]}}, "compare.point_sets.own"),
    ({"point_sets": {"a": [[0.0067, 0.01]], "b": [[0.025, 0.01]]}, "arm_points": {}}, "one λ comes from one base"),
    ({"trunk_seeds": {7: [100]}}, "compare.trunk_seeds"),
    ({"analysis": {"comparisons": [{"test": "balanced[half]", "anchor": "adam"}]}}, "balanced[half]"),
    ({"analysis": {"comparisons": [{"test": "sgd", "anchor": "adam"}]}}, "'sgd' is not an arm"),
])
def test_bad_protocols_are_one_line_errors(tmp_path, change, needle):
    with pytest.raises(ConfigError, match=r"^[^\n]*$") as e:
        study.load_study(write_study(tmp_path, {**COMPARE, **change}), tmp_path)
    assert needle in str(e.value)


def test_exploratory_arms_run_last_in_their_blocks_and_scratch_seeds_per_arm(tmp_path):
    compare = {**COMPARE, "arms": {**COMPARE["arms"], "grid": {"loss.mode": "balanced", "balance.gamma": 0.01}},
               "arm_points": {**COMPARE["arm_points"], "grid": ["own", "top"]},
               "arm_blocks": {"grid": [[0, 101]]},
               "analysis": {**COMPARE["analysis"], "exploratory": [{"test": "grid[own+top]", "anchor": "adam[half+top]"}]}}
    scratch = {"arms": {"a": {"loss.mode": "balanced"}, "b": {"loss.mode": "balanced", "loss.lmbda": 0.025}},
               "seeds": [1], "arm_seeds": {"b": [0]}, "steps": 4}
    st = study.load_study(write_study(tmp_path, compare, scratch=scratch), tmp_path)
    names = [t.name for t in study.tasks(st, "scratch")]
    grid = [n for n in names if n.startswith("grid-")]
    assert grid == ["grid-l0.0067-s0-f101", "grid-l0.025-s0-f101", "grid-l0.05-s0-f101"]
    assert names.index(grid[0]) > max(i for i, n in enumerate(names) if n.startswith(("adam-", "balanced-")))
    assert study.main_arms(st) == ["adam", "balanced"]
    assert [n for n in names if n.startswith("scratch-")] == ["scratch-a-s1", "scratch-b-s0"]
    with pytest.raises(ConfigError, match="compare.arm_blocks.grid"):
        study.load_study(write_study(tmp_path, {**compare, "arm_blocks": {"grid": [[1, 101]]}}), tmp_path)
