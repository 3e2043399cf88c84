"""TrainConfig: one dataclass for every training knob, loaded from YAML and CLI flags, validated up front.

Each field is declared once, with its help text, flag alias, range and choices in its metadata
(recpeft.methods.settings.setting): the `recpeft train` flags (recpeft/cli/options.py), the
validation below and docs/train-options.md are all generated from the fields.

Precedence: dataclass defaults < YAML file < command-line flags. Every problem is a UserError that
names the file and line, so nothing is loaded or written before the config is known to be sane.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from recpeft.data.load import FORMATS as DATA_FORMATS
from recpeft.data.rows import ON_BAD_ROWS
from recpeft.domains import DOMAINS
from recpeft.errors import UserError, did_you_mean
from recpeft.fusion import CF_MODELS as FUSION_CF_MODELS
from recpeft.fusion import CONTEXTS as FUSION_CONTEXTS
from recpeft.fusion import PROJECTORS as FUSION_PROJECTORS
from recpeft.fusion import SOURCES as FUSION_SOURCES
from recpeft.methods import METHODS
from recpeft.methods.settings import AdaLoraSettings, AdapterSettings, LoraSettings, setting
from recpeft.tasks import TASKS
from recpeft.tasks.profiles import PROFILE_SOURCES
from recpeft.tasks.prompts import CHOICE_LETTERS

# Room per listed candidate in a choice prompt: 20 ML-100k titles under letters take ~450 tokens, 20 of the
# news sample's 334, so the default leaves ~350 tokens of history either way.
CHOICE_TOKENS_PER_CANDIDATE = 24

BITS = (0, 4, 8, 16, 32)
LOG_WITH = ("tensorboard", "none")  # accelerate trackers recpeft supports (recpeft/training/tracking.py)
RANKING_LOSSES = ("pointwise", "listwise")  # recpeft/tasks/ranking.py


@dataclass
class RunSettings:
    """What to train on and how to optimise: the fields before the method settings in TrainConfig."""

    domain: str = setting("news", f"Domain preset: {', '.join(DOMAINS)}.", short="-d", choices=tuple(DOMAINS))
    model: str = setting("smollm2-135m", "Base model: a built-in name (see `recpeft models list`), a local HF "
                         "folder or a hub id.", short="-m")
    method: str = setting("lora", f"PEFT method: {', '.join(METHODS)}.", choices=tuple(METHODS))
    data: str | None = setting(None, "Data file or folder (formats: docs/data.md); default: the domain's "
                               "embedded sample.", flag_default="embedded sample")
    format: str | None = setting(None, f"Data format: {', '.join(DATA_FORMATS)}.", choices=tuple(DATA_FORMATS),
                                 flag_default="detected from the files")
    on_bad_rows: str = setting("fail", "fail: stop at the first bad row (file:line); skip: drop bad rows and "
                               "report how many.", choices=ON_BAD_ROWS)
    output_dir: str | None = setting(None, "Where the adapter folder is written.", short="-o",
                                     flag_default="adapters/<domain>")
    task: str = setting("preference", f"Task: {', '.join(TASKS)}.", choices=tuple(TASKS))
    train_samples: int = setting(0, "Train on a seeded subset of this many examples (few-shot; 0 = all).",
                                 range=(0, None))
    negatives: int = setting(19, "Ranking: sampled negatives per true next item (seeded; at most 19 with --task "
                             "choice).", range=(1, 10_000))
    # optimisation
    max_steps: int = setting(48, "Optimiser steps; 0 = run --epochs full passes.", range=(0, None))
    epochs: int = setting(1, "Passes over the training examples when --max-steps is 0.", range=(1, None))
    batch_size: int = setting(0, "Examples per micro-batch and process; 0 = auto: 8 on the CPU, on CUDA as many "
                              "as fit --batch-tokens.", range=(0, 4096), flag_default="0 = auto")
    batch_tokens: int = setting(16384, "With --batch-size 0 on CUDA: tokens per micro-batch at the 95th-percentile "
                                "prompt length (a power-of-two batch, at most 128).", range=(1, None))
    grad_accum: int = setting(1, "Micro-batches per optimiser step.", range=(1, 4096))
    lr: float = setting(1e-3, "Peak learning rate (AdamW, linear warm-up, cosine decay).", range=(0.0, 1.0))
    weight_decay: float = setting(0.01, "AdamW weight decay on matrices.", range=(0.0, 1.0))
    warmup_ratio: float = setting(0.1, "Fraction of steps spent warming up.", range=(0.0, 1.0))
    max_grad_norm: float = setting(1.0, "Clip the gradient norm to this before each optimiser step (with --fusion, "
                                   "the adapter's and the projector's apart); 0 = no clipping (with --dp-epsilon, "
                                   "--dp-max-grad-norm clips instead).", range=(0.0, None))
    seed: int = setting(42, "Random seed (data order, subsets, initialisation).", range=(0, 2**32 - 1))


# The method settings are base classes so that YAML and flags stay flat (lora_r, --lora-r) while each
# method reads its own part (LoraSettings.of(cfg)). Dataclass fields follow the reversed MRO, so the
# order of the bases below keeps the keys in this order: run, LoRA, AdaLoRA, adapter, then the rest.
@dataclass
class TrainConfig(AdapterSettings, AdaLoraSettings, LoraSettings, RunSettings):
    """Everything that defines a training run. Field names are the YAML keys and the `--flag` names."""

    # precision and processes
    bits: int = setting(0, "Base precision: 32, 16 (bf16), 8 or 4 (bitsandbytes); 0 = auto.", choices=BITS,
                        flag_default="8 on CUDA, 32 on CPU")
    gradient_checkpointing: bool = setting(False, "Recompute activations in backward to save memory.")
    num_processes: int = setting(1, "Processes for data-parallel training (one per GPU; gloo DDP on CPU), "
                                 "launched through accelerate.", range=(1, 1024))
    # prompts; TALLRec shows 10 history items, 6 keeps the default run within minutes on a 2-core CPU
    history_len: int = setting(6, "Most recent history items in a prompt.", range=(1, 200))
    max_length: int = setting(320, "Most tokens in a prompt: the oldest history items are dropped until it fits "
                              "(instruction records lose their beginning). --task choice lists every candidate in "
                              "its one prompt, so its default grows with them.", range=(32, 1_000_000),
                              flag_default=f"320; with --task choice 320 + {CHOICE_TOKENS_PER_CANDIDATE} per "
                              "candidate (800 at --negatives 19)")
    item_stats: bool = setting(False, "Tag item titles in prompts with their like-rate among training events, "
                               "e.g. '[72% liked]' (collaborative signal in words).")
    profile_from: str = setting(PROFILE_SOURCES[0], "Profile task: what a user's profile text is made of: their "
                                "demographics (MovieLens-100k u.user) and/or the top genres of the liked ones "
                                "among their first --profile-items events.", choices=PROFILE_SOURCES)
    profile_items: int = setting(5, "Profile task: a user's first N events, whose liked items' genres the profile "
                                 "names; the targets come after them.", range=(1, 1000))
    critique_share: float = setting(0.0, "Ranking: share of training examples whose prompt also carries a "
                                    "critique naming one of the true item's categories ('The user asks for: more "
                                    "Film-Noir.'), as in a chat session; teaches the adapter to follow critiques.",
                                    range=(0.0, 1.0))
    ranking_loss: str = setting("pointwise", "Ranking: pointwise (Yes for the true next item, No for one sampled "
                                "negative, row by row) or listwise (a softmax over each training user's true item "
                                "and --list-negatives negatives, scored together; --batch-size then counts users).",
                                choices=RANKING_LOSSES)
    list_negatives: int = setting(4, "With --ranking-loss listwise: sampled negatives beside each training user's "
                                  "true item (at most --negatives).", range=(1, 10_000))
    # fusion: item vectors as soft tokens next to each item's title (recpeft/fusion)
    fusion: str = setting("off", "Item signals as soft tokens after each item's title, trained with the adapter: "
                          "off; cf: item factors of a collaborative-filtering model fitted on the training period "
                          "(--fusion-cf); file: the vectors of --item-features (e.g. image or audio embeddings).",
                          choices=FUSION_SOURCES)
    fusion_cf: str = setting("als", "With --fusion cf: als (implicit's ALS) or bpr (recpeft's BPR).",
                             choices=FUSION_CF_MODELS)
    fusion_dim: int = setting(64, "With --fusion cf: the CF model's factors per item.", range=(2, 1024))
    fusion_item_stats: bool = setting(False, "With --fusion cf: append each item's training-period statistics to its "
                                      "factors: log count, and shrunk like-rate (mean rating for --task rating). "
                                      "Implicit CF factors say who watched what, not how well it was liked.")
    fusion_tokens: int = setting(1, "Soft tokens per item.", range=(1, 16))
    fusion_lr_scale: float = setting(10.0, "With --fusion: the projector's learning rate as a multiple of --lr. AdamW "
                                     "moves every weight at its group's rate; at 1x the sample's tokens moved 1-3% of "
                                     "a word embedding in 48-192 steps, too little to matter (experiments/README.md "
                                     "(h)).", range=(0.0, 100.0))
    fusion_projector: str = setting("mlp", "Maps an item vector to its soft tokens: linear, or mlp (two layers, "
                                    "GELU).", choices=FUSION_PROJECTORS)
    fusion_context: str = setting("history", "With --fusion: history also gives each item's projector the mean "
                                  "vector of the items before it in the prompt (liked and disliked alike), so the "
                                  "target's token carries how it relates to them; none: each item's vector alone.",
                                  choices=FUSION_CONTEXTS)
    item_features: str | None = setting(None, "With --fusion file: a .safetensors file (tensor 'vectors', item ids "
                                        "as a JSON list in metadata 'item_ids') or a .npz ('item_ids', 'vectors'); "
                                        "'sample': the embedded sample's synthetic second modality.",
                                        flag_default="none")
    # evaluation and early stopping
    eval_every: int = setting(24, "Evaluate on validation every N steps.", range=(1, None))
    eval_samples: int = setting(128, "Validation examples per evaluation (0 = all).", range=(0, None))
    test_samples: int = setting(128, "Test examples in the final summary (0 = all).", range=(0, None))
    base_test: bool = setting(True, "Also score the test examples with the untrained base, for the zero-shot "
                              "column.")
    patience: int = setting(3, "Stop after N evaluations without a better validation AUC (0 = never).",
                            range=(0, None))
    # runtime
    threads: int = setting(0, "Torch CPU threads per process; 0 = all cores / processes.", range=(0, 1024),
                           flag_default="cores / processes")
    # checkpoints and resume: runs_dir/<domain>/<run-id>/checkpoint-<step> (recpeft/training/checkpoint.py)
    checkpoint_every: int = setting(10, "Save a checkpoint (adapter, optimiser, scheduler, RNG, data position) "
                                    "every N steps; 0 = only at the end and on Ctrl-C.", range=(0, None))
    keep_checkpoints: int = setting(2, "Newest checkpoints kept per run.", range=(1, 10_000))
    runs_dir: str = setting("runs", "Checkpoints go to RUNS_DIR/<domain>/<run-id>/checkpoint-<step>.")
    resume: str | None = setting(None, "Continue a run exactly: 'latest' (newest checkpoint of this domain with "
                                 "the same settings) or a checkpoint/run folder.", flag_default="off")
    log_with: str = setting("tensorboard", "Training logs: tensorboard (loss, learning rate, validation metrics, "
                            "tokens/s, memory under RUNS_DIR/<domain>/<run-id>/tensorboard/) or none.",
                            choices=LOG_WITH)
    # differential privacy (recpeft/training/privacy.py): DP-SGD through opacus when dp_epsilon is set
    dp_epsilon: float | None = setting(None, "Differential privacy: train with DP-SGD (opacus) to this target ε "
                                       "of (ε, δ)-DP per example, or per user with --dp-max-examples-per-user; "
                                       "lora or adapter, one process (docs/privacy.md).",
                                       flag_default="off")
    dp_delta: float | None = setting(None, "With --dp-epsilon: δ, below 1/N (N = training examples, or users with "
                                     "--dp-max-examples-per-user).", flag_default="1e-5 or 1/(10 N)")
    dp_max_grad_norm: float = setting(1.0, "With --dp-epsilon: per-example gradient clipping norm.")
    dp_max_examples_per_user: int = setting(0, "With --dp-epsilon: user-level DP, at most this many training "
                                            "examples per user; 0 = example-level DP.", range=(0, 1_000_000))
    dp_max_physical_batch: int = setting(0, "With --dp-epsilon: the most examples in one forward pass. A larger "
                                         "Poisson batch (--batch-size is its expected size) runs in pieces whose "
                                         "clipped gradients add up to one noisy step (opacus' virtual steps): "
                                         "large batches in little memory. 0 = each batch in one pass.",
                                         range=(0, 1_000_000))

    def resolved_output_dir(self) -> Path:
        return Path(self.output_dir) if self.output_dir else Path("adapters") / self.domain

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in fields(TrainConfig)}


def _kind(annotation: Any) -> tuple[type, bool]:
    """(value type, None allowed) of an annotation: `int` -> (int, False), `list[str] | None` -> (list, True)."""
    args = typing.get_args(annotation)
    nullable = type(None) in args
    if nullable:
        annotation = next(a for a in args if a is not type(None))
    return typing.get_origin(annotation) or annotation, nullable


KINDS: dict[str, tuple[type, bool]] = {name: _kind(tp) for name, tp in typing.get_type_hints(TrainConfig).items()}
# Views of the metadata, for code that wants one table (None = unbounded on that side).
RANGES: dict[str, tuple[float | None, float | None]] = {n: f.metadata["range"] for n, f in FIELDS.items()
                                                        if "range" in f.metadata}
CHOICES: dict[str, tuple] = {n: tuple(f.metadata["choices"]) for n, f in FIELDS.items() if "choices" in f.metadata}


def _check_value(name: str, value: Any, where: str | None) -> Any:
    """Type-check and coerce one value; raise UserError naming the key and location."""
    kind, nullable = KINDS[name]
    if value is None:
        if nullable:
            return None
        raise UserError(f"'{name}' must not be empty", where)
    if kind is list:  # a YAML list, or "a,b" from a flag
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            items = FIELDS[name].metadata.get("items", "names")
            raise UserError(f"'{name}' must be a non-empty list of {items}", where)
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
    if cfg.lora_freeze_a and cfg.method != "lora":  # AdaLoRA's and the adapter's matrices have no frozen-A variant
        raise UserError(f"lora_freeze_a freezes LoRA's A matrices; --method {cfg.method} has none",
                        sourced.get("lora_freeze_a", (None, None))[1])
    if cfg.critique_share and cfg.task != "ranking":
        where = sourced.get("critique_share", (None, None))[1]
        raise UserError(f"critique_share trains the ranking task's prompts (chat sessions), not {cfg.task}", where)
    check_fusion(cfg, sourced)
    if cfg.task == "choice" and "max_length" not in sourced:  # the candidates' titles must fit besides the history
        cfg.max_length += CHOICE_TOKENS_PER_CANDIDATE * (1 + cfg.negatives)
    if cfg.task == "choice" and cfg.negatives + 1 > len(CHOICE_LETTERS):
        raise UserError(f"the choice task lists at most {len(CHOICE_LETTERS)} candidates under letters; negatives "
                        f"{cfg.negatives} makes {cfg.negatives + 1} (use at most {len(CHOICE_LETTERS) - 1})",
                        sourced.get("negatives", (None, None))[1])
    if cfg.ranking_loss == "listwise" and cfg.task != "ranking":
        raise UserError(f"ranking_loss listwise trains the ranking task, not {cfg.task}",
                        sourced.get("ranking_loss", (None, None))[1])
    if cfg.ranking_loss == "listwise" and cfg.list_negatives > cfg.negatives:
        raise UserError(f"list_negatives ({cfg.list_negatives}) must be at most negatives ({cfg.negatives}): the "
                        "listwise negatives are the first of each user's sampled ones",
                        sourced.get("list_negatives", (None, None))[1])
    from recpeft.training.privacy import check_config as check_privacy

    check_privacy(cfg, {key: where for key, (_, where) in sourced.items()})
    return cfg


def dump_yaml(config: TrainConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def check_fusion(cfg: TrainConfig, sourced: dict[str, tuple[Any, str | None]]) -> None:
    """--fusion and --item-features go together; fusion needs items in the prompt."""
    def where(key: str) -> str | None:
        return sourced.get(key, (None, None))[1]

    if cfg.fusion == "file" and not cfg.item_features:
        raise UserError("--fusion file needs --item-features FILE (.safetensors or .npz)", where("fusion"))
    if cfg.item_features and cfg.fusion != "file":
        raise UserError("--item-features is read only with --fusion file", where("item_features"))
    if cfg.fusion_item_stats and cfg.fusion != "cf":
        raise UserError("--fusion-item-stats is read only with --fusion cf", where("fusion_item_stats"))
    if cfg.fusion != "off" and cfg.task == "instruction":
        raise UserError("fusion places item vectors next to catalogue items; instruction data has none",
                        where("fusion"))
