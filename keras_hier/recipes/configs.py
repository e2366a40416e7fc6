"""Named training configurations for `keras_hier.recipes.train`, and their validation.

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
- `cpu_glosses`: the WordNet gloss text benchmark (`wordnet_glosses`, 139
  classes at depth 5) with the `text_bag` embedding bag, 10 epochs.

Backbones: the image networks `small_cnn`, `resnet18`, `resnet50`; the text
encoders `text_bag`, `text_cnn` (`keras_hier.backbones`; they adapt their
vocabulary to the training texts and take the text data set
`wordnet_glosses`); and `keras_hub:<backbone class or local preset folder>`
(a KerasHub image backbone; its class arguments as
`backbone_kwargs={"config": {...}}`, local weights as `backbone_weights`).

A config is a plain dict whose keys are the recipe's options (and, where they
exist, the library's argument names: `proxy_mode`, `dynamic_scale`,
`embedding_dim`, `scale`); `get_config(name_or_path)` also reads a JSON file.
The old keys `ema`, `mds` and `dynamic` are accepted as deprecated aliases.
"""

import copy
import json
import math
import os
import warnings

HEADS = ("softmax", "normface", "proxydr", "corr")
LOSSES = ("ce", "simloss", "hxe", "softlabel")
PROXY_MODES = ("learned", "ema", "mds")  # mds: fixed MDS proxies (`build_classifier(proxy_mode="mds")`)
IMAGE_BACKBONE_NAMES = ("small_cnn", "resnet18", "resnet50")  # keras_hier.backbones.BACKBONES
TEXT_BACKBONE_NAMES = ("text_bag", "text_cnn")                  # keras_hier.backbones.TEXT_BACKBONES
BACKBONE_NAMES = IMAGE_BACKBONE_NAMES + TEXT_BACKBONE_NAMES
KERAS_HUB_PREFIX = "keras_hub:"  # "keras_hub:<class or local preset folder>" (keras_hier.backbones.get_backbone)
TEXT_DATASETS = ("wordnet_glosses",)  # load_dataset names whose inputs are strings

DEFAULTS = {
    "dataset": "fashion_mnist",
    "dataset_kwargs": {},       # named benchmark options, e.g. {"depth": 5, "min_count": 50} (wordnet_glosses)
    "data_dir": None,
    "manual_dir": None,
    "hierarchy": None,          # None: built-in / from the folder; else a CSV/JSON path
    "backbone": "small_cnn",
    "backbone_weights": None,   # resnet50: local weights file or "imagenet" (cache only); keras_hub: local file
    "backbone_kwargs": {},      # passed to the backbone builder (e.g. {"filters": [16, 32, 64, 64]})
    "head": "proxydr",          # softmax | normface | proxydr | corr
    "proxy_mode": "learned",    # learned | ema | mds (NormFace / ProxyDR heads)
    "dynamic_scale": False,     # NormFace / ProxyDR: the dynamic (AdaCos-style) scale
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
    "precise_bn_batches": 200,  # recompute BatchNorm statistics over this many training batches (0: off)
    "metrics_k": 5,             # k of the AHD@k metric shown while training
    "mixed_precision": "auto",  # auto (GPUs only) | on | off
    "strategy": "auto",         # auto (TF_CONFIG cluster / several GPUs) | mirrored | default
    "evaluate": True,
    "export": True,
    "figures": True,
    "n_permutations": 200,
    "verbose": "auto",
}

#: Settings a resumed run may change: they do not change the weights a run has trained.
RESUMABLE_KEYS = ("epochs", "verbose", "evaluate", "export", "figures", "n_permutations",
                  "max_test_examples", "data_dir", "manual_dir", "precise_bn_batches", "strategy",
                  "mixed_precision", "metrics_k", "name", "seeds")

#: Deprecated keys (old command-line names) -> the API's names.
ALIASES = {"ema": "proxy_mode", "mds": "proxy_mode", "dynamic": "dynamic_scale"}

CONFIGS = {
    "cpu_small": {},
    "cpu_cifar10": {"dataset": "cifar10", "epochs": 10, "augment": True, "batch_size": 128},
    "cpu_glosses": {"dataset": "wordnet_glosses", "backbone": "text_bag", "epochs": 10, "batch_size": 128,
                    "lr": 3e-3, "backbone_kwargs": {"embedding_dim": 128}},
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


def apply_aliases(settings, base=None, warn=True):
    """Translates the deprecated keys `ema`, `mds`, `dynamic` of `settings` (a dict, changed).

    `ema=True` -> `proxy_mode="ema"`, `mds=True` -> `proxy_mode="mds"`,
    `ema=False` / `mds=False` -> `proxy_mode="learned"` when that mode was
    selected (in `settings` or `base`), `dynamic` -> `dynamic_scale`.

    Returns:
        `settings`, without the old keys.
    """
    old = {k: settings.pop(k) for k in ALIASES if k in settings}
    old = {k: v for k, v in old.items() if v is not None}
    if not old:
        return settings
    if warn:
        new = {"ema": "--proxy-mode ema", "mds": "--proxy-mode mds", "dynamic": "--dynamic-scale"}
        warnings.warn("deprecated setting(s) " + ", ".join(f"{k!r} (use {new[k]})" for k in old),
                      DeprecationWarning, stacklevel=3)
    if old.get("ema") and old.get("mds"):
        raise ValueError("--ema and --mds exclude each other (MDS proxies are fixed); use --proxy-mode")
    current = settings.get("proxy_mode") or (base or {}).get("proxy_mode", "learned")
    for key in ("ema", "mds"):
        if key in old:
            if old[key]:
                settings["proxy_mode"] = key
            elif current == key:
                settings["proxy_mode"] = "learned"
    if "dynamic" in old:
        settings["dynamic_scale"] = bool(old["dynamic"])
    return settings


def _read_config_file(path):
    try:
        with open(path, encoding="utf-8") as f:
            preset = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"config file {path}: not valid JSON ({err})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"config file {path}: cannot be read ({err})") from None
    if not isinstance(preset, dict):
        raise ValueError(f"config file {path}: expected a JSON object of settings, got {type(preset).__name__}")
    return preset


def get_config(name_or_path="cpu_small", **overrides):
    """Returns a full config dict: DEFAULTS, then the named preset, then overrides.

    Args:
        name_or_path: a key of `CONFIGS` or the path of a JSON file holding a
            dict of settings.
        **overrides: settings to replace (None values are ignored; the
            deprecated `ema`, `mds`, `dynamic` are translated).

    Returns:
        dict with every key of `DEFAULTS` (plus `name`).

    Raises:
        ValueError: unknown preset, missing or unreadable file, unknown keys.

    Example:
    >>> get_config("cpu_small", proxy_mode="ema", epochs=1)["proxy_mode"]
    'ema'
    """
    if name_or_path in CONFIGS:
        preset, name = CONFIGS[name_or_path], name_or_path
    elif str(name_or_path).endswith(".json"):
        if not os.path.isfile(name_or_path):
            raise ValueError(f"config file {name_or_path} does not exist")
        preset = _read_config_file(name_or_path)
        name = os.path.splitext(os.path.basename(name_or_path))[0]
    else:
        raise ValueError(f"unknown config {name_or_path!r}; choose one of {sorted(CONFIGS)} "
                         "or give a .json file")
    config = copy.deepcopy(DEFAULTS)
    config.update(apply_aliases(copy.deepcopy(preset), config, warn=False))
    overrides = apply_aliases({k: v for k, v in overrides.items() if v is not None}, config)
    unknown = sorted(set(config) - set(DEFAULTS) - {"seeds", "name"}) + sorted(set(overrides) - set(config))
    if unknown:
        raise ValueError(f"unknown config keys {unknown} (in {name_or_path!r} or the overrides); "
                         f"known keys: {sorted(DEFAULTS)}")
    config.update(overrides)
    config["name"] = name
    return config


def _number_errors(config):
    errors = []

    def check(key, ok, what):
        value = config.get(key)
        if not ok(value):
            errors.append(f"{key} must be {what}, got {value!r}")

    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    def is_real(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    check("epochs", lambda v: is_int(v) and v >= 1, "an integer >= 1")
    check("batch_size", lambda v: is_int(v) and v >= 1, "an integer >= 1")
    check("embedding_dim", lambda v: is_int(v) and v >= 1, "an integer >= 1")
    check("seed", lambda v: is_int(v) and v >= 0, "an integer >= 0")
    check("lr", lambda v: is_real(v) and v > 0, "a number > 0")
    check("weight_decay", lambda v: is_real(v) and v >= 0, "a number >= 0")
    check("scale", lambda v: is_real(v) and v > 0, "a number > 0")
    check("loss_beta", lambda v: is_real(v) and v > 0, "a number > 0")
    check("loss_alpha", lambda v: is_real(v) and v >= 0, "a number >= 0")
    check("validation_split", lambda v: is_real(v) and 0 <= v < 1, "a number in [0, 1)")
    for key in ("max_examples", "max_test_examples"):
        check(key, lambda v: v is None or (is_int(v) and v >= 1), "an integer >= 1 (or null for all)")
    check("n_permutations", lambda v: is_int(v) and v >= 0, "an integer >= 0")
    check("precise_bn_batches", lambda v: is_int(v) and v >= 0, "an integer >= 0 (0: off)")
    check("metrics_k", lambda v: is_int(v) and v >= 1, "an integer >= 1")
    check("verbose", lambda v: v == "auto" or (is_int(v) and 0 <= v <= 2), "'auto', 0, 1 or 2")
    return errors


def _choice_errors(config):
    errors = []
    for key, choices in (("head", HEADS), ("loss", LOSSES), ("proxy_mode", PROXY_MODES),
                         ("mixed_precision", ("auto", "on", "off")),
                         ("strategy", ("auto", "mirrored", "default"))):
        if config.get(key) not in choices:
            errors.append(f"{key} must be one of {', '.join(choices)}, got {config.get(key)!r}")
    for key in ("dynamic_scale", "augment", "evaluate", "export", "figures"):
        if not isinstance(config.get(key), bool):
            errors.append(f"{key} must be true or false, got {config.get(key)!r}")
    for key in ("backbone_kwargs", "dataset_kwargs"):
        if not isinstance(config.get(key, {}), dict):
            errors.append(f"{key} must be a JSON object, got {config.get(key)!r}")
    head, mode = config.get("head"), config.get("proxy_mode")
    if head == "softmax" and (mode != "learned" or config.get("dynamic_scale")):
        errors.append("head softmax has no proxies: it takes neither proxy_mode ema/mds nor dynamic_scale")
    if head == "corr" and (mode == "ema" or config.get("dynamic_scale")):
        errors.append("head corr uses fixed MDS proxies and a fixed scale: no proxy_mode ema, no dynamic_scale")
    return errors


def is_text_backbone(name):
    """True for the text encoders (`TEXT_BACKBONE_NAMES`), which take strings."""
    return name in TEXT_BACKBONE_NAMES


def is_keras_hub_backbone(name):
    """True for `"keras_hub:<class or local preset folder>"`."""
    return isinstance(name, str) and name.startswith(KERAS_HUB_PREFIX) and len(name) > len(KERAS_HUB_PREFIX)


def _backbone_errors(config):
    """The backbone, its weights and its data kind (images vs texts) agree."""
    backbone, weights = config.get("backbone"), config.get("backbone_weights")
    if backbone not in BACKBONE_NAMES and not is_keras_hub_backbone(backbone):
        return [f"backbone must be one of {', '.join(BACKBONE_NAMES)} or '{KERAS_HUB_PREFIX}<class or local "
                f"preset folder>', got {backbone!r}"]
    errors = []
    if weights is not None and backbone != "resnet50" and not is_keras_hub_backbone(backbone):
        errors.append(f"backbone_weights applies to resnet50 and {KERAS_HUB_PREFIX} backbones only, "
                      f"not {backbone!r} (got {weights!r})")
    elif weights is not None and is_keras_hub_backbone(backbone) and not os.path.isfile(str(weights)):
        errors.append(f"backbone_weights: {weights!r} is not a local file (a {KERAS_HUB_PREFIX} backbone loads "
                      "a .weights.h5 file from disk; nothing is downloaded)")
    text_data = config.get("dataset") in TEXT_DATASETS
    if text_data and not is_text_backbone(backbone):
        errors.append(f"dataset {config.get('dataset')} holds texts: choose a text backbone "
                      f"({', '.join(TEXT_BACKBONE_NAMES)}), not {backbone!r}")
    elif is_text_backbone(backbone) and not text_data:
        errors.append(f"backbone {backbone} takes texts: choose a text dataset ({', '.join(TEXT_DATASETS)}), "
                      f"not {config.get('dataset')!r}")
    if (text_data or is_text_backbone(backbone)) and config.get("augment") is True:
        errors.append("augment is the image augmentation (random affine + flip): text runs take no augment "
                      "(use --no-augment)")
    if config.get("dataset_kwargs") and not text_data:
        errors.append(f"dataset_kwargs apply to the named benchmarks ({', '.join(TEXT_DATASETS)}) only, "
                      f"not {config.get('dataset')!r}")
    return errors


def validate_config(config):
    """Checks every setting of a full config; raises one ValueError listing all problems.

    Files named by the config (`hierarchy`, a local `dataset`) are checked
    where they are read. Called by `keras_hier.recipes.train.train` before
    it writes anything.

    Example:
    >>> validate_config(get_config("cpu_small", epochs=0))
    Traceback (most recent call last):
    ...
    ValueError: invalid training config: epochs must be an integer >= 1, got 0
    """
    errors = _number_errors(config) + _choice_errors(config) + _backbone_errors(config)
    hierarchy = config.get("hierarchy")
    if hierarchy is not None:
        if not str(hierarchy).endswith((".csv", ".json")):
            errors.append(f"hierarchy must be a .csv or .json file, got {hierarchy!r}")
        elif not os.path.isfile(hierarchy):
            errors.append(f"hierarchy file {hierarchy} does not exist")
    if errors:
        raise ValueError("invalid training config: " + "; ".join(errors))
    return config


def config_differences(stored, requested):
    """Settings that differ between a run's stored config and a new request.

    Keys of `RESUMABLE_KEYS` may change between runs of one folder; a stored
    config of an older version is read through `apply_aliases`, and a key it
    lacks counts as its default.

    Returns:
        A list of `(key, stored value, requested value)`, sorted by key.
    """
    stored = apply_aliases(dict(stored), warn=False)
    keys = (set(stored) | set(requested)) - set(RESUMABLE_KEYS)
    diffs = []
    for key in sorted(keys):
        old, new = stored.get(key, DEFAULTS.get(key)), requested.get(key, DEFAULTS.get(key))
        if old != new:
            diffs.append((key, old, new))
    return diffs
