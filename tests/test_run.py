"""The run object: a run folder read back through its typed config, never its folder name."""
from __future__ import annotations

import pytest
import yaml

from lic_core.config import TrainConfig, apply_overrides
from lic_core.errors import ConfigError
from lic_core.training.run import CKPT_DIR, CONFIG_FILE, Run, find_runs, lmbda_key, load_run


def write_run(folder, steps=4, **overrides) -> TrainConfig:
    cfg = apply_overrides(TrainConfig(), {"run.steps": steps, **overrides})
    folder.mkdir(parents=True)
    cfg.to_yaml(folder / CONFIG_FILE)
    return cfg


def test_load_run_reads_the_typed_config_not_the_folder_name(tmp_path):
    run_dir = tmp_path / "standard-l0.5-s9"  # a misleading name: the config decides
    cfg = write_run(run_dir, **{"loss.mode": "balanced", "loss.lmbda": 0.0067, "run.seed": 3,
                                "finetune.init": "base.pt"})
    run = load_run(run_dir)
    assert isinstance(run, Run) and run.config == cfg
    assert (run.mode, run.lmbda, run.seed, run.steps, run.model) == ("balanced", 0.0067, 3, 4, "tiny")
    assert run.stage == "finetune" and run.key == "0.0067"
    assert run.settings() == {"mode": "balanced", "lmbda": 0.0067, "seed": 3}
    assert run.checkpoints == [] and run.latest is None and not run.logged and run.history() == []
    assert run.final == run_dir / CKPT_DIR / "step_00000004.pt"
    (run_dir / CKPT_DIR).mkdir()
    for step in (2, 4):
        (run_dir / CKPT_DIR / f"step_{step:08d}.pt").write_bytes(b"")
    (run_dir / "metrics.jsonl").write_text('{"kind": "train", "step": 2, "loss": 1.0}\n')
    assert run.checkpoints == [run_dir / CKPT_DIR / "step_00000002.pt", run.final] and run.latest == run.final
    assert run.logged and run.history("train") == [{"kind": "train", "step": 2, "loss": 1.0}]


def test_partial_config_keeps_defaults_and_types(tmp_path):
    (tmp_path / CONFIG_FILE).write_text(yaml.safe_dump({"loss": {"lmbda": "1e-3"}, "run": {"seed": 2}}))
    run = load_run(tmp_path)
    assert run.lmbda == 0.001 and isinstance(run.lmbda, float) and run.mode == "standard" and run.stage == "train"


@pytest.mark.parametrize("text", ["_wandb: {value: {}}\n", "loss: {lmbda: 0.1}\n", "- a list\n",
                                  "loss: {lmbda: x}\nrun: {}\n"])
def test_other_yaml_files_are_no_runs(tmp_path, text):
    (tmp_path / CONFIG_FILE).write_text(text)
    with pytest.raises(ConfigError, match=CONFIG_FILE):
        load_run(tmp_path)
    assert find_runs(tmp_path) == []


def test_find_runs_recursive_sorted_and_logged(tmp_path):
    write_run(tmp_path / "b", **{"loss.lmbda": 0.013})
    write_run(tmp_path / "a" / "deep", **{"loss.lmbda": 0.025})
    (tmp_path / "b" / "wandb").mkdir()
    (tmp_path / "b" / "wandb" / CONFIG_FILE).write_text("_wandb: {}\n")
    assert [r.run_dir for r in find_runs(tmp_path)] == [tmp_path / "a" / "deep", tmp_path / "b"]
    (tmp_path / "b" / "metrics.jsonl").write_text("")
    assert [r.lmbda for r in find_runs(tmp_path, logged=True)] == [0.013]
    with pytest.raises(ConfigError, match="does not exist"):
        load_run(tmp_path / "nothing")


def test_lmbda_key_matches_equal_values_from_any_text():
    assert lmbda_key(0.013) == lmbda_key(float("1.3e-2")) == lmbda_key(0.1 * 0.13) == "0.013"
    assert lmbda_key(0.0067) != lmbda_key(0.0068)
