"""Prompt templates and the Yes/No verbaliser.

The question comes BEFORE the target item, so every candidate for one user shares the same prefix
(history + question) and only the short item text differs: that is what lets scoring reuse a cached
prefix. The answer is read from the first token the model would write.
"""

from __future__ import annotations

from dataclasses import dataclass

from .data.schema import Item
from .domains import Domain

TEMPLATE_ID = "pref-v1"
SYSTEM = "You are a recommender system. Answer with Yes or No."


@dataclass(frozen=True)
class PreferencePrompt:
    """The pieces of a preference question, before chat formatting."""

    liked: list[Item]
    disliked: list[Item]
    target: Item


def _items(items: list[Item]) -> str:
    return "; ".join(i.text() for i in items) if items else "(none)"


def user_message(p: PreferencePrompt, domain: Domain) -> str:
    return (
        f"{domain.liked_word}: {_items(p.liked)}.\n"
        f"{domain.disliked_word}: {_items(p.disliked)}.\n"
        f"Will the user {domain.positive_verb} this {domain.item_noun}? "
        f"{domain.item_noun.capitalize()}: {p.target.text()}"
    )


def render(tokenizer, message: str) -> str:
    """Wrap a user message in the model's chat template, or a plain instruction format if it has none."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "system", "content": SYSTEM}, {"role": "user", "content": message}],
            tokenize=False,
            add_generation_prompt=True,
        )
    return f"### Instruction:\n{SYSTEM}\n{message}\n### Response:\n"


def answer_token_ids(tokenizer, answers: tuple[str, ...] = ("No", "Yes")) -> list[int]:
    """Token id of each answer word as the model would write it right after a rendered prompt."""
    probe = render(tokenizer, "Probe?")
    prefix = tokenizer(probe, add_special_tokens=False)["input_ids"]
    ids = []
    for word in answers:
        full = tokenizer(probe + word, add_special_tokens=False)["input_ids"]
        if full[: len(prefix)] != prefix or len(full) == len(prefix):
            raise ValueError(f"cannot find a token for the answer {word!r} after the prompt")
        ids.append(full[len(prefix)])
    if len(set(ids)) != len(ids):
        raise ValueError(f"answers {answers} share a first token; the verbaliser needs distinct tokens")
    return ids
