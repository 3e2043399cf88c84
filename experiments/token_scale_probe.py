"""Why fusion's soft tokens need an anchor: a bare input vector's size barely matters to the model.

    python experiments/token_scale_probe.py [--model smollm2-135m]

One prompt; the input embedding at one word's position is replaced by a vector, and the mean absolute change
of the next-token logits against the original word is printed, for: a random direction at the embeddings'
RMS, the same direction at 3% and 0.3% of it, a zero vector, and the word plus the direction at 3%. Each
layer RMS-normalises its input, so a bare vector at 3% acts almost like one at full size, while the same 3%
added to a word is a small perturbation. recpeft/fusion/module.py's ItemFusion adds the projector's output to
an anchor (a word-like embedding) for that reason. Takes seconds on a CPU; writes nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m", help="a built-in model name or a local folder")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from recpeft.models.hub import resolve

    path = resolve(args.model)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    ids = tok("Liked: a film about space. Will the user like this movie? Movie: Heat (Action)",
              return_tensors="pt")["input_ids"]
    with torch.no_grad():
        emb = model.get_input_embeddings()(ids).float()
    pos = ids.shape[1] // 2
    torch.manual_seed(args.seed)
    d = torch.randn(emb.shape[-1])
    d = d / d.pow(2).mean().sqrt() * emb.pow(2).mean().sqrt()  # a random direction at the embeddings' RMS
    word = emb[0, pos].clone()

    @torch.no_grad()
    def logits(vec: torch.Tensor) -> torch.Tensor:
        e = emb.clone()
        e[0, pos] = vec
        return model(inputs_embeds=e.to(model.dtype)).logits[0, -1].float()

    ref = logits(word)
    cases = {"bare, full RMS": d, "bare, 3% RMS": 0.03 * d, "bare, 0.3% RMS": 0.003 * d,
             "zero": torch.zeros_like(d), "word + 3% RMS": word + 0.03 * d}
    change = {name: round(float((logits(v) - ref).abs().mean()), 4) for name, v in cases.items()}
    out = {"model": args.model, "position": pos, "mean_abs_logit_change": change}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
