"""Peak RSS of training runs with a 32-, 8- and 4-bit base, each in its own process, and where it goes.

    python experiments/bench_memory.py [--model smollm2-135m] [--steps 4] [--checkpointing both|off|on]
                                       [--malloc-mmap-threshold BYTES]

Every run trains the same LoRA on the same data for the same steps; only the base precision (and,
in the second block, gradient checkpointing) differs. Each child process measures, from
/proc/self/status (no tracemalloc, which would itself cost memory):

- floor: resident memory after importing everything a run imports (torch, transformers, peft,
  accelerate, bitsandbytes, recpeft), before any work;
- peak: the training run's high-water mark (VmHWM), and peak minus the floor;
- then, with the high-water mark reset (/proc/self/clear_refs), a load of the base alone: its
  transient peak, the resident size after loading before and after recpeft's heap trim, and the
  bytes of the weights themselves.

--malloc-mmap-threshold sets glibc's MALLOC_MMAP_THRESHOLD_ in the children: every allocation from
that size up gets its own mapping, returned to the system when freed, instead of heap memory glibc
keeps (its default threshold grows with the largest block freed). Peaks then follow live tensors
more closely, at the cost of page faults on every large allocation (slower steps).

Prints both blocks side by side with ratios to the fp32 run, a bound on the best ratio any run could
reach (floor + weights, no activations, free loading), and writes experiments/results/memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS_DIR = Path(__file__).parent / "results"


def status_mib(key: str) -> float:
    """A /proc/self/status memory field (VmRSS, VmHWM, RssAnon, RssFile) in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(key)


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def child(bits: int, model: str, steps: int, method: str, checkpointing: bool) -> dict:
    import accelerate  # noqa: F401  (everything a run imports, so the floor is the real floor)
    import bitsandbytes  # noqa: F401
    import peft  # noqa: F401
    import torch

    import recpeft.models.hub as models
    from recpeft.config import TrainConfig
    from recpeft.runtime import default_threads, release_memory
    from recpeft.training.trainer import train

    torch.set_num_threads(default_threads())
    floor = status_mib("VmRSS")
    reset_peak()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(domain="news", model=model, method=method, bits=bits, max_steps=steps, batch_size=4,
                          eval_every=steps, eval_samples=8, test_samples=8, patience=0, output_dir=tmp + "/a",
                          gradient_checkpointing=checkpointing)
        result = train(cfg, show_progress=False)
    peak = status_mib("VmHWM")
    seconds = result.metrics["seconds_per_micro_batch"]
    del result
    release_memory()

    # The base load alone, with the peak reset; note the resident size just before recpeft's heap trim.
    before_trim = []
    real_release = models.release_memory
    models.release_memory = lambda: (before_trim.append(status_mib("VmRSS")), real_release())[1]
    start = status_mib("VmRSS")
    reset_peak()
    base, _, _ = models.load_base(model, bits=bits)
    models.release_memory = real_release
    weights = sum(t.numel() * t.element_size() for t in [*base.parameters(), *base.buffers()]) / 2**20
    return {"bits": bits, "gradient_checkpointing": checkpointing, "method": method,
            "floor_mib": round(floor, 1), "peak_rss_mib": round(peak, 1),
            "peak_above_floor_mib": round(peak - floor, 1),
            "load_peak_above_start_mib": round(status_mib("VmHWM") - start, 1),
            "loaded_above_start_untrimmed_mib": round(before_trim[0] - start, 1),
            "loaded_above_start_mib": round(status_mib("VmRSS") - start, 1),
            "weights_mib": round(weights, 1), "seconds_per_micro_batch": seconds}


def main() -> None:
    from recpeft.runtime import describe_machine

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--method", default="lora")
    parser.add_argument("--checkpointing", choices=("both", "off", "on"), default="both",
                        help="gradient checkpointing in the runs: off, on, or a block of each")
    parser.add_argument("--malloc-mmap-threshold", type=int, default=0,
                        help="glibc MALLOC_MMAP_THRESHOLD_ for the runs, in bytes (0 = glibc's default)")
    parser.add_argument("--output", default=None, help="results JSON (default experiments/results/memory.json)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.model, args.steps, args.method, args.child_checkpointing)))
        return
    from recpeft.models.hub import resolve

    resolve(args.model)  # fetch/convert before measuring, so no run pays for it
    blocks = {"off": [False], "on": [True], "both": [False, True]}[args.checkpointing]
    env = dict(os.environ)
    if args.malloc_mmap_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.malloc_mmap_threshold)
    rows = []
    for ckpt in blocks:
        block = []
        for bits in (32, 8, 4):
            out = subprocess.run([sys.executable, __file__, "--child", str(bits), "--model", args.model, "--steps",
                                  str(args.steps), "--method", args.method]
                                 + (["--child-checkpointing"] if ckpt else []), capture_output=True, text=True, env=env)
            if out.returncode != 0:
                sys.exit(f"child {bits}-bit failed:\n{out.stderr[-3000:]}")
            block.append(json.loads(out.stdout.strip().splitlines()[-1]))
        fp32 = block[0]
        for r in block:
            r["ratio_to_fp32"] = round(r["peak_rss_mib"] / fp32["peak_rss_mib"], 3)
            r["ratio_above_floor_to_fp32"] = round(r["peak_above_floor_mib"] / fp32["peak_above_floor_mib"], 3)
            # No activations, free loading: floor + weights. No run can go below this.
            r["best_possible_ratio_to_fp32"] = round((r["floor_mib"] + r["weights_mib"])
                                                     / (fp32["floor_mib"] + fp32["weights_mib"]), 3)
        rows += block
    print(f"{'base':>6} {'ckpt':>4} | {'floor':>6} {'peak':>7} {'ratio':>6} | {'peak-floor':>10} {'ratio':>6} | "
          f"{'load peak':>9} {'loaded':>7} {'untrimmed':>9} {'weights':>7} | {'best ratio':>10} | s/step")
    for r in rows:
        print(f"{r['bits']:>4}-b {'on' if r['gradient_checkpointing'] else 'off':>4} | {r['floor_mib']:6.0f} "
              f"{r['peak_rss_mib']:7.0f} {r['ratio_to_fp32']:6.3f} | {r['peak_above_floor_mib']:10.0f} "
              f"{r['ratio_above_floor_to_fp32']:6.3f} | {r['load_peak_above_start_mib']:9.0f} "
              f"{r['loaded_above_start_mib']:7.0f} {r['loaded_above_start_untrimmed_mib']:9.0f} "
              f"{r['weights_mib']:7.0f} | "
              f"{r['best_possible_ratio_to_fp32']:10.3f} | {r['seconds_per_micro_batch']:.2f}")
    print("MiB; 'load peak', 'loaded' and 'untrimmed' are above the RSS before a load of the base alone; "
          "'best ratio' = (floor + weights) / (fp32 floor + fp32 weights)")
    load = os.getloadavg()[0]
    if load > 0.5 * len(os.sched_getaffinity(0)):
        print(f"note: other processes were running (load average {load:.1f}); memory is unaffected, s/step is inflated")
    results = Path(args.output) if args.output else RESULTS_DIR / "memory.json"
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps({"model": args.model, "method": args.method, "steps": args.steps, "batch_size": 4,
                                   "malloc_mmap_threshold": args.malloc_mmap_threshold or None,
                                   "machine": describe_machine(),
                                   "load_average_1min_at_end": round(load, 2), "runs": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
