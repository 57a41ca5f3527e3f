"""One writer at a time on a work folder and a publish root.

Two guards, both needed:

- **A file lock per writing process.** ``fcntl.flock`` on ``<root>/.lock``, held by a CLI
  ``run``, ``sweep`` or ``rollback`` for its whole life and by each writing task of a DAG run for
  its own. The kernel drops it when the process ends, SIGKILL included, so a killed writer never
  blocks the next one. The lock file names its holder (pid, host, command, run, since).
- **A run lease** (``<root>/.lease.json``: run, scope, holder, expiry) for a DAG run. Its tasks are
  separate processes, with gaps between them where no process holds the file lock; the lease
  covers the gaps. Each task takes or renews it (a thread renews it while the task runs), the last
  task releases it. A writer that finds another run's unexpired lease waits or stops, naming the
  run. A run whose tasks all died leaves a lease that expires ``EMBEDDING_LEASE_TTL_S`` seconds
  (default 1800) after its last renewal. Tasks of a rerun of the same data interval (``scope``)
  take the lease over: the work is the same and every stage is idempotent.

Roots are always locked in one order (sorted resolved paths), so two writers never deadlock.
Waiting: ``wait_s`` seconds (``EMBEDDING_LOCK_WAIT_S``, default 0: stop at once with the
holder's name), polling every few seconds. ``flock`` is advisory and local: on a network file
system that does not support it, run one writer at a time by other means.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from embedding.core.atomic import write_text_atomic
from embedding.core.errors import EmbeddingError

logger = logging.getLogger(__name__)

LOCK_FILE = ".lock"
LEASE_FILE = ".lease.json"
DEFAULT_LEASE_TTL_S = 1800.0
POLL_S = 2.0
_HELD: set[Path] = set()  # roots this process holds
# roots the process that started this one holds (a job it launched works under its lock)
HELD_ENV = "EMBEDDING_HELD_ROOTS"


class LockHeldError(EmbeddingError):
    """Another writer holds the work folder or publish root."""


def lease_ttl_s() -> float:
    return float(os.environ.get("EMBEDDING_LEASE_TTL_S", DEFAULT_LEASE_TTL_S))


def default_wait_s(fallback: float = 0.0) -> float:
    """``EMBEDDING_LOCK_WAIT_S`` when set, else ``fallback`` (0 for the CLI: stop at once;
    a DAG task passes the lease TTL plus a margin: it waits out a dead run's lease)."""
    return float(os.environ.get("EMBEDDING_LOCK_WAIT_S", fallback))


def _now() -> float:
    return time.time()


def _stamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Holder:
    """Who writes: recorded in the lock file and the lease, shown to whoever is refused."""

    command: str
    run: str | None = None
    scope: str | None = None

    def record(self) -> dict:
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": self.command,
            "run": self.run,
            "scope": self.scope,
            "since": _stamp(_now()),
        }


def _describe(record: dict | None) -> str:
    if not record:
        return "another process (it recorded no name)"
    run = f", run {record['run']}" if record.get("run") else ""
    return (
        f"{record.get('command', '?')} (pid {record.get('pid', '?')} on "
        f"{record.get('host', '?')}{run}, since {record.get('since', '?')})"
    )


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_lease(root: Path) -> dict | None:
    """The lease of ``root``, None when there is none or it cannot be read."""
    return _read_json(Path(root) / LEASE_FILE)


def _foreign_lease(root: Path, holder: Holder) -> dict | None:
    """An unexpired lease of another run (not ``holder``'s run or scope), else None."""
    lease = read_lease(root)
    if lease is None or float(lease.get("expires_at", 0)) <= _now():
        return None
    if holder.run is not None and lease.get("run") == holder.run:
        return None
    if holder.scope is not None and lease.get("scope") == holder.scope:
        return None
    return lease


def _try_flock(root: Path, holder: Holder) -> int | None:
    """An fd holding ``<root>/.lock`` exclusively, or None when another process holds it."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(holder.record(), sort_keys=True) + "\n").encode(), 0)
    return fd


def _write_lease(roots: Sequence[Path], holder: Holder, ttl_s: float) -> None:
    lease = {**holder.record(), "expires_at": _now() + ttl_s}
    lease["expires"] = _stamp(lease["expires_at"])
    for root in roots:
        write_text_atomic(root / LEASE_FILE, json.dumps(lease, indent=1, sort_keys=True) + "\n")


def release_lease(roots: Sequence[Path], run: str) -> None:
    """Remove the leases ``run`` holds (another run's are left alone)."""
    for root in roots:
        lease = read_lease(root)
        if lease is not None and lease.get("run") == run:
            (Path(root) / LEASE_FILE).unlink(missing_ok=True)
            logger.info("released the lease of run %s on %s", run, root)


def _acquire(roots: list[Path], holder: Holder) -> tuple[list[int], str | None]:
    """(fds, None) with every root locked and no foreign lease, else ([], why)."""
    fds: list[int] = []
    for root in roots:
        fd = _try_flock(root, holder)
        if fd is None:
            for held in fds:
                os.close(held)
            return [], f"{root} is locked by {_describe(_read_json(root / LOCK_FILE))}"
        fds.append(fd)
    for root in roots:
        if (lease := _foreign_lease(root, holder)) is not None:
            for held in fds:
                os.close(held)
            return [], (
                f"{root} is leased by {_describe(lease)} until {lease.get('expires', '?')}; "
                f"after a crash, wait for it to expire or delete {root / LEASE_FILE}"
            )
    return fds, None


class _Renewer(threading.Thread):
    """Renews the lease while a long task runs, so that it never expires under it."""

    def __init__(self, roots: list[Path], holder: Holder, ttl_s: float) -> None:
        super().__init__(name="lease-renewer", daemon=True)
        self.roots, self.holder, self.ttl_s = roots, holder, ttl_s
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(max(1.0, self.ttl_s / 6)):
            try:
                _write_lease(self.roots, self.holder, self.ttl_s)
            except OSError as exc:  # the next renewal tries again
                logger.warning("could not renew the lease: %s", exc)


@contextmanager
def exclusive(
    roots: Sequence[Path | str],
    command: str,
    run: str | None = None,
    scope: str | None = None,
    release: bool = False,
    wait_s: float | None = None,
) -> Iterator[None]:
    """Hold every root for one writer: the file lock of each, and no other run's lease.

    ``run`` given (a DAG task): take or renew the run's lease, renewed while the block runs;
    ``release`` removes it at the end (the run's last task), also when the block fails.
    Raises LockHeldError, naming the holder, when ``wait_s`` (default
    ``EMBEDDING_LOCK_WAIT_S``, 0) runs out.
    """
    ordered = sorted({Path(r).resolve() for r in roots})
    holder = Holder(command, run, scope)
    wait_s = default_wait_s() if wait_s is None else wait_s
    deadline = time.monotonic() + wait_s
    logged = False
    while True:
        fds, why = _acquire(ordered, holder)
        if why is None:
            break
        if time.monotonic() >= deadline:
            raise LockHeldError(f"{command}: {why}; run again when it has finished")
        if not logged:
            logger.warning("%s waits (up to %.0f s): %s", command, wait_s, why)
            logged = True
        time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))
    with ExitStack() as stack:
        for fd in fds:
            stack.callback(os.close, fd)
        _HELD.update(ordered)
        stack.callback(_HELD.difference_update, ordered)
        if run is not None:
            ttl_s = lease_ttl_s()
            _write_lease(ordered, holder, ttl_s)
            renewer = _Renewer(ordered, holder, ttl_s)
            renewer.start()
            stack.callback(renewer.join)
            stack.callback(renewer.stopped.set)
            if release:
                stack.callback(release_lease, ordered, run)
        yield


@contextmanager
def run_task(
    roots: Sequence[Path | str],
    command: str,
    run: str,
    scope: str,
    final_try: bool,
    release: bool = False,
    wait_s: float | None = None,
    no_retry: tuple[type[BaseException], ...] = (),
) -> Iterator[None]:
    """``exclusive`` for one task of a DAG run. A failure on the task's ``final_try``, or one
    of the ``no_retry`` kinds (no retry will come: the run stops here), releases the run's
    lease, so the next run does not wait for it to expire."""
    try:
        with exclusive(roots, command, run, scope, release, wait_s):
            yield
    except BaseException as exc:
        if final_try or isinstance(exc, no_retry):
            release_lease(sorted({Path(r).resolve() for r in roots}), run)
        raise


def held_here(root: Path | str) -> bool:
    """True when this process holds ``root`` (inside ``exclusive``): nobody else writes there,
    so whatever scratch it finds was left by a writer that died."""
    path = Path(root).resolve()
    if path in _HELD:
        return True
    inherited = os.environ.get(HELD_ENV, "").split(os.pathsep)
    return str(path) in inherited and not lock_is_free(path)


def held_env() -> dict[str, str]:
    """The environment that tells a child process which roots this one holds for it."""
    return {HELD_ENV: os.pathsep.join(str(p) for p in sorted(_HELD))}


def lock_is_free(root: Path | str) -> bool:
    """True when nobody holds ``<root>/.lock`` (tests and diagnostics)."""
    path = Path(root) / LOCK_FILE
    if not path.exists():
        return True
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True
