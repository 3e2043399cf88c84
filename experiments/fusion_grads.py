"""Gradient norms of the fusion projector and of LoRA on one training batch of the sample_fusion run.

    python experiments/fusion_grads.py [--output-std 0.01]

Builds the run `recpeft train --domain news --fusion file --item-features sample` would train (nothing
is written), gives the projector's zero-initialised output layer small random weights (--output-std, as a
few steps of training do; at exactly zero only that layer gets a gradient), and prints the loss and the
gradient norms of the LoRA weights and of the fusion module on the first training batch.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output-std", type=float, default=0.01, help="std of the projector's output-layer weights")
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args(argv)
    import torch

    from recpeft.config import build_config
    from recpeft.training.checkpoint import CtrlC
    from recpeft.training.trainer import Run

    with tempfile.TemporaryDirectory() as tmp:
        cfg = build_config(None, domain="news", fusion="file", item_features="sample", seed=args.seed,
                           eval_samples=4, test_samples=4, runs_dir=f"{tmp}/runs", output_dir=f"{tmp}/out")
        run = Run(cfg, save=False, show_progress=False, ctrl_c=CtrlC(enabled=False))
        fusion = run.model.get_input_embeddings().recpeft_fusion
        with torch.no_grad():
            torch.manual_seed(args.seed)
            fusion.projector[-1].weight.normal_(0, args.output_std)
        loss = run.task.loss(run.model, next(iter(run.train_loader)))
        loss.backward()

        def norm(keep) -> float:
            return float(sum(q.grad.pow(2).sum() for n, q in run.model.named_parameters()
                             if q.grad is not None and keep(n)) ** 0.5)

        out = {"loss": float(loss), "lora_grad_norm": norm(lambda n: "lora_" in n),
               "fusion_grad_norm": norm(lambda n: "recpeft_fusion" in n), "output_std": args.output_std}
    print(out)
    return out


if __name__ == "__main__":
    main()
