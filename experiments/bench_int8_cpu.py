"""An 8-bit base on the CPU, evaluated two ways: bitsandbytes' own inference layers against
recpeft.kernels.quantised.FrozenInt8Linear (the dequantise + F.linear function bitsandbytes trains through).

    python experiments/bench_int8_cpu.py [--model smollm2-135m] [--batch 8] [--tokens 110] [--repeats 3]

Same base, same random token batch (seeded), eval mode, no gradients, in one process: seconds per
forward (best of --repeats after a warm-up) and each path's max |logit difference| to the fp32 base
at the scored position. Writes experiments/results/int8_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results" / "int8_cpu.json"


def timed_logits(model, ids: torch.Tensor, repeats: int) -> tuple[float, torch.Tensor]:
    with torch.no_grad():
        logits = model(input_ids=ids, logits_to_keep=1).logits[:, -1]  # warm-up
        best = float("inf")
        for _ in range(repeats):
            tick = time.perf_counter()
            model(input_ids=ids, logits_to_keep=1)
            best = min(best, time.perf_counter() - tick)
    return best, logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=110)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args()

    import bitsandbytes as bnb

    from recpeft.kernels.quantised import FrozenInt8Linear
    from recpeft.models.load import load_base
    from recpeft.runtime import default_threads, describe_machine

    torch.set_num_threads(default_threads())
    torch.manual_seed(0)
    model, tok, _ = load_base(args.model, bits=32)
    ids = torch.randint(len(tok) // 10, len(tok) - 1, (args.batch, args.tokens))
    _, reference = timed_logits(model.eval(), ids, 0)
    del model

    model, _, _ = load_base(args.model, bits=8)  # recpeft's CPU layers
    model.eval()
    lean = [m for m in model.modules() if isinstance(m, FrozenInt8Linear)]
    ours_s, ours = timed_logits(model, ids, args.repeats)
    for m in lean:  # the same int8 weights through bitsandbytes' own inference path
        m.__class__ = bnb.nn.Linear8bitLt
    bnb_s, theirs = timed_logits(model, ids, args.repeats)

    out = {
        "model": args.model, "batch": args.batch, "tokens": args.tokens, "layers": len(lean),
        "machine": {**describe_machine(), "torch": torch.__version__},
        "threads": torch.get_num_threads(),
        "bitsandbytes_seconds": round(bnb_s, 3), "frozen_int8_linear_seconds": round(ours_s, 3),
        "speedup": round(bnb_s / ours_s, 2),
        "bitsandbytes_max_abs_logit_diff_to_fp32": round((theirs - reference).abs().max().item(), 4),
        "frozen_int8_linear_max_abs_logit_diff_to_fp32": round((ours - reference).abs().max().item(), 4),
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
    }
    print(f"[int8] {len(lean)} int8 layers; {args.batch} x {args.tokens} tokens, eval, {out['threads']} threads")
    print(f"[int8] bitsandbytes' inference path: {bnb_s:.2f} s, max |logit - fp32| "
          f"{out['bitsandbytes_max_abs_logit_diff_to_fp32']}")
    print(f"[int8] FrozenInt8Linear (dequantise + linear): {ours_s:.2f} s, max |logit - fp32| "
          f"{out['frozen_int8_linear_max_abs_logit_diff_to_fp32']}; {out['speedup']}x faster")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(out, indent=2) + "\n")
    print(f"[int8] wrote {args.output}")


if __name__ == "__main__":
    main()
