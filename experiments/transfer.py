"""Cross-domain transfer (issue 17.2): train adapters on some domains, score each on every domain's test
pairs without further training, next to the untrained base and to `merge --combine`d adapters.

    python experiments/transfer.py transfer              # experiments/transfer.yaml
    python experiments/transfer.py transfer --tiny --set model=PATH --out DIR --adapters DIR
    python experiments/transfer.py transfer --resume      # keep finished adapters and matrix cells

The YAML names `sources` (adapters to train: a name, data, format and train settings, as in
experiments/run.py), `combine` (pairs of sources to combine with equal weights) and `targets` (test
sets: domain, data, format, limit); `eval` holds prompt settings shared by every row (history_len,
max_length), so that all rows read the same prompts. Every row (base, each source, each combination) is scored on every
target with the preference task's main metric (AUC) on the same seeded test pairs, worded for the
target's domain.
Writes <out>/<NAME>.json after every cell (so a stopped run keeps what it finished) with the matrix and
its gain over the base, and prints the matrix.
"""

from __future__ import annotations

import json
import math
import os
import platform
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


def train_sources(spec: dict[str, Any], adapters: Path, resume: bool) -> dict[str, str]:
    """Train every source adapter (kept with --resume when its folder is complete); {name: folder}."""
    from recpeft.config import build_config
    from recpeft.training.trainer import train

    folders = {}
    for src in spec["sources"]:
        folder = adapters / src["name"]
        if not (resume and (folder / "recpeft.json").is_file()):
            settings = {**spec.get("train", {}), **src.get("train", {})}
            cfg = build_config(**settings, data=_path(src.get("data")), format=src.get("format"),
                               output_dir=str(folder))
            train(cfg)
        folders[src["name"]] = str(folder)
    for a, b in spec.get("combine", []):
        folder = adapters / f"{a}+{b}"
        if not (resume and (folder / "recpeft.json").is_file()):
            from recpeft.serving.merge import combine_adapters

            combine_adapters([folders[a], folders[b]], [0.5, 0.5], folder)
        folders[f"{a}+{b}"] = str(folder)
    return folders


def run(name: str, tiny: bool = False, sets: list[str] | None = None, out: Path | None = None,
        adapters: Path | None = None, resume: bool = False) -> dict[str, Any]:
    from recpeft.evaluation.evaluate import evaluate

    spec = load_spec(name, tiny, sets or [])
    out = out or ROOT / "experiments" / "results" / ("tiny" if tiny else "")
    adapters = adapters or ROOT / "adapters" / "experiments" / name
    path = out / f"{name}.json"
    old = json.loads(path.read_text()) if resume and path.is_file() else {}
    results: dict[str, Any] = {
        "experiment": name, "description": spec.get("description", ""), "tiny": tiny,
        "command": " ".join(["python", "experiments/transfer.py", name] + (["--tiny"] if tiny else [])
                            + [f"--set {s}" for s in sets or []]),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count()},
        "spec": spec, "cells": old.get("cells", {}) if old.get("spec") == spec else {},
    }
    if resume and old and old.get("spec") != spec:
        print("[transfer] the experiment's settings changed since the results were written: running everything",
              flush=True)
        resume = False
    folders = {"base": None, **train_sources(spec, adapters, resume)}
    model = spec.get("train", {}).get("model")
    for row, folder in folders.items():
        for target in spec["targets"]:
            key = f"{row} -> {target['name']}"
            if key in results["cells"]:
                continue
            start = time.time()
            report = evaluate(folder, task="preference", split="test", limit=target.get("limit", 0),
                              domain=target["domain"], model=model if folder is None else None, write=False,
                              overrides={**spec.get("eval", {}), "data": _path(target.get("data")),
                                         "format": target.get("format"),
                                         "seed": spec.get("train", {}).get("seed", 42)},
                              show_progress=not tiny)
            results["cells"][key] = {"auc": report.metrics["auc"], "n": report.metrics["n"],
                                     "seconds": round(time.time() - start, 1)}
            print(f"[transfer] {key}: AUC {report.metrics['auc']:.4f} on {report.metrics['n']} pairs", flush=True)
            write_json_atomic(path, results)
    results["matrix"] = matrix(results, list(folders), [t["name"] for t in spec["targets"]])
    write_json_atomic(path, results)
    print(format_matrix(results["matrix"]))
    return results


def matrix(results: dict[str, Any], rows: list[str], cols: list[str]) -> dict[str, Any]:
    """AUC per (trained on, evaluated on), the gain over the untrained base, and a 95% half-width."""
    cells = results["cells"]
    table = {r: {c: cells[f"{r} -> {c}"]["auc"] for c in cols} for r in rows}
    gain = {r: {c: table[r][c] - table["base"][c] for c in cols} for r in rows if r != "base"}
    n = {c: cells[f"base -> {c}"]["n"] for c in cols}
    # Hanley-McNeil's worst case for an AUC near 0.5 with balanced classes: sqrt(1 / (3 n)) x 1.96
    half = {c: 1.96 * math.sqrt(1 / (3 * n[c])) for c in cols}
    return {"rows": rows, "cols": cols, "auc": table, "gain_over_base": gain, "n": n, "ci95_half_width": half}


def format_matrix(m: dict[str, Any]) -> str:
    width = max(len(r) for r in m["rows"]) + 2
    lines = ["AUC (rows: trained on; columns: evaluated on)", " " * width + "".join(f"{c:>12}" for c in m["cols"])]
    for r in m["rows"]:
        lines.append(f"{r:<{width}}" + "".join(f"{m['auc'][r][c]:>12.4f}" for c in m["cols"]))
    lines.append(f"{'pairs':<{width}}" + "".join(f"{m['n'][c]:>12}" for c in m["cols"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = experiment_parser(__doc__, "keep finished adapters and matrix cells (when every setting of the "
                             "experiment is unchanged)").parse_args(argv)
    exit_on_user_error(run, args.name, args.tiny, args.sets, args.out, args.adapters, args.resume)


if __name__ == "__main__":
    main()
