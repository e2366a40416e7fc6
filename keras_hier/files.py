"""Atomic, crash-safe writes: the one place keras_hier writes a file or folder.

A write goes to a hidden temporary sibling and is renamed into place, so a
reader (TF-Serving polling a folder, a resumed run) never sees half a file,
and a failed write (full disk, kill) leaves the old file as it was and no
temporary behind. New files and folders get the modes the user's umask
gives (0644 / 0755 under umask 022), never the private modes of `tempfile`.
"""

import contextlib
import json
import os
import shutil
import tempfile

__all__ = ["atomic_write_text", "atomic_write_json", "atomic_replace", "umask_modes", "make_readable"]


def umask_modes():
    """`(file_mode, dir_mode)` that `open`/`mkdir` would give under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask, 0o777 & ~mask


def make_readable(path):
    """Gives `path` (a file, or a folder and everything under it) the umask's default modes.

    `tempfile.mkdtemp`/`mkstemp` create private (0700/0600) entries; call this
    before renaming them into a place other users (a model server) read.
    """
    file_mode, dir_mode = umask_modes()
    if os.path.isdir(path):
        os.chmod(path, dir_mode)
        for root, dirs, files in os.walk(path):
            for name in dirs:
                os.chmod(os.path.join(root, name), dir_mode)
            for name in files:
                os.chmod(os.path.join(root, name), file_mode)
    else:
        os.chmod(path, file_mode)


@contextlib.contextmanager
def atomic_replace(path):
    """Context manager yielding a temporary path in `path`'s folder; renamed to `path` on success.

    The temporary keeps `path`'s suffix (Keras' `save_weights` checks it). On
    any error the temporary is removed and `path` is left untouched.

    Example:
    >>> import os, tempfile
    >>> target = os.path.join(tempfile.mkdtemp(), "a.txt")
    >>> with atomic_replace(target) as tmp:
    ...     _ = open(tmp, "w").write("hello")
    >>> open(target).read()
    'hello'
    """
    path = os.fspath(path)
    directory, name = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".tmp-{os.getpid()}-", suffix=f"-{name}")
    os.close(fd)
    try:
        yield tmp
        make_readable(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_text(path, text):
    """Writes `text` (UTF-8) to `path` atomically."""
    with atomic_replace(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_json(path, obj, indent=2, **kwargs):
    """Writes `obj` as JSON to `path` atomically (`kwargs` go to `json.dumps`)."""
    atomic_write_text(path, json.dumps(obj, indent=indent, **kwargs))
