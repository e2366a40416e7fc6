"""docs/text_tutorial.py runs end to end at a tiny size, and docs/text_tutorial.md shows its code."""

import json
import os
import re
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "docs", "text_tutorial.py")


def snippets():
    """{name: code} between the script's `# --8<-- [start:name]` / `[end:name]` markers, dedented."""
    text = open(SCRIPT, encoding="utf-8").read()
    found = re.findall(r"# --8<-- \[start:(\w+)\]\n(.*?)\n\s*# --8<-- \[end:\1\]", text, flags=re.S)
    return {name: textwrap.dedent(code).strip() for name, code in found}


def test_markdown_shows_the_script_code():
    markdown = open(os.path.join(ROOT, "docs", "text_tutorial.md"), encoding="utf-8").read()
    blocks = [block.strip() for block in re.findall(r"```python\n(.*?)```", markdown, flags=re.S)]
    parts = snippets()
    assert set(parts) == {"data", "model", "evaluate", "predict", "export"}
    for name, code in parts.items():
        assert code in blocks, f"docs/text_tutorial.md does not show the script's {name!r} step as written"


def test_text_tutorial_runs_tiny(tmp_path):
    out = tmp_path / "text_tutorial"
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, SCRIPT, "--tiny", "--out", str(out)],
                            capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "139 classes" in result.stdout and "proxies vs tree" in result.stdout
    results = json.loads((out / "report" / "results.json").read_text())
    assert results["meta"]["num_classes"] == 139 and 0 <= results["classification"]["accuracy"] <= 1
    assert (out / "report" / "report.md").exists()
    versions = os.listdir(out / "export")
    assert versions == ["1"] and (out / "export" / "1" / "saved_model.pb").exists()
