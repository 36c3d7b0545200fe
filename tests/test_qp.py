"""Solution 2: the equality-constrained QP (our derivation) and its training-loop helper."""
from __future__ import annotations

import pytest
import torch

from lic_core.optim import QPWeighting, TaskLossError, solve_qp


def _gram(*gs) -> torch.Tensor:
    g = torch.tensor(gs, dtype=torch.float64)
    return g @ g.T


def test_orthogonal_gradients_closed_form():
    res = solve_qp(_gram([2.0, 0.0], [0.0, 1.0]), ridge=0.0)
    # Q = diag(4, 1): z = Q^-1 1 / 1^T Q^-1 1 = (1/4, 1) / (5/4)
    torch.testing.assert_close(res.z, torch.tensor([0.2, 0.8], dtype=torch.float64))
    assert not res.clipped


def test_general_gradients_satisfy_kkt():
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(4, 30, generator=gen, dtype=torch.float64) + 1.0
    q = g @ g.T
    res = solve_qp(q, ridge=0.0, negative="keep")
    assert res.z.sum().item() == pytest.approx(1.0, abs=1e-12)
    qz = q @ res.z  # stationarity: Q z = mu 1
    torch.testing.assert_close(qz, qz.mean().expand(4), rtol=1e-9, atol=1e-12)
    # the minimum norm over the affine hull: no other affine combination is shorter
    norm = (res.z @ g).norm()
    for _ in range(20):
        other = res.z + torch.randn(4, generator=gen, dtype=torch.float64) * 0.1
        other = other + (1 - other.sum()) / 4
        assert (other @ g).norm() >= norm - 1e-12


def test_singular_q_identical_and_zero_gradients():
    res = solve_qp(_gram([1.0, 2.0], [1.0, 2.0]))  # rank 1: only the ridge makes it solvable
    torch.testing.assert_close(res.z, torch.tensor([0.5, 0.5], dtype=torch.float64))
    res = solve_qp(torch.zeros(3, 3))
    torch.testing.assert_close(res.z, torch.full((3,), 1 / 3))


def test_near_singular_q_is_finite():
    g1 = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    res = solve_qp(_gram(g1.tolist(), (g1 + 1e-9).tolist(), [0.0, 0.0, 1.0]))
    assert torch.isfinite(res.z).all() and res.z.sum().item() == pytest.approx(1.0)
    assert (res.z >= 0).all()


def test_negative_weight_policy():
    q = _gram([1.0, 0.0], [2.0, 0.1])  # min |z1 g1 + z2 g2| with z1 + z2 = 1 has z2 < 0
    keep = solve_qp(q, ridge=0.0, negative="keep")
    assert keep.raw[1] < 0 and keep.z[1] < 0 and not keep.clipped
    assert keep.z.sum().item() == pytest.approx(1.0)
    clip = solve_qp(q, ridge=0.0)
    assert clip.clipped and torch.equal(clip.raw, keep.raw)
    torch.testing.assert_close(clip.z, torch.tensor([1.0, 0.0], dtype=torch.float64))


def test_bad_q():
    with pytest.raises(ValueError, match="square"):
        solve_qp(torch.ones(2, 3))
    with pytest.raises(TaskLossError, match="non-finite"):
        solve_qp(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="negative"):
        solve_qp(torch.eye(2), negative="drop")


def _setup():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    x = torch.randn(8, 5)
    y = model(x)
    losses = torch.stack([(y ** 2).mean() * 3, y[:, 0].abs().mean(), torch.sigmoid(y).mean()])
    return model, losses


def test_qp_weighting_sets_weighted_gradient():
    model, losses = _setup()
    params = list(model.parameters())
    d = losses.detach() + 1 + 1e-8
    per_task = [torch.autograd.grad((losses[i] + 1 + 1e-8).log(), params, retain_graph=True)
                for i in range(3)]
    flat = torch.stack([torch.cat([g.reshape(-1) for g in gs]) for gs in per_task]).double()
    want = solve_qp(flat @ flat.T)
    qp = QPWeighting(3, names=["D", "R1", "R2"])
    res = qp.backward(losses, params)
    torch.testing.assert_close(res.z, want.z)
    torch.testing.assert_close(qp.a, res.z / d.double())
    for i, p in enumerate(params):
        expect = sum(float(z) * gs[i] for z, gs in zip(want.z, per_task))
        torch.testing.assert_close(p.grad, expect)
    assert qp.n_clipped == int(want.clipped)


def test_qp_weighting_unused_parameter_and_bad_loss():
    model, losses = _setup()
    extra = torch.nn.Parameter(torch.ones(3))  # no task depends on it
    qp = QPWeighting(3, names=["D", "R1", "R2"])
    qp.backward(losses, [*model.parameters(), extra])
    assert torch.equal(extra.grad, torch.zeros(3))
    bad = losses.detach().clone()
    bad[2] = float("inf")
    with pytest.raises(TaskLossError, match="'R2'"):
        qp.backward(bad, list(model.parameters()))
    skip = QPWeighting(3, on_bad="skip")
    assert skip.backward(bad, list(model.parameters())) is None and skip.skipped == 1


def test_reduce_sees_the_task_gradient_matrix():
    model, losses = _setup()
    params = list(model.parameters())
    seen = []

    def reduce(g):
        seen.append(g.shape)
        return g * 2  # what two ranks' sum would be: same weights, doubled combined gradient

    want = QPWeighting(3).backward(losses, params)
    grads = [p.grad.clone() for p in params]
    model, losses = _setup()  # the same model and losses, a fresh graph
    params = list(model.parameters())
    got = QPWeighting(3, reduce=reduce).backward(losses, params)
    assert seen == [(3, sum(p.numel() for p in params))]
    torch.testing.assert_close(got.z, want.z)
    for p, g in zip(params, grads):
        torch.testing.assert_close(p.grad, 2 * g)


def test_the_qp_objective_runs_qp_weighting():
    """One Solution 2: the training objective ``qp`` delegates to optim's QPWeighting (averaged
    over ranks), and its checkpoint state is the weighting's clip count."""
    from lic_core.config import TrainConfig, apply_overrides
    from lic_core.training import distributed as ddp
    from lic_core.training.objectives import QP, objective

    cfg = apply_overrides(TrainConfig(), {"loss.mode": "qp", "balance.qp_ridge": 1e-5})
    obj = objective(cfg, torch.device("cpu"))
    assert isinstance(obj, QP) and isinstance(obj.qp, QPWeighting)
    w = obj.qp
    assert w.reduce is ddp.mean and w.ridge == 1e-5 and w.names == ["D", "bpp"]
    model, losses = _setup()
    params = list(model.parameters())
    task = losses[:2]
    assert obj.record() == {} and obj.backward(task, params, 0) is None
    ref = QPWeighting(2, ridge=1e-5)
    grads = [p.grad.clone() for p in params]
    model2, losses2 = _setup()
    ref.backward(losses2[:2], list(model2.parameters()))
    assert torch.equal(w.z, ref.z) and all(torch.equal(a, b.grad) for a, b in zip(grads, model2.parameters()))
    assert obj.record()["z_D"] == float(w.z[0]) and obj.last == (w.z, w.a)
    w.n_clipped = 3
    other = objective(cfg, torch.device("cpu"))
    other.load_state_dict(obj.state_dict())
    assert other.qp.n_clipped == 3 and obj.state_dict() == {"weighting": None, "qp_clipped": 3}
