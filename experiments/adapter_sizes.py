"""Size of each method's adapter file on the default model, against the base model's bytes.

    python experiments/adapter_sizes.py [--model smollm2-135m]

Attaches each method with recpeft's defaults, saves it exactly as training does, and prints the
file size and its share of the base model's safetensors file (bf16, as converted) and of the fp32
weights. AdaLoRA is measured at init_r (before pruning; a trained adapter keeps only its final
ranks). Writes experiments/results/adapter_sizes.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "adapter_sizes.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    args = parser.parse_args()
    from recpeft.config import TrainConfig
    from recpeft.methods import get_method
    from recpeft.models.hub import resolve
    from recpeft.models.load import default_targets, load_base

    base_file = sum(f.stat().st_size for f in Path(resolve(args.model)).glob("*.safetensors"))
    rows = []
    for method in ("lora", "adalora", "adapter"):
        model, _, _ = load_base(args.model)
        fp32_bytes = sum(p.numel() * 4 for p in model.parameters())
        cfg = TrainConfig(model=args.model, method=method)
        model = get_method(method).attach(model, cfg, default_targets(model), total_steps=100)
        with tempfile.TemporaryDirectory() as tmp:
            get_method(method).save(model, tmp, cfg)
            size = (Path(tmp) / "adapter_model.safetensors").stat().st_size
        params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        rows.append({"method": method, "trainable_parameters": params, "file_bytes": size,
                     "share_of_base_file": round(size / base_file, 5),
                     "share_of_fp32_base": round(size / fp32_bytes, 5)})
        print(f"{method:<8} {params:>10,} params  {size / 2**20:7.2f} MiB  {100 * size / base_file:5.2f}% of the "
              f"{base_file / 2**20:.0f} MiB base file, {100 * size / fp32_bytes:5.2f}% of fp32 weights", flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"model": args.model, "base_file_bytes": base_file, "methods": rows},
                                  indent=2) + "\n")


if __name__ == "__main__":
    main()
