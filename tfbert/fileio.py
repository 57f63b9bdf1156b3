"""Atomic writes: a file or a directory appears whole or not at all.

Everything is built under a temporary sibling name and renamed into place, so a crash or an
error never leaves a half-written model directory, export or vocabulary behind, and never
destroys the previous good one.
"""

import contextlib
import os
import shutil
import tempfile


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_readable(path):
    """Gives `path` (and a directory's contents) the modes a plain mkdir/open would.

    mkstemp/mkdtemp create 0600/0700 entries; a model served by another user (TF Serving
    in a container) must be able to read them.
    """
    mask = _umask()
    if os.path.isdir(path):
        for root, dirs, files in os.walk(path):
            os.chmod(root, 0o777 & ~mask)
            for name in files:
                os.chmod(os.path.join(root, name), 0o666 & ~mask)
    else:
        os.chmod(path, 0o666 & ~mask)


def write_text_atomic(path, text):
    """Writes `text` to `path` through a temporary sibling and a rename."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        make_readable(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def replace_directory(new, target):
    """Moves directory `new` to `target`; an old `target` is kept until the move is done."""
    if not os.path.exists(target):
        os.rename(new, target)
        return
    old = f"{target}.old-{os.getpid()}"
    os.rename(target, old)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(target):
    """Yields a temporary sibling of `target` to fill; on success it becomes `target`.

    On an error the temporary is removed and an existing `target` is left as it was.
    """
    target = os.path.abspath(target)
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(target)}.tmp-")
    try:
        yield tmp
        make_readable(tmp)
        replace_directory(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
