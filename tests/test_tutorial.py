"""docs/tutorial.py runs end to end on a tiny budget (on data the test makes)."""

import gzip
import os
import struct
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_idx(path, array):
    header = struct.pack(">I", 0x0800 | array.ndim) + b"".join(struct.pack(">I", n) for n in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def make_fashion_like(folder, n_train=600, n_test=200, seed=0):
    """Class-dependent stripes + noise, in Fashion-MNIST's IDX layout."""
    rng = np.random.default_rng(seed)
    for split, n in [("train", n_train), ("t10k", n_test)]:
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 60, (n, 28, 28))
        for i, label in enumerate(labels):
            images[i, :, 2 * label:2 * label + 4] += 180
        write_idx(os.path.join(folder, f"{split}-images-idx3-ubyte.gz"), images)
        write_idx(os.path.join(folder, f"{split}-labels-idx1-ubyte.gz"), labels)


def test_tutorial_runs_tiny(tmp_path):
    data = tmp_path / "fashion-mnist"
    data.mkdir()
    make_fashion_like(str(data))
    out = tmp_path / "tutorial"
    result = subprocess.run([sys.executable, os.path.join(ROOT, "docs", "tutorial.py"), "--tiny",
                             "--data", str(data), "--out", str(out)],
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "mistake severity" in result.stdout
    assert "back-off ->" in result.stdout
    for name in ("SimLoss", "ProxyDR"):
        assert (out / name / "report.md").exists()
    assert (out / "serving" / "1" / "saved_model.pb").exists()


def test_tutorial_markdown_matches_script():
    """Every code line of the Markdown tutorial appears in the script."""
    script = open(os.path.join(ROOT, "docs", "tutorial.py")).read()
    script = script.replace("args.max_examples", "20000").replace("args.epochs", "3")
    text = open(os.path.join(ROOT, "docs", "tutorial.md")).read()
    blocks = text.split("```python")[1:]
    assert len(blocks) >= 4
    script_lines = {line.strip() for line in script.splitlines()}
    checked = 0
    for block in blocks[:3]:
        for line in block.split("```")[0].splitlines():
            line = line.split("  #")[0]
            if line.strip() and not line.strip().startswith(("#", "source =")):
                assert line.strip() in script_lines, line
                checked += 1
    assert checked > 10
