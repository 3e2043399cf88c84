"""GPU check: every method on the default model in 8-bit and in 16-bit, and 2-process DDP on 2+ GPUs.

    python experiments/gpu_check.py [--model smollm2-135m] [--steps 8]

For each method and precision it trains a few steps and reports peak GPU memory (torch's
max_memory_allocated) and the mean time per micro-batch, then the 8-bit / 16-bit ratios. With two
or more GPUs it also runs `recpeft train --num-processes 2 --bits 8`. Writes
experiments/results/gpu_check.json. On a machine without CUDA it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "gpu_check.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; nothing to check")
        return
    from recpeft.config import TrainConfig
    from recpeft.trainer import train

    rows = []
    for method in ("lora", "adalora", "adapter"):
        for bits in (8, 16):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            with tempfile.TemporaryDirectory() as tmp:
                cfg = TrainConfig(domain="news", model=args.model, method=method, bits=bits, max_steps=args.steps,
                                  batch_size=8, eval_every=args.steps, eval_samples=32, test_samples=32,
                                  patience=0, output_dir=tmp + "/a")
                result = train(cfg, show_progress=False)
            rows.append({"method": method, "bits": bits,
                         "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1),
                         "seconds_per_micro_batch": result.metrics["seconds_per_micro_batch"],
                         "valid_auc": result.metrics["valid_auc"]})
            print(json.dumps(rows[-1]), flush=True)
    for method in ("lora", "adalora", "adapter"):
        r8, r16 = (next(r for r in rows if r["method"] == method and r["bits"] == b) for b in (8, 16))
        print(f"{method:<8} 8-bit/16-bit: memory {r8['peak_gpu_mib'] / r16['peak_gpu_mib']:.2f}x, "
              f"step time {r8['seconds_per_micro_batch'] / r16['seconds_per_micro_batch']:.2f}x")
    ddp = None
    if torch.cuda.device_count() >= 2:
        with tempfile.TemporaryDirectory() as tmp:
            out = subprocess.run([sys.executable, "-m", "recpeft", "train", "--model", args.model, "--bits", "8",
                                  "--num-processes", "2", "--max-steps", str(args.steps), "--eval-samples", "32",
                                  "--test-samples", "32", "-o", tmp + "/ddp"], capture_output=True, text=True)
            ddp = {"returncode": out.returncode, "tail": out.stdout[-1500:] + out.stderr[-1500:]}
            print(ddp["tail"])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"device": torch.cuda.get_device_name(0), "gpus": torch.cuda.device_count(),
                                   "runs": rows, "ddp": ddp}, indent=2) + "\n")


if __name__ == "__main__":
    main()
