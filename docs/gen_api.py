"""Generates docs/api.md from the docstrings of keras_hier's public names.

Run `python docs/gen_api.py` after changing a public signature or docstring;
tests/test_docs.py fails when docs/api.md is out of date.
"""

import importlib
import inspect
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Names documented besides keras_hier's top-level exports.
EXTRA = {
    "hierarchies": ["cifar100", "cifar10", "fashion_mnist", "imagenet1k", "wordnet_nouns"],
    "metrics": None,  # every public class of the module
    "outputs": ["resolve_from_logits", "model_outputs_probabilities"],
    "labels": ["class_ids", "sparse_labels"],
    "geometry": ["normalize_rows", "sphere_distances", "tree_to_chordal", "l2_normalize", "normface_logits",
                 "proxydr_logits"],
    "glosses": ["load_glosses"],
    "distributed": None,
}

SECTIONS = [
    ("Hierarchy", ["hierarchy", "hierarchies"]),
    ("Similarity matrices", ["similarity", "factorisation", "mds"]),
    ("Conventions: labels, logits, sphere geometry", ["labels", "outputs", "geometry"]),
    ("Losses", ["losses"]),
    ("Heads and models", ["layers", "models", "batchnorm"]),
    ("Metrics (streaming)", ["metrics"]),
    ("Evaluation", ["evaluation", "inference", "retrieval_metrics", "reporting"]),
    ("Figures", ["plots"]),
    ("Decoding and export", ["decoding", "export"]),
    ("Data and backbones", ["data", "glosses", "backbones"]),
    ("Several workers", ["distributed"]),
]


def public_names():
    """{module: [names]} of every documented name."""
    import keras_hier

    by_module = {}
    for name, module in keras_hier._EXPORTS.items():
        by_module.setdefault(module, []).append(name)
    for module, names in EXTRA.items():
        mod = importlib.import_module(f"keras_hier.{module}")
        if names is None:
            names = [n for n in getattr(mod, "__all__", []) if not n.startswith("_")]
        by_module.setdefault(module, [])
        by_module[module] += [n for n in names if n not in by_module[module]]
    return by_module


def _summary(obj):
    doc = inspect.getdoc(obj) or ""
    paragraphs = doc.split("\n\n")
    return paragraphs[0].replace("\n", " ").strip()


def _signature(obj):
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return ""


def render():
    lines = ["# API reference", "",
             "Generated from the docstrings by `python docs/gen_api.py`; `tests/test_docs.py`",
             "checks that it is current and that every name listed here imports.",
             "Each entry's full docstring (Args / Returns / Example) is available with",
             "`help(keras_hier.NAME)`.", ""]
    import keras_hier

    exported = set(keras_hier._EXPORTS)
    by_module = public_names()
    for title, modules in SECTIONS:
        lines += [f"## {title}", ""]
        for module in modules:
            mod = importlib.import_module(f"keras_hier.{module}")
            for name in sorted(by_module.get(module, []), key=str.lower):
                obj = getattr(mod, name)
                qualified = f"keras_hier.{name}" if name in exported else f"keras_hier.{module}.{name}"
                lines += [f"### `{qualified}`", "", f"`{name}{_signature(obj)}`", "", _summary(obj), ""]
                if inspect.isclass(obj):
                    for member_name, member in sorted(vars(obj).items()):
                        if member_name.startswith("_") or not (inspect.isfunction(member) or isinstance(
                                member, (classmethod, staticmethod, property))):
                            continue
                        target = member.__func__ if isinstance(member, (classmethod, staticmethod)) else member
                        target = target.fget if isinstance(target, property) else target
                        if member_name in ("get_config", "from_config", "call", "build", "update_state",
                                           "result", "reset_state", "compute_output_shape"):
                            continue
                        summary = _summary(target)
                        if summary:
                            lines.append(f"- `{member_name}`: {summary}")
                    lines.append("")
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    path = ROOT / "docs" / "api.md"
    path.write_text(render())
    print(f"wrote {path}")
