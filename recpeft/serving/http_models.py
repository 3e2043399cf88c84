"""The HTTP API's request and response vocabulary (pydantic), shared by http.py and http_sessions.py.

Every text is stripped and bounded, every list bounded, and unknown fields are refused (422), so a
request's size and shape are checked before any model work.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Discriminator, Field, StringConstraints, Tag

from recpeft.data.schema import Item

MAX_HISTORY = 50
MAX_CANDIDATES = 500
MAX_BODY_BYTES = 256 * 1024
MAX_TEXT = 300


# pydantic refuses lone surrogates ("\ud800"), which the tokenizer could not encode
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_TEXT)]
ShortText = Annotated[str, StringConstraints(strip_whitespace=True, max_length=MAX_TEXT)]


class ItemIn(BaseModel):
    """An item: its title, and optionally an id and a category (shown in the prompt, as in training)."""

    model_config = ConfigDict(extra="forbid")
    title: Text
    item_id: ShortText | None = None
    category: ShortText = ""


class HistoryIn(ItemIn):
    """A history entry: liked by default; `liked: false` for a dislike, or a 1-5 `rating` (> 3 = liked)."""

    liked: bool | None = None
    rating: Annotated[float, Field(ge=1, le=5, allow_inf_nan=False)] | None = None


def _kind(entry) -> str | None:
    return "text" if isinstance(entry, str) else "item" if isinstance(entry, dict) else None


def _entry(model):
    """A title or an object, told apart by the input's type: errors name the one branch that applies."""
    return Annotated[Annotated[Text, Tag("text")] | Annotated[model, Tag("item")], Discriminator(
        _kind, custom_error_type="entry_type", custom_error_message="Input should be a title (a string) or an "
        "object with a title")]


ItemEntry, HistoryEntry = _entry(ItemIn), _entry(HistoryIn)


class ProfileIn(BaseModel):
    """A new user's profile as fields, worded as the profile task trained on (recpeft/tasks/profiles.py)."""

    model_config = ConfigDict(extra="forbid")  # an unknown field is a 422 naming it
    age: Annotated[int, Field(ge=1, le=120)] | None = None
    gender: ShortText | None = None
    occupation: ShortText | None = None
    likes: Annotated[list[ShortText], Field(max_length=50)] | None = None


ProfileEntry = Annotated[Annotated[Text, Tag("text")] | Annotated[ProfileIn, Tag("item")], Discriminator(
    _kind, custom_error_type="profile_type", custom_error_message="Input should be a profile text (a string) or "
    "an object with age, gender, occupation and likes")]
UNION_TAGS = ("text", "item")  # in an error's location, right after the list index


class UserRequest(BaseModel):
    """Who the user is: their history and/or profile, for one domain's adapter."""

    model_config = ConfigDict(extra="forbid")
    domain: Text
    history: Annotated[list[HistoryEntry], Field(max_length=MAX_HISTORY)] = []
    profile: ProfileEntry | None = None


class ScoreRequest(UserRequest):
    items: Annotated[list[ItemEntry], Field(min_length=1, max_length=MAX_CANDIDATES)]


class RecommendRequest(UserRequest):
    candidates: Annotated[list[ItemEntry], Field(min_length=1, max_length=MAX_CANDIDATES)]
    k: Annotated[int, Field(ge=1, le=MAX_CANDIDATES)] = 10


class Scored(BaseModel):
    item_id: str
    title: str
    category: str
    score: float


def scored(item: Item, score: float) -> Scored:
    return Scored(item_id=item.item_id, title=item.title, category=item.category, score=score)


class ScoreResponse(BaseModel):
    domain: str
    scores: list[float]


class RecommendResponse(BaseModel):
    domain: str
    items: list[Scored]


def to_item(x: str | ItemIn) -> Item:
    if isinstance(x, str):
        return Item(x, x)
    return Item(x.item_id or x.title, x.title, x.category)


def to_profile(profile: str | ProfileIn | None):
    return profile.model_dump(exclude_none=True) if isinstance(profile, ProfileIn) else profile


def to_history(entries: list[str | HistoryIn]) -> list:
    out = []
    for e in entries:
        if isinstance(e, str):
            out.append(e)
        elif e.rating is not None:
            out.append((to_item(e), e.rating))
        else:
            out.append((to_item(e), e.liked is not False))
    return out
