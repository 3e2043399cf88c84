"""`recpeft train --num-processes N`: relaunch the same run under `accelerate launch`.

On CPU this must be real gloo DDP: `accelerate launch --cpu --num_processes 2` silently runs ONE
process, so we use `--multi_gpu` with ACCELERATE_USE_CPU=true, which starts N gloo workers.
Multi-machine runs: call `accelerate launch` yourself with its --num_machines/--machine_rank/
--main_process_ip options (or an `accelerate config` file) around `-m recpeft train`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from .config import TrainConfig, dump_yaml
from .models import resolve


def launch_command(cfg: TrainConfig, config_path: str) -> list[str]:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(cfg.num_processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    if cfg.num_processes > 1:
        cmd.append("--multi_gpu")
    return cmd + ["-m", "recpeft", "train", "--config", config_path]


def launch(cfg: TrainConfig) -> int:
    """Run cfg in N processes; returns the exit code of the launcher."""
    import torch

    from .artifacts import check_writable
    from .checkpoint import resolve_resume
    from .data.csvdir import load_data

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
        return subprocess.run(launch_command(cfg, str(path)), env=env).returncode


def dry_run_first(config_path: str) -> None:
    """One single-process `--dry-run` of the run (model, task, method attached, nothing written): a user
    error found there (a task the data cannot do, unknown target modules, an AdaLoRA schedule with no
    room...) ends as ONE line and exit 2 here, instead of N workers' tracebacks under the launcher."""
    from .errors import ERROR_PREFIX, UserError

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
