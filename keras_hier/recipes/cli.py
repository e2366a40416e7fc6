"""The command line of `keras-hier-train`: options with help and defaults, parsed into a config.

Option names are the library's argument names (`--proxy-mode ema` is
`build_classifier(proxy_mode="ema")`, `--dynamic-scale` is
`dynamic_scale=True`); the old `--ema`, `--mds` and `--dynamic` remain as
deprecated aliases. Numbers are validated as they are parsed (`--epochs 0`,
`--lr -1`, `--max-examples 0` stop with argparse's usage error).
"""

import argparse
import json
import math
import os
import sys
import warnings

from keras_hier.recipes.configs import (BACKBONE_NAMES, CONFIGS, DEFAULTS, HEADS, IMAGE_BACKBONE_NAMES,
                                        KERAS_HUB_PREFIX, LOSSES, PROXY_MODES, TEXT_BACKBONE_NAMES,
                                        TEXT_DATASETS, get_config)

__all__ = ["build_parser", "config_from_args"]


def _number(kind, minimum, inclusive=True, below=None):
    """An argparse `type` parsing `kind` (int or float) in [minimum, below) (or (minimum, ...))."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        ok = math.isfinite(value) and (value >= minimum if inclusive else value > minimum)
        if not ok or (below is not None and value >= below):
            bound = f"{'>=' if inclusive else '>'} {minimum}" + (f" and < {below}" if below is not None else "")
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


_positive_int = _number(int, 1)
_nonnegative_int = _number(int, 0)
_positive_float = _number(float, 0.0, inclusive=False)
_nonnegative_float = _number(float, 0.0)
_fraction = _number(float, 0.0, below=1.0)


def _json_object(text):
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object like '{{\"filters\": [8, 16]}}', got {text!r}")
    return value


def _backbone_name(text):
    if text in BACKBONE_NAMES or (text.startswith(KERAS_HUB_PREFIX) and len(text) > len(KERAS_HUB_PREFIX)):
        return text
    raise argparse.ArgumentTypeError(f"must be one of {', '.join(BACKBONE_NAMES)} or "
                                     f"{KERAS_HUB_PREFIX}<backbone class or local preset folder>, got {text!r}")


def _dflt(key):
    return f" (default: {DEFAULTS[key]!r} unless the --config preset sets it)"


class _DeprecatedFlag(argparse.Action):
    """`--ema` / `--mds` / `--dynamic` (and `--no-...`): old spellings, with a deprecation warning."""

    def __init__(self, option_strings, dest, new=None, **kwargs):
        self.new = new
        super().__init__(option_strings, dest, nargs=0, default=None, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        value = not option_string.startswith("--no-")
        warnings.warn(f"{option_string} is deprecated: use {self.new}", DeprecationWarning, stacklevel=2)
        print(f"keras-hier-train: note: {option_string} is deprecated, use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, value)


def _add_model_options(p):
    g = p.add_argument_group("model")
    g.add_argument("--backbone", type=_backbone_name, metavar="NAME",
                   help=f"backbone network: images {', '.join(IMAGE_BACKBONE_NAMES)}; texts "
                   f"{', '.join(TEXT_BACKBONE_NAMES)} (for --dataset {', '.join(TEXT_DATASETS)}; the vocabulary "
                   f"is adapted to the training texts); or {KERAS_HUB_PREFIX}<backbone class or local preset "
                   "folder> (a KerasHub image backbone: class arguments as --backbone-kwargs "
                   "'{\"config\": {...}}', weights from --backbone-weights)" + _dflt("backbone"))
    g.add_argument("--backbone-weights", dest="backbone_weights", metavar="PATH",
                   help=f"resnet50: a local weights file, or 'imagenet' (Keras cache); {KERAS_HUB_PREFIX} "
                   "backbones: a local .weights.h5 file (never downloaded; default: random weights for a "
                   "class, the preset folder's own weights for a folder)" + _dflt("backbone_weights"))
    g.add_argument("--backbone-kwargs", dest="backbone_kwargs", type=_json_object, metavar="JSON",
                   help='JSON object of backbone builder arguments, e.g. \'{"filters": [16, 32, 64, 64]}\', '
                   '\'{"embedding_dim": 64, "max_tokens": 20000}\' (text_bag)' + _dflt("backbone_kwargs"))
    g.add_argument("--head", choices=HEADS, help="classification head" + _dflt("head"))
    g.add_argument("--proxy-mode", dest="proxy_mode", choices=PROXY_MODES,
                   help="NormFace/ProxyDR proxies, as build_classifier(proxy_mode=...): learned by gradient, "
                   "ema (moving average of class embeddings) or mds (fixed MDS proxies)" + _dflt("proxy_mode"))
    g.add_argument("--dynamic-scale", dest="dynamic_scale", action=argparse.BooleanOptionalAction, default=None,
                   help="NormFace/ProxyDR dynamic scale, as dynamic_scale=True" + _dflt("dynamic_scale"))
    g.add_argument("--scale", type=_positive_float, help="fixed head scale s" + _dflt("scale"))
    g.add_argument("--embedding-dim", dest="embedding_dim", type=_positive_int,
                   help="embedding size D" + _dflt("embedding_dim"))
    for old, new in (("ema", "--proxy-mode ema"), ("mds", "--proxy-mode mds"), ("dynamic", "--dynamic-scale")):
        g.add_argument(f"--{old}", f"--no-{old}", dest=old, action=_DeprecatedFlag, new=new,
                       help=f"deprecated spelling of {new}")


def _add_training_options(p):
    g = p.add_argument_group("training")
    g.add_argument("--loss", choices=LOSSES, help="training loss" + _dflt("loss"))
    g.add_argument("--loss-beta", dest="loss_beta", type=_positive_float,
                   help="SimLoss / soft labels: S = exp(-beta * t)" + _dflt("loss_beta"))
    g.add_argument("--loss-alpha", dest="loss_alpha", type=_nonnegative_float,
                   help="HXE: lambda = exp(-alpha * height)" + _dflt("loss_alpha"))
    g.add_argument("--epochs", type=_positive_int, help="number of epochs" + _dflt("epochs"))
    g.add_argument("--batch-size", dest="batch_size", type=_positive_int, help="batch size" + _dflt("batch_size"))
    g.add_argument("--lr", type=_positive_float, help="Adam learning rate" + _dflt("lr"))
    g.add_argument("--weight-decay", dest="weight_decay", type=_nonnegative_float,
                   help="AdamW weight decay (0: Adam)" + _dflt("weight_decay"))
    g.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random affine + flip augmentation (images only; text runs refuse it)" + _dflt("augment"))
    g.add_argument("--seed", type=_nonnegative_int, help="seed of the split, shuffling and weights" + _dflt("seed"))
    g.add_argument("--precise-bn-batches", dest="precise_bn_batches", type=_nonnegative_int,
                   help="recompute BatchNorm statistics over this many training batches before the final "
                   "evaluation (0: keep the moving averages)" + _dflt("precise_bn_batches"))
    g.add_argument("--metrics-k", dest="metrics_k", type=_positive_int,
                   help="k of the AHD@k metric shown while training" + _dflt("metrics_k"))
    g.add_argument("--mixed-precision", dest="mixed_precision", choices=["auto", "on", "off"],
                   help="mixed_float16 policy (auto: on GPUs)" + _dflt("mixed_precision"))
    g.add_argument("--strategy", choices=["auto", "mirrored", "default"],
                   help="distribution strategy (auto: MirroredStrategy on several GPUs)" + _dflt("strategy"))
    g.add_argument("--verbose", type=int, choices=[0, 1, 2], help="fit's verbosity (default: 1 on a terminal, else 2)")


def _add_data_options(p):
    g = p.add_argument_group("data")
    g.add_argument("--dataset", help="tfds name, a local path (.npz, IDX folder, image folder), or "
                   "wordnet_glosses (the WordNet gloss text benchmark, built offline; use a text backbone)"
                   + _dflt("dataset"))
    g.add_argument("--dataset-kwargs", dest="dataset_kwargs", type=_json_object, metavar="JSON",
                   help='wordnet_glosses options as a JSON object: depth, min_count, max_per_class, e.g. '
                   '\'{"depth": 5, "min_count": 50}\'' + _dflt("dataset_kwargs"))
    g.add_argument("--data-dir", dest="data_dir", metavar="DIR", help="tfds data directory" + _dflt("data_dir"))
    g.add_argument("--manual-dir", dest="manual_dir", metavar="DIR",
                   help="folder with a tfds dataset's original archives" + _dflt("manual_dir"))
    g.add_argument("--hierarchy", metavar="FILE",
                   help="hierarchy .csv/.json (default: the dataset's built-in one, or its folders)")
    g.add_argument("--validation-split", dest="validation_split", type=_fraction,
                   help="fraction of the training split held out for validation" + _dflt("validation_split"))
    g.add_argument("--max-examples", dest="max_examples", type=_positive_int,
                   help="train on a seeded subset of this many examples (wordnet_glosses: about this many "
                   "glosses, evenly per class, before its train/validation/test split) (default: all)")
    g.add_argument("--max-test-examples", dest="max_test_examples", type=_positive_int,
                   help="evaluate on this many test examples (default: all)")


def _add_output_options(p):
    g = p.add_argument_group("outputs")
    g.add_argument("--n-permutations", dest="n_permutations", type=_nonnegative_int,
                   help="permutations of the evaluation's null distribution" + _dflt("n_permutations"))
    g.add_argument("--evaluate", action=argparse.BooleanOptionalAction, default=None,
                   help="write report/ with keras_hier.evaluate (default: on)")
    g.add_argument("--export", action=argparse.BooleanOptionalAction, default=None,
                   help="export a TF-Serving SavedModel to export/<version> (default: on)")
    g.add_argument("--figures", action=argparse.BooleanOptionalAction, default=None,
                   help="figures in the report (default: on)")


def build_parser():
    p = argparse.ArgumentParser(prog="keras-hier-train",
                                description="Train, evaluate and export a hierarchy-aware classifier in one command.",
                                epilog="Every option left out takes the --config preset's value, else the "
                                "default shown. Re-running a command with the same --out resumes the run.")
    p.add_argument("--config", default="cpu_small",
                   help=f"preset ({', '.join(sorted(CONFIGS))}) or a .json file of settings (default: cpu_small)")
    p.add_argument("--out", default=None, help="run directory (default: runs/<config>_<head>_s<seed>)")
    _add_data_options(p)
    _add_model_options(p)
    _add_training_options(p)
    _add_output_options(p)
    return p


def config_from_args(argv=None):
    """Parses the command line into `(config, out)`; ValueError for a bad preset or file."""
    args = vars(build_parser().parse_args(argv))
    name, out = args.pop("config"), args.pop("out")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the flags already said so
        config = get_config(name, **{k: v for k, v in args.items() if k in DEFAULTS or k in ("ema", "mds", "dynamic")})
    out = out or os.path.join("runs", f"{config['name']}_{config['head']}_s{config['seed']}")
    return config, out


def run_command(prog, body):
    """Runs `body()` for the console command `prog`: a bad input exits 2 with one clear line, no traceback.

    Args:
        prog: the command's name, for the message (`keras-hier-train`).
        body: a callable doing the work.

    Returns:
        0 on success, 2 when `body` raised ValueError, ConnectionError or OSError.
    """
    try:
        body()
    except (ValueError, ConnectionError, OSError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    return 0
