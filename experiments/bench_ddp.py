"""2-process CPU DDP throughput against 1 process, same global batch, same steps, default model.

    python experiments/bench_ddp.py [--steps 6] [--model smollm2-135m]

Runs `recpeft train` twice on the news sample: 1 process x 2 threads with batch 8, then 2 gloo DDP
processes x 1 thread with batch 4 each (`--num-processes 2`), so both take 8 examples per optimiser
step. Throughput = examples per second of the training loop (the trainer's mean seconds per
micro-batch, recorded in recpeft.json), so model loading and evaluation are not counted. Writes
results/ddp.json.
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


def run(processes: int, steps: int, model: str, out: Path) -> dict:
    batch = 8 // processes
    cmd = [sys.executable, "-m", "recpeft", "train", "--domain", "news", "--model", model, "--max-steps", str(steps),
           "--batch-size", str(batch), "--eval-every", "1000", "--eval-samples", "8", "--test-samples", "8",
           "--no-base-test", "--patience", "0", "--threads", str(2 // processes), "--num-processes", str(processes),
           "--output-dir", str(out), "--runs-dir", str(out.parent / f"runs-{processes}")]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    metrics = json.loads((out / "recpeft.json").read_text())["metrics"]
    per_batch = metrics["seconds_per_micro_batch"]
    return {"processes": processes, "threads_per_process": 2 // processes, "batch_per_process": batch,
            "steps": steps, "seconds_per_micro_batch": per_batch, "examples_per_s": processes * batch / per_batch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--model", default="smollm2-135m")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        one = run(1, args.steps, args.model, Path(tmp) / "one")
        two = run(2, args.steps, args.model, Path(tmp) / "two")
    result = {"one_process": one, "two_processes": two, "speedup": two["examples_per_s"] / one["examples_per_s"],
              "cpus": os.cpu_count()}
    print(json.dumps(result, indent=2))
    (ROOT / "experiments" / "results").mkdir(exist_ok=True)
    (ROOT / "experiments" / "results" / "ddp.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
