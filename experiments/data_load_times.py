"""Loading time of each real data set, cold (parse + write the Arrow cache) and cached, in fresh processes.

    python experiments/data_load_times.py [PATH ...]     # default: the folders of ../shared/data

Each load runs in its own process with `datasets` imported before the clock starts (its import,
~1-3 s here, is paid once per process by either path and is printed separately). The cache goes to
a fresh temporary folder, so the first load is always cold. Prints one JSON line per data set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, sys, time
t = time.perf_counter(); import datasets; imp = time.perf_counter() - t
from recpeft.data import load_data
t = time.perf_counter(); data = load_data("news", sys.argv[1]); dt = time.perf_counter() - t
n = len(data.examples) if hasattr(data, "examples") else len(data.interactions)
print(json.dumps({"seconds": round(dt, 3), "import_datasets_s": round(imp, 3), "records": n}))
"""


def measure(path: str, repeats: int = 3) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "RECPEFT_DATA_CACHE": cache, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        runs = [json.loads(subprocess.run([sys.executable, "-c", CHILD, path], env=env, capture_output=True,
                                          text=True, check=True).stdout) for _ in range(1 + repeats)]
    cached = sorted(r["seconds"] for r in runs[1:])[len(runs[1:]) // 2]
    return {"data": path, "records": runs[0]["records"], "cold_s": runs[0]["seconds"], "cached_s": cached,
            "speedup": round(runs[0]["seconds"] / cached, 1), "import_datasets_s": runs[0]["import_datasets_s"]}


if __name__ == "__main__":
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    shared = shared if shared.is_dir() else Path("/work/shared/data")
    paths = sys.argv[1:] or [str(shared / n) for n in ("ml-100k", "amazon-scientific", "mind-sample")]
    for p in paths:
        print(json.dumps(measure(p)), flush=True)
