"""2-process CPU DDP against 1 process: training throughput and evaluation time, default model.

    python experiments/bench_ddp.py [--steps 6] [--eval-samples 64] [--model smollm2-135m] [--out PATH]

Runs `recpeft train` twice on the news sample: 1 process x 2 threads with batch 8, then 2 gloo DDP
processes x 1 thread with batch 4 each (`--num-processes 2`), so both take 8 examples per optimiser
step. Training throughput = examples per second of the training loop (the trainer's mean seconds per
micro-batch, recorded in recpeft.json), so model loading and evaluation are not counted. Evaluation =
the trainer's seconds in evaluation (recpeft.json's eval_seconds): the untrained validation set, the
validation set after the last step and the test set, --eval-samples examples each, which 2 processes
share (recpeft/evaluation/sharding.py). Its batch is twice the training batch: 16 rows in 1 process, 8 in each of
2. Writes results/ddp.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(processes: int, steps: int, model: str, out: Path, eval_samples: int) -> dict:
    batch = 8 // processes
    cmd = [sys.executable, "-m", "recpeft", "train", "--domain", "news", "--model", model, "--max-steps", str(steps),
           "--batch-size", str(batch), "--eval-every", "1000", "--eval-samples", str(eval_samples),
           "--test-samples", str(eval_samples),
           "--no-base-test", "--patience", "0", "--threads", str(2 // processes), "--num-processes", str(processes),
           "--output-dir", str(out), "--runs-dir", str(out.parent / f"runs-{processes}")]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    metrics = json.loads((out / "recpeft.json").read_text())["metrics"]
    per_batch = metrics["seconds_per_micro_batch"]
    return {"processes": processes, "threads_per_process": 2 // processes, "batch_per_process": batch,
            "steps": steps, "seconds_per_micro_batch": per_batch, "examples_per_s": processes * batch / per_batch,
            "eval_seconds": metrics["eval_seconds"], "eval_examples": metrics["valid_n"] * 2 + metrics["test_n"],
            "eval_batch_per_process": batch * 2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--eval-samples", type=int, default=64, help="validation and test examples scored")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "results" / "ddp.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        one = run(1, args.steps, args.model, Path(tmp) / "one", args.eval_samples)
        two = run(2, args.steps, args.model, Path(tmp) / "two", args.eval_samples)
    result = {"one_process": one, "two_processes": two, "speedup": two["examples_per_s"] / one["examples_per_s"],
              "eval_seconds": {"one_process": one["eval_seconds"], "two_processes": two["eval_seconds"]},
              "eval_speedup": one["eval_seconds"] / two["eval_seconds"], "cpus": os.cpu_count()}
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
