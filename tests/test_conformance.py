"""HPCM Base / Large against the authors' function: the conformance vectors of
``reference/hpcm`` (CONFORMANCE.md), with weights from its deterministic rule loaded through our
converter of the authors' tensor names, on the kodim23 centre crop, at the stated tolerances."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lic_core.models import conformance

pytestmark = pytest.mark.slow


def check_checksums(sd: dict[str, torch.Tensor], npz) -> None:
    assert list(sd) == [str(n) for n in npz["param_names"]]
    for i, (key, val) in enumerate(sd.items()):
        v = val.double().flatten()
        assert v.sum().item() == pytest.approx(npz["param_sum"][i], rel=1e-6, abs=1e-9), key
        assert v.square().sum().sqrt().item() == pytest.approx(npz["param_l2"][i], rel=1e-6), key
        assert val.flatten()[0].item() == npz["param_first"][i], key
        assert val.flatten()[-1].item() == npz["param_last"][i], key


def run(reference_dir: Path, kodak_dir: Path, name: str) -> tuple[dict, dict, torch.nn.Module]:
    npz, ours, model = conformance.run_model(name, reference_dir, kodak_dir)
    check_checksums(conformance.authors_state_dict(reference_dir / "hpcm", name), npz)
    if "x" in npz:
        assert np.array_equal(conformance.kodim23_crop(kodak_dir).numpy(), npz["x"])
    return npz, ours, model


@pytest.fixture(scope="module")
def base(reference_dir, kodak_dir):
    return run(reference_dir, kodak_dir, "base")


@pytest.fixture(scope="module")
def large(reference_dir, kodak_dir):
    return run(reference_dir, kodak_dir, "large")


def compare(ref: dict, ours: dict, name: str) -> None:
    diff = conformance.difference(ref[name], ours[name], name)
    assert diff <= conformance.TOLERANCE[name], f"{name}: difference {diff:.3g}"


@pytest.mark.parametrize("name", [*conformance.CLOSE, *conformance.EXACT, *conformance.LIKELIHOODS])
def test_base_arrays(base, name):
    ref, ours, _ = base
    compare(ref, ours, name)


def test_base_schedule(base):
    ref, ours, model = base
    masks = model.step_masks(16, 32).numpy()
    assert np.array_equal(masks, ref["step_masks"])
    assert np.array_equal(masks.argmax(0).astype(np.int8), ref["step_of_position"])
    bits = [-np.log2(ours["y_likelihoods"][0][m].astype(np.float64)).sum() for m in masks]
    np.testing.assert_allclose(bits, ref["bits_per_step"], rtol=1e-4)


def test_base_decoder_path(base):
    """CONFORMANCE.md Sec. 6: decode from the reference symbols in step order."""
    ref, _, model = base
    z_q, y_q = torch.from_numpy(ref["z_q"]), torch.from_numpy(ref["y_q"])
    with torch.no_grad():
        params = model.hyper_synthesis(z_q + model.means_hyper)
        got = model.context_model(params, lambda k, scales, means, mask: y_q + means)
        got["x_hat"] = model.synthesis(got["y_hat"])
    for name in ("means_hat", "scales_hat", "y_hat", "x_hat"):
        compare(ref, {name: got[name].numpy()}, name)


@pytest.mark.parametrize("name", ["x_hat", *conformance.LIKELIHOODS])
def test_large_arrays(large, name):
    ref, ours, _ = large
    compare(ref, ours, name)


def test_command_prints_every_difference(reference_dir, capsys):
    """``python -m lic_core conformance`` prints the numbers the README quotes (fast parts here)."""
    from lic_core.analysis.conformance import main

    assert main(["--parts", "entropy,toy"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6 and all(line.endswith("ok") for line in lines)
    assert main(["--parts", "nope"]) == 2
