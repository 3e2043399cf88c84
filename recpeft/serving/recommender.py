"""Use trained adapters from Python: score, rank, predict ratings, describe interests, write pitches.

    import recpeft
    rec = recpeft.load("adapters/news")
    rec.rank(["Stocks fall as earnings beat", ("Governor rejects immigration proposal", False)],
             ["Markets rally on rate cut", "Band cancels tour"], k=1)

History entries: a title (str) or an `Item` counts as liked; `(title_or_item, True/False)` says liked
or disliked; `(title_or_item, 4.0)` gives a 1-5 rating (> 3 counts as liked, as in training). Items
and candidates: a title (str) or an `Item` (whose category, when set, is shown in the prompt as in
training). Only the adapter's training `history_len` most recent entries (the list's end) are used.

A new user with no history can be described instead (cold start; train with `--task profile`):

    rec.rank(profile="I am a 25-year-old woman; occupation: writer. I like Sci-Fi.", candidates=[...])
    rec.rank(profile={"age": 25, "gender": "F", "occupation": "writer", "likes": ["Sci-Fi"]}, candidates=[...])

A mapping is rendered with the very words training used (recpeft.tasks.profiles.render_profile).

An adapter trained with `--task choice` reads all candidates in one question, under letters
(recpeft.tasks.choice): its scores are each candidate's probability of being the one chosen (they sum to 1
over the list), and it takes at most as many candidates per request as it was trained on (1 + its
--negatives, at most 20): a reranker for a short list, not for a whole catalogue.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from recpeft.adapter_meta import AdapterMeta, read_meta
from recpeft.artifacts import check_adapter_dir
from recpeft.data.schema import Item
from recpeft.domains import get_domain
from recpeft.errors import UserError
from recpeft.evaluation.scoring import all_answer_logits
from recpeft.serving.bank import AdapterBank
from recpeft.serving.prefix import (
    SENTINEL,
    cached_answer_logits,
    cached_answer_logits_many,
    naive_answer_logits,
    split_prompt,
)
from recpeft.tasks.batches import Encoded
from recpeft.tasks.profiles import as_profile
from recpeft.tasks.prompts import (
    CHOICE_SYSTEM,
    RATING_ANSWERS,
    RATING_SYSTEM,
    TEXT_SYSTEM,
    answer_token_ids,
    choice_message,
    interests_message,
    pitch_message,
    profile_message,
    rating_message,
    render,
)

ItemLike = str | Item
HistoryEntry = str | Item | tuple[ItemLike, bool] | tuple[ItemLike, float]
Profile = str | Mapping[str, object]


@dataclass(frozen=True)
class Prepared:
    """One scoring request, tokenised: the prompt prefix shared by its items, and each item's suffix. For a
    choice adapter the prefix is the whole question and each item's suffix is empty."""

    prefix_ids: list[int]
    suffixes: list[list[int]]


@dataclass(frozen=True)
class Rated:
    """One normalised history entry."""

    item: Item
    liked: bool
    rating: float | None = None


def as_item(x: ItemLike) -> Item:
    """A title becomes an Item whose id is the title; an Item passes through."""
    if isinstance(x, Item):
        return x
    if isinstance(x, str) and x.strip():
        return Item(item_id=x.strip(), title=x.strip())
    raise UserError(f"an item must be a non-empty title or an Item, got {x!r}")


def as_history(history: Sequence[HistoryEntry]) -> list[Rated]:
    """Normalise history entries (see the module docstring for the accepted forms)."""
    out = []
    for entry in history:
        if isinstance(entry, tuple):
            if len(entry) != 2:
                raise UserError(f"a history entry tuple is (item, liked) or (item, rating), got {entry!r}")
            item, mark = entry
            if isinstance(mark, bool):
                out.append(Rated(as_item(item), mark))
            elif isinstance(mark, (int, float)) and 1 <= mark <= 5:
                out.append(Rated(as_item(item), mark > 3, float(mark)))
            else:
                raise UserError(f"a history mark is True/False or a rating from 1 to 5, got {mark!r}")
        else:
            out.append(Rated(as_item(entry), True))
    return out


class Recommender:
    """One adapter on a (possibly shared) base model. Build with `recpeft.load` or `recpeft.load_many`."""

    def __init__(self, bank: AdapterBank, name: str, path: Path, meta: AdapterMeta, tokenizer):
        self.bank, self.name, self.path, self.meta, self.tokenizer = bank, name, path, meta, tokenizer
        # --fusion adapters: items carry their soft-token markers, which this tokenizer turns into ids
        self.fusion = bank.fusions.get(name)
        if self.fusion is not None:
            self.tokenizer = self.fusion.tokenizer(tokenizer, bank.base)
        self.domain = get_domain(meta.domain)
        self.method: str = meta.method
        self.history_len: int = int(meta.train_config.get("history_len") or 10)
        self.answer_ids: list[int] = list(meta.verbalizer["token_ids"])
        self.choice = meta.task == "choice"  # one multiple-choice question per request (recpeft.tasks.choice)
        self._rating_ids: list[int] | None = None
        self._catalog: list[Item] | None = None

    def __repr__(self) -> str:
        return f"Recommender({self.name!r}, domain={self.domain.name!r}, method={self.method!r}, path='{self.path}')"

    def _item(self, x: ItemLike) -> Item:
        """The item as prompts show it (with its soft-token marker for a --fusion adapter)."""
        item = as_item(x)
        return self.fusion.mark(item) if self.fusion is not None else item

    def _recent(self, history: Sequence[HistoryEntry]) -> list[Rated]:
        rated = as_history(history)
        rated = rated[-self.history_len:] if self.history_len else []
        return [Rated(self._item(r.item), r.liked, r.rating) for r in rated] if self.fusion is not None else rated

    def _liked_disliked(self, history: Sequence[HistoryEntry]) -> tuple[list[Item], list[Item]]:
        """The items of the recent history the prompts show, split into liked and disliked."""
        rated = self._recent(history)
        return [r.item for r in rated if r.liked], [r.item for r in rated if not r.liked]

    def _preference_split(self, history: Sequence[HistoryEntry], profile: Profile | None = None,
                          critiques: Sequence[str] = ()):
        message = profile_message(None if profile is None else as_profile(profile), *self._liked_disliked(history),
                                  Item(SENTINEL, SENTINEL), self.domain, tuple(critiques))
        return split_prompt(self.tokenizer, render(self.tokenizer, message))

    def _logits(self, split, items: Sequence[ItemLike], answer_ids: list[int], naive: bool,
                batch_size: int) -> torch.Tensor:
        suffixes = [split.suffix_ids(self.tokenizer, self._item(x).text()) for x in items]
        run = naive_answer_logits if naive else cached_answer_logits
        with self.bank.use(self.name) as model:
            return run(model, split.prefix_ids, suffixes, answer_ids, self.tokenizer.pad_token_id, batch_size)

    def prepare(self, history: Sequence[HistoryEntry], items: Sequence[ItemLike], profile: Profile | None = None,
                critiques: Sequence[str] = ()) -> Prepared:
        """Tokenise a scoring request (raises UserError for a bad one), for `score_prepared`. critiques: a
        session's free-text requests ("less violent"), shown after the history (recpeft.serving.session)."""
        if not items:
            raise UserError("no items to score")
        if self.choice:
            return self._choice_question(history, items, profile, critiques)
        split = self._preference_split(history, profile, critiques)
        return Prepared(split.prefix_ids, [split.suffix_ids(self.tokenizer, self._item(x).text()) for x in items])

    def _choice_question(self, history: Sequence[HistoryEntry], items: Sequence[ItemLike], profile: Profile | None,
                         critiques: Sequence[str]) -> Prepared:
        """A choice adapter's request: the whole question, the items under letters in the order given."""
        if len(items) > len(self.answer_ids):
            raise UserError(f"adapter '{self.name}' (task choice) ranks at most {len(self.answer_ids)} candidates in "
                            f"one question, got {len(items)}; cut the list first (e.g. to a retrieval model's top "
                            f"{len(self.answer_ids)})")
        message = choice_message(*self._liked_disliked(history), [self._item(x) for x in items], self.domain,
                                 tuple(critiques), None if profile is None else as_profile(profile))
        ids = self.tokenizer(render(self.tokenizer, message, CHOICE_SYSTEM), add_special_tokens=False)["input_ids"]
        return Prepared(ids, [[] for _ in items])

    def score_prepared(self, requests: Sequence[Prepared], batch_size: int = 64, interrupt=None) -> list[list[float]]:
        """P(like / click) for several prepared requests, computed together (one batched cached-prefix
        call); for a choice adapter, each item's probability of being chosen, one forward per request.
        interrupt: see `AdapterBank.use`."""
        if self.choice:
            rows = [Encoded(r.prefix_ids, 0) for r in requests]
            with self.bank.use(self.name, interrupt) as model:
                logits = all_answer_logits(model, rows, self.answer_ids, self.tokenizer.pad_token_id, batch_size)
            return [torch.softmax(row[: len(r.suffixes)], dim=-1).tolist() for row, r in zip(logits, requests)]
        with self.bank.use(self.name, interrupt) as model:
            logits = cached_answer_logits_many(model, [(r.prefix_ids, r.suffixes) for r in requests],
                                               self.answer_ids, self.tokenizer.pad_token_id, batch_size)
        return [torch.softmax(x, dim=-1)[:, -1].tolist() for x in logits]

    def score_many(self, requests: Sequence[tuple[Sequence[HistoryEntry], Sequence[ItemLike]]],
                   batch_size: int = 64) -> list[list[float]]:
        """`score` for several (history, items) requests at once: the same probabilities as scoring each
        alone (to float rounding), in fewer, larger forwards."""
        return self.score_prepared([self.prepare(h, items) for h, items in requests], batch_size)

    def score(self, history: Sequence[HistoryEntry], items: Sequence[ItemLike], batch_size: int = 64,
              naive: bool = False, profile: Profile | None = None) -> list[float]:
        """P(the user likes / clicks each item), in the items' order.

        The history prefix is encoded once and its KV cache reused for every item; naive=True runs the
        reference path instead (a full forward per item, `batch_size` rows at a time). profile: the user's
        self-description, shown before the history (see the module docstring).
        """
        if naive and not self.choice:  # a choice question has one path: a single forward
            if not items:
                raise UserError("no items to score")
            logits = self._logits(self._preference_split(history, profile), items, self.answer_ids, True, batch_size)
            return torch.softmax(logits, dim=-1)[:, -1].tolist()
        return self.score_prepared([self.prepare(history, items, profile)], batch_size)[0]

    def rank(self, history: Sequence[HistoryEntry] = (), candidates: Sequence[ItemLike] = (), k: int = 10,
             batch_size: int = 64, profile: Profile | None = None) -> list[tuple[Item, float]]:
        """The k candidates the user is most likely to like, best first, as (item, probability).
        A user without history can be given by `profile` alone (cold start)."""
        if not candidates:
            raise UserError("the candidate list is empty; give at least one item to rank")
        if k < 1:
            raise UserError(f"k must be at least 1, got {k}")
        items = [as_item(c) for c in candidates]
        probs = self.score(history, items, batch_size=batch_size, profile=profile)
        order = sorted(range(len(items)), key=lambda i: -probs[i])  # stable: ties keep input order
        return [(items[i], probs[i]) for i in order[:k]]

    def session(self, candidates: Sequence[ItemLike] | None = None, history: Sequence[HistoryEntry] = (),
                profile: Profile | None = None, k: int = 5):
        """An interactive session (recpeft.serving.session.Session): recommend, take accept / reject /
        critique feedback, recommend again. candidates: default the adapter's catalogue."""
        from recpeft.serving.session import Session

        return Session(self, self.catalog() if candidates is None else candidates, history, profile, k)

    def predict_rating(self, history: Sequence[HistoryEntry], item: ItemLike) -> float:
        """Expected 1-5 rating: the softmax over the digit tokens 1..5 at the answer position, averaged.

        History entries without a rating count as 5 (liked) or 1 (disliked). An adapter trained on the
        preference task answers this rating prompt zero-shot.
        """
        rated = self._recent(history)
        pairs = [(r.item, r.rating if r.rating is not None else (5.0 if r.liked else 1.0)) for r in rated]
        message = rating_message(pairs, Item(SENTINEL, SENTINEL), self.domain)
        split = split_prompt(self.tokenizer, render(self.tokenizer, message, RATING_SYSTEM))
        if self._rating_ids is None:
            try:
                self._rating_ids = answer_token_ids(self.tokenizer, RATING_ANSWERS)
            except ValueError as exc:
                raise UserError(f"this base model's tokenizer cannot answer ratings: {exc}") from None
        probs = torch.softmax(self._logits(split, [item], self._rating_ids, False, 1)[0], dim=-1)
        return float((probs * torch.arange(1, 6, dtype=probs.dtype)).sum())

    @torch.no_grad()
    def generate(self, message: str, max_new_tokens: int) -> str:
        """Greedy continuation of a user message (system: TEXT_SYSTEM) through this adapter."""
        ids = self.tokenizer(render(self.tokenizer, message, TEXT_SYSTEM), add_special_tokens=False,
                             return_tensors="pt")
        with self.bank.use(self.name) as model:
            device = next(model.parameters()).device
            out = model.generate(input_ids=ids["input_ids"].to(device), attention_mask=ids["attention_mask"].to(device),
                                 max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                                 pad_token_id=self.tokenizer.pad_token_id)
        return self.tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()

    def interests(self, history: Sequence[HistoryEntry], n: int = 3, max_new_tokens: int = 24) -> str:
        """A short text profile: the user's n favourite categories, as the model names them."""
        return self.generate(interests_message(*self._liked_disliked(history), self.domain, n), max_new_tokens)

    def pitch(self, history: Sequence[HistoryEntry], item: ItemLike, max_new_tokens: int = 48) -> str:
        """One short personalised sentence recommending item to this user."""
        liked = [r.item for r in self._recent(history) if r.liked]
        return self.generate(pitch_message(liked, self._item(item), self.domain), max_new_tokens)

    def catalog(self) -> list[Item]:
        """The items of the data this adapter was trained on (the embedded sample when none was given)."""
        if self._catalog is None:
            from recpeft.data import load_data

            tc = self.meta.train_config
            data = load_data(self.domain.name, tc.get("data"), tc.get("format"), tc.get("on_bad_rows", "fail"))
            self._catalog = list(getattr(data, "items", {}).values())
        return self._catalog

    def lookup(self, titles: Sequence[str]) -> list[Item]:
        """Catalogue items for titles (case-insensitive); unknown titles become bare Items."""
        by_title = {i.title.lower(): i for i in self.catalog()}
        return [by_title.get(t.strip().lower(), None) or as_item(t) for t in titles]


class RecommenderSet(Mapping[str, Recommender]):
    """Recommenders for several adapters on ONE base model; each call switches to its adapter."""

    def __init__(self, recommenders: dict[str, Recommender], bank: AdapterBank, base_name: str):
        self._recs, self.bank, self.base_name = recommenders, bank, base_name

    def __getitem__(self, name: str) -> Recommender:
        if name not in self._recs:
            raise UserError(f"unknown domain '{name}'; loaded: {', '.join(self._recs) or '(none)'}")
        return self._recs[name]

    def get(self, name: str, default=None):
        return self._recs.get(name, default)

    def __contains__(self, name: object) -> bool:
        return name in self._recs

    def __iter__(self) -> Iterator[str]:
        return iter(self._recs)

    def __len__(self) -> int:
        return len(self._recs)


def _bits(meta: AdapterMeta) -> int:
    from recpeft.models.load import resolve_bits

    return int(meta.metrics.get("bits") or resolve_bits(int(meta.train_config.get("bits") or 0)))


def load_many(paths: Mapping[str, str | Path], device: str | None = None, bits: int | None = None,
              force: bool = False, item_features: Mapping[str, str | Path] | None = None) -> RecommenderSet:
    """Load several adapters onto one shared base model: `{"news": "adapters/news", ...}`.

    Every adapter must record the same base model. bits: the base precision (default: the precision the
    first adapter was trained at). force: load adapters whose base fingerprint differs, with a warning.
    item_features: {name: feature file} for adapters trained with --fusion file whose file has moved
    (default: the path recpeft.json records; either way its fingerprint must match).
    """
    from recpeft.methods import check_base
    from recpeft.models.load import load_base

    if not paths:
        raise UserError("no adapters given")
    metas = {}
    for name, path in paths.items():
        check_adapter_dir(Path(path))
        metas[name] = read_meta(Path(path))
    first = next(iter(metas))
    want = metas[first].base_model
    for name, meta in metas.items():
        have = meta.base_model
        if have.fingerprint != want.fingerprint and not force:
            raise UserError(f"adapters '{first}' and '{name}' were trained on different base models "
                            f"('{want.name}' {want.fingerprint} vs '{have.name}' {have.fingerprint}); "
                            "load them separately")
    bits = bits or _bits(metas[first])
    base, tok, _ = load_base(want.name, bits=bits, device=device)  # default: the GPU when there is one
    for path in paths.values():
        check_base(base, path, tok, force)
    from recpeft.fusion.fusion import Fusion

    fusions = {name: Fusion.load(paths[name], meta.fusion, (item_features or {}).get(name))
               for name, meta in metas.items() if meta.fusion}
    bank = AdapterBank(base, {name: Path(p) for name, p in paths.items()}, fusions)
    recs = {name: Recommender(bank, name, Path(paths[name]), metas[name], tok) for name in paths}
    return RecommenderSet(recs, bank, want.name)


def load(path: str | Path, device: str | None = None, bits: int | None = None, force: bool = False,
         item_features: str | Path | None = None) -> Recommender:
    """Load one adapter folder (any method) on the base model its recpeft.json names. item_features: see
    `load_many`."""
    name = Path(path).name or "adapter"
    features = {name: item_features} if item_features else None
    return next(iter(load_many({name: path}, device, bits, force, features).values()))


def load_dir(folder: str | Path, **kwargs) -> RecommenderSet:
    """Every adapter folder (one holding recpeft.json) directly under folder, named by its folder name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError("adapters folder not found", str(folder))
    found = {p.name: p for p in sorted(folder.iterdir()) if (p / "recpeft.json").is_file()}
    if not found:
        raise UserError("no adapter folders (with recpeft.json) in here", str(folder))
    return load_many(found, **kwargs)
