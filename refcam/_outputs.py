"""Files written as one set: never over an input, never truncated, never mixed with another run's.

The command line writes several files per run (maps, overlays, figures, a manifest).  A reader of
the output folder must see either the old set or the new one, never a mixture or a half-written
file, even when two runs write into the same folder at once or the run is interrupted.
:class:`OutputSet` gives that guarantee in four steps:

1. :meth:`OutputSet.prepare` -- before any computation: the folder is created and probed for
   writability (a temporary file is created and removed: ``os.access`` is not trusted, it ignores
   read-only mounts and root), and no planned name may resolve to an input file (the run is
   refused with :class:`OutputError`: an input is never replaced, and no other name is chosen
   silently because scripts rely on the documented names).
2. :meth:`OutputSet.stage` -- each file is written in full to a temporary name in the same folder
   (``.<name>.<random>.part``), flushed and fsync'ed; a failure removes it.
3. :meth:`OutputSet.commit` -- under an exclusive lock on the folder (``flock`` on the folder
   itself; a lock file where ``flock`` is missing), every temporary file is renamed with
   :func:`os.replace` (atomic on POSIX and Windows within one file system).  Renames of two runs
   never interleave, so the folder holds one run's complete set for the names they share.
   SIGINT is deferred during the renames (they take microseconds).
4. :meth:`OutputSet.abort` (also on any exception inside ``with``) removes the temporary files.

Every committed set ends with a JSON manifest (:func:`manifest`) listing inputs, model hash,
method, options, outputs with their SHA-256 and the refcam version.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .errors import RefcamError

__all__ = ["OutputError", "OutputSet", "file_sha256", "manifest_name", "write_atomic", "write_temp"]


class OutputError(RefcamError, OSError):
    """The output folder cannot be written, or an output would replace an input."""


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest_name(output_names: Iterable[str]) -> str:
    """``refcam-<10 hex>.json``: named after the set of output names it describes.

    Re-running the same command replaces its own manifest; runs writing other files keep theirs.
    """
    key = "\n".join(sorted(output_names)).encode()
    return f"refcam-{hashlib.sha256(key).hexdigest()[:10]}.json"


@functools.lru_cache(maxsize=1)
def _file_mode() -> int:
    """``0o666`` less the process umask: the mode ``open(path, "w")`` would give a new file
    (``tempfile.mkstemp`` creates ``0o600`` files, which the renamed outputs must not keep)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def write_temp(directory: str | os.PathLike, name: str, data: bytes) -> Path:
    """Write ``data`` in full to a new temporary file ``.<name>.<random>.part`` in ``directory``.

    The file gets the mode a plain ``open(path, "w")`` would give (:func:`_file_mode`), is
    flushed and fsync'ed; on any failure it is removed and the exception propagates.  Returns
    the temporary path (the caller renames it with :func:`os.replace`).
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            if hasattr(os, "fchmod"):  # mkstemp's 0o600 -> the mode a plain open() gives
                os.fchmod(fh.fileno(), _file_mode())
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return Path(tmp)


def write_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Replace ``path`` by a file holding exactly ``data``: a reader sees the old file or the new
    one, never a truncated one (:func:`write_temp` then :func:`os.replace`, atomic within one
    file system).  Parent folders are created; returns ``path`` as a :class:`~pathlib.Path`.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = write_temp(out.parent, out.name, data)
    try:
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return out


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


@contextlib.contextmanager
def _folder_lock(directory: Path, timeout: float = 60.0) -> Iterator[None]:
    """Exclusive lock on ``directory`` between processes (``flock`` on the folder's descriptor)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: a lock file created with O_EXCL
        fcntl = None  # type: ignore[assignment]
    if fcntl is not None:
        fd = os.open(directory, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
        return
    lock = directory / ".refcam.lock"  # pragma: no cover - Windows
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            if time.monotonic() > deadline:  # a crashed run left it: take it over
                with contextlib.suppress(OSError):
                    os.unlink(lock)
            time.sleep(0.01)
    try:
        yield
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(lock)


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold Ctrl-C until the block ends (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[Any] = []
    old = signal.signal(signal.SIGINT, lambda *a: pending.append(a))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
        if pending:
            raise KeyboardInterrupt


class OutputSet:
    """Files of one run, written to temporary names and renamed together (see the module doc).

    Parameters
    ----------
    directory : the output folder (created by :meth:`prepare`).
    inputs : files this run reads; no output may resolve to one of them.

    Examples
    --------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> with OutputSet(d) as s:
    ...     _ = s.prepare(["a.txt"])
    ...     _ = s.stage("a.txt", b"hello")
    ...     [p.name for p in s.commit()]
    ['a.txt']
    >>> (d / "a.txt").read_bytes()
    b'hello'
    """

    def __init__(self, directory: str | os.PathLike, inputs: Sequence[str | os.PathLike] = ()):
        self.directory = Path(directory)
        self.inputs = [Path(p) for p in inputs]
        self._staged: list[tuple[Path, Path]] = []

    # ---------------------------------------------------------------- before computing
    def prepare(self, names: Iterable[str]) -> OutputSet:
        """Create and probe the folder; refuse names that resolve to an input.

        Raises
        ------
        OutputError
            The folder cannot be created or written, an output would replace an input, or two
            outputs of this run share a name.
        """
        names = list(names)
        d = self.directory
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(
                f"cannot create directory {str(d)!r} ({exc.strerror or exc})"
            ) from None
        try:
            fd, probe = tempfile.mkstemp(prefix=".refcam-probe-", suffix=".part", dir=d)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise OutputError(
                f"cannot write into directory {str(d)!r} ({exc.strerror or exc}); "
                f"choose another output folder"
            ) from None
        seen: set[str] = set()
        for name in names:
            if name in seen:
                raise OutputError(
                    f"output {name!r} would be written twice in one run (two inputs or methods "
                    f"give the same file name); rename an input"
                )
            seen.add(name)
            target = d / name
            if target.is_dir() and not target.is_symlink():
                raise OutputError(
                    f"output {str(target)!r} is an existing directory; choose another output folder"
                )
            for src in self.inputs:
                if _same_file(target, src):
                    raise OutputError(
                        f"output {str(target)!r} would overwrite the input {str(src)!r}; "
                        f"choose another output folder (e.g. --out refcam-out)"
                    )
        return self

    # ---------------------------------------------------------------- writing
    def stage(self, name: str, data: bytes) -> Path:
        """Write ``data`` in full to a temporary file beside ``name``; returns the final path."""
        final = self.directory / name
        self._staged.append((write_temp(self.directory, name, data), final))
        return final

    @property
    def staged(self) -> list[Path]:
        """Final paths of the staged files, in staging order."""
        return [final for _, final in self._staged]

    def commit(self) -> list[Path]:
        """Rename every staged file to its final name under the folder lock; returns the paths."""
        done: list[Path] = []
        with _sigint_deferred(), _folder_lock(self.directory):
            for tmp, final in self._staged:
                os.replace(tmp, final)
                done.append(final)
        self._staged = []
        if sys.platform != "win32":  # make the renames durable (the folder's entries)
            with contextlib.suppress(OSError):
                fd = os.open(self.directory, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        return done

    def abort(self) -> None:
        """Remove the staged temporary files (nothing at the final names is touched)."""
        for tmp, _ in self._staged:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        self._staged = []

    def __enter__(self) -> OutputSet:  # noqa: PYI034  (typing.Self needs Python 3.11)
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()


def manifest(
    *,
    inputs: Sequence[Path],
    model: dict,
    methods: Sequence[dict],
    options: dict,
    outputs: Sequence[tuple[str, bytes]],
    argv: Sequence[str] | None = None,
) -> bytes:
    """The JSON manifest of one run (UTF-8 bytes, keys sorted).

    Fields: ``refcam_version``, ``created`` (UTC, ISO 8601), ``argv``, ``inputs`` (path and
    SHA-256 of each input file), ``model`` (given fields plus its SHA-256), ``methods`` (name and
    the options :func:`refcam.explain` used), ``options`` (the command's settings), ``outputs``
    (name, bytes and SHA-256 of every file of the set; a file whose hash differs was replaced by
    a later run).
    """
    from . import __version__

    def _inp(p: Path) -> dict:
        rec: dict = {"path": str(p)}
        with contextlib.suppress(OSError):
            rec["sha256"] = file_sha256(p)
        return rec

    doc = {
        "refcam_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "argv": list(argv) if argv is not None else None,
        "inputs": [_inp(p) for p in inputs],
        "model": model,
        "methods": list(methods),
        "options": options,
        "outputs": [
            {"name": n, "bytes": len(b), "sha256": hashlib.sha256(b).hexdigest()}
            for n, b in outputs
        ],
    }
    return (json.dumps(doc, indent=1, sort_keys=True, default=repr) + "\n").encode()
