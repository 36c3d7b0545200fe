"""The trunk-and-branch study end to end at micro size: trunks gated on a measured L_D,
branches, every comparison arm, real-bitstream evaluation, strict BD-rates with reasons; the
weights-only store and its SHA-256 manifest; resume of a finished stage."""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import skip_or_fail
from PIL import Image

from lic_core.workbench import store
from studies import trunk_branch as study
from lic_core.analysis.bdrate import Curve, ImageCurve, bd_rate_or_nan, paired_bootstrap
from lic_core.config import PRESETS
from lic_core.errors import ConfigError
from lic_core.models.loading import load_checkpoint


@pytest.fixture(scope="module")
def micro(tmp_path_factory, kodak_dir, wikiphotos_dir) -> study.Study:
    root = tmp_path_factory.mktemp("study")
    test = root / "test"
    test.mkdir()
    for p in sorted(kodak_dir.glob("*.png"))[:2]:  # two small test images keep evaluation quick
        Image.open(p).convert("RGB").crop((0, 0, 64, 64)).save(test / p.name)
    raw = {"name": "micro", "out": "runs", "store": "store", "batch": 2, "patch": 64,
           "train_dir": str(wikiphotos_dir), "test_dir": "test", "test_patch": 64, "jobs": 2,
           "overrides": {"model.overrides": PRESETS["micro"]["model.overrides"]},
           "trunk": {"lmbda": 0.0067, "seeds": [0], "gate_ld": 1e-6, "check_every": 2, "max_steps": 4},
           "branch": {"lambdas": [0.0067, 0.025], "steps": 2},
           "compare": {"seeds": [100], "steps": 2,
                       "arms": {"adam": {"loss.mode": "standard", "optim.optimizer": "adam"},
                                "balanced": {"loss.mode": "balanced"}},
                       "extend": {"arms": ["balanced"], "lambdas": [0.05], "base": 0.025}},
           "scratch": {"arms": {"balanced": {"loss.mode": "balanced"}}, "seeds": [0], "steps": 4}}
    (root / "study.yaml").write_text(yaml.safe_dump(raw))
    st = study.load_study(root / "study.yaml", root)
    states = study.run_stage(st, "scratch")
    assert set(states.values()) == {"done"}, states
    return st


def test_trunk_stops_at_max_steps_when_the_gate_is_not_met(micro):
    meta = json.loads((micro.store_dir / store.INDEX).read_text())["trunk-s0.pt"]
    assert meta["step"] == 4 and meta["gate_met"] is False and meta["eval"]["step"] == 4
    assert meta["stopped"] == "max_steps reached"
    evals = [json.loads(line) for line in (micro.out_dir / "trunk-s0" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in evals if r["kind"] == "eval"] == [2, 4]  # measured every check_every steps
    runs = json.loads((micro.out_dir / "trunk-s0" / "study.json").read_text())["sessions"]
    assert [r["steps"] for r in runs] == [2, 4] and all(len(r["commit"]) >= 40 for r in runs)


def test_store_is_weights_only_float16_with_a_manifest(micro):
    files = sorted(p.name for p in micro.store_dir.glob("*.pt"))
    assert files == ["base-l0.0067-s0.pt", "base-l0.025-s0.pt", "trunk-s0.pt"]
    assert store.verify_store(micro.store_dir) == {}
    obj = torch.load(micro.store_dir / "base-l0.025-s0.pt", weights_only=True)
    assert set(obj) == {"config", "state_dict", "meta"}
    sd = obj["state_dict"]
    assert sd["gg.likelihood_lower_bound.bound"].dtype == torch.float32  # 1e-9 would be 0 in float16
    assert sd["gg.likelihood_lower_bound.bound"].item() == pytest.approx(1e-9)
    assert sum(v.dtype == torch.float16 for v in sd.values()) > 0.9 * len(sd)
    model = load_checkpoint(micro.store_dir / "base-l0.025-s0.pt")  # loads as float32
    assert next(model.parameters()).dtype == torch.float32
    trunk = micro.store_dir / "trunk-s0.pt"
    good = trunk.read_bytes()
    trunk.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    try:
        assert store.verify_store(micro.store_dir) == {"trunk-s0.pt": "SHA-256 differs from the manifest"}
    finally:
        trunk.write_bytes(good)
    assert store.verify_store(micro.store_dir) == {}


def test_no_step_is_skipped_after_a_store_round_trip(micro):
    """Branches and comparisons start from the float16 store: their losses must stay finite."""
    for run in micro.out_dir.glob("*/metrics.jsonl"):
        assert '"kind": "skip"' not in run.read_text(), run


def test_branches_start_from_the_trunk_and_comparisons_from_the_base(micro):
    cfg = yaml.safe_load((micro.out_dir / "base-l0.025-s0" / "config.yaml").read_text())
    assert cfg["finetune"]["init"].endswith("trunk-s0.pt") and cfg["loss"]["lmbda"] == 0.025
    for arm, mode, lam in (("adam", "standard", 0.025), ("balanced", "balanced", 0.025), ("balanced", "balanced", 0.05)):
        cfg = yaml.safe_load((micro.out_dir / f"{arm}-l{lam:g}-s0-f100" / "config.yaml").read_text())
        assert cfg["finetune"]["init"].endswith("base-l0.025-s0.pt")  # the extended λ 0.05 too
        assert (cfg["loss"]["mode"], cfg["loss"]["lmbda"], cfg["run"]["seed"], cfg["run"]["steps"]) == (mode, lam, 100, 2)
    assert not (micro.out_dir / "adam-l0.05-s0-f100").exists()  # only the extended arm


def test_extended_arm_has_the_extra_points_on_its_curve(micro):
    """Quality-matched sampling: the extended arm's curve has the grid's λ and the extra ones, each
    a real-bitstream point; the anchor keeps the grid; the gaps table counts the test arm's points."""
    assert study.arm_lambdas(micro, "balanced") == [0.0067, 0.025, 0.05] and study.arm_lambdas(micro, "adam") == [0.0067, 0.025]
    curve = study.load_image_curve(micro, "balanced", 0, 100)
    assert curve.bpp.shape == (3, 2) and study.load_image_curve(micro, "adam", 0, 100).bpp.shape == (2, 2)
    summary = json.loads((micro.out_dir / "eval" / "balanced-s0-f100.json").read_text())["results"]
    assert len(summary["bpp"]) == 3
    text, _, _ = study.report_markdown(micro, samples=10)
    assert "['balanced'] also at λ [0.05], fine-tuned from the λ 0.025 bases" in text
    assert "| balanced vs adam | s0-f100 |" in text and "/3: " in text


def test_finished_stage_is_not_run_again(micro):
    before = {p: p.stat().st_mtime_ns for p in micro.store_dir.glob("*.pt")}
    assert set(study.run_stage(micro, "scratch").values()) == {"done"}
    assert {p: p.stat().st_mtime_ns for p in micro.store_dir.glob("*.pt")} == before


def test_comparisons_are_evaluated_at_once_and_done_without_their_weights(micro):
    """A new machine has the committed per-image files, not the fine-tuned weights: the study must
    count those runs as done and build curves and the report from the files, without retraining."""
    run = micro.out_dir / "balanced-l0.025-s0-f100"
    images = json.loads((micro.out_dir / "eval" / "balanced-l0.025-s0-f100-step_00000002.images.json").read_text())
    assert [r["image"] for r in images["images"]] == sorted(p.name for p in micro.path("test").glob("*.png"))
    assert all(r["bpp"] > 0 and 5 < r["psnr-rgb"] < 60 for r in images["images"])
    moved = run / "checkpoints.away"
    (run / "checkpoints").rename(moved)
    try:
        metrics = (run / "metrics.jsonl").stat().st_mtime_ns
        assert {r["state"] for r in study.status(micro) if r["task"].startswith("balanced-")} == {"done"}
        assert set(study.run_stage(micro, "evaluate").values()) == {"done"}
        assert (run / "metrics.jsonl").stat().st_mtime_ns == metrics and not (run / "checkpoints").exists()
        assert study.evaluated_blocks(micro) == [(0, 100)]
        broken = micro.out_dir / "eval" / "balanced-l0.025-s0-f100-step_00000002.images.json"
        text = broken.read_text()
        broken.write_text(json.dumps({**images, "images": images["images"][:1]}))  # one image short
        try:
            assert not study.compare_done(micro, "balanced", 0, 0.025, 100)
            assert study.evaluated_blocks(micro) == []
        finally:
            broken.write_text(text)
    finally:
        moved.rename(run / "checkpoints")


def test_from_scratch_pair_is_measured_beside_its_trunk(micro):
    """Item 3: the from-scratch run has the trunk's seed, λ, lr and measurement steps, and the
    report puts both side by side with the distortion's gradient share over each window."""
    run = micro.out_dir / "scratch-balanced-s0"
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    trunk = yaml.safe_load((micro.out_dir / "trunk-s0" / "config.yaml").read_text())
    assert cfg["finetune"]["init"] == "" and cfg["loss"]["mode"] == "balanced"
    assert [cfg[k][f] for k, f in (("run", "seed"), ("loss", "lmbda"), ("optim", "lr"))] == \
        [trunk[k][f] for k, f in (("run", "seed"), ("loss", "lmbda"), ("optim", "lr"))]
    rows = study.scratch_rows(micro, "balanced", 0)
    assert [r["step"] for r in rows] == [2, 4]
    assert all(math.isfinite(r["adam_psnr"]) and 0 < r["a_D"] < 1 and 0 < r["z_D"] < 1 for r in rows)
    text = "\n".join(study.scratch_markdown(micro))
    assert "From scratch, balanced beside trunk 0" in text and "| 4 |" in text and "`a_D` first reaches 0.25" in text
    moved = run / "checkpoints.away"
    (run / "checkpoints").rename(moved)
    try:  # done by its record: a new machine does not train it again
        assert study.scratch_done(micro, "balanced", 0) and run in study.finished_runs(micro)
    finally:
        moved.rename(run / "checkpoints")


def undefined_because(anchor: Curve, test: Curve, min_overlap: float) -> str:
    """Why a strict BD-rate of ``test`` against ``anchor`` (mean curves) is undefined, worked out
    from the points ("" when it is defined): a curve whose PSNR does not rise strictly with rate
    (the anchor checked first), else PSNR ranges overlapping less than ``min_overlap`` of their span."""
    for c in (anchor, test):
        q, b = c.quality[np.argsort(c.bpp)], np.sort(c.bpp)
        if (np.diff(b) <= 0).any() or (np.diff(q) <= 0).any():
            return (f"curve '{c.name}': 'psnr-rgb' must increase strictly with bpp "
                    f"(sorted by bpp: {np.round(q, 4).tolist()})")
    both = np.concatenate([anchor.quality, test.quality])
    common = min(anchor.quality.max(), test.quality.max()) - max(anchor.quality.min(), test.quality.min())
    overlap = max(common, 0) / (both.max() - both.min())
    if overlap == 0:
        return "BD-rate (psnr-rgb axis): Curves do not overlap. BD cannot be calculated."
    if overlap < min_overlap:
        return (f"BD-rate (psnr-rgb axis): Insufficient curve overlap: '{overlap * 100:.2f}'. Minimum overlap: "
                f"'{min_overlap * 100:.2f}'. You can silence this warning by setting `min_overlap=0`")
    return ""


def check_bd_rows(rows: list[dict], curve: Callable[[str, int, int], Curve], min_overlap: float) -> None:
    """Each row: NaN exactly where :func:`undefined_because` gives a reason, with that reason as
    its note; a finite value and no note otherwise. ``curve(arm, seed, ft_seed)``: the mean curve."""
    for r in rows:
        a, t = curve(r["anchor"], r["seed"], r["ft_seed"]), curve(r["test"], r["seed"], r["ft_seed"])
        why = undefined_because(a, t, min_overlap)
        where = f"{r['test']} vs {r['anchor']} s{r['seed']}-f{r['ft_seed']} {r['method']}"
        assert r["note"] == why, f"{where}: note {r['note']!r}, expected {why!r}"
        assert (math.isnan(r["bd_rate"]) if why else math.isfinite(r["bd_rate"])), f"{where}: {r['bd_rate']}"


def check_base_points(points: list[dict], lambdas: list[float], psnr: dict[int, np.ndarray]) -> None:
    """``L_D = λ·255²·MSE`` with MSE the mean over the test images of each image's MSE (on a 0..1
    scale, from its PSNR), exactly; ``psnr[seed]``: per-image PSNR, one row per λ of ``lambdas``."""
    assert [p["lmbda"] for p in points] == [lam for s in psnr for lam in lambdas]
    for p in points:
        q = psnr[p["seed"]][lambdas.index(p["lmbda"])]
        assert p["source"] == "full test images, real bitstreams"
        assert p["psnr"] == pytest.approx(q.mean(), rel=1e-12)
        mse = np.mean([10 ** (-v / 10) for v in q])
        want = p["lmbda"] * 255**2 * mse
        assert p["L_D"] == pytest.approx(want, rel=1e-12), f"L_D {p['L_D']!r}, λ·255²·MSE {want!r}, λ {p['lmbda']}"


def test_bd_rows_are_strict(micro):
    rows = study.bd_rows(micro)
    assert {(r["test"], r["anchor"]) for r in rows} == {("balanced", "adam")}
    # barely trained models: a number only where both curves are usable, else NaN and why
    check_bd_rows(rows, lambda arm, s, f: study.load_image_curve(micro, arm, s, f).mean(),
                  micro.compare.analysis.min_overlap)
    points = study.base_points(micro)
    psnr = {}  # per image, read from the evaluation files themselves
    for s in micro.trunk.seeds:
        files = [micro.out_dir / "eval" / f"{study.point_name(p)}.images.json"
                 for p in study.curve_checkpoints(micro, "base", s, None)]
        psnr[s] = np.array([[r["psnr-rgb"] for r in json.loads(f.read_text())["images"]] for f in files])
        assert psnr[s].shape == (2, 2)  # two λ, two test images
    check_base_points(points, [0.0067, 0.025], psnr)


def _curve(shift: float, n: int = 24, seed: int = 0) -> ImageCurve:
    rng = np.random.default_rng(seed)
    bpp = np.array([0.1, 0.2, 0.4, 0.8])[:, None] * rng.uniform(0.7, 1.3, n)[None]
    q = 25 + 4 * np.log2(bpp / 0.1) + rng.normal(0, 0.2, (4, n))
    return ImageCurve(f"c{shift}", bpp * (1 - shift), q)


def test_strict_bd_rate_and_paired_bootstrap():
    a, t = _curve(0.0), _curve(0.05)  # the test spends 5 % fewer bits on every image
    v, why = bd_rate_or_nan(a.mean(), t.mean())
    assert v == pytest.approx(-5.0, abs=1e-6) and why == ""
    boot = paired_bootstrap([(a, t), (a, t)], samples=200)
    assert boot["low"] == pytest.approx(-5.0, abs=1e-6) and boot["high"] == pytest.approx(-5.0, abs=1e-6)
    far = ImageCurve("far", a.bpp * 8, a.quality + 12)  # quality ranges barely overlap
    v, why = bd_rate_or_nan(a.mean(), far.mean())
    assert math.isnan(v) and "overlap" in why
    flat = ImageCurve("flat", a.bpp, np.full_like(a.quality, 20.0))
    v, why = bd_rate_or_nan(a.mean(), flat.mean())
    assert math.isnan(v) and "increase strictly" in why


def test_quality_gaps_at_equal_rate():
    """A test curve 0.1 dB above the anchor at the anchor's own rates lies +0.1 dB above it; a point
    outside the anchor's rate range is left out, not extrapolated."""
    from lic_core.analysis.bdrate import Curve, quality_gaps

    a = Curve("a", np.array([0.1, 0.2, 0.4, 0.8]), np.array([25.0, 27.0, 28.5, 29.5]), "psnr-rgb")
    up = Curve("t", a.bpp, a.quality + 0.1, "psnr-rgb")
    assert quality_gaps(a, up) == pytest.approx([0.1] * 4)
    low = Curve("t", np.array([0.05, 0.1, 0.2, 0.4]), np.array([23.0, 24.9, 26.9, 28.4]), "psnr-rgb")
    assert quality_gaps(a, low) == pytest.approx([-0.1, -0.1, -0.1])


def test_rate_gaps_at_equal_quality():
    """A test curve with 5 % fewer bits at the anchor's own qualities is -5 % at every point; a point
    outside the anchor's quality range is left out; a non-monotone anchor gives no gaps."""
    from lic_core.analysis.bdrate import Curve, rate_gaps

    a = Curve("a", np.array([0.1, 0.2, 0.4, 0.8]), np.array([25.0, 27.0, 28.5, 29.5]), "psnr-rgb")
    assert rate_gaps(a, Curve("t", a.bpp * 0.95, a.quality, "psnr-rgb")) == pytest.approx([-5.0] * 4)
    up = Curve("t", np.array([0.1, 0.2, 0.4, 0.8]), np.array([24.0, 27.0, 28.5, 30.0]), "psnr-rgb")
    assert rate_gaps(a, up) == pytest.approx([0.0, 0.0])
    bent = Curve("a", a.bpp, np.array([25.0, 27.0, 26.5, 29.5]), "psnr-rgb")
    assert rate_gaps(bent, up) == []


def test_gap_summary_averages_within_then_over_blocks():
    """Block means of the point-wise gaps, then their mean and t-interval over blocks (t(0.975, 2)
    = 4.303); a block with no point inside the anchor's range counts as missing, not as 0."""
    st = study.load_study(Path(study.REPO) / "studies" / "tiny" / "study.yaml")
    gaps = [[0.01, 0.03], [0.02], [0.03, 0.03, 0.03], []]
    rows = [{"test": "balanced", "anchor": "adam", "method": "pchip", "gaps": g, "rate_gaps": [-2 * 100 * x for x in g]}
            for g in gaps]
    g = next(r for r in study.gap_summary(st, rows) if (r["test"], r["anchor"]) == ("balanced", "adam"))
    half = 4.302653 * float(np.std([0.02, 0.02, 0.03], ddof=1)) / math.sqrt(3)
    assert (g["gaps"]["n"], g["gaps"]["of"]) == (3, 4)
    assert g["gaps"]["mean"] == pytest.approx(0.07 / 3)
    assert (g["gaps"]["low"], g["gaps"]["high"]) == pytest.approx((0.07 / 3 - half, 0.07 / 3 + half))
    assert g["rate_gaps"]["mean"] == pytest.approx(-14 / 3)


BAD_STUDIES = [  # (YAML, the error it must raise)
    ("trunk: {lmbda: 0.01}\nbranch: {lambdas: [0.0067]}\n", "trunk.lmbda"),
    ("trunk: {gate: 1}\n", "trunk.gate: unknown key"),
    ("compare: {arms: {adam: {}}, extend: {arms: [balanced], lambdas: [0.05], base: 0.025}}\n",
     r"compare.extend.arms: \['balanced'\] not in compare.arms"),
    ("compare: {arms: {b: {}}, extend: {arms: [b], lambdas: [0.05], base: 0.04}}\n",
     "compare.extend: needs lambdas and a base in branch.lambdas"),
    ("compare: {arms: {b: {}}, extend: {arms: [b], lambdas: [0.025], base: 0.025}}\n",
     "compare.extend.lambdas: .* overlap"),
]


def test_bad_study_files(tmp_path):
    bad = tmp_path / "s.yaml"
    for text, error in BAD_STUDIES:
        bad.write_text(text)
        with pytest.raises(ConfigError, match=error):
            study.load_study(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        study.load_study(tmp_path / "missing.yaml")


def test_shipped_study_files_load():
    for path in sorted((Path(study.REPO) / "studies").glob("*/study.yaml")):
        st = study.load_study(path)
        assert st.trunk.lmbda in st.branch.lambdas and len(st.branch.lambdas) >= 4, path


def test_report_block_and_figures(micro, tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Results\n\nprose kept\n")
    study.report(micro, results, tmp_path / "fig", samples=20)
    text = results.read_text()
    assert text.startswith("# Results\n\nprose kept") and "<!-- BEGIN experiment:micro -->" in text
    assert "| balanced vs adam | pchip |" in text and "| 0, 0.025 |" in text
    assert (tmp_path / "fig" / "rd_curves.png").is_file()
    for line in text.splitlines():  # an undefined value is never printed as a number
        if line.startswith(("| balanced vs adam | pchip", "| balanced vs adam | cubic")) and "| 0/" in line:
            assert "undefined" in line


def test_shipped_checkpoints_match_their_manifest():
    """What users get: every file listed with its SHA-256, weights only, float16, within budget."""
    shipped = Path(study.REPO) / "checkpoints" / "tiny"
    if not shipped.is_dir():
        skip_or_fail(f"no shipped checkpoints in this checkout ({shipped})")
    assert store.verify_store(shipped) == {}
    files = sorted(shipped.glob("*.pt"))
    assert files and sum(p.stat().st_size for p in files) < 60 * 2**20
    index = json.loads((shipped / store.INDEX).read_text())
    for p in files:
        obj = torch.load(p, weights_only=True)
        assert set(obj) == {"config", "state_dict", "meta"} and index[p.name] == obj["meta"]
        assert obj["state_dict"]["gg.likelihood_lower_bound.bound"].item() == pytest.approx(1e-9)
