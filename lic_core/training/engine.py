"""The training loop of HPCM, for any objective of :mod:`lic_core.training.objectives`
(``loss.mode``: standard, balanced, hierarchical, qp).

Every step runs in one order: forward, task losses (averaged over ranks for the weights), skip on a
non-finite loss, backward, clip, skip on a non-finite gradient norm, optimizer step, logit update.
A skipped step still consumes its batch, so the data stream does not depend on skips.
"""
from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from lic_core.training import losses

from lic_core.analysis import metrics
from lic_core.config import COMPILE_CPU_MAX_KMACS, COMPILE_MIN_STEPS, OptimConfig, TrainConfig, apply_overrides, from_dict, hpcm_config, load_config, validate
from lic_core.training.data import load_test_set, train_loader
from lic_core.errors import ConfigError, LicError, command
from lic_core.models import autotune
from lic_core.models.hpcm import HPCM, build, kmacs_per_pixel, read_checkpoint
from lic_core.optim import CautiousAdam, LRSchedule
from lic_core.training import checkpoint as ckpt
from lic_core.training import distributed as ddp
from lic_core.training.finetune import frozen_at, load_init, param_groups, set_frozen
from lic_core.training.logging import RunLogger, load_history, truncate_history
from lic_core.training.objectives import named_floats, objective
from lic_core.training.run import CKPT_DIR, CONFIG_FILE

# Keys that may differ between a checkpoint's config and the config that resumes it.
RESUMABLE = ("run.steps", "run.resume", "run.out", "run.name", "run.progress", "run.log_every",
             "run.eval_every", "run.ckpt_every", "run.keep_last", "run.wandb_project", "run.wandb_name",
             "run.wandb_mode", "data.workers", "data.cache_mb", "data.test", "data.test_patch", "data.test_limit",
             "speed.compile", "speed.autotune")  # a resumed run keeps the checkpoint's autotune paths
TRANSFORMS = ("g_a", "g_s", "h_a", "h_s")


@dataclass
class RunResult:
    """What :func:`train` returns: the run folder, its JSONL records and its checkpoints."""

    run_dir: Path
    history: list[dict[str, Any]]
    checkpoint: Path | None
    best: Path | None
    step: int
    skipped: int
    model: HPCM | None = field(default=None, repr=False)


# ------------------------------------------------------------------------------------- helpers


def resolve_device(cfg: TrainConfig, local_rank: int = 0) -> torch.device:
    """The device of ``speed.device``; GPU-only options on a CPU are a ConfigError."""
    s = cfg.speed
    name = s.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"speed.device: {s.device!r} asked for, but CUDA is not available")
    dev = torch.device(f"cuda:{local_rank}" if name == "cuda" else name)
    if dev.type != "cuda":
        if s.channels_last:
            raise ConfigError(f"speed.channels_last: a GPU option, refused on device {dev} (on the "
                              "CPU the model's convolutions are channels-last already)")
        if s.bf16 is True and not cpu_bf16():
            raise ConfigError(f"speed.bf16: oneDNN has no bfloat16 kernels for this CPU (it needs "
                              f"AVX-512), refused on device {dev}")
    elif s.bf16 is True and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"speed.bf16: {torch.cuda.get_device_name(dev)} does not support bfloat16")
    return dev


def cpu_bf16() -> bool:
    """Whether oneDNN runs bfloat16 on this CPU: AVX-512 present and neither ATen
    (``ATEN_CPU_CAPABILITY``) nor oneDNN (``ONEDNN_MAX_CPU_ISA``) capped below it. Native, and
    fast, only with AVX512-BF16 or AMX (:func:`native_bf16`)."""
    isa = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "ALL").upper()
    return (bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
            and torch.backends.cpu.get_cpu_capability().startswith("AVX512")
            and isa.startswith(("ALL", "AVX512", "AVX10", "AMX")))


def native_bf16(dev: torch.device) -> bool:
    """Whether ``dev`` computes bfloat16 natively: a GPU that supports it, or a CPU where
    :func:`cpu_bf16` holds with AVX512-BF16 or AMX instructions (elsewhere oneDNN converts)."""
    if dev.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return cpu_bf16() and bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


@dataclass(frozen=True)
class SpeedPlan:
    """The speed options one run applies, each resolved from ``speed.*`` by what this machine
    supports: ``auto`` values become true or false here, never later."""

    bf16: bool
    channels_last: bool
    compile: bool
    autotune: str  # a mode of lic_core.models.autotune
    notes: tuple[str, ...] = ()  # one line per option decided by the machine, for the log

    def describe(self) -> str:
        return (f"speed: bf16 {self.bf16}, channels_last {self.channels_last}, compile {self.compile}, "
                f"autotune {self.autotune}" + "".join(f"; {n}" for n in self.notes))


def speed_plan(cfg: TrainConfig, dev: torch.device) -> SpeedPlan:
    """``cfg.speed`` resolved for ``dev`` (explicit options were checked by :func:`resolve_device`):
    ``bf16=auto`` is on where bfloat16 is native (:func:`native_bf16`; it changes numerics, so it is
    never the default), ``compile=auto`` on runs of at least ``COMPILE_MIN_STEPS`` steps where a
    compiler exists (:func:`compiler_missing`) and compiling pays (:func:`compile_gainless`), and
    ``autotune`` picks each 1x1 conv's path by measuring on a CPU kind the project has measured
    (:mod:`lic_core.models.autotune`)."""
    s, notes = cfg.speed, []
    bf16 = s.bf16 is True
    if s.bf16 == "auto":
        bf16 = native_bf16(dev)
        notes.append(f"bf16=auto: {'native' if bf16 else 'not native'} bfloat16 on {dev.type}")
    compile_ = wants_compile(cfg)
    if s.compile == "auto" and compile_:
        why = compiler_missing(dev) or compile_gainless(cfg, dev)
        compile_ = not why
        notes.append(f"compile=auto: {why or 'a compiler exists'}")
    mode = autotune.normalize(s.autotune)
    why = autotune.unmeasured_reason(dev)
    if mode == "auto" and why:
        notes.append(f"autotune=auto: {why}, portable default path")
    return SpeedPlan(bf16, s.channels_last, compile_, mode, tuple(notes))


def wants_compile(cfg: TrainConfig) -> bool:
    """``speed.compile``: true, or auto on a run of at least ``COMPILE_MIN_STEPS`` steps."""
    c = cfg.speed.compile
    return c is True or (c == "auto" and cfg.run.steps >= COMPILE_MIN_STEPS)


def compiler_missing(dev: torch.device) -> str:
    """Why ``torch.compile`` cannot build kernels for ``dev`` here ("" when it can)."""
    if dev.type == "cuda":
        from torch.utils._triton import has_triton

        return "" if has_triton() else "Triton is not installed"
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception as e:  # InvalidCxxCompiler, or an inductor without a CPU backend
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    return ""


def compile_gainless(cfg: TrainConfig, dev: torch.device) -> str:
    """Why compiling ``cfg``'s model would not pay on ``dev`` ("" when it would): on a CPU, a model
    of more than ``COMPILE_CPU_MAX_KMACS`` kMACs/pixel."""
    if dev.type != "cpu":
        return ""
    with autotune.forced(False):  # counting must neither measure nor record a path
        k = kmacs_per_pixel(build(hpcm_config(cfg)))
    if k <= COMPILE_CPU_MAX_KMACS:
        return ""
    return (f"{k:.0f} kMACs/pixel on a CPU, above {COMPILE_CPU_MAX_KMACS}, where the step is mostly "
            "convolutions and GEMMs that compiling does not speed up")


def compile_forward(model: HPCM, dev: torch.device) -> bool:
    """``torch.compile`` the model's forward in place (inductor); where this machine cannot,
    one line on stderr and the eager forward. Returns whether it compiled."""
    why = compiler_missing(dev)
    if why:
        print(f"speed.compile: {why}; training without torch.compile", file=sys.stderr)
        return False
    # schedule.geometry is an lru_cache keyed by the latent's shape, which dynamo guards on, so
    # tracing through the cache (what this warning is about) cannot reuse a stale entry.
    warnings.filterwarnings("ignore", message="Dynamo detected a call to a `functools.lru_cache`")
    import torch._inductor.config as inductor

    # the training noise from torch's generator, as in eager: the same draws for the same seed
    # (inductor's own RNG would train on other noise) and the checkpointed RNG state still decides them
    inductor.fallback_random = True
    # static shapes: a run has one training and one evaluation shape, and dynamo's automatic dynamic
    # shapes (on the second shape) take minutes of symbolic tracing over HPCM's index maps
    model.compile(dynamic=False)
    return True


def make_optimizer(params: Any, o: OptimConfig, mode: str = "standard",
                   compiled: bool = False) -> torch.optim.Optimizer:
    """The model optimizer of ``optim.optimizer`` (``auto``: Adam for the standard mode, Cautious
    Adam for the balanced ones) over ``params`` (tensors or groups). Adam runs torch's fused kernel,
    one pass over each tensor where the multi-tensor path makes a dozen: on a 2-core CPU HPCM-Base's
    Adam step takes 62 ms instead of 231 (``benchmarks/bench_optim.py --optimizer-step``). Cautious
    Adam runs its multi-tensor path, or with ``compiled`` (a compiler exists: the caller checks)
    its torch.compile'd one."""
    kind = o.optimizer if o.optimizer != "auto" else "adam" if mode == "standard" else "cautious"
    kw = dict(lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    if kind == "adam":
        return (torch.optim.AdamW if o.weight_decay else torch.optim.Adam)(params, fused=True, **kw)
    return CautiousAdam(params, foreach=True, compiled=compiled, **kw)


def bf16_transforms(model: HPCM, device_type: str) -> None:
    """Run g_a, g_s, h_a, h_s under bfloat16 autocast and hand float32 back, so the context model
    and the entropy math (likelihoods, rates) stay in float32. Each transform's forward is wrapped
    in a ``with torch.autocast`` block (hooks that enter and leave autocast separately do not
    compile); copy a model before this, not after."""
    for name in TRANSFORMS:
        mod = getattr(model, name)
        mod.forward = _autocast_bf16(mod.forward, device_type)


def _autocast_bf16(forward: Any, device_type: str) -> Any:
    def run(*args: Any) -> Tensor:
        with torch.autocast(device_type, dtype=torch.bfloat16):
            out = forward(*args)
        return out.float()
    return run


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _first_difference(a: dict, b: dict, prefix: str = "") -> str | None:
    for k in sorted(set(a) | set(b)):
        key = prefix + k
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            found = _first_difference(va, vb, key + ".")
            if found:
                return found
        elif va != vb and key not in RESUMABLE:
            return f"{key} (checkpoint: {va!r}, config: {vb!r})"
    return None


# --------------------------------------------------------------------------------------- trainer


class Trainer:
    """One run: builds everything from the config, resumes if the run folder holds a checkpoint,
    then :meth:`fit` trains to ``run.steps``; the objective (``loss.mode``) decides the gradients
    and task weights of each step."""

    def __init__(self, cfg: TrainConfig):
        self.dev = resolve_device(validate(cfg))
        self.plan = speed_plan(cfg, self.dev)
        # bf16=auto is decided here, once: the run folder's config and its checkpoints hold the value
        self.cfg = cfg = replace(cfg, speed=replace(cfg.speed, bf16=self.plan.bf16))
        autotune.set_mode(self.plan.autotune)  # a resumed run takes its checkpoint's (load_state)
        self.dist, self.owns_group = ddp.setup(self.dev.type)
        if self.dev.type == "cuda":
            self.dev = resolve_device(cfg, self.dist.local_rank)
            torch.cuda.set_device(self.dev)
        self.objective = objective(cfg, self.dev)
        self.tasks = self.objective.tasks
        self.run_dir = cfg.run_dir
        self.ckpt_dir = self.run_dir / CKPT_DIR
        _seed_all(cfg.run.seed + 1_000_003 * self.dist.rank)

        self.model = build(hpcm_config(cfg)).to(self.dev)
        self.init_format = load_init(self.model, cfg.finetune.init, cfg.finetune.init_format) \
            if cfg.finetune.init else None
        self.groups = param_groups(self.model, cfg.finetune)
        self.frozen = frozen_at(cfg.finetune, 0)
        set_frozen(self.groups, self.frozen)
        self.opt = self._optimizer()
        self.sched = LRSchedule(cfg.optim, cfg.run.steps)
        self.step, self.skipped = 0, 0
        self.history: list[dict[str, Any]] = []  # evaluation records (also in the checkpoint)
        self.score_acc = [0.0, 0]  # sum and count of the training R-D loss since the last score
        self.best_score, self.last_score = math.inf, math.inf
        self._resume()

        if self.plan.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if self.plan.bf16:
            bf16_transforms(self.model, self.dev.type)
        self.compiled = self.plan.compile and compile_forward(self.model, self.dev)
        self.net = self._wrap()
        self.tests = load_test_set(cfg.data.test, cfg.data.test_patch, cfg.data.test_limit) \
            if cfg.data.test and self.dist.main else []

    # -------------------------------------------------------------------------------- setup
    def _optimizer(self) -> torch.optim.Optimizer:
        o = self.cfg.optim
        # speed.compile compiles Cautious Adam's step with the forward (where a compiler exists)
        compiled = self.plan.compile and not compiler_missing(self.dev)
        return make_optimizer([{**g, "lr": o.lr * g["lr_mult"]} for g in self.groups], o, self.cfg.loss.mode,
                              compiled)

    def _wrap(self) -> nn.Module:
        if self.dist.world == 1:
            return self.model
        ids = [self.dev.index] if self.dev.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(self.model, device_ids=ids, broadcast_buffers=False)

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    # -------------------------------------------------------------------------------- state
    def state(self) -> dict[str, Any]:
        """The checkpoint payload (see :mod:`lic_core.training.checkpoint`)."""
        rngs = ddp.gather(ckpt.rng_state())
        return {
            "config": asdict(self.model.cfg),
            "state_dict": self.model.state_dict(),
            "train_config": self.cfg.to_dict(),
            "step": self.step,
            "skipped": self.skipped,
            **self.objective.state_dict(),  # "weighting", "qp_clipped"
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "rng": rngs,
            "data": {"seed": self.cfg.run.seed, "step": self.step, "world": self.dist.world},
            "history": self.history,
            "score": {"acc": list(self.score_acc), "best": self.best_score, "last": self.last_score},
            "autotune": autotune.record(),  # the paths taken, so that a resumed run takes them too
        }

    def load_state(self, sd: dict[str, Any]) -> None:
        diff = _first_difference(sd["train_config"], self.cfg.to_dict())
        if diff:
            raise ConfigError(f"run.resume: the checkpoint was trained with another config: {diff}; "
                              "give a run with this config another run.name (the folder is kept as it is)")
        self.model.load_state_dict(sd["state_dict"])
        self._restore_autotune(sd.get("autotune"))
        self.step, self.skipped = sd["step"], sd["skipped"]
        self.frozen = frozen_at(self.cfg.finetune, self.step)
        set_frozen(self.groups, self.frozen)
        self.opt.load_state_dict(sd["optimizer"])
        self.objective.load_state_dict(sd)
        self.sched.load_state_dict(sd["scheduler"])
        self.history = list(sd["history"])
        sc = sd["score"]
        self.score_acc, self.best_score, self.last_score = list(sc["acc"]), sc["best"], sc["last"]
        rngs = sd["rng"]
        if len(rngs) == self.dist.world:
            ckpt.set_rng_state(rngs[self.dist.rank])
        else:  # another world size: the run goes on, not bit-identically
            _seed_all(self.cfg.run.seed + 1_000_003 * self.dist.rank + self.step)

    def _restore_autotune(self, rec: dict[str, Any] | None) -> None:
        """The checkpoint's autotune mode and choices (older checkpoints: the portable default,
        the only path there was), whatever ``speed.autotune`` says now: a resumed run stays
        bit-identical only on the paths its original took."""
        mode = autotune.restore(rec)
        if mode != self.plan.autotune and self.dist.main:
            print(f"speed.autotune: resuming with the checkpoint's mode {mode} (config: {self.plan.autotune})",
                  file=sys.stderr)
        self.plan = replace(self.plan, autotune=mode)

    def _resume(self) -> None:
        r = self.cfg.run.resume
        path = Path(r) if r not in ("auto", "never") else ckpt.latest(self.ckpt_dir)
        if r == "never" and path is not None:
            raise ConfigError(f"run.resume: {self.run_dir} already holds checkpoints; resume=auto continues "
                              "that run, or choose another run.name")
        if r == "never" or path is None:
            return
        if self.dist.main:  # a run killed while writing leaves its temporary file behind
            for tmp in self.ckpt_dir.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)
        # on the CPU: RNG states must stay CPU tensors; auto skips a newest file that does not load
        self.load_state(ckpt.read_latest(self.ckpt_dir)[1] if r == "auto" else read_checkpoint(path))

    # -------------------------------------------------------------------------------- steps
    def _set_lr(self) -> float:
        f = self.sched.factor(self.step)
        for g in self.opt.param_groups:
            g["lr"] = self.cfg.optim.lr * g["lr_mult"] * f
        return self.cfg.optim.lr * f

    def _skip(self, why: str, value: float) -> dict[str, Any]:
        """A step without update (its batch is consumed all the same)."""
        self.step += 1
        self.skipped += 1
        self.opt.zero_grad(set_to_none=True)
        return {"kind": "skip", "step": self.step, "reason": why, "value": value, "skipped": self.skipped}

    def train_step(self, x: Tensor) -> dict[str, Any]:
        """One optimisation step on batch ``x``; returns the step's log record."""
        t0 = time.perf_counter()
        cfg, obj = self.cfg, self.objective
        self._update_frozen()
        lr = self._set_lr()
        self.model.train()
        out = (self.net if obj.wrapped else self.model)(x)
        terms = losses.loss_terms(out, x, cfg.loss)
        psnr = metrics.psnr(out["x_hat"], x, eight_bit=False)
        task = obj.task_losses(terms)
        if not bool(torch.isfinite(task).all()):
            return self._skip("loss", float(task.detach().sum()))
        self.opt.zero_grad(set_to_none=True)
        params = self.trainable()
        why = obj.backward(task, params, self.step)
        if why:
            return self._skip(why, float(task.detach().sum()))
        gnorm = float(torch.nn.utils.clip_grad_norm_(params, cfg.optim.max_norm))
        if not math.isfinite(gnorm):
            return self._skip("grad_norm", gnorm)
        self.opt.step()
        obj.after_step(lambda: self.task_forward(x), task, self.step)
        self.step += 1
        rd = float(task.detach().sum())  # L_D + bpp over the global batch: the same on every rank
        self.score_acc = [self.score_acc[0] + rd, self.score_acc[1] + 1]
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)
        rec = {"kind": "train", "step": self.step, "loss": rd, "psnr": psnr, "lr": lr, "grad_norm": gnorm,
               "step_time": time.perf_counter() - t0, "wall": time.time(), "skipped": self.skipped}
        return self._record(rec, terms, task)

    def task_forward(self, x: Tensor) -> Tensor:
        """The task losses of batch ``x`` by the model as it is now (no DDP wrapper): Solution 1's
        second forward, after the step, on the same batch."""
        return losses.task_losses(self.model(x), x, self.cfg.loss, self.tasks)

    def _update_frozen(self) -> None:
        frozen = frozen_at(self.cfg.finetune, self.step)
        if frozen != self.frozen:
            self.frozen = frozen
            set_frozen(self.groups, frozen)
            self.net = self._wrap()  # DDP must see the new set of trainable parameters

    def _record(self, rec: dict[str, Any], terms: dict[str, Tensor], task: Tensor) -> dict[str, Any]:
        """The step's log record: R-D terms, task losses, mask fraction, the objective's weights."""
        rec.update({k: float(v.detach()) for k, v in terms.items()})
        rec.update(named_floats(self.tasks, task, "task"))
        if isinstance(self.opt, CautiousAdam):
            rec["mask_fraction"] = self.opt.last_mask_fraction
        return {**rec, **self.objective.record()}

    # -------------------------------------------------------------------------------- eval
    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        """Mean estimated bpp (per scale), PSNR and R-D loss over the test crops (eval mode, hard
        rounding); computed on rank 0 and broadcast."""
        rec: dict[str, Any] = {}
        if self.dist.main and self.tests:
            self.model.eval()
            rows = []
            for x in self.tests:
                x = x.to(self.dev)
                out = self.model(x)
                t = losses.loss_terms(out, x, self.cfg.loss)
                rows.append({**{k: float(v) for k, v in t.items()}, "psnr": metrics.psnr(out["x_hat"], x, eight_bit=False)})
            self.model.train()
            rec = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
            rec["loss"] = rec["D"] + rec["bpp"]
        return ddp.broadcast({"kind": "eval", "step": self.step, **rec})

    def _score(self, ev: dict[str, Any] | None) -> None:
        """Monitored value (test loss, else the mean training loss of the interval) for the plateau
        schedule and for ``best.pt``."""
        s, n = self.score_acc
        value = ev["loss"] if ev and "loss" in ev else (s / n if n else math.inf)
        self.score_acc = [0.0, 0]
        self.last_score = value
        self.sched.observe(value)

    def save(self) -> Path | None:
        """Checkpoint the current step (rank 0 writes; every rank contributes its RNG state)."""
        state = self.state()
        path = None
        if self.dist.main:
            best = self.last_score < self.best_score
            if best:
                state["score"]["best"] = self.best_score = self.last_score
            path = ckpt.save_rotating(state, self.ckpt_dir, self.step, self.cfg.run.keep_last, best)
        self.best_score = ddp.broadcast(self.best_score)
        ddp.barrier()
        return path

    # -------------------------------------------------------------------------------- loop
    def fit(self, until: int | None = None) -> RunResult:
        """Train to ``run.steps`` (or stop after step ``until``: the checkpoint/resume tests)."""
        cfg, r = self.cfg, self.cfg.run
        end = min(r.steps, until) if until else r.steps
        main = self.dist.main
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            cfg.to_yaml(self.run_dir / CONFIG_FILE)
            truncate_history(self.run_dir, self.step)
        log = RunLogger(self.run_dir, cfg, r.steps, self.step, active=main)
        batches = train_loader(cfg.train_dir, cfg.data.patch, cfg.data.batch, r.seed, self.step,
                               self.dist.rank, self.dist.world, cfg.data.workers, self.dev.type == "cuda",
                               cfg.data.cache_mb)
        path = None
        try:
            while self.step < end:
                x = next(batches).to(self.dev, non_blocking=True)
                if cfg.speed.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                rec = self.train_step(x)
                if rec["kind"] == "skip" or self.step % r.log_every == 0 or self.step == r.steps:
                    log.log(rec)
                log.advance(1, {"loss": rec.get("loss", math.nan), "bpp": rec.get("bpp", math.nan)})
                if self.step % r.eval_every == 0 or self.step == r.steps:
                    ev = self.evaluate() if cfg.data.test else None
                    if ev and "loss" in ev:
                        self.history.append(ev)
                        log.log(ev)
                    self._score(ev)
                if self.step % r.ckpt_every == 0 or self.step == r.steps:
                    path = self.save()
        finally:
            log.close()
        final = ckpt.latest(self.ckpt_dir)
        best = self.ckpt_dir / ckpt.BEST
        return RunResult(self.run_dir, load_history(self.run_dir) if main else [], path or final,
                         best if best.is_file() else None, self.step, self.skipped, self.model)


# ------------------------------------------------------------------------------------ public API


def as_config(cfg: TrainConfig | dict | str | Path | None, overrides: dict | list | None = None) -> TrainConfig:
    """A validated TrainConfig from a config object, nested dict or YAML path, plus overrides."""
    if cfg is None or isinstance(cfg, (str, Path)):
        return load_config(cfg, overrides)
    if isinstance(cfg, dict):
        cfg = from_dict(cfg)
    return validate(apply_overrides(cfg, overrides))


def train(cfg: TrainConfig | dict | str | Path | None = None, overrides: dict | list | None = None,
          until: int | None = None) -> RunResult:
    """Run (or resume) one training run; returns its folder, history and checkpoints.

    ``train("cfg.yaml", {"loss.lmbda": 0.013, "run.steps": 200})`` from a notebook; the same
    code runs under ``torchrun`` (one process per GPU).
    """
    cfg = as_config(cfg, overrides)
    with run_lock(cfg), autotune.forced(autotune.mode()):  # the run's autotune mode ends with it
        trainer = Trainer(cfg)
        try:
            return trainer.fit(until)
        finally:
            if trainer.owns_group:
                ddp.teardown()


@contextmanager
def run_lock(cfg: TrainConfig) -> Iterator[None]:
    """Hold the run folder for this process (rank 0 under torchrun): a second training into the
    same folder stops with a one-line error instead of interleaving checkpoints and history."""
    from filelock import FileLock, Timeout

    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    path = cfg.run_dir.parent / f".{cfg.run_dir.name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise LicError(f"{cfg.run_dir}: another training is writing this run folder (lock {path}); "
                       "wait for it, or give this run another run.name") from None
    try:
        yield
    finally:
        lock.release()


@command("train")
def main(argv: list[str] | None = None) -> int:
    """``python -m lic_core train --config FILE [--set k=v ...]``."""
    ap = argparse.ArgumentParser(prog="python -m lic_core train", description=main.__doc__)
    ap.add_argument("--config", help="YAML config (defaults: TrainConfig())")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value, e.g. --set loss.lmbda=0.013 (repeatable)")
    ap.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.set, check_paths=not args.print_config)
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return 0
    from lic_core.threads import limit_process

    limit_process()  # threads that fit this process's cores; idle threads of its children sleep
    res = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"run {res.run_dir}: step {res.step}, skipped {res.skipped}, checkpoint {res.checkpoint}")
    return 0
