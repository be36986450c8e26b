"""The run directory as the user's data: one process at a time, and writes that cannot leave a
half-written file behind.

`RunLock` takes an OS lock (flock) on the directory itself, so taking it writes nothing into the
directory, and the kernel releases it when the holder exits in any way, SIGKILL included: a
killed run never leaves a stale lock. A second process is refused with the holder's pid.
"""

import contextlib
import errno
import fcntl
import os
import re
from collections.abc import Iterator
from typing import IO, Any

from arch.errors import ConfigError


class StorageError(Exception):
    """Writing the run directory failed (disk full, permissions, a vanished mount); the message
    names the path and says what was kept."""


def os_reason(error: BaseException) -> str:
    """'No space left on device' from an OSError or from an error that carries an OS error code
    (tensorstore's "[os_error_code='28']"), else the first line of the error's message."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    code = re.search(r"os_error_code='?(\d+)", str(error))
    if code:
        return os.strerror(int(code.group(1)))
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def holder_pid(path: str) -> int | None:
    """The pid holding an flock on `path`, from /proc/locks (Linux); None where unknown."""
    try:
        inode = os.stat(path).st_ino
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        # "1: FLOCK  ADVISORY  WRITE 12345 fd:01:1234567 0 EOF"
        match = re.search(r"FLOCK\s+\S+\s+WRITE\s+(\d+)\s+[0-9a-f]+:[0-9a-f]+:(\d+)\s", line)
        if match and int(match.group(2)) == inode:
            return int(match.group(1))
    return None


class RunLock:
    """An exclusive lock on a run directory for the life of one run (a context manager).

    The directory is created if it is missing; a path that cannot be a run directory (a regular
    file, a place that cannot be written) is a ConfigError, as is a directory another process
    holds.
    """

    def __init__(self, path: str):
        self.path = path
        self.descriptor: int | None = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def acquire(self) -> None:
        path = self.path
        if os.path.exists(path) and not os.path.isdir(path):
            raise ConfigError(f"--run-dir {path} is a file, not a directory; choose another path")
        try:
            os.makedirs(path, exist_ok=True)
            if not os.access(path, os.W_OK | os.X_OK):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
            self.descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as error:
            raise ConfigError(
                f"--run-dir {path} cannot be used as a run directory ({os_reason(error)}); "
                "choose a writable path"
            ) from None
        try:
            fcntl.flock(self.descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(self.descriptor)
            self.descriptor = None
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise ConfigError(
                    f"--run-dir {path} cannot be locked ({os_reason(error)}); choose a local "
                    "directory"
                ) from None
            pid = holder_pid(path)
            holder = f"process {pid}" if pid is not None else "another process"
            raise ConfigError(
                f"--run-dir {path} is in use by {holder} (it holds the run directory's lock); "
                "wait for it to finish, stop it, or choose another --run-dir"
            ) from None

    def release(self) -> None:
        if self.descriptor is not None:
            os.close(self.descriptor)  # closing the last descriptor releases the flock
            self.descriptor = None


@contextlib.contextmanager
def atomic_file(path: str, mode: str = "w") -> Iterator[IO]:
    """A file to write `path` through: a temporary file, synced and renamed onto `path` when
    the block ends, so a crash leaves either the old file or the new one, never a truncated
    one (removed on an error). OSError becomes StorageError."""
    temporary = f"{path}.tmp-{os.getpid()}"
    try:
        with open(temporary, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise StorageError(f"cannot write {path}: {os_reason(error)}") from None


def write_atomically(path: str, text: str) -> None:
    """Write `text` to `path` through `atomic_file`."""
    with atomic_file(path) as f:
        f.write(text)
