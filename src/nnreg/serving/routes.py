"""The HTTP routes of a served model (FastAPI reads these signatures, so this module imports
FastAPI at the top and keeps its annotations evaluated; :mod:`nnreg.serving.app` imports it
only once the extra is known to be installed)."""

import asyncio
from typing import Any

import anyio
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from .._version import __version__
from .app import Answer, Prepared, Served, check_content_type, predict_openapi, read_body
from .schema import RequestError

__all__ = ["application"]

# Bodies up to this size (a few dozen rows) are predicted on the event loop, in batches
# (Batcher): handing them to a worker thread would cost more than predicting them, and the
# two threads would take turns at the GIL. Larger ones go to the worker thread, so that the
# loop keeps reading.
INLINE_BYTES = 16 * 1024
BATCH_ROWS = 4096  # the most rows of small requests predicted in one call


def error(status: int, message: str) -> Response:
    """Every answer that is not a prediction: one JSON key, one sentence."""
    return answered(status, {"error": message})


class Batcher:
    """Small requests that arrive together are predicted together.

    Each request waits for a callback that the first of them schedules on the event loop;
    by then every request whose bytes arrived in the same turn of the loop has joined, and
    one call of :meth:`Served.predict` answers them all (up to :data:`BATCH_ROWS` rows a
    call). Under load this turns sixteen predictions of one row into one of sixteen rows,
    at the cost of a turn of the loop; alone, a request waits for nothing.
    """

    def __init__(self, served: Served) -> None:
        self.served = served
        self.pending: list[tuple[Prepared, asyncio.Future[Answer]]] = []

    async def answer(self, prepared: Prepared) -> Answer:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Answer] = loop.create_future()
        if not self.pending:
            loop.call_soon(self._flush)
        self.pending.append((prepared, future))
        return await future

    def _flush(self) -> None:
        pending, self.pending = self.pending, []
        while pending:
            rows, n = 0, 0
            while n < len(pending) and (n == 0 or rows + pending[n][0].rows.n <= BATCH_ROWS):
                rows += pending[n][0].rows.n
                n += 1
            chunk, pending = pending[:n], pending[n:]
            live = [(p, f) for p, f in chunk if not f.done()]  # not given up by the client
            try:
                answers = self.served.predict([p for p, _ in live])
            except Exception as exc:  # noqa: BLE001 - a failure of nnreg: each request hears
                answers = [(500, {"error": f"prediction failed: {exc!r}"})] * len(live)
            for (_, future), answer in zip(live, answers, strict=True):
                if not future.done():
                    future.set_result(answer)


def application(served: Served) -> FastAPI:
    """The FastAPI application answering for ``served``."""
    app = FastAPI(
        title=f"nnreg model {served.folder}",
        version=__version__,
        description="Predictions of an nnreg model; the request schema is its feature list.",
        docs_url=None,  # the interactive pages load scripts from the internet; the schema
        redoc_url=None,  # is at /openapi.json
    )
    app.state.served = served
    limiter = anyio.CapacityLimiter(1)  # one large request at a time in the worker thread
    batcher = Batcher(served)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        return error(exc.status_code, f"{exc.detail} ({request.method} {request.url.path}).")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {"msg": "invalid request"}
        return error(422, f"{'.'.join(map(str, first.get('loc', ())))}: {first['msg']}.")

    @app.get("/health", summary="Whether the server is up and its model loaded.")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metadata", summary="The model's features, targets, versions and weights' hash.")
    async def metadata() -> dict[str, Any]:
        return served.metadata

    @app.post("/predict", summary="Predict rows.", openapi_extra=predict_openapi(served))
    async def predict(request: Request) -> Response:
        return await answer_request(served, batcher, limiter, request)

    return app


async def answer_request(
    served: Served, batcher: Batcher, limiter: Any, request: Request
) -> Response:
    """The answer to one POST /predict: read within the limits, predicted, or refused."""
    limits = served.limits
    try:
        check_content_type(request.headers.get("content-type"))
        with anyio.fail_after(limits.timeout):
            body = await read_body(request, limits.max_body)
    except RequestError as exc:
        return error(exc.status, exc.message)
    except TimeoutError:
        return error(408, f"the body did not arrive within {limits.timeout:g} s.")
    query = dict(request.query_params)
    if len(body) <= INLINE_BYTES:  # a few rows: predicted with the others that came with them
        try:
            prepared = served.prepare(body, query)
        except RequestError as exc:
            return error(exc.status, exc.message)
        return answered(*await batcher.answer(prepared))
    with anyio.move_on_after(limits.timeout) as scope:  # in a worker thread, so that the
        status, answer = await anyio.to_thread.run_sync(  # event loop goes on reading
            served.respond, body, query, limiter=limiter, abandon_on_cancel=True
        )
    if scope.cancelled_caught:
        return error(
            503,
            f"the prediction did not finish within {limits.timeout:g} s; the server is "
            "busy: retry later or send fewer rows.",
        )
    return answered(status, answer)


def answered(status: int, answer: dict[str, Any]) -> Response:
    """An answer as JSON (orjson: the shortest text that reads back as the same float)."""
    return Response(orjson.dumps(answer), status_code=status, media_type="application/json")
