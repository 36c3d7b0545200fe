"""CautiousAdam, TaskWeighting (Solution 1) and gamma schedules."""
from __future__ import annotations

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import skip_or_fail

from lic_core.optim import CautiousAdam, TaskLossError, TaskWeighting
from lic_core.optim.schedules import gamma_schedule
from lic_core.training.engine import compiler_missing


# --------------------------------------------------------------------------- helpers
def _model(dtype=torch.float32) -> torch.nn.Module:
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    m.register_parameter("scalar", torch.nn.Parameter(torch.tensor(0.3)))  # a 0-dim tensor
    return m.to(dtype)


def _losses(model, x) -> torch.Tensor:
    y = model(x) * model.scalar
    return torch.stack([(y ** 2).mean() * 10, y.abs().mean(), F.softplus(y).mean()])


def _reference_cautious(p, grads, lr, betas, eps, wd, cap):
    """The spec's update written out per step, float64 (independent of the optimizer code)."""
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    b1, b2 = betas
    for t, g in enumerate(grads, 1):
        p = p * (1 - lr * wd)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        denom = v.sqrt() / math.sqrt(1 - b2 ** t) + eps
        mask = (m * g > 0).double()
        s = min(1 / max(mask.mean().item(), 1e-3), cap)
        p = p - lr / (1 - b1 ** t) * (m * mask * s) / denom
    return p


# --------------------------------------------------------------------------- CautiousAdam
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_cautious_matches_spec_formula(wd):
    gen = torch.Generator().manual_seed(1)
    p0 = torch.randn(50, generator=gen, dtype=torch.float64)
    grads = [torch.randn(50, generator=gen, dtype=torch.float64) for _ in range(6)]
    p = p0.clone().requires_grad_(True)
    opt = CautiousAdam([p], lr=1e-2, weight_decay=wd)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    want = _reference_cautious(p0, grads, 1e-2, (0.9, 0.999), 1e-8, wd, 10.0)
    torch.testing.assert_close(p.detach(), want, rtol=1e-12, atol=1e-15)


def test_scale_cap_and_mask_fraction():
    p = torch.zeros(100, dtype=torch.float64, requires_grad=True)
    opt = CautiousAdam([p], lr=0.1)
    p.grad = torch.ones(100, dtype=torch.float64)
    opt.step()  # step 1: m = 0.1 g, every entry agrees -> plain Adam step
    assert opt.last_mask_fraction == 1.0
    before = p.detach().clone()
    g = torch.full((100,), -0.5, dtype=torch.float64)  # m = 0.09 - 0.05 > 0: sign disagrees
    g[0] = 1.0  # only entry 0 keeps m*g > 0: mean(mask)=0.01, scale min(100, 10) = 10
    p.grad = g
    opt.step()
    assert opt.last_mask_fraction == pytest.approx(0.01)
    moved = (p.detach() != before).nonzero().flatten().tolist()
    assert moved == [0]
    m, v = 0.9 * 0.1 + 0.1, 0.999 * 0.001 + 0.001
    step = 0.1 / (1 - 0.9 ** 2) * m * 10 / (math.sqrt(v) / math.sqrt(1 - 0.999 ** 2) + 1e-8)
    assert before[0] - p[0].item() == pytest.approx(step, rel=1e-12)
    torch.testing.assert_close(opt.state[p]["exp_avg"][1:], torch.full((99,), 0.04, dtype=torch.float64))


def test_first_step_equals_adamw():
    ma, mb = _model(), _model()
    x = torch.randn(4, 6)
    a = CautiousAdam(ma.parameters(), lr=1e-2, weight_decay=0.01)
    b = torch.optim.AdamW(mb.parameters(), lr=1e-2, weight_decay=0.01)
    for m, o in ((ma, a), (mb, b)):
        _losses(m, x).sum().backward()
        o.step()
    assert a.last_mask_fraction == 1.0
    for pa, pb in zip(ma.parameters(), mb.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-6, atol=1e-7)


def _steps_side_by_side(models, opts, dtype, after=lambda: True) -> None:
    """8 steps of each (model, optimizer) on the same batches; ``after()`` must hold after each."""
    gen = torch.Generator().manual_seed(3)
    for _ in range(8):
        x = torch.randn(5, 6, generator=gen, dtype=dtype)
        for m, o in zip(models, opts):
            o.zero_grad()
            _losses(m, x).sum().backward()
            o.step()
        assert after()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_foreach_and_single_paths_identical(dtype):
    models = [_model(dtype), _model(dtype)]
    opts = [CautiousAdam(m.parameters(), lr=3e-2, weight_decay=0.05, foreach=f)
            for m, f in zip(models, (True, False))]
    _steps_side_by_side(models, opts, dtype)
    for pa, pb in zip(*(m.parameters() for m in models)):
        assert torch.equal(pa, pb)
    assert opts[0].mask_fractions() == opts[1].mask_fractions()
    fracs = opts[0].mask_fractions()
    assert len(fracs) == 5 and min(fracs) < 1.0
    n = [p.numel() for p in models[0].parameters()]
    assert opts[0].last_mask_fraction == pytest.approx(sum(f * k for f, k in zip(fracs, n)) / sum(n))



@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_path_equals_foreach_to_rounding(dtype):
    """``compiled=True`` (what speed.compile gives the balanced modes): the same update in one
    torch.compile'd function, equal to the multi-tensor path to float rounding, with the same masks."""
    if compiler_missing(torch.device("cpu")):
        skip_or_fail(f"no C++ compiler for torch.compile: {compiler_missing(torch.device('cpu'))}", kind="env")
    models = [_model(dtype), _model(dtype)]
    opts = [CautiousAdam(m.parameters(), lr=3e-2, weight_decay=0.05, compiled=c) for m, c in zip(models, (False, True))]
    _steps_side_by_side(models, opts, dtype,
                        after=lambda: opts[0].mask_fractions() == opts[1].mask_fractions())
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for pa, pb in zip(*(m.parameters() for m in models)):
        torch.testing.assert_close(pa, pb, rtol=tol, atol=tol)
    eager = CautiousAdam(models[1].parameters(), lr=3e-2)
    eager.load_state_dict(opts[1].state_dict())  # a compiled run resumed without speed.compile
    assert eager.param_groups[0]["compiled"] is False and eager.state_dict()["state"][0]["step"] == 8

def test_cautious_state_dict_round_trip():
    model = _model()
    opt = CautiousAdam(model.parameters(), lr=1e-2)
    x = torch.randn(4, 6)

    def step(m, o):
        o.zero_grad()
        _losses(m, x).sum().backward()
        o.step()

    for _ in range(3):
        step(model, opt)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    model2 = _model()
    model2.load_state_dict(sd["model"])
    opt2 = CautiousAdam(model2.parameters(), lr=1e-2)
    opt2.load_state_dict(sd["opt"])
    for _ in range(3):
        step(model, opt)
        step(model2, opt2)
    for pa, pb in zip(model.parameters(), model2.parameters()):
        assert torch.equal(pa, pb)


def test_cautious_rejects_bad_hyper_parameters():
    p = [torch.nn.Parameter(torch.zeros(2))]
    for kw in ({"lr": -1}, {"betas": (1.0, 0.9)}, {"scale_cap": 0.5}, {"weight_decay": -1}):
        with pytest.raises(ValueError, match="CautiousAdam"):
            CautiousAdam(p, **kw)
    assert math.isnan(CautiousAdam(p).last_mask_fraction)


# --------------------------------------------------------------------------- TaskWeighting
def _famo_reference_update(w, opt, z_before_losses, after, offsets, gamma):
    """FAMO update as the reference code writes it: autograd softmax VJP, then Adam."""
    delta = (z_before_losses - offsets + 1e-8).log() - (after - offsets + 1e-8).log()
    with torch.enable_grad():
        d = torch.autograd.grad(F.softmax(w, -1), w, grad_outputs=delta)[0]
    opt.zero_grad()
    w.grad = d + gamma * w.detach()
    opt.step()


def test_weighted_loss_gradient_is_sum_of_coefficients():
    model = _model(torch.float64)
    x = torch.randn(4, 6, dtype=torch.float64)
    tw = TaskWeighting(3, dtype=torch.float64)
    tw.w.data = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    losses = _losses(model, x)
    tw.weighted_loss(losses).backward(retain_graph=True)
    got = [p.grad.clone() for p in model.parameters()]
    z = F.softmax(tw.w.detach(), -1)
    d = losses.detach() + 1 + 1e-8
    a = z / ((z / d).sum() * d)
    torch.testing.assert_close(tw.a, a)
    assert tw.a.sum().item() == pytest.approx(1.0)
    model.zero_grad()
    (a * losses).sum().backward()
    for g, p in zip(got, model.parameters()):
        torch.testing.assert_close(g, p.grad)


def test_update_matches_reference_famo():
    tw = TaskWeighting(3, w_lr=0.05, gamma=[0.01, 0.0, 0.003], offsets=[-1.0, 0.0, -2.0],
                       dtype=torch.float64)
    w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    ref = torch.optim.Adam([w], lr=0.05)
    gen = torch.Generator().manual_seed(0)
    offs = torch.tensor([-1.0, 0.0, -2.0], dtype=torch.float64)
    for _ in range(5):
        before = torch.rand(3, generator=gen, dtype=torch.float64) + 0.5
        after = before * (0.8 + 0.4 * torch.rand(3, generator=gen, dtype=torch.float64))
        tw.weighted_loss(before.clone().requires_grad_(True))
        assert tw.update(before, after) is True
        _famo_reference_update(w, ref, before, after, offs,
                               torch.tensor([0.01, 0.0, 0.003], dtype=torch.float64))
        torch.testing.assert_close(tw.w.detach(), w.detach(), rtol=1e-14, atol=1e-16)
    assert tw.steps == 5 and tw.delta is not None
    # a per-step gamma override replaces the configured one
    tw2 = copy.deepcopy(tw)
    tw.update(before, after, gamma=0.5)
    tw2.update(before, after)
    assert not torch.equal(tw.w, tw2.w)


def test_single_task():
    tw = TaskWeighting(1)
    loss = torch.tensor([2.0], requires_grad=True)
    out = tw.weighted_loss(loss)
    out.backward()
    assert tw.z.tolist() == [1.0] and tw.a.item() == pytest.approx(1.0)
    assert out.item() == pytest.approx(3.0 * math.log(3.0))  # z log D / c with c = 1/D
    assert tw.update(torch.tensor([2.0]), torch.tensor([1.5]))
    assert tw.w.tolist() == [0.0]  # the softmax VJP of one logit is 0


def _train(model, opt, tw, xs, variant="faithful"):
    for x in xs:
        opt.zero_grad()
        losses = _losses(model, x)
        if variant == "next":
            tw.update_next_batch(losses.detach())
        tw.weighted_loss(losses).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if variant == "faithful":
            with torch.no_grad():
                tw.update(losses.detach(), _losses(model, x))


def _fresh():
    model = _model()
    return model, CautiousAdam(model.parameters(), lr=1e-2), TaskWeighting(3, names=["D", "a", "b"])


@pytest.mark.parametrize("variant", ["faithful", "next"])
def test_resume_is_bit_identical(variant):
    gen = torch.Generator().manual_seed(5)
    xs = [torch.randn(4, 6, generator=gen) for _ in range(10)]
    full = _fresh()
    _train(*full, xs, variant)

    first = _fresh()
    _train(*first, xs[:6], variant)
    buf = io.BytesIO()
    torch.save({"model": first[0].state_dict(), "opt": first[1].state_dict(),
                "tw": first[2].state_dict()}, buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    resumed = _fresh()
    resumed[0].load_state_dict(sd["model"])
    resumed[1].load_state_dict(sd["opt"])
    resumed[2].load_state_dict(sd["tw"])
    _train(*resumed, xs[6:], variant)

    for pa, pb in zip(full[0].parameters(), resumed[0].parameters()):
        assert torch.equal(pa, pb)
    assert torch.equal(full[2].w, resumed[2].w)
    assert full[2].steps == resumed[2].steps == (10 if variant == "faithful" else 9)
    for k in ("exp_avg", "exp_avg_sq", "step"):
        assert torch.equal(full[2].opt.state[full[2].w][k], resumed[2].opt.state[resumed[2].w][k])


def test_next_batch_pairs_previous_losses():
    tw, ref = TaskWeighting(2), TaskWeighting(2)
    l1, l2 = torch.tensor([3.0, 1.0]), torch.tensor([2.5, 1.2])
    assert tw.update_next_batch(l1) is False  # nothing stored yet
    tw.weighted_loss(l1)
    assert tw.update_next_batch(l2) is True
    ref.update(l1, l2)
    assert torch.equal(tw.w, ref.w)


def test_load_state_dict_rejects_other_tasks():
    sd = TaskWeighting(2, names=["D", "R"]).state_dict()
    with pytest.raises(ValueError, match="tasks"):
        TaskWeighting(2, names=["D", "R_z"]).load_state_dict(sd)


@pytest.mark.parametrize("bad,match", [(float("nan"), "nan"), (float("inf"), "inf"),
                                       (-1.0, "at or below its offset"), (-3.0, "offset")])
def test_bad_loss_raises_naming_task(bad, match):
    tw = TaskWeighting(3, names=["D", "R_z", "R_s1"])
    losses = torch.tensor([1.0, bad, 0.5])
    with pytest.raises(TaskLossError, match=f"'R_z'.*{match}"):
        tw.weighted_loss(losses)
    with pytest.raises(TaskLossError, match="losses_after.*'R_z'"):
        tw.update(torch.tensor([1.0, 1.0, 1.0]), losses)
    assert tw.steps == 0 and tw.w.tolist() == [0.0, 0.0, 0.0]


def test_bad_loss_skip_leaves_state_untouched():
    tw = TaskWeighting(2, on_bad="skip", names=["D", "R"])
    tw.weighted_loss(torch.tensor([2.0, 1.0]))
    tw.update(torch.tensor([2.0, 1.0]), torch.tensor([1.5, 1.1]))
    snap = copy.deepcopy(tw.state_dict())
    assert tw.weighted_loss(torch.tensor([float("nan"), 1.0])) is None
    assert tw.update(torch.tensor([2.0, 1.0]), torch.tensor([1.0, -1.5])) is False
    assert tw.update_next_batch(torch.tensor([1.0, float("inf")])) is False
    assert tw.skipped == 3 and "'R'" in tw.last_skip
    after = tw.state_dict()
    assert torch.equal(after["w"], snap["w"]) and torch.equal(after["prev_losses"], snap["prev_losses"])
    for k in ("exp_avg", "exp_avg_sq", "step"):
        assert torch.equal(after["opt"]["state"][0][k], snap["opt"]["state"][0][k])


def test_bad_configuration():
    with pytest.raises(ValueError, match="on_bad"):
        TaskWeighting(2, on_bad="ignore")
    with pytest.raises(ValueError, match="gamma"):
        TaskWeighting(2, gamma=[0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="names"):
        TaskWeighting(2, names=["D"])
    with pytest.raises(ValueError, match="expected 2 task losses"):
        TaskWeighting(2).weighted_loss(torch.ones(3))


def test_dtype_cast_and_log_dict():
    tw = TaskWeighting(2, names=["D", "R"], dtype=torch.float64)
    loss = torch.tensor([1.0, 2.0], requires_grad=True)
    tw.weighted_loss(loss).backward()
    assert loss.grad is not None and loss.grad.dtype == torch.float32
    tw.update(torch.tensor([1.0, 2.0]), torch.tensor([0.9, 2.1]))
    logs = tw.log_dict()
    assert set(logs) == {f"tw/{k}_{n}" for k in ("z", "a", "delta", "w") for n in ("D", "R")}
    assert logs["tw/z_D"] + logs["tw/z_R"] == pytest.approx(1.0)


# --------------------------------------------------------------------------- schedules
def test_gamma_schedules():
    total = 100
    assert [gamma_schedule("constant", 0.003, total)(t) for t in (0, 50, 200)] == [0.003] * 3
    lin = gamma_schedule("linear", 0.004, total, end=0.001)
    assert (lin(0), lin(50), lin(100), lin(500)) == pytest.approx((0.004, 0.0025, 0.001, 0.001))
    cos = gamma_schedule("cosine", 0.004, total)
    assert (cos(0), cos(50), cos(100)) == pytest.approx((0.004, 0.002, 0.0))
    st = gamma_schedule("step", 1.0, total, milestones=[0.5, 80], factor=0.5)
    assert [st(t) for t in (0, 49, 50, 79, 80, 99)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    assert lin(37) == gamma_schedule("linear", 0.004, total, end=0.001)(37)  # pure in (step, total)
    with pytest.raises(ValueError, match="unknown gamma schedule"):
        gamma_schedule("exp", 0.1, total)
    with pytest.raises(ValueError, match="total_steps"):
        gamma_schedule("linear", 0.1, 0)
