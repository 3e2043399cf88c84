"""The training loop: an adapter on a frozen base, inside an accelerate.Accelerator.

Loss = cross-entropy over the Yes/No logits at the answer position: the same quantity that scoring
turns into a probability, and the only logits the step computes. Evaluation every `eval_every`
optimiser steps on a fixed validation subset drawn from a LATER time slice than training; the best
adapter (by validation AUC) is kept and early stopping ends a run that stopped improving.

The loop knows no method by name: what a method adds (extra loss, after-step work, checkpoint state,
finalisation, metrics) comes through its Method hooks (recpeft/methods/base.py). Set-up pieces live in
setup.py, the end-of-run records in summary.py, the carried state in progress.py; events.py names the
points tests and benchmarks hook into.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import torch
from accelerate.utils import broadcast_object_list, gather_object, set_seed
from tqdm.auto import tqdm

from recpeft.adapter_meta import model_card
from recpeft.artifacts import check_can_create, check_writable, save_adapter_dir
from recpeft.config import TrainConfig
from recpeft.data import load_data
from recpeft.domains import get_domain
from recpeft.errors import Interrupted
from recpeft.evaluation import sharding
from recpeft.fusion.fusion import Fusion
from recpeft.kernels.gpu import batch_size_for, pad_multiple
from recpeft.methods import get_method
from recpeft.models.load import config_fingerprint, default_targets, load_base, resolve_bits
from recpeft.runtime import default_threads
from recpeft.tasks import get_task, task_name
from recpeft.tasks.base import Evaluation
from recpeft.tasks.batches import loader
from recpeft.training import checkpoint as ckpts
from recpeft.training import events, setup, summary, tracking
from recpeft.training import privacy as dp
from recpeft.training.progress import Progress, TrainResult
from recpeft.training.setup import (
    clip_gradients,
    enable_gradient_checkpointing,
    make_accelerator,
    make_optimizer,
    make_scheduler,
    split_fusion,
)

__all__ = ["Progress", "Run", "TrainResult", "train"]


def _threads(cfg: TrainConfig, num_processes: int) -> int:
    return cfg.threads or default_threads(num_processes)


def train(cfg: TrainConfig, save: bool = True, show_progress: bool = True, dry_run: bool = False) -> TrainResult:
    """Train an adapter as cfg says. dry_run: resolve and count everything, train and write nothing.

    With save, checkpoints go to runs_dir/<domain>/<run-id>/ (every cfg.checkpoint_every steps, at the
    end, and on Ctrl-C, which then raises errors.Interrupted); cfg.resume continues one exactly.
    """
    with ckpts.CtrlC(enabled=save) as ctrl_c:
        try:
            run = Run(cfg, save, show_progress, ctrl_c)
            if dry_run:
                return run.dry_run()
            with run.tracker:  # run.json status and TensorBoard logs (recpeft/training/tracking.py)
                run.prepare()
                run.fit()
                return run.finish()
        except KeyboardInterrupt:  # a Ctrl-C outside the loop, or a second one: no new checkpoint
            if ctrl_c.checkpoint is None:
                raise
            raise Interrupted(ctrl_c.step, ctrl_c.checkpoint) from None


class Run:
    """One training run, in the order it happens: __init__ loads data and model and attaches the
    adapter; prepare() builds the optimiser and starts (or resumes) the progress; fit() is the loop;
    finish() restores the best adapter, scores test and saves."""

    def __init__(self, cfg: TrainConfig, save: bool, show_progress: bool, ctrl_c: ckpts.CtrlC):
        self.start = time.time()
        self.cfg, self.save, self.show_progress, self.ctrl_c = cfg, save, show_progress, ctrl_c
        self.domain = get_domain(cfg.domain)
        self.out_dir = cfg.resolved_output_dir()
        resume_from = ckpts.resolve_resume(cfg)  # a bad --resume fails here, before any model is loaded
        self.resumed = ckpts.load(resume_from) if resume_from else None
        if save:
            check_writable(self.out_dir)
            check_can_create(Path(cfg.runs_dir) / cfg.domain, "runs folder")
        self.data = load_data(cfg.domain, cfg.data, cfg.format, cfg.on_bad_rows)
        task_name(cfg.task, self.data)  # a task the data cannot do fails here, before the model loads
        # --fusion: item vectors (fitted on the training period, or read) as soft tokens after each item's title;
        # a bad feature file fails here too
        self.fusion = Fusion.for_run(cfg, self.data)
        self.privacy = dp.for_run(cfg, self.data, self.domain)  # DP-SGD or None; δ >= 1/N fails here too
        self.bits = resolve_bits(cfg.bits, setup.process_on_cuda())  # 0: 8 on CUDA, 32 on CPU
        self.accelerator = accelerator = make_accelerator(cfg, self.bits, save)
        # every device decision below (load device, batch size, padding, memory report) follows this one
        self.on_cuda = on_cuda = accelerator.device.type == "cuda"
        self.tracker = tracking.Tracker(accelerator, cfg, save)
        self.main = accelerator.is_main_process
        torch.set_num_threads(_threads(cfg, accelerator.num_processes))
        set_seed(cfg.seed)

        self.method = get_method(cfg.method)
        with accelerator.main_process_first():  # the first run fetches/converts the model once, on rank 0
            model, self.tok, self.source = load_base(cfg.model, bits=self.bits, device=accelerator.local_process_index
                                                     if on_cuda else "cpu")
        if cfg.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        if on_cuda:  # the training peak, apart from the load's transient
            torch.cuda.reset_peak_memory_stats(accelerator.device)
        task_data = self.data
        if self.fusion:
            task_data, self.tok = self.fusion.mark_data(self.data), self.fusion.tokenizer(self.tok, model)
        self.task = task = get_task(cfg.task, task_data, self.domain, self.tok, cfg)
        self.train_rows = task.train_rows(cfg.train_samples)
        self.valid_rows = task.eval_set("valid", cfg.eval_samples)
        self.test_rows = task.eval_set("test", cfg.test_samples)
        task.check_rows(self.train_rows, self.valid_rows)
        self.main_key = f"valid_{task.main_metric}"

        self.targets = cfg.target_modules or default_targets(model)
        self.batch_size = batch_size_for(cfg.batch_size, cfg.batch_tokens, [len(r.input_ids) for r in self.train_rows],
                                         on_cuda)
        self.train_loader = loader(self.train_rows, self.batch_size, shuffle=True, pad_id=self.tok.pad_token_id,
                                   seed=cfg.seed, multiple=pad_multiple(on_cuda))
        self.sampler = self.train_loader.batch_sampler  # kept: accelerate wraps it, set_epoch must reach it
        # Per process after accelerate shards the batches; AdaLoRA needs the total before attaching.
        self.steps_per_epoch = max(1, math.ceil(math.ceil(len(self.train_loader) / accelerator.num_processes)
                                                / cfg.grad_accum))
        self.total_steps = cfg.max_steps or self.steps_per_epoch * cfg.epochs
        self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        self.model = self.method.attach(model, cfg, self.targets, self.total_steps)
        if self.fusion:  # after the method, which freezes everything but its own weights
            self.fusion.attach(self.model)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.n_trainable = sum(p.numel() for p in self.trainable)
        self.param_groups = split_fusion(self.trainable, list(self.fusion.module.parameters()) if self.fusion else [])
        self.n_total = sum(p.numel() for p in self.model.parameters())
        self.step_seconds: list[float] = []
        self.eval_seconds, self.eval_units = 0.0, 0  # evaluation wall time; units this process scored

    def save_weights(self, folder: Path) -> None:
        """The adapter's weight files: the method's, and fusion.safetensors with --fusion."""
        self.method.save(self.unwrapped(), folder, self.cfg)
        if self.fusion:
            self.fusion.save(folder)

    def dry_run(self) -> TrainResult:
        counts = {s: len(v) for s, v in self.task.splits().items()}
        return TrainResult(None, {"dry_run": True, "examples_per_split": counts,
                                  "train_examples": len(self.train_rows), "valid_scored": len(self.valid_rows),
                                  "test_scored": len(self.test_rows), "trainable_parameters": self.n_trainable,
                                  "total_parameters": self.n_total, "total_steps": self.total_steps,
                                  "bits": self.bits, "target_modules": self.targets})

    def unwrapped(self):
        return self.accelerator.unwrap_model(self.model)

    # ------------------------------------------------------------------------------------ set-up

    def prepare(self) -> None:
        cfg, accelerator = self.cfg, self.accelerator
        optimizer = make_optimizer(self.param_groups, cfg)
        # opacus: per-example clipping and noise, Poisson-sampled batches (recpeft/training/privacy.py)
        if self.privacy:
            optimizer, self.train_loader, self.sampler = self.privacy.attach(self, optimizer)
        self.model, self.optimizer, self.train_loader = accelerator.prepare(self.model, optimizer, self.train_loader)
        self.scheduler = make_scheduler(self.optimizer, cfg, self.total_steps)
        if self.main:
            eff = self.batch_size * cfg.grad_accum * accelerator.num_processes
            print(f"[recpeft] {cfg.domain}: {len(self.train_rows)} train / {len(self.valid_rows)} valid / "
                  f"{len(self.test_rows)} test examples; {cfg.method} on a {self.bits}-bit base: "
                  f"{self.n_trainable:,} trainable of {self.n_total:,} parameters; {self.total_steps} steps, effective "
                  f"batch {eff} = {self.batch_size} x {cfg.grad_accum} accumulation x {accelerator.num_processes} "
                  f"process(es)", flush=True)
        self.fingerprints = {"data": self.data.fingerprint(),
                             "base_config": config_fingerprint(self.unwrapped().config)}
        if self.resumed is None:
            self.start_new()
        else:
            self.resume()
        self.tracker.start(self.run_dir, self.progress.step, self.total_steps, self.optimizer,
                           self.progress.base_valid)

    def start_new(self) -> None:
        base_valid = self.evaluate(self.valid_rows, "valid (untrained)", base=True).metrics
        base_test = (self.evaluate(self.test_rows, "test (untrained)", base=True).metrics
                     if len(self.test_rows) and self.cfg.base_test else {})
        best = base_valid[self.task.main_metric]
        self.progress = Progress(base_valid, base_test, best, history=[{"step": 0, self.main_key: best}])
        self.best_state = self.snapshot()
        self.start_epoch, self.skip = 0, 0
        self.run_dir = ckpts.new_run_dir(self.cfg)
        if self.accelerator.num_processes > 1:  # rank 0's name (it has its pid) on every rank
            self.run_dir = broadcast_object_list([self.run_dir])[0]

    def resume(self) -> None:
        """Everything the loop carries from step to step comes back from the checkpoint."""
        resumed, unwrapped = self.resumed, self.unwrapped()
        st = ckpts.check_fingerprints(resumed, self.fingerprints)
        ckpts.restore(resumed, unwrapped, self.optimizer, self.scheduler, self.method)
        self.progress = Progress.from_state(st)
        if self.privacy:
            self.privacy.restore(st.get("privacy"), str(resumed.path))
        self.best_state = ckpts.best_weights(resumed, unwrapped)
        self.start_epoch, self.skip = st["epoch"], st["batches_done"]
        self.accelerator.step = st["micro_step"]  # accelerate's gradient-accumulation counter
        self.run_dir = resumed.run_dir
        self.ctrl_c.step, self.ctrl_c.checkpoint = self.progress.step, str(resumed.path)
        if self.main:
            print(f"[recpeft] resuming from {resumed.path}: step {self.progress.step}, epoch {self.start_epoch}, "
                  f"batch {self.skip}", flush=True)

    # --------------------------------------------------------------------------- loop's helpers

    def evaluate(self, rows, what: str, base: bool = False) -> Evaluation:
        bar = tqdm(total=len(rows), desc=f"eval {what}", leave=False, disable=not (self.main and self.show_progress))
        peft_model = self.unwrapped()
        tick = time.perf_counter()
        # The untrained adapter is a no-op (LoRA B = 0); disabling it skips its extra matmuls. Each process
        # scores its share of the rows and gets everyone's scores back (recpeft/evaluation/sharding.py).
        with self.method.disabled(peft_model) if base else contextlib.nullcontext(), \
                sharding.across(self.accelerator) as share:
            # a DP run's Poisson batches may be far larger than what fits in one pass: evaluate in pieces' size
            # (dp_max_physical_batch is 0 without DP)
            size = min(self.batch_size, self.cfg.dp_max_physical_batch or self.batch_size)
            result = self.task.evaluate(peft_model, rows, batch_size=size * 2,
                                        device=self.accelerator.device, progress=bar)
        self.eval_seconds += time.perf_counter() - tick
        self.eval_units += share.units
        bar.close()
        return result

    def snapshot(self) -> dict[str, torch.Tensor]:
        """A copy of the trainable weights: the best adapter so far."""
        return {n: p.detach().clone() for n, p in self.unwrapped().named_parameters() if p.requires_grad}

    def judge(self, step: int, valid: dict[str, float]) -> bool:
        """Record a validation evaluation; keep the adapter if it is the best so far (and say so)."""
        progress, valid_score = self.progress, valid[self.task.main_metric]
        self.tracker.evaluation(step, valid)
        progress.history.append({"step": step, self.main_key: valid_score, "loss": progress.recent_loss()})
        # Under DP the adapter is the last iterate, as the accountant covers it: picking a step by validation
        # would make the choice depend on data the guarantee does not cover (validation histories). No early stop.
        if not self.privacy and not self.task.better(valid_score, progress.best_auc):
            return False
        progress.best_auc, progress.best_step = valid_score, step
        self.best_state = self.snapshot()
        return True

    def save_checkpoint(self, epoch: int, batches_done: int) -> None:
        """Full training state after the current step; data position = micro-batches done in `epoch`."""
        accelerator = self.accelerator
        if accelerator.gradient_state.end_of_dataloader:  # the epoch is over: resume at the next one
            epoch, batches_done = epoch + 1, 0
        rng = ckpts.capture_rng()
        rngs = [rng] if accelerator.num_processes == 1 else gather_object([rng])
        step = self.progress.step
        if self.main:
            unwrapped = self.unwrapped()
            state = {"epoch": epoch, "batches_done": batches_done, "micro_step": accelerator.step,
                     **self.progress.state(), "fingerprints": self.fingerprints,
                     "privacy": self.privacy.state() if self.privacy else None}
            weights = {n: p for n, p in unwrapped.named_parameters() if p.requires_grad}
            own = self.method.checkpoint_state(unwrapped)
            ckpts.save(self.run_dir, step, self.cfg.keep_checkpoints, cfg=self.cfg, optimizer=self.optimizer,
                       scheduler=self.scheduler, weights=weights, best=self.best_state, rngs=rngs, trainer_state=state,
                       method_state=(self.method.checkpoint_name, *own) if own is not None else None)
        accelerator.wait_for_everyone()
        self.ctrl_c.step, self.ctrl_c.checkpoint = step, str(Path(self.run_dir) / f"checkpoint-{step}")

    def interrupt_requested(self) -> bool:
        """Every process stops at the same step, whichever of them got the Ctrl-C."""
        if self.accelerator.num_processes == 1:
            return self.ctrl_c.requested
        flag = torch.tensor([float(self.ctrl_c.requested)], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, "sum").item())

    # -------------------------------------------------------------------------------- the loop

    def train_step(self, batch) -> bool:
        """One micro-batch: forward, backward and, at an accumulation boundary, the optimiser step. Returns
        whether a step was taken (under DP, only at the last piece of a Poisson batch)."""
        cfg, accelerator, method, model = self.cfg, self.accelerator, self.method, self.model
        tick = time.perf_counter()
        with accelerator.accumulate(model):
            loss = self.task.loss(model, batch)
            if batch.get("dp_empty"):  # an empty Poisson batch's stand-in row: zero gradient, noise only
                loss = loss * 0
            extra = method.extra_loss(accelerator.unwrap_model(model))  # AdaLoRA: its orthogonality penalty
            if extra is not None:
                loss = loss + extra
            accelerator.backward(loss)
            if accelerator.sync_gradients and cfg.max_grad_norm > 0 and not self.privacy:  # opacus clips
                clip_gradients(accelerator, self.param_groups, cfg.max_grad_norm)
            stepped = accelerator.sync_gradients and (self.privacy.before_step(batch) if self.privacy else True)
            self.optimizer.step()
            if stepped:
                self.scheduler.step()
                method.after_step(accelerator.unwrap_model(model), self.progress.step + 1)
            self.optimizer.zero_grad()
        self.progress.losses.append(loss.item())
        self.step_seconds.append(time.perf_counter() - tick)
        self.tracker.micro_batch(batch, self.progress.losses[-1], self.step_seconds[-1])
        return stepped

    def fit(self) -> None:
        cfg, accelerator, progress, ctrl_c = self.cfg, self.accelerator, self.progress, self.ctrl_c
        skip = self.skip
        bar = tqdm(total=self.total_steps, initial=progress.step, desc=f"train {cfg.domain}",
                   disable=not (self.main and self.show_progress))
        self.model.train()
        # restored just before the first resumed micro-batch, as the uninterrupted run had it
        pending_rng = self.resumed
        ctrl_c.defer()  # from here a first Ctrl-C finishes the step, checkpoints and stops
        for epoch in range(self.start_epoch, self.epochs):
            if progress.stop or progress.step >= self.total_steps:  # resumed from the final checkpoint
                break
            self.sampler.set_epoch(epoch)
            # accelerate's loader counts epochs itself, and a resumed one starts at 0
            if hasattr(self.train_loader, "set_epoch"):
                self.train_loader.set_epoch(epoch)
            if pending_rng is not None and skip == 0:  # before the epoch's iterator draws its seed
                ckpts.restore_rng(pending_rng, accelerator.process_index)
                pending_rng = None
            for batch_idx, batch in enumerate(self.train_loader):
                if skip:  # resumed: this micro-batch was trained before the checkpoint
                    skip -= 1
                    continue
                if pending_rng is not None:
                    ckpts.restore_rng(pending_rng, accelerator.process_index)
                    pending_rng = None
                if not self.train_step(batch):
                    continue
                progress.step += 1
                step = progress.step
                events.fire("step", step=step, rank=accelerator.process_index)
                self.tracker.step(step)
                bar.update(1)
                bar.set_postfix(loss=f"{progress.recent_loss():.4f}")
                if step % cfg.eval_every == 0 or step == self.total_steps:
                    valid = self.evaluate(self.valid_rows, f"valid @ {step}").metrics
                    valid_score = valid[self.task.main_metric]
                    improved = self.judge(step, valid)
                    if self.main:
                        bar.write(f"[recpeft] step {step}: loss {progress.history[-1]['loss']:.4f}  valid "
                                  f"{self.task.main_metric} {valid_score:.4f}")
                    progress.bad_evals = 0 if improved else progress.bad_evals + 1
                    progress.stop = cfg.patience > 0 and progress.bad_evals >= cfg.patience
                interrupted = self.interrupt_requested()
                if self.save and (interrupted or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0)):
                    self.save_checkpoint(epoch, batch_idx + 1)
                if interrupted:
                    bar.close()
                    raise Interrupted(step, ctrl_c.checkpoint, together=True)
                if progress.stop or step >= self.total_steps:
                    break
            if progress.stop or progress.step >= self.total_steps:
                break
        ctrl_c.immediate()  # past the loop a Ctrl-C stops at once (train() reports the last checkpoint)
        bar.close()
        if progress.history[-1]["step"] != progress.step and not progress.stop:
            # the data ran out before total_steps: judge the last weights too
            self.judge(progress.step, self.evaluate(self.valid_rows, f"valid @ {progress.step}").metrics)
        if self.save:  # the end state: a crash from here on resumes straight to the test pass and the save
            self.save_checkpoint(self.epochs, 0)

    # ------------------------------------------------------------------------------ the end

    def finish(self) -> TrainResult:
        accelerator, progress = self.accelerator, self.progress
        final = self.unwrapped()
        with torch.no_grad():
            for n, p in final.named_parameters():
                if n in self.best_state:
                    p.copy_(self.best_state[n])
        self.method.finalise(final)  # e.g. AdaLoRA: only the final budget's ranks, as the saved file holds
        test_eval = self.evaluate(self.test_rows, "test (adapter)") if len(self.test_rows) else Evaluation({})
        metrics = summary.metrics(self, test_eval)
        events.fire("trained", model=final, rank=accelerator.process_index)
        written = None
        if self.save and self.main:
            meta = summary.adapter_meta(self, final, metrics)
            written = str(save_adapter_dir(self.save_weights, self.out_dir, meta, model_card(meta)))
        accelerator.wait_for_everyone()
        metrics["seconds"] = round(time.time() - self.start, 1)
        return TrainResult(written, metrics, progress.history, progress.losses, final, self.tok, test_eval.outputs)
