"""recpeft.json as a typed record: `AdapterMeta`, its one writer (`to_dict`) and one reader (`read_meta`).

recpeft.json says what recpeft needs to use an adapter folder: domain, method, task, prompt template,
verbaliser, the base model it was trained on (fingerprints to refuse another one), data, training
settings, metrics. Files written by earlier versions read as they are: keys this version does not
know are kept in `extra` and written back unchanged. The model card (README.md) is written from it too.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from recpeft.errors import UserError

FORMAT_VERSION = 1
META_FILE = "recpeft.json"


@dataclass
class BaseModelInfo:
    """The base model an adapter was trained on."""

    name: str
    source: str | None = None  # where it was loaded from (a cache folder, a hub id)
    fingerprint: str | None = None  # config + tokenizer: adapters to combine must agree on it
    config_fingerprint: str | None = None  # checked when an adapter is loaded (None: recorded by an old version)
    tokenizer_fingerprint: str | None = None
    architecture: str | None = None


@dataclass
class DataInfo:
    name: str
    fingerprint: str


@dataclass(kw_only=True)
class AdapterMeta:
    """Everything recpeft.json holds. Field order is the file's key order; optional fields left None are
    not written (a combined adapter has no data or history), except `privacy` and `verbalizer`, which the
    trainer has always written (null: no DP / a generative task)."""

    format_version: int = FORMAT_VERSION
    recpeft_version: str | None = None
    domain: str
    method: str
    task: str | None = None
    positive_verb: str | None = None
    prompt_template: str | None = None
    verbalizer: dict[str, Any] | None = None  # answer words and token ids; None for generative tasks
    base_model: BaseModelInfo
    target_modules: list[str] | None = None
    trainable_parameters: int | None = None
    data: DataInfo | None = None
    train_config: dict[str, Any] = field(default_factory=dict)  # TrainConfig.to_dict() of the run
    combination: dict[str, Any] | None = None  # `recpeft merge --combine`: its sources and weights
    metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] | None = None
    # The (ε, δ) guarantee of a --dp-epsilon run, as recpeft/training/privacy.py writes it; opaque here.
    privacy: dict[str, Any] | None = None
    # --fusion: the item vectors' source and the projector (recpeft/fusion); None: a text-only adapter
    fusion: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know, kept as read

    def to_dict(self) -> dict[str, Any]:
        """The JSON object recpeft.json holds."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "extra" or (value is None and f.name not in ("privacy", "verbalizer")):  # written as null
                continue
            if isinstance(value, (BaseModelInfo, DataInfo)):
                value = {k: v for k, v in vars(value).items() if v is not None}
            out[f.name] = value
        return {**out, **self.extra}

    @classmethod
    def from_dict(cls, raw: Any, where: str) -> AdapterMeta:
        """Check and type a parsed recpeft.json; anything wrong is a UserError naming `where`."""

        def bad(what: str) -> UserError:
            return UserError(f"malformed {META_FILE}: {what}", where)

        if not isinstance(raw, dict):
            raise bad("not a JSON object")
        for key in ("domain", "method", "base_model"):
            if raw.get(key) is None:
                raise bad(f"no '{key}'")
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {k: v for k, v in raw.items() if k in known}
        kinds = {"domain": str, "method": str, "base_model": dict, "data": dict, "train_config": dict,
                 "metrics": dict, "verbalizer": dict, "combination": dict, "privacy": dict, "fusion": dict,
                 "history": list,
                 "target_modules": list}
        for key, kind in kinds.items():
            if values.get(key) is not None and not isinstance(values[key], kind):
                raise bad(f"'{key}' is not a {'JSON object' if kind is dict else kind.__name__}")
        values["base_model"] = _record(BaseModelInfo, values["base_model"], "base_model", bad)
        if values.get("data") is not None:
            values["data"] = _record(DataInfo, values["data"], "data", bad)
        for key in ("train_config", "metrics"):  # null in the file = empty
            values[key] = values.get(key) or {}
        return cls(**values, extra={k: v for k, v in raw.items() if k not in known})


def _record(kind, raw: dict[str, Any], key: str, bad):
    names = {f.name for f in fields(kind)}
    missing = [f.name for f in fields(kind) if f.name not in raw and f.default is MISSING
               and f.default_factory is MISSING]  # required: the fields without a default
    if missing:
        raise bad(f"'{key}' has no '{missing[0]}'")
    return kind(**{k: v for k, v in raw.items() if k in names})


def write_meta(folder: Path, meta: AdapterMeta) -> None:
    """Write folder/recpeft.json (atomically)."""
    from recpeft.artifacts import write_json_atomic

    write_json_atomic(Path(folder) / META_FILE, meta.to_dict())


def read_meta(adapter_dir: str | Path) -> AdapterMeta:
    """folder/recpeft.json as an AdapterMeta; a missing or malformed file is a one-line UserError naming it."""
    path = Path(adapter_dir) / META_FILE
    if not path.is_file():
        raise UserError(f"not a recpeft adapter folder (no {META_FILE})", str(adapter_dir))
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"malformed {META_FILE} (not UTF-8 text)", str(path)) from None
    except json.JSONDecodeError as exc:
        raise UserError(f"malformed JSON: {exc.msg}", f"{path}:{exc.lineno}") from None
    return AdapterMeta.from_dict(raw, str(path))


TASK_WORDS = {
    "preference": "will the user like the item: a Yes/No answer, TALLRec-style",
    "click": "will the user click the item: a Yes/No answer",
    "rating": "the user's 1-5 rating, read from the digit tokens",
    "ranking": "next-item ranking, each candidate scored by P(Yes)",
    "choice": "next-item ranking as one question, the candidates under letters, scored by the letters' logits",
    "interests": "the user's favourite categories, generated as a list",
}


def model_card(meta: AdapterMeta) -> str:
    """README.md of a trained adapter folder."""
    from recpeft.training.privacy_guarantee import card_section

    m, base, data = meta.metrics, meta.base_model, meta.data
    key = m.get("main_metric", "auc")
    rows = "\n".join(
        f"| {split} | {m.get(f'{split}_{key}_base', float('nan')):.4f} | {m.get(f'{split}_{key}', float('nan')):.4f} "
        f"| {m.get(f'{split}_n', 0)} |"
        for split in ("valid", "test")
    )
    return f"""# recpeft adapter: {meta.domain} / {meta.task} / {meta.method}

A {meta.method} adapter for `{base.name}` (fingerprint `{base.fingerprint}`), trained by
recpeft {meta.recpeft_version or ''} for the `{meta.task}` task ({TASK_WORDS.get(meta.task, '')}) from a
user's recent history (prompt template `{meta.prompt_template}`).

| split | {key} untrained base | {key} with adapter | examples |
|---|---|---|---|
{rows}

Data: `{data.name}` (fingerprint `{data.fingerprint}`); best step {m.get('best_step')}
of {m.get('steps')}; trainable parameters {meta.trainable_parameters}.

Load it with recpeft's API, or with plain peft:

```python
from transformers import AutoModelForCausalLM
from peft import PeftModel
base = AutoModelForCausalLM.from_pretrained("<base model folder>")
model = PeftModel.from_pretrained(base, "<this folder>")
```
""" + _fusion_section(meta.fusion) + card_section(meta.privacy)


def _context(fusion: dict[str, Any]) -> str:
    """How the card words the projector's input and how far training moved the tokens (absent from older records)."""
    out = " that also reads the mean vector of the items before each one" if fusion.get("context") == "history" else ""
    if fusion.get("token_scale") is not None:
        out += f"; training moved the tokens {fusion['token_scale']:.1%} of a word embedding's scale from their anchor"
    return out


def _fusion_section(fusion: dict[str, Any] | None) -> str:
    if not fusion:
        return ""
    where = (f"the feature file `{fusion['features']}` (fingerprint `{fusion['fingerprint']}`), needed at load time"
             if fusion.get("features") else "item vectors saved in `fusion.safetensors`")
    return (f"""
## Item fusion

Each item in a prompt is followed by {fusion['tokens']} soft token(s): its {fusion['dim']}-dimensional vector
({fusion['source']}, {fusion['items']} items; {where}) through a trained {fusion['projector']} projector\
{_context(fusion)}.
recpeft.load uses them; plain peft loading gives the adapter without them.
""")
