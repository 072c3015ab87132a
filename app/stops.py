"""Stop requests: a flag per run, made when the run starts and dropped when it ends."""
from __future__ import annotations

import threading


class Stops:
    """Per-session stop requests: Stop sets the flag of the session's current run, which ends after the
    step in progress."""

    def __init__(self) -> None:
        self._flags: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def begin(self, session: str | None) -> threading.Event:
        flag = threading.Event()
        if session:
            with self._lock:
                self._flags[session] = flag
        return flag

    def stop(self, session: str | None) -> bool:
        with self._lock:
            flag = self._flags.get(session or "")
        if flag is None:
            return False
        flag.set()
        return True

    def end(self, session: str | None, flag: threading.Event) -> None:
        with self._lock:
            if session and self._flags.get(session) is flag:
                del self._flags[session]
