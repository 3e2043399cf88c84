"""Training logs: TensorBoard scalars through accelerate's trackers, and a run.json status per run folder.

Why here and not in the loop: the trainer calls five hooks (start, micro_batch, step, evaluation,
close) and knows nothing of TensorBoard. Events go to <run folder>/tensorboard/, written by the main
process only; `--log-with none` writes no events.

Resume and SIGKILL: accelerate flushes after every log, so a killed run may have logged steps past its
last checkpoint. A resumed run opens a new event file in the same folder with purge_step = checkpoint
step + 1; TensorBoard (its UI, either loader, and EventAccumulator) then drops the orphaned steps of
the killed run, and the resumed run logs them again, once. The raw files still hold them.

run.json says what `recpeft runs` cannot tell from checkpoints: running (pid, host), finished,
interrupted (Ctrl-C) or crashed (an exception; a process killed without a word leaves "running" with
a dead pid, which `recpeft runs` reports as crashed).
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from pathlib import Path
from typing import Any

import torch

from recpeft.errors import Interrupted, UserError

STATUS_FILE = "run.json"
TB_DIR = "tensorboard"


def accelerator_kwargs(cfg, save: bool) -> dict[str, Any]:
    """Accelerator(...) arguments for cfg.log_with. The project_dir only satisfies accelerate's check
    that a tracker has a folder: Tracker.start points the logs at the run folder once it is known."""
    if not save or cfg.log_with == "none":
        return {}
    try:
        import torch.utils.tensorboard  # noqa: F401  (what accelerate's TensorBoard tracker imports)
    except ImportError:
        raise UserError("--log-with tensorboard needs the tensorboard package (pip install tensorboard), "
                        "or pass --log-with none") from None
    return {"log_with": cfg.log_with, "project_dir": str(Path(cfg.runs_dir) / cfg.domain)}


def _tag(name: str) -> str:
    return re.sub(r"[^-/\w.]", "_", name)  # TensorBoard's legal tag characters ("ndcg@10" -> "ndcg_10")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_status(run_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((Path(run_dir) / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _wait_to_sort_last(logdir: Path) -> None:
    """TensorBoard reads a run's event files in name order, and a name starts with the second the file
    was made: a resumed run's file must not share the second of the killed run's, or it may be read first."""
    stamps = [int(part) for p in logdir.glob("events.out.tfevents.*")
              if (part := p.name.split(".")[3]).isdigit()]
    wait = max(stamps, default=0) + 1 - time.time()
    if wait > 0:
        time.sleep(wait)


def rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


class Tracker:
    """The run's logs. Every process calls every hook (step() reduces the throughput counters across
    processes); only the main process writes."""

    def __init__(self, accelerator, cfg, save: bool):
        self.accelerator, self.cfg = accelerator, cfg
        self.logging = save and cfg.log_with != "none"
        self.writes_status = save and accelerator.is_main_process
        self.run_dir: Path | None = None
        self.lr, self.last_step = float("nan"), 0
        self._reset()

    def _reset(self) -> None:
        self.tokens = self.examples = self.micro = 0
        self.loss_sum = self.seconds = 0.0

    # ------------------------------------------------------------------------------ hooks

    def start(self, run_dir: Path, step: int, total_steps: int, optimizer, base_valid: dict[str, float]) -> None:
        """At the start (or resume, step > 0) of the loop: status "running", trackers open."""
        self.run_dir, self.last_step = Path(run_dir), step
        if self.writes_status:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            old = read_status(self.run_dir) or {}
            self.status = {"status": "running", "pid": os.getpid(), "host": socket.gethostname(),
                           "started": old.get("started", time.strftime("%Y-%m-%dT%H:%M:%S")),
                           "resumed_at_steps": old.get("resumed_at_steps", []) + ([step] if step else []),
                           "step": step, "total_steps": total_steps, "domain": self.cfg.domain,
                           "output_dir": str(self.cfg.resolved_output_dir()), "log_with": self.cfg.log_with}
            _write_json(self.run_dir / STATUS_FILE, self.status)
        if not self.logging:
            return
        # the lr each optimiser step used (the scheduler has moved on by the time the step is logged)
        inner = getattr(optimizer, "optimizer", optimizer)
        inner = getattr(inner, "original_optimizer", inner)  # opacus' DPOptimizer (--dp-epsilon) wraps the real one
        inner.register_step_pre_hook(lambda opt, args, kwargs: setattr(self, "lr", opt.param_groups[0]["lr"]))
        self.accelerator.project_configuration.logging_dir = str(self.run_dir)
        if self.accelerator.is_main_process:
            _wait_to_sort_last(self.run_dir / TB_DIR)
        # purge_step writes a SessionLog.START at that step. A new run writes one at 0 as well: TensorBoard's
        # Python reader takes only a second START for a restart, whose later steps it then drops.
        self.accelerator.init_trackers(TB_DIR, init_kwargs={"tensorboard": {"purge_step": step + 1 if step else 0}})
        if step == 0:
            self.evaluation(0, base_valid)

    def micro_batch(self, batch: dict[str, torch.Tensor], loss: float, seconds: float) -> None:
        if not self.logging:
            return
        ids = batch["input_ids"]
        self.tokens += int(batch["attention_mask"].sum()) if "attention_mask" in batch else ids.numel()
        self.examples += ids.shape[0]
        self.loss_sum += loss
        self.micro += 1
        self.seconds += seconds

    def step(self, step: int) -> None:
        """After optimiser step `step`: its loss, lr, throughput (training compute only) and memory."""
        self.last_step = step
        if not self.logging:
            return
        acc = self.accelerator
        counts = torch.tensor([self.tokens, self.examples, self.loss_sum, self.micro, self.seconds],
                              dtype=torch.float64, device=acc.device)
        if acc.num_processes > 1:
            counts = acc.reduce(counts, "sum")
        tokens, examples, loss_sum, micro, seconds = counts.tolist()
        self._reset()
        seconds /= acc.num_processes  # each process's own wall time, on average
        values = {"train/loss": loss_sum / max(1, micro), "train/lr": self.lr,
                  "perf/tokens_per_s": tokens / seconds if seconds else 0.0,
                  "perf/examples_per_s": examples / seconds if seconds else 0.0,
                  "memory/rss_mib": rss_mib()}
        if torch.cuda.is_available():
            values["memory/cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
        acc.log(values, step=step)

    def evaluation(self, step: int, metrics: dict[str, Any]) -> None:
        """One validation pass: every numeric metric as valid/<name>."""
        if self.logging:
            self.accelerator.log({f"valid/{_tag(k)}": float(v) for k, v in metrics.items()
                                  if k != "n" and isinstance(v, (int, float)) and not isinstance(v, bool)}, step=step)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(exc)

    def close(self, exc: BaseException | None) -> None:
        """The run ended: record how, and close the trackers' writers.

        What accelerator.end_training() does for trackers, without the rest of it: it also destroys the
        process group, and a 2-process CPU run then hung at exit (rank 1 never returned)."""
        if self.writes_status and self.run_dir is not None:
            status = ("finished" if exc is None else
                      "interrupted" if isinstance(exc, (Interrupted, KeyboardInterrupt)) else "crashed")
            self.status.update(status=status, step=self.last_step, ended=time.strftime("%Y-%m-%dT%H:%M:%S"))
            if status == "crashed":
                self.status["error"] = f"{type(exc).__name__}: {exc}"[:500]
            _write_json(self.run_dir / STATUS_FILE, self.status)
        if not self.logging or self.run_dir is None:
            return
        for tracker in self.accelerator.trackers:
            tracker.finish()
        self.accelerator.trackers = []
