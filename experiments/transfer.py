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
target with the preference task's main metric (AUC) on the same seeded test pairs, worded for the
target's domain.
Writes <out>/<NAME>.json after every cell (so a stopped run keeps what it finished) and, after each seed,
the matrix (mean over the seeds done, each seed's AUC, their sd) with its gain over the base, and prints it.
--resume keeps the cells when only the list of seeds changed. `--set key=value` changes a `train` setting
of every source; the training seeds are the YAML's `seeds` (edit them there), and `--set seed=N` changes
only the seed of the test pairs, which every row shares.
"""

from __future__ import annotations

import json
import math
import os
import platform
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


def _path(data: str | None) -> str | None:
    return str((ROOT / data).resolve()) if data else None


def seeds_of(spec: dict[str, Any]) -> list[int]:
    """The training seeds: the YAML's `seeds`, else the one in `train` (42 when it names none)."""
    return [int(x) for x in spec.get("seeds") or [spec.get("train", {}).get("seed", 42)]]


def train_sources(spec: dict[str, Any], adapters: Path, resume: bool, seed: int) -> dict[str, str]:
    """Train every source adapter at `seed` (kept with --resume when its folder is complete); {name: folder}.

    Folders are <adapters>/<source>-seed<seed>, the combinations <a>+<b>-seed<seed>."""
    from recpeft.config import build_config
    from recpeft.training.trainer import train

    folders = {}
    for src in spec["sources"]:
        folder = adapters / f"{src['name']}-seed{seed}"
        if not (resume and (folder / "recpeft.json").is_file()):
            settings = {**spec.get("train", {}), **src.get("train", {}), "seed": seed}
            cfg = build_config(**settings, data=_path(src.get("data")), format=src.get("format"),
                               output_dir=str(folder))
            train(cfg)
        folders[src["name"]] = str(folder)
    for a, b in spec.get("combine", []):
        folder = adapters / f"{a}+{b}-seed{seed}"
        if not (resume and (folder / "recpeft.json").is_file()):
            from recpeft.serving.merge import combine_adapters

            combine_adapters([folders[a], folders[b]], [0.5, 0.5], folder)
        folders[f"{a}+{b}"] = str(folder)
    return folders


def _same_experiment(old: dict[str, Any], spec: dict[str, Any]) -> bool:
    """Whether saved cells still hold: every setting but the list of seeds is unchanged (the `tiny` section
    does not count: what it changes is already in the other keys of a tiny run's spec)."""
    strip = lambda d: {k: v for k, v in d.items() if k not in ("seeds", "tiny")}  # noqa: E731
    return bool(old) and strip(old.get("spec", {})) == strip(spec)


def run(name: str, tiny: bool = False, sets: list[str] | None = None, out: Path | None = None,
        adapters: Path | None = None, resume: bool = False) -> dict[str, Any]:
    """Seed by seed (so a stopped run leaves whole matrices): train the sources and combinations, then score
    the base (once: it has no seed) and every adapter on every target."""
    spec = load_spec(name, tiny, sets or [])
    out = out or ROOT / "experiments" / "results" / ("tiny" if tiny else "")
    adapters = adapters or ROOT / "adapters" / "experiments" / name
    path = out / f"{name}.json"
    old = json.loads(path.read_text()) if resume and path.is_file() else {}
    if resume and old and not _same_experiment(old, spec):
        print("[transfer] the experiment's settings changed since the results were written: running everything",
              flush=True)
        resume, old = False, {}
    results: dict[str, Any] = {
        "experiment": name, "description": spec.get("description", ""), "tiny": tiny,
        "command": " ".join(["python", "experiments/transfer.py", name] + (["--tiny"] if tiny else [])
                            + [f"--set {s}" for s in sets or []]),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count()},
        "spec": spec, "cells": old.get("cells", {}),
    }
    targets = [t["name"] for t in spec["targets"]]
    rows = ["base"] + [s["name"] for s in spec["sources"]] + [f"{a}+{b}" for a, b in spec.get("combine", [])]
    score = _scorer(spec, tiny)
    for target in spec["targets"]:
        _cell(results, path, f"base -> {target['name']}", lambda t=target: score(None, t))
    for seed in seeds_of(spec):
        folders = train_sources(spec, adapters, resume, seed)
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
        return evaluate(folder, task="preference", split="test", limit=target.get("limit", 0),
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
    results["cells"][key] = {"auc": report.metrics["auc"], "n": report.metrics["n"],
                             "seconds": round(time.time() - start, 1)}
    print(f"[transfer] {key}: AUC {report.metrics['auc']:.4f} on {report.metrics['n']} pairs", flush=True)
    write_json_atomic(path, results)


def matrix(results: dict[str, Any], rows: list[str], cols: list[str]) -> dict[str, Any]:
    """AUC per (trained on, evaluated on): the mean over the seeds whose whole row is scored, each seed's value,
    the standard deviation over seeds, the gain over the base and a 95% half-width for one AUC."""
    cells = results["cells"]
    per_seed: dict[str, dict[str, list[float]]] = {}
    seeds: dict[str, list[int]] = {}
    for r in rows:
        keys = ["base"] if r == "base" else [f"{r}@{s}" for s in seeds_of(results["spec"])]
        done = [k for k in keys if all(f"{k} -> {c}" in cells for c in cols)]
        if done:
            per_seed[r] = {c: [cells[f"{k} -> {c}"]["auc"] for k in done] for c in cols}
            seeds[r] = [int(k.split("@")[1]) for k in done if "@" in k]
    rows = [r for r in rows if r in per_seed]
    table = {r: {c: statistics.fmean(per_seed[r][c]) for c in cols} for r in rows}
    sd = {r: {c: statistics.stdev(v) if len(v) > 1 else 0.0 for c, v in per_seed[r].items()} for r in rows}
    gain = {r: {c: table[r][c] - table["base"][c] for c in cols} for r in rows if r != "base"}
    n = {c: cells[f"base -> {c}"]["n"] for c in cols}
    # Hanley-McNeil's worst case for an AUC near 0.5 with balanced classes: sqrt(1 / (3 n)) x 1.96
    half = {c: 1.96 * math.sqrt(1 / (3 * n[c])) for c in cols}
    return {"rows": rows, "cols": cols, "auc": table, "auc_per_seed": per_seed, "seeds": seeds, "sd": sd,
            "gain_over_base": gain, "n": n, "ci95_half_width": half}


def format_matrix(m: dict[str, Any]) -> str:
    width = max(len(r) for r in m["rows"]) + 10
    lines = ["AUC, mean over seeds (rows: trained on; columns: evaluated on)",
             " " * width + "".join(f"{c:>16}" for c in m["cols"])]
    for r in m["rows"]:
        label = f"{r} ({len(m['seeds'][r])} seeds)" if m["seeds"].get(r) else r
        lines.append(f"{label:<{width}}" + "".join(
            f"{m['auc'][r][c]:>9.4f} ±{m['sd'][r][c]:.3f}" if m["seeds"].get(r) else f"{m['auc'][r][c]:>16.4f}"
            for c in m["cols"]))
    lines.append(f"{'pairs':<{width}}" + "".join(f"{m['n'][c]:>16}" for c in m["cols"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = experiment_parser(__doc__, "keep finished adapters and matrix cells (when every setting of the "
                             "experiment is unchanged)").parse_args(argv)
    exit_on_user_error(run, args.name, args.tiny, args.sets, args.out, args.adapters, args.resume)


if __name__ == "__main__":
    main()
