"""Generate the embedded, licence-free (CC0) synthetic samples in recpeft/data/sample/.

    python -m recpeft.data.make_samples            # (re)write the three samples
    python -m recpeft.data.make_samples --check    # print stats and baseline AUCs, write nothing

Every title is built from theme-specific words, so a language model can tell an item's theme
from its text alone; users like two themes and dislike the other six, so "does this look like what the
user liked before?" is learnable. Seeds are fixed: the output is byte-identical on every run.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import tempfile
from pathlib import Path

import numpy as np

SAMPLE_ROOT = Path(__file__).parent / "sample"
START = 1704067200  # 2024-01-01 00:00:00 UTC
DAY = 86400

N_USERS, PER_THEME = 300, 30
LIKED_SHARE = 0.55  # share of a user's picks drawn from their liked themes; the rest anywhere
AFFINITY, QUALITY, NOISE = 1.3, 0.3, 0.45  # latent score = AFFINITY*theme + QUALITY*item + NOISE*eps
CUTS = (-0.4, 0.2, 0.85, 1.7)  # latent score -> rating 1..5; rating >= 4 (score > 0.85) is a like
TEST_LAST = 4  # the check scores each user's last 4 interactions
FEATURE_DIM, FEATURE_NOISE = 16, 0.5  # the synthetic second modality (features.npz, see modality())

# domain -> (id prefix, seed, [(category, templates, {slot: "word|word|..."})])
DOMAINS = {
    "ecommerce": ("P", 101, [
        ("Kitchen", ["{a} {n}"], {"a": "Stainless Steel|Cast Iron|Nonstick|Ceramic|Bamboo|Copper|Enameled",
                                  "n": "Chef's Knife Set|Frying Pan|Sauce Pan|Cutting Board|Mixing Bowl Set|Dutch Oven|Baking Sheet|Spatula Set"}),
        ("Outdoor & Camping", ["{a} {n}"], {"a": "Waterproof|Ultralight|4-Person|Insulated|Collapsible|Rugged|All-Season",
                                            "n": "Camping Tent|Sleeping Bag|Hiking Backpack|Camp Stove|Trekking Poles|LED Headlamp|Camp Chair|Water Filter"}),
        ("Electronics", ["{a} {n}"], {"a": "Wireless|Bluetooth|4K|Noise-Cancelling|USB-C|Smart|Portable",
                                      "n": "Over-Ear Headphones|Desktop Speaker|Gaming Monitor|Charging Dock|HD Webcam|Power Bank|Mechanical Keyboard|Earbud Set"}),
        ("Beauty", ["{a} {n}"], {"a": "Hydrating|Vitamin C|Matte|Rose Water|Hyaluronic|Lavender|Argan Oil",
                                 "n": "Face Serum|Lipstick Set|Night Cream|Facial Cleanser|Hair Mask|Eye Shadow Palette|Body Lotion|Sheet Masks"}),
        ("Toys", ["{a} {n}"], {"a": "Wooden|Plush|Remote Control|Magnetic|Glow-in-the-Dark|Musical|Stackable",
                               "n": "Building Blocks|Teddy Bear|Race Car|Dinosaur Figures|Jigsaw Puzzle|Train Set|Dollhouse Kit|Toy Robot"}),
        ("Books", ["{a} {n}"], {"a": "Hardcover|Paperback|Illustrated|Collector's Edition|Bestselling|Classic|Annotated",
                                "n": "Mystery Novel|Fantasy Trilogy|History of Rome|Poetry Collection|Science Fiction Anthology|Biography of Lincoln|Self-Help Guide|Picture Book"}),
        ("Fitness", ["{a} {n}"], {"a": "Adjustable|Non-Slip|Compact|Heavy-Duty|Foldable|Weighted|Pro",
                                  "n": "Dumbbell Set|Yoga Mat|Resistance Bands|Kettlebell Weight|Jump Rope|Foam Roller|Pull-Up Bar|Exercise Bike"}),
        ("Pet Supplies", ["{a} {n}"], {"a": "Orthopedic|Chew-Proof|Washable|Odor-Control|Reflective|Automatic|Cozy",
                                       "n": "Dog Bed|Cat Litter Box|Dog Leash|Cat Scratching Post|Pet Feeder|Dog Chew Toy|Cat Tree|Pet Carrier"}),
    ]),
    "video": ("V", 202, [
        ("Horror", ["The {n} of {p}"], {"n": "Haunting|Curse|Whispers|Return|Last Night|Possession|Ghosts",
                                        "p": "Raven Hollow|Blackwood Manor|Dead Creek|Grimsby Asylum|Hollow Pines|Crow Island"}),
        ("Comedy", ["{a} {n}"], {"a": "My Big Fat|Totally Awkward|Accidental|Hopelessly Lost|Seriously Silly|Hilariously Bad",
                                 "n": "Wedding Weekend|Roommate Mix-Up|Family Vacation|Office Party|Road Trip|Bachelor Party|Dinner Disaster"}),
        ("Documentary", ["The {n} of {p}"], {"n": "Secret Life|Hidden World|Rise and Fall|Last Days|Untold Story|Science",
                                             "p": "the Coral Reef|the Honeybee|the Roman Empire|Arctic Wolves|the Amazon River|Deep Space|the Silk Road"}),
        ("Sci-Fi", ["The {a} {n}"], {"a": "Stellar|Quantum|Galactic|Android|Orbital|Cyborg|Interstellar",
                                     "n": "Frontier|Protocol|Exodus|Uprising|Colony|Drift|Odyssey|Starship"}),
        ("Romance", ["{n} in {p}"], {"n": "Love|A Summer Romance|Second Chances|Falling for You|A Kiss|Letters of Love|Wedding Bells",
                                     "p": "Paris|Tuscany|Venice|Snowy Vermont|Provence|Santorini"}),
        ("Animation", ["The {a} {n}"], {"a": "Brave Little|Magical|Tiny Talking|Fuzzy|Dancing|Flying|Curious",
                                        "n": "Penguin|Dragon|Owl|Kitten|Snowman|Bunny|Panda Cub|Teapot"}),
        ("Western", ["{n} at {p}"], {"n": "Showdown|Gunfight|Last Stand|Outlaws|Reckoning|The Sheriff|Sundown",
                                     "p": "Dry Gulch|Tombstone Ridge|Dusty Creek|Red Mesa|Silver Canyon|Dead Man's Pass"}),
        ("Crime", ["The {a} {n}"], {"a": "Brooklyn|Chicago|Midnight|Dirty Money|Undercover|Marseille|Vice Squad",
                                    "n": "Heist|Connection|Informant|Detective|Racket|Cartel|Job|Syndicate"}),
    ]),
    "news": ("N", 303, [
        ("Sports", ["{s} {v} {o}"], {"s": "United|City Rovers|Rookie striker|Veteran quarterback|Top seed|Home side",
                                     "v": "stuns|edges|rallies past|falls to|beats",
                                     "o": "rivals in derby|league leaders|defending champions|title favourites in final|visitors in overtime"}),
        ("Politics", ["{s} {v} {o}"], {"s": "Senate|Prime minister|Governor|Opposition leader|Parliament|Mayor",
                                       "v": "unveils|rejects|backs|delays|vows to pass",
                                       "o": "new budget bill|election reform plan|tax overhaul|coalition deal|immigration proposal"}),
        ("Technology", ["{s} {v} {o}"], {"s": "Chipmaker|Startup|Smartphone maker|Cloud giant|Software firm|AI lab",
                                         "v": "launches|unveils|recalls|patches|open-sources",
                                         "o": "new AI model|faster processor|foldable phone|security update|cloud platform"}),
        ("Health", ["{s} {v} {o}"], {"s": "Health agency|New study|Top doctor|Clinical trial|Hospital chief|Nutrition panel",
                                     "v": "warns about|links|recommends|questions|tracks",
                                     "o": "flu season surge|sleep and heart health|daily walking|sugar intake|vaccine uptake"}),
        ("Finance", ["{s} {v} {o}"], {"s": "Stocks|Bond yields|Oil prices|Bank shares|Tech shares|Gold prices",
                                      "v": "rise|fall|slide|rally|hold steady",
                                      "o": "after rate decision|on inflation data|as earnings beat|amid recession fears|ahead of jobs report"}),
        ("Travel", ["{s} {v} {o}"], {"s": "Budget airline|Island resort|Coastal town|Historic city|Cruise line|Mountain village",
                                     "v": "welcomes|prepares for|limits|courts|braces for",
                                     "o": "record summer tourists|new direct flights|backpackers|winter ski crowds|luxury travellers"}),
        ("Science", ["{s} {v} {o}"], {"s": "Astronomers|Physicists|Biologists|Geologists|Chemists|Marine scientists",
                                      "v": "discover|map|detect|measure|observe",
                                      "o": "distant exoplanet|new deep-sea species|ancient fossil bed|gravitational waves|rare mineral"}),
        ("Entertainment", ["{s} {v} {o}"], {"s": "Pop star|Hollywood actor|Chart-topping band|Reality TV host|Film director|Broadway show",
                                            "v": "announces|cancels|celebrates|teases|wraps",
                                            "o": "world tour|new album|surprise sequel|award season run|farewell concert"}),
    ]),
}


def _titles(rng, templates, slots):
    """All template fillings in a fixed order, then a seeded pick of PER_THEME of them."""
    keys = sorted(slots)  # sorted so the order never depends on dict layout
    combos = []
    for template in templates:
        for words in itertools.product(*(slots[k].split("|") for k in keys)):
            title = template.format(**dict(zip(keys, words)))
            title = title[0].upper() + title[1:]
            if title not in combos:
                combos.append(title)
    assert len(combos) >= PER_THEME, (templates, len(combos))
    return [combos[i] for i in sorted(rng.choice(len(combos), PER_THEME, replace=False))]


def generate(domain):
    """Return (items, rows, latent): items as (id, title, category, theme index, quality),
    rows as (user, item index, timestamp, label value), latent per row as (oracle score, liked)."""
    prefix, seed, themes = DOMAINS[domain]
    rng = np.random.default_rng(seed)
    items = []
    for t, (category, templates, slots) in enumerate(themes):
        for title in _titles(rng, templates, slots):
            items.append([f"{prefix}{len(items) + 1:04d}", title, category, t, 0.0])
    n_items, n_themes = len(items), len(themes)
    order = rng.permutation(n_items)  # shuffle ids so the id does not give the theme away
    items = [items[i] for i in order]
    for i, it in enumerate(items):
        it[0] = f"{prefix}{i + 1:04d}"
    theme = np.array([it[3] for it in items])
    quality = rng.normal(0.0, 1.0, n_items)
    for it, q in zip(items, quality):
        it[4] = float(q)
    # Popularity is partly quality (good items get seen more), Zipf-like over its rank, with a
    # floor so every item still gets a few interactions.
    pop_rank = np.argsort(np.argsort(-(0.6 * quality + 0.8 * rng.normal(0.0, 1.0, n_items))))
    weight = 1.0 / (pop_rank + 8.0) + 0.004

    rows, latent = [], []
    for u in range(N_USERS):
        user = f"u{u + 1:04d}"
        tastes = rng.permutation(n_themes)
        # Two liked themes, the other six disliked: a clean, text-visible taste per user.
        affinity = -np.ones(n_themes)
        affinity[tastes[:2]] = 1.0
        in_liked = affinity[theme] > 0
        n = int(rng.integers(22, 39))
        chosen = np.zeros(n_items, dtype=bool)
        picks = []
        for _ in range(n):
            pool = ~chosen & (in_liked if rng.random() < LIKED_SHARE else True)
            w = np.where(pool, weight, 0.0)
            i = int(rng.choice(n_items, p=w / w.sum()))
            chosen[i] = True
            picks.append(i)
        # Shuffle so time order carries no signal (later draws would otherwise skew to leftovers):
        # tastes are stationary. Times are sorted distinct seconds in a per-user window in 2024.
        picks = [picks[k] for k in rng.permutation(n)]
        first = int(rng.integers(0, 120)) * DAY
        span = int(rng.integers(150, 365 - first // DAY)) * DAY
        times = np.sort(rng.choice(span, n, replace=False)) + START + first
        oracle = AFFINITY * affinity[theme[picks]] + QUALITY * quality[picks]
        score = oracle + NOISE * rng.normal(0.0, 1.0, n)
        for i, ts, o, s in zip(picks, times, oracle, score):
            if domain == "news":
                value, liked = int(s > CUTS[2]), s > CUTS[2]
            else:
                value = 1 + int(np.searchsorted(CUTS, s))
                liked = value >= 4
            rows.append((user, i, int(ts), value))
            latent.append((float(o), bool(liked)))
    return items, rows, latent


def modality(domain, items):
    """A synthetic second modality (think image embeddings): FEATURE_DIM numbers per item, a fixed random
    mix of the item's theme and of its latent quality, plus noise. Quality moves likes (QUALITY above) but
    no title shows it, so `--fusion file --item-features sample` has something the text cannot give.
    Its own RNG: items.csv and interactions.csv stay byte-identical."""
    rng = np.random.default_rng(DOMAINS[domain][1] + 7)
    n_themes = len(DOMAINS[domain][2])
    mix = rng.normal(0.0, 1.0, (n_themes + 1, FEATURE_DIM))
    latent = np.array([[*(np.arange(n_themes) == it[3]), 2.0 * it[4]] for it in items], dtype=float)
    vectors = latent @ mix + FEATURE_NOISE * rng.normal(0.0, 1.0, (len(items), FEATURE_DIM))
    order = sorted(range(len(items)), key=lambda i: items[i][0])
    return np.array([items[i][0] for i in order]), vectors[order].astype(np.float32)


def write(domain, root):
    items, rows, _ = generate(domain)
    folder = Path(root) / domain
    folder.mkdir(parents=True, exist_ok=True)
    ids, vectors = modality(domain, items)
    np.savez(folder / "features.npz", item_ids=ids, vectors=vectors)
    with (folder / "items.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["item_id", "title", "category"])
        w.writerows(sorted(it[:3] for it in items))
    label = "click" if domain == "news" else "rating"
    with (folder / "interactions.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["user_id", "item_id", "timestamp", label])
        w.writerows(sorted(((u, items[i][0], ts, v) for u, i, ts, v in rows), key=lambda r: (r[0], r[2])))


def auc(scores, labels):
    """Rank-sum (Mann-Whitney) AUC with average ranks for ties."""
    s, y = np.asarray(scores, float), np.asarray(labels, bool)
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    n_pos, n_neg = y.sum(), (~y).sum()
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _report(domain):
    items, rows, latent = generate(domain)
    theme = [it[3] for it in items]
    liked = np.array([lk for _, lk in latent])
    by_user = {}
    for k, (u, _i, _ts, _) in enumerate(rows):
        by_user.setdefault(u, []).append(k)
    # Sanity: time order, strictly increasing times, no repeated (user, item), unique titles.
    for ks in by_user.values():
        assert all(rows[a][2] < rows[b][2] for a, b in zip(ks, ks[1:]))
        assert len({rows[k][1] for k in ks}) == len(ks)
    assert len({it[1] for it in items}) == len(items)
    with tempfile.TemporaryDirectory() as tmp:  # and the written file keeps (user, time) order
        write(domain, tmp)
        with open(Path(tmp) / domain / "interactions.csv", newline="", encoding="utf-8") as f:
            keys = [(r["user_id"], int(r["timestamp"])) for r in csv.DictReader(f)]
        assert keys == sorted(keys) and len(keys) == len(rows)
    test = [k for ks in by_user.values() for k in ks[-TEST_LAST:]]
    train = [k for ks in by_user.values() for k in ks[:-TEST_LAST]]
    heur = []
    for ks in by_user.values():
        for pos in range(len(ks) - TEST_LAST, len(ks)):
            hist, target = ks[:pos], theme[rows[ks[pos]][1]]
            pos_h = [theme[rows[k][1]] for k in hist if liked[k]]
            neg_h = [theme[rows[k][1]] for k in hist if not liked[k]]
            def share(h, target=target):
                return sum(t == target for t in h) / len(h) if h else 0.0
            heur.append(share(pos_h) - share(neg_h))
    sums, counts = np.zeros(len(items)), np.zeros(len(items))
    for k in train:
        sums[rows[k][1]] += liked[k]
        counts[rows[k][1]] += 1
    item_mean = np.where(counts > 0, sums / np.maximum(counts, 1), liked[train].mean())
    per_item = np.bincount([r[1] for r in rows], minlength=len(items))
    values = np.array([r[3] for r in rows])
    hist = {int(v): int((values == v).sum()) for v in np.unique(values)}
    words = [len(it[1].split()) for it in items]
    print(f"[{domain}] users={len(by_user)} items={len(items)} interactions={len(rows)} "
          f"positive_rate={liked.mean():.3f} test_positive_rate={liked[test].mean():.3f}")
    print(f"  {'click' if domain == 'news' else 'rating'} histogram: {hist}")
    print(f"  interactions per item: min={per_item.min()} median={int(np.median(per_item))} max={per_item.max()}; "
          f"per user: min={min(map(len, by_user.values()))} max={max(map(len, by_user.values()))}; "
          f"title words: {min(words)}-{max(words)}")
    print(f"  AUC on last {TEST_LAST} per user: oracle={auc([latent[k][0] for k in test], liked[test]):.3f} "
          f"theme-from-history={auc(heur, liked[test]):.3f} "
          f"item-popularity={auc(item_mean[[rows[k][1] for k in test]], liked[test]):.3f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="print stats and baseline AUCs; write nothing")
    parser.add_argument("--out", default=str(SAMPLE_ROOT), help="folder to write the samples into")
    args = parser.parse_args(argv)
    for domain in DOMAINS:
        _report(domain) if args.check else write(domain, args.out)
    if not args.check:
        print(f"wrote {', '.join(DOMAINS)} to {args.out}")


if __name__ == "__main__":
    main()
