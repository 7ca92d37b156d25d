"""The forwarder process ``serve`` runs beside its workers (WAVY_FORWARDER=process): started
at a lower CPU priority, started again if it dies, stopped when serve stops."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading

from app.settings import Settings

log = logging.getLogger(__name__)

# The environment variable that tells `forward` which serve started it.
PARENT_ENV = "WAVY_FORWARD_PARENT"
# A forwarder that died is started again after this long.
RESTART_DELAY_S = 1.0
# At stop, the forwarder gets this long to record the attempts in flight (then it is killed).
STOP_TIMEOUT_S = 15.0


class ForwarderProcess:
    def __init__(self, settings: Settings) -> None:
        self._nice = settings.forward_nice
        self._process: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="forwarder", daemon=True)

    def start(self) -> None:
        self._spawn()
        self._watcher.start()

    def _spawn(self) -> None:
        nice = self._nice
        self._process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "forward"],
            env={**os.environ, PARENT_ENV: str(os.getpid())},
            # Its own session: a Ctrl-C in the terminal reaches serve, which stops it in turn
            # (else it would stop first and be started again).
            start_new_session=True,
            preexec_fn=lambda: os.nice(nice),
        )

    def _watch(self) -> None:
        while not self._stopping.wait(RESTART_DELAY_S):
            process = self._process
            if process is not None and process.poll() is not None and not self._stopping.is_set():
                log.warning("the forwarder exited (%s): starting it again", process.returncode)
                self._spawn()

    def stop(self) -> None:
        self._stopping.set()
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
