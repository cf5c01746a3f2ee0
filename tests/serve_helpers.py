"""A real ``nnreg serve`` process on a free loopback port, and plain HTTP calls to it."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

START_TIMEOUT = 120.0  # seconds: importing torch on a busy 2-core machine can take a while
ADDRESS = re.compile(r"at http://127\.0\.0\.1:(\d+)")


class Server:
    """``nnreg serve ARGS`` in a subprocess; ``port`` once it listens."""

    def __init__(self, model_dir: Path, *args: str) -> None:
        command = [sys.executable, "-m", "nnreg", "serve", str(model_dir), "--port", "0"]
        self.proc = subprocess.Popen(
            [*command, "--no-access-log", *args],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,  # its worker processes too are stopped at the end
        )
        self.lines: list[str] = []
        self._ready = threading.Event()
        self.port = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(START_TIMEOUT) or not self.port:
            self.__exit__()
            raise RuntimeError("nnreg serve did not start:\n" + "".join(self.lines))

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            found = ADDRESS.search(line)
            if found and not self.port:
                self.port = int(found.group(1))
                self._wait_healthy()
                self._ready.set()
        self._ready.set()  # it ended

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                if request(self.port, "GET", "/health")[0] == 200:
                    return
            except OSError:
                time.sleep(0.05)

    def rss(self) -> int:
        """The server's resident memory, bytes."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024  # type: ignore[union-attr]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self._close()
        return code

    def _close(self, force: bool = False) -> None:
        self._reader.join(10)  # it reads the last lines, then the pipe ends
        if self._reader.is_alive() and force:  # a process left holds the pipe: end it first
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self._reader.join(10)
        if self.proc.stderr is not None and not self._reader.is_alive():
            self.proc.stderr.close()

    def output(self) -> str:
        return "".join(self.lines)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # the server and any worker left
        self.proc.wait()
        self._close(force=True)


def request(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
    timeout: float = 60.0,
) -> tuple[int, Any]:
    """One request on a new connection; (status, the answer's JSON)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        sent = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, path, body=data, headers={**sent, **(headers or {})})
        response = conn.getresponse()
        text = response.read()
        return response.status, json.loads(text) if text else None
    finally:
        conn.close()
