"""GPU speed: recpeft's trainer against a plain transformers + peft loop and TALLRec's 8-bit recipe, in one process.

    python experiments/bench_gpu.py --shape DIR [--sizes 135m,1.7b] [--batches 8,64,0] [--steps 10]
    python experiments/bench_gpu.py --smoke          # every path on the CPU with a tiny model (CI runs it)

The GPU machine cannot download the default model, so the models have SmolLM2's *architecture* with
random weights: `--shape DIR` holds SmolLM2-135M's config.json and tokenizer (the recpeft cache folder
of `smollm2-135m`, weights optional); `1.7b` takes SmolLM2-1.7B's layer sizes on the same tokenizer.
Speed and memory depend on shapes, not values. The workload is the news sample's preference prompts
(~112 tokens), LoRA r8 on q_proj, v_proj, `--steps` optimiser steps per run, at each batch size of
`--batches` (0 = recpeft's own default on this device, `--batch-size 0`).

Runs, each on the SAME token sequences in the same batches (those recpeft's trainer draws; `--smoke`
checks that replay equals what the trainer saw):
(a) plain: transformers + peft in bf16, right padding to the batch's longest row, full-vocabulary
    logits, Hugging Face's LM loss on the answer token, AdamW;
(b) tallrec: the same loop on `load_in_8bit` + `prepare_model_for_kbit_training` + LoRA;
(c) recpeft: `recpeft.training.trainer.train` at `--bits 16`, `8` and `4`.
Per run: steady-state tokens/s over steps 3..N (real tokens, no padding), useful MFU against a bf16
`torch.mm` rate measured in the same process (useful FLOPs = 4 * N_blocks * tokens: the frozen
forward and the input-gradient backward; head and LoRA ignored), and peak memory
(torch.cuda.max_memory_allocated, reset before each run; on the CPU the process's peak RSS growth).
Then the 100-candidate ranking latency (p50 of 10, a 10-item history) of the bf16 and int8 adapters
through `recpeft.load`: cached prefix against one naive batched forward. Writes
experiments/results/bench_gpu.json (bench_gpu_smoke.json with --smoke).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
# SmolLM2-1.7B's layer sizes (its config.json); everything else from the 135M config
SIZES = {"135m": {}, "1.7b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24,
                              "num_attention_heads": 32, "num_key_value_heads": 32, "head_dim": 64}}


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def mm_rate(device: str, seconds: float = 1.0) -> float:
    """TFLOP/s of back-to-back square matmuls: bf16 8192^3 on CUDA, fp32 512^3 on the CPU."""
    n, dtype = (8192, torch.bfloat16) if device == "cuda" else (512, torch.float32)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)
    sync()
    count, start = 0, time.perf_counter()
    while time.perf_counter() < start + seconds:
        torch.mm(a, b)
        count += 1
        if count % 8 == 0:
            sync()
    sync()
    return 2 * n**3 * count / (time.perf_counter() - start) / 1e12


class Memory:
    """Peak memory of one run: CUDA's allocator peak, or on the CPU the growth of the process's peak RSS."""

    def __enter__(self):
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        self.rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return self

    def __exit__(self, *exc):
        if torch.cuda.is_available():
            self.gib = torch.cuda.max_memory_allocated() / 2**30
        else:
            self.gib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self.rss0) / 2**20


def build_model(shape: Path, size: str, out: Path, tiny: bool) -> Path:
    """A random-weight Llama of the given shape, saved with the shape's tokenizer."""
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    if tiny:
        sys.path.insert(0, str(ROOT / "tests"))
        from conftest import build_tiny_model

        return build_tiny_model(out)
    config = AutoConfig.from_pretrained(shape)
    for key, value in SIZES[size].items():
        setattr(config, key, value)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(shape).save_pretrained(out)
    del model
    return out


def n_blocks(folder: Path) -> int:
    """Parameters of the decoder blocks (no embedding, no head): the N of the 4*N*tokens rule."""
    from transformers import AutoConfig, LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(AutoConfig.from_pretrained(folder))
    return sum(p.numel() for p in model.model.layers.parameters())


def config_for(folder: Path, bits: int, batch: int, steps: int, out: Path | None, smoke: bool):
    from recpeft.config import TrainConfig

    return TrainConfig(domain="news", model=str(folder), bits=bits, batch_size=batch, max_steps=steps,
                       eval_every=10**6, eval_samples=8, test_samples=8, base_test=False, patience=0,
                       checkpoint_every=0, lora_dropout=0.0, output_dir=str(out) if out else None,
                       runs_dir=str((out or Path(tempfile.mkdtemp())).parent / "runs"), threads=1 if smoke else 0)


def replay_batches(cfg) -> tuple[list, list[int], int]:
    """The Encoded rows of each of the first cfg.max_steps training batches, as the trainer draws them
    (its loader, seed and epoch), the answer token ids, and the resolved batch size."""
    from recpeft.data import load_data
    from recpeft.domains import get_domain
    from recpeft.kernels.gpu import batch_size_for
    from recpeft.models.load import load_tokenizer
    from recpeft.tasks import get_task
    from recpeft.tasks.batches import loader

    tok = load_tokenizer(cfg.model)
    task = get_task(cfg.task, load_data(cfg.domain, cfg.data), get_domain(cfg.domain), tok, cfg)
    rows = task.train_rows(cfg.train_samples)
    batch = batch_size_for(cfg.batch_size, getattr(cfg, "batch_tokens", 0), [len(r.input_ids) for r in rows],
                           torch.cuda.is_available())
    batches, epoch = [], 0
    while len(batches) < cfg.max_steps:
        train_loader = loader(rows, batch, shuffle=True, pad_id=tok.pad_token_id, seed=cfg.seed)
        train_loader.batch_sampler.set_epoch(epoch)
        batches += [[rows[i] for i in idx] for idx in train_loader.batch_sampler]
        epoch += 1
    return batches[:cfg.max_steps], task.answer_ids, batch


class StepClock:
    """Timestamps of the trainer's optimiser steps (through its between-steps hook), after a device sync;
    with `record`, also the real token ids of every training forward (to check the replay)."""

    def __init__(self, pad_id: int | None = None):
        self.times, self.pad_id, self.seen = [], pad_id, []

    def __enter__(self):
        from recpeft.training import events

        def hook(**_) -> None:
            sync()
            self.times.append(time.perf_counter())

        self.off = events.on("step", hook)  # fired after each optimiser step (recpeft/training/events.py)
        self.handle = (torch.nn.modules.module.register_module_forward_pre_hook(self._record)
                       if self.pad_id is not None else None)
        sync()
        self.times.append(time.perf_counter())
        return self

    def _record(self, module, args):
        if isinstance(module, torch.nn.Embedding) and module.training and args and args[0].dtype == torch.long:
            rows = args[0].tolist()
            self.seen.append([row[next((i for i, t in enumerate(row) if t != self.pad_id), len(row)):] for row in rows])

    def __exit__(self, *exc):
        self.off()
        if self.handle is not None:
            self.handle.remove()


def steady(times: list[float], batches: list, first: int = 3) -> tuple[float, int]:
    """(seconds, real tokens) of steps first..N: times[k] is the end of step k (times[0] the start)."""
    first = min(first, len(batches))
    tokens = sum(len(r.input_ids) for rows in batches[first - 1:] for r in rows)
    return times[-1] - times[first - 1], tokens


def run_recpeft(folder: Path, bits: int, batch: int, steps: int, smoke: bool, out: Path | None,
                check_replay: list | None = None) -> dict:
    from recpeft.models.load import load_tokenizer
    from recpeft.training.trainer import train

    cfg = config_for(folder, bits, batch, steps, out, smoke)
    pad = load_tokenizer(str(folder)).pad_token_id if check_replay is not None else None
    with Memory() as mem, StepClock(pad) as clock:
        result = train(cfg, save=out is not None, show_progress=False)
    if check_replay is not None:
        want = [[r.input_ids for r in rows] for rows in check_replay]
        if clock.seen != want:
            raise RuntimeError("the replayed batches differ from those the trainer trained on")
    return {"times": clock.times, "peak_gib": mem.gib, "kernels": getattr(result.model, "recpeft_kernels", None)}


def run_loop(folder: Path, batches: list, answer_ids: list[int], recipe: str, device: str) -> dict:
    """(a) plain or (b) tallrec: a 30-line transformers + peft loop over the given batches."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    with Memory() as mem:
        kwargs = {"dtype": torch.bfloat16 if device == "cuda" else torch.float32, "device_map": {"": device}}
        if recipe == "tallrec":
            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
        if recipe == "tallrec":
            model = prepare_model_for_kbit_training(model)
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                                 target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
        model.train()
        sync()
        times = [time.perf_counter()]
        for rows in batches:
            width = max(len(r.input_ids) for r in rows) + 1
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask, labels = torch.zeros_like(ids), torch.full_like(ids, -100)
            for i, r in enumerate(rows):
                seq = r.input_ids + [answer_ids[r.label]]
                ids[i, :len(seq)], mask[i, :len(seq)], labels[i, len(seq) - 1] = torch.tensor(seq), 1, seq[-1]
            loss = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device)).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            sync()
            times.append(time.perf_counter())
        del model, optimizer
    return {"times": times, "peak_gib": mem.gib}


def ranking_latency(adapter: Path, bits: int, candidates: int, repeats: int) -> dict:
    """p50 seconds of scoring `candidates` items for a 10-item history: cached prefix vs naive batched."""
    import recpeft
    from recpeft.data.formats.csvdir import load_sample

    rec = recpeft.load(adapter, bits=bits)
    items = list(load_sample("news").items.values())
    history, cands = items[:10], (items[10:] * 10)[:candidates]
    out = {}
    for name, naive in (("cached", False), ("naive", True)):
        rec.score(history, cands, naive=naive)  # warm-up
        seconds = []
        for _ in range(repeats):
            sync()
            tick = time.perf_counter()
            rec.score(history, cands, naive=naive)
            sync()
            seconds.append(time.perf_counter() - tick)
        out[f"{name}_p50_ms"] = round(1000 * statistics.median(seconds), 2)
    out["cached_speedup"] = round(out["naive_p50_ms"] / out["cached_p50_ms"], 2)
    return out


def summarise(run: dict, batches: list, rate: float, blocks: int) -> dict:
    seconds, tokens = steady(run["times"], batches)
    tps = tokens / seconds if seconds > 0 else float("nan")
    return {"tokens_per_s": round(tps, 1), "useful_mfu": round(4 * blocks * tps / (rate * 1e12), 4),
            "peak_gib": round(run["peak_gib"], 3), **({"kernels": run["kernels"]} if run.get("kernels") else {})}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=Path, default=None, help="folder with SmolLM2-135M's config.json and tokenizer")
    parser.add_argument("--sizes", default="135m,1.7b")
    parser.add_argument("--batches", default="8,64,0", help="batch sizes; 0 = recpeft's own default here")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--bits", default="16,8,4", help="recpeft precisions")
    parser.add_argument("--recipes", default="plain,tallrec")
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny model, 4 steps at batch 2, 4 and 0")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    from recpeft.runtime import cpu_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.smoke:
        args.sizes, args.batches, args.steps, args.candidates = "tiny", "2,4,0", 4, 5
    elif args.shape is None:
        from recpeft.models.hub import cached_model_dir

        args.shape = cached_model_dir("smollm2-135m")
    out: dict = {"device": torch.cuda.get_device_name() if device == "cuda" else cpu_model(),
                 "torch": torch.__version__, "steps": args.steps, "steady_state_steps": f"3..{args.steps}",
                 "flop_rule": "useful FLOPs = 4 * N_blocks * real tokens", "runs": [], "latency": [], "errors": []}
    out["mm_tflops"] = round(mm_rate(device, 0.3 if args.smoke else 2.0), 2)
    print(f"[bench_gpu] {out['device']}: matmul {out['mm_tflops']} TFLOP/s", flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    for size in args.sizes.split(","):
        folder = build_model(args.shape, size, work / f"model-{size}", tiny=args.smoke)
        blocks = n_blocks(folder)
        for batch in (int(b) for b in args.batches.split(",")):
            cfg = config_for(folder, 16, batch, args.steps, None, args.smoke)
            batches, answer_ids, resolved = replay_batches(cfg)
            label = f"{size} batch {resolved}" + (" (recpeft default)" if batch == 0 else "")
            jobs = [(f"recpeft bits {b}", lambda b=int(b), folder=folder, batch=batch, size=size, batches=batches:
                     run_recpeft(folder, b, batch, args.steps, args.smoke,
                                 work / f"ad-{size}-{b}" if batch == 0 else None,
                                 check_replay=batches if args.smoke else None)) for b in args.bits.split(",")]
            jobs += [(recipe, lambda r=recipe, folder=folder, batches=batches, answer_ids=answer_ids:
                      run_loop(folder, batches, answer_ids, r, device))
                     for recipe in args.recipes.split(",") if recipe]
            for name, job in jobs:
                try:
                    row = {"size": size, "batch": resolved, "default_batch": batch == 0, "run": name,
                           **summarise(job(), batches, out["mm_tflops"], blocks)}
                    out["runs"].append(row)
                    print(f"[bench_gpu] {label:28s} {name:16s} {row['tokens_per_s']:>10.1f} tok/s  "
                          f"MFU {row['useful_mfu']:.1%}  peak {row['peak_gib']:.2f} GiB", flush=True)
                except Exception as exc:  # one failed path must not hide the others
                    out["errors"].append({"size": size, "batch": resolved, "run": name, "error": repr(exc),
                                          "trace": traceback.format_exc()[-2000:]})
                    print(f"[bench_gpu] {label} {name}: FAILED {exc!r}", flush=True)
        for bits in (16, 8):
            adapter = work / f"ad-{size}-{bits}"
            if (adapter / "recpeft.json").is_file():
                try:
                    row = {"size": size, "bits": bits, "candidates": args.candidates,
                           **ranking_latency(adapter, bits, args.candidates, 3 if args.smoke else 10)}
                    out["latency"].append(row)
                    print(f"[bench_gpu] {size} rank {args.candidates} bits {bits}: cached {row['cached_p50_ms']} ms, "
                          f"naive {row['naive_p50_ms']} ms ({row['cached_speedup']}x)", flush=True)
                except Exception as exc:
                    out["errors"].append({"size": size, "bits": bits, "run": "latency", "error": repr(exc),
                                          "trace": traceback.format_exc()[-2000:]})
    for size in {r["size"] for r in out["runs"]}:
        for batch in {r["batch"] for r in out["runs"] if r["size"] == size}:
            rows = {r["run"]: r for r in out["runs"] if r["size"] == size and r["batch"] == batch}
            if "plain" in rows and "recpeft bits 16" in rows:
                rows["recpeft bits 16"]["speedup_vs_plain"] = round(
                    rows["recpeft bits 16"]["tokens_per_s"] / rows["plain"]["tokens_per_s"], 2)
            if "tallrec" in rows and "recpeft bits 8" in rows:
                rows["recpeft bits 8"]["peak_vs_tallrec"] = round(
                    rows["recpeft bits 8"]["peak_gib"] / max(rows["tallrec"]["peak_gib"], 1e-9), 3)
    path = args.output or RESULTS / ("bench_gpu_smoke.json" if args.smoke else "bench_gpu.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"[bench_gpu] wrote {path}; {len(out['errors'])} failed path(s)")
    return 1 if out["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
