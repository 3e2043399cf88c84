"""Fusion: one adapter's item vectors, how they enter prompts, and their part of the adapter folder."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from recpeft.data.schema import Item, RecData
from recpeft.errors import UserError
from recpeft.fusion import FILE, SAMPLE_FEATURES
from recpeft.fusion.module import ItemFusion, embedding_stats, install
from recpeft.fusion.tokens import FusionTokenizer, mark
from recpeft.fusion.vectors import ItemVectors, collaborative, from_file


@dataclass
class Fusion:
    """Item vectors and how they enter the prompt; `module` once attached to a model."""

    vectors: ItemVectors
    tokens: int = 1
    projector: str = "mlp"
    context: str = "none"  # "history": each item's token also reads the mean of the items before it
    features: str | None = None  # the feature file (source "file"); cf vectors are saved in the adapter
    module: ItemFusion | None = None
    rows: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.rows = {item_id: i + 1 for i, item_id in enumerate(self.vectors.ids)}  # 0: no vector

    @classmethod
    def for_run(cls, cfg, data: RecData) -> Fusion | None:
        """The fusion a TrainConfig asks for (None with --fusion off), its vectors built from the data."""
        if cfg.fusion == "off":
            return None
        if cfg.fusion == "cf":
            vectors = collaborative(data, cfg.task, cfg.fusion_cf, cfg.fusion_dim, cfg.seed, cfg.fusion_item_stats)
            return cls(vectors, cfg.fusion_tokens, cfg.fusion_projector, cfg.fusion_context)
        features = features_path(cfg)
        fusion = cls(from_file(features), cfg.fusion_tokens, cfg.fusion_projector, cfg.fusion_context,
                     str(features.resolve()))
        if not any(i in fusion.rows for i in data.items):
            raise UserError(f"none of the {len(data.items)} items of data '{data.name}' has a vector in the feature "
                            "file (item ids must match)", str(features))
        return fusion

    def mark(self, item: Item) -> Item:
        return mark(item, self.rows.get(item.item_id, 0))

    def mark_data(self, data: RecData) -> RecData:
        """A copy of data whose item titles carry their soft-token markers."""
        import dataclasses

        return dataclasses.replace(data, items={i: self.mark(item) for i, item in data.items.items()})

    def tokenizer(self, tokenizer, model) -> FusionTokenizer:
        base = tokenizer.base if isinstance(tokenizer, FusionTokenizer) else tokenizer
        return FusionTokenizer(base, model.get_input_embeddings().num_embeddings, self.tokens)

    def attach(self, model, trainable: bool = True) -> ItemFusion:
        """Build the projector for this model and make it the model's active fusion module."""
        if self.module is None:
            scale, anchor = embedding_stats(model)
            self.module = ItemFusion(self.vectors.vectors, len(anchor), self.tokens, self.projector, scale,
                                     self.context, anchor)
        for p in self.module.parameters():
            p.requires_grad_(trainable)
        install(model, self.module)
        return self.module

    def record(self, token_scale: float | None = None) -> dict:
        """What recpeft.json says of it; token_scale: how far training moved the tokens (the run's
        fusion_token_scale, measured once in its metrics)."""
        return {"file": FILE, "source": self.vectors.source, "dim": self.vectors.dim, "items": len(self.vectors.ids),
                "tokens": self.tokens, "projector": self.projector, "context": self.context,
                "fingerprint": self.vectors.fingerprint, "features": self.features,
                "trainable_parameters": sum(p.numel() for p in self.module.parameters()) if self.module else None,
                "token_scale": token_scale}

    def save(self, folder: Path) -> None:
        """fusion.safetensors: the projector and unknown vector; cf vectors and their ids too (a feature file's
        are read from the file at load time, checked against the fingerprint)."""
        from safetensors.torch import save_file

        tensors = {k: v.detach().cpu().contiguous() for k, v in self.module.state_dict().items()}
        metadata = {"record": json.dumps(self.record())}
        if self.features is None:
            tensors["table"] = self.vectors.vectors.contiguous()
            metadata["item_ids"] = json.dumps(self.vectors.ids)
        save_file(tensors, str(Path(folder) / FILE), metadata=metadata)

    @classmethod
    def load(cls, folder: str | Path, record: dict, item_features: str | Path | None = None) -> Fusion:
        """The fusion saved in an adapter folder, its module built with the saved weights (not attached)."""
        from safetensors import SafetensorError, safe_open

        path = Path(folder) / FILE
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError) as exc:
            raise UserError(f"cannot read the adapter's fusion weights: {exc}", str(path)) from None
        if record.get("features") is None:
            if "table" not in tensors or "item_ids" not in meta:
                raise UserError("the fusion weights lack the item table of a cf adapter", str(path))
            ids = json.loads(meta["item_ids"])
            vectors = ItemVectors(ids, tensors.pop("table"), record["source"], record["fingerprint"])
            features = None
        else:
            features = str(item_features or record["features"])
            vectors = from_file(features)
            if vectors.fingerprint != record["fingerprint"]:
                raise UserError(f"this adapter was trained with other item features (fingerprint "
                                f"{record['fingerprint']}, this file's is {vectors.fingerprint})", features)
        # "context" is absent from the records of adapters saved before it existed: they had none
        fusion = cls(vectors, int(record["tokens"]), record["projector"], record.get("context", "none"), features)
        out = "projector.weight" if fusion.projector == "linear" else "projector.2.weight"
        if out not in tensors:
            raise UserError(f"the fusion weights lack '{out}' (a {fusion.projector} projector)", str(path))
        hidden = tensors[out].shape[0]
        fusion.module = ItemFusion(vectors.vectors, hidden // fusion.tokens, fusion.tokens, fusion.projector,
                                   context=fusion.context)
        try:
            missing, unexpected = fusion.module.load_state_dict(tensors, strict=False)
        except RuntimeError as exc:  # shapes that do not fit (a record whose context or dim was edited)
            first = str(exc).strip().splitlines()[-1].strip()
            raise UserError(f"the fusion weights do not fit their record: {first}", str(path)) from None
        missing = [k for k in missing if k != "anchor"]  # saved before the anchor: bare tokens (zero anchor)
        if missing or unexpected:
            raise UserError(f"the fusion weights do not fit their record (missing {missing}, unexpected {unexpected})",
                            str(path))
        return fusion


def features_path(cfg) -> Path:
    """--item-features: a file, or "sample": the embedded sample's synthetic second modality (features.npz)."""
    if cfg.item_features != SAMPLE_FEATURES:
        return Path(cfg.item_features)
    if cfg.data is not None:
        raise UserError(f"--item-features {SAMPLE_FEATURES} is the embedded sample's; give a feature file for "
                        f"'{cfg.data}'")
    from recpeft.data.formats.csvdir import SAMPLE_ROOT

    return SAMPLE_ROOT / cfg.domain / "features.npz"
