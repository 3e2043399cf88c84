"""Prompt templates and the Yes/No verbaliser.

The question comes BEFORE the target item, so every candidate for one user shares the same prefix
(history + question) and only the short item text differs: that is what lets scoring reuse a cached
prefix. The answer is read from the first token the model would write.
"""

from __future__ import annotations

from dataclasses import dataclass

from recpeft.data.schema import Item
from recpeft.domains import Domain

TEMPLATE_ID = "pref-v1"
SYSTEM = "You are a recommender system. Answer with Yes or No."
RATING_SYSTEM = "You are a recommender system. Answer with a single digit from 1 to 5."
TEXT_SYSTEM = "You are a recommender system."
CHOICE_SYSTEM = "You are a recommender system. Answer with the letter of one candidate."
CHOICE_LETTERS = "ABCDEFGHIJKLMNOPQRST"  # the choice task's index letters: at most 20 candidates, as in LlamaRec
RATING_ANSWERS = ("1", "2", "3", "4", "5")


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


def profile_message(profile: str | None, liked: list[Item], disliked: list[Item], target: Item, domain: Domain,
                    critiques: tuple[str, ...] | list[str] = ()) -> str:
    """The preference question with what else is known of the user: a self-description (the profile task,
    cold start) first, then the liked/disliked lines, then a session's critiques, then the question.
    With neither profile nor critiques it is `user_message`, word for word; with a profile the history
    lines appear only when there is a history (the profile task trains without one)."""
    if profile is None and not critiques:
        return user_message(PreferencePrompt(liked, disliked, target), domain)
    lines = [f"About the user: {profile}"] if profile is not None else []
    if liked or disliked or profile is None:
        lines += [f"{domain.liked_word}: {_items(liked)}.", f"{domain.disliked_word}: {_items(disliked)}."]
    if critiques:
        lines.append(f"The user asks for: {'; '.join(critiques)}.")
    return "\n".join(lines) + (f"\nWill the user {domain.positive_verb} this {domain.item_noun}? "
                               f"{domain.item_noun.capitalize()}: {target.text()}")


def choice_message(liked: list[Item], disliked: list[Item], candidates: list[Item], domain: Domain,
                   critiques: tuple[str, ...] | list[str] = (), profile: str | None = None) -> str:
    """Next-item ranking as one multiple-choice question (the choice task): the history (after a profile,
    when serving is given one), a session's critiques, then the candidates under index letters; the answer is
    a letter. The candidates come last, so a shortened history never drops one."""
    if len(candidates) > len(CHOICE_LETTERS):
        raise ValueError(f"{len(candidates)} candidates; a choice question lists at most {len(CHOICE_LETTERS)}")
    lines = [f"About the user: {profile}"] if profile is not None else []
    lines += [f"{domain.liked_word}: {_items(liked)}.", f"{domain.disliked_word}: {_items(disliked)}."]
    if critiques:
        lines.append(f"The user asks for: {'; '.join(critiques)}.")
    lines.append(f"Which {domain.item_noun} will the user {domain.positive_verb} next? Candidates:")
    lines += [f"{letter}. {item.text()}" for letter, item in zip(CHOICE_LETTERS, candidates)]
    return "\n".join(lines)


def category_critique(category: str) -> str:
    """The critique that asks for a category: what `--critique-share` trains on and what the simulated
    user of experiments/session_sim.py says."""
    return f"more {category}"


def rating_message(rated: list[tuple[Item, float]], target: Item, domain: Domain) -> str:
    """Rating prediction: the history with its 1-5 ratings, then the question, then the target last."""
    history = "; ".join(f"{item.text()}: {rating:g}" for item, rating in rated) if rated else "(none)"
    return (
        f"Ratings from 1 to 5: {history}.\n"
        f"How would the user rate this {domain.item_noun}? "
        f"{domain.item_noun.capitalize()}: {target.text()}"
    )


def interests_message(liked: list[Item], disliked: list[Item], domain: Domain, n: int = 3) -> str:
    """Interest discovery: ask for the user's favourite categories as a comma-separated list."""
    return (
        f"{domain.liked_word}: {_items(liked)}.\n"
        f"{domain.disliked_word}: {_items(disliked)}.\n"
        f"List this user's {n} favourite {domain.category_noun}, comma-separated."
    )


def interests_target(categories: list[str]) -> str:
    """The training answer for interests_message, and the format parse_interests reads back."""
    return ", ".join(categories)


def parse_interests(text: str, known: set[str] | None = None) -> list[str]:
    """Categories named in a generated answer, in order, deduplicated; only `known` ones when given."""
    lowered = {k.lower(): k for k in known} if known else None
    out: list[str] = []
    for part in text.replace("\n", ",").replace(";", ",").split(","):
        name = part.strip().strip(".").strip()
        if lowered is not None:
            name = lowered.get(name.lower(), "")
        if name and name not in out:
            out.append(name)
    return out


def pitch_message(liked: list[Item], target: Item, domain: Domain) -> str:
    """Content generation: one short personalised sentence that recommends the target."""
    return (
        f"{domain.liked_word}: {_items(liked)}.\n"
        f"Write one short, friendly sentence recommending this {domain.item_noun} to the user, "
        f"mentioning what they liked. {domain.item_noun.capitalize()}: {target.text()}"
    )


def render(tokenizer, message: str, system: str = SYSTEM) -> str:
    """Wrap a user message in the model's chat template, or a plain instruction format if it has none."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "system", "content": system}, {"role": "user", "content": message}],
            tokenize=False,
            add_generation_prompt=True,
        )
    return f"### Instruction:\n{system}\n{message}\n### Response:\n"


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
