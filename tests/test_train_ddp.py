"""Data-parallel parity under torchrun: two CPU processes (gloo) train the same runs; afterwards
the replicas' parameters are identical (max difference exactly 0) and so are the task weights on
every rank (losses, and QP gradients, are averaged over ranks before the weights are computed);
a run stopped and resumed under DDP ends bit-identical to an uninterrupted one."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_helpers import smooth_images

MODES = ("balanced", "qp", "standard")
TESTS = Path(__file__).resolve().parent

# One torchrun worker: the engine joins the process group from torchrun's environment.
WORKER = """
import os, sys
from pathlib import Path
import torch
sys.path.insert(0, {tests!r})
from train_helpers import micro_config
from lic_core.training import distributed
from lic_core.training.engine import Trainer

torch.set_num_threads(1)
tmp, images, rank = Path({tmp!r}), Path({images!r}), int(os.environ["RANK"])
for mode in {modes!r}:
    tr = Trainer(micro_config(tmp, images, run__name=mode, loss__mode=mode, run__steps=3,
                              run__ckpt_every=3, data__batch=1))
    res = tr.fit()
    obj = tr.objective
    weights = obj.weighting.logits if hasattr(obj, "weighting") else obj.last[0] if getattr(obj, "last", None) is not None else None
    torch.save({{"params": res.model.state_dict(), "history": res.history, "weights": weights}},
               tmp / f"{{mode}}-rank{{rank}}.pt")
# resume under DDP: "cut" stops after step 3 (last checkpoint: step 2), a new Trainer resumes it
for name, until in (("full", None), ("cut", 3)):
    cfg = micro_config(tmp, images, run__name=f"resume-{{name}}", loss__mode="balanced", run__steps=5,
                       run__ckpt_every=2, data__batch=1)
    if until:
        Trainer(cfg).fit(until=until)
    tr = Trainer(cfg)
    start = tr.step
    res = tr.fit()
    torch.save({{"params": res.model.state_dict(), "weights": tr.objective.weighting.logits, "start": start}},
               tmp / f"resume-{{name}}-rank{{rank}}.pt")
distributed.teardown()
"""


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    images = smooth_images(tmp / "imgs")
    script = tmp / "worker.py"
    script.write_text(WORKER.format(tests=str(TESTS), tmp=str(tmp), images=str(images), modes=MODES))
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp


@pytest.mark.parametrize("mode", MODES)
def test_replicas_identical(ranks, mode):
    r0, r1 = (torch.load(ranks / f"{mode}-rank{r}.pt", weights_only=True) for r in (0, 1))
    for k, v in r0["params"].items():
        assert (v - r1["params"][k]).abs().max() == 0, k
    sd = torch.load(ranks / mode / "checkpoints" / "step_00000003.pt", weights_only=True)
    assert len(sd["rng"]) == 2 and not torch.equal(sd["rng"][0]["torch"], sd["rng"][1]["torch"])
    assert all(torch.equal(v, sd["state_dict"][k]) for k, v in r0["params"].items())
    rows = [r for r in r0["history"] if r["kind"] == "train"]
    assert [r["step"] for r in rows] == [1, 2, 3] and r1["history"] == []  # rank 0 logs
    if mode != "standard":
        assert all(r["z_D"] + r["z_bpp"] == pytest.approx(1) for r in rows)


@pytest.mark.parametrize("mode", ["balanced", "qp"])
def test_task_weights_identical_on_every_rank(ranks, mode):
    """Losses (and QP gradients) are averaged over ranks before the weights are computed."""
    r0, r1 = (torch.load(ranks / f"{mode}-rank{r}.pt", weights_only=True) for r in (0, 1))
    assert torch.equal(r0["weights"], r1["weights"])
    z = torch.softmax(r0["weights"], -1) if mode == "balanced" else r0["weights"]
    last = [r for r in r0["history"] if r["kind"] == "train"][-1]
    if mode == "balanced":  # the logged z precede the last logit update: compare the checkpoint
        sd = torch.load(ranks / mode / "checkpoints" / "step_00000003.pt", weights_only=True)
        assert torch.equal(sd["weighting"]["w"], r0["weights"]) and r0["weights"].abs().max() > 0
    else:
        assert float(z[0]) == pytest.approx(last["z_D"])


def test_resume_under_ddp_is_bit_identical(ranks):
    """Each rank restores its own RNG state: the resumed run equals the uninterrupted one on both ranks."""
    for rank in (0, 1):
        full, cut = (torch.load(ranks / f"resume-{n}-rank{rank}.pt", weights_only=True) for n in ("full", "cut"))
        assert full["start"] == 0 and cut["start"] == 2
        assert torch.equal(full["weights"], cut["weights"])
        for k, v in full["params"].items():
            assert torch.equal(v, cut["params"][k]), (rank, k)
