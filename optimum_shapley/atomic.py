"""Writing outputs whole or not at all: one mechanism for folders and files.

Everything the package writes for a user (a run folder, a saved model, an evaluation record) is first written
beside its destination and then moved into place with renames (``publish``), so a crash, a full disk or a kill
leaves the previous output or the new one, never a mixture. A leaf module: the standard library only.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["publish", "staged_folder", "write_json"]


def publish(source: str, output: str, *, merge: bool = False) -> None:
    """Move the complete folder ``source`` into place as ``output``.

    A missing ``output`` appears in one rename. An existing one is replaced whole (``merge=False``: renamed aside,
    then ``source`` renamed in; killed between the two renames there is no output, and the next publish cleans
    what was set aside), or, with ``merge=True``, only its entries of the same names are replaced (other files,
    such as a mask-evaluation cache, stay) and the emptied ``source`` is removed.
    """
    output = os.path.abspath(output)
    parent, name = os.path.split(output)
    if not os.path.exists(output):
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(source, 0o777 & ~umask)  # a mkdtemp folder's 0700 would otherwise become the output's mode
        os.rename(source, output)
    elif merge:
        for entry in os.listdir(source):
            target = os.path.join(output, entry)
            if os.path.isdir(target) and not os.path.islink(target):
                shutil.rmtree(target)
            os.replace(os.path.join(source, entry), target)
        shutil.rmtree(source, ignore_errors=True)  # emptied: every entry moved
    else:
        old = tempfile.mkdtemp(prefix=f".{name}.replaced-", dir=parent)
        os.rmdir(old)  # a free name beside output
        os.rename(output, old)
        os.rename(source, output)
    for old in glob.glob(os.path.join(glob.escape(parent), f".{glob.escape(name)}.replaced-*")):
        shutil.rmtree(old, ignore_errors=True)  # this call's, or one a crash between the renames left behind


@contextmanager
def staged_folder(output_dir: str | os.PathLike) -> Iterator[str]:
    """Yield an empty temporary folder beside ``output_dir``; when the block succeeds it is published into
    ``output_dir`` with ``merge=True`` (entries of the same names replaced, other files kept). A failure leaves
    ``output_dir`` as it was; what a killed save left beside it is removed by the next save to it.
    """
    output_dir = os.path.abspath(os.fspath(output_dir))
    parent, name = os.path.split(output_dir)
    os.makedirs(parent, exist_ok=True)
    prefix = f".shapley-staging-{name}."
    for stale in glob.glob(os.path.join(glob.escape(parent), glob.escape(prefix) + "*")):
        shutil.rmtree(stale, ignore_errors=True)
    staging = tempfile.mkdtemp(prefix=prefix, dir=parent)
    try:
        yield staging
        publish(staging, output_dir, merge=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_json(path: str, record: Any) -> None:
    """Write ``record`` as JSON to ``path`` whole or not at all (a temporary file beside it, then one rename)."""
    handle, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=os.path.dirname(path) or ".")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2)
            f.write("\n")
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
