"""A pre-registered trunk-and-branch study at micro size: point sets shared by arms (matched
controls), fine-tune seeds per trunk, curves over chosen point sets, and the trunk-level analysis
(t-interval over trunks, two-level bootstrap, decision rule, equivalence)."""
from __future__ import annotations

import json
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


def test_a_rederived_base_must_hash_as_recorded(matched):
    from lic_core.errors import LicError
    from lic_core.workbench.store import sha256

    base = matched.store_dir / f"{study.base_name(0.0067, 0)}.pt"
    recorded = matched.out_dir / study.RECORDED
    try:
        recorded.write_text(f"# recorded bases\n{sha256(base)}  {base.name}\n")
        assert study.run_branch(matched, 0, 0.0067) == base
        recorded.write_text(f"{'0' * 64}  {base.name}\n")
        with pytest.raises(LicError, match=r"^[^\n]*not the base the committed runs started from") as e:
            study.run_branch(matched, 0, 0.0067)
        assert base.name in str(e.value) and base.is_file()  # nothing deleted
        assert study.run_branch(matched, 0, 0.025).is_file()  # a base without a record is not checked
        recorded.write_text(f"{base.name}\n")
        with pytest.raises(LicError, match=r"line 1 is not '<sha256 hex>  <file name>'$"):
            study.run_branch(matched, 0, 0.0067)
    finally:
        recorded.unlink(missing_ok=True)


def test_report_gives_trunk_level_values_and_the_decision(matched):
    text, summary, _ = study.report_markdown(matched)
    assert "#### Answer (pre-registered primary analysis)" in text and "#### Secondary analyses (trunks as the unit)" in text
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



def test_from_scratch_report_names_each_runs_own_lambda(tmp_path):
    """An arm at another λ than its Adam twin says so; the arm at the trunk's λ reads as before; a
    trunk taken from the shared store has its run record in ``trunk.records``."""
    scratch = {"arms": {"a": {"loss.mode": "balanced"}, "b": {"loss.mode": "balanced", "loss.lmbda": 0.0035}},
               "seeds": [0], "steps": 2}
    trunk = {"lmbda": 0.0067, "seeds": [0], "check_every": 2, "max_steps": 2, "records": "elsewhere"}
    st = study.load_study(write_study(tmp_path, scratch=scratch, trunk=trunk), tmp_path)
    for run, psnr in ((tmp_path / "elsewhere" / "trunk-s0", 20.0), (st.out_dir / "scratch-a-s0", 14.0),
                      (st.out_dir / "scratch-b-s0", 14.0)):
        run.mkdir(parents=True)
        rows = [{"kind": "train", "step": 2, "z_D": 0.3, "a_D": 0.02},
                {"kind": "eval", "step": 2, "psnr": psnr, "bpp": 0.001, "D": 20.0}]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = study.scratch_markdown(st)
    heads = [line for line in lines if line.startswith("From scratch")]
    assert len(heads) == 2 and "| 2 | 20.00 | 0.0010 | 20.00 | 14.00 | 0.0010 | 20.00 | 0.300 | 0.020 |" in lines
    assert "same seed, init, crops, λ 0.0067, lr 0.0005)" in heads[0]
    assert "λ 0.0035 here and 0.0067 for Adam, each `L_D` at its own λ" in heads[1] and "λ 0.0067, lr" not in heads[1]

# ------------------------------------------------------------------ the answer block, synthetic files
# A protocol like the matched study's, four trunks (trunk 0 with two fine-tune seeds), whose per-image
# evaluation files are written here, with no model trained: each curve is PSNR = a + 3·log2(bpp) per
# image, and the balanced arm needs (1 + d) times the bits for the same PSNR, d set per block, so its
# BD-rate against Adam is d (in %) up to the per-image jitter.

LAMBDAS = [0.0067, 0.025]
IMAGES = [f"kodim{i:02d}.png" for i in range(1, 7)]
SYNTH = {**COMPARE, "trunk_seeds": {0: [100, 101]},
         "analysis": {"min_overlap": 0.5, "samples": 200, "margin": 0.5,
                      "comparisons": [{"test": "balanced[own+top]", "anchor": "adam[half+top]"}],
                      "equivalence": [{"test": "balanced[own+top]", "anchor": "adam[own+top]"}]}}


def _images_file(path, name, rates, psnrs):
    recs = [{"image": k, "bpp": float(r), "psnr-rgb": float(q), "encoding_time": 0.5, "decoding_time": 0.25}
            for k, r, q in zip(IMAGES, rates, psnrs)]
    path.write_text(json.dumps({"model": name, "crop": 0, "images": recs}))


def synthetic_study(root, effects, evaluate_blocks=None, bases_of=(0, 1, 2, 3), trunk3_base_step=None):
    """A study in ``root`` whose store lists trunks 0-3 and the bases of ``bases_of``; ``effects``:
    (trunk, fine-tune seed) -> BD-rate % of the balanced arm; per-image files for the bases of
    ``bases_of`` and for every arm of ``evaluate_blocks`` (default: every block of ``effects``)."""
    path = write_study(root, SYNTH)
    raw = yaml.safe_load(path.read_text())
    raw["trunk"]["seeds"] = [0, 1, 2, 3]
    path.write_text(yaml.safe_dump(raw))
    st = study.load_study(path, root)
    st.store_dir.mkdir(parents=True, exist_ok=True)
    ev = {"step": 2, "psnr": 27.0, "D": 1.05, "bpp": 0.3}
    index = {f"trunk-s{s}.pt": {"stage": "trunk", "step": 2, "gate_met": False, "eval": ev} for s in range(4)}
    index.update({f"{study.base_name(lam, s)}.pt": {"stage": "base", "eval": ev} for s in bases_of for lam in LAMBDAS})
    (st.store_dir / "index.json").write_text(json.dumps(index))
    out = st.out_dir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    scale = np.array([1 + 0.05 * i for i in range(len(IMAGES))])
    offset = np.array([0.3 * i for i in range(len(IMAGES))])
    jitter = np.array([0.002, -0.002, 0.001, -0.001, 0.0015, -0.0015])

    def rate(lam):
        return 0.3 * (lam / 0.0067) ** 0.4

    def write_point(ckpt, r, d=0.0):
        name = study.point_name(ckpt)
        base = r * scale
        _images_file(out / f"{name}.images.json", name, base * (1 + d / 100 + (jitter if d else 0)),
                     28 + offset + 3 * np.log2(base))

    for s in bases_of:
        for lam in LAMBDAS:
            write_point(st.store_dir / f"{study.base_name(lam, s)}.pt", rate(lam) * 1.02)
        (out / f"base-s{s}.json").write_text("{}")
    if trunk3_base_step is not None:
        run = st.out_dir / study.base_name(LAMBDAS[0], 3)
        run.mkdir(parents=True)
        (run / "metrics.jsonl").write_text(
            json.dumps({"kind": "train", "step": 1, "step_time": 0.4, "wall": 1.0e9}) + "\n"
            + json.dumps({"kind": "eval", "step": trunk3_base_step, "psnr": 27.0, "D": 1.0, "bpp": 0.3}) + "\n")
    for s, f in (effects if evaluate_blocks is None else evaluate_blocks):
        for lam in study.arm_lambdas(st, "adam"):
            write_point(study.compare_checkpoint(st, "adam", s, lam, f), rate(lam))
        for lam in study.arm_lambdas(st, "balanced"):
            write_point(study.compare_checkpoint(st, "balanced", s, lam, f), rate(lam) * 0.85, effects[(s, f)])
    return st


def _section(text, title):
    part = text.split(title, 1)[1]
    return part.split("\n#### ", 1)[0]


BLOCKS = [(0, 100), (1, 100), (2, 100), (3, 100), (0, 101)]


def test_answer_block_when_the_interval_excludes_zero(tmp_path):
    effects = dict(zip(BLOCKS, [-2.0, -1.5, -2.5, -1.8, -2.2]))
    st = synthetic_study(tmp_path, effects)
    results = study.report(st, tmp_path / "RESULTS.md", tmp_path / "figures")
    text = results.read_text()
    assert text.index("#### Answer") < text.index("#### Secondary analyses") < text.index("#### Compute") \
        < text.index("#### Details")
    answer = _section(text, "#### Answer (pre-registered primary analysis)")
    row = next(line for line in answer.splitlines() if line.startswith("| `balanced[own+top]` vs `adam[half+top]`"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    trunk_means = [np.mean([-2.0, -2.2]), -1.5, -2.5, -1.8]  # trunk 0: its two blocks averaged
    ci = mean_ci(trunk_means)
    assert float(cells[1]) == pytest.approx(ci.mean, abs=0.02)
    assert cells[2] == f"[{ci.low:+.2f}, {ci.high:+.2f}]" or abs(float(cells[2][1:].split(",")[0]) - ci.low) < 0.02
    lo, hi = (float(x) for x in cells[3].strip("[]").split(","))
    assert lo < hi < 0 and cells[4] == "4/4" and cells[5] == "helps"
    assert "Balanced R-D **helps** at this scale" in answer
    assert "primary_bd_rate_per_trunk.png" in answer and "runs/eval/balanced-l*-step_*.images.json" in answer
    for ext in ("pdf", "png"):
        assert (tmp_path / "figures" / f"primary_bd_rate_per_trunk.{ext}").is_file()
    assert "**partial data**" not in text and "every block evaluated" in text
    secondary = _section(text, "#### Secondary analyses (trunks as the unit)")
    assert "| balanced[own+top] vs adam[own+top] | pchip |" in secondary and "| cubic |" in secondary
    assert "**Answer**: -1.98 %" in answer
    assert "Equivalence, `balanced[own+top]` against `adam[own+top]`" in secondary
    assert "Point-wise gaps" in secondary
    compute = _section(text, "#### Compute")
    assert "| evaluations, comparison runs | 40 points × 6 images | 0.05 |" in compute  # 40 × 6 × 0.75 s


def test_answer_block_when_the_interval_contains_zero(tmp_path):
    effects = dict(zip(BLOCKS, [-1.0, 1.0, 0.5, -0.8, -1.4]))
    st = synthetic_study(tmp_path, effects)
    text, summary, _ = study.report_markdown(st)
    answer = _section(text, "#### Answer (pre-registered primary analysis)")
    assert "| 4/4 | no effect detected |" in answer and "**no effect detected** (the interval contains 0)" in answer
    primary = study.primary_row(st, summary)
    assert primary["t_low"] < 0 < primary["t_high"] and primary["n"] == 4
    assert primary["trunks"][0] == pytest.approx(-1.2, abs=0.02)


def test_partial_data_says_what_is_pending_and_gives_no_answer(tmp_path):
    # trunks 0-3 done, bases of trunks 0-2 done and evaluated, trunk 3's first base part-way, no comparison run
    st = synthetic_study(tmp_path, {}, bases_of=(0, 1, 2), trunk3_base_step=1)
    text, summary, _ = study.report_markdown(st)
    assert summary == [] and "**partial data**: 0 of 5 blocks evaluated" in text
    answer = _section(text, "#### Answer (pre-registered primary analysis)")
    assert "**Pending.**" in answer and "No answer is given" in answer
    assert "| trunks | 4/4 | - |" in answer
    assert "| bases | 6/8 | trunk 3 (λ 0.0067, 0.025) |" in answer
    assert "| comparison runs, block s0-f100 | 0/8 | arms adam 0/5, balanced 0/3 |" in answer
    for word in ("helps", "hurts", "no effect detected", "t-interval ["):
        assert word not in text
    assert "Pending: no block has every arm evaluated yet." in text


def test_interim_blocks_give_interim_values_but_no_answer(tmp_path):
    effects = dict(zip(BLOCKS, [-2.0, -1.5, -2.5, -1.8, -2.2]))
    st = synthetic_study(tmp_path, effects, evaluate_blocks=BLOCKS[:4])
    text, _, _ = study.report_markdown(st)
    answer = _section(text, "#### Answer (pre-registered primary analysis)")
    assert "**Pending.**" in answer and "4 of 5 blocks are" in answer and "helps" not in answer
    assert "| comparison runs, block s0-f101 | 0/8 |" in answer
    assert "#### Interim values over 4 of 5 blocks" in text
    for word in ("helps", "hurts", "no effect detected", "the same R-D"):
        assert word not in text
    assert "| (interim) |" in text and "no decision" in text
