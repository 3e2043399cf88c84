"""How much noise DP-SGD adds per step for a schedule, before spending hours on it: opacus' accountant only.

    python experiments/dp_noise.py [--epsilon 8] [--params 460800] [--schedule N:B:STEPS ...]

For each schedule (N training examples, expected batch B, optimiser steps) it asks opacus' RDP accountant
(`get_noise_multiplier`, what `recpeft train --dp-epsilon` uses) for the noise multiplier σ that spends
the target ε at recpeft's default δ = min(1e-5, 1 / (10 N)), with its sampling rate q = 1 / ⌈N / B⌉,
and prints the noise the mean gradient gets: σ·C/B per
coordinate, and σ·C/B·√d in norm over the adapter's d trainable numbers (LoRA r 8 on q,v of
SmolLM2-135M: 460,800), against the clipped mean gradient, whose norm is at most C. A ratio far above 1
means the updates are mostly noise. Writes nothing; seconds on any machine.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_SCHEDULES = ["256:8:64", "256:64:16", "256:256:8", "2048:256:16", "2048:1024:8", "93399:1024:91",
                     "93399:4096:46"]


def noise(n: int, batch: int, steps: int, epsilon: float, params: int, clip: float = 1.0) -> dict:
    """The σ a run with these settings gets, as recpeft.training.privacy computes it (example level)."""
    from recpeft.training.privacy import delta_for, noise_multiplier

    delta, rate = delta_for(n), 1.0 / math.ceil(n / batch)  # the run's q: one Poisson batch per step of an epoch
    sigma = noise_multiplier(epsilon, delta, rate, steps)
    return {"examples": n, "expected_batch": batch, "steps": steps, "epochs": round(rate * steps, 2),
            "delta": delta, "sigma": round(sigma, 3), "noise_per_coordinate": round(sigma * clip / batch, 5),
            "noise_norm_over_clip": round(sigma / batch * math.sqrt(params), 2)}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epsilon", type=float, default=8.0)
    p.add_argument("--params", type=int, default=460_800, help="the adapter's trainable numbers")
    p.add_argument("--schedule", nargs="+", default=DEFAULT_SCHEDULES, metavar="N:B:STEPS")
    args = p.parse_args(argv)
    rows = []
    for spec in args.schedule:
        try:
            n, batch, steps = (int(x) for x in spec.split(":"))
        except ValueError:
            p.error(f"a schedule is N:B:STEPS (three integers), got '{spec}'")
        rows.append(noise(n, batch, steps, args.epsilon, args.params))
    print(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
