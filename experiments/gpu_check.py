"""GPU check: the CUDA-only paths of recpeft, in one run on a lent GPU.

    python experiments/gpu_check.py --shape PATH [--steps 8] [--out experiments/results/gpu_check.json]
    python experiments/gpu_check.py --smoke          # the same sections on CPU with a tiny model

The GPU machine cannot download the default model, so the models here have SmolLM2's *architecture*
with random weights: `--shape PATH` is a folder holding SmolLM2-135M's config.json and tokenizer
(~/.cache/recpeft/models/smollm2-135m without its weights). Memory and speed depend on the shapes, not
the values, so peak memory and step times are real; validation AUCs of random weights mean nothing
and are not reported. Sections (each recorded on its own, so one failure does not hide the rest):

1. train: every method x {8-bit, bf16} on the 135M shape, `--steps` steps of 8 news examples: peak GPU
   memory (torch.cuda.max_memory_allocated) of the whole run and of training alone (the trainer's
   gpu_mib metric, after the load), the frozen weights' bytes, seconds per micro-batch, and the
   8-bit / bf16 ratios.
2. api: `recpeft.load` of the 8-bit LoRA adapter on CUDA; scores on the cached history prefix against
   the naive full forward (max probability difference); 100-candidate ranking latency, naive vs cached.
3. merge: `recpeft merge` of that adapter (fp32 reload) and its max |logit difference|.
4. resume: experiments/kill_resume.py (SIGKILL at a random step, `--resume latest`) on CUDA, where the
   checkpoint also carries the CUDA RNG state.
5. train_large: LoRA x {8-bit, bf16, 4-bit} on a 1.7B shape (SmolLM2-1.7B's layer sizes).
6. ddp: `recpeft train --num-processes 2 --bits 8` when 2+ GPUs are visible.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
RESULTS = ROOT / "experiments" / "results" / "gpu_check.json"
LARGE = {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24, "num_attention_heads": 32,
         "num_key_value_heads": 32, "head_dim": 64}  # SmolLM2-1.7B's sizes


def random_model(shape: Path, out: Path, **sizes) -> Path:
    """A model folder with `shape`'s architecture (optionally resized) and tokenizer, random weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(shape)
    for key, value in sizes.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(shape).save_pretrained(out)
    return out


def train_once(model: str, method: str, bits: int, steps: int, out: Path) -> dict:
    import torch

    from recpeft.config import TrainConfig
    from recpeft.training.trainer import train

    on_cuda = torch.cuda.is_available()
    if on_cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    cfg = TrainConfig(domain="news", model=model, method=method, bits=bits, max_steps=steps, batch_size=8,
                      eval_every=steps, eval_samples=16, test_samples=16, patience=0, base_test=False,
                      output_dir=str(out))
    result = train(cfg, show_progress=False)
    gpu = result.metrics.get("gpu_mib", {})
    return {"method": method, "bits": bits,
            "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if on_cuda else None,
            "train_peak_gpu_mib": gpu.get("peak"), "frozen_weights_mib": gpu.get("frozen_weights"),
            "seconds_per_micro_batch": result.metrics["seconds_per_micro_batch"],
            "trainable_parameters": sum(p.numel() for p in result.model.parameters() if p.requires_grad),
            "adapter": str(out)}


def section_train(models: dict[str, str], plan: list[tuple[str, str, int]], steps: int, work: Path,
                  report: dict) -> None:
    rows = report.setdefault("train", [])
    for shape, method, bits in plan:
        row = {"shape": shape, **train_once(models[shape], method, bits, steps, work / f"{shape}-{method}-{bits}")}
        rows.append(row)
        print(json.dumps(row), flush=True)
    ratios = {}
    for shape, method in sorted({(r["shape"], r["method"]) for r in rows}):
        by_bits = {r["bits"]: r for r in rows if r["shape"] == shape and r["method"] == method}
        for bits in (8, 4):
            if bits in by_bits and 16 in by_bits and by_bits[16]["peak_gpu_mib"]:
                ratios[f"{shape} {method} {bits}-bit/bf16"] = {
                    "memory": round(by_bits[bits]["peak_gpu_mib"] / by_bits[16]["peak_gpu_mib"], 3),
                    "train_peak": round(by_bits[bits]["train_peak_gpu_mib"] / by_bits[16]["train_peak_gpu_mib"], 3),
                    "frozen_weights": round(by_bits[bits]["frozen_weights_mib"] / by_bits[16]["frozen_weights_mib"], 3),
                    "step_time": round(by_bits[bits]["seconds_per_micro_batch"]
                                       / by_bits[16]["seconds_per_micro_batch"], 3)}
    report["train_ratios"] = ratios
    for name, r in ratios.items():
        print(f"{name}: peak memory {r['memory']:.2f}x (training peak {r['train_peak']:.2f}x, frozen "
              f"weights {r['frozen_weights']:.2f}x), step time {r['step_time']:.2f}x", flush=True)


def section_api(adapter: Path, report: dict) -> None:
    import torch

    import recpeft
    from recpeft.data.formats.csvdir import load_sample

    rec = recpeft.load(adapter)
    data = load_sample("news")
    user = data.interactions[0].user_id
    history = [(data.items[x.item_id], x.liked) for x in data.interactions if x.user_id == user][:10]
    seen = {h[0].item_id for h in history}
    cands = [i for i in data.items.values() if i.item_id not in seen][:100]
    cached = rec.score(history, cands)

    def timed(fn, reps):
        times = []
        for _ in range(reps):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    naive: list[float] = []
    naive_s = timed(lambda: naive.extend(rec.score(history, cands, naive=True, batch_size=1)), 1)
    diff = max(abs(a - b) for a, b in zip(cached, naive))
    cached_s = timed(lambda: rec.score(history, cands), 10)
    top = rec.rank(history, cands, k=3)
    report["api"] = {"device": str(next(rec.bank.model.parameters()).device), "candidates": len(cands),
                     "max_abs_prob_diff_cached_vs_naive": diff, "naive_p50_s": naive_s, "cached_p50_s": cached_s,
                     "speedup": naive_s / cached_s, "top3": [(i.title, round(p, 4)) for i, p in top]}
    print(json.dumps(report["api"]), flush=True)


def section_merge(adapter: Path, work: Path, report: dict) -> None:
    from recpeft.serving.merge import merge_adapter

    report["merge"] = merge_adapter(adapter, work / "merged")
    print(json.dumps(report["merge"]), flush=True)


def child_env() -> dict[str, str]:
    """This environment, with the repository first on PYTHONPATH (kept: carried packages live there)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def section_resume(report: dict) -> None:
    cmd = [sys.executable, str(ROOT / "experiments" / "kill_resume.py"), "--trials", "1", "--seed", "0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env())
    report["resume"] = {"returncode": proc.returncode, "tail": (proc.stdout + proc.stderr)[-1500:]}
    print(report["resume"]["tail"], flush=True)


def section_ddp(model: str, steps: int, work: Path, report: dict) -> None:
    import torch

    if torch.cuda.device_count() < 2:
        report["ddp"] = f"skipped: {torch.cuda.device_count()} GPU(s) visible, 2 needed"
        print(report["ddp"], flush=True)
        return
    proc = subprocess.run([sys.executable, "-m", "recpeft", "train", "--model", model, "--bits", "8",
                           "--num-processes", "2", "--max-steps", str(steps), "--eval-samples", "16",
                           "--test-samples", "16", "-o", str(work / "ddp")], capture_output=True, text=True,
                          env=child_env())
    report["ddp"] = {"returncode": proc.returncode, "tail": (proc.stdout + proc.stderr)[-1500:]}
    print(report["ddp"]["tail"], flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=Path, help="folder with SmolLM2-135M's config.json and tokenizer")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--no-large", action="store_true", help="skip the 1.7B-shaped runs")
    parser.add_argument("--smoke", action="store_true", help="tiny model, any device: checks this script")
    parser.add_argument("--sections", default="train,api,merge,resume,train_large,ddp",
                        help="comma-separated subset to run (api and merge use train's 8-bit LoRA adapter)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    import torch

    from recpeft.artifacts import write_json_atomic

    if not torch.cuda.is_available() and not args.smoke:
        print("gpu_check: no CUDA device here; nothing to check (--smoke runs the sections on CPU)")
        return
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    report: dict = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
                    "gpus": torch.cuda.device_count(), "torch": torch.__version__, "python": platform.python_version(),
                    "steps": args.steps, "weights": "random (architecture only; see the docstring)", "errors": {}}
    try:
        import bitsandbytes
        import peft
        import transformers

        report.update(bitsandbytes=bitsandbytes.__version__, transformers=transformers.__version__,
                      peft=peft.__version__)
    except ImportError as exc:
        report["errors"]["imports"] = str(exc)
    print(json.dumps(report), flush=True)
    if args.smoke:
        from conftest import build_tiny_model

        models = {"135m": str(build_tiny_model(work / "tiny"))}
    else:
        models = {"135m": str(random_model(args.shape, work / "smollm2-135m-shape"))}
    adapter = work / "135m-lora-8"
    small = [("135m", m, b) for m in ("lora", "adalora", "adapter") for b in (8, 16)]
    large = [] if args.smoke or args.no_large else [("1.7b", "lora", b) for b in (8, 16, 4)]

    def train_large() -> None:
        if large:  # built here, not up front: 3.4 GB written only when this section's turn comes
            models["1.7b"] = str(random_model(args.shape, work / "smollm2-1.7b-shape", **LARGE))
            section_train(models, large, args.steps, work, report)
    # most important first: the JSON is rewritten after every section, so a time-out keeps what ran
    sections = [("train", lambda: section_train(models, small, args.steps, work, report)),
                ("api", lambda: section_api(adapter, report)),
                ("merge", lambda: section_merge(adapter, work, report)),
                ("resume", lambda: section_resume(report)),
                ("train_large", train_large),
                ("ddp", lambda: section_ddp(models["135m"], args.steps, work, report))]
    for name, run in sections:
        if name not in args.sections.split(","):
            continue
        start = time.time()
        try:
            run()
        except Exception:  # noqa: BLE001 - a check script: record the failure and go on to the next section
            report["errors"][name] = traceback.format_exc()[-3000:]
            print(f"[{name}] FAILED\n{report['errors'][name]}", flush=True)
        report.setdefault("seconds", {})[name] = round(time.time() - start, 1)
        write_json_atomic(args.out, report)
    print(f"gpu_check: {len(report['errors'])} section(s) failed; wrote {args.out}")


if __name__ == "__main__":
    main()
