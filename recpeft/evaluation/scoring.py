"""Verbaliser scoring: P(Yes) = softmax over the answer tokens' logits at the answer position.

Only what that needs is computed: the LM head runs at one position (`logits_to_keep=1`) and, inside
`answer_rows`, on the answer tokens' rows of its weight only. A full head is a [hidden x vocabulary]
matmul per row, forward and backward: on SmolLM2, 49,152 logits per row of which the verbaliser
reads two. The last decoder block runs at that one position too (`last_position.py`).
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar

import torch
import torch.nn.functional as F

from recpeft.evaluation.sharding import shared_map
from recpeft.kernels.gpu import pad_multiple
from recpeft.kernels.last_position import last_position
from recpeft.tasks.batches import Encoded, LengthBucketSampler, collate

# The answer rows of the current call. A context variable, not module state: another thread (a
# server, a user's own code) generating text with the same model at the same time keeps a full head.
_ROWS: ContextVar[torch.Tensor | None] = ContextVar("recpeft_answer_rows", default=None)


class AnswerRowsHead(torch.nn.Linear):
    """An nn.Linear LM head that, while `answer_rows` is active in this context, computes only the
    answer tokens' logits. Same parameters and state-dict keys as the nn.Linear it replaces."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = _ROWS.get()
        if rows is None:
            return super().forward(x)
        return F.linear(x, self.weight[rows], None if self.bias is None else self.bias[rows])


def _output_head(model) -> torch.nn.Module | None:
    inner = getattr(model, "module", model)  # DistributedDataParallel
    get = getattr(inner, "get_output_embeddings", None)  # a PeftModel forwards it to the base model
    return get() if callable(get) else None


@contextlib.contextmanager
def answer_rows(model, answer_ids: list[int]):
    """While active, the model's logits are the answer tokens' only ([..., len(answer_ids)]), in
    answer_ids order. Yields whether that is so: False for a head it cannot narrow (a quantised or
    custom one), whose logits stay full-vocabulary."""
    head = _output_head(model)
    if type(head) is torch.nn.Linear:
        head.__class__ = AnswerRowsHead  # in place: no new module, so ties and state dicts are unchanged
    if not isinstance(head, AnswerRowsHead):
        yield False
        return
    token = _ROWS.set(torch.tensor(answer_ids, dtype=torch.long, device=head.weight.device))
    try:
        yield True
    finally:
        _ROWS.reset(token)


def answer_logits(model, batch: dict[str, torch.Tensor], answer_ids: list[int]) -> torch.Tensor:
    """[batch, n_answers] logits of the answer tokens at the last position (only those are computed)."""
    with answer_rows(model, answer_ids) as narrowed, last_position(model):
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    position_ids=batch["position_ids"], logits_to_keep=1, use_cache=False)
    return answer_columns(out.logits[:, -1], narrowed, answer_ids)


def answer_columns(logits: torch.Tensor, narrowed: bool, answer_ids: list[int]) -> torch.Tensor:
    """[batch, n_answers] float logits from one position's logits, computed inside `answer_rows`."""
    return (logits if narrowed else logits[:, answer_ids]).float()


@torch.no_grad()
def all_answer_logits(model, rows: list[Encoded], answer_ids: list[int], pad_id: int, batch_size: int = 16,
                      device=None, progress=None) -> torch.Tensor:
    """[len(rows), n_answers] answer logits of every row, in input order (batched by length, eval mode)."""
    was_training = model.training
    model.eval()
    device = torch.device(device or next(model.parameters()).device)
    multiple = pad_multiple(device.type == "cuda")
    out = torch.zeros(len(rows), len(answer_ids))

    def one(idx: list[int]) -> torch.Tensor:
        batch = collate([rows[i] for i in idx], pad_id, multiple)
        logits = answer_logits(model, {k: v.to(device) for k, v in batch.items()}, answer_ids).cpu()
        if progress is not None:
            progress.update(len(idx))
        return logits

    batches = list(LengthBucketSampler([len(r.input_ids) for r in rows], batch_size, shuffle=False))
    for idx, logits in zip(batches, shared_map(one, batches)):  # each process its share, inside sharding.across
        out[idx] = logits
    model.train(was_training)
    return out


def score(model, rows: list[Encoded], answer_ids: list[int], pad_id: int, batch_size: int = 16,
          device=None, progress=None) -> list[float]:
    """Probability of the positive answer (last of answer_ids) for each row, in input order."""
    logits = all_answer_logits(model, rows, answer_ids, pad_id, batch_size, device, progress)
    return torch.softmax(logits, dim=-1)[:, -1].tolist()
