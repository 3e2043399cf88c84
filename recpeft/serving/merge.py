"""Bake a LoRA/AdaLoRA adapter into its base model, or combine domain adapters into one LoRA adapter.

Baking reloads the base in float32 whatever precision training used, so W + BA is exact, and reports
the largest logit difference between the merged model and base + adapter on real prompts. A Houlsby
bottleneck adapter puts a non-linearity between its projections: it is no weight delta and cannot be
baked in or combined linearly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from recpeft import __version__
from recpeft.adapter_meta import AdapterMeta, read_meta
from recpeft.artifacts import check_adapter_dir, check_writable, save_adapter_dir, write_dir_atomic
from recpeft.errors import UserError
from recpeft.training.privacy_guarantee import compose, composed_card

MERGE_INFO = "recpeft_merged.json"


def _linear_only(folder: Path, meta: AdapterMeta, what: str) -> None:
    if meta.method == "adapter":
        raise UserError(f"cannot {what} a bottleneck Adapter: its down-projection, non-linearity and "
                        "up-projection are no linear weight delta; use it as an adapter (recpeft.load, "
                        "recpeft recommend, recpeft serve) instead", str(folder))
    if meta.fusion:
        raise UserError(f"cannot {what} an adapter trained with --fusion: its item soft tokens come from "
                        "fusion.safetensors, which a merged model has no place for; use it as an adapter "
                        "(recpeft.load, recpeft recommend, recpeft serve) instead", str(folder))


def _probe(tokenizer, domain: str, n: int = 4) -> dict[str, torch.Tensor]:
    """A few real preference prompts from the domain's embedded sample, left-padded into a batch."""
    from recpeft.data.formats.csvdir import load_sample
    from recpeft.domains import get_domain
    from recpeft.tasks.batches import collate, encode
    from recpeft.tasks.examples import preference_examples

    data = load_sample(domain)
    rows = encode(preference_examples(data)["test"][:n], data, get_domain(domain), tokenizer, 6, 320)
    batch = collate(rows, tokenizer.pad_token_id)
    return {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}


def _check_merge_out(out: Path) -> None:
    """Before any work: the folder must be writable, and only a previous merge output may be replaced."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MERGE_INFO).is_file())):
        raise UserError(f"output folder exists and is not a previous recpeft merge (no {MERGE_INFO}); "
                        "refusing to replace it", str(out))
    check_writable(out.parent / f".{out.name}.check")  # a name that does not exist: probes the parent


def merge_adapter(adapter: str | Path, out: str | Path, force: bool = False) -> dict[str, Any]:
    """Write base + adapter (LoRA or AdaLoRA) as one plain Hugging Face model folder (safetensors).

    Returns {"out", "method", "max_abs_logit_diff"}: the largest |logit| difference, merged model vs
    base + adapter, over every position of a few real prompts, in float32.
    """
    from recpeft.methods import load_adapter
    from recpeft.models.load import load_base

    adapter, out = Path(adapter), Path(out)
    check_adapter_dir(adapter)
    meta = read_meta(adapter)
    _linear_only(adapter, meta, "merge")
    _check_merge_out(out)
    base, tok, _ = load_base(meta.base_model.name, bits=32)  # full precision: the merge is exact
    model = load_adapter(base, adapter, tok, force=force).eval()
    batch = _probe(tok, meta.domain)
    with torch.no_grad():
        before = model(**batch).logits
        merged = model.merge_and_unload()
        after = merged(**batch).logits
    diff = float((after - before).abs().max())
    info = {"recpeft_version": __version__, "merged_from": str(adapter), "domain": meta.domain,
            "method": meta.method, "base_model": meta.to_dict()["base_model"], "max_abs_logit_diff": diff,
            "prompt_template": meta.prompt_template, "verbalizer": meta.verbalizer,
            "privacy": meta.privacy}  # baking in is post-processing: the adapter's guarantee carries over

    def write(folder: Path) -> None:
        merged.save_pretrained(folder, safe_serialization=True)
        tok.save_pretrained(folder)
        (folder / MERGE_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")

    write_dir_atomic(out, write)
    return {"out": str(out), "method": meta.method, "max_abs_logit_diff": diff}


def combine_adapters(adapters: list[str | Path], weights: list[float], out: str | Path,
                     force: bool = False) -> dict[str, Any]:
    """One LoRA adapter whose weight delta is sum_i weights[i] * delta_i (peft add_weighted_adapter, "cat").

    AdaLoRA inputs are first turned into the LoRA they equal. The result is a full adapter folder; its
    recpeft.json records the sources and weights, and takes domain wording and settings from the first.
    """
    from recpeft.methods import check_base
    from recpeft.models.load import load_base
    from recpeft.serving.bank import AdapterBank

    paths = [Path(a) for a in adapters]
    if len(paths) < 2:
        raise UserError("--combine needs at least two adapter folders")
    if len(weights) != len(paths):
        raise UserError(f"{len(paths)} adapters but {len(weights)} weights; give one weight per adapter")
    metas = []
    for p in paths:
        check_adapter_dir(p)
        metas.append(read_meta(p))
        _linear_only(p, metas[-1], "combine")
    first = metas[0]
    for p, m in zip(paths[1:], metas[1:]):
        if m.base_model.fingerprint != first.base_model.fingerprint:
            raise UserError(f"{paths[0]} and {p} were trained on different base models "
                            f"('{first.base_model.name}' vs '{m.base_model.name}')")
        if "choice" in (first.task, m.task) and (m.task, m.verbalizer) != (first.task, first.verbalizer):
            raise UserError(f"{paths[0]} (task {first.task}) and {p} (task {m.task}) answer different questions: a "
                            "choice adapter reads its candidates under letters, and a combination scores one way only")
    # the combined guarantee, or a refusal, before the base model loads
    dp = compose(paths, [m.to_dict() for m in metas])
    out = Path(out)
    check_writable(out)
    base, tok, _ = load_base(first.base_model.name, bits=32)
    for p in paths:
        check_base(base, p, tok, force)
    names = [f"source{i}" for i in range(len(paths))]
    bank = AdapterBank(base, dict(zip(names, paths)))
    bank.peft.add_weighted_adapter([bank.slots[n] for n in names], [float(w) for w in weights], "default",
                                   combination_type="cat")
    sources = [{"path": str(p), "domain": m.domain, "method": m.method, "weight": float(w)}
               for p, m, w in zip(paths, metas, weights)]
    # domain wording and settings from the first source; no data, history or size of its own
    meta = AdapterMeta(domain=first.domain, method="lora", base_model=first.base_model, recpeft_version=__version__,
                       task=first.task, positive_verb=first.positive_verb, prompt_template=first.prompt_template,
                       verbalizer=first.verbalizer, train_config=first.train_config,
                       combination={"combination_type": "cat", "sources": sources}, metrics={"bits": 32}, privacy=dp)
    rows = "\n".join(f"| `{s['path']}` | {s['domain']} | {s['method']} | {s['weight']:g} |" for s in sources)
    card = (f"# recpeft adapter: combination of {len(sources)} adapters\n\nA LoRA adapter for "
            f"`{first.base_model.name}` whose weight update is the weighted sum of these adapters' "
            f"updates (peft `add_weighted_adapter`, `cat`, exact). Prompts use the `{first.domain}` wording.\n\n"
            f"| source | domain | method | weight |\n|---|---|---|---|\n{rows}\n") + composed_card(dp)
    save_adapter_dir(lambda folder: bank.peft.save_pretrained(folder, selected_adapters=["default"],
                                                              safe_serialization=True), out, meta, card)
    return {"out": str(out), "sources": sources, "privacy": dp}
