"""The checkpoint store (checkpoints/<model>/): export, manifest, lookup by mode and λ, and the
workbook finding runs by their config.yaml, never by folder names."""
from __future__ import annotations

import pytest
import torch
import yaml

from lic_core.workbench import store, workbook
from lic_core.errors import ConfigError, LicError
from lic_core.models.hpcm import hpcm, save_checkpoint
from lic_core.models.loading import load_checkpoint


@pytest.fixture()
def folder(tmp_path):
    save_checkpoint(hpcm("tiny"), tmp_path / "run.pt")
    out = tmp_path / "store"
    metas = [{"stage": "trunk", "seed": 0, "lmbda": 0.0067}, {"stage": "base", "seed": 0, "lmbda": 0.025},
             {"stage": "base", "seed": 0, "lmbda": 0.0035}, {"stage": "base", "seed": 1, "lmbda": 0.0035},
             {"stage": "compare", "mode": "balanced", "seed": 0, "lmbda": 0.0035}]
    for i, meta in enumerate(metas):
        store.export(tmp_path / "run.pt", out / f"m{i}.pt", meta)
    return out


def test_models_by_mode_and_seed(folder):
    assert store.models(folder) == {0.0035: folder / "m2.pt", 0.025: folder / "m1.pt"}  # sorted by λ, no trunk
    assert store.models(folder, seed=1) == {0.0035: folder / "m3.pt"}
    assert store.models(folder, "balanced") == {0.0035: folder / "m4.pt"}
    assert workbook.checkpoints_of(folder, "standard") == store.models(folder)
    assert workbook.checkpoint_settings(folder / "m4.pt") == {"mode": "balanced", "lmbda": 0.0035, "seed": 0}
    w = hpcm("tiny").g_a[0].weight  # stored in float16 (in range), loaded as float32
    assert torch.equal(load_checkpoint(folder / "m1.pt").g_a[0].weight, w.half().float())


def test_checked_names_a_changed_file(folder):
    assert store.checked(folder) == folder
    (folder / "m1.pt").write_bytes((folder / "m1.pt").read_bytes() + b"\0")
    with pytest.raises(LicError, match="m1.pt: SHA-256 differs"):
        store.checked(folder)
    with pytest.raises(LicError, match="m1.pt: SHA-256 differs"):
        workbook.shipped_model(folder, 0.025)


def test_shipped_model_names_missing_lambda(folder):
    assert workbook.shipped_model(folder, 0.025) == folder / "m1.pt"
    with pytest.raises(ConfigError, match=r"no standard model at λ 0.013 \(has 0.0035, 0.025\)"):
        workbook.shipped_model(folder, 0.013)


def test_runs_are_found_by_their_config_not_their_folder_name(tmp_path):
    """A run folder renamed by hand keeps its mode and λ: they come from config.yaml."""
    run = tmp_path / "renamed-by-hand"
    (run / "checkpoints").mkdir(parents=True)
    save_checkpoint(hpcm("tiny"), run / "checkpoints" / "step_00000003.pt")
    (run / "config.yaml").write_text(yaml.safe_dump({"loss": {"mode": "balanced", "lmbda": 0.013},
                                                     "run": {"seed": 4}}))
    ckpt = run / "checkpoints" / "step_00000003.pt"
    assert workbook.checkpoints_of(tmp_path, "balanced") == {0.013: ckpt}
    assert workbook.checkpoints_of(tmp_path, "balanced", seed=3) == {}
    assert workbook.checkpoints_of(tmp_path, "standard") == {}
    assert workbook.checkpoint_settings(ckpt) == {"mode": "balanced", "lmbda": 0.013, "seed": 4}
    with pytest.raises(LicError, match="neither in a checkpoint store"):
        workbook.checkpoint_settings(tmp_path / "loose.pt")


def test_quality_levels_and_fingerprints(folder):
    """Quality levels number the standard seed-0 models by λ; a file's weights are found by the
    codec's fingerprint (the same as the loaded model's), SHA-256 checked."""
    from lic_core.coding import codec

    assert store.qualities(folder) == {1: folder / "m2.pt", 2: folder / "m1.pt"}
    assert store.default_quality(folder) == 2
    fp = codec.fingerprint(load_checkpoint(folder / "m1.pt"))
    assert store.file_fingerprint(folder / "m1.pt") == fp
    assert store.shipped_by_fingerprint(fp, folder) == folder / "m2.pt"  # the same weights: the first level
    assert store.shipped_by_fingerprint(b"\0" * 8, folder) is None
    assert store.shipped_by_fingerprint(fp, folder / "nowhere") is None


def test_the_shipped_store_lists_its_models():
    rows = store.shipped_table()
    assert [r["quality"] for r in rows] == list(range(1, len(rows) + 1)) and len(rows) >= 2
    assert [r["lmbda"] for r in rows] == sorted(r["lmbda"] for r in rows)
    assert all(r["bpp"] > 0 and r["psnr"] > 20 for r in rows)  # Kodak, from the study's real bitstreams


@pytest.mark.parametrize("text,match", [
    ("nothex  m0.pt\n", "line 1"),
    ("a" * 64 + "\n", "line 1"),
    ("a" * 64 + "  ../x.pt\n", "line 1"),
    (b"\xff\xfe", "not UTF-8"),
])
def test_a_malformed_manifest_is_one_error(folder, text, match):
    (folder / store.MANIFEST).write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(LicError, match=match):
        store.verify_store(folder)


def test_a_malformed_index_is_one_error(folder):
    (folder / store.INDEX).write_text("[" * 100000)
    with pytest.raises(LicError, match="nested too deeply|not a JSON index"):
        store.read_index(folder)
    (folder / store.INDEX).write_text('{"m0.pt": 3}')
    with pytest.raises(LicError, match="meta objects"):
        store.read_index(folder)


def _run(folder, mode="balanced", lmbda=0.013, seed=0):
    (folder / "checkpoints").mkdir(parents=True)
    save_checkpoint(hpcm("tiny"), folder / "checkpoints" / "step_00000002.pt")
    (folder / "config.yaml").write_text(yaml.safe_dump({"loss": {"mode": mode, "lmbda": lmbda}, "run": {"seed": seed}}))


def test_two_runs_at_one_lambda_are_an_error_naming_both(tmp_path):
    """Which run is a curve's point is the user's choice, never the folder order's."""
    _run(tmp_path / "pretrain" / "a")
    _run(tmp_path / "finetune" / "b", seed=1)
    with pytest.raises(LicError, match=r"^[^\n]*two balanced runs at λ 0.013: .*finetune/b and .*pretrain/a"):
        workbook.checkpoints_of(tmp_path, "balanced")
    assert list(workbook.checkpoints_of(tmp_path, "balanced", seed=1)) == [0.013]


def test_a_store_is_checked_and_never_trained_into(folder):
    """A store's models are SHA-256 checked; a mode it lacks is an error, not short runs in the store."""
    with pytest.raises(LicError, match=r"holds no qp models \(a store is never trained into\)"):
        workbook.runs_for_evaluation(folder, ["standard", "qp"], lambdas=[0.0035], steps=2)
    assert sorted(p.name for p in folder.iterdir()) == ["SHA256SUMS", "index.json"] + [f"m{i}.pt" for i in range(5)]
    (folder / "m1.pt").write_bytes((folder / "m1.pt").read_bytes() + b"\0")
    with pytest.raises(LicError, match="m1.pt: SHA-256 differs"):
        workbook.checkpoints_of(folder, "standard")


def test_one_damaged_store_file_does_not_hide_the_others(folder):
    """Looking a file's weights up by fingerprint skips a damaged model; with no match it names it."""
    fp = store.file_fingerprint(folder / "m1.pt")  # every file of this store holds the same weights
    (folder / "m2.pt").write_bytes(b"not a checkpoint")  # quality 1, the first one tried
    store._FINGERPRINTS.clear()
    assert store.shipped_by_fingerprint(fp, folder) == folder / "m1.pt"
    with pytest.raises(LicError, match=r"^[^\n]*could not be read: .*m2.pt"):
        store.shipped_by_fingerprint(b"\0" * 8, folder)
