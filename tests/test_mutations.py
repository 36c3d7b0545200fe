"""The suite's own strength: each guarded behaviour broken on purpose (the library function
recompiled from its source with one change, or replaced through monkeypatch), and the guarding
test's check shown to fail on it. Where the check it replaced would have passed, that is shown too.

Guarded: the compiled training path (tests/test_train_compile.py), strict BD rows and the L_D
formula (tests/test_study.py), BD values and their labels (tests/test_bdrate.py), skips through
the one helper (tests/test_skips.py and the tests that skip), the live JPEG figure
(tests/test_anchors.py). Each mutant runs in seconds: micro trainers of two eager steps,
synthetic curves, one 24-image JPEG sweep."""
from __future__ import annotations

import __future__
import contextlib
import inspect
import json
import math
import textwrap
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any, Callable

import conftest
import numpy as np
import pytest
import torch
import test_optim
import test_study
from test_anchors import check_jpeg_point
from test_bdrate import README, check_bd_matches_independent, check_hpcm_base_against_vtm
from test_skips import _report, check_no_bare_skips, suite_sources
from test_study import _curve, check_base_points, check_bd_rows
from test_train_compile import LOSS_BOUND, check_compiled_path_ran, check_losses_match, compiled_fit
from train_helpers import images, micro_config, needs_cpu_bf16, no_wandb  # noqa: F401 (fixtures)

from lic_core.analysis import anchors, bdrate
from lic_core.analysis.bdrate import ImageCurve
from lic_core.training import engine
from studies import trunk_branch as study


def mutant(module: ModuleType, name: str, old: str, new: str) -> Callable[..., Any]:
    """``module.name`` recompiled from its source with ``old`` (found exactly once) replaced by ``new``."""
    src = textwrap.dedent(inspect.getsource(getattr(module, name)))
    assert src.count(old) == 1, f"mutation point {old!r} is not (once) in {module.__name__}.{name}: update this test"
    ns: dict[str, Any] = {}
    code = compile(src.replace(old, new), f"<mutant of {module.__name__}.{name}>", "exec",
                   flags=__future__.annotations.compiler_flag, dont_inherit=True)
    exec(code, module.__dict__, ns)  # noqa: S102 (the library's own source, one change)
    return ns[name]


# ------------------------------------------------------------------- 1. the compiled path


@pytest.mark.parametrize("breakage", ["dynamo disabled", "compile_forward claims success", "no compiler"])
def test_compile_silently_disabled_is_caught(tmp_path, images, monkeypatch, breakage):
    """The old test compared eager with eager here and passed; the check sees it."""
    patch = contextlib.nullcontext()
    if breakage == "dynamo disabled":  # model.compile() is called, and every frame then runs eagerly
        patch = torch._dynamo.config.patch(disable=True)  # torch's own patch restores its config
    elif breakage == "compile_forward claims success":
        monkeypatch.setattr(engine, "compile_forward", lambda model, dev: True)
    else:  # the one-line fallback: trains eagerly
        monkeypatch.setattr(engine, "compiler_missing", lambda dev: "no C++ compiler")
    with patch:
        tr, seen = compiled_fit(micro_config(tmp_path, images, run__steps=2, speed__compile=True))
    assert tr.step == 2
    with pytest.raises(AssertionError, match="eagerly" if breakage == "no compiler" else "no compiled code"):
        check_compiled_path_ran(tr, seen)


def test_loss_drift_beyond_the_readme_bound_is_caught():
    """Losses 2e-6 apart (relative) pass the old 1e-5 bound and fail the README-based one."""
    eager = [1.0 + 0.01 * i for i in range(20)]
    drifted = [v * (1 + 2e-6) for v in eager]
    check_losses_match(eager, drifted, 1e-5)  # the old bound: accepted
    for mode in LOSS_BOUND:
        with pytest.raises(AssertionError, match="relative"):
            check_losses_match(eager, drifted, LOSS_BOUND[mode])


# ------------------------------------------------------------------- 2. strict BD rows and L_D


LAMBDAS = [0.0067, 0.025]
PSNR = np.array([[22.0, 38.0], [26.0, 42.0]])  # per image: a wide spread, so mean PSNR ≠ mean MSE


@pytest.fixture
def fake_bases(monkeypatch, tmp_path) -> SimpleNamespace:
    """A study whose one base curve (seed 0) is evaluated with :data:`PSNR` on two images."""
    st = SimpleNamespace(trunk=SimpleNamespace(seeds=[0]), branch=SimpleNamespace(lambdas=LAMBDAS),
                         store_dir=tmp_path, test_patch=64)
    monkeypatch.setattr(study, "evaluated", lambda st, arm, s, f: True)
    monkeypatch.setattr(study, "is_store", lambda d: False)
    monkeypatch.setattr(study, "load_image_curve",
                        lambda st, arm, s, f: ImageCurve("base-s0", np.array([[0.1, 0.12], [0.3, 0.35]]), PSNR))
    check_base_points(study.base_points(st), LAMBDAS, {0: PSNR})  # the real code passes
    return st


@pytest.mark.parametrize("old,new,old_check_passed", [
    ("lam * 255**2 * mse", "lam * 255**2 * 10 ** (-float(q.mean()) / 10)", True),  # MSE of the mean PSNR
    ("lam * 255**2 * mse", "lam * 255 * mse", False),
    ("lam * 255**2 * mse", "255**2 * mse", False),
])
def test_wrong_l_d_formula_is_caught(fake_bases, monkeypatch, old, new, old_check_passed):
    monkeypatch.setattr(study, "base_points", mutant(study, "base_points", old, new))
    points = study.base_points(fake_bases)
    old_check = all(p["L_D"] == pytest.approx(p["lmbda"] * 255**2 * 10 ** (-p["psnr"] / 10), rel=0.5) for p in points)
    assert old_check is old_check_passed
    with pytest.raises(AssertionError, match="L_D"):
        check_base_points(points, LAMBDAS, {0: PSNR})


@pytest.fixture
def fake_blocks(monkeypatch) -> SimpleNamespace:
    """Three blocks of balanced against adam: 5 % fewer bits (defined), quality ranges overlapping
    on about a third of their span, and a flat (untrained) test curve."""
    a = _curve(0.0)
    tests = {1: _curve(0.05), 2: ImageCurve("near", a.bpp * 3, a.quality + 6),
             3: ImageCurve("flat", a.bpp, np.full_like(a.quality, 20.0))}
    monkeypatch.setattr(study, "comparisons", lambda st: [("balanced", "adam")])
    monkeypatch.setattr(study, "blocks", lambda st: [(0, f) for f in tests])
    monkeypatch.setattr(study, "load_image_curve", lambda st, arm, s, f: a if arm == "adam" else tests[f])
    st = SimpleNamespace(compare=SimpleNamespace(analysis=SimpleNamespace(min_overlap=0.75)))
    rows = study.bd_rows(st)
    assert [math.isnan(r["bd_rate"]) for r in rows] == [False, False, True, True, True, True]
    check_bd_rows(rows, _mean_curve, 0.75)  # the real code passes
    return st


def _mean_curve(arm: str, seed: int, ft_seed: int) -> Any:
    return study.load_image_curve(None, arm, seed, ft_seed).mean()


@pytest.mark.parametrize("module,name,old,new", [
    # lenient: an extrapolated number where the value is undefined, its warning kept as the note
    (bdrate, "bd_rate_or_nan", "min_overlap, strict=True)", "min_overlap, strict=False)"),
    (bdrate, "bd_rate_or_nan", 'return float("nan"), str(e)', 'return float("nan"), "curve not usable"'),  # reason lost
    (study, "bd_rows", "m, st.compare.analysis.min_overlap)", "m, 0.0)"),  # the study's overlap rule ignored
])
def test_bd_rows_that_are_not_strict_are_caught(fake_blocks, monkeypatch, module, name, old, new):
    """Each mutant still gives a number or a note on every row, all the old check asked for."""
    monkeypatch.setattr(module, name, mutant(module, name, old, new))
    rows = study.bd_rows(fake_blocks)
    assert all(math.isfinite(r["bd_rate"]) or r["note"] for r in rows)  # the old check: accepted
    with pytest.raises(AssertionError, match="balanced vs adam s0-f[23]"):
        check_bd_rows(rows, _mean_curve, 0.75)


# ------------------------------------------------------------------- 3. BD values


def test_a_wrong_bd_value_is_caught(monkeypatch):
    """The independent computation sees a method mixed up and a 0.1 % error in the package's value."""
    real = bdrate.bd
    check_bd_matches_independent("cubic", *README["test2"])
    monkeypatch.setattr(bdrate, "bd", SimpleNamespace(
        bd_rate=lambda *a, method, **k: real.bd_rate(*a, method="pchip", **k), bd_psnr=real.bd_psnr))
    with pytest.raises(AssertionError):
        check_bd_matches_independent("cubic", *README["test2"])
    monkeypatch.setattr(bdrate, "bd", SimpleNamespace(bd_rate=lambda *a, **k: real.bd_rate(*a, **k) * 1.001,
                                                      bd_psnr=real.bd_psnr))
    for method in ("cubic", "pchip", "akima"):
        with pytest.raises(AssertionError):
            check_bd_matches_independent(method, *README["test1"])


def test_a_mislabelled_pinned_value_is_caught(reference_dir, monkeypatch):
    """Pinning the paper's -15.31 % as the package's output on the published points fails."""
    import test_bdrate

    check_hpcm_base_against_vtm(reference_dir / "kodak")
    monkeypatch.setitem(test_bdrate.BJONTEGAARD_HPCM_BASE_VS_VTM, "cubic", -15.31)
    with pytest.raises(AssertionError):
        check_hpcm_base_against_vtm(reference_dir / "kodak")


# ------------------------------------------------------------------- 4. skips through the helper


@pytest.fixture
def ci(monkeypatch) -> None:
    """CI's environment: data required, the machine's requirements following it."""
    monkeypatch.setenv("LIC_REQUIRE_DATA", "1")
    monkeypatch.delenv("LIC_REQUIRE_ENV", raising=False)


def test_missing_shipped_checkpoints_fail_in_ci(ci, monkeypatch, tmp_path):
    monkeypatch.setattr(study, "REPO", tmp_path)
    with pytest.raises(pytest.fail.Exception, match="no shipped checkpoints.*LIC_REQUIRE_DATA=1"):
        test_study.test_shipped_checkpoints_match_their_manifest()
    monkeypatch.delenv("LIC_REQUIRE_DATA")
    with pytest.raises(conftest.RoutedSkip):
        test_study.test_shipped_checkpoints_match_their_manifest()


def test_a_bare_skip_in_place_of_the_helper_is_caught(ci, monkeypatch, tmp_path, request):
    """The shipped-manifest skip made bare again: the guard rejects the source, and in CI the
    run-time hook reports the test failed, not skipped."""
    sources = suite_sources()
    src = sources["tests/test_study.py"]
    old = 'skip_or_fail(f"no shipped checkpoints'
    assert src.count(old) == 1
    with pytest.raises(AssertionError, match="tests/test_study.py:[0-9]+: skip"):
        bare = src.replace(old, 'pytest.skip(f"no shipped checkpoints')
        check_no_bare_skips({**sources, "tests/test_study.py": bare})
    monkeypatch.setattr(study, "REPO", tmp_path)
    monkeypatch.setattr(test_study, "skip_or_fail", lambda msg, kind="data": pytest.skip(msg))
    assert _report(request.node, test_study.test_shipped_checkpoints_match_their_manifest).outcome == "failed"


def test_missing_compiler_fails_the_compiled_optimizer_test_in_ci(ci, monkeypatch):
    monkeypatch.setattr(test_optim, "compiler_missing", lambda dev: "no C++ compiler")
    with pytest.raises(pytest.fail.Exception, match="no C\\+\\+ compiler.*LIC_REQUIRE_DATA=1"):
        test_optim.test_compiled_path_equals_foreach_to_rounding(torch.float32)
    monkeypatch.setenv("LIC_REQUIRE_ENV", "0")  # a CI machine known to lack one
    with pytest.raises(conftest.RoutedSkip):
        test_optim.test_compiled_path_equals_foreach_to_rounding(torch.float32)


def test_a_cpu_without_bf16_skips_the_bf16_tests_unless_required(ci, monkeypatch, request):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    request.node.add_marker(needs_cpu_bf16)
    with pytest.raises(conftest.RoutedSkip, match="bfloat16"):  # CI on a CPU without AVX-512
        conftest.pytest_runtest_setup(request.node)
    monkeypatch.setenv("LIC_REQUIRE_CPU", "1")  # a run on a machine known to have it
    with pytest.raises(pytest.fail.Exception, match="bfloat16"):
        conftest.pytest_runtest_setup(request.node)


# ------------------------------------------------------------------- 5. the live JPEG figure


@pytest.fixture(scope="module")
def jpeg_reference(reference_dir) -> tuple[dict[str, list[float]], int]:
    ref = json.loads((reference_dir / "kodak" / "jpeg.json").read_text())["results"]
    return ref, anchors.CODECS["jpeg"].qualities.index(75)


def _q75(kodak_dir: Path) -> dict[str, float]:
    out = anchors.sweep("jpeg", sorted(kodak_dir.glob("kodim*.png")), [75], progress=False)
    return {k: v[0] for k, v in out["results"].items()}


def test_jpeg_quality_off_by_one_is_caught(kodak_dir, jpeg_reference, monkeypatch):
    real = anchors.roundtrip
    monkeypatch.setattr(anchors, "roundtrip", lambda key, rgb, quality: real(key, rgb, quality - 1))
    with pytest.raises(AssertionError, match="docs/FIDELITY.md states"):
        check_jpeg_point(_q75(kodak_dir), *jpeg_reference)


def test_a_psnr_off_by_a_few_hundredths_is_caught(kodak_dir, jpeg_reference, monkeypatch):
    """PSNR against a peak of 256 instead of 255 (+0.034 dB): inside the old 0.2 dB tolerance,
    outside docs/FIDELITY.md's stated 34.52."""
    real = anchors.metrics.psnr
    monkeypatch.setattr(anchors.metrics, "psnr", lambda a, b: real(a, b) + 20 * math.log10(256 / 255))
    got = _q75(kodak_dir)
    ref, i = jpeg_reference
    assert got["psnr-rgb"] == pytest.approx(ref["psnr-rgb"][i], abs=0.2)  # the old check: accepted
    with pytest.raises(AssertionError, match="docs/FIDELITY.md states"):
        check_jpeg_point(got, ref, i)
