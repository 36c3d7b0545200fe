"""The per-layer autotuner (lic_core.models.autotune) and the engine's speed plan: each path
forced gives the same outputs, a key is measured once and then cached (in the process and in the
machine cache), the config key validates, a checkpoint's choices are restored, and a CPU capped to
AVX2 runs the portable default without timing anything. No test asserts a time."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from train_helpers import images, micro_config, no_wandb  # noqa: F401 (fixtures)

from lic_core.config import TrainConfig, apply_overrides, validate
from lic_core.errors import ConfigError
from lic_core.models import autotune
from lic_core.models.blocks import Conv1x1
from lic_core.models.hpcm import hpcm

REPO = Path(__file__).resolve().parent.parent
AVX2_CAP = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


@pytest.fixture(autouse=True)
def fresh(monkeypatch, tmp_path):
    """Each test: mode auto, nothing cached, a machine cache of its own; the mode restored after."""
    monkeypatch.setenv(autotune.STORE_ENV, str(tmp_path / "autotune.json"))
    before = autotune.mode()
    autotune.clear()
    autotune.set_mode("auto")
    yield
    autotune.clear()
    autotune.set_mode(before)


@pytest.fixture
def fake_timer(monkeypatch):
    """A measurable CPU whose measurements are ``times`` (path -> seconds), counted in ``calls``."""
    state = {"times": {"gemm": 2.0, "conv": 1.0}, "calls": 0}

    def measure(fns, device):
        state["calls"] += 1
        for fn in fns.values():
            fn()  # the candidates still run: they must work
        return dict(state["times"])

    monkeypatch.setattr(autotune, "unmeasured_reason", lambda device: "")
    monkeypatch.setattr(autotune, "measure", measure)
    return state


def layer_and_input(layout=torch.channels_last, grad: bool = True) -> tuple[Conv1x1, torch.Tensor]:
    torch.manual_seed(0)
    layer = Conv1x1(24, 40).to(memory_format=torch.channels_last)
    x = torch.randn(2, 24, 5, 7).contiguous(memory_format=layout).requires_grad_(grad)
    return layer, x


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_each_forced_path_gives_the_same_output_and_gradients(layout):
    layer, x = layer_and_input(layout)
    got = {}
    for path in ("gemm", "conv"):
        with autotune.forced(path):
            xs = x.detach().clone().requires_grad_()
            y = layer(xs)
            y.backward(torch.ones_like(y))
            got[path] = (y.detach(), xs.grad, layer.weight.grad.clone(), layer.bias.grad.clone())
            layer.zero_grad(set_to_none=True)
    for a, b in zip(got["gemm"], got["conv"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    ref = torch.nn.Conv2d(24, 40, 1)
    assert ref.state_dict().keys() == layer.state_dict().keys()
    assert autotune.choices() == {}  # forced paths are never measured nor cached


def test_a_key_is_measured_once_then_cached(fake_timer):
    layer, x = layer_and_input()
    layer(x)
    layer(x)
    assert fake_timer["calls"] == 1
    (key, path), = autotune.choices().items()
    assert path == "conv" and key.startswith("conv1x1 2x24x5x7->40 cl float32 train")
    with torch.no_grad():  # another grad mode: another key
        layer(x)
    assert fake_timer["calls"] == 2 and len(autotune.choices()) == 2
    assert layer.weight.grad is None  # measuring the backward touched no .grad


def test_the_default_wins_unless_another_path_is_clearly_faster(fake_timer):
    fake_timer["times"] = {"gemm": 1.0, "conv": 1.0 - autotune.MARGIN / 2}
    layer, x = layer_and_input()
    layer(x)
    assert set(autotune.choices().values()) == {autotune.default("conv1x1")}


def test_the_machine_cache_decides_for_a_later_process(fake_timer, tmp_path):
    layer, x = layer_and_input()
    layer(x)
    stored = json.loads((tmp_path / "autotune.json").read_text())
    assert list(stored) == [autotune.machine()] and list(stored[autotune.machine()].values()) == ["conv"]
    autotune.clear()  # as a new process: the file, not a measurement, decides
    fake_timer["times"] = {"gemm": 1.0, "conv": 2.0}
    layer(x)
    assert fake_timer["calls"] == 1 and list(autotune.choices().values()) == ["conv"]
    assert "machine cache" in autotune.describe()[1]


def test_off_deterministic_and_compiled_calls_run_the_portable_default(fake_timer):
    layer, x = layer_and_input()
    with autotune.forced(False):
        layer(x)
    torch.backends.cudnn.deterministic, before = True, torch.backends.cudnn.deterministic
    try:
        layer(x)  # what the entropy coder runs under
    finally:
        torch.backends.cudnn.deterministic = before
    assert fake_timer["calls"] == 0 and autotune.choices() == {}
    assert autotune.traced_path("conv1x1") == "gemm"
    with autotune.forced("conv"):
        assert autotune.traced_path("conv1x1") == "conv"


@pytest.mark.parametrize("value", ["fast", "GEMM2", 3])
def test_the_config_key_validates_with_one_line_errors(value):
    cfg = apply_overrides(TrainConfig(), {"speed.autotune": value})
    with pytest.raises(ConfigError) as err:
        validate(cfg, check_paths=False)
    assert str(err.value).startswith("speed.autotune: ") and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="^speed.autotune: .* is not true, false"):
        autotune.set_mode(value)


@pytest.mark.parametrize("value,mode", [("true", "auto"), ("false", "off"), ("gemm", "gemm"), ("conv", "conv")])
def test_the_config_key_takes_each_mode(value, mode):
    cfg = validate(apply_overrides(TrainConfig(), {"speed.autotune": value}), check_paths=False)
    assert autotune.normalize(cfg.speed.autotune) == mode


def test_bf16_auto_is_accepted_and_nonsense_refused():
    validate(apply_overrides(TrainConfig(), {"speed.bf16": "auto"}), check_paths=False)
    with pytest.raises(ConfigError, match="^speed.bf16: 'maybe' is not true, false or auto$"):
        validate(apply_overrides(TrainConfig(), {"speed.bf16": "maybe"}), check_paths=False)


def test_speed_plan_resolves_auto_by_what_the_machine_supports():
    from lic_core.training.engine import COMPILE_MIN_STEPS, native_bf16, speed_plan

    cpu = torch.device("cpu")
    cfg = apply_overrides(TrainConfig(), {"speed.bf16": "auto", "speed.autotune": "conv",
                                          "run.steps": COMPILE_MIN_STEPS - 1})
    plan = speed_plan(cfg, cpu)
    assert (plan.bf16, plan.compile, plan.autotune) == (native_bf16(cpu), False, "conv")
    assert "bf16=auto" in plan.describe() and "\n" not in plan.describe()
    assert speed_plan(TrainConfig(), cpu).bf16 is False  # bf16 changes numerics: never the default


def test_record_and_restore():
    autotune._choices["conv1x1 1x8x2x2->8 cl float32 train cpu"] = "conv"
    rec = autotune.record()
    autotune.clear()
    autotune.set_mode("gemm")
    assert autotune.restore(rec) == "auto" and autotune.choices() == rec["choices"]
    assert autotune.restore(None) == "off"  # a checkpoint from before the autotuner
    with pytest.raises(ConfigError, match="not a path"):
        autotune.restore({"mode": "auto", "choices": {"conv1x1 k": "winograd"}})


@pytest.fixture(scope="module")
def tiny():
    return hpcm("tiny")


def run_tiny(model) -> dict[str, torch.Tensor]:
    """One train forward + backward and one eval forward; the outputs and the gradients."""
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    model.zero_grad(set_to_none=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        out = model.train()(x)
    loss = out["x_hat"].square().mean() + sum(-lik.log2().mean() for lik in out["likelihoods"].values())
    loss.backward()
    with torch.no_grad():
        ev = model.eval()(x)
    return {"train x_hat": out["x_hat"].detach(), "adaptor grad": model.adaptors[0].weight.grad.clone(),
            "eval x_hat": ev["x_hat"], "eval means": ev["means_hat"], "eval scales": ev["scales_hat"]}


def test_the_model_runs_on_each_forced_path_and_on_auto(tiny):
    sd = {k: v.clone() for k, v in tiny.state_dict().items()}
    got = {}
    for path in ("gemm", "conv", "auto"):
        with autotune.forced(path):
            got[path] = run_tiny(tiny)
    for path in ("conv", "auto"):
        for k, v in got[path].items():
            torch.testing.assert_close(v, got["gemm"][k], rtol=1e-4, atol=1e-4, msg=f"{path}: {k}")
    assert tiny.state_dict().keys() == sd.keys()
    assert all(torch.equal(v, sd[k]) for k, v in tiny.state_dict().items())  # measuring changed no weight
    lines = autotune.describe()
    assert lines[0].startswith("autotune mode auto") and len(lines) == 1 + len(autotune.choices())


def test_avx2_capped_process_runs_the_portable_default(tmp_path):
    """As benchmarks/cross_cpu.py caps a run: ATen, oneDNN and MKL limited to AVX2. Auto mode
    times nothing there, every key takes the portable default, bf16 is refused."""
    script = textwrap.dedent("""
        import json, torch
        from lic_core.models import autotune
        from lic_core.models.hpcm import hpcm
        from lic_core.training.engine import cpu_bf16
        m = hpcm("tiny")
        x = torch.rand(1, 3, 128, 128)
        out = m.train()(x)
        out["x_hat"].sum().backward()
        with torch.no_grad():
            m.eval()(x)
        print(json.dumps({"cap": torch.backends.cpu.get_cpu_capability(), "why": autotune.unmeasured_reason(
            torch.device("cpu")), "choices": autotune.choices(), "timings": autotune.timings(), "bf16": cpu_bf16()}))
    """)
    env = {**os.environ, **AVX2_CAP, "LIC_AUTOTUNE": "", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           autotune.STORE_ENV: str(tmp_path / "autotune.json")}
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["cap"] not in autotune.MEASURED_CPUS  # AVX2 on x86; an ARM machine has no AVX-512 at all
    assert got["why"] and got["timings"] == {} and got["bf16"] is False
    assert got["choices"] and set(got["choices"].values()) == {"gemm"}
    assert not (tmp_path / "autotune.json").exists()


def test_a_resumed_run_takes_its_checkpoints_paths_and_stays_bit_identical(tmp_path, images, capsys):
    """A run forced to ``conv``, cut after its step-2 checkpoint and resumed with the default
    ``speed.autotune`` (true), goes on in the checkpoint's mode and ends bit-identical to the run
    left alone; a checkpoint from before the autotuner resumes in mode off."""
    from lic_core.training.engine import Trainer, train

    sets = dict(run__steps=4, run__ckpt_every=2, speed__autotune="conv")
    full = train(micro_config(tmp_path, images, run__name="full", **sets))
    assert torch.load(full.checkpoint, weights_only=True)["autotune"]["mode"] == "conv"
    Trainer(micro_config(tmp_path, images, run__name="cut", **sets)).fit(until=2)
    resumed = Trainer(micro_config(tmp_path, images, run__name="cut", **{**sets, "speed__autotune": True}))
    assert resumed.step == 2 and resumed.plan.autotune == "conv" == autotune.mode()
    assert "resuming with the checkpoint's mode conv (config: auto)" in capsys.readouterr().err
    cut = resumed.fit()
    a, b = (torch.load(r.checkpoint, weights_only=True)["state_dict"] for r in (full, cut))
    assert all(torch.equal(a[k], b[k]) for k in a)
    resumed._restore_autotune(None)
    assert autotune.mode() == "off"


def test_compiled_code_traces_the_path_eager_calls_took(fake_timer):
    layer, x = layer_and_input()
    shape = (2, 24, 5, 7, 40, True, torch.float32, True)
    assert autotune.traced_path("conv1x1", shape) == "gemm"  # nothing seen yet: the portable default
    layer(x)
    assert autotune.traced_path("conv1x1", shape) == "conv"  # fake_timer makes conv the faster
    with autotune.forced("gemm"):
        assert autotune.traced_path("conv1x1", shape) == "gemm"


def test_a_compiled_conv1x1_is_one_graph_on_the_eager_path():
    """The dispatch compiles without a graph break (fullgraph) and traces what eager ran."""
    from conftest import skip_or_fail
    from lic_core.training.engine import compiler_missing

    why = compiler_missing(torch.device("cpu"))
    if why:
        skip_or_fail(f"torch.compile on the CPU: {why}", "env")
    torch._dynamo.reset()
    layer, x = layer_and_input()
    want = layer(x)
    for path in ("gemm", "conv"):
        with autotune.forced(path):
            got = torch.compile(layer, fullgraph=True, dynamic=False)(x)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.parametrize("path", ["gemm", "conv"])
def test_each_path_is_within_the_conformance_tolerances(reference_dir, kodak_dir, path):
    """HPCM-Base against the authors' reference arrays (tests/test_conformance.py's data and
    tolerances) with every 1x1 conv on one path."""
    from lic_core.models import conformance

    with autotune.forced(path):
        rows = conformance.model_rows("base", reference_dir, kodak_dir)
    assert rows and all(r["difference"] <= r["tolerance"] for r in rows), [r for r in rows
                                                                          if r["difference"] > r["tolerance"]]
