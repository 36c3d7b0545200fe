"""Training engine: every mode trains, the loss falls, non-finite steps are skipped, checkpoints
rotate and load, fine-tuning freezes / unfreezes / initialises from ours and the authors' format."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from train_helpers import images, micro_config, no_wandb  # noqa: F401 (fixtures)

from lic_core.config import OptimConfig
from lic_core.errors import CheckpointError
from lic_core.models.authors import authors_name
from lic_core.models.loading import load_checkpoint
from lic_core.optim import CautiousAdam
from lic_core.training import checkpoint as ckpt
from lic_core.training.engine import Trainer, make_optimizer, train
from lic_core.training.logging import load_history


def _params(model, group: str) -> dict[str, torch.Tensor]:
    from lic_core.training.finetune import group_of

    return {n: p.detach().clone() for n, p in model.named_parameters() if group_of(n) == group}


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("mode, tasks, sets", [
    ("standard", ["D", "bpp"], {}),
    ("balanced", ["D", "bpp"], {"balance__gamma_schedule": "linear", "balance__gamma_end": 0.0}),
    ("hierarchical", ["D", "R_z", "R_s1", "R_s2", "R_s3"], {"balance__gamma": [3e-3, 1e-3, 1e-3, 2e-3, 0.0]}),
    ("qp", ["D", "bpp"], {"balance__offset": [-1.0, -0.5]}),
])
def test_every_mode_trains(tmp_path, images, mode, tasks, sets):
    res = train(micro_config(tmp_path, images, loss__mode=mode, run__steps=3, data__test=str(images),
                             data__test_limit=2, run__eval_every=3, **sets))
    rows = load_history(res.run_dir, "train")
    assert [r["step"] for r in rows] == [1, 2, 3] and res.skipped == 0
    for r in rows:
        assert r["bpp"] == pytest.approx(r["R_z"] + r["R_s1"] + r["R_s2"] + r["R_s3"], rel=1e-6)
        assert all(math.isfinite(r[f"task_{t}"]) for t in tasks)
        assert r["lr"] == 1e-3 and r["step_time"] > 0 and r["grad_norm"] > 0
        if mode != "standard":
            assert sum(r[f"z_{t}"] for t in tasks) == pytest.approx(1, abs=1e-6)
            assert all(f"a_{t}" in r for t in tasks)
        if mode in ("balanced", "hierarchical"):
            assert 0 < r["mask_fraction"] <= 1 and f"delta_{tasks[-1]}" in r
    if mode == "balanced":  # linear from 0.003 to 0 over 3 steps
        assert [r["gamma"] for r in rows] == pytest.approx([0.003, 0.002, 0.001])
    if mode == "hierarchical":
        assert rows[0]["gamma_D"] == 3e-3 and rows[0]["gamma_R_s3"] == 0
    (ev,) = load_history(res.run_dir, "eval")
    assert ev["step"] == 3 and ev["psnr"] > 0 and ev["bpp"] > 0
    sd = torch.load(res.checkpoint, weights_only=True)
    assert sd["step"] == 3 and len(sd["rng"]) == 1
    model = load_checkpoint(res.checkpoint)  # a training checkpoint is a model checkpoint too
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), res.model.state_dict().values()))


@pytest.mark.parametrize("mode", ["standard", "balanced"])
def test_loss_falls(tmp_path, wikiphotos_dir, kodak_dir, mode):
    cfg = micro_config(tmp_path, wikiphotos_dir, loss__mode=mode, run__steps=40, data__test=str(kodak_dir),
                       data__test_limit=3, run__eval_every=40)
    tr = Trainer(cfg)
    before = tr.evaluate()
    res = tr.fit()
    after = res.history[-1]
    assert after["step"] == 40
    assert after["loss"] < 0.7 * before["loss"], (before, after)
    assert after["psnr"] > before["psnr"] + 2


def test_nonfinite_loss_and_grad_are_skipped(tmp_path, images):
    tr = Trainer(micro_config(tmp_path, images, loss__mode="balanced", run__steps=5, run__ckpt_every=1))
    calls = {"n": 0}

    def poison_output(mod, args, out):  # call 3 is the first forward of step 2
        calls["n"] += 1
        return out * math.nan if calls["n"] == 3 else out

    tr.model.g_s.register_forward_hook(poison_output)
    p = tr.model.g_a[0].weight
    p.register_hook(lambda g: g * math.inf if tr.step == 3 else g)
    tr.fit(until=3)
    w_before = tr.objective.weighting.logits
    res = tr.fit()
    skips = load_history(res.run_dir, "skip")
    assert [(s["step"], s["reason"]) for s in skips] == [(2, "loss"), (4, "grad_norm")]
    assert res.skipped == 2 and res.step == 5
    rows = load_history(res.run_dir, "train")
    assert [r["step"] for r in rows] == [1, 3, 5] and rows[-1]["skipped"] == 2
    for path in (tmp_path / "run" / "checkpoints").glob("step_*.pt"):
        assert not ckpt.nonfinite_tensors(torch.load(path, weights_only=True))
    # the skipped step 4 changed nothing: compare with step 3's checkpoint
    three = torch.load(tmp_path / "run" / "checkpoints" / "step_00000003.pt", weights_only=True)
    four = torch.load(tmp_path / "run" / "checkpoints" / "step_00000004.pt", weights_only=True)
    assert all(torch.equal(v, four["state_dict"][k]) for k, v in three["state_dict"].items())
    assert torch.equal(three["weighting"]["w"], four["weighting"]["w"])
    assert torch.equal(w_before, four["weighting"]["w"])


def test_checkpoint_refuses_nonfinite_and_keeps_old_file(tmp_path):
    path = tmp_path / "c.pt"
    ckpt.save_atomic({"w": torch.ones(3)}, path)
    with pytest.raises(CheckpointError, match=r"non-finite values in opt\.m"):
        ckpt.save_atomic({"w": torch.ones(3), "opt": {"m": torch.tensor([1.0, math.nan])}}, path)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def test_rotation_keeps_last_k_and_best(tmp_path, images):
    res = train(micro_config(tmp_path, images, run__steps=5, run__ckpt_every=1, run__keep_last=2,
                             run__eval_every=1))
    folder = res.run_dir / "checkpoints"
    assert [s for s, _ in ckpt.step_checkpoints(folder)] == [4, 5]
    best = torch.load(folder / "best.pt", weights_only=True)
    losses = {r["step"]: r["loss"] for r in load_history(res.run_dir, "train")}
    assert best["score"]["best"] == min(losses.values())  # no test folder: the training loss
    assert losses[best["step"]] == min(losses.values())
    assert res.checkpoint == folder / "step_00000005.pt" and res.best == folder / "best.pt"


def test_finetune_init_freeze_and_progressive_unfreeze(tmp_path, images):
    src = train(micro_config(tmp_path, images, run__name="src", run__steps=2)).checkpoint
    cfg = micro_config(tmp_path, images, run__name="ft", run__steps=4, finetune__init=str(src),
                       finetune__freeze=["transform", "hyper"], finetune__unfreeze_at={"hyper": 2},
                       finetune__lr_mult={"context": 0.5}, loss__mode="qp")
    tr = Trainer(cfg)
    loaded = torch.load(src, weights_only=True)["state_dict"]
    assert all(torch.equal(v, loaded[k]) for k, v in tr.model.state_dict().items())
    assert {g["name"]: g["lr"] for g in tr.opt.param_groups} == {"transform": 1e-3, "hyper": 1e-3, "context": 5e-4}
    t0, h0, c0 = (_params(tr.model, g) for g in ("transform", "hyper", "context"))
    tr.fit(until=2)
    assert _same(t0, _params(tr.model, "transform")) and _same(h0, _params(tr.model, "hyper"))
    assert not _same(c0, _params(tr.model, "context"))
    tr.fit()
    assert _same(t0, _params(tr.model, "transform")) and not _same(h0, _params(tr.model, "hyper"))
    assert [r["lr"] for r in load_history(tr.run_dir, "train")] == [1e-3] * 4


def test_finetune_from_authors_format(tmp_path, images):
    src = train(micro_config(tmp_path, images, run__name="src", run__steps=1)).model
    theirs = {"module." + authors_name(k): v for k, v in src.state_dict().items()
              if k in dict(src.named_parameters())}
    torch.save({"state_dict": theirs, "epoch": 3}, tmp_path / "authors.pth.tar")
    tr = Trainer(micro_config(tmp_path, images, run__name="ft", finetune__init=str(tmp_path / "authors.pth.tar")))
    assert tr.init_format == "authors"
    assert all(torch.equal(v, src.state_dict()[k]) for k, v in tr.model.state_dict().items())
    theirs.popitem()
    torch.save(theirs, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match="missing tensor"):
        Trainer(micro_config(tmp_path, images, run__name="ft2", finetune__init=str(tmp_path / "broken.pt")))


def test_bf16_transforms_keep_entropy_math_in_float32(tmp_path, images):
    """The autocast wrapping behind ``speed.bf16`` (CPU autocast works on any CPU; the option itself
    needs oneDNN's AVX-512 kernels): the transforms compute in bfloat16, the rest in float32."""
    from lic_core.config import hpcm_config
    from lic_core.models.hpcm import build
    from lic_core.training.engine import bf16_transforms

    model = build(hpcm_config(micro_config(tmp_path, images)))
    seen = {}

    def spy(name):
        def hook(mod, args, out):
            seen.setdefault(name, out.dtype)
        return hook

    model.g_a[0].register_forward_hook(spy("g_a"))
    model.priors[0].register_forward_hook(spy("prior"))
    bf16_transforms(model, "cpu")
    out = model(torch.rand(1, 3, 64, 64))
    assert seen == {"g_a": torch.bfloat16, "prior": torch.float32}
    assert out["y"].dtype == out["x_hat"].dtype == out["likelihoods"]["y"].dtype == torch.float32
    assert not torch.is_autocast_enabled("cpu")


def test_optimizer_per_mode_and_foreach_checkpoints_resume_as_saved():
    """Adam is torch's fused kernel (standard mode), Cautious Adam the balanced modes'; an Adam
    state saved by the multi-tensor path (runs before the fused one) continues on that path, so
    an old run still resumes bit-identically."""
    o = OptimConfig(lr=1e-2)
    ps = [torch.nn.Parameter(torch.randn(5, 3, generator=torch.Generator().manual_seed(i))) for i in range(2)]
    adam = make_optimizer(ps, o, "standard")
    assert type(adam) is torch.optim.Adam and adam.defaults["fused"]
    assert type(make_optimizer(ps, replace(o, weight_decay=0.1))) is torch.optim.AdamW
    assert isinstance(make_optimizer(ps, o, "balanced"), CautiousAdam)

    def run(opt, params, steps):
        for _ in range(steps):
            opt.zero_grad()
            sum((p**2).sum() for p in params).backward()
            opt.step()

    old = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    a, b = torch.optim.Adam(old, lr=1e-2, foreach=True), torch.optim.Adam(ref, lr=1e-2, foreach=True)
    run(a, old, 3), run(b, ref, 3)
    resumed = make_optimizer(old, o, "standard")
    resumed.load_state_dict(a.state_dict())
    assert resumed.param_groups[0]["foreach"] and not resumed.param_groups[0]["fused"]
    run(resumed, old, 3), run(b, ref, 3)
    assert all(torch.equal(p, q) for p, q in zip(old, ref))
    run(adam, ps, 6)  # the fused kernel: the same update to rounding
    assert all(torch.allclose(p, q, rtol=1e-5, atol=1e-6) for p, q in zip(ps, ref))
