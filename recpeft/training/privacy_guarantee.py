"""What a differentially private adapter guarantees: group privacy (example -> user level), the
composition of combined adapters (`recpeft merge --combine`), and the words of model cards and summaries.

Pure arithmetic on the records training/privacy.py writes (opacus' accountant computed ε₀; nothing here
accounts for privacy itself). The derivations are in docs/privacy.md.
"""

from __future__ import annotations

import math
from typing import Any

from recpeft.errors import UserError

UNITS = ("example", "user")  # what one neighbouring data set adds or removes: one training example, one user
GROUP_PRIVACY = "group privacy (Dwork & Roth 2014, Theorem 2.2, with the delta term): epsilon = K epsilon0, " \
                "delta = K exp((K-1) epsilon0) delta0"


def group_privacy(epsilon: float, delta: float, k: int) -> tuple[float, float]:
    """(ε, δ)-DP for one example implies (k·ε, k·e^((k-1)·ε)·δ)-DP for data sets that differ in k examples:
    chain k neighbouring steps, P0 <= e^ε P1 + δ <= ... <= e^(kε) Pk + δ·(1 + e^ε + ... + e^((k-1)ε)), and
    bound the sum by k·e^((k-1)ε) (docs/privacy.md)."""
    return k * epsilon, k * math.exp((k - 1) * epsilon) * delta


def example_target(epsilon: float, delta: float, k: int) -> tuple[float, float]:
    """The example-level (ε₀, δ₀) whose group privacy for k examples is exactly the user-level (ε, δ):
    ε₀ = ε / k, δ₀ = δ / (k·e^((k-1)·ε₀)). k = 1 leaves (ε, δ) as it is."""
    epsilon0 = epsilon / k
    return epsilon0, delta / (k * math.exp((k - 1) * epsilon0))


def card_section(record: dict[str, Any] | None) -> str:
    """The model card's paragraph on differential privacy ('' for a run without it)."""
    if not record:
        return ""
    table = (f"| unit | noise multiplier | clipping norm | sampling rate | steps |\n|---|---|---|---|---|\n"
             f"| {record.get('unit', 'example')} | {record['noise_multiplier']:.4g} | {record['max_grad_norm']:g} | "
             f"{record['sample_rate']:.4g} | {record['steps']} |\n")
    if record.get("unit") == "user":
        k = record["max_examples_per_user"]
        return (f"\n## Differential privacy\n\nTrained with {record['mechanism']}. Guarantee: "
                f"({record['epsilon_spent']:.3g}, {record['delta']:.3g})-differential privacy at the level of one "
                f"**user**: adding or removing all of one user's data changes the distribution of this adapter by "
                f"at most that much. Each of the {record['users']} users kept at most {k} training examples "
                f"(a seeded choice; {record['training_examples']} training examples in all). The "
                f"{record['accountant'].upper()} accountant gives ({record['example_epsilon_spent']:.3g}, "
                f"{record['example_delta']:.3g})-DP per training example; group privacy for {k} examples turns "
                f"that into ε = {k}·ε₀ and δ = {k}·e^(({k}-1)·ε₀)·δ₀ ≤ {record['delta']:.3g} per user. Target ε "
                f"{record['epsilon_target']:g} per user. Validation and test data have no guarantee.\n\n" + table)
    return (f"\n## Differential privacy\n\nTrained with {record['mechanism']}. Guarantee: "
            f"({record['epsilon_spent']:.3g}, {record['delta']:.3g})-differential privacy at the level of one "
            f"training **example** (a prompt and its label) of the {record['training_examples']} training examples, "
            f"{record['accountant'].upper()} accountant, target ε {record['epsilon_target']:g}. Not user-level: a "
            "user with k examples, or one interaction that also appears in the history of later examples, is covered "
            "only by group privacy (about k·ε); --dp-max-examples-per-user gives a user-level guarantee. Validation "
            "and test data have no guarantee.\n\n" + table)


def _per_example(record: dict[str, Any]) -> tuple[float, float]:
    """A record's example-level (ε, δ): a user-level guarantee comes from one per example (records written
    before user-level DP have only the example-level fields)."""
    return (record.get("example_epsilon_spent", record["epsilon_spent"]),
            record.get("example_delta", record["delta"]))


def compose(paths, metas: list) -> dict[str, Any] | None:
    """The guarantee of a weighted combination of adapters (`recpeft merge --combine`), by basic
    composition: ε = Σ εᵢ, δ = Σ δᵢ. A combination is post-processing of the adapters it reads, so this
    holds for one unit whether it was in one source's training data, several or all; for sources trained
    on disjoint data the largest εᵢ would hold, which recpeft cannot verify. None when no source is
    private; a mix of private and non-private sources is refused (the result has no guarantee).

    metas: the sources' recpeft.json (dicts, or objects with a `privacy` attribute).
    Units: user-level sources compose per user (ε of the users' guarantees summed, whatever each source's
    K). Sources of both units compose at the weaker unit, per example: a user-level source is also
    (ε₀, δ₀)-DP per example (the accountant's own numbers), an example-level source gives nothing per user."""
    records = [m.get("privacy") if isinstance(m, dict) else getattr(m, "privacy", None) for m in metas]
    if not any(records):
        return None
    plain = [str(p) for p, r in zip(paths, records) if not r]
    if plain:
        raise UserError(f"cannot combine differentially private adapters with {', '.join(plain)}, which has no "
                        "privacy guarantee: the combination would have none either")
    units = [r.get("unit", "example") for r in records]
    unknown = sorted(set(units) - set(UNITS))
    if unknown:
        raise UserError(f"cannot combine adapters whose privacy guarantee has the unknown unit '{unknown[0]}'")
    unit = "user" if set(units) == {"user"} else "example"
    terms = [(r["epsilon_spent"], r["delta"]) if unit == "user" else _per_example(r) for r in records]
    how = "basic: epsilon and delta are the sums of the sources'"
    if len(set(units)) > 1:
        how += ("; the sources mix user- and example-level guarantees, so the combination is stated per example "
                "(a user-level source's example-level epsilon0 and delta0), not per user")
    return {"composition": how, "unit": unit, "user_level": unit == "user",
            "epsilon": sum(e for e, _ in terms), "delta": sum(d for _, d in terms),
            "sources": [{"path": str(p), "unit": u, "max_examples_per_user": r.get("max_examples_per_user", 0),
                         "epsilon_spent": e, "delta": d} for p, r, u, (e, d) in zip(paths, records, units, terms)]}


def composed_card(record: dict[str, Any] | None) -> str:
    """The combined adapter's model-card paragraph on privacy ('' when no source was private)."""
    if not record:
        return ""
    if record.get("unit") == "user":
        caps = sorted({s["max_examples_per_user"] for s in record["sources"]})
        return (f"\n## Differential privacy\n\n({record['epsilon']:.3g}, {record['delta']:.3g})-differential privacy "
                "per **user**, by basic composition of the sources' user-level guarantees (ε and δ summed; each "
                f"source kept at most {' / '.join(map(str, caps))} training examples per user): valid whether the "
                "sources were trained on the same, overlapping or disjoint users (for disjoint users the largest "
                "source ε would hold, which recpeft cannot check).\n")
    mixed = len({s["unit"] for s in record["sources"]}) > 1
    return (f"\n## Differential privacy\n\n({record['epsilon']:.3g}, {record['delta']:.3g})-differential privacy "
            "per training **example**, by basic composition of the sources' guarantees (ε and δ summed): valid "
            "whether the sources were trained on the same, overlapping or disjoint data (for disjoint data the "
            "largest source ε would hold, which recpeft cannot check). Not user-level"
            + (": some sources are user-level and others example-level, so the weaker unit is stated, with the "
               "user-level sources' example-level ε₀ and δ₀.\n" if mixed else ".\n"))


def guarantee_words(record: dict[str, Any]) -> str:
    """How a summary line names the unit: 'per training example' or 'per user (at most K examples each)'."""
    if record.get("unit") == "user":
        k = record.get("max_examples_per_user")
        return f"per user (at most {k} training examples each)" if k else "per user"
    return "per training example"
