"""Kill-and-resume trials: SIGKILL `recpeft train` at random steps, resume it, compare with an uninterrupted run.

Each trial starts a real `recpeft train` subprocess that SIGKILLs itself after a random optimiser step
(through the test driver: `tests/_hooks.py --kill-at step:K -- train ...`, K uniform over the run), then
resumes it with `--resume latest` (a second
subprocess; a kill before the first checkpoint is rerun from scratch, as a user would) and compares
the final adapter with the uninterrupted run's. A trial is "identical" when
every tensor agrees within 1e-6; a directory is "corrupt" when a visible checkpoint or adapter folder
fails to load completely. The tiny random model and a 12-user slice of the embedded news sample keep
a trial to about a minute of process start-up on a 2-core CPU.

    python experiments/kill_resume.py --trials 10 --seed 0 [--model PATH] [--json results/kill_resume.json]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

def run(work: Path, values: dict, *extra: str, kill_at: str | None = None) -> int:
    args = [a for k, v in values.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))  # keep the caller's too
    env = {**os.environ, "PYTHONPATH": path, "RECPEFT_HOME": str(work / "home")}
    from _hooks import command  # the recpeft CLI with the test hooks (tests/_hooks.py)

    proc = subprocess.run(command("train", *args, *extra, kill_at=kill_at), cwd=work, env=env,
                          capture_output=True, text=True)
    if proc.returncode not in (0, -signal.SIGKILL):
        sys.exit(f"unexpected exit {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc.returncode


def corrupt_dirs(work: Path) -> list[str]:
    """Visible checkpoint and adapter folders that do not load completely."""
    from recpeft.adapter_meta import read_meta
    from recpeft.artifacts import verify_adapter_dir
    from recpeft.errors import UserError
    from recpeft.training import checkpoint as ckpts

    bad = []
    for run_dir in (work / "runs" / "news").iterdir() if (work / "runs" / "news").is_dir() else []:
        for c in ckpts.checkpoints_in(run_dir):
            try:
                ckpts.load(c)
            except UserError:
                bad.append(str(c))
    if (work / "out").exists():
        try:
            verify_adapter_dir(work / "out")
            read_meta(work / "out")
        except UserError:
            bad.append(str(work / "out"))
    return bad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", help="base model (default: a freshly built tiny random llama)")
    parser.add_argument("--json", help="write the results here (atomically)")
    opts = parser.parse_args()

    import torch
    from conftest import build_small_news, build_tiny_model
    from safetensors.torch import load_file
    from test_resume import FLAGS  # the settings the CI test uses: 40 steps crossing an epoch, dropout on

    from recpeft.artifacts import write_json_atomic

    root = Path(tempfile.mkdtemp(prefix="kill-resume-"))
    if opts.model is None:
        opts.model = str(build_tiny_model(root / "tiny"))
    data = build_small_news(root / "data")
    values = {**FLAGS, "model": opts.model, "data": str(data), "runs_dir": "runs", "output_dir": "out"}
    (root / "ref").mkdir()
    start = time.time()
    assert run(root / "ref", values) == 0
    ref = load_file(str(root / "ref" / "out" / "adapter_model.safetensors"))
    rng = random.Random(opts.seed)
    trials = []
    for t in range(opts.trials):
        work = root / f"trial{t}"
        work.mkdir()
        k = rng.randint(1, values["max_steps"])
        killed = run(work, values, kill_at=f"step:{k}") == -signal.SIGKILL
        bad = corrupt_dirs(work)
        # killed before the first checkpoint (K < checkpoint_every): nothing to resume, the user starts again
        has_checkpoint = any((work / "runs" / "news").glob("*/checkpoint-*"))
        assert run(work, values, *(["--resume", "latest"] if has_checkpoint else [])) == 0
        got = load_file(str(work / "out" / "adapter_model.safetensors"))
        diff = max([(got[n] - ref[n]).abs().max().item() for n in ref if ref[n].numel()] + [0.0]) \
            if set(got) == set(ref) else float("inf")
        trials.append({"kill_step": k, "killed": killed, "resumed": has_checkpoint, "max_abs_diff": diff,
                       "identical": diff <= 1e-6,
                       "corrupt_dirs": bad + corrupt_dirs(work)})
        print(f"trial {t}: killed at step {k}, {'resumed' if has_checkpoint else 'rerun'}: max |diff| {diff:.2e}, "
              f"corrupt dirs {len(trials[-1]['corrupt_dirs'])}", flush=True)
    summary = {"trials": len(trials), "identical": sum(t["identical"] for t in trials),
               "corrupt_dirs": sum(len(t["corrupt_dirs"]) for t in trials), "seconds": round(time.time() - start),
               "torch": torch.__version__, "details": trials}
    print(f"{summary['identical']}/{summary['trials']} identical final adapters, {summary['corrupt_dirs']} corrupt "
          f"directories ({summary['seconds']} s)")
    if opts.json:
        write_json_atomic(Path(opts.json), summary)
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
