"""Atomic writes and msgpack (de)serialisation of parameter trees."""

from __future__ import annotations

import os
import tempfile

from flax import serialization


def atomic_write(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temporary file in the same folder, fsync, rename.

    A crash leaves either the old file or the new one, never a partial file.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_msgpack(path: str, tree) -> None:
    atomic_write(path, serialization.msgpack_serialize(serialization.to_state_dict(tree)))


def load_msgpack(path: str) -> dict:
    """Read a msgpack state dict; errors name the file."""
    try:
        with open(path, "rb") as f:
            return serialization.msgpack_restore(f.read())
    except FileNotFoundError:
        raise
    except Exception as err:  # msgpack raises assorted errors on truncated/corrupt input
        raise ValueError(f"{path}: not a readable msgpack checkpoint ({type(err).__name__}: {err})") from err
