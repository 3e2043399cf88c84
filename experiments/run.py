"""Run one experiment of experiments/<NAME>.yaml: train and evaluate each run, write results JSON + plots.

    python experiments/run.py ml100k_preference_shots            # the full experiment (see the YAML)
    python experiments/run.py ml100k_interests --tiny            # the same pipeline at smoke-test size
    python experiments/run.py NAME --set max_steps=4 --set model=PATH --out DIR
    python experiments/run.py NAME --resume      # keep the finished runs, continue an interrupted one

Writes <out>/<NAME>.json (config, machine, per-run valid/test metrics with the untrained base's on the
same examples, validation history, training losses, seconds), <out>/<NAME>-learning-curve.png and,
for preference/click, <out>/<NAME>-roc.png. <out> defaults to experiments/results (results/tiny for
--tiny). Adapters go to adapters/experiments/<NAME>/<run> (git-ignored), each run's checkpoints to
adapters/experiments/<NAME>-checkpoints/<run>: with --resume, a run stopped mid-way continues exactly from its
newest checkpoint (recpeft's resume), which is what makes hour-long CPU runs survivable. Needs matplotlib
(`pip install -e ".[experiments]"`).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recpeft.artifacts import write_json_atomic  # noqa: E402
from recpeft.config import build_config  # noqa: E402
from recpeft.runtime import describe_machine  # noqa: E402


def load_spec(name: str, tiny: bool, sets: list[str]) -> dict[str, Any]:
    """The experiment's YAML, with its `tiny` section applied for --tiny and `--set key=value` on top."""
    path = ROOT / "experiments" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (ROOT / "experiments").glob("*.yaml"))
        from recpeft.errors import UserError

        raise UserError(f"no experiment {name!r}; known: {', '.join(known)}", str(path))
    spec = yaml.safe_load(path.read_text())
    if tiny:
        small = spec.get("tiny", {})
        spec.update({k: v for k, v in small.items() if k not in ("train",)})
        spec["train"] = {**spec["train"], **small.get("train", {})}
    for item in sets:
        key, _, value = item.partition("=")
        spec["train"][key] = yaml.safe_load(value)
    return spec


def data_args(spec: dict[str, Any]) -> dict[str, Any]:
    """The data path (relative to the repository root) and format, as TrainConfig / evaluate want them."""
    data = spec.get("data")
    return {"data": str((ROOT / data).resolve()) if data else None, "format": spec.get("format")}


def run_experiment(name: str, tiny: bool = False, sets: list[str] | None = None, out: Path | None = None,
                   adapters: Path | None = None, data_path: str | None = None,
                   resume: bool = False, only: list[str] | None = None) -> dict[str, Any]:
    from recpeft.evaluation.evaluate import evaluate
    from recpeft.training.checkpoint import latest_checkpoint
    from recpeft.training.trainer import train

    spec = load_spec(name, tiny, sets or [])
    unknown = sorted(set(only or []) - {r["name"] for r in spec["runs"]})
    if unknown:
        from recpeft.errors import UserError

        raise UserError(f"--only: no run {', '.join(unknown)} in {name}; runs: "
                        f"{', '.join(r['name'] for r in spec['runs'])}", str(ROOT / "experiments" / f"{name}.yaml"))
    out = out or ROOT / "experiments" / "results" / ("tiny" if tiny else "")
    adapters = adapters or ROOT / "adapters" / "experiments" / name
    data = data_args(spec)
    if data_path:  # the YAML's path is relative to a checkout beside ../shared/data; elsewhere, say where it is
        data["data"] = str(Path(data_path).resolve())
    base_cfg = build_config(**spec["train"], **data)
    results: dict[str, Any] = {
        "experiment": name, "description": spec.get("description", ""), "tiny": tiny,
        "command": " ".join(["python", "experiments/run.py", name] + (["--tiny"] if tiny else [])
                            + [f"--set {s}" for s in sets or []]),
        "machine": describe_machine(),
        "data": {"path": data["data"], "format": data["format"]}, "train": base_cfg.to_dict(), "runs": [],
    }
    outputs: dict[str, dict[str, list]] = {}
    if spec.get("baselines"):  # a bad baselines section fails now, not after an hour of LLM runs
        from recpeft.baselines import check_names

        check_names(base_cfg.task, spec["baselines"].get("models"))
    uses_fusion = any(r.get("fusion", base_cfg.fusion) != "off" for r in spec["runs"])
    done = finished_runs(out / f"{name}.json", results, uses_fusion) if resume else {}
    for run in spec["runs"]:
        run = dict(run)
        run_name, zero_shot = run.pop("name"), run.pop("zero_shot", False)
        if run_name in done and done[run_name].get("overrides", {}) == run:
            results["runs"].append(done[run_name])
            outputs[run_name] = done[run_name]["outputs"]
            print(f"[experiments] {name}/{run_name}: kept from the previous results (--resume)", flush=True)
            continue
        if only and run_name not in only:
            continue
        start = time.time()
        if zero_shot:
            cfg = base_cfg
            report = evaluate("none", data=data["data"], fmt=data["format"], task=cfg.task, split="test",
                              limit=cfg.test_samples, model=cfg.model, domain=cfg.domain, write=False,
                              overrides=cfg.to_dict())
            row = {"name": run_name, "kind": "zero-shot", "test": report.metrics}
            outputs[run_name] = report.outputs
        else:
            cfg = build_config(**{**spec["train"], **run, **data, "output_dir": str(adapters / run_name),
                                  "runs_dir": str(adapters.with_name(f"{adapters.name}-checkpoints") / run_name)})
            if resume and latest_checkpoint(cfg):
                cfg.resume = "latest"
                print(f"[experiments] {name}/{run_name}: continuing from its newest checkpoint (--resume)", flush=True)
            result = train(cfg)
            m = result.metrics
            row = {"name": run_name, "kind": cfg.method, "overrides": run,
                   "valid": {m["main_metric"]: m[f"valid_{m['main_metric']}"], "n": m["valid_n"]},
                   "valid_base": _split(m, "valid", base=True), "test": _split(m, "test"),
                   "test_base": _split(m, "test", base=True), "best_step": m["best_step"], "steps": m["steps"],
                   "train_examples": m["train_examples"], "history": result.history, "losses": result.losses,
                   "adapter": result.output_dir, "seconds_per_micro_batch": m["seconds_per_micro_batch"],
                   "processor": results["machine"]["processor"], "privacy": m.get("privacy")}
            outputs[run_name] = result.test_outputs
            if spec.get("cold_samples") and cfg.task == "ranking":
                row["cold_test"], row["cold_test_base"] = cold_slice(cfg, result, spec["cold_samples"])
            if cfg.task == "interests":
                row["test_history_reference"] = history_reference(cfg, result.tokenizer)
        row["seconds"] = round(time.time() - start, 1)
        if "generated" in outputs[run_name]:  # interests: what the model actually wrote, for the reader
            row["generated_examples"] = outputs[run_name]["generated"][:5]
        row["outputs"] = _plain(outputs[run_name])  # per-example scores: the ROC can be redrawn, runs resumed
        results["runs"].append(row)
        print(f"[experiments] {name}/{run_name}: test {row['test']} ({row['seconds']:.0f} s)", flush=True)
        # After every run, so a long experiment that is stopped keeps what it finished (complete: false;
        # an experiment with baselines is complete only once they are in too: --resume then adds them)
        results["complete"] = _complete(results, spec)
        write_json_atomic(out / f"{name}.json", results)
    if spec.get("baselines"):
        results["baselines"] = baselines_on_same_examples(spec, base_cfg, data)
        results["complete"] = _complete(results, spec)
        write_json_atomic(out / f"{name}.json", results)
    results["complete"] = _complete(results, spec)  # also when --only trained nothing (a redraw of the plots)
    if "privacy_utility" in spec.get("plots", []):
        results["privacy_utility"] = privacy_utility(results)
    results["plots"] = plot(name, spec.get("plots", []), results, outputs, out)
    write_json_atomic(out / f"{name}.json", results)
    print(f"[experiments] wrote {out / f'{name}.json'}")
    return results


def baselines_on_same_examples(spec: dict[str, Any], cfg, data: dict[str, Any]) -> dict[str, Any]:
    """The YAML's classical baselines on the very test examples (and cold-start users) the LLM runs
    scored: same split, same seeded subset, same candidates; fitted on each run's few-shot sample
    (`train_samples` in the baselines section) or on the whole train period."""
    from recpeft.baselines import run_baselines
    from recpeft.data import load_data

    conf = spec["baselines"]
    recdata = load_data(cfg.domain, data["data"], data["format"], cfg.on_bad_rows)
    out = {}
    for shots in conf.get("train_samples", [0]):
        start = time.time()
        res = run_baselines(recdata, cfg.task, conf.get("models"), negatives=cfg.negatives, seed=cfg.seed,
                            train_samples=shots, history_len=cfg.history_len, test_limit=cfg.test_samples,
                            cold_limit=spec.get("cold_samples", 0), params=conf.get("params"),
                            profile_from=cfg.profile_from, profile_items=cfg.profile_items)
        out[str(shots)] = {m: {k: v for k, v in r.items() if k != "valid"} for m, r in res.items()}
        print(f"[experiments] baselines, train_samples={shots or 'all'}: "
              + ", ".join(f"{m} {r['test']}" for m, r in res.items()) + f" ({time.time() - start:.0f} s)", flush=True)
    return out


def finished_runs(path: Path, results: dict[str, Any], uses_fusion: bool = True) -> dict[str, dict[str, Any]]:
    """Runs of an earlier results file made with the same data and training settings, by name. Without fusion
    in any run, the fusion settings (whose defaults changed) do not count."""
    if not path.is_file():
        return {}
    import json

    from recpeft.config import TrainConfig
    from recpeft.training.checkpoint import RUN_KEYS

    old = json.loads(path.read_text())
    # A setting added to TrainConfig since the file was written is the same run at its default (new options
    # default to the old behaviour); any other difference means the runs must be redone, except in the
    # settings that do not change what a run computes (threads, checkpointing: RUN_KEYS).
    defaults = TrainConfig().to_dict()
    train = {k: v for k, v in results["train"].items() if k not in RUN_KEYS}
    old_train = {k: v for k, v in {**defaults, **old.get("train", {})}.items() if k not in RUN_KEYS}
    if not uses_fusion:
        old_train, train = ({k: v for k, v in t.items() if not k.startswith("fusion_")} for t in (old_train, train))
    if old_train != train or old.get("data") != results["data"] or old.get("tiny") != results["tiny"]:
        print(f"[experiments] {path.name}: settings changed since it was written; running everything", flush=True)
        return {}
    return {r["name"]: r for r in old.get("runs", []) if "outputs" in r}


def _plain(outputs: dict[str, Any]) -> dict[str, list]:
    """Per-example outputs as JSON lists (numpy arrays and scalars become Python numbers)."""
    return {k: [v.item() if hasattr(v, "item") else v for v in vals] for k, vals in outputs.items()}


def task_for(cfg, tokenizer):
    """The run's task object on its data (what the trainer built), for extra evaluations after training."""
    from recpeft.data import load_data
    from recpeft.domains import get_domain
    from recpeft.tasks import get_task

    data = load_data(cfg.domain, cfg.data, cfg.format, cfg.on_bad_rows)
    return get_task(cfg.task, data, get_domain(cfg.domain), tokenizer, cfg)


def cold_slice(cfg, result, limit: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Ranking metrics of the trained adapter and of its base on `limit` cold-start test users only."""
    from recpeft.methods import get_method

    task = task_for(cfg, result.tokenizer)
    cold = task.cold_eval_set("test", limit)
    if not len(cold):  # e.g. the embedded samples: every item there has many interactions
        return {"n": 0}, {"n": 0}
    batch_size = result.metrics["batch_size"] * 2  # the trainer's evaluation batch (--batch-size 0 resolved)
    tuned = task.evaluate(result.model, cold, batch_size=batch_size).metrics
    with get_method(cfg.method).disabled(result.model):
        base = task.evaluate(result.model, cold, batch_size=batch_size).metrics
    return tuned, base


def history_reference(cfg, tokenizer) -> dict[str, Any]:
    """Interests: the history's own top categories (no model) on the same test users."""
    task = task_for(cfg, tokenizer)
    return task.history_reference(task.eval_set("test", cfg.test_samples))


def _split(metrics: dict[str, Any], split: str, base: bool = False) -> dict[str, Any]:
    """One split's metrics out of the trainer's flat dict (test_auc, test_auc_base, ...)."""
    suffix = "_base" if base else ""
    out = {k[len(split) + 1:len(k) - len(suffix)]: v for k, v in metrics.items()
           if k.startswith(f"{split}_") and k.endswith(suffix) and (base or not k.endswith("_base"))}
    out.pop("n", None)
    out["n"] = metrics.get(f"{split}_n")
    return out


def privacy_utility(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per configuration (a run's name without -seedN; one per target ε unless a spec tries two DP recipes at
    one ε, None = non-private): test main metric over the seeds, ε spent, and the time per optimiser step
    against the non-private run of the same seed on the same CPU model (None where no such pair exists).
    Per step, not per micro-batch: a DP step's pieces (--dp-max-physical-batch) vary in size and number with
    the Poisson batch, while the non-private step is a fixed number of full micro-batches."""
    import statistics

    trained = [r for r in results["runs"] if r["kind"] != "zero-shot"]
    key = next((k for k in trained[0]["test"] if k != "n"), "auc") if trained else "auc"
    # Timings compare only within one host: --resume keeps runs made on other (faster or slower) machines
    plain: dict[Any, dict[str, Any]] = {}  # per seed, the first non-private run (the YAML's reference row)
    for r in trained:
        if r["overrides"].get("dp_epsilon") is None and r.get("processor"):
            plain.setdefault(r["overrides"].get("seed"), r)
    same_host = {}  # run name -> its seed's non-private time per micro-batch, where both ran on one CPU model
    for r in trained:
        reference = plain.get(r["overrides"].get("seed"))
        if reference and reference["processor"] == r.get("processor"):
            same_host[r["name"]] = _seconds_per_step(reference)
    families: dict[str, list[dict[str, Any]]] = {}
    for r in trained:
        families.setdefault(_family(r["name"]), []).append(r)

    def order(family: str) -> tuple[float, int]:
        eps = families[family][0]["overrides"].get("dp_epsilon")
        return (math.inf if eps is None else eps, list(families).index(family))

    rows = []
    for family in sorted(families, key=order):
        group = families[family]
        scores = [r["test"][key] for r in group]
        slower = [_seconds_per_step(r) / same_host[r["name"]] for r in group if r["name"] in same_host]
        rows.append({"config": family, "epsilon": group[0]["overrides"].get("dp_epsilon"), "metric": key,
                     "mean": statistics.fmean(scores),
                     "sd": statistics.stdev(scores) if len(scores) > 1 else 0.0, "seeds": len(scores),
                     "test_n": group[0]["test"]["n"],
                     "epsilon_spent": [r["privacy"]["epsilon_spent"] for r in group if r.get("privacy")],
                     "step_time_vs_non_private": statistics.fmean(slower) if slower else None})
    return rows


def _seconds_per_step(run: dict[str, Any]) -> float:
    """Mean training seconds per optimiser step: the micro-batches' mean time x their count (one logged
    loss each) / the steps taken."""
    return run["seconds_per_micro_batch"] * len(run["losses"]) / run["steps"]


def _complete(results: dict[str, Any], spec: dict[str, Any]) -> bool:
    """Whether the results file holds every run of the spec, and its baselines if it has any."""
    return len(results["runs"]) == len(spec["runs"]) and (not spec.get("baselines") or "baselines" in results)


def _family(run_name: str) -> str:
    """A run's configuration: its name without a trailing -seedN."""
    import re

    return re.sub(r"-seed\d+$", "", run_name)


def plot(name: str, kinds: list[str], results: dict[str, Any], outputs: dict[str, dict[str, list]],
         out: Path) -> list[str]:
    """Learning curve (validation main metric per step, training loss per micro-batch) and ROC."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []
    trained = [r for r in results["runs"] if r["kind"] != "zero-shot"]
    if "learning_curve" in kinds and trained:
        # one colour per configuration (a run's name without its -seedN), so seeds of one setting read as one
        families = list(dict.fromkeys(_family(r["name"]) for r in trained))
        colours = plt.get_cmap("tab10" if len(families) <= 10 else "tab20")
        fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
        labelled: set[str] = set()
        for r in trained:
            key = next(k for k in r["history"][0] if k.startswith("valid_"))
            family = _family(r["name"])
            i = families.index(family)
            left.plot([h["step"] for h in r["history"]], [h[key] for h in r["history"]], marker="o",
                      color=colours(i % colours.N), label=None if family in labelled else family)
            labelled.add(family)
            right.plot(r["losses"], alpha=0.5, color=colours(i % colours.N))
        left.set(xlabel="optimiser step", ylabel=key.replace("_", " "), title=f"{name}: validation")
        right.set(xlabel="micro-batch", ylabel="training loss", title="training loss")
        fig.legend(loc="center left", bbox_to_anchor=(0.8, 0.5), fontsize="small", frameon=False)
        fig.tight_layout(rect=(0, 0, 0.8, 1))
        written.append(_save(fig, out / f"{name}-learning-curve.png", laid_out=True))
    if "privacy_utility" in kinds and results.get("privacy_utility"):
        table = results["privacy_utility"]
        labels = [f"{r['config']}\n({r['seeds']} seed{'s' if r['seeds'] > 1 else ''})" for r in table]
        # the line joins one recipe per ε (the YAML's first); a second recipe at some ε stands apart, unjoined
        first: dict[Any, int] = {}
        for i, r in enumerate(table):
            first.setdefault(r["epsilon"], i)
        joined = sorted(first.values())
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        for group, style in ((joined, {"marker": "o", "label": "mean ± sd over seeds"}),
                             ([i for i in range(len(table)) if i not in joined],
                              {"marker": "s", "linestyle": "none", "label": "another recipe at that ε"})):
            if group:
                ax.errorbar(group, [table[i]["mean"] for i in group], yerr=[table[i]["sd"] for i in group],
                            capsize=4, **style)
        for i, r in enumerate(table):
            seeds = [x["test"][r["metric"]] for x in trained if _family(x["name"]) == r["config"]]
            ax.scatter([i] * len(seeds), seeds, color="grey", s=12, zorder=3)
        ax.set_xticks(range(len(table)), labels, rotation=20)
        ax.set(xlabel="configuration (target ε, example-level, δ as recorded)", ylabel=f"test {table[0]['metric']}",
               title=f"{name}: privacy-utility (n = {table[0]['test_n']})")
        ax.legend()
        written.append(_save(fig, out / f"{name}-privacy-utility.png"))
    with_labels = {k: v for k, v in outputs.items() if "labels" in v and len(set(v["labels"])) > 1}
    if "roc" in kinds and with_labels:
        from sklearn.metrics import roc_auc_score, roc_curve

        fig, ax = plt.subplots(figsize=(5, 5))
        for run_name, o in with_labels.items():
            fpr, tpr, _ = roc_curve(o["labels"], o["scores"])
            ax.plot(fpr, tpr, label=f"{run_name} (AUC {roc_auc_score(o['labels'], o['scores']):.3f})")
        ax.plot([0, 1], [0, 1], "k:", linewidth=1)
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"{name}: test ROC")
        ax.legend(loc="lower right")
        written.append(_save(fig, out / f"{name}-roc.png"))
    return written


def _save(fig, path: Path, laid_out: bool = False) -> str:
    """Write a figure atomically (temp sibling, then rename); laid_out: keep the caller's layout (a legend
    beside the axes) instead of a plain tight_layout."""
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.name}.tmp.png")
    if not laid_out:
        fig.tight_layout()
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path.name


def experiment_parser(doc: str, resume_help: str) -> argparse.ArgumentParser:
    """The arguments every YAML-driven experiment script takes (this one and transfer.py)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("name", help="experiment: the stem of a YAML file in experiments/")
    parser.add_argument("--tiny", action="store_true", help="smoke-test size (the YAML's tiny section)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override a training key (repeatable)")
    parser.add_argument("--out", type=Path, help="results folder")
    parser.add_argument("--adapters", type=Path, help="folder for the runs' adapters")
    parser.add_argument("--resume", action="store_true", help=resume_help)
    return parser


def exit_on_user_error(fn, *args) -> None:
    """Run fn; a UserError is one line on stderr and exit code 2, like the CLI."""
    from recpeft.errors import UserError

    try:
        fn(*args)
    except UserError as exc:
        print(f"experiments: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def main(argv: list[str] | None = None) -> None:
    parser = experiment_parser(__doc__, "keep the runs already in the results JSON (same settings), run the rest")
    parser.add_argument("--data", help="data path instead of the YAML's (e.g. /work/shared/data/ml-100k)")
    parser.add_argument("--only", action="append", default=[], metavar="RUN",
                        help="run only this run of the YAML (repeatable; with --resume the finished ones are kept); "
                             "the JSON says complete: false until every run is in")
    args = parser.parse_args(argv)
    exit_on_user_error(run_experiment, args.name, args.tiny, args.sets, args.out, args.adapters, args.data,
                       args.resume, args.only)


if __name__ == "__main__":
    main()
