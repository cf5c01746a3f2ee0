"""Serving a model folder over HTTP: ``nnreg serve`` (the ``nnreg[serve]`` extra).

::

    app.py      the FastAPI application: /predict, /health, /metadata, limits, errors
    schema.py   the request contract derived from the model's features (and its JSON Schema)

:func:`run` loads the model (once, hash-checked: a tampered folder stops it before it binds a
port), binds the socket, and serves until SIGTERM or Ctrl-C, after which the requests in
flight are answered before it returns.
"""

from __future__ import annotations

import gc
import inspect
import json
import os
import signal
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..exceptions import ConfigError, MissingExtraError
from .app import ENVIRONMENT, Limits, create_app, require_extra

__all__ = ["Limits", "MissingExtraError", "create_app", "require_extra", "run"]

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def run(
    model_dir: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    limits: Limits | None = None,
    access_log: bool = True,
    announce: Callable[[str], None] = print,
) -> dict[str, int]:
    """Serve ``model_dir`` until SIGTERM or SIGINT; returns the requests taken in and answered
    (counted by this process: with ``workers`` > 1 each worker counts its own, and both are 0
    here). ``announce`` receives the lines a person starting the server should read."""
    require_extra()
    import uvicorn

    limits = limits or Limits()
    app = create_app(model_dir, limits)  # loads and checks the folder before anything binds
    from .app import Counter

    counter = Counter(app)
    config = uvicorn.Config(
        counter if workers == 1 else "nnreg.serving.app:from_environment",
        factory=workers > 1,
        host=host,
        port=port,
        workers=workers,
        access_log=access_log,
        log_level="info" if access_log else "warning",
        timeout_graceful_shutdown=max(1, round(limits.timeout)),
        lifespan="on" if workers > 1 else "off",  # a worker says what it answered at shutdown
        proxy_headers=False,  # X-Forwarded-For is taken from no one: the log shows the peer
    )
    served = app.state.served
    sock = bind(host, port)
    where = _address(sock.getsockname(), host)
    announce(
        f"serving {Path(model_dir)} ({len(served.contract.names)} features -> "
        f"{', '.join(served.targets)}) at {where}"
    )
    announce(f"POST {where}/predict; GET /health, /metadata, /openapi.json; SIGTERM stops")
    if host not in LOOPBACK:
        announce(f"warning: {host} is reachable from other machines; nnreg serve has no login.")
    gc.freeze()  # what is loaded now stays: the collector no longer walks it between requests
    with _quiet_signals():
        if workers > 1:
            _run_workers(config, sock, model_dir, limits)
        else:
            uvicorn.Server(config).run(sockets=[sock])
    return {"taken": counter.taken, "answered": counter.answered}


def _run_workers(config: Any, sock: socket.socket, model_dir: str | Path, limits: Limits) -> None:
    """uvicorn's supervisor of ``config.workers`` processes, each loading the model itself
    (told where by :data:`ENVIRONMENT`) with its share of the cores."""
    import torch
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    threads = max(1, torch.get_num_threads() // config.workers)
    os.environ[ENVIRONMENT] = json.dumps(
        {"model": str(model_dir), "limits": asdict(limits), "threads": threads}
    )
    extra = {}  # uvicorn before 0.36 also wants the function each worker runs
    if "target" in inspect.signature(Multiprocess).parameters:
        extra["target"] = uvicorn.Server(config).run
    Multiprocess(config, sockets=[sock], **extra).run()


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port``, made with the TCP protocol number: asyncio sets
    TCP_NODELAY only on such sockets (and on the connections they accept), and without it
    every answer on a kept-alive connection waits about 40 ms for a delayed ACK (Nagle)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )[0]
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host!r}: {exc.strerror}; check --host.") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror}; choose another --port or --host."
        ) from None
    sock.set_inheritable(True)  # for the worker processes of --workers N
    return sock


def _address(name: Any, host: str) -> str:
    bound = f"[{name[0]}]" if ":" in str(name[0]) else str(name[0])
    return f"http://{host if host == 'localhost' else bound}:{name[1]}"


@contextmanager
def _quiet_signals() -> Iterator[None]:
    """While uvicorn serves, SIGTERM and SIGINT are its (it stops taking requests and
    finishes those in flight); it raises them again once stopped, which must then end the
    command normally rather than as an interruption."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig in previous:
        signal.signal(sig, _ignore)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _ignore(signum: int, frame: object) -> None:
    """A signal raised again by uvicorn after its graceful shutdown: already handled."""
