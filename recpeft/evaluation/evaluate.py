"""`recpeft eval`: score a saved adapter, or the untrained base (zero-shot), on one split of a task.

With an adapter, everything not given defaults to what the adapter was trained with (its
recpeft.json: domain, task, prompt template, base model, data, history length, negatives, seed), so
`recpeft eval --adapter adapters/news` repeats the training run's test evaluation on the whole
split. The metrics JSON is written atomically next to the adapter folder
(`<adapter>.eval-<task>-<split>.json`) or to --out.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recpeft.adapter_meta import AdapterMeta, read_meta
from recpeft.artifacts import check_file_writable, write_json_atomic
from recpeft.config import FIELDS, build_config
from recpeft.errors import UserError


@dataclass
class EvalReport:
    metrics: dict[str, float]
    payload: dict[str, Any]  # what the JSON file holds
    path: Path | None  # where it was written
    outputs: dict[str, list] = field(default_factory=dict)  # per-example scores (for plots)


def default_out(adapter: str | None, domain: str, task: str, split: str) -> Path:
    if adapter:
        folder = Path(adapter)
        return folder.parent / f"{folder.name}.eval-{task}-{split}.json"
    return Path("adapters") / f"base-{domain}.eval-{task}-{split}.json"


def evaluate(adapter: str | None, data: str | None = None, fmt: str | None = None, task: str | None = None,
             split: str = "test", limit: int = 0, model: str | None = None, domain: str | None = None,
             out: str | None = None, batch_size: int = 16, threads: int = 0, force: bool = False,
             show_progress: bool = True, write: bool = True, overrides: dict[str, Any] | None = None) -> EvalReport:
    """Evaluate `adapter` (a folder; None or "none" = the untrained base) and write the metrics JSON.

    overrides: other TrainConfig settings (history_len, negatives, seed...) for the prompts and splits;
    the adapter's own training settings otherwise, else the defaults.
    """
    import torch
    from tqdm.auto import tqdm

    from recpeft.data import load_data
    from recpeft.domains import get_domain
    from recpeft.models.load import load_base, resolve_bits
    from recpeft.tasks import get_task, task_name

    start = time.time()
    adapter = None if adapter in (None, "", "none") else adapter
    trained: dict[str, Any] = {}
    meta: AdapterMeta | None = None
    if adapter:
        meta = read_meta(Path(adapter))
        trained = {k: v for k, v in meta.train_config.items() if k in FIELDS}
        trained["model"] = meta.base_model.name
    given = {"domain": domain, "task": task, "model": model, "data": data, "format": fmt}
    settings = {**trained, **(overrides or {}), "output_dir": None}
    cfg = build_config(**{**settings, **{k: v for k, v in given.items() if v is not None}})
    if split not in ("train", "valid", "test"):
        raise UserError(f"unknown split '{split}'; choose from train, valid, test")
    out_path = Path(out) if out else default_out(adapter, cfg.domain, cfg.task, split)
    if write:
        check_file_writable(out_path)
    torch.set_num_threads(threads or cfg.threads or os.cpu_count() or 1)

    dataset = load_data(cfg.domain, cfg.data, cfg.format, cfg.on_bad_rows)
    if task_name(cfg.task, dataset) != cfg.task:  # alpaca data runs the instruction task
        cfg = dataclasses.replace(cfg, task=task_name(cfg.task, dataset))
        if not out:
            out_path = default_out(adapter, cfg.domain, cfg.task, split)
            if write:
                check_file_writable(out_path)
    base, tok, source = load_base(cfg.model, bits=resolve_bits(cfg.bits))
    fusion, task_data = None, dataset
    if meta is not None and meta.fusion:  # the adapter's item soft tokens, as it was trained with them
        from recpeft.fusion.fusion import Fusion

        fusion = Fusion.load(adapter, meta.fusion)
        task_data, tok = fusion.mark_data(dataset), fusion.tokenizer(tok, base)
    the_task = get_task(cfg.task, task_data, get_domain(cfg.domain), tok, cfg)
    if meta is not None and meta.task == cfg.task and meta.prompt_template != the_task.template_id:
        raise UserError(f"adapter was trained with prompt template '{meta.prompt_template}', this recpeft "
                        f"writes '{the_task.template_id}' for the {cfg.task} task", str(adapter))
    evalset = the_task.eval_set(split, limit)
    if not len(evalset):
        raise UserError(f"data '{dataset.name}' has no {split} examples for the {cfg.task} task")
    if adapter:
        from recpeft.methods import load_adapter

        net = load_adapter(base, adapter, tokenizer=getattr(tok, "base", tok), force=force)
        if fusion is not None:
            fusion.attach(net, trainable=False)
    else:
        net = base
    bar = tqdm(total=len(evalset), desc=f"eval {cfg.task} {split}", leave=False, disable=not show_progress)
    result = the_task.evaluate(net, evalset, batch_size=batch_size, progress=bar)
    bar.close()
    payload = {
        "adapter": str(adapter) if adapter else None, "base_model": cfg.model, "domain": cfg.domain,
        "task": cfg.task, "prompt_template": the_task.template_id, "split": split, "limit": limit,
        "data": {"name": dataset.name, "fingerprint": dataset.fingerprint()}, "main_metric": the_task.main_metric,
        "higher_is_better": the_task.higher_is_better, "metrics": result.metrics,
        "seconds": round(time.time() - start, 1),
    }
    if write:
        write_json_atomic(out_path, payload)
    return EvalReport(result.metrics, payload, out_path if write else None, result.outputs)


def format_table(payload: dict[str, Any]) -> str:
    """The metrics as an aligned two-column table, main metric first and marked."""
    who = payload["adapter"] or f"{payload['base_model']} (untrained base, zero-shot)"
    lines = [f"recpeft eval — {payload['domain']} / {payload['task']} / {payload['split']} — {who}",
             f"  {'metric':<22}{'value':>10}"]
    main = payload["main_metric"]
    for key in [main] + [k for k in payload["metrics"] if k != main]:
        value = payload["metrics"][key]
        shown = f"{value:>10.4f}" if isinstance(value, float) else f"{value:>10}"
        mark = "  (main; lower is better)" if key == main and not payload["higher_is_better"] else \
            "  (main)" if key == main else ""
        lines.append(f"  {key:<22}{shown}{mark}")
    return "\n".join(lines)
