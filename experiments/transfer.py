"""Cross-domain transfer (issue 17.2): train adapters on some domains, score each on every domain's test
pairs without further training, next to the untrained base and to `merge --combine`d adapters.

    python experiments/transfer.py transfer              # experiments/transfer.yaml
    python experiments/transfer.py transfer --tiny --set model=PATH --out DIR --adapters DIR
    python experiments/transfer.py transfer --resume      # keep finished adapters and matrix cells

The YAML names `sources` (adapters to train: a name, data, format and train settings, as in
experiments/run.py), `seeds` (each source is trained once per seed), `combine` (pairs of sources to
combine with equal weights, per seed) and `targets` (test
sets: domain, data, format, limit); `eval` holds prompt settings shared by every row (history_len,
max_length), so that all rows read the same prompts. Every row (base, each source, each combination) is scored on every
target with its task's main metric on the same seeded test examples, worded for the target's domain: a
target is preference pairs (AUC) unless it says `task: ranking` (1 + 19 candidates, NDCG@10: for data with
no dislikes, such as Amazon-Scientific; a preference adapter ranks with the very prompt it was trained on).
Writes <out>/<NAME>.json after every cell (so a stopped run keeps what it finished) and, after each seed,
the matrix (mean over the seeds done, each seed's value, their sd) with its gain over the base, and prints it.
--resume keeps every cell (and adapter) whose row and target are unchanged: adding a target or a seed runs only
the new cells; a change to `train` or `eval` runs everything. `--set key=value` changes a `train` setting
of every source; the training seeds are the YAML's `seeds` (edit them there), and `--set seed=N` changes
only the seed of the test pairs, which every row shares.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

from run import exit_on_user_error, experiment_parser, load_spec  # noqa: E402  (experiments/run.py)

from recpeft.artifacts import write_json_atomic  # noqa: E402
from recpeft.runtime import describe_machine  # noqa: E402


def _path(data: str | None) -> str | None:
    return str((ROOT / data).resolve()) if data else None


def seeds_of(spec: dict[str, Any]) -> list[int]:
    """The training seeds: the YAML's `seeds`, else the one in `train` (42 when it names none)."""
    return [int(x) for x in spec.get("seeds") or [spec.get("train", {}).get("seed", 42)]]


def train_sources(spec: dict[str, Any], adapters: Path, keep: set[str], seed: int) -> dict[str, str]:
    """Train every source adapter at `seed`, but keep the folders of the sources (and combinations) named in
    `keep` when they are complete; {name: folder}.

    Folders are <adapters>/<source>-seed<seed>, the combinations <a>+<b>-seed<seed>."""
    from recpeft.config import build_config
    from recpeft.training.trainer import train

    folders = {}
    for src in spec["sources"]:
        folder = adapters / f"{src['name']}-seed{seed}"
        if not (src["name"] in keep and (folder / "recpeft.json").is_file()):
            settings = {**spec.get("train", {}), **src.get("train", {}), "seed": seed}
            cfg = build_config(**settings, data=_path(src.get("data")), format=src.get("format"),
                               output_dir=str(folder))
            train(cfg)
        folders[src["name"]] = str(folder)
    for a, b in spec.get("combine", []):
        folder = adapters / f"{a}+{b}-seed{seed}"
        if not (f"{a}+{b}" in keep and (folder / "recpeft.json").is_file()):
            from recpeft.serving.merge import combine_adapters

            combine_adapters([folders[a], folders[b]], [0.5, 0.5], folder)
        folders[f"{a}+{b}"] = str(folder)
    return folders


SHARED = ("train", "eval")  # settings every cell depends on


def unchanged(old: dict[str, Any], spec: dict[str, Any]) -> tuple[set[str], set[str]]:
    """What an earlier run of the experiment still holds: (rows, targets) whose settings are the same, so their
    cells and adapters can be kept. Rows: "base", sources, "a+b" combinations (kept when both sources are).
    Nothing when a shared setting changed. The seeds list and the `tiny` section do not count (a tiny run's
    spec already holds what its `tiny` section changes)."""
    before = old.get("spec") or {}
    if not before or any(before.get(k) != spec.get(k) for k in SHARED):
        return set(), set()
    sources_then = {x["name"]: x for x in before.get("sources", [])}
    rows = {"base"} | {x["name"] for x in spec["sources"] if sources_then.get(x["name"]) == x}
    rows |= {f"{a}+{b}" for a, b in spec.get("combine", []) if {a, b} <= rows and [a, b] in before.get("combine", [])}
    targets_then = {x["name"]: x for x in before.get("targets", [])}
    return rows, {x["name"] for x in spec["targets"] if targets_then.get(x["name"]) == x}


def kept_cells(old: dict[str, Any], rows: set[str], targets: set[str]) -> dict[str, Any]:
    """The earlier cells of unchanged rows and targets ("row@seed -> target" or "base -> target")."""
    out = {}
    for key, cell in (old.get("cells") or {}).items():
        row, _, target = key.partition(" -> ")
        if row.split("@")[0] in rows and target in targets:
            out[key] = cell
    return out


def run(name: str, tiny: bool = False, sets: list[str] | None = None, out: Path | None = None,
        adapters: Path | None = None, resume: bool = False) -> dict[str, Any]:
    """Seed by seed (so a stopped run leaves whole matrices): train the sources and combinations, then score
    the base (once: it has no seed) and every adapter on every target."""
    spec = load_spec(name, tiny, sets or [])
    out = out or ROOT / "experiments" / "results" / ("tiny" if tiny else "")
    adapters = adapters or ROOT / "adapters" / "experiments" / name
    path = out / f"{name}.json"
    old = json.loads(path.read_text()) if resume and path.is_file() else {}
    keep_rows, keep_targets = unchanged(old, spec)
    if old and not keep_rows:
        print("[transfer] the experiment's shared settings changed since the results were written: running "
              "everything", flush=True)
    results: dict[str, Any] = {
        "experiment": name, "description": spec.get("description", ""), "tiny": tiny,
        "command": " ".join(["python", "experiments/transfer.py", name] + (["--tiny"] if tiny else [])
                            + [f"--set {s}" for s in sets or []]),
        "machine": describe_machine(),
        "spec": spec, "cells": kept_cells(old, keep_rows, keep_targets),
    }
    targets = [t["name"] for t in spec["targets"]]
    rows = ["base"] + [s["name"] for s in spec["sources"]] + [f"{a}+{b}" for a, b in spec.get("combine", [])]
    score = _scorer(spec, tiny)
    for target in spec["targets"]:
        _cell(results, path, f"base -> {target['name']}", lambda t=target: score(None, t))
    for seed in seeds_of(spec):
        folders = train_sources(spec, adapters, keep_rows, seed)
        for row, folder in folders.items():
            for target in spec["targets"]:
                _cell(results, path, f"{row}@{seed} -> {target['name']}", lambda f=folder, t=target: score(f, t))
        results["matrix"] = matrix(results, rows, targets)
        write_json_atomic(path, results)
        print(format_matrix(results["matrix"]), flush=True)
    return results


def _scorer(spec: dict[str, Any], tiny: bool):
    """score(adapter folder or None for the base, target) -> the evaluation report on the target's test pairs.

    The pairs' seed is the YAML's train seed for every row and every training seed: all cells of a column
    score the same pairs."""
    from recpeft.evaluation.evaluate import evaluate

    model = spec.get("train", {}).get("model")
    pairs_seed = spec.get("train", {}).get("seed", 42)

    def score(folder: str | None, target: dict[str, Any]):
        return evaluate(folder, task=target.get("task", "preference"), split="test", limit=target.get("limit", 0),
                        domain=target["domain"], model=model if folder is None else None, write=False,
                        overrides={**spec.get("eval", {}), "data": _path(target.get("data")),
                                   "format": target.get("format"), "seed": pairs_seed},
                        show_progress=not tiny)

    return score


def _cell(results: dict[str, Any], path: Path, key: str, score) -> None:
    """Score one (row, target) cell unless it is already there, and save the results at once."""
    if key in results["cells"]:
        return
    start = time.time()
    report = score()
    metric = report.payload["main_metric"]
    results["cells"][key] = {"metric": metric, "value": report.metrics[metric], "n": report.metrics["n"],
                             "seconds": round(time.time() - start, 1)}
    print(f"[transfer] {key}: {metric} {report.metrics[metric]:.4f} on {report.metrics['n']} examples", flush=True)
    write_json_atomic(path, results)


def matrix(results: dict[str, Any], rows: list[str], cols: list[str]) -> dict[str, Any]:
    """The target's main metric (AUC for preference pairs, NDCG@10 for ranking lists) per (trained on, evaluated
    on): the mean over the seeds whose whole row is scored, each seed's value, the standard deviation over
    seeds, the gain over the base and, for AUC columns, a 95% half-width for one AUC."""
    cells = {k: c.get("value", c.get("auc")) for k, c in results["cells"].items()}  # "auc": cells saved before
    per_seed: dict[str, dict[str, list[float]]] = {}
    seeds: dict[str, list[int]] = {}
    for r in rows:
        keys = ["base"] if r == "base" else [f"{r}@{s}" for s in seeds_of(results["spec"])]
        done = [k for k in keys if all(f"{k} -> {c}" in cells for c in cols)]
        if done:
            per_seed[r] = {c: [cells[f"{k} -> {c}"] for k in done] for c in cols}
            seeds[r] = [int(k.split("@")[1]) for k in done if "@" in k]
    rows = [r for r in rows if r in per_seed]
    table = {r: {c: statistics.fmean(per_seed[r][c]) for c in cols} for r in rows}
    sd = {r: {c: statistics.stdev(v) if len(v) > 1 else 0.0 for c, v in per_seed[r].items()} for r in rows}
    gain = {r: {c: table[r][c] - table["base"][c] for c in cols} for r in rows if r != "base"}
    n = {c: results["cells"][f"base -> {c}"]["n"] for c in cols}
    metric = {c: results["cells"][f"base -> {c}"].get("metric", "auc") for c in cols}
    # Hanley-McNeil's worst case for an AUC near 0.5 with balanced classes: sqrt(1 / (3 n)) x 1.96
    half = {c: 1.96 * math.sqrt(1 / (3 * n[c])) if metric[c] == "auc" else None for c in cols}
    return {"rows": rows, "cols": cols, "metric": metric, "value": table, "per_seed": per_seed, "seeds": seeds,
            "sd": sd, "gain_over_base": gain, "n": n, "ci95_half_width": half}


def format_matrix(m: dict[str, Any]) -> str:
    width = max(len(r) for r in m["rows"]) + 10
    lines = ["mean over seeds (rows: trained on; columns: evaluated on, and the metric)",
             " " * width + "".join(f"{c:>16}" for c in m["cols"]),
             " " * width + "".join(f"{m['metric'][c]:>16}" for c in m["cols"])]
    for r in m["rows"]:
        k = len(m["seeds"].get(r, []))
        label = f"{r} ({k} seed{'s' if k > 1 else ''})" if k else r
        lines.append(f"{label:<{width}}" + "".join(
            f"{m['value'][r][c]:>9.4f} ±{m['sd'][r][c]:.3f}" if k > 1 else f"{m['value'][r][c]:>16.4f}"
            for c in m["cols"]))
    lines.append(f"{'pairs':<{width}}" + "".join(f"{m['n'][c]:>16}" for c in m["cols"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = experiment_parser(__doc__, "keep finished adapters and matrix cells (when every setting of the "
                             "experiment is unchanged)").parse_args(argv)
    exit_on_user_error(run, args.name, args.tiny, args.sets, args.out, args.adapters, args.resume)


if __name__ == "__main__":
    main()
