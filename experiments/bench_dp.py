"""Step time of DP-SGD (--dp-epsilon, opacus) against the same run without it, side by side in one process.

    python experiments/bench_dp.py [--steps 32] [--repeats 3] [--data ../shared/data/ml-100k] [--out PATH]

The ml100k_dp protocol (experiments/ml100k_dp.yaml): SmolLM2-135M + LoRA r 8, ML-100k preference prompts
with 10 history items, 256 training examples, batch 8 (under DP the expected Poisson batch), lr 1e-3.
Each repeat trains `--steps` optimiser steps without DP and with ε = 8, in ABBA order (plain, DP, DP, plain,
...) so a drifting host clock speed hits both alike. A step's time is the interval between two `step`
hook points (recpeft/training/events.py): the forward, backward (with opacus' per-example gradients
and clipping under DP), noise and optimiser update; the first step of each run (warm-up) is left out,
and no evaluation falls inside (validation runs only after the last step). 32 steps of 8 = one epoch of the
256 examples, so both modes see each example once (under DP: once in expectation) and the mean step times
compare the same work; their ratio is the headline, the medians are reported too.
Writes results/bench_dp.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def step_times(values: dict, work: Path) -> list[float]:
    """Seconds between consecutive optimiser steps of one training run (the first step left out)."""
    from recpeft.config import build_config
    from recpeft.training import events
    from recpeft.training.trainer import train

    stamps: list[float] = []
    with events.hooked("step", lambda **_: stamps.append(time.perf_counter())):
        train(build_config(**values, output_dir=str(work / "adapter"), runs_dir=str(work / "runs")),
              save=False, show_progress=False)
    return [b - a for a, b in zip(stamps, stamps[1:])]


def main(argv: list[str] | None = None) -> dict:
    from recpeft import runtime

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=32, help="optimiser steps per run (32 = one epoch)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each mode, in ABBA order")
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "ml-100k"))
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "results" / "bench_dp.json")
    args = parser.parse_args(argv)
    base = {"domain": "video", "data": args.data, "format": "movielens", "task": "preference", "model": args.model,
            "method": "lora", "history_len": 10, "max_length": 400, "batch_size": 8, "train_samples": 256,
            "lr": 1e-3, "max_steps": args.steps, "eval_every": 10_000, "eval_samples": 8, "test_samples": 8,
            "base_test": False, "patience": 0, "checkpoint_every": 0, "log_with": "none", "seed": 42}
    order = []
    for r in range(args.repeats):
        order += ["plain", "dp"] if r % 2 == 0 else ["dp", "plain"]
    times: dict[str, list[float]] = {"plain": [], "dp": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i, mode in enumerate(order):
            values = {**base, **({"dp_epsilon": args.epsilon} if mode == "dp" else {})}
            got = step_times(values, Path(tmp) / f"{i}-{mode}")
            times[mode] += got
            print(f"[bench_dp] run {i + 1}/{len(order)} {mode:5s}: median {statistics.median(got):.2f} s a step",
                  flush=True)
    plain, dp = statistics.mean(times["plain"]), statistics.mean(times["dp"])
    medians = {k: round(statistics.median(v), 3) for k, v in times.items()}
    result = {
        "command": "python experiments/bench_dp.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": runtime.describe_machine(),
        "date": time.strftime("%Y-%m-%d"), "settings": base, "dp_epsilon": args.epsilon, "order": order,
        "mean_step_seconds": {"plain": round(plain, 3), "dp": round(dp, 3)}, "median_step_seconds": medians,
        "steps_timed": {k: len(v) for k, v in times.items()},
        "step_seconds": {k: [round(t, 3) for t in v] for k, v in times.items()},
        "dp_over_plain": round(dp / plain, 3),
    }
    print(f"[bench_dp] mean step: plain {plain:.2f} s, DP {dp:.2f} s: DP takes {dp / plain:.2f}x the time "
          f"(medians {medians['plain']:.2f} / {medians['dp']:.2f} s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
