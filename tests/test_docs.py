"""The API reference lists every public name, each name imports, and it is current."""

import importlib
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "docs"))

import gen_api  # noqa: E402


def test_every_listed_name_imports():
    text = (ROOT / "docs" / "api.md").read_text()
    listed = re.findall(r"^### `keras_hier\.([\w.]+)`", text, flags=re.M)
    assert listed
    for dotted in listed:
        obj = importlib.import_module("keras_hier")
        for part in dotted.split("."):
            obj = getattr(obj, part)
        assert obj is not None


def test_api_page_lists_all_exports_and_is_current():
    import keras_hier

    text = (ROOT / "docs" / "api.md").read_text()
    for name in keras_hier._EXPORTS:
        assert f"### `keras_hier.{name}`" in text, f"{name} missing from docs/api.md"
    assert text == gen_api.render(), "docs/api.md is stale: run `python docs/gen_api.py`"
