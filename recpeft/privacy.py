"""Differentially private adapter training (DP-SGD) through opacus, kept out of the training loop.

opacus does the privacy work: per-example gradients of the adapter's layers (its hooks; the frozen
base gets none), clipping, Gaussian noise and the accountant. This module decides which runs it can
vouch for (before anything loads), replaces the length-bucketed batches by opacus' Poisson sampling,
and records and restores what the accountant spent, so that a resumed run ends with the same ε.
The guarantee is example-level (ε, δ)-DP for the training examples; it is not user-level.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Any

import torch

from .errors import UserError

SUPPORTED_METHODS = ("lora", "adapter")
# One training example = one encoded row, and the loss is the mean of per-example cross-entropies:
# what opacus' "mean" reduction assumes. Ranking (several rows per example) and generated answers
# (a loss averaged over the tokens of the whole batch) are neither.
SUPPORTED_TASKS = ("preference", "click", "rating")
ACCOUNTANT = "rdp"  # opacus' Rényi-DP accountant: deterministic, and its history is plain numbers
UNIT = "example"
DP_KEYS = ("dp_delta", "dp_max_grad_norm")  # settings that mean nothing without dp_epsilon


def delta_for(n: int) -> float:
    """The default δ: 1e-5, or 1/(10 N) when that is smaller (δ must stay well below 1/N)."""
    return min(1e-5, 1.0 / (10 * n))


def check_config(cfg, where: dict[str, str | None]) -> None:
    """Refuse what DP-SGD cannot support or what makes no sense, from the settings alone (no model, no
    data loaded yet). where: key -> "file:line" (or None) of the settings given."""
    def fail(key: str, message: str) -> None:
        raise UserError(message, where.get(key))

    if not cfg.dp_max_grad_norm > 0 or not math.isfinite(cfg.dp_max_grad_norm):
        fail("dp_max_grad_norm", f"'dp_max_grad_norm' (the per-example clipping norm) must be a finite number > 0, "
                                 f"got {cfg.dp_max_grad_norm!r}")
    if cfg.dp_epsilon is None:
        for key in DP_KEYS:  # set to something else than its default (a whole config dict passes defaults)
            if key in where and getattr(cfg, key) != getattr(type(cfg)(), key):
                fail(key, f"'{key}' needs 'dp_epsilon' (--dp-epsilon): differential privacy is off without it")
        return
    if not (math.isfinite(cfg.dp_epsilon) and cfg.dp_epsilon > 0):
        fail("dp_epsilon", f"'dp_epsilon' must be a finite number > 0, got {cfg.dp_epsilon!r} (leave it out to "
                           "train without differential privacy)")
    if cfg.dp_delta is not None and not 0 < cfg.dp_delta < 1:
        fail("dp_delta", f"'dp_delta' must be between 0 and 1 (exclusive), got {cfg.dp_delta!r}")
    refusals = {
        "method": (cfg.method not in SUPPORTED_METHODS,
                   f"--dp-epsilon trains --method lora or adapter, not {cfg.method}: AdaLoRA re-allocates its rank "
                   "budget from whole-batch gradients and adds a batch-level orthogonality loss, which "
                   "per-example clipping does not bound"),
        "task": (cfg.task not in SUPPORTED_TASKS,
                 f"--dp-epsilon supports the {', '.join(SUPPORTED_TASKS)} tasks (one row and one cross-entropy "
                 f"term per example), not {cfg.task}"),
        "item_stats": (cfg.item_stats, "--item-stats writes every training example's label into other examples' "
                                       "prompts, so no per-example guarantee holds; leave it off with --dp-epsilon"),
        "num_processes": (cfg.num_processes > 1, "--dp-epsilon runs in one process (--num-processes 1): the "
                                                 "Poisson sampling and the accountant here are single-process"),
        "grad_accum": (cfg.grad_accum > 1, "--dp-epsilon draws one Poisson batch per optimiser step: use a larger "
                                           "--batch-size instead of --grad-accum"),
        "gradient_checkpointing": (cfg.gradient_checkpointing, "--dp-epsilon does not work with "
                                   "--gradient-checkpointing: opacus' per-example hooks miss the recomputed forward"),
    }
    for key, (refused, message) in refusals.items():
        if refused:
            fail(key, message)


def training_examples(cfg, data, domain) -> int:
    """N, the number of training examples the run will use, from the data alone (before the model and
    its tokenizer load): the same seeded subset the task takes."""
    from .objectives import Task, task_name
    from .tasks import subsample

    name = task_name(cfg.task, data)
    if name not in SUPPORTED_TASKS:  # alpaca data runs the instruction task whatever --task says
        raise UserError(f"--dp-epsilon supports the {', '.join(SUPPORTED_TASKS)} tasks; data '{data.name}' "
                        f"trains the {name} task")
    cls = _task_class(name)
    task = cls.__new__(cls)
    Task.__init__(task, data, domain, None, cfg)  # splits need no tokenizer; answer ids (which do) are skipped
    return len(subsample(task.build_splits()["train"], cfg.train_samples, cfg.seed))


def _task_class(name: str):
    from .objectives.preference import ClickTask, PreferenceTask
    from .objectives.rating import RatingTask

    return {"preference": PreferenceTask, "click": ClickTask, "rating": RatingTask}[name]


def for_run(cfg, data, domain) -> Privacy | None:
    """The run's privacy settings once its data is loaded (None without --dp-epsilon); δ >= 1/N fails here."""
    if cfg.dp_epsilon is None:
        return None
    n = training_examples(cfg, data, domain)
    delta = cfg.dp_delta if cfg.dp_delta is not None else delta_for(n)
    if delta >= 1.0 / n:
        raise UserError(f"'dp_delta' {delta:g} must be below 1/N = {1.0 / n:g} (N = {n} training examples): a δ "
                        "that large allows publishing an example outright")
    return Privacy(cfg, n, delta)


class PoissonBatches:
    """opacus' Poisson sampler (each example joins a batch with probability q, independently), drawn
    from a generator seeded by (seed, epoch): an epoch's batches are the same however often it is
    replayed, so a resumed run skips the batches it trained and meets the same ones next."""

    def __init__(self, n: int, steps: int, seed: int):
        from opacus.utils.uniform_sampler import UniformWithReplacementSampler

        self.sampler = UniformWithReplacementSampler(num_samples=n, sample_rate=1.0 / steps, steps=steps)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        self.sampler.generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


class Privacy:
    """DP-SGD for one run: attaches opacus, and says what the accountant spent."""

    def __init__(self, cfg, n: int, delta: float):
        self.cfg, self.n, self.delta = cfg, n, delta
        self.engine = None
        self.noise_multiplier = self.sample_rate = math.nan
        self.planned_steps = 0

    def attach(self, run, optimizer):
        """opacus on the run's model and optimiser; a Poisson-sampled loader over its training rows.

        Returns (optimizer, loader, sampler): opacus' DPOptimizer, the loader and its sampler (set_epoch).
        The model keeps its type: opacus' hooks go on the adapter's layers only (wrap_model=False)."""
        from opacus import PrivacyEngine
        from opacus.accountants.utils import get_noise_multiplier

        from .batches import EncodedDataset
        from .gpu import pad_multiple

        cfg, rows = self.cfg, run.train_rows
        if len(rows) != self.n:  # the count made before the model loaded must be the rows trained on
            raise RuntimeError(f"privacy: counted {self.n} training examples but the task encoded {len(rows)}")
        steps_per_epoch = len(run.train_loader)  # ceil(N / batch): sampling rate q = 1 / that, as opacus does
        batches = PoissonBatches(self.n, steps_per_epoch, cfg.seed)
        pad, multiple = run.tok.pad_token_id, pad_multiple(run.accelerator.device.type == "cuda")
        loader = torch.utils.data.DataLoader(EncodedDataset(rows), batch_sampler=batches,
                                             collate_fn=lambda b: collate_or_stand_in(b, pad, multiple))
        self.sample_rate, self.planned_steps = 1.0 / steps_per_epoch, run.total_steps
        with _quiet():
            try:
                self.noise_multiplier = get_noise_multiplier(target_epsilon=cfg.dp_epsilon, target_delta=self.delta,
                                                             sample_rate=self.sample_rate, steps=self.planned_steps,
                                                             accountant=ACCOUNTANT)
            except ValueError as exc:  # opacus: no noise multiplier below its maximum reaches the target
                raise UserError(f"--dp-epsilon {cfg.dp_epsilon:g} cannot be reached in {self.planned_steps} steps "
                                f"at sampling rate {self.sample_rate:.3g} ({exc}); raise it or train fewer steps"
                                ) from None
            self.engine = PrivacyEngine(accountant=ACCOUNTANT)
        optimizer = make_private(self.engine, run.model, optimizer, loader, self.noise_multiplier,
                                 cfg.dp_max_grad_norm, self.n * self.sample_rate)
        return optimizer, loader, batches

    # ------------------------------------------------------------------------- accountant state

    def state(self) -> dict[str, Any]:
        """The accountant's history as JSON (for the checkpoint): [[noise multiplier, q, steps], ...]."""
        return {"history": [list(h) for h in self.engine.accountant.history],
                "noise_multiplier": self.noise_multiplier}

    def restore(self, state: dict[str, Any] | None, where: str) -> None:
        """Continue the accountant of a resumed run exactly where the checkpoint left it."""
        if state is None or state.get("noise_multiplier") != self.noise_multiplier:
            raise UserError("checkpoint has no matching differential-privacy accountant state; cannot resume it "
                            "as a DP run", where)
        self.engine.accountant.history = [tuple(h) for h in state["history"]]

    def spent(self) -> float:
        if not self.engine.accountant.history:
            return 0.0
        with _quiet():
            return float(self.engine.accountant.get_epsilon(self.delta))

    def steps(self) -> int:
        return sum(h[2] for h in self.engine.accountant.history)

    def record(self) -> dict[str, Any]:
        """What recpeft.json and the model card say about the guarantee."""
        import opacus

        return {"mechanism": f"DP-SGD (opacus {opacus.__version__}): Poisson sampling, per-example clipping of the "
                             "adapter's gradient, Gaussian noise",
                "unit": UNIT, "user_level": False, "epsilon_target": self.cfg.dp_epsilon,
                "epsilon_spent": round(self.spent(), 6), "delta": self.delta,
                "noise_multiplier": self.noise_multiplier, "max_grad_norm": self.cfg.dp_max_grad_norm,
                "sample_rate": self.sample_rate, "expected_batch_size": self.n * self.sample_rate,
                "training_examples": self.n, "steps": self.steps(), "planned_steps": self.planned_steps,
                "accountant": ACCOUNTANT}


def make_private(engine, model, optimizer, loader, noise_multiplier: float, max_grad_norm: float,
                 expected_batch_size: float):
    """opacus' DPOptimizer over `optimizer`, its per-example gradient hooks on the trainable layers of
    `model` (the model itself is not wrapped; frozen layers get no hooks) and its accountant on every step.
    Losses must be means over a batch's examples (opacus' "mean" reduction). `loader` must sample
    Poisson batches itself: opacus takes its sampling rate as 1 / len(loader)."""
    model.train()  # opacus validates a model in training mode
    with _quiet():
        _, optimizer, _ = engine.make_private(
            module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm, poisson_sampling=False, grad_sample_mode="hooks", wrap_model=False,
            loss_reduction="mean")
    # opacus divides the noised sum by int(N q); the mean batch is N q exactly (a scale, not privacy)
    optimizer.expected_batch_size = expected_batch_size
    # the first adapted layer's input needs no gradient, so torch notes that opacus' hook sees outputs only
    warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed with "
                            "respect to module outputs", category=UserWarning)
    return optimizer


@contextlib.contextmanager
def _quiet():
    """Without opacus' advice printed on every run: that the RDP bound could be tighter with more orders
    (it stays a valid bound), and that its secure RNG is off (see README: runs are seeded to be resumable)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the", category=UserWarning)
        warnings.filterwarnings("ignore", message="Secure RNG turned off", category=UserWarning)
        yield


def collate_or_stand_in(rows, pad_id: int, multiple: int) -> dict[str, torch.Tensor]:
    """A left-padded batch; for an empty Poisson batch, a one-token stand-in row marked `dp_empty`. The
    trainer zeroes its loss, so its per-example gradient is exactly 0 and opacus' step adds noise only (a
    model cannot run on zero rows, and skipping the step would reveal that the batch was empty). Token 0:
    any token does, but a padding token may embed to zeros and would hide a loss left on by mistake."""
    from .batches import Encoded, collate

    if rows:
        return collate(rows, pad_id, multiple)
    return {**collate([Encoded([0], 0)], pad_id, multiple), "dp_empty": True}


def card_section(record: dict[str, Any] | None) -> str:
    """The model card's paragraph on differential privacy ('' for a run without it)."""
    if not record:
        return ""
    return (f"\n## Differential privacy\n\nTrained with {record['mechanism']}. Guarantee: "
            f"({record['epsilon_spent']:.3g}, {record['delta']:.3g})-differential privacy at the level of one "
            f"training **example** (a prompt and its label) of the {record['training_examples']} training examples, "
            f"{record['accountant'].upper()} accountant, target ε {record['epsilon_target']:g}. Not user-level: a "
            "user with k examples, or one interaction that also appears in the history of later examples, is covered "
            "only by group privacy (about k·ε). Validation and test data have no guarantee.\n\n"
            f"| noise multiplier | clipping norm | sampling rate | steps |\n|---|---|---|---|\n"
            f"| {record['noise_multiplier']:.4g} | {record['max_grad_norm']:g} | {record['sample_rate']:.4g} | "
            f"{record['steps']} |\n")


def compose(paths, metas: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The guarantee of a weighted combination of adapters (`recpeft merge --combine`), by basic
    composition: ε = Σ εᵢ, δ = Σ δᵢ. A combination is post-processing of the adapters it reads, so this
    holds for one training example whether it was in one source's training data, several or all; for
    sources trained on disjoint data the largest εᵢ would hold, which recpeft cannot verify. None when
    no source is private; a mix of private and non-private sources is refused (the result has no guarantee)."""
    records = [m.get("privacy") for m in metas]
    if not any(records):
        return None
    plain = [str(p) for p, r in zip(paths, records) if not r]
    if plain:
        raise UserError(f"cannot combine differentially private adapters with {', '.join(plain)}, which has no "
                        "privacy guarantee: the combination would have none either")
    if {r["unit"] for r in records} != {UNIT}:
        raise UserError("cannot combine adapters whose privacy guarantees have different units")
    return {"composition": "basic: epsilon and delta are the sums of the sources'", "unit": UNIT, "user_level": False,
            "epsilon": sum(r["epsilon_spent"] for r in records), "delta": sum(r["delta"] for r in records),
            "sources": [{"path": str(p), "epsilon_spent": r["epsilon_spent"], "delta": r["delta"]}
                        for p, r in zip(paths, records)]}


def composed_card(record: dict[str, Any] | None) -> str:
    """The combined adapter's model-card paragraph on privacy ('' when no source was private)."""
    if not record:
        return ""
    return (f"\n## Differential privacy\n\n({record['epsilon']:.3g}, {record['delta']:.3g})-differential privacy "
            "per training example, by basic composition of the sources' guarantees (ε and δ summed): valid "
            "whether the sources were trained on the same, overlapping or disjoint data (for disjoint data the "
            "largest source ε would hold, which recpeft cannot check). Not user-level.\n")
