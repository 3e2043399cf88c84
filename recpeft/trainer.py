"""The training loop: LoRA on a frozen base, inside an accelerate.Accelerator.

Loss = cross-entropy over the Yes/No logits at the answer position: the same quantity that scoring
turns into a probability, and the only logits the step computes. Evaluation every `eval_every`
optimiser steps on a fixed validation subset drawn from a LATER time slice than training; the best
adapter (by validation AUC) is kept and early stopping ends a run that stopped improving.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from . import __version__
from . import checkpoint as ckpts
from .artifacts import check_can_create, check_writable, model_card, save_adapter_dir
from .batches import loader
from .config import TrainConfig
from .data.csvdir import load_data
from .domains import get_domain
from .errors import Interrupted
from .faults import kill_point
from .methods import adalora, get_method
from .models import (config_fingerprint, default_targets, fingerprint, load_base, resolve_bits,
                     tokenizer_fingerprint)
from .objectives import Evaluation, get_task, task_name
from .runtime import default_threads


@dataclass
class TrainResult:
    output_dir: str | None
    metrics: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # training loss of every micro-batch, in order
    model: Any = None  # the trained peft model (best weights restored), for callers that keep going
    tokenizer: Any = None
    test_outputs: dict[str, list] = field(default_factory=dict)  # per-example test scores (for ROC plots)


def _threads(cfg: TrainConfig, num_processes: int) -> int:
    return cfg.threads or default_threads(num_processes)


def train(cfg: TrainConfig, save: bool = True, show_progress: bool = True, dry_run: bool = False) -> TrainResult:
    """Train an adapter as cfg says. dry_run: resolve and count everything, train and write nothing.

    With save, checkpoints go to runs_dir/<domain>/<run-id>/ (every cfg.checkpoint_every steps, at the
    end, and on Ctrl-C, which then raises errors.Interrupted); cfg.resume continues one exactly.
    """
    with ckpts.CtrlC(enabled=save) as ctrl_c:
        try:
            return _train(cfg, save, show_progress, dry_run, ctrl_c)
        except KeyboardInterrupt:  # a Ctrl-C outside the loop, or a second one: no new checkpoint
            if ctrl_c.checkpoint is None:
                raise
            raise Interrupted(ctrl_c.step, ctrl_c.checkpoint) from None


def _train(cfg: TrainConfig, save: bool, show_progress: bool, dry_run: bool, ctrl_c: ckpts.CtrlC) -> TrainResult:
    start = time.time()
    domain = get_domain(cfg.domain)
    out_dir = cfg.resolved_output_dir()
    resume_from = ckpts.resolve_resume(cfg)  # a bad --resume fails here, before any model is loaded
    resumed = ckpts.load(resume_from) if resume_from else None
    if save:
        check_writable(out_dir)
        check_can_create(Path(cfg.runs_dir) / cfg.domain, "runs folder")
    data = load_data(cfg.domain, cfg.data, cfg.format, cfg.on_bad_rows)
    task_name(cfg.task, data)  # a task the data cannot do fails here, before the model loads
    accelerator = Accelerator(gradient_accumulation_steps=cfg.grad_accum)
    main = accelerator.is_main_process
    torch.set_num_threads(_threads(cfg, accelerator.num_processes))
    set_seed(cfg.seed)

    method = get_method(cfg.method)
    bits = resolve_bits(cfg.bits)
    with accelerator.main_process_first():  # the first run fetches/converts the model once, on rank 0
        model, tok, source = load_base(cfg.model, bits=bits, device=accelerator.local_process_index
                                       if torch.cuda.is_available() else None)
    # Not peft's prepare_model_for_kbit_training: it up-casts every bf16 weight of a quantised model
    # (embeddings included) to fp32, which on the H200 made the 8-bit run's peak 1.4-2x the bf16 run's
    # (experiments/results/gpu_check.json). bf16 stays bf16, as in a bf16 run.
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    on_gpu = torch.cuda.is_available()
    if on_gpu:  # the training peak, apart from the load's transient
        torch.cuda.reset_peak_memory_stats()
    task = get_task(cfg.task, data, domain, tok, cfg)
    train_rows = task.train_rows(cfg.train_samples)
    valid_rows = task.eval_set("valid", cfg.eval_samples)
    test_rows = task.eval_set("test", cfg.test_samples)
    task.check_rows(train_rows, valid_rows)
    main_key = f"valid_{task.main_metric}"

    targets = cfg.target_modules or default_targets(model)
    train_loader = loader(train_rows, cfg.batch_size, shuffle=True, pad_id=tok.pad_token_id, seed=cfg.seed)
    sampler = train_loader.batch_sampler  # kept: accelerate wraps it, set_epoch must reach it
    # Per process after accelerate shards the batches; AdaLoRA needs the total before attaching.
    steps_per_epoch = max(1, math.ceil(math.ceil(len(train_loader) / accelerator.num_processes) / cfg.grad_accum))
    total_steps = cfg.max_steps or steps_per_epoch * cfg.epochs
    epochs = math.ceil(total_steps / steps_per_epoch)
    model = method.attach(model, cfg, targets, total_steps)
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable, n_total = sum(p.numel() for p in trainable), sum(p.numel() for p in model.parameters())
    if dry_run:
        counts = {s: len(v) for s, v in task.splits().items()}
        return TrainResult(None, {"dry_run": True, "examples_per_split": counts, "train_examples": len(train_rows),
                                  "valid_scored": len(valid_rows), "test_scored": len(test_rows),
                                  "trainable_parameters": n_trainable, "total_parameters": n_total,
                                  "total_steps": total_steps, "bits": bits, "target_modules": targets})
    decay = [p for p in trainable if p.ndim >= 2]
    no_decay = [p for p in trainable if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    # Not prepared by accelerate on purpose: stepped once per optimiser step, whatever the process count.
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    if main:
        eff = cfg.batch_size * cfg.grad_accum * accelerator.num_processes
        print(f"[recpeft] {cfg.domain}: {len(train_rows)} train / {len(valid_rows)} valid / {len(test_rows)} test "
              f"examples; {cfg.method} on a {bits}-bit base: {n_trainable:,} trainable of {n_total:,} parameters; "
              f"{total_steps} steps, effective batch {eff} = {cfg.batch_size} x {cfg.grad_accum} accumulation x "
              f"{accelerator.num_processes} process(es)",
              flush=True)

    def evaluate(rows, what: str, base: bool = False) -> Evaluation:
        bar = tqdm(total=len(rows), desc=f"eval {what}", leave=False, disable=not (main and show_progress))
        peft_model = accelerator.unwrap_model(model)
        # The untrained adapter is a no-op (LoRA B = 0); disabling it skips its extra matmuls.
        with method.disabled(peft_model) if base else contextlib.nullcontext():
            result = task.evaluate(peft_model, rows, batch_size=cfg.batch_size * 2, device=accelerator.device,
                                   progress=bar)
        bar.close()
        return result

    def snapshot() -> dict[str, torch.Tensor]:
        """A copy of the trainable weights: the best adapter so far."""
        return {n: p.detach().clone() for n, p in accelerator.unwrap_model(model).named_parameters() if p.requires_grad}

    fingerprints = {"data": data.fingerprint(), "base_config": config_fingerprint(accelerator.unwrap_model(model).config)}
    if resumed is None:
        base_valid = evaluate(valid_rows, "valid (untrained)", base=True).metrics
        base_test = (evaluate(test_rows, "test (untrained)", base=True).metrics
                     if len(test_rows) and cfg.base_test else {})
        best_auc, best_step, bad_evals = base_valid[task.main_metric], 0, 0
        best_state = snapshot()
        history = [{"step": 0, main_key: best_auc}]
        step, stop, running, start_epoch, skip = 0, False, [], 0, 0
        run_dir = ckpts.new_run_dir(cfg)
    else:  # everything the loop carries from step to step comes back from the checkpoint
        st = ckpts.check_fingerprints(resumed, fingerprints)
        ckpts.restore(resumed, accelerator.unwrap_model(model), optimizer, scheduler,
                      adalora if cfg.method == "adalora" else None)
        base_valid, base_test, best_auc, best_step, bad_evals, history, step, stop, running = (
            st[k] for k in ("base_valid", "base_test", "best_auc", "best_step", "bad_evals", "history", "step", "stop",
                            "losses"))
        best_state = ckpts.best_weights(resumed, accelerator.unwrap_model(model))
        start_epoch, skip = st["epoch"], st["batches_done"]
        accelerator.step = st["micro_step"]  # accelerate's gradient-accumulation counter
        run_dir = resumed.run_dir
        ctrl_c.step, ctrl_c.checkpoint = step, str(resumed.path)
        if main:
            print(f"[recpeft] resuming from {resumed.path}: step {step}, epoch {start_epoch}, batch {skip}", flush=True)

    def save_checkpoint(epoch: int, batches_done: int) -> None:
        """Full training state after the current step; data position = micro-batches done in `epoch`."""
        if accelerator.gradient_state.end_of_dataloader:  # the epoch is over: resume at the next one
            epoch, batches_done = epoch + 1, 0
        rng = ckpts.capture_rng()
        rngs = [rng] if accelerator.num_processes == 1 else gather_object([rng])
        if main:
            unwrapped = accelerator.unwrap_model(model)
            state = {"epoch": epoch, "batches_done": batches_done, "micro_step": accelerator.step,
                     "base_valid": base_valid, "base_test": base_test, "best_auc": best_auc, "best_step": best_step,
                     "bad_evals": bad_evals, "history": history, "stop": stop, "losses": running,
                     "fingerprints": fingerprints}
            ckpts.save(run_dir, step, cfg.keep_checkpoints, cfg=cfg, optimizer=optimizer, scheduler=scheduler,
                       weights={n: p for n, p in unwrapped.named_parameters() if p.requires_grad},
                       best=best_state, rngs=rngs, trainer_state=state,
                       adalora=adalora.allocator_state(unwrapped) if cfg.method == "adalora" else None)
        accelerator.wait_for_everyone()
        ctrl_c.step, ctrl_c.checkpoint = step, str(Path(run_dir) / f"checkpoint-{step}")

    def interrupt_requested() -> bool:
        """Every process stops at the same step, whichever of them got the Ctrl-C."""
        if accelerator.num_processes == 1:
            return ctrl_c.requested
        flag = torch.tensor([float(ctrl_c.requested)], device=accelerator.device)
        return bool(accelerator.reduce(flag, "sum").item())

    step_seconds = []
    bar = tqdm(total=total_steps, initial=step, desc=f"train {cfg.domain}", disable=not (main and show_progress))
    model.train()
    pending_rng = resumed  # restored just before the first resumed micro-batch, as the uninterrupted run had it
    ctrl_c.defer()  # from here a first Ctrl-C finishes the step, checkpoints and stops
    for epoch in range(start_epoch, epochs):
        if stop or step >= total_steps:  # resumed from the final checkpoint
            break
        sampler.set_epoch(epoch)
        if hasattr(train_loader, "set_epoch"):  # accelerate's loader counts epochs itself; a resumed one starts at 0
            train_loader.set_epoch(epoch)
        if pending_rng is not None and skip == 0:  # before the epoch's iterator draws its seed
            ckpts.restore_rng(pending_rng, accelerator.process_index)
            pending_rng = None
        for batch_idx, batch in enumerate(train_loader):
            if skip:  # resumed: this micro-batch was trained before the checkpoint
                skip -= 1
                continue
            if pending_rng is not None:
                ckpts.restore_rng(pending_rng, accelerator.process_index)
                pending_rng = None
            tick = time.perf_counter()
            with accelerator.accumulate(model):
                loss = task.loss(model, batch)
                if hasattr(method, "extra_loss"):
                    loss = loss + method.extra_loss(accelerator.unwrap_model(model))
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(trainable, cfg.max_grad_norm)
                optimizer.step()
                if accelerator.sync_gradients:
                    scheduler.step()
                    if hasattr(method, "after_step"):  # AdaLoRA: re-allocate the rank budget
                        method.after_step(accelerator.unwrap_model(model), step + 1)
                optimizer.zero_grad()
            running.append(loss.item())
            step_seconds.append(time.perf_counter() - tick)
            if not accelerator.sync_gradients:
                continue
            step += 1
            kill_point(f"step:{step}")
            bar.update(1)
            bar.set_postfix(loss=f"{sum(running[-20:]) / len(running[-20:]):.4f}")
            if step % cfg.eval_every == 0 or step == total_steps:
                valid_auc = evaluate(valid_rows, f"valid @ {step}").metrics[task.main_metric]
                history.append({"step": step, main_key: valid_auc, "loss": sum(running[-20:]) / len(running[-20:])})
                if main:
                    bar.write(f"[recpeft] step {step}: loss {history[-1]['loss']:.4f}  valid {task.main_metric} "
                              f"{valid_auc:.4f}")
                if task.better(valid_auc, best_auc):
                    best_auc, best_step, bad_evals = valid_auc, step, 0
                    best_state = snapshot()
                else:
                    bad_evals += 1
                    stop = cfg.patience > 0 and bad_evals >= cfg.patience
            interrupted = interrupt_requested()
            if save and (interrupted or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0)):
                save_checkpoint(epoch, batch_idx + 1)
            if interrupted:
                bar.close()
                raise Interrupted(step, ctrl_c.checkpoint)
            if stop or step >= total_steps:
                break
        if stop or step >= total_steps:
            break
    ctrl_c.immediate()  # past the loop a Ctrl-C stops at once (train() reports the last checkpoint)
    bar.close()
    if history[-1]["step"] != step and not stop:  # the data ran out before total_steps: judge the last weights too
        valid_auc = evaluate(valid_rows, f"valid @ {step}").metrics[task.main_metric]
        history.append({"step": step, main_key: valid_auc, "loss": sum(running[-20:]) / max(1, len(running[-20:]))})
        if task.better(valid_auc, best_auc):
            best_auc, best_step = valid_auc, step
            best_state = snapshot()
    if save:  # the end state: a crash from here on resumes straight to the test pass and the save
        save_checkpoint(epochs, 0)

    final = accelerator.unwrap_model(model)
    with torch.no_grad():
        for n, p in final.named_parameters():
            if n in best_state:
                p.copy_(best_state[n])
    if cfg.method == "adalora":
        adalora.apply_rank_pattern(final)  # the saved file holds only the final budget's ranks
    test_eval = evaluate(test_rows, "test (adapter)") if len(test_rows) else Evaluation({})
    metrics = {
        "task": task.name, "main_metric": task.main_metric,
        **{f"valid_{k}_base": v for k, v in base_valid.items() if k != "n"}, main_key: best_auc,
        "valid_n": len(valid_rows),
        **{f"test_{k}_base": v for k, v in base_test.items() if k != "n"},
        **{f"test_{k}": v for k, v in test_eval.metrics.items() if k != "n"},
        f"test_{task.main_metric}": test_eval.metrics.get(task.main_metric, math.nan), "test_n": len(test_rows),
        "best_step": best_step, "steps": step, "train_examples": len(train_rows),
        "seconds": round(time.time() - start, 1), "early_stopped": stop, "bits": bits,
        "seconds_per_micro_batch": round(sum(step_seconds) / max(1, len(step_seconds)), 4),
    }
    if on_gpu:
        frozen = sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad)
        metrics["gpu_mib"] = {"frozen_weights": round(frozen / 2**20, 1),
                              "peak": round(torch.cuda.max_memory_allocated() / 2**20, 1)}
    # One number per process: the sum of its trainable weights. Equal on every rank = DDP kept them in sync.
    local = torch.tensor([sum(p.detach().double().sum().item() for p in trainable)], dtype=torch.float64,
                         device=accelerator.device)
    metrics["rank_param_sums"] = accelerator.gather(local).tolist()
    if os.environ.get("RECPEFT_DUMP_RANK_WEIGHTS"):  # test hook: every rank's weights, to compare exactly
        from safetensors.torch import save_file

        dump = os.path.join(os.environ["RECPEFT_DUMP_RANK_WEIGHTS"], f"rank{accelerator.process_index}.safetensors")
        save_file({n: p.detach().cpu().contiguous() for n, p in final.named_parameters() if p.requires_grad}, dump)
    if cfg.method == "adalora":
        metrics["ranks"] = adalora.ranks(final)
        metrics["rank_budget"] = {"init": cfg.init_r * len(metrics["ranks"]), "final": sum(metrics["ranks"].values())}
    written = None
    if save and main:
        meta = {
            "recpeft_version": __version__, "domain": cfg.domain, "method": cfg.method, "task": task.name,
            "positive_verb": domain.positive_verb, "prompt_template": task.template_id,
            "verbalizer": task.verbalizer(),
            "base_model": {"name": cfg.model, "source": source, "fingerprint": fingerprint(final.config, tok),
                           "config_fingerprint": config_fingerprint(final.config),
                           "tokenizer_fingerprint": tokenizer_fingerprint(tok),
                           "architecture": final.config.model_type},
            "target_modules": targets, "trainable_parameters": n_trainable,
            "data": {"name": data.name, "fingerprint": data.fingerprint()},
            # the task that ran (alpaca data turns the default preference into instruction)
            "train_config": {**cfg.to_dict(), "task": task.name}, "metrics": metrics, "history": history,
        }
        written = str(save_adapter_dir(lambda folder: method.save(final, folder, cfg), out_dir, meta,
                                       model_card(meta)))
    accelerator.wait_for_everyone()
    metrics["seconds"] = round(time.time() - start, 1)
    return TrainResult(written, metrics, history, running, final, tok, test_eval.outputs)
