"""TrainConfig: one dataclass for every training knob, loaded from YAML and CLI flags, validated up front.

Precedence: dataclass defaults < YAML file < command-line flags. Every problem is a UserError that
names the file and line, so nothing is loaded or written before the config is known to be sane.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from .data.load import FORMATS as DATA_FORMATS
from .data.rows import ON_BAD_ROWS
from .errors import UserError

DOMAINS = ("ecommerce", "video", "news")
METHODS = ("lora", "adalora", "adapter")
BITS = (0, 4, 8, 16, 32)
TASKS = ("preference", "click", "rating", "ranking", "interests", "instruction")
LOG_WITH = ("tensorboard", "none")  # accelerate trackers recpeft supports (recpeft/tracking.py)


@dataclass
class TrainConfig:
    """Everything that defines a training run. Field names are the YAML keys and the `--flag` names."""

    domain: str = "news"
    model: str = "smollm2-135m"
    method: str = "lora"
    data: str | None = None  # None = the domain's embedded sample
    format: str | None = None  # data format (recpeft.data.load.FORMATS); None = detect from the files
    on_bad_rows: str = "fail"  # fail: stop at the first bad row (file:line); skip: drop and count them
    output_dir: str | None = None  # None = adapters/<domain>
    task: str = "preference"  # preference, click, rating, ranking, interests or instruction (recpeft/objectives/)
    train_samples: int = 0  # > 0: a seeded subset of this many training examples (few-shot); 0 = all
    negatives: int = 19  # ranking: sampled negatives per true next item
    # optimisation
    max_steps: int = 48  # > 0 caps the run; 0 = run `epochs` full passes
    epochs: int = 1
    batch_size: int = 0  # 0 = auto: 8 on the CPU; on CUDA as many as fit batch_tokens (recpeft/gpu.py)
    batch_tokens: int = 16384  # --batch-size 0 on CUDA: micro-batch tokens at the 95th-percentile prompt length
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    seed: int = 42
    # LoRA
    lora_r: int = 8
    lora_alpha: int = 16
    # 0 = peft's own default. Dropout draws one Bernoulli per input element of every adapted projection:
    # the largest CPU kernel after the matmuls; a few hundred steps of a rank-8 adapter rarely overfit.
    lora_dropout: float = 0.0
    target_modules: list[str] | None = None  # None = per-architecture default (models.default_targets)
    # AdaLoRA (peft): ranks start at init_r and are pruned towards an average of target_r between
    # tinit and total - tfinal steps; 0 for tinit/tfinal = 10% / 20% of the run
    init_r: int = 12
    target_r: int = 4
    tinit: int = 0
    tfinal: int = 0
    delta_t: int = 1
    orth_reg_weight: float = 0.5
    # Houlsby bottleneck adapter (recpeft's own)
    reduction_factor: int = 16
    non_linearity: str = "relu"
    placement: str = "houlsby"  # houlsby: after attention and MLP; pfeiffer: after the MLP only
    # precision and processes
    bits: int = 0  # 0 = auto: 8 on CUDA (bitsandbytes), 32 on CPU; or 4, 8, 16 (bf16), 32
    gradient_checkpointing: bool = False
    num_processes: int = 1
    # prompts
    history_len: int = 6  # TALLRec uses 10; 6 keeps the default run within minutes on a 2-core CPU
    max_length: int = 320
    item_stats: bool = False  # tag item titles with their training like-rate, "[72% liked]"
    # evaluation and early stopping
    eval_every: int = 24
    eval_samples: int = 128  # validation examples scored at each evaluation (0 = all)
    test_samples: int = 128  # test examples scored in the final summary (0 = all)
    base_test: bool = True  # also score the test examples with the untrained base (zero-shot column)
    patience: int = 3  # evaluations without a better validation AUC before stopping (0 = never)
    # runtime
    threads: int = 0  # torch threads per process; 0 = all cores / processes
    # checkpoints and resume: runs_dir/<domain>/<run-id>/checkpoint-<step> (see checkpoint.py)
    checkpoint_every: int = 10  # optimiser steps between checkpoints; 0 = only at the end and on Ctrl-C
    keep_checkpoints: int = 2  # newest checkpoints kept per run
    runs_dir: str = "runs"
    resume: str | None = None  # "latest" or a checkpoint (or run) folder
    # training logs (recpeft/tracking.py): tensorboard = scalars under <run folder>/tensorboard/; none = no events
    log_with: str = "tensorboard"
    # differential privacy (recpeft/privacy.py): DP-SGD through opacus when dp_epsilon is set
    dp_epsilon: float | None = None  # target ε of example-level (ε, δ)-DP; None = off
    dp_delta: float | None = None  # None = 1e-5, or 1/(10 N) when smaller (N = training examples)
    dp_max_grad_norm: float = 1.0  # per-example clipping norm C

    def resolved_output_dir(self) -> Path:
        return Path(self.output_dir) if self.output_dir else Path("adapters") / self.domain

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in fields(TrainConfig)}

# (lower bound, upper bound) for numeric fields; None = unbounded on that side.
RANGES: dict[str, tuple[float | None, float | None]] = {
    "max_steps": (0, None), "epochs": (1, None), "batch_size": (0, 4096), "batch_tokens": (1, None), "grad_accum": (1, 4096),
    "lr": (0.0, 1.0), "weight_decay": (0.0, 1.0), "warmup_ratio": (0.0, 1.0), "max_grad_norm": (0.0, None),
    "seed": (0, 2**32 - 1), "lora_r": (1, 4096), "lora_alpha": (1, None), "lora_dropout": (0.0, 0.99),
    "history_len": (1, 200), "max_length": (32, 1_000_000), "eval_every": (1, None),
    "eval_samples": (0, None), "test_samples": (0, None), "patience": (0, None), "threads": (0, 1024),
    "init_r": (1, 4096), "target_r": (1, 4096), "tinit": (0, None), "tfinal": (0, None), "delta_t": (1, None),
    "orth_reg_weight": (0.0, None), "reduction_factor": (1, 4096), "num_processes": (1, 1024),
    "train_samples": (0, None), "negatives": (1, 10_000),
    "checkpoint_every": (0, None), "keep_checkpoints": (1, 10_000),
}
CHOICES = {"domain": DOMAINS, "method": METHODS, "task": TASKS, "bits": BITS,
           "non_linearity": ("relu", "gelu", "silu", "tanh"), "placement": ("houlsby", "pfeiffer"),
           "format": tuple(DATA_FORMATS), "on_bad_rows": ON_BAD_ROWS, "log_with": LOG_WITH}


def did_you_mean(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _check_value(name: str, value: Any, where: str | None) -> Any:
    """Type-check and coerce one value; raise UserError naming the key and location."""
    if value is None:
        if name in ("data", "format", "output_dir", "target_modules", "resume", "dp_epsilon", "dp_delta"):
            return None
        raise UserError(f"'{name}' must not be empty", where)
    kind = {"int": int, "float": float, "str": str, "bool": bool}.get(str(FIELDS[name].type).split(" ")[0], None)
    if name == "target_modules":
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise UserError("'target_modules' must be a non-empty list of module names", where)
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise UserError(f"'{name}' must be true or false, got {value!r}", where)
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"'{name}' must be an integer, got {value!r}", where)
    elif kind is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"'{name}' must be a number, got {value!r}", where)
        value = float(value)
    elif not isinstance(value, str):
        raise UserError(f"'{name}' must be a string, got {value!r}", where)
    if name in RANGES:
        lo, hi = RANGES[name]
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            bounds = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
            raise UserError(f"'{name}' must be {bounds}, got {value!r}", where)
    if name in CHOICES and value not in CHOICES[name]:
        options = [str(c) for c in CHOICES[name]]
        raise UserError(
            f"unknown {name} '{value}'{did_you_mean(str(value), options)}; choose from {', '.join(options)}", where)
    return value


def load_yaml(path: str | Path) -> dict[str, tuple[Any, str]]:
    """Read a YAML mapping; return {key: (value, "file:line")}. Malformed files are UserErrors."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError("config file not found", str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read config file: {exc}", str(path)) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"malformed YAML: {problem}", where) from None
    if data is None:
        return {}
    if not isinstance(data, dict) or not isinstance(node, yaml.MappingNode):
        raise UserError("a config file must be a mapping of 'key: value' lines", f"{path}:1")
    lines = {k.value: k.start_mark.line + 1 for k, _ in node.value if isinstance(k, yaml.ScalarNode)}
    return {str(k): (v, f"{path}:{lines.get(str(k), 1)}") for k, v in data.items()}


def build_config(config_file: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """Defaults < YAML < overrides (None means "not given"). Validates every value it sets."""
    values: dict[str, Any] = {}
    sourced: dict[str, tuple[Any, str | None]] = {}
    if config_file is not None:
        sourced.update(load_yaml(config_file))
    for key, value in overrides.items():
        if value is not None:
            sourced[key] = (value, None)
    for key, (value, where) in sourced.items():
        if key not in FIELDS:
            key_name = key.replace("-", "_")
            hint = did_you_mean(key_name, FIELDS)
            raise UserError(f"unknown config key '{key}'{hint}", where)
        values[key] = _check_value(key, value, where)
    cfg = TrainConfig(**values)
    if cfg.method == "adalora" and cfg.target_r >= cfg.init_r:
        where = sourced.get("target_r", (None, None))[1]
        raise UserError(f"AdaLoRA prunes ranks: target_r ({cfg.target_r}) must be below init_r ({cfg.init_r})", where)
    from .privacy import check_config as check_privacy

    check_privacy(cfg, {key: where for key, (_, where) in sourced.items()})
    return cfg


def dump_yaml(config: TrainConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
