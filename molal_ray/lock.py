"""One job at a time per output folder: a lock file beside the folder, kept alive by a heartbeat.

``with OutputLock(out, "label"):`` writes ``OUT.lock`` (next to the folder ``OUT``, so that the
folder's own content, which a job may delete and rewrite, never holds it): who holds it (command,
host, process id), since when, and a heartbeat the holder rewrites every ``heartbeat_s``. A
second job on the same folder refuses with that information. A lock whose holder is gone is
taken over, with a warning that says whose it was: on the same host, when its process no longer
exists; elsewhere (another node, object storage), when its heartbeat is older than ``stale_s``.
On a local disk the lock is created exclusively (``O_EXCL``); on object storage, written and read
back, so that of two jobs starting at the same moment one sees the other's token and stops.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import socket
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from molal_ray.exceptions import MolalError
from molal_ray.storage import Location, resolve

logger = logging.getLogger("molal_ray")

HEARTBEAT_S = 15.0
STALE_S = 120.0


class OutputLocked(MolalError):
    """Another job writes to the output folder."""


def lock_location(folder: Location) -> Location:
    parent = posixpath.dirname(folder.path.rstrip("/"))
    if not parent:
        raise OutputLocked(f"output.path: {folder} is a bucket root; use a folder inside it")
    return folder.at(
        os.path.join(parent, folder.name + ".lock") if folder.is_local else parent + "/" + folder.name + ".lock"
    )


def _now() -> float:
    return time.time()


def _stamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _alive(pid: int) -> bool:
    import psutil

    return psutil.pid_exists(pid)


class OutputLock:
    def __init__(
        self, folder: str | Location, command: str, *, heartbeat_s: float = HEARTBEAT_S, stale_s: float = STALE_S
    ) -> None:
        self.folder = resolve(folder, field="output.path")
        self.loc = lock_location(self.folder)
        self.command = command
        self.heartbeat_s, self.stale_s = heartbeat_s, stale_s
        self.token = uuid.uuid4().hex
        self.info = {
            "command": command,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "token": self.token,
            "started": _now(),
            "heartbeat": _now(),
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- reading the lock of someone else ---------------------------------------------------------
    def _read(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.loc.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # unreadable: a holder that died mid-write
        return data if isinstance(data, dict) else {}

    def _stale(self, held: dict[str, Any]) -> str | None:
        """Why the holder is gone, or None when it may still be running."""
        if not held:
            return "the lock file is unreadable"
        if held.get("host") == socket.gethostname() and isinstance(held.get("pid"), int) and not _alive(held["pid"]):
            return f"process {held['pid']} no longer exists"
        age = _now() - float(held.get("heartbeat", 0))
        if age > self.stale_s:
            return f"its last heartbeat is {age:.0f} s old"
        return None

    def _refuse(self, held: dict[str, Any]) -> OutputLocked:
        age = _now() - float(held.get("heartbeat", 0))
        return OutputLocked(
            f"output.path: {self.folder} is in use by `molal-ray {held.get('command')}` (process {held.get('pid')} on "
            f"{held.get('host')}) since {_stamp(float(held.get('started', 0)))}, last seen {age:.0f} s ago; wait "
            f"for it to end or stop it (a lock whose job died is taken over: {self.loc})"
        )

    # -- taking and keeping it ------------------------------------------------------------------
    def _write(self, exclusive: bool) -> bool:
        data = json.dumps(self.info).encode()
        if self.folder.is_local and exclusive:
            os.makedirs(os.path.dirname(self.loc.path) or ".", exist_ok=True)
            try:
                fd = os.open(self.loc.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return True
        self.loc.write_bytes(data)
        return True

    def acquire(self) -> OutputLock:
        for _ in range(3):
            held = self._read()
            if held is not None:
                why = self._stale(held)
                if why is None:
                    raise self._refuse(held)
                logger.warning(
                    "output lock: taking over %s from `molal-ray %s` (process %s on %s, since %s): %s",
                    self.loc,
                    held.get("command"),
                    held.get("pid"),
                    held.get("host"),
                    _stamp(float(held.get("started", 0))),
                    why,
                )
                self.loc.delete_file()
            if not self._write(exclusive=True):
                continue  # another job created it between the read and the write: look again
            if not self.folder.is_local:  # no exclusive create on object storage: read back after a while
                time.sleep(0.5)
                held = self._read()
                if not held or held.get("token") != self.token:
                    raise self._refuse(held or {})
            self._thread = threading.Thread(target=self._beat, name="molal-output-lock", daemon=True)
            self._thread.start()
            return self
        raise self._refuse(self._read() or {})

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            held = self._read()
            if held == {}:  # unreadable now (the storage not answering): the next beat tries again
                continue
            if held is None or held.get("token") != self.token:
                logger.warning("output lock %s was taken by another job; this job keeps running", self.loc)
                return
            self.info["heartbeat"] = _now()
            try:
                self.loc.write_bytes(json.dumps(self.info).encode())
            except OSError as exc:
                logger.warning("output lock %s: heartbeat not written (%s)", self.loc, exc)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        held = self._read()
        if held and held.get("token") == self.token:
            self.loc.delete_file()

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
