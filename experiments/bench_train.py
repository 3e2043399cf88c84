"""Training speed: a naive seed-style loop against recpeft's own trainer, in one process.

    python experiments/bench_train.py [--model smollm2-135m] [--examples 256] [--batch-size 8] [--quick]

Both runs use the same base model weights, the same LoRA configuration, optimiser, schedule, learning
rate and number of optimiser steps, and the SAME training examples in the same
batches: (b) runs first through `recpeft.training.trainer.train`, and a global forward hook on the embedding
records exactly which token sequences each of its training steps saw; (a) then replays them.

(a) naive: the model as transformers loads it; every example is `prompt + answer token`, right-padded
    to the fixed `max_length`, full-vocabulary logits at every position, Hugging Face's LM loss on the
    answer token only.
(b) recpeft: the model as recpeft.models.load.load_base loads it (hand-written RMSNorm and rotary
    backward passes), length-bucketed left padding, the last block and the LM head computed at the
    scored position only and there on the Yes/No rows only, loss over the Yes/No logits.

Achieved GFLOP/s counts useful work on real tokens only (no padding), per training example of T
tokens: 2·N·T forward + 2·N·T input-gradient backward through the frozen base + 6·N_trainable·T
for the trainable weights, N = the parameters of the decoder blocks and final norm (the embedding
lookup is a gather, not a matmul), less what the loss does not need, which no run has to compute:
the last block's query, output projection and MLP at the T - 1 positions the loss does not read
(its keys and values are needed everywhere), and the input gradient of the first block's q, k, v
projections (their input is the frozen embedding); plus 4·n_answers·d for the LM head's answer rows
at the one position the loss reads. Attention-score FLOPs (about 2% here) are not counted, so the
figure is conservative.

The reference is the fp32 GFLOP/s of a large square torch.mm in the same process and thread count,
measured while each run runs: half a second of back-to-back torch.mm after every optimiser step,
outside the step's timing (through recpeft's between-steps hook for (b), in the loop for (a)); each
run is compared with the mean of its own probes. The rate is sustained (FLOPs over the probe's wall
time, as the runs' rates are), not the fastest single product. This machine's speed drifts by
±15% within a minute (a shared host), so a reference measured minutes away from a run misstates
it; 5-second probes before (b), between the runs and after (a), with their fastest products, are
reported as well.

Where (b)'s step time goes: two of its batches are replayed (forward + backward) under torch.profiler,
and the self CPU time is split into the base's matmuls, the adapter's, attention and the rest.

Quality at equal steps: validation AUC of both adapters on the same validation examples, scored by
the same scorer (recpeft.evaluation.scoring.score), with Hanley-McNeil 95% intervals. Writes
experiments/results/bench_train.json (bench_train_quick.json with --quick).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).parent / "results"


def matmul_gflops(n: int, seconds: float) -> tuple[float, float]:
    """fp32 GFLOP/s of n x n @ n x n torch.mm repeated for about `seconds`: (sustained, fastest product)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up
    best, count, start = 0.0, 0, time.perf_counter()
    while time.perf_counter() < start + seconds:
        tick = time.perf_counter()
        torch.mm(a, b)
        best, count = max(best, 2 * n**3 / (time.perf_counter() - tick) / 1e9), count + 1
    return 2 * n**3 * count / (time.perf_counter() - start) / 1e9, best


class StepProbes:
    """Sustained torch.mm GFLOP/s measured between optimiser steps (the caller keeps it out of step timing)."""

    def __init__(self, n: int, seconds: float):
        self.n, self.seconds, self.rates = n, seconds, []

    def __call__(self) -> None:
        self.rates.append(matmul_gflops(self.n, self.seconds)[0])

    @contextlib.contextmanager
    def between_trainer_steps(self):
        """A context in which recpeft's trainer probes after every optimiser step, through its "step" hook
        point (recpeft/training/events.py, fired after the step's timing has stopped)."""
        from recpeft.training import events

        with events.hooked("step", lambda **_: self()):
            yield self


def hanley_mcneil(auc: float, n_pos: int, n_neg: int) -> float:
    """Standard error of a ROC AUC (Hanley & McNeil, 1982)."""
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc)) / (n_pos * n_neg)
    return math.sqrt(max(var, 0.0))


class StepRecorder:
    """Records the real (unpadded) token ids of every training-mode forward through an embedding.

    recpeft left-pads, so a row's padding is its leading run of pad ids (prompts start with a
    non-pad token). Also records the torch thread count seen inside the run.
    """

    def __init__(self, pad_id: int):
        self.pad_id, self.batches, self.threads = pad_id, [], set()
        self.handle = torch.nn.modules.module.register_module_forward_pre_hook(self)

    def __call__(self, module, args):
        if isinstance(module, torch.nn.Embedding) and module.training and args and args[0].dtype == torch.long:
            rows = []
            for row in args[0].tolist():
                start = next((i for i, t in enumerate(row) if t != self.pad_id), len(row))
                rows.append(row[start:])
            self.batches.append((rows, args[0].numel()))
            self.threads.add(torch.get_num_threads())

    def close(self) -> None:
        self.handle.remove()


def load_normalised(out: dict) -> dict:
    """Each run's useful GFLOP/s as a share of the matmul rate measured during it, and the speed-up those
    shares imply: a shared machine's speed changes between the runs, the probes track it."""
    share_a = out["naive"]["useful_gflops"] / out["naive"]["matmul_gflops_during"]
    share_b = out["recpeft"]["useful_gflops"] / out["recpeft"]["matmul_gflops_during"]
    return {"naive_share_of_matmul": round(share_a, 3), "recpeft_share_of_matmul": round(share_b, 3),
            "speedup_load_normalised": round(share_b / share_a, 2)}


FLOP_RULE = ("per example of T real tokens: 4*N_block*T + 6*N_trainable*T (forward, input gradient, adapter "
             "weight gradient), less 4*N_last_unread*(T-1) (frozen) and 6*N_last_unread_trainable*(T-1) (the last "
             "block's q_proj, o_proj, MLP and post-attention norm at positions the loss does not read), less "
             "2*N_first_qkv*T (input gradient of the first block's q/k/v projections: their input is the frozen "
             "embedding), plus 4*n_answers*hidden (the LM head's answer rows at the scored position); N_block = "
             "decoder blocks + final norm (embedding lookup excluded); attention scores not counted")


def needed_parameters(model) -> dict[str, int]:
    """Parameter counts for the FLOP rule, split frozen/trainable (a PeftModel of a Llama-layout model)."""
    base = model.get_base_model()
    last, first = base.model.layers[-1], base.model.layers[0].self_attn
    unread = [last.self_attn.q_proj, last.self_attn.o_proj, last.mlp, last.post_attention_layernorm]

    def count(modules, trainable: bool) -> int:
        return sum(p.numel() for m in modules for p in m.parameters() if p.requires_grad == trainable)

    return {"last_unread": count(unread, False), "last_unread_trainable": count(unread, True),
            "first_qkv": count([first.q_proj, first.k_proj, first.v_proj], False)}


def flops_per_example(n_block: int, n_trainable: int, needed: dict[str, int], n_answers: int, hidden: int,
                      tokens: int) -> int:
    full = (4 * n_block + 6 * n_trainable) * tokens
    unread = (4 * needed["last_unread"] + 6 * needed["last_unread_trainable"]) * (tokens - 1)
    return full - unread - 2 * needed["first_qkv"] * tokens + 4 * n_answers * hidden


def step_profile(model, task, batches, labels, pad_id: int, rank: int) -> dict[str, float]:
    """Where a training step's time goes: self CPU time of forward + backward over the given batches
    (torch.profiler), as shares of the step. A matmul with a dimension equal to the adapter rank is the
    adapter's; other matmuls are the frozen base's; attention is SDPA's kernels; the rest (norms,
    rotary embeddings, SiLU, residual adds, copies, autograd bookkeeping) is "element-wise & other"."""
    from torch.profiler import ProfilerActivity, profile

    from recpeft.tasks.batches import Encoded, collate

    model.train()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for rows, ys in zip(batches, labels):
            batch = collate([Encoded(r, y) for r, y in zip(rows, ys)], pad_id)
            task.loss(model, batch).backward()
            model.zero_grad(set_to_none=True)
    shares = {"base matmuls": 0.0, "adapter matmuls": 0.0, "attention (SDPA)": 0.0, "element-wise & other": 0.0}
    for event in prof.key_averages(group_by_input_shape=True):
        if event.key in ("aten::mm", "aten::addmm", "aten::bmm"):
            dims = {d for shape in event.input_shapes for d in shape}
            shares["adapter matmuls" if rank in dims else "base matmuls"] += event.self_cpu_time_total
        elif "scaled_dot_product" in event.key:
            shares["attention (SDPA)"] += event.self_cpu_time_total
        else:
            shares["element-wise & other"] += event.self_cpu_time_total
    total = sum(shares.values())
    return {k: round(v / total, 3) for k, v in shares.items()}


def naive_train(cfg, task, batches, labels, valid, between_steps) -> dict:
    """Seed-style loop: fixed-length right padding, full-vocabulary logits, LM loss on the answer token."""
    from accelerate.utils import set_seed
    from transformers import AutoModelForCausalLM, get_cosine_schedule_with_warmup

    from recpeft.methods import get_method
    from recpeft.models.hub import resolve
    from recpeft.models.load import default_targets, load_tokenizer

    source = resolve(cfg.model)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, use_safetensors=True)
    model.requires_grad_(False)
    tok = load_tokenizer(source)
    attn = model.config._attn_implementation
    answer_ids = task.answer_ids
    set_seed(cfg.seed)
    model = get_method(cfg.method).attach(model, cfg, cfg.target_modules or default_targets(model), len(batches))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": [p for p in trainable if p.ndim >= 2], "weight_decay": cfg.weight_decay},
                                   {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0}], lr=cfg.lr)
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * len(batches)), len(batches))
    width, pad = cfg.max_length, tok.pad_token_id
    model.train()
    losses, seconds = [], []
    for rows, ys in zip(batches, labels):
        tick = time.perf_counter()
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        target = torch.full_like(ids, -100)
        for i, (row, y) in enumerate(zip(rows, ys)):
            seq = (row + [answer_ids[y]])[-width:]
            ids[i, :len(seq)], mask[i, :len(seq)], target[i, len(seq) - 1] = torch.tensor(seq), 1, seq[-1]
        loss = model(input_ids=ids, attention_mask=mask, labels=target).loss  # logits: [B, width, vocab]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        seconds.append(time.perf_counter() - tick)
        between_steps()
    auc = task.evaluate(model, valid, batch_size=cfg.batch_size * 2).metrics["auc"]  # the trainer's own evaluator
    return {"seconds": seconds, "losses": losses, "auc": auc, "attn_implementation": attn}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--domain", default="news")
    parser.add_argument("--examples", type=int, default=256, help="training examples (steps = examples / batch size)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--valid", type=int, default=128, help="validation examples scored for both runs")
    parser.add_argument("--matmul-n", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=0, help="0 = what recpeft's trainer picks")
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 steps of 4, 16 validation examples")
    parser.add_argument("--output", default=None, help="results JSON (default experiments/results/bench_train*.json)")
    args = parser.parse_args()
    if args.quick:
        args.examples, args.batch_size, args.valid, args.matmul_n = 8, 4, 16, 512

    from recpeft.config import TrainConfig
    from recpeft.data import load_data
    from recpeft.domains import get_domain
    from recpeft.models.hub import resolve
    from recpeft.models.load import load_tokenizer
    from recpeft.runtime import describe_machine
    from recpeft.tasks import get_task
    from recpeft.tasks.batches import Encoded
    from recpeft.training.trainer import train

    wall = time.time()
    steps = max(1, args.examples // args.batch_size)
    cfg = TrainConfig(domain=args.domain, model=args.model, max_steps=steps, batch_size=args.batch_size,
                      eval_every=steps, eval_samples=args.valid, test_samples=4, patience=0, threads=args.threads,
                      bits=32)
    resolve(cfg.model)  # fetch/convert outside any timing
    tok = load_tokenizer(resolve(cfg.model))
    # The task object the trainer uses: the same validation subset, encoding and evaluator for both runs.
    task = get_task(cfg.task, load_data(cfg.domain, cfg.data), get_domain(cfg.domain), tok, cfg)
    valid = task.eval_set("valid", cfg.eval_samples)
    valid_rows = valid.rows
    torch.set_num_threads(cfg.threads or max(1, len(os.sched_getaffinity(0))))
    probe_seconds = 1.0 if args.quick else 5.0
    probes = [matmul_gflops(args.matmul_n, probe_seconds)]
    print(f"[bench] fp32 torch.mm {args.matmul_n}^3 on {torch.get_num_threads()} threads: {probes[0][0]:.1f} "
          f"GFLOP/s sustained, {probes[0][1]:.1f} fastest product", flush=True)
    step_probe_seconds = 0.1 if args.quick else 0.5
    during_b, during_a = StepProbes(args.matmul_n, step_probe_seconds), StepProbes(args.matmul_n, step_probe_seconds)

    # (b) recpeft's trainer; the recorder sees what each step trained on.
    recorder = StepRecorder(tok.pad_token_id)
    try:
        with during_b.between_trainer_steps():
            result = train(cfg, save=False, show_progress=False)
    finally:
        recorder.close()
    recorded = recorder.batches
    if len(recorded) != result.metrics["steps"] * cfg.grad_accum:
        raise RuntimeError(f"recorded {len(recorded)} training forwards for {result.metrics['steps']} steps")
    b_seconds = result.metrics["seconds_per_micro_batch"] * steps
    probes.append(matmul_gflops(args.matmul_n, probe_seconds))

    # Labels of the recorded rows: look each prompt up among the encoded training rows.
    train_rows = task.train_rows(cfg.train_samples)
    by_ids: dict[tuple[int, ...], Encoded] = {tuple(r.input_ids): r for r in train_rows}
    batches = [rows for rows, _ in recorded]
    labels = [[by_ids[tuple(r)].label for r in rows] for rows in batches]
    profiled = min(2, len(batches))  # two of (b)'s own batches again, under the profiler
    profile_shares = step_profile(result.model, task, batches[:profiled], labels[:profiled], tok.pad_token_id,
                                  cfg.lora_r)

    naive = naive_train(cfg, task, batches, labels, valid, during_a)
    probes.append(matmul_gflops(args.matmul_n, probe_seconds))
    a_seconds = sum(naive["seconds"])

    model_cfg = result.model.config
    hidden = model_cfg.hidden_size
    base = result.model.get_base_model()
    n_embed = base.get_input_embeddings().weight.numel()
    head = base.get_output_embeddings().weight
    n_head = 0 if head is base.get_input_embeddings().weight else head.numel()
    n_trainable = sum(p.numel() for p in result.model.parameters() if p.requires_grad)
    n_block = sum(p.numel() for p in base.parameters()) - n_embed - n_head - n_trainable
    n_examples = sum(len(rows) for rows in batches)
    real_tokens = sum(len(r) for rows in batches for r in rows)
    needed = needed_parameters(result.model)
    flops = sum(flops_per_example(n_block, n_trainable, needed, len(task.answer_ids), hidden, len(r))
                for rows in batches for r in rows)
    b_padded = sum(n for _, n in recorded)
    if len(during_b.rates) != steps or len(during_a.rates) != steps:
        raise RuntimeError(f"expected {steps} matmul probes per run, got {len(during_b.rates)} / {len(during_a.rates)}")
    reference = statistics.mean(during_b.rates)
    around_b_fastest = statistics.mean(p[1] for p in probes[:2])
    b_gflops = flops / b_seconds / 1e9
    a_gflops = flops / a_seconds / 1e9

    labels_valid = [r.label for r in valid_rows]
    n_pos = sum(labels_valid)
    a_auc = naive["auc"]
    b_auc = result.history[-1]["valid_auc"]
    a_se, b_se = (hanley_mcneil(a_auc, n_pos, len(labels_valid) - n_pos),
                  hanley_mcneil(b_auc, n_pos, len(labels_valid) - n_pos))
    diff_se = math.hypot(a_se, b_se)
    out = {
        "model": cfg.model, "domain": cfg.domain, "examples": n_examples, "batch_size": cfg.batch_size, "steps": steps,
        "lr": cfg.lr, "method": cfg.method, "lora_r": cfg.lora_r, "naive_max_length": cfg.max_length,
        "threads_inside_run": sorted(recorder.threads), "attn_implementation": naive["attn_implementation"],
        "machine": {**describe_machine(), "torch": torch.__version__},
        "flop_rule": FLOP_RULE,
        "n_block": n_block, "n_trainable": n_trainable, "n_not_needed": needed, "real_tokens": real_tokens,
        "recpeft_tokens_incl_padding": b_padded, "naive_tokens_incl_padding": n_examples * cfg.max_length,
        "useful_gflop": round(flops / 1e9, 1),
        "matmul_gflops_reference": round(reference, 1),
        "matmul_gflops_5s_probes": {"when": ["before (b)", "between", "after (a)"],
                                    "sustained": [round(p[0], 1) for p in probes],
                                    "fastest_product": [round(p[1], 1) for p in probes]},
        "naive": {"seconds": round(a_seconds, 1), "samples_per_s": round(n_examples / a_seconds, 3),
                  "matmul_gflops_during": round(statistics.mean(during_a.rates), 1),
                  "useful_gflops": round(a_gflops, 1), "valid_auc": round(a_auc, 4), "valid_auc_se": round(a_se, 4),
                  "final_loss": round(naive["losses"][-1], 4)},
        "recpeft": {"seconds": round(b_seconds, 1), "samples_per_s": round(n_examples / b_seconds, 3),
                    "useful_gflops": round(b_gflops, 1), "matmul_gflops_during": round(reference, 1),
                    "matmul_gflops_during_range": [round(min(during_b.rates), 1), round(max(during_b.rates), 1)],
                    "share_of_matmul": round(b_gflops / reference, 3),
                    "share_of_fastest_product_around": round(b_gflops / around_b_fastest, 3),
                    "valid_auc": round(b_auc, 4), "valid_auc_se": round(b_se, 4),
                    "valid_auc_base": round(result.metrics["valid_auc_base"], 4)},
        "recpeft_step_time_shares": profile_shares, "recpeft_step_time_shares_batches": profiled,
        "speedup": round(a_seconds / b_seconds, 2),
        "speedup_load_normalised": None,
        "valid_n": len(valid_rows), "valid_positives": n_pos,
        "auc_difference": round(b_auc - a_auc, 4), "auc_difference_95ci": round(1.96 * diff_se, 4),
        "other_processes_running": os.getloadavg()[0] > 0.5 * len(os.sched_getaffinity(0)),
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "wall_seconds": round(time.time() - wall, 1),
    }
    out["speedup_load_normalised"] = load_normalised(out)["speedup_load_normalised"]
    out["naive"]["share_of_matmul"] = load_normalised(out)["naive_share_of_matmul"]
    print(f"[bench] FLOP rule: {out['flop_rule']}")
    print(f"[bench] N_block {n_block:,}  N_trainable {n_trainable:,}  {n_examples} examples, "
          f"{real_tokens:,} real tokens "
          f"(recpeft computed {b_padded:,} incl. padding, naive {out['naive_tokens_incl_padding']:,}); "
          f"useful work {flops / 1e9:,.0f} GFLOP")
    print(f"[bench] threads inside the run: {out['threads_inside_run']}; attention: {out['attn_implementation']}")
    print(f"[bench] matmul GFLOP/s during (b), 0.5 s after each step: mean {reference:.1f} (range "
          f"{min(during_b.rates):.1f}-{max(during_b.rates):.1f}); during (a): {statistics.mean(during_a.rates):.1f}; "
          f"5 s probes before (b), between, after (a): sustained {out['matmul_gflops_5s_probes']['sustained']}, "
          f"fastest product {out['matmul_gflops_5s_probes']['fastest_product']}")
    for name in ("naive", "recpeft"):
        r = out[name]
        print(f"[bench] ({'a' if name == 'naive' else 'b'}) {name:8s} {r['seconds']:8.1f} s  "
              f"{r['samples_per_s']:7.3f} samples/s  {r['useful_gflops']:6.1f} useful GFLOP/s  "
              f"valid AUC {r['valid_auc']:.4f} ± {1.96 * r['valid_auc_se']:.4f}")
    print(f"[bench] speed-up (b)/(a): {out['speedup']:.2f}x; (b) reaches {out['recpeft']['share_of_matmul']:.1%} "
          f"of the matmul GFLOP/s measured during it ({out['recpeft']['share_of_fastest_product_around']:.1%} "
          f"of the fastest products in the 5 s probes around it); AUC (b) - (a) = {out['auc_difference']:+.4f} "
          f"± {out['auc_difference_95ci']:.4f} (95%, "
          f"{len(valid_rows)} validation examples)")
    print(f"[bench] where (b)'s forward + backward time goes (torch.profiler, {profiled} of its batches replayed): "
          + ", ".join(f"{k} {v:.0%}" for k, v in profile_shares.items()))
    print(f"[bench] load-normalised (each run against the matmul rate during it): (a) "
          f"{out['naive']['share_of_matmul']:.0%} and (b) {out['recpeft']['share_of_matmul']:.0%} of the matmul rate; "
          f"speed-up {out['speedup_load_normalised']:.2f}x")
    if out["other_processes_running"]:
        print(f"[bench] note: other processes were running (load average {out['load_average_1min_at_end']}); the "
              "ratios are side by side in one run, absolute rates are lower than on an idle machine")
    path = (Path(args.output) if args.output
            else RESULTS_DIR / ("bench_train_quick.json" if args.quick else "bench_train.json"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"[bench] wrote {path} ({out['wall_seconds']:.0f} s wall)")


if __name__ == "__main__":
    sys.exit(main())
