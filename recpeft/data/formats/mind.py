"""MIND (Microsoft News): news.tsv + behaviors.tsv.

news.tsv: id, category, subcategory, title, abstract, url, title entities, abstract entities
(tab-separated, no header). The title is Item.title, the category Item.category, the abstract
(cut to 300 characters) Item.description.

behaviors.tsv: impression id, user id, time ("11/12/2019 2:14:46 PM", read as UTC), history
(space-separated clicked ids), impressions ("N123-1 N456-0": shown ids with click 1 / 0).
Every impression becomes one Interaction per shown article with click 1 or 0, at the impression
time. A user's history (taken from their earliest impression) becomes clicks one second apart,
ending one second before that impression, added once per user.
Ids missing from news.tsv (common in samples) are dropped, not errors; both counts are kept in
RecData.stats and said on stderr. Malformed ids, labels and times are bad rows.
"""

from __future__ import annotations

import calendar
import re
import time
from pathlib import Path

from recpeft.data.rows import BadRows, RowError, fields, lines, note, text_of
from recpeft.data.schema import Interaction, Item, RecData
from recpeft.errors import UserError

VERSION = 1
NEWS_ID = re.compile(r"^N\d+$")
TIME_FORMAT = "%m/%d/%Y %I:%M:%S %p"


def detect(path: Path) -> bool:
    return path.is_dir() and (path / "news.tsv").is_file() and (path / "behaviors.tsv").is_file()


def sources(path: Path) -> list[Path]:
    if not detect(path):
        raise UserError("--format mind needs a folder with news.tsv and behaviors.tsv", str(path))
    return [path / "news.tsv", path / "behaviors.tsv"]


def _news(file: Path, bad: BadRows) -> dict[str, Item]:
    items = {}
    for n, text in lines(file, bad):
        with bad.at(file, n):
            parts = fields(text, "\t", 5, "id, category, subcategory, title, abstract")
            news_id, category = text_of(parts[0], "news id"), parts[1].strip()
            if not NEWS_ID.match(news_id):
                raise RowError(f"news id '{news_id}' is not N followed by digits")
            items[news_id] = Item(news_id, text_of(parts[3], "title"), category, description=parts[4].strip()[:300])
    return items


def _ids(tokens: str) -> list[str]:
    ids = tokens.split()
    for token in ids:
        if not NEWS_ID.match(token):
            raise RowError(f"history id '{token}' is not N followed by digits")
    return ids


def _impressions(tokens: str) -> list[tuple[str, int]]:
    out = []
    for token in tokens.split():
        news_id, _, label = token.rpartition("-")
        if not NEWS_ID.match(news_id) or label not in ("0", "1"):
            raise RowError(f"impression '{token}' is not <news id>-<0|1>")
        out.append((news_id, int(label)))
    return out


def load(path: Path, bad: BadRows) -> RecData:
    news_file, behaviors = sources(path)
    items = _news(news_file, bad)
    shown: list[tuple[str, int, list[tuple[str, int]]]] = []
    first: dict[str, tuple[int, list[str]]] = {}  # user -> (earliest impression time, its history)
    for n, text in lines(behaviors, bad):
        with bad.at(behaviors, n):
            parts = fields(text, "\t", 5, "impression id, user, time, history, impressions")
            user = text_of(parts[1], "user id")
            try:
                ts = calendar.timegm(time.strptime(parts[2].strip(), TIME_FORMAT))
            except ValueError:
                raise RowError(f"time '{parts[2][:40]}' is not like 11/12/2019 2:14:46 PM") from None
            history, impressions = _ids(parts[3]), _impressions(parts[4])
            if not impressions:
                raise RowError("no impressions")
            shown.append((user, ts, impressions))
            if user not in first or ts < first[user][0]:
                first[user] = (ts, history)
    interactions, counts = [], {"history_ids": 0, "history_ids_dropped": 0, "impression_ids": 0,
                                "impression_ids_dropped": 0}
    for user, (ts, history) in first.items():
        counts["history_ids"] += len(history)
        for k, news_id in enumerate(history):
            if news_id in items:
                interactions.append(Interaction(user, news_id, ts - len(history) + k, click=1))
            else:
                counts["history_ids_dropped"] += 1
    for user, ts, impressions in shown:
        counts["impression_ids"] += len(impressions)
        for news_id, label in impressions:
            if news_id in items:
                interactions.append(Interaction(user, news_id, ts, click=label))
            else:
                counts["impression_ids_dropped"] += 1
    stats = {"rows": len(shown), **counts}
    if counts["history_ids_dropped"] or counts["impression_ids_dropped"]:
        note(stats, f"mind {path.name}: dropped {counts['history_ids_dropped']:,} of {counts['history_ids']:,} "
             f"history ids and {counts['impression_ids_dropped']:,} of {counts['impression_ids']:,} "
             "impression ids not in news.tsv")
    bad.report(f"mind {path.name}", stats)
    if not interactions:
        raise UserError("no behaviour left: no history or impression id is in news.tsv", str(behaviors))
    interactions.sort(key=lambda x: (x.user_id, x.timestamp, x.item_id))
    return RecData(f"mind:{path.name}", items, interactions, stats=stats)
