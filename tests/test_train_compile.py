"""``speed.compile`` on the CPU: the compiled forward trains like the eager one (losses
within a few float32 roundings over 20 steps, with dynamo shown to have compiled the model's forward),
resumes bit-identically, and a machine without a compiler gets one line and the eager path."""
from __future__ import annotations

import math

import pytest
import torch
from torch._dynamo.eval_frame import _debug_get_cache_entry_list
from torch._dynamo.utils import counters
from conftest import skip_or_fail
from train_helpers import images, micro_config, needs_cpu_bf16, no_wandb  # noqa: F401 (fixtures)

from lic_core.config import COMPILE_MIN_STEPS, TrainConfig, apply_overrides
from lic_core.models import autotune
from lic_core.training import checkpoint as ckpt
from lic_core.training import engine
from lic_core.training.engine import Trainer, compile_gainless, compiler_missing, speed_plan, train, wants_compile
from lic_core.training.logging import load_history


def _losses(run_dir) -> list[float]:
    return [r["loss"] for r in load_history(run_dir) if r["kind"] == "train"]


# README "Performance": compiled and eager losses agree to ~1e-7 relative over 20 steps. Measured on
# the project's Xeon (micro preset, lr 1e-4): at most 1.8e-7 in the standard mode (single float32
# roundings: 0 at most steps, 7e-8..1.8e-7 at three) and 6.3e-7 in the balanced one, where the gap
# grows over the steps (1e-7 at step 3, 6e-7 by step 19) as rounding differences feed back through
# the weights. Bounds: about 2.5x each measurement, far below what a real divergence gives.
LOSS_BOUND = {"standard": 5e-7, "balanced": 1.5e-6}


def compiled_fit(cfg: TrainConfig) -> tuple[Trainer, dict[str, int]]:
    """Fit ``cfg`` from an empty dynamo cache; the trainer and what dynamo compiled meanwhile:
    cache entries on the model's forward, frames converted, graphs handed to AOT autograd (what
    inductor compiles through; dynamo's no-op "eager" backend does not)."""
    torch._dynamo.reset()
    counters.clear()
    tr = Trainer(cfg)
    tr.fit()
    return tr, {"forward": len(_debug_get_cache_entry_list(type(tr.model).forward.__code__)),
                "frames": counters["frames"]["ok"], "aot": counters["aot_autograd"]["ok"]}


def check_compiled_path_ran(tr: Trainer, seen: dict[str, int]) -> None:
    """The trainer took the compiled path and dynamo compiled the model's forward through a backend."""
    assert tr.compiled, "the trainer trained eagerly"
    assert seen["forward"] >= 1, f"dynamo holds no compiled code for the model's forward: {seen}"
    assert seen["frames"] >= 1 and seen["aot"] >= 1, f"no graph went through a compiling backend: {seen}"


def check_losses_match(eager: list[float], compiled: list[float], bound: float, steps: int = 20) -> None:
    """Every step's loss, compiled against eager, within ``bound`` relative."""
    assert len(eager) == len(compiled) == steps
    rel = max(abs(a - b) / abs(a) for a, b in zip(eager, compiled))
    assert rel <= bound, f"compiled vs eager loss: {rel:.2e} relative, bound {bound:.1e}"


@pytest.mark.parametrize("mode", ["standard", "balanced"])
def test_compiled_losses_match_eager(tmp_path, images, mode):
    cfg = {c: micro_config(tmp_path, images, run__name=f"{mode}-{c}", run__steps=20, loss__mode=mode,
                           speed__compile=c, optim__lr=1e-4) for c in (False, True)}
    eager = train(cfg[False])
    tr, seen = compiled_fit(cfg[True])
    check_compiled_path_ran(tr, seen)
    check_losses_match(_losses(eager.run_dir), _losses(tr.run_dir), LOSS_BOUND[mode])


def test_compiled_resume_is_bit_identical(tmp_path, images):
    sets = dict(run__steps=6, run__ckpt_every=2, loss__mode="balanced", speed__compile=True)
    full = train(micro_config(tmp_path, images, run__name="full", **sets))
    cfg = micro_config(tmp_path, images, run__name="cut", **sets)
    Trainer(cfg).fit(until=3)
    resumed = Trainer(cfg)
    assert resumed.compiled and resumed.step == 2
    resumed.fit()
    a = torch.load(ckpt.latest(full.run_dir / "checkpoints"), weights_only=False)
    b = torch.load(ckpt.latest(tmp_path / "cut" / "checkpoints"), weights_only=False)
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k
    assert _losses(full.run_dir)[-3:] == _losses(tmp_path / "cut")[-3:]


def test_without_a_compiler_one_line_and_eager(tmp_path, images, capfd):
    import torch._inductor.config as inductor
    from torch._inductor import cpp_builder

    # inductor's own patch, which restores the setting (monkeypatch would delete it on undo: it is
    # no plain attribute), then the cached failed search forgotten, or every later test in this
    # process would train without a compiler
    cpp_builder.cpp_compiler_search.cache_clear()
    try:
        with inductor.patch({"cpp.cxx": (None, "no-such-c++")}):
            tr = Trainer(micro_config(tmp_path, images, speed__compile=True))
            err = [ln for ln in capfd.readouterr().err.splitlines() if ln.startswith("speed.compile")]
            assert len(err) == 1 and "no-such-c++" in err[0] and "without torch.compile" in err[0], err
            assert not tr.compiled
            assert tr.fit().step == 4
    finally:
        cpp_builder.cpp_compiler_search.cache_clear()
    assert not compiler_missing(torch.device("cpu"))


def test_auto_compiles_long_runs_only(tmp_path, images):
    cfg = lambda steps, c="auto": micro_config(tmp_path, images, run__steps=steps, speed__compile=c)  # noqa: E731
    assert not wants_compile(cfg(COMPILE_MIN_STEPS - 1)) and wants_compile(cfg(COMPILE_MIN_STEPS))
    assert not wants_compile(cfg(10**6, False)) and wants_compile(cfg(1, True))


def test_auto_compiles_only_small_models_on_a_cpu(monkeypatch):
    if compiler_missing(torch.device("cpu")):
        skip_or_fail(f"no C++ compiler for torch.compile: {compiler_missing(torch.device('cpu'))}", kind="env")
    cfg = apply_overrides(TrainConfig(), {"run.steps": COMPILE_MIN_STEPS})
    before = autotune.choices()
    assert speed_plan(cfg, torch.device("cpu")).compile is True  # tiny: 22 kMACs/pixel
    monkeypatch.setattr(engine, "COMPILE_CPU_MAX_KMACS", 10)
    plan = speed_plan(cfg, torch.device("cpu"))
    assert plan.compile is False and "22 kMACs/pixel on a CPU, above 10" in plan.describe(), plan.describe()
    assert autotune.choices() == before  # counting the MACs measured and recorded no path
    assert compile_gainless(cfg, torch.device("cuda")) == ""  # a GPU compiles every size
    assert speed_plan(apply_overrides(cfg, {"speed.compile": True}), torch.device("cpu")).compile is True


@needs_cpu_bf16
def test_compiled_bf16_trains_like_eager_bf16(tmp_path, images):
    """``speed.bf16`` and ``speed.compile`` together on the CPU: the autocast blocks around the
    transforms compile, and the compiled run follows the eager bfloat16 one."""
    cfg = {c: micro_config(tmp_path, images, run__name=f"bf16-{c}", run__steps=6, speed__bf16=True,
                           speed__compile=c, optim__lr=1e-4) for c in (False, True)}
    eager = _losses(train(cfg[False]).run_dir)
    tr, seen = compiled_fit(cfg[True])
    check_compiled_path_ran(tr, seen)
    compiled = _losses(tr.run_dir)
    assert len(compiled) == 6 and all(math.isfinite(v) for v in compiled)
    rel = max(abs(a - b) / abs(a) for a, b in zip(eager, compiled))
    assert rel < 1e-2, f"compiled vs eager bf16 loss: {rel:.2e} relative"
