"""What a training run returns (TrainResult) and what it carries from step to step (Progress)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class TrainResult:
    output_dir: str | None
    metrics: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # training loss of every micro-batch, in order
    model: Any = None  # the trained peft model (best weights restored), for callers that keep going
    tokenizer: Any = None
    test_outputs: dict[str, list] = field(default_factory=dict)  # per-example test scores (for ROC plots)


@dataclass
class Progress:
    """What the loop carries from step to step. A checkpoint saves it whole; a resume restores it."""

    base_valid: dict[str, float]
    base_test: dict[str, float]
    best_auc: float
    history: list[dict[str, float]]
    best_step: int = 0
    bad_evals: int = 0
    step: int = 0
    stop: bool = False
    losses: list[float] = field(default_factory=list)  # every micro-batch's training loss

    def state(self) -> dict[str, Any]:
        """The checkpoint's trainer-state keys (the step is the checkpoint's own)."""
        return {k: v for k, v in asdict(self).items() if k != "step"}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Progress:
        return cls(**{f.name: state[f.name] for f in fields(cls)})

    def recent_loss(self) -> float:
        return sum(self.losses[-20:]) / max(1, len(self.losses[-20:]))
