"""The CLI verbs that use data and trained adapters: eval, verify, baselines, recommend, merge, serve.

Plain functions with Typer annotations; recpeft/cli/app.py registers them on the app. Each is a thin call
into one library function.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from recpeft.config import CHOICES, FIELDS, TrainConfig
from recpeft.domains import DOMAINS
from recpeft.errors import UserError

# Defaults and help texts shared with `recpeft train` come from the TrainConfig fields, so a verb never
# disagrees with training about, say, how many history items a prompt shows.
_D = TrainConfig()
_HELP = {name: f.metadata["help"] for name, f in FIELDS.items()}
# Baselines need users and items: alpaca (instruction data) has neither.
_INTERACTION_FORMATS = ", ".join(f for f in CHOICES["format"] if f != "alpaca")


def _opt(default, help_text: str, *names: str):
    return typer.Option(None, *names, help=f"{help_text} [default: {default}]", show_default=False)


def eval_cmd(
    adapter: str = typer.Option(..., "--adapter", "-a", help="Adapter folder (e.g. adapters/news), or 'none' for "
                                "the untrained base model (zero-shot)."),
    data: str | None = _opt("the adapter's training data, else the embedded sample", "Data path.", "--data"),
    fmt: str | None = _opt("the adapter's, else detected from the files", _HELP["format"], "--format"),
    task: str | None = _opt(f"the adapter's task, else {_D.task}", _HELP["task"], "--task"),
    split: str = typer.Option("test", "--split", help="train, valid or test."),
    limit: int = typer.Option(0, "--limit", help="Evaluate a seeded subset of N examples (0 = all).", min=0),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics JSON instead of the table."),
    model: str | None = _opt(f"the adapter's base model, else {_D.model}", _HELP["model"], "--model", "-m"),
    domain: str | None = _opt(f"the adapter's domain, else {_D.domain}", _HELP["domain"], "--domain", "-d"),
    out: str | None = _opt("<adapter>.eval-<task>-<split>.json beside the adapter folder "
                              "(adapters/base-<domain>.eval-<task>-<split>.json for none)", "Metrics JSON file.",
                              "--out", "-o"),
    batch_size: int = typer.Option(16, "--batch-size", help="Rows per forward pass.", min=1),
    threads: int = typer.Option(0, "--threads", help="Torch CPU threads (0 = the adapter's --threads, else all "
                                "cores).", min=0),
    force: bool = typer.Option(False, "--force", help="Load an adapter even if it was trained on another base."),
) -> None:
    """Evaluate an adapter (or the untrained base) on one split: a metrics table and a metrics JSON file."""
    from recpeft.evaluation.evaluate import evaluate, format_table

    report = evaluate(adapter, data=data, fmt=fmt, task=task, split=split, limit=limit, model=model, domain=domain,
                      out=out, batch_size=batch_size, threads=threads, force=force, show_progress=not as_json)
    if as_json:
        print(json.dumps(report.payload, indent=2))
    else:
        print(format_table(report.payload))
        print(f"  metrics written to {report.path}")


def verify(
    adapter: Path = typer.Argument(..., help="Adapter folder, e.g. adapters/news."),
    model: str | None = typer.Option(None, "--model", "-m", help="Also check it was trained on this base model "
                                        "(fingerprint of config and tokenizer) and attaches to it."),
    force: bool = typer.Option(False, "--force", help="Accept a base-model mismatch with a warning."),
) -> None:
    """Check an adapter folder: complete, weights in safetensors, and (with --model) made for that base."""
    from transformers.utils import logging as hf_logging

    from recpeft.methods import check_adapter

    hf_logging.disable_progress_bar()  # stderr is for the one-line verdict
    found = check_adapter(adapter, model, force)
    base = f"; attaches to {model}" if model else ""
    print(f"ok: {found['method']} adapter for {found['domain'] or 'an unknown domain'} "
          f"(trained on {found['base_model'] or 'an unrecorded base'}) in {adapter}{base}")


def baselines(
    task: str = typer.Option(..., "--task", help="preference (AUC), ranking, choice (the same "
                             "lists as ranking) or profile (cold-start users; HR/NDCG/MRR), or rating (RMSE/MAE)."),
    data: str | None = _opt(FIELDS["data"].metadata["flag_default"], _HELP["data"], "--data"),
    data_format: str | None = _opt(FIELDS["format"].metadata["flag_default"],
                                      f"Data format: {_INTERACTION_FORMATS}.", "--format"),
    on_bad_rows: str = typer.Option(_D.on_bad_rows, "--on-bad-rows", help=_HELP["on_bad_rows"]),
    domain: str = typer.Option(_D.domain, "--domain", "-d", help=f"Domain whose embedded sample is used "
                               f"without --data: {', '.join(DOMAINS)}."),
    models: str | None = _opt("every baseline that does the task", "Comma-separated baselines: random, "
                                 "popularity, item_knn, bpr, gru4rec, sasrec, logreg; for --task profile also "
                                 "group_popularity, genre_popularity, group_genre_popularity.", "--models"),
    negatives: int = typer.Option(_D.negatives, "--negatives", help=_HELP["negatives"]),
    train_samples: int = typer.Option(_D.train_samples, "--train-samples", help="Few-shot preference/rating: fit "
                                      "on the same seeded N training examples as the LLM (0 = all)."),
    history_len: int = typer.Option(_D.history_len, "--history-len", help="History items a model may read when "
                                    "it scores, as `recpeft train --history-len` shows the LLM (0 = all)."),
    cold_max_train: int = typer.Option(2, "--cold-max-train", help="Cold-start slice: test targets whose item "
                                       "has at most this many train-period interactions."),
    profile_from: str = typer.Option(_D.profile_from, "--profile-from", help=_HELP["profile_from"]),
    profile_items: int = typer.Option(_D.profile_items, "--profile-items", help=_HELP["profile_items"], min=1),
    seed: int = typer.Option(_D.seed, "--seed", help="Seed for negatives, few-shot samples and model fits."),
    threads: int = typer.Option(0, "--threads", help="Torch CPU threads (0 = torch's default)."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON instead of a table."),
    out: Path | None = typer.Option(None, "--out", help="Also write the results JSON to this file."),
) -> None:
    """Classical baselines (popularity, item-kNN, BPR, GRU4Rec, logistic regression) on the LLM's splits."""
    from recpeft.baselines import baseline_report, format_report

    report = baseline_report(domain, data, task, fmt=data_format, on_bad_rows=on_bad_rows,
                             models=models.split(",") if models else None, negatives=negatives, seed=seed,
                             train_samples=train_samples, history_len=history_len,
                             cold_max_train=cold_max_train, threads=threads, out=out, profile_from=profile_from,
                             profile_items=profile_items,
                             log=lambda m: print(m, file=sys.stderr))
    print(json.dumps(report, indent=2) if as_json else format_report(report))


def recommend(
    adapter: Path = typer.Option(..., "--adapter", "-a", help="Adapter folder (from `recpeft train`)."),
    history: str | None = typer.Option(None, "--history", help="The user's liked items, oldest first, separated "
                                          "by ';'. Prefix a title with '-' for a dislike."),
    profile: str | None = typer.Option(None, "--profile", help="A new user's description, e.g. \"I am a 25-year-old "
                                          "woman. I like Sci-Fi and Drama.\" (cold start: adapters trained with "
                                          "--task profile read it best). Give --history, --profile or both."),
    candidates: Path | None = typer.Option(None, "--candidates", help="File of candidates: one title per line, "
                                              "or a CSV with a 'title' column (and optional item_id, category)."),
    from_catalog: bool = typer.Option(False, "--from-catalog", help="Rank every catalogue item of the adapter's "
                                      "training data that is not in the history."),
    k: int = typer.Option(10, "-k", "--top-k", help="How many to show."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    bits: int | None = typer.Option(None, "--bits", help="Base precision [default: as trained]."),
    force: bool = typer.Option(False, "--force", help="Load an adapter trained on another base anyway."),
) -> None:
    """Rank candidates for a user history or profile with a trained adapter (prompt prefix encoded once)."""
    from recpeft.cli.inputs import recommend as run

    rows = run(adapter, history, candidates, from_catalog, k, bits=bits, force=force, profile=profile)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    width = max(len(r["title"]) for r in rows)
    print(f"{'rank':>4}  {'score':>6}  {'title':<{width}}  category")
    for r in rows:
        print(f"{r['rank']:>4}  {r['score']:.4f}  {r['title']:<{width}}  {r['category']}")


def merge(
    adapters: list[str] = typer.Argument(..., help="Adapter folder; with --combine, two or more (and the "
                                         "--weights values may follow them)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (written atomically)."),
    combine: bool = typer.Option(False, "--combine", help="Combine the adapters into one LoRA adapter instead "
                                 "of baking one into the base."),
    weights: str | None = typer.Option(None, "--weights", help="With --combine: one weight per adapter, "
                                          "e.g. --weights 0.5 0.5 [default: equal]."),
    force: bool = typer.Option(False, "--force", help="Accept an adapter trained on another base anyway."),
) -> None:
    """Bake a LoRA/AdaLoRA adapter into its base (a plain HF model folder), or --combine adapters."""
    from recpeft.serving.merge import combine_adapters, merge_adapter

    paths, extra = _split_weights(adapters)
    values = ([] if weights is None else _floats(weights)) + extra
    if not combine:
        if len(paths) != 1 or values:
            raise UserError("merge takes one adapter folder; use --combine A B --weights 0.5 0.5 to combine")
        r = merge_adapter(paths[0], out, force=force)
        print(f"merged {r['method']} adapter {paths[0]} into {r['out']}/ (float32); "
              f"max |logit diff| merged vs base + adapter: {r['max_abs_logit_diff']:.3g}")
        return
    r = combine_adapters(paths, values or [1.0 / len(paths)] * len(paths), out, force=force)
    parts = " + ".join(f"{s['weight']:g} x {s['path']}" for s in r["sources"])
    print(f"combined {parts} into the LoRA adapter {r['out']}/")
    if r["privacy"]:
        from recpeft.training.privacy_guarantee import guarantee_words

        print(f"differential privacy by basic composition: ({r['privacy']['epsilon']:.3g}, "
              f"{r['privacy']['delta']:.3g})-DP {guarantee_words(r['privacy'])}")


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.replace(",", " ").split()]
    except ValueError:
        raise UserError(f"--weights must be numbers, got {text!r}") from None


def _split_weights(args: list[str]) -> tuple[list[str], list[float]]:
    """`--weights 0.5 0.5`: click gives --weights the first value; the others land among the
    positional arguments, where a number that is no existing path is taken as a weight."""
    paths, extra = [], []
    for a in args:
        try:
            value = float(a)
        except ValueError:
            value = None
        (extra.append(value) if value is not None and not Path(a).exists() else paths.append(a))
    return paths, extra


def serve(
    adapters: Path = typer.Option(Path("adapters"), "--adapters", help="Folder whose sub-folders are adapters; "
                                  "each is served under its folder name."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    bits: int | None = typer.Option(None, "--bits", help="Base precision [default: as trained]."),
    max_queue: int = typer.Option(32, "--max-queue", min=1, help="Requests that may wait for the model; "
                                  "beyond that a request gets 503 with a Retry-After header."),
    timeout: float = typer.Option(30.0, "--timeout", min=0.01, help="Seconds a request may wait and run; "
                                  "then it gets 504 and its model work is stopped."),
    batching: bool = typer.Option(True, "--batch/--no-batch", help="Score concurrent requests for one adapter "
                                  "together (micro-batches) instead of one at a time."),
    max_batch: int = typer.Option(512, "--max-batch", min=1, help="Most candidates scored in one micro-batch."),
    max_body: int = typer.Option(256 * 1024, "--max-body", min=1024, help="Largest request body in bytes, "
                                 "chunked or not (413 beyond)."),
    client_timeout: float = typer.Option(10.0, "--client-timeout", min=0.01, help="Seconds a client may take to "
                                         "send a request's headers, and again its body (408 beyond)."),
    max_connections: int = typer.Option(256, "--max-connections", min=1, help="Open connections at once; "
                                        "beyond it uvicorn answers 503 (a backstop against many slow clients)."),
    max_sessions: int = typer.Option(1000, "--max-sessions", min=1, help="Interactive sessions (/v1/sessions) kept "
                                     "at once; a new one beyond it ends the least recently used."),
    session_ttl: float = typer.Option(900.0, "--session-ttl", min=1.0, help="Seconds a session lives after its "
                                      "last use; then its id is a 404."),
) -> None:
    """Serve the adapters over HTTP (FastAPI; OpenAPI docs at /docs), one shared base model."""
    from recpeft.serving.http import Limits, run

    run(adapters, host, port, bits=bits, limits=Limits(max_queue=max_queue, timeout=timeout, max_body=max_body,
                                                      client_timeout=client_timeout, batching=batching,
                                                      max_batch=max_batch, max_connections=max_connections,
                                                      max_sessions=max_sessions, session_ttl=session_ttl))
