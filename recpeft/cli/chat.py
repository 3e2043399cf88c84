"""`recpeft chat`: an interactive recommendation session in the terminal (recpeft.serving.session).

    $ recpeft chat --adapter adapters/video --history "Toy Story (1995); Fargo (1996)"
     1. 0.912  Star Wars (1977)  (Action, Adventure, Romance, Sci-Fi, War)
     ...
    > -1                 reject recommendation 1      > +2    accept recommendation 2
    > something funnier  any other text is a critique > n     next page   > q   quit

Each line is one action; every action but `q` and `?` shows the next recommendations. A user error
(an unknown number, an empty critique) prints one line and the session goes on.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from recpeft.errors import ERROR_PREFIX, UserError

HELP = ("+N accept recommendation N, -N reject it, n (or an empty line) next recommendations, "
        "any other text: a critique (e.g. 'something shorter'), ? this help, q quit")


def chat(
    adapter: Path = typer.Option(..., "--adapter", "-a", help="Adapter folder (from `recpeft train`)."),
    history: str | None = typer.Option(None, "--history", help="The user's items so far, oldest first, separated "
                                          "by ';'; '-' before a title marks a dislike."),
    profile: str | None = typer.Option(None, "--profile", help="A description of the user (cold start), e.g. "
                                          "\"I am a 25-year-old woman. I like Sci-Fi.\""),
    candidates: Path | None = typer.Option(None, "--candidates", help="File of candidates (one title per line, "
                                              "or a CSV with a 'title' column) [default: the adapter's catalogue]."),
    k: int = typer.Option(5, "-k", "--top-k", min=1, help="Recommendations per turn."),
    bits: int | None = typer.Option(None, "--bits", help="Base precision [default: as trained]."),
    force: bool = typer.Option(False, "--force", help="Load an adapter trained on another base anyway."),
) -> None:
    """Talk to an adapter: it recommends, you accept, reject or say what you want instead."""
    from recpeft.cli.inputs import history_entries, profile_text, read_candidates
    from recpeft.serving.recommender import load

    profile = profile_text(profile)
    items = read_candidates(candidates) if candidates is not None else None
    rec = load(adapter, bits=bits, force=force)
    session = rec.session(items, history_entries(rec, history), profile, k)
    print(f"recpeft chat: {rec.domain.name} adapter ({rec.method}) over {len(session.candidates)} candidates. {HELP}")
    show(session.recommend())
    for line in _lines():
        command = line.strip()
        if command.lower() in ("q", "quit", "exit"):
            break
        if command == "?":
            print(HELP)
            continue
        try:
            if command.lower() in ("", "n", "next"):
                pass
            elif command[0] in "+-" and command[1:].strip().isdigit():
                item = (session.accept if command[0] == "+" else session.reject)(int(command[1:]))
                print(f"{'accepted' if command[0] == '+' else 'rejected'}: {item.title}")
            else:
                print(f"noted: {session.critique(command)}")
            show(session.recommend())
        except UserError as exc:
            print(f"{ERROR_PREFIX}{exc}")
    print(f"bye: {session.turns} turns")


def _lines():
    """Input lines until end of input; a prompt on a terminal."""
    while True:
        try:
            yield input("> ")
        except EOFError:
            print()
            return


def show(ranked) -> None:
    if not ranked:
        print("(no candidates left)")
        return
    for n, (item, score) in enumerate(ranked, start=1):
        category = f"  ({item.category})" if item.category else ""
        print(f"{n:>2}. {score:.3f}  {item.title}{category}")
    sys.stdout.flush()
