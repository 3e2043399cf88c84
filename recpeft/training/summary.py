"""The end of a run in records: its metrics, and the AdapterMeta its adapter folder's recpeft.json holds."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import torch
from accelerate.utils import gather_object

from recpeft import __version__
from recpeft.adapter_meta import AdapterMeta, BaseModelInfo, DataInfo
from recpeft.models.load import config_fingerprint, fingerprint, tokenizer_fingerprint
from recpeft.tasks.base import Evaluation

if TYPE_CHECKING:
    from recpeft.training.trainer import Run


def metrics(run: Run, test_eval: Evaluation) -> dict[str, Any]:
    """Everything the run measured (every process calls this: some entries are gathered from all)."""
    task, progress, accelerator = run.task, run.progress, run.accelerator
    out = {
        "task": task.name, "main_metric": task.main_metric,
        **{f"valid_{k}_base": v for k, v in progress.base_valid.items() if k != "n"},
        run.main_key: progress.best_auc, "valid_n": len(run.valid_rows),
        **{f"test_{k}_base": v for k, v in progress.base_test.items() if k != "n"},
        **{f"test_{k}": v for k, v in test_eval.metrics.items() if k != "n"},
        f"test_{task.main_metric}": test_eval.metrics.get(task.main_metric, math.nan),
        "test_n": len(run.test_rows), "best_step": progress.best_step, "steps": progress.step,
        "train_examples": len(run.train_rows), "seconds": round(time.time() - run.start, 1),
        "early_stopped": progress.stop, "bits": run.bits, "batch_size": run.batch_size,
        "seconds_per_micro_batch": round(sum(run.step_seconds) / max(1, len(run.step_seconds)), 4),
        "eval_seconds": round(run.eval_seconds, 2),
    }
    if run.privacy:
        out["privacy"] = run.privacy.record()
    if run.fusion:  # how loud the item tokens ended, against a word embedding (see the summary's note)
        out["fusion_token_scale"] = round(run.fusion.module.token_scale(), 5)
    if run.on_cuda:
        frozen = sum(p.numel() * p.element_size() for p in run.model.parameters() if not p.requires_grad)
        out["gpu_mib"] = {"frozen_weights": round(frozen / 2**20, 1),
                          "peak": round(torch.cuda.max_memory_allocated(accelerator.device) / 2**20, 1)}
    # One number per process: the sum of its trainable weights. Equal on every rank = DDP kept them in sync.
    local = torch.tensor([sum(p.detach().double().sum().item() for p in run.trainable)], dtype=torch.float64,
                         device=accelerator.device)
    out["rank_param_sums"] = accelerator.gather(local).tolist()
    out["eval_units_per_process"] = gather_object([run.eval_units])  # batches (or users) each one scored
    out.update(run.method.report(run.unwrapped(), run.cfg))  # e.g. AdaLoRA's ranks and rank budget
    return out


def adapter_meta(run: Run, final, metrics: dict[str, Any]) -> AdapterMeta:
    """What the trained adapter's recpeft.json records."""
    cfg, task, tok = run.cfg, run.task, run.tok
    return AdapterMeta(
        recpeft_version=__version__, domain=cfg.domain, method=cfg.method, task=task.name,
        positive_verb=run.domain.positive_verb, prompt_template=task.template_id, verbalizer=task.verbalizer(),
        base_model=BaseModelInfo(name=cfg.model, source=run.source, fingerprint=fingerprint(final.config, tok),
                                 config_fingerprint=config_fingerprint(final.config),
                                 tokenizer_fingerprint=tokenizer_fingerprint(tok),
                                 architecture=final.config.model_type),
        target_modules=run.targets, trainable_parameters=run.n_trainable,
        data=DataInfo(name=run.data.name, fingerprint=run.data.fingerprint()),
        # the task that ran (alpaca data turns the default preference into instruction)
        train_config={**cfg.to_dict(), "task": task.name}, metrics=metrics, history=published_history(run),
        privacy=metrics.get("privacy"),  # the (ε, δ) guarantee of a --dp-epsilon run; None without
        fusion=run.fusion.record(metrics.get("fusion_token_scale")) if run.fusion else None,
    )


def published_history(run) -> list[dict]:
    """The validation history recpeft.json keeps. Under --dp-epsilon without the training loss: a plain mean of
    recent training examples' losses, which no noise covers (the run's own logs keep it; docs/privacy.md)."""
    history = run.progress.history
    return [{k: v for k, v in h.items() if k != "loss"} for h in history] if run.privacy else history
