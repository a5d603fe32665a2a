"""Atomic file writes: write under a temporary name next to the target, then rename it into
place. A killed process never leaves half a file under the real name, and a reader (another
sweep job sharing a cache) sees the old file or the new one, never one being written.

The temporary name is hidden and holds this machine's name and this process's id, so two
processes writing the same target never write into each other's temporary file, even on
two machines sharing a cache folder (a SLURM sweep): a leftover is judged stale only by the
machine that wrote it.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path

# .NAME.HOST-PID.tmp or .STEM.HOST-PID.tmp.SUFFIX (.NAME.PID.tmp: written before the host was added)
TEMP_NAME = re.compile(r"\..+\.(?:(?P<host>[A-Za-z0-9-]+)-)?(?P<pid>\d+)\.tmp(\.[^.]+)?")
HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0]) or "host"


def _owner() -> str:
    return f"{HOST}-{os.getpid()}"


def temp_path(target, keep_suffix: bool = False) -> Path:
    """`.NAME.HOST-PID.tmp` next to `target`. `keep_suffix`: `.STEM.HOST-PID.tmp.SUFFIX`, for writers
    that choose the format from the suffix (Keras `.keras`, NumPy `.npz`, LiteRT `.tflite`).
    Without it the name ends in `.tmp`, so a leftover is never taken for an image."""
    target = Path(target)
    if keep_suffix:
        return target.with_name(f".{target.stem}.{_owner()}.tmp{target.suffix}")
    return target.with_name(f".{target.name}.{_owner()}.tmp")


def remove_stale(folder) -> list[Path]:
    """Remove the temporary files and folders in `folder` left by processes of this machine
    that no longer run (killed while writing); those of live processes, and those of other
    machines (whose processes this one cannot see), are kept. The removed paths."""
    removed = []
    for path in Path(folder).glob(".*.tmp*"):
        match = TEMP_NAME.fullmatch(path.name)
        if match and match["host"] in (None, HOST) and not _alive(int(match["pid"])):
            remove(path)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def replacing(target, keep_suffix: bool = False):
    """Yields the temporary path to write (a file or a folder); when the block ends, it replaces
    `target` (an existing folder is removed first). On an error the temporary is removed and
    `target` is left as it was."""
    target = Path(target)
    tmp = temp_path(target, keep_suffix)
    remove(tmp)
    try:
        yield tmp
    except BaseException:
        remove(tmp)
        raise
    if tmp.is_dir() and target.is_dir():
        shutil.rmtree(target)  # os.replace cannot put a folder over a non-empty one
    os.replace(tmp, target)


def write_json(target, data, indent: int | None = None) -> None:
    with replacing(target) as tmp:
        tmp.write_text(json.dumps(data, ensure_ascii=False, indent=indent), encoding="utf-8")
