"""The benchmark scripts' own logic: per-round ratios, and the in-process shims that let
``bench_model.py --authors`` load an unmodified checkout of the authors' code on a CPU-only
machine with another Python than their compiled coder's."""
from __future__ import annotations

import copy
import importlib
import os
import subprocess
import sys

import pytest
import torch

from lic_core.coding import codec
from lic_core.models.loading import load_checkpoint
from lic_core.paths import REPO
from lic_core.training.engine import cpu_bf16

sys.path.insert(0, str(REPO / "benchmarks"))
bench_model = importlib.import_module("bench_model")
cross_cpu = importlib.import_module("cross_cpu")

FAKE_INIT = "from ._CXX import pmf_to_quantized_cdf as _pmf\nfrom .unbounded_ans import ubransEncoder\n"
FAKE_MODEL = '''import torch
from src.entropy_models import _pmf


class HPCM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.quant = torch.nn.Parameter(torch.ones((1, 3, 1, 1), device="cuda"))
'''


def test_per_round_ratio_ignores_one_burst():
    ours, theirs = [1.0, 1.0, 5.0, 1.0, 1.0], [1.2, 1.1, 1.0, 1.25, 1.2]  # round 3: a burst hit ours
    med, lo, hi = bench_model.per_round(ours, theirs)
    assert med == pytest.approx(1 / 1.2) and hi == pytest.approx(5.0) and lo == pytest.approx(1 / 1.25)


def test_authors_shims_load_an_unmodified_checkout(tmp_path, monkeypatch):
    """A checkout shaped like theirs: a package importing compiled modules that this Python cannot
    load, and a model that puts a parameter on 'cuda'."""
    pkg = tmp_path / "src"
    (pkg / "entropy_models").mkdir(parents=True)
    (pkg / "models").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "entropy_models" / "__init__.py").write_text(FAKE_INIT)
    (pkg / "entropy_models" / "_CXX.cpython-38-x86_64-linux-gnu.so").write_bytes(b"\x7fELF")
    (pkg / "models" / "__init__.py").write_text("")
    (pkg / "models" / "fake.py").write_text(FAKE_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m == "src" or m.startswith("src.")]:
        monkeypatch.delitem(sys.modules, name)
    factory = torch.ones
    with bench_model.authors_shims():
        model = importlib.import_module("src.models.fake").HPCM()
    assert model.quant.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert torch.ones is factory  # torch's factories are restored after loading
    with pytest.raises(RuntimeError, match="stub put in by bench_model.py"):
        sys.modules["src.entropy_models._CXX"].pmf_to_quantized_cdf([0.5, 0.5], 16)
    for name in [m for m in sys.modules if m == "src" or m.startswith("src.")]:
        sys.modules.pop(name)


def test_gpu_check_runs_on_cpu_at_smoke_size(tmp_path, kodak_dir, wikiphotos_dir):
    """The GPU script's whole code path, at smoke sizes on the CPU, so it is known to work before a
    GPU is lent; GPU-only options are reported as refused, cross-device as skipped."""
    gpu_check = importlib.import_module("gpu_check")
    out = tmp_path / "gpu.md"
    assert gpu_check.main(["--device", "cpu", "--smoke", "--out", str(out)]) == 0
    text = out.read_text()
    for section in ("## train options", "## coding", "## cross-device", "## throughput"):
        assert section in text
    assert "Failed" not in text and "Skipped: one device only" in text
    assert "| fp32 |" in text and "| tiny 1x128px |" in text and "| channels_last | refused |" in text
    assert ("| bf16 | refused |" in text) != cpu_bf16()  # timed where oneDNN has bf16 kernels
    assert "| compile | refused | - | not timed in --smoke on a CPU" in text  # minutes of compiling on 2 cores
    coding = [line for line in text.splitlines() if line.startswith("| 0.")]
    assert len(coding) == len(gpu_check.CODING_FACTORS) and all(line.endswith("| 0 |") for line in coding)  # on
    # one CPU every decode is the encoder's image (format version 3's image check stays silent)


def test_bench_train_engine_and_modes_tables_at_smoke_size(wikiphotos_dir, capsys):
    """Both tables print a row per variant with a per-round ratio (what the README's tables use).
    Whole runs are timed without the compiled variant here: it compiles in each of its processes
    (minutes on 2 cores); tests/test_train_compile.py checks the compiled engine."""
    bench_train = importlib.import_module("bench_train")
    assert bench_train.main(["--micro", "--engine", "--modes", "standard", "--variants", "no cache,cache",
                             "--steps", "1", "--rounds", "1", "--batch", "1"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("  ")[0] for line in out.splitlines() if line.startswith("standard/")}
    assert rows == {"standard/no cache", "standard/cache"}, rows
    with pytest.raises(SystemExit):
        bench_train.main(["--micro", "--engine", "--variants", "cache,warp"])
    assert "--variants: unknown ['warp']" in capsys.readouterr().err
    assert all("," not in name for name in bench_train.ENGINE)  # the default --variants is their comma list
    assert "without the photo cache" in out and "commit " in out
    assert bench_train.main(["--micro", "--modes", "standard,balanced", "--steps", "1", "--rounds", "1",
                             "--warmup", "0", "--batch", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("standard", "balanced"))]
    assert len(rows) == 2 and rows[0].split()[-2] == "1.00"


def test_bench_train_speed_times_the_second_forward_alone(wikiphotos_dir, capsys):
    """--speed adds Solution 1's second forward, timed alone on the standard trainer, with its ratio
    to the standard step of the same option (the floor of the faithful step's overhead)."""
    bench_train = importlib.import_module("bench_train")
    assert bench_train.main(["--micro", "--speed", "--options", "fp32", "--modes", "standard,balanced",
                             "--steps", "1", "--rounds", "2", "--warmup", "0", "--batch", "1"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("  ")[0]: line.split() for line in out.splitlines() if "/fp32" in line}
    assert list(rows) == ["standard/fp32", "balanced/fp32", "second forward/fp32"], rows
    assert float(rows["second forward/fp32"][-2]) > 0  # a ratio was measured (its size is not asserted)
    assert "the least the faithful step adds" in out
    with pytest.raises(SystemExit):
        bench_train.main(["--micro", "--speed", "--options", "fp32,warp"])
    assert "--options: unknown or not run on this device: ['warp']" in capsys.readouterr().err


def test_side_by_side_rows_per_variant_of_ours():
    """Every variant of ours gets its own ratios to the same 'theirs' (here a copy of ours: the
    float32 row gives the same image, the bf16 row a different one)."""
    from lic_core.models.hpcm import hpcm

    ours = hpcm("tiny").eval()
    res = bench_model.side_by_side(bench_model.variants(ours, bf16=True), copy.deepcopy(ours), 1, 128, 128, 128, 1)
    assert list(res) == ["ours", "ours, speed.bf16"]
    assert res["ours"]["x_hat max diff"] == 0.0 < res["ours, speed.bf16"]["x_hat max diff"]
    for r in res.values():
        assert r["train"] > 0 and r["eval theirs"] > 0 and len(r["train ratio"]) == 3


def test_profile_step_splits_convolutions_from_the_rest():
    from lic_core.models.hpcm import hpcm

    table, conv, rest = bench_model.profile_step(hpcm("tiny"), 1, 128)
    assert "convolution" in table and conv > 0 and rest > 0


def test_layers_table_lists_every_conv1x1_shape():
    """``--layers``: one row per Conv1x1 input shape of a tiny train step, call counts adding up to
    the model's Conv1x1 calls, and a total row."""
    from lic_core.models.hpcm import hpcm

    model = hpcm("tiny")
    calls = bench_model.conv1x1_calls(model, 1, 128)
    rows = bench_model.layers_table(model, 1, 128, 1)
    body = rows[2:-1]
    assert len(body) == len(calls) and sum(int(r.split("|")[3]) for r in body) == sum(calls.values())
    assert rows[-1].startswith("| all, weighted by calls |") and len(rows[-1].split("|")) == len(rows[0].split("|"))


def test_optimizer_step_table_times_every_path(capsys):
    """``bench_optim.py --optimizer-step``: opt.step() alone for torch's Adam paths and Cautious
    Adam's, each on its own copy of the parameters; the engine's are among them (--quick leaves out
    the compiled one: minutes of compiling on 2 cores; tests/test_optim.py checks its numbers)."""
    bench_optim = importlib.import_module("bench_optim")
    assert bench_optim.main(["--optimizer-step", "--config", "tiny", "--quick", "--device", "cpu"]) == 0
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| ") and "---" not in r][1:]
    assert [r.split(" | ")[0][2:] for r in rows] == [n for n in bench_optim.OPTIMIZERS if "compiled" not in n]
    assert rows[0].endswith("| 1.00 (1.00-1.00) |") and all(float(r.split(" | ")[1]) > 0 for r in rows)


_DECODE_ELSEWHERE = """
import sys, torch
sys.path.insert(0, "benchmarks")
from cross_cpu import decode_outcome
from lic_core.models.loading import load_checkpoint
model = load_checkpoint(sys.argv[1]).eval()
print(torch.backends.cpu.get_cpu_capability(), decode_outcome(open(sys.argv[2], "rb").read(), model, torch.load(sys.argv[3])))
"""


def test_a_file_decoded_on_a_lesser_cpu_is_exact_or_says_so(tmp_path):
    """A file that travels to another CPU: a process whose PyTorch, oneDNN and MKL are capped at SSE4
    (below any x86 CI machine's own) decodes a file encoded here with a shipped model. Its image is
    the encoder's, or the decoder warns or refuses: never a different image without a word."""
    ckpt = REPO / "checkpoints" / "tiny" / "base-l0.0035-s0.pt"
    model = load_checkpoint(ckpt).eval()
    data = codec.compress(model, torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(3)))
    (tmp_path / "a.hpcm").write_bytes(data)
    torch.save(codec.decompress(data, model), tmp_path / "ref.pt")
    run = subprocess.run([sys.executable, "-c", _DECODE_ELSEWHERE, str(ckpt), str(tmp_path / "a.hpcm"),
                          str(tmp_path / "ref.pt")], cwd=REPO, env={**os.environ, **cross_cpu.LIMITS["sse4"]},
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    capability, outcome = run.stdout.split()
    print(f"encoded on {torch.backends.cpu.get_cpu_capability()}, decoded on {capability}: {outcome}")
    assert capability == "DEFAULT" and outcome in ("identical", "warned", "refused")


def test_the_cross_cpu_results_name_their_code_machine_load_and_command():
    lines = cross_cpu.header(["benchmarks/cross_cpu.py", "--version", "5", "--kodak", "24"])
    assert all(ln.startswith("# ") for ln in lines)
    assert lines[0] == "# $ python benchmarks/cross_cpu.py --version 5 --kodak 24"
    assert "commit " in lines[1] and "cores" in lines[1] and " UTC" in lines[1] and "load average" in lines[2]
    assert cross_cpu._odd_ones({"kodim01": "identical", "kodim02": "refused"}) == "  (kodim02 refused)"
