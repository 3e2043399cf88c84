"""recpeft: parameter-efficient fine-tuning of decoder LLMs for recommendation."""

__version__ = "0.1.0"

from recpeft import quiet  # noqa: E402  (before any library that prints is imported)

quiet.install()

from recpeft.config import TrainConfig, build_config  # noqa: E402
from recpeft.errors import UserError  # noqa: E402


def train(cfg: "TrainConfig", **kwargs):
    """Train an adapter; see recpeft.training.trainer.train."""
    from recpeft.training.trainer import train as _train

    return _train(cfg, **kwargs)


def load_adapter(base, folder, tokenizer=None, force: bool = False):
    """Attach a saved adapter (LoRA, AdaLoRA or bottleneck Adapter) to a loaded base model.

    Refuses an adapter whose recorded base-model fingerprint differs from `base` (and `tokenizer`,
    when given) unless force=True. An adapter trained with --fusion attaches without its item soft tokens
    here; `load` uses them.
    """
    from recpeft.methods import load_adapter as _load

    return _load(base, folder, tokenizer=tokenizer, force=force)


def load(path, device=None, bits=None, force: bool = False, item_features=None):
    """Load an adapter folder as a Recommender; see recpeft.serving.recommender.load."""
    from recpeft.serving.recommender import load as _load

    return _load(path, device=device, bits=bits, force=force, item_features=item_features)


def load_many(paths, device=None, bits=None, force: bool = False, item_features=None):
    """Load several adapters on ONE shared base model; see recpeft.serving.recommender.load_many."""
    from recpeft.serving.recommender import load_many as _load_many

    return _load_many(paths, device=device, bits=bits, force=force, item_features=item_features)


__all__ = ["TrainConfig", "UserError", "build_config", "load", "load_adapter", "load_many", "train", "__version__"]
