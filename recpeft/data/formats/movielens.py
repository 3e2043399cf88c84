"""MovieLens 100k (u.data, u.item, u.user; optional u.genre) and 1M (ratings.dat, movies.dat, users.dat).

Files are latin-1 as GroupLens ships them (UTF-8 copies read too). Genres become Item.categories
(100k: the 19 flags of u.item, "unknown" left out; 1M: the pipe list of movies.dat). User
attributes go to RecData.users. Ratings must name a movie of the item file and be 1-5.
"""

from __future__ import annotations

from pathlib import Path

from recpeft.data.rows import BadRows, RowError, fields, lines, text_of, to_int, to_rating
from recpeft.data.schema import Interaction, Item, RecData
from recpeft.errors import UserError

VERSION = 1
ENC = "utf-8|latin-1"
GENRES_100K = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
               "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
               "War", "Western")
EXPECTS = "u.data + u.item (MovieLens 100k) or ratings.dat + movies.dat (MovieLens 1M)"


def _is_1m(folder: Path) -> bool:
    return (folder / "ratings.dat").is_file()


def detect(path: Path) -> bool:
    return path.is_dir() and ((path / "u.data").is_file() and (path / "u.item").is_file()
                              or (path / "ratings.dat").is_file() and (path / "movies.dat").is_file())


def sources(path: Path) -> list[Path]:
    if not path.is_dir():
        raise UserError(f"--format movielens needs a folder with {EXPECTS}", str(path))
    names = ("ratings.dat", "movies.dat", "users.dat") if _is_1m(path) else ("u.data", "u.item", "u.user", "u.genre")
    for required in names[:2]:
        if not (path / required).is_file():
            raise UserError(f"MovieLens folder lacks {required} (expected {EXPECTS})", str(path))
    return [path / n for n in names if (path / n).is_file()]


def load(path: Path, bad: BadRows) -> RecData:
    is_1m = _is_1m(path)
    sep = "::" if is_1m else "|"
    items = _movies_1m(path / "movies.dat", bad) if is_1m else _items_100k(path, bad)
    users_file = path / ("users.dat" if is_1m else "u.user")
    users = _users(users_file, sep, is_1m, bad) if users_file.is_file() else {}
    ratings = path / ("ratings.dat" if is_1m else "u.data")
    interactions = []
    for n, text in lines(ratings, bad, ENC):
        with bad.at(ratings, n):
            parts = fields(text, "::" if is_1m else "\t", 4, "user, movie, rating, timestamp")
            user, movie = text_of(parts[0], "user id"), text_of(parts[1], "movie id")
            if movie not in items:
                raise RowError(f"movie id '{movie}' is not in {'movies.dat' if is_1m else 'u.item'}")
            interactions.append(Interaction(user, movie, to_int(parts[3], "timestamp"), to_rating(parts[2])))
    stats = {"rows": len(interactions)}
    bad.report(f"movielens {path}", stats)
    if not interactions:
        raise UserError("no usable ratings", str(ratings))
    interactions.sort(key=lambda x: (x.user_id, x.timestamp, x.item_id))
    return RecData(f"movielens-{'1m' if is_1m else '100k'}:{path.name}", items, interactions, users, stats)


def _genre_names(path: Path, bad: BadRows) -> tuple[str, ...]:
    """u.genre ("Action|1"), when present; else the standard 19 genres."""
    genre_file = path / "u.genre"
    if not genre_file.is_file():
        return GENRES_100K
    names: dict[int, str] = {}
    for n, text in lines(genre_file, bad, ENC):
        with bad.at(genre_file, n):
            name, index = fields(text, "|", 2, "genre, index")[:2]
            names[to_int(index, "genre index")] = name.strip()
    return tuple(names.get(i, "") for i in range(max(names, default=-1) + 1))


def _items_100k(path: Path, bad: BadRows) -> dict[str, Item]:
    genres = _genre_names(path, bad)
    item_file, items = path / "u.item", {}
    for n, text in lines(item_file, bad, ENC):
        with bad.at(item_file, n):
            parts = fields(text, "|", 5 + len(genres), "id, title, date, video date, url, genre flags")
            movie, title = text_of(parts[0], "movie id"), text_of(parts[1], "title")
            flags = parts[5:5 + len(genres)]
            if any(f not in ("0", "1") for f in flags):
                raise RowError("genre flags must be 0 or 1")
            cats = tuple(g for g, f in zip(genres, flags) if f == "1" and g and g != "unknown")
            if movie in items:
                raise RowError(f"duplicate movie id '{movie}'")
            items[movie] = Item(movie, title, categories=cats)
    if not items:
        raise UserError("no usable movies", str(item_file))
    return items


def _movies_1m(movie_file: Path, bad: BadRows) -> dict[str, Item]:
    items = {}
    for n, text in lines(movie_file, bad, ENC):
        with bad.at(movie_file, n):
            movie, title, genres = fields(text, "::", 3, "id, title, genres")[:3]
            movie, title = text_of(movie, "movie id"), text_of(title, "title")
            if movie in items:
                raise RowError(f"duplicate movie id '{movie}'")
            cats = tuple(g.strip() for g in genres.split("|") if g.strip() and g.strip() != "(no genres listed)")
            items[movie] = Item(movie, title, categories=cats)
    if not items:
        raise UserError("no usable movies", str(movie_file))
    return items


def _users(user_file: Path, sep: str, is_1m: bool, bad: BadRows) -> dict[str, dict[str, str]]:
    keys = ("gender", "age", "occupation", "zip") if is_1m else ("age", "gender", "occupation", "zip")
    users = {}
    for n, text in lines(user_file, bad, ENC):
        with bad.at(user_file, n):
            parts = fields(text, sep, 5, "user, " + ", ".join(keys))
            users[text_of(parts[0], "user id")] = dict(zip(keys, (p.strip() for p in parts[1:5])))
    return users
