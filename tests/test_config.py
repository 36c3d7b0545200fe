"""Typed training config: YAML round trip, --set overrides with types, errors naming the key."""
from __future__ import annotations

import pytest

from lic_core.config import PRESETS, TrainConfig, apply_overrides, from_dict, load_config, validate
from lic_core.errors import ConfigError
from lic_core.training.engine import main


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "data").mkdir()
    return tmp_path / "data"


def test_yaml_round_trip(tmp_path, folder):
    cfg = apply_overrides(TrainConfig(), {**PRESETS["micro"], "data.train": str(folder),
                                          "loss.mode": "hierarchical", "balance.gamma_milestones": [0.5],
                                          "finetune.lr_mult": {"context": 0.5}})
    path = tmp_path / "c.yaml"
    cfg.to_yaml(path)
    back = load_config(path)
    assert back == cfg
    assert back.model.overrides["widths"] == [16, 24, 32]
    assert back.finetune.lr_mult == {"context": 0.5}


def test_set_overrides_are_typed(folder):
    cfg = load_config(None, [f"data.train={folder}", "optim.lr=3e-4", "run.steps=20", "run.progress=false",
                             "optim.milestones=[0.5, 0.9]", "optim.step_lrs=[1e-5, 1e-6]",
                             "model.overrides={aligned_s2_gather: true}", "loss.lmbda=0.0067"])
    assert cfg.optim.lr == 3e-4 and isinstance(cfg.optim.lr, float)  # YAML alone reads "3e-4" as a str
    assert cfg.run.steps == 20 and cfg.run.progress is False
    assert cfg.optim.milestones == [0.5, 0.9]
    assert cfg.model.overrides == {"aligned_s2_gather": True}
    assert cfg.loss.lmbda == 0.0067
    per_task = apply_overrides(cfg, ["balance.gamma=[0.003, 0.001]", "balance.offset=-0.5"])
    assert per_task.balance.gamma == [0.003, 0.001] and per_task.balance.offset == -0.5


def test_yaml_scientific_notation_is_a_float(tmp_path, folder):
    path = tmp_path / "c.yaml"
    path.write_text(f"data: {{train: {folder}}}\noptim: {{lr: 1e-4}}\nloss: {{lmbda: 2e-3}}\n")
    cfg = load_config(path)
    assert cfg.optim.lr == 1e-4 and cfg.loss.lmbda == 2e-3


@pytest.mark.parametrize("sets, key", [
    (["optim.lrr=1"], "optim.lrr"),
    (["nope.x=1"], "nope.x"),
    (["loss.lmbda=-0.01"], "loss.lmbda"),
    (["loss.mode=fancy"], "loss.mode"),
    (["run.steps=ten"], "run.steps"),
    (["run.steps=2.5"], "run.steps"),
    (["run.progress=maybe"], "run.progress"),
    (["model.overrides={colour: 3}"], "model.overrides.colour"),
    (["data.patch=100"], "data.patch"),
    (["loss.metric=ms-ssim"], "data.patch"),  # 64 px crops are too small for MS-SSIM
    (["finetune.freeze=[decoder]"], "finetune.freeze"),
    (["finetune.unfreeze_at={hyper: 5}"], "finetune.unfreeze_at.hyper"),
    (["speed.device=tpu"], "speed.device"),
    (["balance.offset=0.5"], "balance.offset"),
    (["loss.mode=hierarchical", "balance.gamma=[0.1, 0.2]"], "balance.gamma"),
    (["balance.gamma=[0.1, -0.2]"], "balance.gamma"),
    (["lmbda"], "lmbda"),
])
def test_bad_values_name_the_key(folder, sets, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, [*_micro(), f"data.train={folder}", *sets])
    assert str(err.value).startswith(key), str(err.value)


def _micro() -> list[str]:
    return [f"{k}={v}" for k, v in PRESETS["micro"].items()]


def test_unknown_yaml_key_and_missing_folders(tmp_path, folder):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 1e-4\n  milestone: [0.5]\n")
    with pytest.raises(ConfigError, match=r"^optim\.milestone: unknown key"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"^data\.train: folder .*absent"):
        load_config(None, {"data.train": str(tmp_path / "absent")})
    with pytest.raises(ConfigError, match=r"^data\.test: folder"):
        load_config(None, {"data.train": str(folder), "data.test": str(tmp_path / "absent")})
    with pytest.raises(ConfigError, match=r"^finetune\.init: file"):
        load_config(None, {"data.train": str(folder), "finetune.init": str(tmp_path / "x.pt")})
    with pytest.raises(ConfigError, match=r"^config: .*does not exist"):
        load_config(tmp_path / "none.yaml")


def test_gpu_options_refused_on_cpu(folder, monkeypatch):
    import torch

    from lic_core.training import engine
    from lic_core.training.engine import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = validate(from_dict({"data": {"train": str(folder)}, "speed": {"channels_last": True}}))
    with pytest.raises(ConfigError, match=r"^speed\.channels_last: a GPU option"):
        resolve_device(cfg)
    bf16 = validate(from_dict({"data": {"train": str(folder)}, "speed": {"bf16": True}}))
    monkeypatch.setattr(engine, "cpu_bf16", lambda: False)
    with pytest.raises(ConfigError, match=r"^speed\.bf16: oneDNN has no bfloat16 kernels for this CPU"):
        resolve_device(bf16)
    monkeypatch.setattr(engine, "cpu_bf16", lambda: True)
    assert resolve_device(bf16).type == "cpu"
    assert resolve_device(validate(from_dict({"data": {"train": str(folder)}, "speed": {"compile": True}}))).type == "cpu"
    with pytest.raises(ConfigError, match=r"^speed\.compile: 'sometimes' is not true, false or auto"):
        validate(from_dict({"data": {"train": str(folder)}, "speed": {"compile": "sometimes"}}))
    with pytest.raises(ConfigError, match=r"^speed\.device: 'cuda'"):
        resolve_device(validate(from_dict({"data": {"train": str(folder)}, "speed": {"device": "cuda"}})))


def test_cli_prints_config_and_reports_errors(capsys, folder):
    assert main(["--set", "loss.lmbda=0.0483", "--set", "loss.mode=balanced", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "lmbda: 0.0483" in out and "mode: balanced" in out
    assert main(["--set", f"data.train={folder}", "--set", "loss.lmbda=-1"]) == 2
    assert "loss.lmbda: must be > 0" in capsys.readouterr().err


def _float_keys(node, prefix=""):
    from dataclasses import fields, is_dataclass

    for f in fields(node):
        v, key = getattr(node, f.name), f"{prefix}{f.name}"
        if is_dataclass(v):
            yield from _float_keys(v, key + ".")
        elif isinstance(v, float):
            yield key


@pytest.mark.parametrize("bad", ["inf", "-inf", "nan"])
def test_every_float_key_must_be_finite(bad):
    from lic_core.config import TrainConfig, load_config

    keys = list(_float_keys(TrainConfig()))
    assert {"loss.lmbda", "optim.lr", "optim.eps", "balance.w_lr", "balance.gamma"} <= set(keys)
    for key in keys:
        with pytest.raises(ConfigError, match=f"^{key}: must be a finite number"):
            load_config(None, {key: bad}, check_paths=False)


def test_every_architecture_field_is_bounded():
    from lic_core.models.hpcm import CONFIGS, LENGTHS, LIMITS, HPCMConfig
    from dataclasses import asdict, replace

    base = CONFIGS["tiny"]
    for name, (lo, hi) in LIMITS.items():
        n = LENGTHS.get(name)
        for value in (lo - 1, hi + 1, 2.5, True, "8"):
            bad = tuple([value] * n) if n else value
            with pytest.raises(ConfigError, match=f"^{name}="):
                replace(base, **{name: bad})
        if n:
            with pytest.raises(ConfigError, match=f"must be {n} integers"):
                HPCMConfig.from_dict({**asdict(base), name: [lo] * (n + 1)})


def _leaf_keys(node, prefix=""):
    from dataclasses import fields, is_dataclass

    for f in fields(node):
        v, key = getattr(node, f.name), f"{prefix}{f.name}"
        if is_dataclass(v):
            yield from _leaf_keys(v, key + ".")
        else:
            yield key, v


BAD_VALUES = ["{a: 1}", "[[1], {b: 2}]", "-1", "0", "1e400", "-1e400", "nan", "99999999999999999999", "", "x y",
              "true", "null", "[1, 2, 3, 4, 5, 6, 7, 8, 9]"]


def test_every_config_field_with_bad_values_is_a_config_error_or_accepted():
    """Every field of TrainConfig, each with values of the wrong type, sign, size or finiteness:
    the result is a ConfigError naming the key, or a config that validated; never another error.
    Numbers given a mapping must be refused, naming the key."""
    from lic_core.config import TrainConfig, load_config

    keys = list(_leaf_keys(TrainConfig()))
    assert len(keys) > 40
    refused = 0
    for key, default in keys:
        for bad in BAD_VALUES:
            try:
                load_config(None, {key: bad}, check_paths=False)
            except ConfigError as e:
                assert str(e).startswith(key.split(".")[0]), (key, bad, str(e))
                refused += 1
            if isinstance(default, (int, float)) and not isinstance(default, bool) and bad.startswith("{"):
                with pytest.raises(ConfigError, match=f"^{key}"):
                    load_config(None, {key: bad}, check_paths=False)
    assert refused > len(keys) * 4


# ------------------------------------------------------------------------------- one owner per name


def test_modes_and_their_tasks_are_the_objectives_registry():
    from lic_core.training.losses import loss_terms  # noqa: F401  (losses names terms, not modes)
    from lic_core.training.objectives import MODES, OBJECTIVES, TASKS

    assert MODES == tuple(OBJECTIVES) == ("standard", "balanced", "hierarchical", "qp")
    assert TASKS == {m: c.tasks for m, c in OBJECTIVES.items()}
    for mode in MODES:  # every registered mode validates, with one value per task where a list is given
        n = len(TASKS[mode])
        validate(apply_overrides(TrainConfig(), {"loss.mode": mode, "balance.offset": [-1.0] * n}), check_paths=False)
    with pytest.raises(ConfigError, match="loss.mode: 'fancy' is not one of standard, balanced, hierarchical, qp"):
        validate(apply_overrides(TrainConfig(), {"loss.mode": "fancy"}), check_paths=False)


def test_schedule_names_are_the_schedule_module():
    from lic_core import config
    from lic_core.optim.schedules import LR_SCHEDULES, SCHEDULES

    assert config.GAMMA_SCHEDULES == tuple(SCHEDULES) and config.LR_SCHEDULES is LR_SCHEDULES


def test_balance_defaults_are_written_once():
    """gamma and w_lr defaults: optim.balance's constants, which the config, the weighting, the toy
    and notebook 01's parameters (papermill shows literal values there) all equal."""
    import inspect
    import json

    from lic_core.optim import GAMMA, W_LR, TaskWeighting
    from lic_core.optim.toy import ToyConfig
    from lic_core.paths import REPO

    b = TrainConfig().balance
    assert (b.gamma, b.w_lr) == (GAMMA, W_LR) == (ToyConfig().gamma, ToyConfig().w_lr)
    sig = inspect.signature(TaskWeighting).parameters
    assert (sig["gamma"].default, sig["w_lr"].default) == (GAMMA, W_LR)
    nb = json.loads((REPO / "notebooks" / "01_train.ipynb").read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    values: dict = {}
    exec("".join(cell["source"]), {}, values)
    assert (values["gamma"], values["w_lr"]) == (GAMMA, W_LR)


def test_the_engine_runs_the_one_lr_schedule():
    import math

    from lic_core.config import OptimConfig
    from lic_core.optim.schedules import LRSchedule
    from lic_core.training import engine

    assert engine.LRSchedule is LRSchedule
    step = LRSchedule(OptimConfig(lr=1e-4, milestones=[0.5, 0.75], step_lrs=[3e-5, 1e-6]), 100)
    assert [step.factor(t) for t in (0, 49, 50, 75, 100)] == pytest.approx([1, 1, 0.3, 0.01, 0.01])
    cos = LRSchedule(OptimConfig(lr=1e-4, schedule="cosine", min_lr=1e-6), 10)
    assert cos.factor(0) == 1.0 and cos.factor(10) == cos.factor(20) == pytest.approx(0.01)
    assert cos.factor(5) == 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 0.5))
    plateau = LRSchedule(OptimConfig(lr=1e-4, schedule="plateau", patience=1, factor=0.5), 10)
    for v in (1.0, 1.0, 1.0):
        plateau.observe(v)
    assert plateau.factor(3) == 0.5
    again = LRSchedule(OptimConfig(lr=1e-4, schedule="plateau", patience=1, factor=0.5), 10)
    again.load_state_dict(plateau.state_dict())
    assert again.state_dict() == plateau.state_dict()


@pytest.mark.parametrize("name", ["../escape", "a/b", ".."])
def test_run_name_is_one_folder_inside_run_out(name):
    with pytest.raises(ConfigError, match="run.name"):
        load_config(None, [f"run.name={name}"])
