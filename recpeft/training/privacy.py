"""Differentially private adapter training (DP-SGD) through opacus, kept out of the training loop.

opacus does the privacy work: per-example gradients of the adapter's layers (its hooks; the frozen
base gets none), clipping, Gaussian noise and the accountant. This module decides which runs it can
vouch for (before anything loads), replaces the length-bucketed batches by opacus' Poisson sampling,
and records and restores what the accountant spent, so that a resumed run ends with the same ε.
What a record guarantees (group privacy, composition, the model card) is privacy_guarantee.py.

The accountant's guarantee is example-level (ε₀, δ₀)-DP for the training examples. With
dp_max_examples_per_user K > 0 every user keeps at most K training examples (cap_per_user, a seeded
choice that depends on that user's examples only), and group privacy turns the example-level guarantee
into a user-level one: (K·ε₀, K·e^((K-1)·ε₀)·δ₀)-DP for adding or removing one user (group_privacy; the
derivation is in docs/privacy.md). The run then targets ε₀ = ε/K and δ₀ = δ / (K·e^((K-1)·ε₀)).
"""

from __future__ import annotations

import contextlib
import math
import random
import warnings
from collections import defaultdict
from typing import Any

import torch

from recpeft.errors import UserError
from recpeft.training.privacy_guarantee import GROUP_PRIVACY, example_target, group_privacy

SUPPORTED_METHODS = ("lora", "adapter")
# One training example = one encoded row, and the loss is the mean of per-example cross-entropies:
# what opacus' "mean" reduction assumes (choice: one question per example). Ranking (several rows per
# example) and generated answers (a loss averaged over the tokens of the whole batch) are neither.
SUPPORTED_TASKS = ("preference", "click", "rating", "choice")
ACCOUNTANT = "rdp"  # opacus' Rényi-DP accountant: deterministic, and its history is plain numbers
# settings that mean nothing without dp_epsilon
DP_KEYS = ("dp_delta", "dp_max_grad_norm", "dp_max_examples_per_user", "dp_max_physical_batch")


def delta_for(n: int) -> float:
    """The default δ: 1e-5, or 1/(10 N) when that is smaller (δ must stay well below 1/N; N counts the
    guarantee's units: training examples, or users for a user-level run)."""
    return min(1e-5, 1.0 / (10 * n))


def noise_multiplier(epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """The σ that makes `steps` Poisson-sampled DP-SGD steps at `sample_rate` (ε, δ)-private, from opacus'
    accountant (ACCOUNTANT). ValueError when no σ below opacus' maximum reaches ε."""
    from opacus.accountants.utils import get_noise_multiplier

    with _quiet():
        return get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=sample_rate,
                                    steps=steps, accountant=ACCOUNTANT)


def cap_per_user(examples: list, k: int, seed: int) -> list:
    """At most k examples of each user (`user_id`), in the original order: a user with more keeps k drawn
    uniformly without replacement by an RNG seeded from (seed, user id). The choice for one user depends
    on that user's examples alone, so adding or removing a user leaves every other user's examples as they
    are, and the same data and seed give the same examples on every run (resume included)."""
    by_user: dict[str, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        by_user[ex.user_id].append(i)
    keep: list[int] = []
    for user, positions in by_user.items():
        keep += positions if len(positions) <= k else random.Random(f"{seed}/dp-user/{user}").sample(positions, k)
    return [examples[i] for i in sorted(keep)]


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
        "fusion": (cfg.fusion != "off", "--dp-epsilon does not support --fusion: the projector runs on all the "
                                        "batch's items at once, so opacus cannot clip it per example (and cf vectors "
                                        "are fitted on the training data without noise)"),
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


def training_set(cfg, data, domain) -> list:
    """The training examples the run will use, from the data alone (before the model and its tokenizer
    load): the same ones the task encodes (Task.train_examples: the per-user cap, then the seeded subset)."""
    from recpeft.data.schema import InstructionData
    from recpeft.tasks import task_class, task_name
    from recpeft.tasks.base import Task

    if cfg.dp_max_examples_per_user and isinstance(data, InstructionData):
        raise UserError(f"--dp-max-examples-per-user needs data with users; data '{data.name}' is instruction data "
                        "(alpaca), whose records belong to no user")
    name = task_name(cfg.task, data)
    if name not in SUPPORTED_TASKS:  # alpaca data runs the instruction task whatever --task says
        raise UserError(f"--dp-epsilon supports the {', '.join(SUPPORTED_TASKS)} tasks; data '{data.name}' "
                        f"trains the {name} task")
    cls = task_class(name)
    task = cls.__new__(cls)
    Task.__init__(task, data, domain, None, cfg)  # splits need no tokenizer; answer ids (which do) are skipped
    return task.train_examples(cfg.train_samples)


def for_run(cfg, data, domain) -> Privacy | None:
    """The run's privacy settings once its data is loaded (None without --dp-epsilon); δ >= 1/N fails here,
    N being the number of units the guarantee protects: training examples, or users at user level."""
    if cfg.dp_epsilon is None:
        return None
    examples = training_set(cfg, data, domain)
    if not examples:
        raise UserError(f"data '{data.name}' yields no training examples for --dp-epsilon; need users with "
                        "longer histories")
    n, users = len(examples), len({ex.user_id for ex in examples})
    count, what = (users, f"{users} users") if cfg.dp_max_examples_per_user else (n, f"{n} training examples")
    delta = cfg.dp_delta if cfg.dp_delta is not None else delta_for(count)
    if delta >= 1.0 / count:
        unit = "a user's data" if cfg.dp_max_examples_per_user else "an example"
        raise UserError(f"'dp_delta' {delta:g} must be below 1/N = {1.0 / count:g} (N = {what}): a δ "
                        f"that large allows publishing {unit} outright")
    return Privacy(cfg, n, delta, users)


LAST = -1  # the index PoissonBatches appends to the last piece of a Poisson batch (read by collate_or_stand_in)


class PoissonBatches:
    """opacus' Poisson sampler (each example joins a batch with probability q, independently), drawn
    from a generator seeded by (seed, epoch): an epoch's batches are the same however often it is
    replayed, so a resumed run skips the batches it trained and meets the same ones next.

    physical > 0 splits each batch into pieces of at most that many examples, in order; the last piece
    carries the LAST index, so that its batch says `dp_last` and the trainer steps (and counts a step)
    only then. This is opacus' BatchMemoryManager, whose sampler signals the optimiser as it is iterated;
    here the mark travels with the batch, which stays right however far ahead accelerate's loader reads."""

    def __init__(self, n: int, steps: int, seed: int, physical: int = 0, lengths: list[int] | None = None):
        """lengths: the rows' token counts; with `physical`, a batch's examples are ordered by length before
        it is cut, so each piece pads little (the batch, and so the guarantee, is the same)."""
        from opacus.utils.uniform_sampler import UniformWithReplacementSampler

        self.sampler = UniformWithReplacementSampler(num_samples=n, sample_rate=1.0 / steps, steps=steps)
        self.seed, self.epoch, self.physical, self.lengths = seed, 0, physical, lengths

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        self.sampler.generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        for batch in self.sampler:
            if self.physical and self.lengths is not None:
                batch = sorted(batch, key=lambda i: (self.lengths[i], i))
            # ceil(len / physical) pieces of near-equal size (as opacus splits): no piece of one example whose
            # mean loss would weigh as much as a full piece's in the logged loss
            parts = -(-len(batch) // self.physical) if self.physical else 1
            cuts = [len(batch) * i // parts for i in range(parts + 1)] if batch else [0, 0]
            pieces = [batch[a:b] for a, b in zip(cuts, cuts[1:])]
            yield from pieces[:-1]
            yield pieces[-1] + [LAST]

    def __len__(self) -> int:  # Poisson batches (optimiser steps) per epoch, not pieces
        return len(self.sampler)


class PrivateRows(torch.utils.data.Dataset):
    """The training rows, and None at index LAST (the end-of-batch mark)."""

    def __init__(self, rows: list):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        return None if i == LAST else self.rows[i]


class Privacy:
    """DP-SGD for one run: attaches opacus, and says what the accountant spent."""

    def __init__(self, cfg, n: int, delta: float, users: int = 0):
        """n training examples from `users` users; delta: the guarantee's δ (per user when the run caps
        examples per user, else per example)."""
        self.cfg, self.n, self.delta, self.users = cfg, n, delta, users
        self.k = cfg.dp_max_examples_per_user  # 0: example-level
        self.unit = "user" if self.k else "example"
        # what the accountant is run for: the example-level (ε₀, δ₀) whose group privacy is the target
        self.example_epsilon, self.example_delta = (example_target(cfg.dp_epsilon, delta, self.k) if self.k
                                                    else (cfg.dp_epsilon, delta))
        self.engine = self.optimizer = None
        self.noise_multiplier = self.sample_rate = math.nan
        self.planned_steps = 0

    def attach(self, run, optimizer):
        """opacus on the run's model and optimiser; a Poisson-sampled loader over its training rows.

        Returns (optimizer, loader, sampler): opacus' DPOptimizer, the loader and its sampler (set_epoch).
        The model keeps its type: opacus' hooks go on the adapter's layers only (wrap_model=False)."""
        from opacus import PrivacyEngine

        from recpeft.kernels.gpu import pad_multiple

        cfg, rows = self.cfg, run.train_rows
        if len(rows) != self.n:  # the count made before the model loaded must be the rows trained on
            raise RuntimeError(f"privacy: counted {self.n} training examples but the task encoded {len(rows)}")
        steps_per_epoch = len(run.train_loader)  # ceil(N / batch): sampling rate q = 1 / that, as opacus does
        batches = PoissonBatches(self.n, steps_per_epoch, cfg.seed, cfg.dp_max_physical_batch,
                                 [len(r.input_ids) for r in rows])
        pad, multiple = run.tok.pad_token_id, pad_multiple(run.accelerator.device.type == "cuda")
        loader = torch.utils.data.DataLoader(PrivateRows(rows), batch_sampler=batches,
                                             collate_fn=lambda b: collate_or_stand_in(b, pad, multiple))
        self.plan(steps_per_epoch, run.total_steps)
        with _quiet():
            self.engine = PrivacyEngine(accountant=ACCOUNTANT)
        optimizer = make_private(self.engine, run.model, optimizer, loader, self.noise_multiplier,
                                 cfg.dp_max_grad_norm, self.n * self.sample_rate)
        self.optimizer = optimizer
        return optimizer, loader, batches

    def plan(self, steps_per_epoch: int, total_steps: int) -> float:
        """Set (and return) the noise multiplier σ for `total_steps` steps of one Poisson batch per step of an
        epoch: sampling rate q = 1 / steps_per_epoch, as opacus takes it. A target the accountant cannot reach
        in those steps is a UserError."""
        self.sample_rate, self.planned_steps = 1.0 / steps_per_epoch, total_steps
        with _quiet():
            try:
                self.noise_multiplier = noise_multiplier(self.example_epsilon, self.example_delta,
                                                         self.sample_rate, self.planned_steps)
            except ValueError as exc:  # opacus: no noise multiplier below its maximum reaches the target
                per_example = (f" (user-level: example-level ε₀ = {self.example_epsilon:.3g} at δ₀ = "
                               f"{self.example_delta:.3g} for --dp-max-examples-per-user {self.k})" if self.k else "")
                raise UserError(f"--dp-epsilon {self.cfg.dp_epsilon:g}{per_example} cannot be reached in "
                                f"{self.planned_steps} steps at sampling rate {self.sample_rate:.3g} ({exc}); raise "
                                "it, train fewer steps" + (" or lower --dp-max-examples-per-user" if self.k else "")
                                ) from None
        return self.noise_multiplier

    def before_step(self, batch: dict) -> bool:
        """Tell opacus whether this piece ends its Poisson batch (then it adds the noise and steps; else it
        only clips and sums the pieces' per-example gradients). Returns that."""
        last = bool(batch.get("dp_last", True))
        self.optimizer.signal_skip_step(do_skip=not last)
        return last

    # ------------------------------------------------------------------------- accountant state

    def state(self) -> dict[str, Any]:
        """The accountant's history as JSON (for the checkpoint): [[noise multiplier, q, steps], ...]."""
        return {"history": [list(h) for h in self.engine.accountant.history],
                "noise_multiplier": self.noise_multiplier, "unit": self.unit, "max_examples_per_user": self.k,
                "training_examples": self.n}

    def restore(self, state: dict[str, Any] | None, where: str) -> None:
        """Continue the accountant of a resumed run exactly where the checkpoint left it. The training set
        (per-user cap included) is a deterministic function of data and settings: the same N comes back."""
        same = state is not None and state.get("noise_multiplier") == self.noise_multiplier and \
            state.get("max_examples_per_user", 0) == self.k and state.get("training_examples", self.n) == self.n
        if not same:
            raise UserError("checkpoint has no matching differential-privacy accountant state; cannot resume it "
                            "as a DP run", where)
        self.engine.accountant.history = [tuple(h) for h in state["history"]]

    def example_spent(self) -> float:
        """ε₀: the accountant's example-level ε at δ₀ for the steps taken."""
        if not self.engine.accountant.history:
            return 0.0
        with _quiet():
            return float(self.engine.accountant.get_epsilon(self.example_delta))

    def spent(self) -> float:
        """ε in the guarantee's unit: ε₀, or K·ε₀ per user (at δ; see group_privacy)."""
        return group_privacy(self.example_spent(), self.example_delta, self.k)[0] if self.k else self.example_spent()

    def steps(self) -> int:
        return sum(h[2] for h in self.engine.accountant.history)

    def record(self) -> dict[str, Any]:
        """What recpeft.json and the model card say about the guarantee."""
        import opacus

        example_spent = self.example_spent()
        return {"mechanism": f"DP-SGD (opacus {opacus.__version__}): Poisson sampling, per-example clipping of the "
                             "adapter's gradient, Gaussian noise",
                # the guarantee, in its unit (one training example, or one user's at most K examples)
                "unit": self.unit, "user_level": bool(self.k), "max_examples_per_user": self.k,
                "epsilon_target": self.cfg.dp_epsilon, "epsilon_spent": round(self.spent(), 6), "delta": self.delta,
                # what the accountant ran for and gave (the same as above for an example-level run)
                "example_epsilon_target": self.example_epsilon, "example_epsilon_spent": round(example_spent, 6),
                "example_delta": self.example_delta, "conversion": GROUP_PRIVACY if self.k else None,
                "noise_multiplier": self.noise_multiplier, "max_grad_norm": self.cfg.dp_max_grad_norm,
                "sample_rate": self.sample_rate, "expected_batch_size": self.n * self.sample_rate,
                "max_physical_batch": self.cfg.dp_max_physical_batch,
                "training_examples": self.n, "users": self.users, "steps": self.steps(),
                "planned_steps": self.planned_steps, "accountant": ACCOUNTANT}


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
    (it stays a valid bound), and that its secure RNG is off (docs/privacy.md: runs are seeded to be resumable)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the", category=UserWarning)
        warnings.filterwarnings("ignore", message="Secure RNG turned off", category=UserWarning)
        yield


def collate_or_stand_in(rows, pad_id: int, multiple: int) -> dict[str, torch.Tensor]:
    """A left-padded batch, `dp_last` when it holds the end-of-batch mark (None, PoissonBatches' LAST); for an
    empty Poisson batch, a one-token stand-in row marked `dp_empty`. The
    trainer zeroes its loss, so its per-example gradient is exactly 0 and opacus' step adds noise only (a
    model cannot run on zero rows, and skipping the step would reveal that the batch was empty). Token 0:
    any token does, but a padding token may embed to zeros and would hide a loss left on by mistake."""
    from recpeft.tasks.batches import Encoded, collate

    last = any(r is None for r in rows)
    rows = [r for r in rows if r is not None]
    if rows:
        return {**collate(rows, pad_id, multiple), "dp_last": last}
    return {**collate([Encoded([0], 0)], pad_id, multiple), "dp_empty": True, "dp_last": last}
