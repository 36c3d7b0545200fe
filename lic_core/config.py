"""Typed training configuration: nested dataclasses, YAML in and out, ``--set k=v`` overrides.

A config is plain data; :func:`validate` checks ranges and paths and raises
:class:`~lic_core.errors.ConfigError` naming the dotted key at fault (``loss.lmbda``, ``data.train``).
Every value read from YAML or from the command line goes through :func:`_coerce`, so ``1e-4`` is a
float whatever YAML thinks of it and a typo in a key is an error, never a silently ignored field.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Union

import yaml

from lic_core.errors import ConfigError
from lic_core.optim.balance import GAMMA, W_LR, as_list
from lic_core.optim.schedules import LR_SCHEDULES, SCHEDULES
from lic_core.paths import datasets_root

METRICS = ("mse", "ms-ssim")
GAMMA_SCHEDULES = tuple(SCHEDULES)
OPTIMIZERS = ("auto", "adam", "cautious")
WANDB_MODES = ("offline", "online", "disabled")
MODULE_GROUPS = ("transform", "hyper", "context")
COMPILE_MIN_STEPS = 1000  # speed.compile=auto: shorter runs would spend a large share compiling
# speed.compile=auto on a CPU: a larger model's step is mostly the convolutions and GEMMs that inductor
# leaves to oneDNN and MKL (HPCM-Base, 912 kMACs/pixel: no gain measured), a smaller one's is mostly
# the small ops it fuses (tiny, 22 kMACs/pixel: 0.86-0.94x the eager step)
COMPILE_CPU_MAX_KMACS = 100
AUTOTUNE = (True, False, "gemm", "conv")  # speed.autotune: lic_core.models.autotune's modes and paths
MSSSIM_MIN_SIDE = 161  # pytorch_msssim's default 5 scales with an 11-tap window


@dataclass
class ModelConfig:
    """Which HPCM to build: a named config of ``lic_core.models.hpcm.CONFIGS`` plus field overrides."""

    name: str = "tiny"
    overrides: dict[str, Any] = field(default_factory=dict)  # e.g. {"aligned_s2_gather": True}


@dataclass
class LossConfig:
    """The objective: ``L_D = lmbda * 255^2 * MSE`` (or ``lmbda * (1 - MS-SSIM)``) and the rates."""

    lmbda: float = 0.013
    metric: str = "mse"
    mode: str = "standard"


@dataclass
class DataConfig:
    """Training crops and the test folder. Empty ``train`` means ``<datasets_root()>/wikiphotos``."""

    train: str = ""
    test: str = ""  # empty: no periodic evaluation
    patch: int = 256
    batch: int = 8
    test_patch: int = 256  # center crop of each test image
    test_limit: int = 0  # evaluate at most this many test images (0: all)
    workers: int = 0
    cache_mb: int = 1024  # decoded training photos kept in memory (per loader process); 0: none


@dataclass
class OptimConfig:
    """Model optimizer and learning-rate schedule.

    ``step`` is the paper's recipe: ``lr`` until the first milestone, then ``step_lrs[i]`` after
    milestone ``i``; milestones are fractions of ``run.steps``. ``plateau`` reduces by ``factor``
    after ``patience`` evaluations without improvement of the test loss (the training loss when no
    test folder is set); ``cosine`` anneals to ``min_lr``.
    """

    optimizer: str = "auto"  # auto: Adam for standard, Cautious Adam for the balanced modes
    lr: float = 1e-4
    schedule: str = "step"
    milestones: list[float] = field(default_factory=lambda: [0.85, 0.93, 0.98])
    step_lrs: list[float] = field(default_factory=lambda: [3e-5, 1e-5, 1e-6])
    factor: float = 0.5
    patience: int = 5
    min_lr: float = 1e-6
    max_norm: float = 1.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0


@dataclass
class BalanceConfig:
    """Task weighting (BALANCED.md): FAMO logits for balanced/hierarchical, QP for ``qp``."""

    w_lr: float = W_LR
    gamma: float | list[float] = GAMMA  # one value, or one per task (in the mode's task order)
    gamma_schedule: str = "constant"
    gamma_end: float = 0.0  # linear / cosine: value at the last step
    gamma_milestones: list[float] = field(default_factory=list)  # step: fractions of run.steps
    gamma_factor: float = 0.1  # step: multiplier at each milestone
    offset: float | list[float] = -1.0  # minimum loss m_i, one value or one per task
    next_batch: bool = False  # take L_new from the next batch's forward (not the paper's variant)
    qp_ridge: float = 1e-6


@dataclass
class FinetuneConfig:
    """Start from a checkpoint (ours or the authors'), with per-module lr multipliers and freezing.

    Module groups: ``transform`` (g_a, g_s), ``hyper`` (h_a, h_s, z prior), ``context`` (the rest).
    ``unfreeze_at`` maps a frozen group to the step at which it starts training.
    """

    init: str = ""
    init_format: str = "auto"  # auto | ours | authors
    lr_mult: dict[str, float] = field(default_factory=dict)
    freeze: list[str] = field(default_factory=list)
    unfreeze_at: dict[str, int] = field(default_factory=dict)


@dataclass
class SpeedConfig:
    """Accelerator options; an explicit one is refused on a device that does not support it, an
    ``auto`` one is chosen by what this machine supports (``lic_core.training.engine.speed_plan``)."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # autocast the transforms; entropy math stays float32. true (GPU, AVX-512 CPU), false, or auto =
    # on where bfloat16 is native (a GPU that has it, a CPU with AVX512-BF16 or AMX); changes numerics
    bf16: bool | str = False
    channels_last: bool = False  # GPU inputs (on the CPU the model's convs are channels-last already)
    # torch.compile of the model's forward (inductor; on CPU it needs a C++ compiler): true, false,
    # or auto = on for runs of at least COMPILE_MIN_STEPS steps where a compiler exists (on a CPU,
    # only for models of at most COMPILE_CPU_MAX_KMACS kMACs/pixel)
    compile: bool | str = "auto"
    # per-layer implementation (lic_core.models.autotune): true = measure each shape once on a CPU
    # kind the project has measured, false = the portable default, or a path: gemm | conv
    autotune: bool | str = True


@dataclass
class RunConfig:
    """Length, seed, intervals, output folder and loggers of one run."""

    steps: int = 1000
    seed: int = 0
    out: str = "runs"
    name: str = ""  # run folder name under ``out``; empty: derived from mode, lambda and seed
    log_every: int = 10
    eval_every: int = 500
    ckpt_every: int = 1000
    keep_last: int = 3
    resume: str = "auto"  # auto | never | PATH of a checkpoint
    progress: bool = True
    wandb_project: str = "lic-workbench"
    wandb_name: str = ""
    wandb_mode: str = "offline"


@dataclass
class TrainConfig:
    """Everything one training run needs; ``TrainConfig()`` is a tiny CPU run on wikiphotos."""

    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    @property
    def train_dir(self) -> Path:
        return Path(self.data.train) if self.data.train else datasets_root() / "wikiphotos"

    @property
    def run_name(self) -> str:
        if self.run.name:
            return self.run.name
        return f"{self.model.name}-{self.loss.mode}-{self.loss.metric}-l{self.loss.lmbda:g}-s{self.run.seed}"

    @property
    def run_dir(self) -> Path:
        return Path(self.run.out) / self.run_name


# Override sets for quick runs (tests, the CPU demo): apply with ``load_config(path, PRESETS[name])``.
PRESETS: dict[str, dict[str, Any]] = {
    # tiny HPCM narrowed further, with windows small enough for 64 px crops
    "micro": {"model.name": "tiny", "data.patch": 64, "data.test_patch": 64, "data.batch": 2,
              "model.overrides": {"M": 32, "N": 32, "widths": [16, 24, 32], "heads": 4,
                                  "windows": [1, 2, 4]}},
}


# ---------------------------------------------------------------------------------------- coercion


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    try:
        return int(value) if isinstance(value, str) and value.strip().lstrip("+-").isdigit() else float(value)
    except (TypeError, ValueError):
        return None


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` converted to the annotated type ``tp``; strings (from ``--set``) are parsed."""
    if _is_union(tp):
        for arm in typing.get_args(tp):
            try:
                return _coerce(value, arm, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: {value!r} is none of {tp}")
    if tp is type(None):
        if value is None or (isinstance(value, str) and value.lower() in {"none", "null", "~"}):
            return None
        raise ConfigError(f"{key}: expected none, got {value!r}")
    if tp is Any:
        return parse_yaml(value, key) if isinstance(value, str) else value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "yes", "on", "1", "false", "no", "off", "0"}:
            return value.lower() in {"true", "yes", "on", "1"}
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp in (int, float):
        num = _number(value)
        if num is None or (tp is int and not float(num).is_integer()):
            raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}")
        return tp(num)
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return "" if value is None else str(value)
    origin = typing.get_origin(tp)
    if origin in (list, dict):
        if isinstance(value, str):
            value = parse_yaml(value, key) if value.strip() else origin()
        if value is None:
            value = origin()
        if origin is list:
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"{key}: expected a list, got {value!r}")
            (arm,) = typing.get_args(tp)
            return [_coerce(v, arm, f"{key}[{i}]") for i, v in enumerate(value)]
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        kt, vt = typing.get_args(tp)
        return {_coerce(k, kt, key): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    raise ConfigError(f"{key}: unsupported type {tp}")


def dataclass_from(cls: type, data: Any, prefix: str = "") -> Any:
    """An instance of the (nested) dataclass ``cls`` from plain data: every value coerced to its
    annotated type, an unknown key a ConfigError naming it (``prefix`` + key)."""
    return _from_dict(cls, data, prefix)


def _from_dict(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    for k in data:
        if k not in names:
            raise ConfigError(f"{prefix}{k}: unknown key (known: {', '.join(sorted(names))})")
    kw = {}
    for k, v in data.items():
        tp = hints[k]
        kw[k] = _from_dict(tp, v, f"{prefix}{k}.") if is_dataclass(tp) else _coerce(v, tp, prefix + k)
    return cls(**kw)


def from_dict(data: dict[str, Any]) -> TrainConfig:
    """A :class:`TrainConfig` from nested plain data (missing keys keep their defaults)."""
    return _from_dict(TrainConfig, data or {}, "")


def set_value(cfg: TrainConfig, key: str, value: Any) -> TrainConfig:
    """A copy of ``cfg`` with the dotted ``key`` set to ``value`` (parsed when a string)."""
    parts = key.split(".")
    node, obj_path = cfg, []
    for p in parts[:-1]:
        if not is_dataclass(node) or p not in {f.name for f in fields(node)}:
            raise ConfigError(f"{key}: unknown key")
        obj_path.append((node, p))
        node = getattr(node, p)
    last = parts[-1]
    if not is_dataclass(node) or last not in {f.name for f in fields(node)}:
        raise ConfigError(f"{key}: unknown key")
    tp = typing.get_type_hints(type(node))[last]
    if is_dataclass(tp):
        new = _from_dict(tp, parse_yaml(value, key) if isinstance(value, str) else value, key + ".")
    else:
        new = _coerce(value, tp, key)
    node = dataclasses.replace(node, **{last: new})
    for parent, p in reversed(obj_path):
        node = dataclasses.replace(parent, **{p: node})
    return node


# The short names notebooks, sweeps and the workbook give config keys, declared once. Any other
# key is written in full (``optim.schedule``); both reach the engine unchanged.
ALIASES: dict[str, str] = {
    "model": "model.name", "mode": "loss.mode", "lmbda": "loss.lmbda", "metric": "loss.metric",
    "steps": "run.steps", "seed": "run.seed", "batch": "data.batch", "patch": "data.patch",
    "train_dir": "data.train", "test_dir": "data.test", "test_limit": "data.test_limit", "lr": "optim.lr",
    "gamma": "balance.gamma", "w_lr": "balance.w_lr", "gamma_schedule": "balance.gamma_schedule",
    "eval_every": "run.eval_every",
}


def dotted(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` with short names (:data:`ALIASES`) replaced by their config keys; a name that is
    neither an alias nor a dotted key is a ConfigError."""
    out = {}
    for k, v in params.items():
        if k not in ALIASES and "." not in k:
            raise ConfigError(f"{k}: neither a config key (section.field) nor one of {', '.join(ALIASES)}")
        out[ALIASES.get(k, k)] = v
    return out


def apply_overrides(cfg: TrainConfig, overrides: dict[str, Any] | list[str] | None) -> TrainConfig:
    """Apply ``{"optim.lr": 1e-4}`` (short names of :data:`ALIASES` too) or ``["optim.lr=1e-4", ...]``
    (the ``--set`` strings)."""
    if not overrides:
        return cfg
    items = dotted(overrides).items() if isinstance(overrides, dict) else map(_split_set, overrides)
    for k, v in items:
        cfg = set_value(cfg, k, v)
    return cfg


def _split_set(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise ConfigError(f"{text}: an override is KEY=VALUE (e.g. loss.lmbda=0.013)")
    k, v = text.split("=", 1)
    return k.strip(), v


MAX_YAML_BYTES = 4 << 20  # a YAML file larger than this is refused before it is parsed
MAX_YAML_DEPTH = 32  # nesting levels of a YAML document
MAX_YAML_INT = 2**63  # integers beyond +-this are refused (no setting needs them)


def _check_tree(data: Any, what: str) -> None:
    """Refuse nesting deeper than :data:`MAX_YAML_DEPTH` and integers beyond :data:`MAX_YAML_INT`
    (iteratively: a deep document must not exhaust the stack here)."""
    stack = [(data, 0, "")]
    while stack:
        node, depth, key = stack.pop()
        if depth > MAX_YAML_DEPTH:
            raise ConfigError(f"{what}: nested over {MAX_YAML_DEPTH} levels deep")
        if isinstance(node, int) and not isinstance(node, bool) and abs(node) > MAX_YAML_INT:
            raise ConfigError(f"{what}: integer of {len(str(abs(node)))} digits at {key or 'top level'} is out of range")
        if isinstance(node, dict):
            stack += [(v, depth + 1, f"{key}.{k}" if key else str(k)) for k, v in node.items()]
            stack += [(k, depth + 1, key) for k in node]
        elif isinstance(node, (list, tuple, set)):
            stack += [(v, depth + 1, f"{key}[{i}]") for i, v in enumerate(node)]


def parse_yaml(text: str | bytes, what: str) -> Any:
    """``yaml.safe_load(text)`` (bytes must be UTF-8); a syntax error is a one-line ConfigError
    naming ``what``, the line and the column (the parser's full text is its ``detail``), and so is
    text over :data:`MAX_YAML_BYTES`, nesting over :data:`MAX_YAML_DEPTH` levels and an integer
    beyond ±2**63."""
    if isinstance(text, bytes):
        if len(text) > MAX_YAML_BYTES:
            raise ConfigError(f"{what}: over {MAX_YAML_BYTES:,} bytes, not a config file")
        try:
            text = text.decode()
        except UnicodeDecodeError as e:
            raise ConfigError(f"{what}: not UTF-8 text (byte {e.start})") from None
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"{what}: over {MAX_YAML_BYTES:,} characters, not a config file")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{what}: invalid YAML{where}: {getattr(err, 'problem', None) or err}",
                          detail=str(err)) from None
    except RecursionError:
        raise ConfigError(f"{what}: nested over {MAX_YAML_DEPTH} levels deep") from None
    except (ValueError, OverflowError, TypeError) as e:  # e.g. an integer too long to convert
        raise ConfigError(f"{what}: invalid YAML value ({' '.join(str(e).split())[:120]})") from None
    _check_tree(data, what)
    return data


def read_yaml(path: str | Path, what: str) -> dict[str, Any]:
    """The mapping in a YAML file; a missing file or bad YAML is a ConfigError naming ``what``."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what}: {p} does not exist" if not p.exists() else f"{what}: {p} is not a regular file")
    if p.stat().st_size > MAX_YAML_BYTES:
        raise ConfigError(f"{what} {p}: over {MAX_YAML_BYTES:,} bytes, not a config file")
    data = parse_yaml(p.read_bytes(), f"{what} {p}") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what}: {p} holds a {type(data).__name__}, not a mapping")
    return data


def load_config(path: str | Path | None = None, overrides: dict | list[str] | None = None,
                check_paths: bool = True) -> TrainConfig:
    """Read a YAML config (or start from defaults), apply overrides and validate."""
    data = read_yaml(path, "config") if path is not None else {}
    cfg = apply_overrides(from_dict(data), overrides)
    validate(cfg, check_paths=check_paths)
    return cfg


# -------------------------------------------------------------------------------------- validation


def hpcm_config(cfg: TrainConfig) -> Any:
    """The ``HPCMConfig`` of ``model.name`` with ``model.overrides``; the init seed is ``run.seed``
    unless the overrides set one."""
    from lic_core.models.hpcm import CONFIGS, HPCMConfig  # the model's registry decides the names

    _check_choice(cfg.model.name, "model.name", tuple(CONFIGS))
    known = {fl.name for fl in fields(HPCMConfig)} - {"name"}
    for k in cfg.model.overrides:
        _check(k in known, f"model.overrides.{k}", "not a field of HPCMConfig")
    base = asdict(CONFIGS[cfg.model.name])
    _check(0 <= cfg.run.seed < 2**63, "run.seed", f"must be from 0 to 2**63-1, got {cfg.run.seed}")
    try:
        return HPCMConfig.from_dict({**base, "seed": cfg.run.seed, **cfg.model.overrides})
    except (ConfigError, TypeError, ValueError) as err:
        raise ConfigError(f"model.overrides: {err}") from err


def _check(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {msg}")


def _check_choice(value: str, key: str, choices: tuple[str, ...]) -> None:
    _check(value in choices, key, f"{value!r} is not one of {', '.join(choices)}")


def _finite(node: Any, key: str) -> None:
    """Every float anywhere in ``node`` (a config dataclass, list or mapping) is finite."""
    if is_dataclass(node):
        for f in fields(node):
            _finite(getattr(node, f.name), f"{key}.{f.name}" if key else f.name)
    elif isinstance(node, dict):
        for k, v in node.items():
            _finite(v, f"{key}.{k}")
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            _finite(v, f"{key}[{i}]")
    elif isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"{key}: must be a finite number, got {node}")


def validate(cfg: TrainConfig, check_paths: bool = True) -> TrainConfig:
    """Raise :class:`ConfigError` naming the first key whose value is out of range."""
    from lic_core.training.objectives import TASKS  # the registry of modes decides the names

    _finite(cfg, "")
    m, lo, d, o, b, f, s, r = (cfg.model, cfg.loss, cfg.data, cfg.optim, cfg.balance, cfg.finetune,
                               cfg.speed, cfg.run)
    pad = hpcm_config(cfg).pad_multiple
    for k in ("patch", "test_patch"):
        _check(getattr(d, k) % pad == 0, f"data.{k}", f"{getattr(d, k)} is not a multiple of {pad}, "
               f"the padding multiple of model {m.name!r}")
    _check(lo.lmbda > 0, "loss.lmbda", f"must be > 0, got {lo.lmbda}")
    _check_choice(lo.metric, "loss.metric", METRICS)
    _check_choice(lo.mode, "loss.mode", tuple(TASKS))
    for k in ("patch", "batch", "test_patch"):
        _check(getattr(d, k) > 0, f"data.{k}", f"must be > 0, got {getattr(d, k)}")
    _check(d.test_limit >= 0 and d.workers >= 0, "data.workers", "must be >= 0")
    _check(d.cache_mb >= 0, "data.cache_mb", "must be >= 0")
    if lo.metric == "ms-ssim":
        _check(d.patch >= MSSSIM_MIN_SIDE, "data.patch",
               f"MS-SSIM (pytorch_msssim, 5 scales) needs crops of at least {MSSSIM_MIN_SIDE} px")
    _check_choice(o.optimizer, "optim.optimizer", OPTIMIZERS)
    _check_choice(o.schedule, "optim.schedule", LR_SCHEDULES)
    for k in ("lr", "max_norm", "eps", "factor"):
        _check(getattr(o, k) > 0, f"optim.{k}", f"must be > 0, got {getattr(o, k)}")
    _check(o.min_lr >= 0 and o.weight_decay >= 0, "optim.min_lr", "must be >= 0")
    _check(len(o.betas) == 2 and all(0 <= x < 1 for x in o.betas), "optim.betas", "two values in [0, 1)")
    _check(len(o.milestones) == len(o.step_lrs), "optim.step_lrs", "one lr per milestone")
    _check(all(0 < x < 1 for x in o.milestones) and o.milestones == sorted(o.milestones),
           "optim.milestones", "increasing fractions of run.steps in (0, 1)")
    _check(b.w_lr > 0, "balance.w_lr", f"must be > 0, got {b.w_lr}")
    n_tasks = len(TASKS[lo.mode])
    for k in ("gamma", "offset"):
        v = getattr(b, k)
        _check(not isinstance(v, list) or len(v) == n_tasks, f"balance.{k}",
               f"one value or {n_tasks} (tasks of mode {lo.mode}: {', '.join(TASKS[lo.mode])}), got {v}")
    _check(min(as_list(b.gamma)) >= 0 and b.gamma_end >= 0, "balance.gamma", "must be >= 0")
    _check_choice(b.gamma_schedule, "balance.gamma_schedule", GAMMA_SCHEDULES)
    _check(all(0 < x < 1 for x in b.gamma_milestones), "balance.gamma_milestones", "fractions in (0, 1)")
    _check(max(as_list(b.offset)) < 0, "balance.offset", "must be < 0 so that D_i = L_i - offset > 0")
    _check(b.qp_ridge >= 0, "balance.qp_ridge", "must be >= 0")
    _check(not (b.next_batch and lo.mode not in ("balanced", "hierarchical")), "balance.next_batch",
           "only applies to the balanced and hierarchical modes")
    _check_choice(f.init_format, "finetune.init_format", ("auto", "ours", "authors"))
    for k, v in f.lr_mult.items():
        _check_choice(k, f"finetune.lr_mult.{k}", MODULE_GROUPS)
        _check(v >= 0, f"finetune.lr_mult.{k}", f"must be >= 0, got {v}")
    for k in f.freeze:
        _check_choice(k, "finetune.freeze", MODULE_GROUPS)
    for k, v in f.unfreeze_at.items():
        _check(k in f.freeze, f"finetune.unfreeze_at.{k}", "only a group listed in finetune.freeze")
        _check(v >= 0, f"finetune.unfreeze_at.{k}", "must be >= 0")
    _check(r.steps > 0, "run.steps", f"must be > 0, got {r.steps}")
    _check(not r.name or (Path(r.name).name == r.name and r.name not in (".", "..")), "run.name",
           f"one folder name inside run.out, got {r.name!r}")
    for k in ("log_every", "eval_every", "ckpt_every", "keep_last"):
        _check(getattr(r, k) > 0, f"run.{k}", f"must be > 0, got {getattr(r, k)}")
    _check_choice(r.wandb_mode, "run.wandb_mode", WANDB_MODES)
    _check(s.compile in (True, False, "auto"), "speed.compile", f"{s.compile!r} is not true, false or auto")
    _check(s.bf16 in (True, False, "auto"), "speed.bf16", f"{s.bf16!r} is not true, false or auto")
    _check(s.autotune in AUTOTUNE, "speed.autotune", f"{s.autotune!r} is not true, false, "
           + ", ".join(a for a in AUTOTUNE if isinstance(a, str)))
    _check(s.device in ("auto", "cpu", "cuda") or s.device.startswith("cuda:"), "speed.device",
           f"{s.device!r} is not auto, cpu, cuda or cuda:N")
    if check_paths:
        _check(cfg.train_dir.is_dir(), "data.train", f"folder {cfg.train_dir} does not exist")
        _check(not d.test or Path(d.test).is_dir(), "data.test", f"folder {d.test} does not exist")
        _check(not f.init or Path(f.init).is_file(), "finetune.init", f"file {f.init} does not exist")
        _check(r.resume in ("auto", "never") or Path(r.resume).is_file(), "run.resume",
               f"{r.resume!r} is neither auto, never nor an existing checkpoint")
    return cfg
