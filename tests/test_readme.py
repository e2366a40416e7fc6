"""The README's ten-line example runs as written."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_example_runs(tmp_path):
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text.split("## Ten lines", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    assert len([line for line in code.splitlines() if line.strip()]) <= 12
    code = code.replace("/tmp/serving/cifar100", str(tmp_path / "serving"))
    code += "\nprint('accuracy' in results['classification'], sorted(os.listdir(%r)))\n" % str(tmp_path / "serving")
    result = subprocess.run([sys.executable, "-c", "import os\n" + code], capture_output=True, text=True,
                            timeout=300, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "True ['1']"
