"""Task re-weighting of Balanced R-D optimization (Zhang et al., CVPR 2025, arXiv 2502.20161).

* :class:`TaskWeighting`: Solution 1, FAMO (Liu et al., NeurIPS 2023) log-loss weighting with
  softmax logits trained by Adam, usable around any model optimizer.
* :func:`solve_qp`, :class:`QPWeighting`: Solution 2, the equality-constrained quadratic program
  the paper describes for fine-tuning. Its code is not public: the formulation here is **our
  derivation** of the paper's description (``shared/spec/BALANCED.md``).

Bad task losses (NaN / inf, or a loss at or below its offset, where ``log D`` is undefined) follow
the ``on_bad`` policy: ``"raise"`` raises :class:`TaskLossError` naming the task; ``"skip"``
touches nothing (logits, logit-Adam moments, stored losses) and reports the skip (``weighted_loss``
returns ``None`` so the caller skips backward and the model step; ``update`` returns ``False``);
:attr:`TaskWeighting.skipped` counts skips and :attr:`TaskWeighting.last_skip` says why.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from lic_core.errors import LicError

__all__ = ["GAMMA", "W_LR", "TaskLossError", "TaskWeighting", "QPResult", "solve_qp", "QPWeighting",
           "as_list"]

# Defaults of Solution 1, the reference training script's (BALANCED.md): every other default
# (TrainConfig's balance section, the toy, the notebooks' parameters) is one of these.
GAMMA = 0.003  # logit decay
W_LR = 0.025  # learning rate of the logit Adam
EPS_D = 1e-8  # added to L - offset before the log, as in the reference code
ON_BAD = ("raise", "skip")


def as_list(v: float | Sequence[float]) -> list[float]:
    """A per-task setting (one number, or one per task) as a list."""
    return list(v) if isinstance(v, (list, tuple)) else [v]


class TaskLossError(LicError, ValueError):
    """A task loss that is NaN / inf, or at or below its offset (``log D`` undefined)."""


def _per_task(value: float | Sequence[float] | Tensor, k: int, what: str, **kw) -> Tensor:
    t = torch.as_tensor(value, **kw).detach().clone()
    if t.dim() == 0:
        t = t.expand(k).clone()
    if t.shape != (k,):
        raise ValueError(f"{what}: expected a number or {k} values, got shape {tuple(t.shape)}")
    return t


class _LossCheck:
    """Shared bad-input policy of both weightings (see the module docstring)."""

    def __init__(self, n_tasks: int, offsets, names: Sequence[str] | None, on_bad: str, **kw):
        if n_tasks < 1:
            raise ValueError(f"n_tasks must be >= 1, got {n_tasks}")
        if on_bad not in ON_BAD:
            raise ValueError(f"on_bad must be one of {ON_BAD}, got {on_bad!r}")
        self.n_tasks, self.on_bad = n_tasks, on_bad
        self.names = list(names) if names is not None else [f"task{i}" for i in range(n_tasks)]
        if len(self.names) != n_tasks:
            raise ValueError(f"names: expected {n_tasks} names, got {self.names}")
        self.offsets = _per_task(offsets, n_tasks, "offsets", **kw)
        self.skipped = 0
        self.last_skip: str | None = None

    def _problem(self, named: dict[str, Tensor]) -> str | None:
        for what, losses in named.items():
            if losses.shape != (self.n_tasks,):
                raise ValueError(f"{what}: expected {self.n_tasks} task losses {self.names}, "
                                 f"got shape {tuple(losses.shape)}")
        # one device->host copy for every tensor checked
        rows = torch.stack([t.detach().double() for t in named.values()]).tolist()
        offs = self.offsets.double().tolist()
        for what, vals in zip(named, rows):
            for name, v, m in zip(self.names, vals, offs):
                if not math.isfinite(v):
                    return f"{what}: task loss {name!r} is {v}"
                if v <= m:
                    return f"{what}: task loss {name!r} = {v} is at or below its offset {m} (log undefined)"
        return None

    def _accept(self, named: dict[str, Tensor], where: str) -> bool:
        """True when the losses are usable; otherwise raise or record a skip per ``on_bad``."""
        problem = self._problem(named)
        if problem is None:
            return True
        if self.on_bad == "raise":
            raise TaskLossError(f"{where}: {problem}")
        self.skipped += 1
        self.last_skip = f"{where}: {problem}"
        return False

    def _log_d(self, losses: Tensor) -> Tensor:
        return (losses - self.offsets.to(losses) + EPS_D).log()


class TaskWeighting(_LossCheck):
    """FAMO task weighting, Solution 1 of Balanced R-D (spec steps 2 and 6).

    Per step: ``z = softmax(w)``, ``D_i = L_i - m_i + 1e-8``, ``c = sum_i z_i/D_i`` (detached),
    ``loss = sum_i z_i log(D_i) / c``: its gradient is ``sum_i a_i grad L_i`` with
    ``a_i = z_i / (c D_i)``, ``sum a = 1``. After the model step, with ``L_new`` from a second
    forward on the same batch: ``delta_i = log D_i(L) - log D_i(L_new)``,
    ``d = z * (delta - <z, delta>)`` (softmax VJP), ``d += gamma * w``, one Adam step on ``w``.

    Training-loop order (faithful variant, the reference)::

        L = task_losses(model(x))                    # step 1
        loss = tw.weighted_loss(L); loss.backward()  # step 2
        clip_grad_norm_(...); opt.step()             # steps 3-4
        with torch.no_grad(): L_new = task_losses(model(x))   # step 5, same batch, train mode
        tw.update(L.detach(), L_new)                 # step 6

    Next-batch variant (ours, not the reference; removes the second forward): take ``L_new``
    from the *next* batch's forward, i.e. call ``tw.update_next_batch(L)`` with that step's
    losses just before ``tw.weighted_loss(L)``. It is only used when called explicitly.

    Args:
        n_tasks: K >= 1 (K = 1 gives z = a = 1 and a loss ``log D``).
        w_lr: learning rate of the logit Adam (betas (0.9, 0.999), eps 1e-8, no decay of its own).
        gamma: logit decay, a number or one per task; ``update(..., gamma=)`` overrides per step.
            None: no default, every update names it (a trainer that schedules gamma owns it).
        offsets: the minimum losses ``m`` (default -1 for every task).
        names: task names for messages and logs.
        on_bad: ``"raise"`` or ``"skip"`` (module docstring).
    """

    def __init__(
        self,
        n_tasks: int,
        w_lr: float = W_LR,
        gamma: float | Sequence[float] | None = GAMMA,
        offsets: float | Sequence[float] | Tensor = -1.0,
        names: Sequence[str] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        on_bad: str = "raise",
    ):
        kw = dict(device=device, dtype=dtype)
        super().__init__(n_tasks, offsets, names, on_bad, **kw)
        self.gamma = None if gamma is None else _per_task(gamma, n_tasks, "gamma", **kw)
        self.w = torch.zeros(n_tasks, requires_grad=True, **kw)
        self.opt = torch.optim.Adam([self.w], lr=w_lr, betas=(0.9, 0.999), eps=1e-8)
        self.prev_losses: Tensor | None = None  # losses of the last weighted_loss (next-batch)
        self.steps = 0  # logit updates done
        self._z = self._a = self._delta = self._c = self._d = None

    # ----------------------------------------------------------------------------- logging
    @property
    def z(self) -> Tensor:
        """Softmax task weights ``softmax(w)`` (current logits)."""
        return F.softmax(self.w.detach(), -1)

    @property
    def a(self) -> Tensor | None:
        """Gradient coefficients ``z_i / (c D_i)`` of the last weighted loss (sum to 1)."""
        return self._a

    @property
    def delta(self) -> Tensor | None:
        """``log D(L) - log D(L_new)`` of the last logit update."""
        return self._delta

    @property
    def logits(self) -> Tensor:
        return self.w.detach().clone()

    def log_dict(self, prefix: str = "tw") -> dict[str, float]:
        """Flat floats for a logger: z, a, delta and logits per task name."""
        out: dict[str, float] = {}
        for key, t in (("z", self.z), ("a", self._a), ("delta", self._delta), ("w", self.w)):
            if t is not None:
                out.update({f"{prefix}/{key}_{n}": float(v) for n, v in zip(self.names, t.tolist())})
        return out

    # ----------------------------------------------------------------------------- the two calls
    def to(self, device: torch.device | str) -> "TaskWeighting":
        """Move logits, offsets, gamma and the logit-Adam moments (not its step count)."""
        device = torch.device(device)
        self.w.data = self.w.data.to(device)
        self.offsets = self.offsets.to(device)
        self.gamma = None if self.gamma is None else self.gamma.to(device)
        for st in self.opt.state.values():
            for k in ("exp_avg", "exp_avg_sq"):
                if k in st:
                    st[k] = st[k].to(device)
        if self.prev_losses is not None:
            self.prev_losses = self.prev_losses.to(device)
        return self

    def weighted_loss(self, losses: Tensor) -> Tensor | None:
        """``sum_i z_i log D_i / c`` to backward (spec step 2); stores z, c, D, a.

        Losses of another dtype are cast to the logits' dtype (differentiably); the weighting
        moves to the losses' device. Returns ``None`` for a skipped step (``on_bad="skip"``).
        """
        if losses.device != self.w.device:
            self.to(losses.device)
        losses = losses.to(self.w.dtype)
        if not self._accept({"losses": losses}, "weighted_loss"):
            return None
        z = F.softmax(self.w, -1)
        d = losses - self.offsets + EPS_D
        c = (z / d).sum().detach()
        self.prev_losses = losses.detach().clone()
        self._z, self._c, self._d = z.detach(), c, d.detach()
        self._a = (z.detach() / (c * d.detach()))
        return (d.log() * z / c).sum()

    def update(self, losses_before: Tensor, losses_after: Tensor,
               gamma: float | Sequence[float] | None = None) -> bool:
        """One Adam step on the logits from the loss decrease (spec step 6).

        Returns False (nothing changed) when skipped under ``on_bad="skip"``.
        """
        before = losses_before.detach().to(self.w)
        after = losses_after.detach().to(self.w)
        if not self._accept({"losses_before": before, "losses_after": after}, "update"):
            return False
        if gamma is None and self.gamma is None:
            raise ValueError("TaskWeighting.update: gamma is required (the weighting was built without one)")
        gamma = self.gamma if gamma is None else _per_task(gamma, self.n_tasks, "gamma").to(self.w)
        delta = self._log_d(before) - self._log_d(after)
        w = self.w.detach()
        z = F.softmax(w, -1)
        grad = z * (delta - (delta * z).sum())  # softmax VJP, as autograd computes it
        self.opt.zero_grad(set_to_none=True)
        self.w.grad = grad + gamma * w
        self.opt.step()
        self.w.grad = None
        self._delta = delta
        self.steps += 1
        return True

    def update_next_batch(self, losses_now: Tensor,
                          gamma: float | Sequence[float] | None = None) -> bool:
        """Next-batch variant (ours): update the logits with ``L_new`` = this step's losses.

        Call it with the current batch's task losses *before* :meth:`weighted_loss` of the same
        step; it pairs them with the losses stored by the previous ``weighted_loss``. Returns
        False on the first step (nothing stored) or a skip.
        """
        if self.prev_losses is None:
            return False
        return self.update(self.prev_losses, losses_now, gamma)

    # ----------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """Everything a resumed run needs to continue bit-identically."""
        return {"w": self.w.detach().clone(), "opt": self.opt.state_dict(),
                "offsets": self.offsets.clone(), "gamma": None if self.gamma is None else self.gamma.clone(),
                "prev_losses": None if self.prev_losses is None else self.prev_losses.clone(),
                "names": list(self.names), "steps": self.steps, "skipped": self.skipped,
                "on_bad": self.on_bad}

    def load_state_dict(self, sd: dict) -> None:
        if len(sd["w"]) != self.n_tasks or list(sd["names"]) != self.names:
            raise ValueError(f"TaskWeighting state is for tasks {sd['names']}, not {self.names}")
        with torch.no_grad():
            self.w.copy_(sd["w"])
        self.opt.load_state_dict(sd["opt"])
        self.offsets = sd["offsets"].to(self.w).clone()
        self.gamma = None if sd["gamma"] is None else sd["gamma"].to(self.w).clone()
        prev = sd["prev_losses"]
        self.prev_losses = None if prev is None else prev.to(self.w).clone()
        self.steps, self.skipped, self.on_bad = sd["steps"], sd["skipped"], sd["on_bad"]


# ================================================================================== Solution 2
@dataclass
class QPResult:
    """Solution of ``min_z 1/2 z^T Q z`` s.t. ``sum z = 1``.

    ``z``: the weights used; ``raw``: before the negative-weight policy; ``clipped``: True when
    some raw weight was negative and the ``"clip"`` policy changed it.
    """

    z: Tensor
    raw: Tensor
    clipped: bool


def solve_qp(q: Tensor, ridge: float = 1e-6, negative: str = "clip") -> QPResult:
    """Equality-constrained QP of Solution 2 -- our derivation of the paper's description.

    With ``Q = G G^T`` the Gram matrix of the per-task gradients ``g_i = grad log D_i``, the
    minimiser of ``|sum_i z_i g_i|^2 / 2`` under ``sum_i z_i = 1`` is (Lagrange)
    ``z = Q^-1 1 / (1^T Q^-1 1)``. ``Q`` is solved in float64 with a ridge ``ridge * mean(diag Q)``
    (plus 1e-30 so an all-zero ``Q`` gives uniform weights), so singular ``Q`` (parallel or zero
    gradients) stays solvable: identical gradients get equal weights.

    Weights may come out negative (the minimiser lies outside the simplex). Policy ``negative``:
    ``"clip"`` (default) sets them to 0 and renormalises the rest to sum 1, reported by
    ``QPResult.clipped``; ``"keep"`` returns the affine weights unchanged.
    """
    if negative not in ("clip", "keep"):
        raise ValueError(f"negative must be 'clip' or 'keep', got {negative!r}")
    if q.dim() != 2 or q.shape[0] != q.shape[1]:
        raise ValueError(f"Q must be a square K x K matrix, got shape {tuple(q.shape)}")
    if not torch.isfinite(q).all():
        raise TaskLossError("Q has non-finite entries (a task gradient is NaN or inf)")
    k = q.shape[0]
    q64 = q.detach().double()
    q64 = (q64 + q64.T) / 2
    lam = ridge * q64.diagonal().mean().clamp(min=0) + 1e-30
    ones = torch.ones(k, 1, dtype=torch.float64, device=q.device)
    x = torch.linalg.solve(q64 + lam * torch.eye(k, dtype=torch.float64, device=q.device), ones)
    raw = (x / x.sum()).squeeze(1)
    z, clipped = raw, False
    if negative == "clip" and bool((raw < 0).any()):
        z, clipped = raw.clamp(min=0), True
        z = z / z.sum()
    return QPResult(z.to(q.dtype), raw.to(q.dtype), clipped)


class QPWeighting(_LossCheck):
    """Solution 2 for a training loop: per-task gradients, QP weights, ``p.grad = sum z_i g_i``.

    ``g_i = grad log D_i`` with ``D_i = L_i - m_i + 1e-8`` (our derivation, see :func:`solve_qp`),
    one ``torch.autograd.grad`` per task through one shared forward (``retain_graph``), flattened
    into the rows of one ``K x P`` matrix ``G``; ``reduce`` (e.g. a mean over data-parallel ranks)
    is applied to ``G`` before the Gram matrix ``G G^T`` is formed in float64. The model step is
    then taken by any optimizer (Cautious Adam in the spec). :attr:`n_clipped` counts steps where
    the negative-weight policy acted. The training objective ``qp`` runs this class.
    """

    def __init__(self, n_tasks: int, offsets: float | Sequence[float] | Tensor = -1.0,
                 ridge: float = 1e-6, negative: str = "clip", names: Sequence[str] | None = None,
                 on_bad: str = "raise", reduce: Callable[[Tensor], Tensor] | None = None):
        super().__init__(n_tasks, offsets, names, on_bad)
        self.ridge, self.negative, self.reduce = ridge, negative, reduce
        self.n_clipped = 0
        self.last: QPResult | None = None
        self._a: Tensor | None = None

    @property
    def z(self) -> Tensor | None:
        return None if self.last is None else self.last.z

    @property
    def a(self) -> Tensor | None:
        """Coefficients on ``grad L_i``: ``z_i / D_i`` (the gradient of ``log D_i`` is 1/D_i)."""
        return self._a

    def task_gradients(self, log_d: Tensor, params: Sequence[Tensor]) -> Tensor:
        """``G`` (K x P): row i is ``grad log_d[i]`` over ``params``, flattened (zeros where unused)."""
        rows = []
        for i in range(self.n_tasks):
            gs = torch.autograd.grad(log_d[i], params, retain_graph=i < self.n_tasks - 1, allow_unused=True)
            rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                                   for g, p in zip(gs, params)]))
        g = torch.stack(rows)
        return g if self.reduce is None else self.reduce(g)

    def backward(self, losses: Tensor, params: Sequence[Tensor]) -> QPResult | None:
        """Set ``p.grad = sum_i z_i grad log D_i`` for ``params``; None when skipped."""
        params = [p for p in params if p.requires_grad]
        if not self._accept({"losses": losses}, "QPWeighting.backward"):
            return None
        g = self.task_gradients(self._log_d(losses), params)
        res = solve_qp(g.double() @ g.double().T, self.ridge, self.negative)
        self.n_clipped += int(res.clipped)
        self.last = res
        self._a = res.z / (losses.detach() - self.offsets.to(losses) + EPS_D)
        for p, part in zip(params, (res.z.to(g) @ g).split([p.numel() for p in params])):
            p.grad = part.view_as(p)
        return res
