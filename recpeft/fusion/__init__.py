"""Item signals as soft tokens (CoLLM / LLaRA style): per-item vectors, projected into the LLM's input
embedding space, sit right after each item's title in every prompt, and train with the adapter.

    recpeft train --task ranking --fusion cf                       # ALS item factors of the train period
    recpeft train --fusion file --item-features clip.safetensors   # any per-item vectors (image, audio)

`Fusion` (recpeft/fusion/fusion.py) is the whole feature: it builds the vectors (recpeft.fusion.vectors),
marks items in the data and wraps the tokenizer (recpeft.fusion.tokens), installs the projector on the
model (recpeft.fusion.module), and saves and loads `fusion.safetensors` in the adapter folder. The
adapter's LoRA / AdaLoRA / Adapter part is untouched: plain peft loading still works for it, without the
item tokens.
"""

# Declared here, torch-free: TrainConfig (and so the CLI) reads them without importing torch.
SOURCES = ("off", "cf", "file")
CF_MODELS = ("als", "bpr")  # recpeft/fusion/vectors.py
PROJECTORS = ("linear", "mlp")  # recpeft/fusion/module.py
CONTEXTS = ("history", "none")  # recpeft/fusion/module.py
FILE = "fusion.safetensors"
SAMPLE_FEATURES = "sample"  # --item-features sample: the embedded sample's features.npz
