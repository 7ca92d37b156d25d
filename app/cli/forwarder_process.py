"""The forwarder processes ``serve`` runs beside its workers (WAVY_FORWARDER=process), one per
worker: started at a lower CPU priority, started again if one dies, stopped when serve
stops."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

from app.settings import Settings

log = logging.getLogger(__name__)

# The environment variable that tells `forward` which serve started it.
PARENT_ENV = "WAVY_FORWARD_PARENT"
# A forwarder that died is started again after this long.
RESTART_DELAY_S = 1.0
# At stop, the forwarder gets this long to record the attempts in flight (then it is killed).
STOP_TIMEOUT_S = 15.0


def lower_priority(nice: int) -> None:
    """The process's nice value, and, where Linux groups the scheduling of each session
    (autogroup, the default on desktops and many servers), its new session's: there a nice
    value counts only against the session's own processes, and the forwarder's session would
    otherwise take an equal share of the CPU with the workers'."""
    os.nice(nice)
    with contextlib.suppress(OSError):
        Path("/proc/self/autogroup").write_text(str(nice))


class ForwarderProcess:
    def __init__(self, settings: Settings) -> None:
        self._nice = settings.forward_nice
        self._processes: list[subprocess.Popen[bytes]] = []
        self._count = settings.workers
        self._stopping = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="forwarder", daemon=True)

    def start(self) -> None:
        self._processes = [self._spawn() for _ in range(self._count)]
        self._watcher.start()

    def _spawn(self) -> subprocess.Popen[bytes]:
        nice = self._nice
        return subprocess.Popen(
            [sys.executable, "-m", "app.cli", "forward"],
            env={**os.environ, PARENT_ENV: str(os.getpid())},
            # Its own session: a Ctrl-C in the terminal reaches serve, which stops it in turn
            # (else it would stop first and be started again).
            start_new_session=True,
            preexec_fn=lambda: lower_priority(nice),
        )

    def _watch(self) -> None:
        while not self._stopping.wait(RESTART_DELAY_S):
            for n, process in enumerate(self._processes):
                if process.poll() is not None and not self._stopping.is_set():
                    log.warning("a forwarder exited (%s): starting it again", process.returncode)
                    self._processes[n] = self._spawn()

    def stop(self) -> None:
        self._stopping.set()
        running = [process for process in self._processes if process.poll() is None]
        for process in running:
            process.terminate()
        for process in running:
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
