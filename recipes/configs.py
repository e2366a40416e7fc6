"""Named training configurations for `recipes.train`.

- `paper_cifar100`: the paper's CIFAR-100 recipe (METHODS.md section 6) for
  GPU machines: ImageNet-pretrained ResNet-50 (weights from a local file) with
  a re-initialised first conv, 128-d embedding, inputs in [0, 1], random
  affine + flip augmentation, 45 000 / 5 000 seeded train/validation split,
  batch 32, Adam lr 1e-4 without weight decay, 100 epochs, best checkpoint by
  validation accuracy, seeds 1-5 (one run per seed).
- `paper_cifar100_scratch`: the same with a randomly initialised ResNet-50
  (when no pretrained weights file is available).
- `gpu_cifar100_resnet18`: a cheaper GPU run, ResNet-18 from scratch.
- `cpu_small`: the CPU-sized default: small CNN, Fashion-MNIST, 3 epochs.
- `cpu_cifar10`: small CNN on CIFAR-10 (tfds, or the local .npz copy via
  `--dataset PATH`), 10 epochs with augmentation.

A config is a plain dict; `get_config(name_or_path)` also reads a JSON file.
"""

import copy
import json
import os

DEFAULTS = {
    "dataset": "fashion_mnist",
    "data_dir": None,
    "manual_dir": None,
    "hierarchy": None,          # None: built-in / from the folder; else a CSV/JSON path
    "backbone": "small_cnn",
    "backbone_weights": None,   # resnet50 only: local weights file or "imagenet" (cache only)
    "backbone_kwargs": {},      # passed to the backbone builder (e.g. {"filters": [16, 32, 64, 64]})
    "head": "proxydr",          # softmax | normface | proxydr | corr
    "ema": False,
    "dynamic": False,
    "mds": False,
    "loss": "ce",               # ce | simloss | hxe | softlabel
    "loss_beta": 1.0,           # SimLoss / soft labels: S = exp(-beta * t)
    "loss_alpha": 0.1,          # HXE: lambda(l) = exp(-alpha * height)
    "scale": 10.0,              # fixed head scale s
    "embedding_dim": 128,
    "epochs": 3,
    "batch_size": 128,
    "lr": 1e-3,
    "weight_decay": 0.0,
    "validation_split": 0.1,
    "augment": False,
    "seed": 0,
    "max_examples": None,       # subsample the training split (quick runs)
    "max_test_examples": None,
    "mixed_precision": "auto",  # auto (GPUs only) | on | off
    "strategy": "auto",         # auto (Mirrored on >1 GPU) | mirrored | default
    "evaluate": True,
    "export": True,
    "figures": True,
    "n_permutations": 200,
    "verbose": "auto",
}

CONFIGS = {
    "cpu_small": {},
    "cpu_cifar10": {"dataset": "cifar10", "epochs": 10, "augment": True, "batch_size": 128},
    "paper_cifar100": {
        "dataset": "cifar100", "backbone": "resnet50", "backbone_weights": "imagenet",
        "embedding_dim": 128, "augment": True, "validation_split": 0.1, "batch_size": 32,
        "lr": 1e-4, "weight_decay": 0.0, "epochs": 100, "seed": 1, "seeds": [1, 2, 3, 4, 5],
        "n_permutations": 1000,
    },
    "paper_cifar100_scratch": {
        "dataset": "cifar100", "backbone": "resnet50", "backbone_weights": None,
        "embedding_dim": 128, "augment": True, "validation_split": 0.1, "batch_size": 32,
        "lr": 1e-4, "weight_decay": 0.0, "epochs": 100, "seed": 1, "seeds": [1, 2, 3, 4, 5],
        "n_permutations": 1000,
    },
    "gpu_cifar100_resnet18": {
        "dataset": "cifar100", "backbone": "resnet18", "embedding_dim": 128, "augment": True,
        "validation_split": 0.1, "batch_size": 128, "lr": 1e-3, "epochs": 60,
    },
}


def get_config(name_or_path="cpu_small", **overrides):
    """Returns a full config dict: DEFAULTS, then the named preset, then overrides.

    Args:
        name_or_path: a key of `CONFIGS` or the path of a JSON file holding a
            dict of settings.
        **overrides: settings to replace (None values are ignored).

    Returns:
        dict with every key of `DEFAULTS` (plus `name`).
    """
    if name_or_path in CONFIGS:
        preset, name = CONFIGS[name_or_path], name_or_path
    elif str(name_or_path).endswith(".json") and os.path.isfile(name_or_path):
        with open(name_or_path) as f:
            preset = json.load(f)
        name = os.path.splitext(os.path.basename(name_or_path))[0]
    else:
        raise ValueError(f"unknown config {name_or_path!r}; choose one of {sorted(CONFIGS)} "
                         "or give a .json file")
    config = copy.deepcopy(DEFAULTS)
    config.update(copy.deepcopy(preset))
    unknown = sorted(set(overrides) - set(config))
    if unknown:
        raise ValueError(f"unknown config keys {unknown}")
    config.update({k: v for k, v in overrides.items() if v is not None})
    config["name"] = name
    return config
