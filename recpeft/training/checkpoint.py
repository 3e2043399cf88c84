"""Training checkpoints and exact resume, with no pickle anywhere.

`<runs_dir>/<domain>/<run-id>/checkpoint-<step>/` holds
  weights.safetensors    the trainable adapter weights as they are at that step
  best.safetensors       the best adapter so far (what the run saves at the end)
  optimizer.safetensors  optimiser tensors keyed "<param index>/<name>" (AdamW moments and step counts)
  rng.safetensors        per process "<rank>/torch", "<rank>/numpy" (+ "<rank>/cuda/<i>") generator states
  <name>.safetensors     a method's own running state, named by its Method.checkpoint_name
                         (adalora.safetensors: AdaLoRA's rank allocator importance scores)
  state.json             the rest: format, config, data position (epoch, micro-batches done in it),
                         step, best AUC/step, history, losses, optimiser param groups, scheduler
                         state, python RNG, numpy RNG scalars, the method state's JSON part under
                         its name (AdaLoRA: rank pattern), fingerprints, DP accountant history
Each folder is built as a temporary sibling and renamed into place (artifacts.write_dir_atomic), and
old ones are renamed away before deletion, so a kill at any moment leaves only whole checkpoints.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from recpeft.artifacts import remove_dir_atomic, write_dir_atomic
from recpeft.config import FIELDS, TrainConfig
from recpeft.errors import UserError

FORMAT_VERSION = 1
STATE_FILE = "state.json"
TENSOR_FILES = ("weights", "best", "optimizer", "rng")
# Keys that may differ between a run and its resumption: where things go and how often, not what is computed.
RUN_KEYS = frozenset({"resume", "checkpoint_every", "keep_checkpoints", "runs_dir", "threads", "output_dir",
                      "log_with"})


@dataclass
class Checkpoint:
    """A checkpoint read back from disk (all tensors on CPU)."""

    path: Path
    state: dict[str, Any]
    tensors: dict[str, dict[str, torch.Tensor]]  # file stem -> {key: tensor}

    @property
    def run_dir(self) -> Path:
        return self.path.parent


def new_run_dir(cfg: TrainConfig) -> Path:
    """runs_dir/<domain>/<run-id>; the id is the start time plus the process id (unique, sortable)."""
    return Path(cfg.runs_dir) / cfg.domain / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"


def _step_of(path: Path) -> int | None:
    name = path.name
    if not name.startswith("checkpoint-") or not path.is_dir():
        return None
    tail = name[len("checkpoint-"):]
    return int(tail) if tail.isdigit() else None


def checkpoints_in(run_dir: Path) -> list[Path]:
    """The run's checkpoint folders, oldest step first (hidden temp folders are not checkpoints)."""
    found = ([(s, p) for p in Path(run_dir).iterdir() if (s := _step_of(p)) is not None]
             if Path(run_dir).is_dir() else [])
    return [p for _, p in sorted(found)]


# ----------------------------------------------------------------------------------------- reading


def _read_state(path: Path) -> dict[str, Any]:
    state_path = path / STATE_FILE
    if not state_path.is_file():
        raise UserError(f"not a complete checkpoint folder ({STATE_FILE} missing)", str(path))
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError("corrupt checkpoint file (not UTF-8 JSON)", str(state_path)) from None
    except json.JSONDecodeError as exc:
        raise UserError(f"corrupt checkpoint file: {exc.msg}", f"{state_path}:{exc.lineno}") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION or "config" not in state:
        raise UserError(f"not a recpeft checkpoint of format {FORMAT_VERSION}", str(state_path))
    return state


def read_state(path: Path) -> dict[str, Any]:
    """A checkpoint's state.json (UserError if missing or damaged), without its tensors."""
    return _read_state(Path(path))


# A setting missing from an older checkpoint means what that code did, which for these is not today's default:
# fusion_context arrived with default "history", and the runs before it had none.
ABSENT_MEANS = {"fusion_context": "none"}


def config_differences(saved: dict[str, Any], cfg: TrainConfig) -> list[str]:
    """Settings (other than RUN_KEYS) whose value differs between a checkpoint and cfg."""
    diffs = []
    for key, value in cfg.to_dict().items():
        if key in RUN_KEYS:
            continue
        old = saved.get(key, ABSENT_MEANS.get(key, FIELDS[key].default))
        if old != value:
            diffs.append(f"{key} {old!r} there, {value!r} now")
    return diffs


def _check_config(path: Path, state: dict[str, Any], cfg: TrainConfig) -> None:
    diffs = config_differences(state["config"], cfg)
    if diffs:
        raise UserError(f"checkpoint was made with other settings ({'; '.join(diffs[:4])}); resume with the "
                        "run's own flags (only " + ", ".join(sorted(RUN_KEYS - {'resume'})) + " may change)",
                        str(path))


def _checkpoints_newest_first(cfg: TrainConfig) -> tuple[Path, list[Path]]:
    root = Path(cfg.runs_dir) / cfg.domain
    found = [c for run in (root.iterdir() if root.is_dir() else []) if run.is_dir() for c in checkpoints_in(run)]
    found.sort(key=lambda c: ((c / STATE_FILE).stat().st_mtime if (c / STATE_FILE).exists() else 0,
                              _step_of(c)), reverse=True)
    return root, found


def latest_checkpoint(cfg: TrainConfig) -> Path | None:
    """The newest checkpoint under runs_dir/<domain> made with cfg's settings, or None."""
    return _first_matching(_checkpoints_newest_first(cfg)[1], cfg)


def _first_matching(found: list[Path], cfg: TrainConfig) -> Path | None:
    for candidate in found:
        try:
            if not config_differences(_read_state(candidate)["config"], cfg):
                return candidate
        except UserError as exc:  # a damaged checkpoint does not hide an older good one
            print(f"[recpeft] skipping {exc}", flush=True)
    return None


def resolve_resume(cfg: TrainConfig) -> Path | None:
    """The checkpoint folder that cfg.resume names, checked against cfg; None when not resuming.

    "latest" = the newest checkpoint under runs_dir/<domain> whose settings match cfg; a path may be a
    checkpoint folder or a run folder (its newest checkpoint).
    """
    if cfg.resume is None:
        return None
    if cfg.resume == "latest":
        root, found = _checkpoints_newest_first(cfg)
        if not found:
            raise UserError("no checkpoint to resume (train once without --resume first)", str(root))
        match = _first_matching(found, cfg)
        if match is not None:
            return match
        _check_config(found[0], _read_state(found[0]), cfg)  # raises: say what differs from the newest
    path = Path(cfg.resume).expanduser()
    if not path.exists():
        raise UserError("checkpoint not found (pass --resume latest or a checkpoint folder)", str(path))
    if path.is_dir() and not (path / STATE_FILE).exists() and checkpoints_in(path):
        path = checkpoints_in(path)[-1]  # a run folder: its newest checkpoint
    if not path.is_dir():
        raise UserError("not a checkpoint folder", str(path))
    _check_config(path, _read_state(path), cfg)
    return path


def method_state_name(state: dict[str, Any]) -> str | None:
    """The name of the method state a checkpoint holds, if any."""
    if "method_state" in state:
        return state["method_state"]
    return "adalora" if state.get("adalora") is not None else None  # written before "method_state" existed


def load(path: Path) -> Checkpoint:
    """Read a checkpoint folder; any missing or corrupt file is a UserError naming it."""
    path = Path(path)
    state = _read_state(path)
    tensors = {}
    own = method_state_name(state)
    stems = TENSOR_FILES + ((own,) if own else ())
    for stem in stems:
        file = path / f"{stem}.safetensors"
        if not file.is_file():
            raise UserError(f"incomplete checkpoint: {file.name} missing", str(path))
        try:
            tensors[stem] = load_file(str(file))
        except (SafetensorError, OSError) as exc:
            raise UserError(f"corrupt checkpoint file: {exc}", str(file)) from None
    return Checkpoint(path, state, tensors)


# ----------------------------------------------------------------------------------------- RNG


def capture_rng() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """This process's generator states: tensors (torch, numpy, CUDA) and JSON (python, numpy scalars)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors = {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(keys.astype(np.int64))}
    if torch.cuda.is_available():
        tensors.update({f"cuda/{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    version, internal, gauss_next = random.getstate()
    return tensors, {"python": [version, list(internal), gauss_next],
                     "numpy": {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(gauss)}}


def restore_rng(ckpt: Checkpoint, rank: int) -> None:
    """Put this process's generators back exactly as they were when the checkpoint was taken."""
    t = {k.split("/", 1)[1]: v for k, v in ckpt.tensors["rng"].items() if k.split("/", 1)[0] == str(rank)}
    js = ckpt.state["rng"][rank]
    torch.set_rng_state(t["torch"])
    n = js["numpy"]
    np.random.set_state((n["kind"], t["numpy"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    version, internal, gauss_next = js["python"]
    random.setstate((version, tuple(internal), gauss_next))
    cuda = [t[k] for k in sorted((k for k in t if k.startswith("cuda/")), key=lambda k: int(k.split("/")[1]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


# ----------------------------------------------------------------------------------------- optimiser


def _split_optimizer(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, scalars = {}, {}
    for idx, per_param in sd["state"].items():
        for name, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}/{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _join_optimizer(tensors: dict[str, torch.Tensor], js: dict[str, Any], live_groups: list[dict]) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        idx, name = key.split("/", 1)
        state.setdefault(int(idx), {})[name] = value
    for idx, extra in js["scalars"].items():
        state.setdefault(int(idx), {}).update(extra)
    groups = []
    for saved, live in zip(js["param_groups"], live_groups):  # JSON has no tuples (AdamW's betas is one)
        groups.append({k: tuple(v) if isinstance(live.get(k), tuple) and isinstance(v, list) else v
                       for k, v in saved.items()})
    return {"state": state, "param_groups": groups}


# ----------------------------------------------------------------------------------------- writing


def save(run_dir: Path, step: int, keep: int, *, weights: dict[str, torch.Tensor], best: dict[str, torch.Tensor],
         optimizer, scheduler, rngs: list[tuple[dict[str, torch.Tensor], dict[str, Any]]],
         trainer_state: dict[str, Any], cfg: TrainConfig,
         method_state: tuple[str, dict[str, torch.Tensor], dict[str, Any]] | None = None) -> Path:
    """Write checkpoint-<step> atomically into run_dir and keep only the newest `keep` checkpoints.

    rngs: capture_rng() of every process, in rank order. method_state: (name, tensors, JSON) of the
    method's own running state (Method.checkpoint_state), or None.
    """
    cpu = lambda d: {k: v.detach().cpu().contiguous() for k, v in d.items()}  # noqa: E731
    opt_tensors, opt_json = _split_optimizer(optimizer.state_dict())
    rng_tensors = {f"{rank}/{k}": v for rank, (ts, _) in enumerate(rngs) for k, v in ts.items()}
    state = {"format_version": FORMAT_VERSION, "step": step, "config": cfg.to_dict(), **trainer_state,
             "optimizer": opt_json, "scheduler": scheduler.state_dict(), "rng": [js for _, js in rngs],
             "method_state": method_state[0] if method_state else None}
    if method_state:
        state[method_state[0]] = method_state[2]
    text = json.dumps(state, indent=1)  # before any file: a state that JSON cannot hold fails here, not half-way

    def fill(tmp: Path) -> None:
        save_file(cpu(weights), str(tmp / "weights.safetensors"))
        save_file(cpu(best), str(tmp / "best.safetensors"))
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        save_file(rng_tensors, str(tmp / "rng.safetensors"))
        if method_state:
            save_file(cpu(method_state[1]), str(tmp / f"{method_state[0]}.safetensors"))
        (tmp / STATE_FILE).write_text(text + "\n", encoding="utf-8")

    out = write_dir_atomic(Path(run_dir) / f"checkpoint-{step}", fill)
    for old in checkpoints_in(run_dir)[:-keep]:
        remove_dir_atomic(old)
    return out


# ----------------------------------------------------------------------------------------- restoring


def restore(ckpt: Checkpoint, model, optimizer, scheduler, method=None) -> None:
    """Load weights, optimiser, scheduler (and the method's own state) into a freshly built run.

    The model must be the unwrapped peft model with the same trainable parameters as when saved.
    """
    live = {n: p for n, p in model.named_parameters() if p.requires_grad}
    saved = ckpt.tensors["weights"]
    if set(saved) != set(live) or any(saved[n].shape != live[n].shape for n in live):
        raise UserError("checkpoint weights do not fit this model's adapter (different parameters or shapes)",
                        str(ckpt.path / "weights.safetensors"))
    with torch.no_grad():
        for n, p in live.items():
            p.copy_(saved[n].to(p.device, p.dtype))
    sd = _join_optimizer(ckpt.tensors["optimizer"], ckpt.state["optimizer"], optimizer.state_dict()["param_groups"])
    try:
        optimizer.load_state_dict(sd)
        scheduler.load_state_dict(ckpt.state["scheduler"])
    except (KeyError, ValueError, TypeError) as exc:
        raise UserError(f"checkpoint optimiser/scheduler state does not fit this run: {exc}", str(ckpt.path)) from None
    own = method_state_name(ckpt.state)
    if method is not None and own is not None and own == method.checkpoint_name:
        method.restore_checkpoint_state(model, ckpt.tensors[own], ckpt.state[own])


def check_fingerprints(ckpt: Checkpoint, now: dict[str, str]) -> dict[str, Any]:
    """Refuse to resume onto other data or another base model; return the checkpoint's trainer state."""
    for key, value in now.items():
        if ckpt.state.get("fingerprints", {}).get(key) != value:
            raise UserError(f"the {key.replace('_', ' ')} changed since this checkpoint was saved; cannot resume "
                            "it exactly", str(ckpt.path))
    return ckpt.state


def best_weights(ckpt: Checkpoint, model) -> dict[str, torch.Tensor]:
    """The checkpoint's best-so-far adapter, on the model's device."""
    device = next(p for p in model.parameters() if p.requires_grad).device
    return {n: t.to(device) for n, t in ckpt.tensors["best"].items()}


# ----------------------------------------------------------------------------------------- Ctrl-C


class CtrlC:
    """Ctrl-C handling for one training run, and where it stands (step, last checkpoint saved).

    Between defer() and immediate() a first SIGINT only sets `requested`: the loop finishes its step,
    checkpoints and stops. Otherwise, and for a second SIGINT, Python's KeyboardInterrupt is raised as
    usual. Inert when disabled or off the main thread (signal handlers live there).
    """

    def __init__(self, enabled: bool = True):
        self.enabled, self.requested, self._old = enabled, False, None
        self.step: int = 0
        self.checkpoint: str | None = None

    def _handle(self, signum, frame) -> None:
        self.requested = True
        self.immediate()

    def defer(self) -> None:
        if self.enabled and self._old is None and threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)

    def immediate(self) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None

    def __enter__(self) -> CtrlC:
        return self

    def __exit__(self, *exc) -> None:
        self.immediate()
