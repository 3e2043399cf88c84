"""`recpeft runs`: the training runs under a runs folder, newest first, with their checkpoints.

Why: run folders are named by start time and pid, so which one finished, which one a Ctrl-C left
resumable, and which one died is otherwise a matter of opening JSON files. Everything shown comes from
what training already writes: each checkpoint's state.json (steps, best metric) and the run.json
status (recpeft/training/tracking.py). A run made before run.json existed shows "unknown".
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import typer

from recpeft.config import FIELDS
from recpeft.domains import DOMAINS, get_domain
from recpeft.errors import UserError

RUNS_DIR = FIELDS["runs_dir"].default  # where `recpeft train` puts runs unless told otherwise


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    except (OSError, OverflowError, TypeError, ValueError):
        return False
    return True


def _status(info: dict[str, Any] | None) -> str:
    if info is None:
        return "unknown"
    status = info.get("status", "unknown")
    if status != "running":
        return status
    if info.get("host") != socket.gethostname():
        return "running?"  # on another machine: cannot check its process from here
    return "running" if isinstance(info.get("pid"), int) and _alive(info["pid"]) else "crashed"


def _best(state: dict[str, Any]) -> dict[str, Any] | None:
    """The best validation score so far as the checkpoint records it (history[0] names the metric)."""
    history = state.get("history") or [{}]
    key = next((k for k in history[0] if k not in ("step", "loss")), None)
    if key is None or state.get("best_auc") is None:
        return None
    return {"metric": key.removeprefix("valid_"), "value": state["best_auc"], "step": state.get("best_step")}


def describe(run_dir: Path, domain: str) -> dict[str, Any]:
    """One run folder as a row: status, steps, checkpoints, best metric, logs."""
    from recpeft.training import checkpoint as ckpts
    from recpeft.training.tracking import TB_DIR, read_status

    info = read_status(run_dir)
    checkpoints = ckpts.checkpoints_in(run_dir)
    row: dict[str, Any] = {"domain": domain, "run": run_dir.name, "status": _status(info), "steps": 0,
                           "total_steps": (info or {}).get("total_steps"), "last_checkpoint": None,
                           "checkpoints": [c.name for c in checkpoints], "best": None, "path": str(run_dir),
                           "tensorboard": any((run_dir / TB_DIR).glob("events.out.tfevents.*")),
                           "started": (info or {}).get("started")}
    if info and info.get("error"):
        row["error"] = info["error"]
    if checkpoints:
        last = checkpoints[-1]
        row["last_checkpoint"] = last.name
        try:
            state = ckpts.read_state(last)
        except UserError as exc:
            row["error"] = str(exc)
        else:
            row["steps"] = state.get("step", 0)
            row["best"] = _best(state)
    if info and isinstance(info.get("step"), int) and row["status"] not in ("running", "running?"):
        row["steps"] = max(row["steps"], info["step"])  # a crash after the last checkpoint still counts
    return row


def list_runs(runs_dir: str | Path = RUNS_DIR, domain: str | None = None) -> list[dict[str, Any]]:
    """Every run folder under runs_dir/<domain>/, newest first (run ids begin with the start time)."""
    root = Path(runs_dir)
    if domain is not None:
        get_domain(domain)  # an unknown name is a UserError with a did-you-mean
    if not root.is_dir():
        raise UserError("no runs folder here (train first, or pass --runs-dir)", str(root))
    rows = []
    for dom in ([domain] if domain else DOMAINS):
        folder = root / dom
        if folder.is_dir():
            rows += [describe(run, dom) for run in folder.iterdir() if run.is_dir() and not run.name.startswith(".")]
    return sorted(rows, key=lambda r: (r["run"], r["domain"]), reverse=True)


def _fmt_best(best: dict[str, Any] | None) -> str:
    if not best:
        return "-"
    return f"{best['metric']} {best['value']:.4f} @ {best['step']}"


def format_table(rows: list[dict[str, Any]]) -> str:
    """Plain aligned text: one line per run."""
    head = ("DOMAIN", "RUN", "STATUS", "STEPS", "LAST CHECKPOINT", "BEST", "TENSORBOARD", "PATH")
    lines = [head] + [(r["domain"], r["run"], r["status"],
                       f"{r['steps']}/{r['total_steps']}" if r["total_steps"] else str(r["steps"]),
                       r["last_checkpoint"] or "-", _fmt_best(r["best"]), "yes" if r["tensorboard"] else "no",
                       r["path"]) for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def runs_cmd(
    runs_dir: str = typer.Option(RUNS_DIR, "--runs-dir", help="The folder `recpeft train --runs-dir` wrote to."),
    domain: str | None = typer.Option(None, "--domain", "-d", help=f"Only this domain: {', '.join(DOMAINS)}."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of the table."),
) -> None:
    """List training runs, newest first: status, steps, last checkpoint, best metric, TensorBoard logs."""
    rows = list_runs(runs_dir, domain)
    if as_json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print(f"no runs under {runs_dir}/" + (f"{domain}/" if domain else ""))
    else:
        print(format_table(rows))
