"""The three domain presets: what an item is called and how a positive outcome is phrased."""

from __future__ import annotations

from dataclasses import dataclass

from .config import did_you_mean
from .errors import UserError


@dataclass(frozen=True)
class Domain:
    name: str
    item_noun: str  # "product", "movie or show", "news article"
    positive_verb: str  # what a positive label means: "like", "click"
    liked_word: str  # history heading for positives
    disliked_word: str  # history heading for negatives


DOMAINS: dict[str, Domain] = {
    "ecommerce": Domain("ecommerce", "product", "like", "Liked", "Disliked"),
    "video": Domain("video", "movie or show", "like", "Liked", "Disliked"),
    "news": Domain("news", "news article", "click", "Clicked", "Skipped"),
}


def get_domain(name: str) -> Domain:
    if name not in DOMAINS:
        raise UserError(f"unknown domain '{name}'{did_you_mean(name, DOMAINS)}; choose from {', '.join(DOMAINS)}")
    return DOMAINS[name]
