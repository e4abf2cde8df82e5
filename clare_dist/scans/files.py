"""Reading a scan's bytes: regular files only, never more than the limit.

An archive folder can hold anything a file system can: a named pipe (opening it for reading
waits for a writer forever), a socket, a device, a directory called `x.png`, a link loop, or a
file far larger than any scan. Each is decided from `stat` before the file is opened, opened
without blocking, checked again on the open descriptor (it may have been swapped meanwhile) and
read up to the limit plus one byte, so nothing waits or allocates beyond the limit.
"""

from __future__ import annotations

import os
import stat

from clare_dist.scans.errors import ScanError

ScanSource = bytes | bytearray | memoryview | str | os.PathLike

_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
_NOT_REGULAR = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
                (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def load_bytes(source: ScanSource, max_bytes: int) -> bytes:
    """The scan's bytes from a path (a regular file) or a buffer, refused past `max_bytes`."""
    if isinstance(source, (str, os.PathLike)):
        return _read_regular_file(os.fspath(source), max_bytes)
    size = memoryview(source).nbytes
    if size > max_bytes:
        raise _too_large(f"{size:,}", max_bytes)
    return bytes(source)


def _read_regular_file(path: str, max_bytes: int) -> bytes:
    try:
        before = os.stat(path)  # follows links: a link to a FIFO is a FIFO
        _check_regular(before, max_bytes)
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as err:
        raise _unreadable(path, err) from err
    with os.fdopen(fd, "rb", buffering=0) as f:
        try:
            _check_regular(os.fstat(fd), max_bytes)
            data = f.read(max_bytes + 1)
        except OSError as err:
            raise _unreadable(path, err) from err
    if len(data) > max_bytes:  # grew since stat, or a file system that reports no size
        raise _too_large("more", max_bytes)
    return data


def _check_regular(info: os.stat_result, max_bytes: int) -> None:
    if not stat.S_ISREG(info.st_mode):
        what = next((name for test, name in _NOT_REGULAR if test(info.st_mode)), "not a regular file")
        raise ScanError("not_a_file", f"the scan path is {what}, not a regular file; it is not read. "
                                      "Remove it from the archive folder or point the manifest at the image file")
    if info.st_size > max_bytes:
        raise _too_large(f"{info.st_size:,}", max_bytes)


def _too_large(size: str, max_bytes: int) -> ScanError:
    return ScanError("file_too_large", f"the scan is {size} bytes, over the limit of {max_bytes:,} bytes "
                                       "(--max-file-mb); a radiograph is rarely over 100 MB: check that this is the image")


def _unreadable(path: str, err: OSError) -> ScanError:
    return ScanError("unreadable", f"cannot read the scan file {path!r}: {err.strerror or err}; "
                                   "check that the path exists and that this service may read it")
