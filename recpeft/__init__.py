"""recpeft: parameter-efficient fine-tuning of decoder LLMs for recommendation."""

__version__ = "0.1.0"

from . import quiet  # noqa: E402  (before any library that prints is imported)

quiet.install()

from .config import TrainConfig, build_config  # noqa: E402
from .errors import UserError  # noqa: E402


def train(cfg: "TrainConfig", **kwargs):
    """Train an adapter; see recpeft.trainer.train."""
    from .trainer import train as _train

    return _train(cfg, **kwargs)


def load_adapter(base, folder, tokenizer=None, force: bool = False):
    """Attach a saved adapter (LoRA, AdaLoRA or bottleneck Adapter) to a loaded base model.

    Refuses an adapter whose recorded base-model fingerprint differs from `base` (and `tokenizer`,
    when given) unless force=True.
    """
    from .methods import load_adapter as _load

    return _load(base, folder, tokenizer=tokenizer, force=force)


def load(path, device=None, bits=None, force: bool = False):
    """Load an adapter folder as a Recommender; see recpeft.recommender.load."""
    from .recommender import load as _load

    return _load(path, device=device, bits=bits, force=force)


def load_many(paths, device=None, bits=None, force: bool = False):
    """Load several adapters on ONE shared base model; see recpeft.recommender.load_many."""
    from .recommender import load_many as _load_many

    return _load_many(paths, device=device, bits=bits, force=force)


__all__ = ["TrainConfig", "UserError", "build_config", "load", "load_adapter", "load_many", "train", "__version__"]
