"""`recpeft train --num-processes N`: relaunch the same run under `accelerate launch`.

On CPU this must be real gloo DDP: `accelerate launch --cpu --num_processes 2` silently runs ONE
process, so we use `--multi_gpu` with ACCELERATE_USE_CPU=true, which starts N gloo workers.
Multi-machine runs: call `accelerate launch` yourself with its --num_machines/--machine_rank/
--main_process_ip options (or an `accelerate config` file) around `-m recpeft train`.

Ctrl-C: torchrun, on a SIGINT, re-sends it to the workers, then fails with its own report and
traceback whatever they do. So the launcher runs in a session of its own (a terminal's Ctrl-C reaches
only this process), and this process hands each SIGINT to the workers once; they agree on a step,
rank 0 checkpoints and notes it in the interrupt file, all exit 0, and the user's command reports it
and exits 130.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from recpeft.config import TrainConfig, dump_yaml
from recpeft.errors import Interrupted
from recpeft.models.hub import resolve

INTERRUPT_FILE = "RECPEFT_INTERRUPT_FILE"  # env: where a worker's rank 0 notes a Ctrl-C for `launch`
# What each worker runs, as `accelerate launch` arguments, before `train --config FILE`: the recpeft CLI.
# tests/_hooks.py replaces it with itself, so its workers run with the same test hooks installed.
WORKER: list[str] = ["-m", "recpeft"]


def launch_command(cfg: TrainConfig, config_path: str) -> list[str]:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(cfg.num_processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    if cfg.num_processes > 1:
        cmd.append("--multi_gpu")
    return cmd + [*WORKER, "train", "--config", config_path]


def launch(cfg: TrainConfig) -> int:
    """Run cfg in N processes; returns the exit code of the launcher."""
    import torch

    from recpeft.artifacts import check_writable
    from recpeft.data import load_data
    from recpeft.training.checkpoint import resolve_resume

    # Catch user errors here, once, before N processes would each report them.
    check_writable(cfg.resolved_output_dir())
    resolve_resume(cfg)
    load_data(cfg.domain, cfg.data, cfg.format, cfg.on_bad_rows)
    resolve(cfg.model)  # fetch/convert the default model once, before N processes want it
    env = dict(os.environ)
    if not torch.cuda.is_available():
        env["ACCELERATE_USE_CPU"] = "true"
    with tempfile.TemporaryDirectory(prefix="recpeft-launch-") as tmp:
        path = Path(tmp) / "train.yaml"
        path.write_text(dump_yaml(cfg), encoding="utf-8")
        dry_run_first(str(path))
        report = Path(tmp) / "interrupted.json"
        code, interrupted = run_launcher(launch_command(cfg, str(path)), {**env, INTERRUPT_FILE: str(report)})
        if report.is_file():
            state = json.loads(report.read_text(encoding="utf-8"))
            raise Interrupted(state["step"], state["checkpoint"])
        if interrupted and code:  # a Ctrl-C outside the training loop: nothing new to resume from
            raise KeyboardInterrupt
        return code


def run_launcher(cmd: list[str], env: dict[str, str]) -> tuple[int, bool]:
    """Run the launcher in its own session until it exits: (its exit code, whether a SIGINT came).

    A SIGINT goes to the workers (the launcher's children), once each; before they exist, to the launcher.
    SIGTERM and SIGHUP go to the launcher, which stops the workers.
    """
    import psutil

    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    interrupted = False

    def forward(signum, frame) -> None:
        nonlocal interrupted
        targets = [proc.pid]
        if signum == signal.SIGINT:
            interrupted = True
            with contextlib.suppress(psutil.Error):
                targets = [w.pid for w in psutil.Process(proc.pid).children()] or targets
        for pid in targets:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    main = threading.current_thread() is threading.main_thread()  # where signal handlers live
    old = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP) if main}
    try:
        return proc.wait(), interrupted
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def reporting_interrupts():
    """Around training in a worker that `launch` started: when all processes stopped together at a step
    on a Ctrl-C, rank 0 notes the step and checkpoint in the interrupt file and every worker exits 0 (a
    non-zero code would make torchrun kill the others and print its failure report); the user's command
    reports it once. A Ctrl-C outside the loop still exits 130: a process may be stuck in a collective
    with the one that left, and torchrun must stop it. Elsewhere it does nothing."""
    path = os.environ.get(INTERRUPT_FILE)
    try:
        yield
    except Interrupted as exc:
        if not (path and exc.together and "WORLD_SIZE" in os.environ):
            raise
        if os.environ.get("RANK") == "0":
            from recpeft.artifacts import write_json_atomic

            write_json_atomic(Path(path), {"step": exc.step, "checkpoint": exc.checkpoint})
        raise SystemExit(0) from None


@contextlib.contextmanager
def closing_process_group():
    """Around a worker's whole run: when every process ended well (or stopped together on a Ctrl-C), meet
    at a barrier and destroy the process group before the interpreter shuts down. A gloo worker that
    exits with its group alive can abort (SIGABRT, "terminate called without an active exception") while
    its C++ threads still hold tensors (pytorch/pytorch#179291); CI saw it once in 2 of its DDP runs. The
    barrier first: a process that destroyed its group while another still scored hung that one (what
    accelerator.end_training did, see training/tracking.py). After an error nothing is done here: the
    others may be stuck in a collective, and torchrun stops them."""
    import torch.distributed as dist

    try:
        yield
    except SystemExit as exc:
        if exc.code in (0, None):
            _destroy(dist)
        raise
    else:
        _destroy(dist)


def _destroy(dist) -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def dry_run_first(config_path: str) -> None:
    """One single-process `--dry-run` of the run (model, task, method attached, nothing written): a user
    error found there (a task the data cannot do, unknown target modules, an AdaLoRA schedule with no
    room...) ends as ONE line and exit 2 here, instead of N workers' tracebacks under the launcher."""
    from recpeft.errors import ERROR_PREFIX, UserError

    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}
    proc = subprocess.run([sys.executable, "-m", "recpeft", "train", "--config", config_path, "--dry-run"],
                          env=env, capture_output=True, text=True)
    if proc.returncode == 0:
        return
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith(ERROR_PREFIX)]
    if proc.returncode == 2 and lines:
        raise UserError(lines[-1][len(ERROR_PREFIX):])
    sys.stderr.write(proc.stderr)
    raise SystemExit(proc.returncode)
