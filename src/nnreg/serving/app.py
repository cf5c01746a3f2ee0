"""A model folder behind FastAPI, on uvicorn: what ``nnreg serve`` runs.

The folder is loaded once, with :func:`nnreg.load` (no pickle, every file's hash checked),
before the server binds its port; each request is then checked against the model's
:class:`~nnreg.serving.schema.Contract` and predicted by :meth:`nnreg.Regressor.predict`
itself, under ``torch.inference_mode``, one request at a time per process (in a worker
thread, so that the event loop keeps taking requests). Every answer that is not a prediction
is JSON of one key, ``{"error": "..."}``, with a 4xx status naming the problem: a bad body, a
body over ``max_body`` bytes (refused before it is read, or as soon as it passes the limit),
more than ``max_rows`` rows, or a body that takes longer than ``timeout`` seconds to arrive.
"""

from __future__ import annotations

import gc
import json
import math
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._version import __version__
from ..exceptions import ConfigError, DataError, MissingExtraError
from .schema import Contract, RequestError, Rows, parse_json

if TYPE_CHECKING:
    from fastapi import FastAPI
    from starlette.requests import Request

__all__ = [
    "Limits",
    "Served",
    "check_content_type",
    "create_app",
    "from_environment",
    "predict_openapi",
    "read_body",
    "require_extra",
]

PR_SET_PDEATHSIG = 1  # prctl(2)
ENVIRONMENT = "NNREG_SERVE"  # the model and limits, for the processes of --workers N
JSON_TYPES = ("application/json",)
EXTRA_MESSAGE = (
    "nnreg serve needs the 'serve' extra, which is not installed ({}); "
    "install it with: pip install 'nnreg[serve]'"
)


def require_extra() -> None:
    """Raise :class:`MissingExtraError` (one line naming the extra) without FastAPI/uvicorn."""
    for module in ("fastapi", "uvicorn", "anyio", "orjson"):
        try:
            __import__(module)
        except ImportError:
            raise MissingExtraError(EXTRA_MESSAGE.format(f"no module {module!r}")) from None


@dataclass(frozen=True)
class Limits:
    """What one request may ask: rows, body bytes, seconds for the body to arrive and for its
    prediction to start and finish."""

    max_rows: int = 10_000
    max_body: int = 16 * 2**20
    timeout: float = 30.0

    def __post_init__(self) -> None:
        if not (isinstance(self.max_rows, int) and self.max_rows >= 1):
            raise ConfigError(f"max_rows must be an integer >= 1, got {self.max_rows!r}.")
        if not (isinstance(self.max_body, int) and self.max_body >= 2):
            raise ConfigError(f"max_body must be an integer >= 2 bytes, got {self.max_body!r}.")
        if not (isinstance(self.timeout, (int, float)) and 0 < self.timeout < math.inf):
            raise ConfigError(f"timeout must be a positive number, got {self.timeout!r}.")


Answer = tuple[int, dict[str, Any]]  # (HTTP status, JSON answer)


@dataclass
class Prepared:
    """A prediction request, checked: its rows and the interval it asks for."""

    rows: Rows
    interval: float | None


class Served:
    """A loaded model and what answering for it needs; shared by the requests of a process."""

    def __init__(self, model_dir: str | Path, limits: Limits) -> None:
        from ..estimator import load

        self.reg = load(model_dir, history=False)
        # Regressor.predict computes in float64 from float64 copies of the weights: made once
        # here rather than at every request (the same numbers: widening float32 is exact).
        self.reg.model_.double()
        self._lock = threading.Lock()  # one prediction at a time: the event loop's batches
        # and the worker thread's large requests share the model and torch's thread setting
        config = self.reg.model_.config
        self.widest = max([config.n_inputs, *config.hidden_sizes])
        self.limits, self.folder = limits, Path(model_dir).name
        self.contract = Contract.of(self.reg, limits.max_rows)
        info = self.reg.model_info_
        self.targets: list[str] = list(info["targets"])
        self.intervals = hasattr(self.reg, "calibrator_")
        self.named = hasattr(self.reg, "feature_names_in_")  # fitted on a DataFrame
        self.metadata = {
            "nnreg_version": __version__,
            "model": {
                "folder": self.folder,
                "created": info.get("created"),
                "trained_with": info.get("nnreg_version"),
                "weights_sha256": info.get("weights_sha256"),
                "n_models": info.get("n_models", 1),
                "n_parameters": self.reg.n_parameters(),
                "intervals": self.intervals,
                "metrics": info.get("metrics", {}),
            },
            "features": [f.describe() for f in self.contract.features],
            "targets": self.targets,
            "limits": asdict(limits),
        }

    def respond(self, body: bytes, query: dict[str, str]) -> Answer:
        """(status, JSON answer) for one prediction request; never raises
        :class:`RequestError`.

        A refusal is returned, not raised across the thread that computed it: an exception's
        traceback keeps the frames that hold the parsed body, and when it travels through
        the event loop's futures those references form cycles that only a full garbage
        collection frees (each refused large body stayed in memory until then)."""
        try:
            prepared = self.prepare(body, query)
        except RequestError as exc:
            return exc.status, {"error": exc.message}
        return self.predict([prepared])[0]

    def answer(self, body: bytes, query: dict[str, str]) -> dict[str, Any]:
        """The JSON answer to one prediction request, or :class:`RequestError`."""
        status, answer = self.predict([self.prepare(body, query)])[0]
        if status != 200:
            raise RequestError(status, answer["error"])
        return answer

    def prepare(self, body: bytes, query: dict[str, str]) -> Prepared:
        """A request checked against the contract, ready to predict (or RequestError)."""
        interval = self._interval(query)
        return Prepared(self.contract.rows(parse_json(body)), interval)

    def predict(self, batch: list[Prepared]) -> list[Answer]:
        """The answers to ``batch``, predicted together: one call of Regressor.predict for
        the requests that ask for the same interval. A row's prediction does not depend on
        the rows beside it (nnreg predicts in float64), so each answer is what the request
        would get alone; a batch that fails is predicted request by request, so that each
        request hears only of its own problem."""
        answers: list[Answer | None] = [None] * len(batch)
        groups: dict[float | None, list[int]] = {}
        for i, prepared in enumerate(batch):
            groups.setdefault(prepared.interval, []).append(i)
        for interval, members in groups.items():
            try:
                pred, bounds = self._predict([batch[i].rows for i in members], interval)
            except RequestError as exc:
                for i in members:
                    answers[i] = (
                        (exc.status, {"error": exc.message})
                        if len(members) == 1
                        else self.predict([batch[i]])[0]
                    )
                continue
            lo = 0
            for i in members:
                hi = lo + batch[i].rows.n
                answers[i] = self._answer(pred, bounds, lo, hi, interval)
                lo = hi
        return [a for a in answers if a is not None]

    def _predict(
        self, parts: list[Rows], interval: float | None
    ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
        import torch

        from ..device import thread_policy

        frame: Any = self.contract.frame_of(parts)
        if not self.named:  # fitted on an array: given one, as predict expects (numbers only)
            frame = frame.to_numpy(dtype=np.float64)
        threads = thread_policy(len(frame), self.widest)  # one thread for a few rows
        with (
            self._lock,
            threads,
            torch.inference_mode(),
            np.errstate(over="ignore", invalid="ignore"),
        ):
            try:  # (overflow far outside the training data is caught below, as not finite)
                pred = self.reg.predict(frame)
                bounds = self.reg.predict_interval(frame, interval) if interval else None
            # what the contract cannot see, or a coverage the calibration rows cannot give,
            # as predict words it
            except (DataError, ConfigError) as exc:
                raise RequestError(422, str(exc)) from None
        return pred, bounds

    def _answer(
        self,
        pred: np.ndarray,
        bounds: tuple[np.ndarray, np.ndarray] | None,
        lo: int,
        hi: int,
        interval: float | None,
    ) -> Answer:
        """The answer of the request whose rows are ``lo:hi`` of the batch's."""
        try:
            out: dict[str, Any] = {"targets": self.targets, "predictions": _finite(pred[lo:hi])}
            if bounds is not None:
                lower, upper = _finite(bounds[0][lo:hi]), _finite(bounds[1][lo:hi])
                out.update(interval=interval, lower=lower, upper=upper)
        except RequestError as exc:
            return exc.status, {"error": exc.message}
        return 200, out

    def _interval(self, query: dict[str, str]) -> float | None:
        unknown = sorted(set(query) - {"interval"})
        if unknown:
            raise RequestError(
                400, f"unknown query parameter {unknown[0]!r}; /predict takes only 'interval'."
            )
        if "interval" not in query:
            return None
        try:
            coverage = float(query["interval"])
        except ValueError:
            coverage = math.nan
        if not 0 < coverage < 1:
            raise RequestError(
                400, f"interval must be a coverage in (0, 1) like 0.9, got {query['interval']!r}."
            )
        if not self.intervals:
            raise RequestError(
                400,
                "this model has no prediction intervals: it was trained as one network without "
                "early stopping, so no rows were held out to calibrate them.",
            )
        return coverage


def _finite(a: np.ndarray) -> list[Any]:
    if not np.isfinite(a).all():
        row = int(np.argwhere(~np.isfinite(a))[0][0])
        raise RequestError(
            422,
            f"the prediction for row {row} is not a finite number: its inputs lie far outside "
            "the training data.",
        )
    return list(a.tolist())


class Counter:
    """ASGI middleware that counts the HTTP requests taken in and those fully answered;
    ``on_shutdown(counter)`` is called when the server shuts down (with lifespan events on),
    once every request is done."""

    def __init__(self, app: Any, on_shutdown: Callable[[Counter], None] | None = None) -> None:
        self.app, self.taken, self.answered = app, 0, 0
        self.on_shutdown = on_shutdown

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan" and self.on_shutdown is not None:
            await self.app(scope, self._watching(receive), send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.taken += 1
        await self.app(scope, receive, send)
        self.answered += 1  # the application returns once the whole answer was sent

    def _watching(self, receive: Any) -> Any:
        async def received() -> Any:
            message = await receive()
            if message["type"] == "lifespan.shutdown" and self.on_shutdown is not None:
                self.on_shutdown(self)
            return message

        return received


def create_app(model_dir: str | Path, limits: Limits | None = None) -> FastAPI:
    """The FastAPI application serving the model in ``model_dir``."""
    from .routes import application

    return application(Served(model_dir, limits or Limits()))


def check_content_type(value: str | None) -> None:
    if value is None:
        return
    kind = value.split(";")[0].strip().lower()
    if kind not in JSON_TYPES and not kind.endswith("+json"):
        raise RequestError(
            415, f"the body must be JSON (Content-Type: application/json), got {value!r}."
        )


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body, refused (413) as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and not declared.isdigit():
        raise RequestError(400, f"Content-Length is not a number: {declared!r}.")
    if declared is not None and int(declared) > limit:
        raise RequestError(
            413, f"the body has {declared} bytes; at most {limit} are taken (--max-body-mb)."
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"the body exceeds {limit} bytes (--max-body-mb).")
        chunks.append(chunk)
    return b"".join(chunks)


def predict_openapi(served: Served) -> dict[str, Any]:
    """The /predict operation's body, query parameter and answers, from the model's features."""
    numbers = {"type": "array", "items": {"type": "number"}}
    if len(served.targets) > 1:
        numbers = {"type": "array", "items": numbers}
    answer = {
        "type": "object",
        "properties": {
            "targets": {"type": "array", "items": {"type": "string"}},
            "predictions": numbers,
            "interval": {"type": "number"},
            "lower": numbers,
            "upper": numbers,
        },
        "required": ["targets", "predictions"],
    }
    failure = {"type": "object", "properties": {"error": {"type": "string"}}}
    statuses = {"400": "malformed", "408": "too slow", "413": "too large", "415": "not JSON"}
    statuses |= {"422": "invalid rows", "503": "busy"}
    responses: dict[str, Any] = {
        "200": {"content": {"application/json": {"schema": answer}}},
        **{
            code: {"description": why, "content": {"application/json": {"schema": failure}}}
            for code, why in statuses.items()
        },
    }
    interval = {
        "name": "interval",
        "in": "query",
        "required": False,
        "description": "Also return lower and upper bounds with this coverage, e.g. 0.9.",
        "schema": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
    }
    return {
        "parameters": [interval] if served.intervals else [],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": served.contract.openapi()}},
        },
        "responses": responses,
    }


def from_environment() -> Counter:
    """The application described by :data:`ENVIRONMENT` (for uvicorn's worker processes),
    counting its requests; the worker says how many it answered when it ends."""
    _die_with_parent()
    settings = json.loads(os.environ[ENVIRONMENT])
    threads = settings.get("threads")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    counter = Counter(create_app(settings["model"], Limits(**settings["limits"])), _say_answered)
    gc.freeze()  # as in the single process: the loaded model is not walked by the collector
    return counter


def _say_answered(counter: Counter) -> None:
    print(
        f"worker {os.getpid()} stopped: answered {counter.answered} of the {counter.taken} "
        "requests taken in",
        file=sys.stderr,
        flush=True,
    )


def _die_with_parent() -> None:
    """Ask Linux to end this worker when the server process that started it dies, even by
    SIGKILL, so that no orphaned worker keeps the port (elsewhere: nothing to do)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)
