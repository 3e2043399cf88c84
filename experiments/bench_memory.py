"""Peak RSS of training runs with a 32-, 8- and 4-bit base, each in its own process, same data and steps.

    python experiments/bench_memory.py [--model smollm2-135m] [--steps 4]

Prints the peak resident memory of each run and the ratios to the fp32 run, and writes
experiments/results/memory.json (memory_checkpointing.json with --gradient-checkpointing).
Only the base precision differs between the runs.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS_DIR = Path(__file__).parent / "results"


def child(bits: int, model: str, steps: int, method: str, checkpointing: bool) -> None:
    from recpeft.config import TrainConfig
    from recpeft.trainer import train

    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(domain="news", model=model, method=method, bits=bits, max_steps=steps, batch_size=4,
                          eval_every=steps, eval_samples=8, test_samples=8, patience=0, output_dir=tmp + "/a",
                          gradient_checkpointing=checkpointing)
        result = train(cfg, show_progress=False)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    print(json.dumps({"bits": bits, "method": method, "peak_rss_mib": round(peak_mib, 1),
                      "seconds_per_micro_batch": result.metrics["seconds_per_micro_batch"]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--method", default="lora")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="recompute activations in backward (all runs); shows the weights' share of the peak")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        return child(args.child, args.model, args.steps, args.method, args.gradient_checkpointing)
    from recpeft.models import resolve

    resolve(args.model)  # fetch/convert before measuring, so no run pays for it
    rows = []
    for bits in (32, 8, 4):
        out = subprocess.run([sys.executable, __file__, "--child", str(bits), "--model", args.model, "--steps",
                              str(args.steps), "--method", args.method]
                             + (["--gradient-checkpointing"] if args.gradient_checkpointing else []), capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"{bits:>2}-bit base: peak RSS {rows[-1]['peak_rss_mib']:8.1f} MiB   "
              f"{rows[-1]['seconds_per_micro_batch']:.2f} s per micro-batch of 4", flush=True)
    fp32 = rows[0]["peak_rss_mib"]
    for r in rows:
        r["ratio_to_fp32"] = round(r["peak_rss_mib"] / fp32, 3)
    print("ratios to fp32: " + ", ".join(f"{r['bits']}-bit {r['ratio_to_fp32']:.3f}" for r in rows))
    results = RESULTS_DIR / ("memory_checkpointing.json" if args.gradient_checkpointing else "memory.json")
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps({"model": args.model, "method": args.method, "steps": args.steps,
                                   "gradient_checkpointing": args.gradient_checkpointing,
                                   "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores, CPU",
                                   "runs": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
