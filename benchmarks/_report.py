"""Writes one benchmark's section of BENCHMARKS.md, atomically.

Each benchmark owns the text between `<!-- NAME:start -->` and
`<!-- NAME:end -->`; other sections are left as they are.
"""

import os
import pathlib
import platform
import sys
import tempfile

BENCHMARKS_MD = pathlib.Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


def machine_line():
    """One line describing the machine and library versions."""
    import numpy

    parts = [f"{os.cpu_count()} cores", platform.machine(), f"Python {sys.version.split()[0]}",
             f"NumPy {numpy.__version__}"]
    try:
        import tensorflow as tf
        import keras

        parts += [f"TensorFlow {tf.__version__}", f"Keras {keras.__version__}"]
    except ImportError:  # pragma: no cover
        pass
    return ", ".join(parts)


def write_section(name, markdown, path=BENCHMARKS_MD):
    """Replaces (or appends) the section `name` of BENCHMARKS.md."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{start}\n{markdown.strip()}\n{end}"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".BENCHMARKS.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def command_line():
    """The command that ran this benchmark, as it would be typed from the project root."""
    script = os.path.relpath(os.path.abspath(sys.argv[0]), BENCHMARKS_MD.parent)
    return " ".join([".venv/bin/python", script] + sys.argv[1:])


def publish(name, lines, write=True):
    """Adds the command and machine lines, prints the section and (if `write`) stores it."""
    text = "\n".join(list(lines) + ["", f"Command: `{command_line()}`", "", f"Machine: {machine_line()}"])
    print(text)
    if write:
        write_section(name, text)
    return text
