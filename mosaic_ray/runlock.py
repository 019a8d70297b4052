"""One writer per run folder: ``<run>/_LOCK.json``, taken for the whole of a pipeline invocation.

:func:`mosaic_ray.pipeline.run_steps` holds a :class:`RunLock` on the run's storage around its
Ray session, so two ``mosaic-ray`` commands on one run folder never write it at the same time
(the second fails at once with :class:`LockedError`, exit 2, or waits ``wait_s`` seconds).

The lock object is created atomically through :meth:`Storage.create_exclusive
<mosaic_ray.storage.Storage.create_exclusive>` (local: a hard link of a complete temporary file;
S3: a conditional put, ``If-None-Match: *``) and holds ``host``, ``pid``, ``since`` (UTC),
``command`` and a random ``token``. It is removed when the ``with`` block exits, also on an
exception or ``KeyboardInterrupt``, and only if it is still this holder's (same token).

A lock left by a process that died without releasing it (``kill -9``, a crash, a second Ctrl-C
that forced the exit) is *stale* when it names this host and its pid is not alive (or is alive
but started after the lock was taken: a reused pid); a stale lock is taken over with a logged
warning. A lock from another host cannot be checked from here: the error names the holder and
says to remove the lock object if that process is gone.

The takeover removes the stale object only if it is still the one that was read (S3: a delete
with ``If-Match`` on its ETag; local: a content check and unlink under an ``flock`` on a guard
file beside it, which the kernel releases if its holder dies), then creates a new lock exclusively; so of several processes taking over
one stale lock at once, exactly one holds it afterwards.

``wait_s`` defaults to ``$MOSAIC_LOCK_WAIT_S`` (0: fail at once).
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import logging
import os
import posixpath
import socket
import sys
import time
import uuid

from mosaic_ray.errors import UsageError
from mosaic_ray.storage import Storage, StorageError, _boto3_s3

log = logging.getLogger(__name__)

#: the lock object, relative to the run root (``_`` names are left out of listings)
LOCK_NAME = "_LOCK.json"
#: seconds between attempts while waiting for a held lock
POLL_S = 0.5
#: local only: the file whose ``flock`` serialises removals of the lock object (``.tmp-``: left
#: out of listings)
GUARD_NAME = ".tmp-lock-guard"


class LockedError(UsageError):
    """The run folder is locked by another live (or unverifiable) process; the message names the
    holder (host, pid, command, since when) and the fix (exit 2)."""


def _pid_alive(pid: int, since_unix: float | None) -> bool:
    """Whether ``pid`` is a live process on this host that may be the lock's holder (a process
    started after the lock was taken is a reused pid, not the holder)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    except OSError:
        return False
    if since_unix is not None:
        try:
            import psutil

            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                return False
            if proc.create_time() > since_unix + 1.0:
                return False
        except Exception:  # psutil missing or the process just ended: trust os.kill
            pass
    return True


def _describe(info: dict) -> str:
    cmd = info.get("command") or "?"
    return (f"pid {info.get('pid', '?')} on host {info.get('host', '?')} "
            f"since {info.get('since', '?')} (`{cmd}`)")


class RunLock:
    """Context manager holding ``<run>/_LOCK.json`` on ``storage`` for the ``with`` block.

    Args:
        storage: the run's storage (local folder or ``s3://``).
        wait_s: seconds to wait for a lock held by a live process before failing
            (None: ``$MOSAIC_LOCK_WAIT_S``, default 0 = fail at once).
        command: what the lock says is running (default: this process's command line).

    Guarantees: while the block runs, this process holds the only lock object on the run
    folder; on exit (normal, exception, ``KeyboardInterrupt``) the object is removed if it is
    still this holder's. Re-entering the same RunLock is an error; a second RunLock on the same
    folder in the same process fails like any other holder.

    Raises (on enter):
        LockedError: held by a live process on this host, or by any process on another host,
            and ``wait_s`` elapsed.
        StorageError: the lock object cannot be created or read.
    """

    def __init__(self, storage: Storage, wait_s: float | None = None, command: str | None = None):
        self.storage = storage
        self.wait_s = float(os.environ.get("MOSAIC_LOCK_WAIT_S", "0") or 0) if wait_s is None else float(wait_s)
        self.command = command if command is not None else " ".join(
            [posixpath.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python", *sys.argv[1:]])[:300]
        self.info: dict | None = None

    @property
    def uri(self) -> str:
        """The lock object's URI."""
        return self.storage.uri(LOCK_NAME)

    # ------------------------------------------------------------------ enter / exit
    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock (see the class); raises LockedError / StorageError."""
        if self.info is not None:
            raise RuntimeError(f"{self.uri} is already held by this RunLock")
        now = time.time()
        info = {"host": socket.gethostname(), "pid": os.getpid(),
                "since": _dt.datetime.fromtimestamp(now, _dt.timezone.utc).isoformat(timespec="seconds"),
                "since_unix": now, "command": self.command, "token": uuid.uuid4().hex}
        data = json.dumps(info, indent=2).encode()
        deadline = time.monotonic() + max(0.0, self.wait_s)
        waited = False
        while True:
            if self.storage.create_exclusive(LOCK_NAME, data):
                self.info = info
                log.debug("locked %s", self.uri)
                return
            held, tag = self._read()
            if held is None:  # released between our create and our read: try again at once
                continue
            if self._stale(held):
                log.warning("taking over the stale lock %s: %s is no longer running",
                            self.uri, _describe(held))
                self._remove_if_unchanged(tag)
                continue
            if time.monotonic() >= deadline:
                what = f" (waited {self.wait_s:g} s)" if waited else ""
                raise LockedError(
                    f"run folder {self.storage.uri()} is in use by {_describe(held)}{what}: wait for it "
                    f"to finish (or set MOSAIC_LOCK_WAIT_S), or remove {self.uri} if that process is gone")
            if not waited:
                log.info("run folder %s is in use by %s: waiting up to %g s", self.storage.uri(),
                         _describe(held), self.wait_s)
                waited = True
            time.sleep(max(0.01, min(POLL_S, deadline - time.monotonic())))

    def release(self) -> None:
        """Remove the lock object if it is still this holder's (never raises for a lock that
        was already removed or taken over: that is logged)."""
        if self.info is None:
            return
        token, self.info = self.info["token"], None
        try:
            held, tag = self._read()
            if held is None:
                log.warning("lock %s was already removed", self.uri)
            elif held.get("token") != token:
                log.warning("lock %s is no longer ours (now %s): left in place", self.uri, _describe(held))
            else:
                self._remove_if_unchanged(tag)
                log.debug("unlocked %s", self.uri)
        except StorageError as e:  # releasing must not hide the block's own error
            log.warning("could not remove the lock %s: %s (remove it by hand)", self.uri, e)

    # ------------------------------------------------------------------ helpers
    def _stale(self, held: dict) -> bool:
        if held.get("host") != socket.gethostname():
            return False  # cannot check another host's processes
        try:
            pid = int(held.get("pid", -1))
        except (TypeError, ValueError):
            return False
        since = held.get("since_unix")
        return not _pid_alive(pid, float(since) if isinstance(since, (int, float)) else None)

    def _read(self) -> tuple[dict | None, object]:
        """The lock's content and a tag identifying this version of it (S3: the ETag; local:
        the raw bytes); ``(None, None)`` when there is no lock. An unreadable lock is returned
        as ``{}`` (never stale: it names no host)."""
        if not self.storage.is_local:
            bucket, _, key = self.storage.path(LOCK_NAME).partition("/")
            try:
                resp = _boto3_s3(self.storage.config).get_object(Bucket=bucket, Key=key)
                raw, tag = resp["Body"].read(), resp.get("ETag")
            except Exception as e:
                code = str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))
                if code in ("NoSuchKey", "404"):
                    return None, None
                raise StorageError(f"cannot read {self.uri}: {' '.join(str(e).split())[:200]}") from e
        else:
            try:
                with open(self.storage.path(LOCK_NAME), "rb") as f:
                    raw = f.read()
            except FileNotFoundError:
                return None, None
            except OSError as e:
                raise StorageError(f"cannot read {self.uri}: {e}") from e
            tag = raw
        try:
            held = json.loads(raw)
        except ValueError:
            held = {}
        return (held if isinstance(held, dict) else {}), tag

    def _remove_if_unchanged(self, tag) -> None:
        """Delete the lock object only if it is still the version ``tag`` names."""
        if not self.storage.is_local:
            bucket, _, key = self.storage.path(LOCK_NAME).partition("/")
            try:
                _boto3_s3(self.storage.config).delete_object(Bucket=bucket, Key=key, IfMatch=tag)
            except Exception as e:
                code = str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))
                if code in ("PreconditionFailed", "412", "NoSuchKey", "404"):
                    return  # changed or gone meanwhile: the caller reads it again
                raise StorageError(f"cannot remove {self.uri}: {' '.join(str(e).split())[:200]}") from e
            return
        path = self.storage.path(LOCK_NAME)
        guard = posixpath.join(posixpath.dirname(path), GUARD_NAME)
        try:
            # every local remover holds the guard's flock (released by the kernel when its holder
            # dies, so it is never stale): the read-compare-unlink below is then atomic against
            # every other remover, and a creator cannot slip in between since the object exists
            # until the unlink
            with open(guard, "a+b") as g:
                fcntl.flock(g.fileno(), fcntl.LOCK_EX)
                try:
                    with open(path, "rb") as f:
                        if f.read() != tag:
                            return  # changed meanwhile: the caller reads it again
                    os.unlink(path)
                except FileNotFoundError:
                    return
                finally:
                    fcntl.flock(g.fileno(), fcntl.LOCK_UN)
        except OSError as e:
            raise StorageError(f"cannot remove {self.uri}: {e}") from e
