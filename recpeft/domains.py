"""The three domain presets: what an item is called and how a positive outcome is phrased."""

from __future__ import annotations

from dataclasses import dataclass

from recpeft.errors import UserError, did_you_mean


@dataclass(frozen=True)
class Domain:
    name: str
    item_noun: str  # "product", "movie or show", "news article"
    positive_verb: str  # what a positive label means: "like", "click"
    liked_word: str  # history heading for positives
    disliked_word: str  # history heading for negatives
    category_noun: str = "categories"  # what item categories are called: "genres", "topics"


DOMAINS: dict[str, Domain] = {
    "ecommerce": Domain("ecommerce", "product", "like", "Liked", "Disliked", "product categories"),
    "video": Domain("video", "movie or show", "like", "Liked", "Disliked", "genres"),
    "news": Domain("news", "news article", "click", "Clicked", "Skipped", "topics"),
}


def get_domain(name: str) -> Domain:
    if name not in DOMAINS:
        raise UserError(f"unknown domain '{name}'{did_you_mean(name, DOMAINS)}; choose from {', '.join(DOMAINS)}")
    return DOMAINS[name]
