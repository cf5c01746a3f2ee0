"""`nnreg serve`: answer predictions for a model folder over HTTP."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; 0.0.0.0 makes the server reachable from other machines.",
)
@click.option(
    "--port",
    default=8000,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to listen on (0: any free port, printed at start).",
)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Server processes, each with its own copy of the model and a share of the cores.",
)
@click.option(
    "--max-rows",
    default=10_000,
    show_default=True,
    type=click.IntRange(1),
    help="Most rows one request may hold; more is refused with 413.",
)
@click.option(
    "--max-body-mb",
    default=16.0,
    show_default=True,
    type=click.FloatRange(0, min_open=True),
    help="Largest request body in MiB; a larger one is refused before it is read (413).",
)
@click.option(
    "--timeout",
    default=30.0,
    show_default=True,
    type=click.FloatRange(0, min_open=True),
    help="Seconds a request's body may take to arrive (408), and its prediction (503); "
    "also how long shutting down waits for requests in flight.",
)
@click.option(
    "--access-log/--no-access-log",
    default=True,
    show_default=True,
    help="Print one line per request.",
)
def serve(
    model_dir: Path,
    host: str,
    port: int,
    workers: int,
    max_rows: int,
    max_body_mb: float,
    timeout: float,
    access_log: bool,
) -> None:
    """Serve predictions of the model in MODEL_DIR over HTTP (FastAPI on uvicorn).

    POST /predict takes JSON records ([{"x1": 0.1, "x2": 1.3}, ...]) or columns
    ({"x1": [...], "x2": [...]}) and answers {"targets": [...], "predictions": [...]};
    ?interval=0.9 adds "lower" and "upper" for models with intervals. GET /health,
    GET /metadata (features, targets, versions, the weights' SHA-256) and GET /openapi.json
    (the request schema, from the model's features) describe it. A bad request gets a 4xx
    answer, {"error": "..."}. SIGTERM or Ctrl-C stops it after the requests in flight.

    Needs the serve extra: pip install 'nnreg[serve]'.

    \b
    Example:
      nnreg serve runs/seed --port 8000
      curl -s localhost:8000/predict -H 'Content-Type: application/json' \\
           -d '[{"x1": 0.5, "x2": -1.0}]'
    """
    from ..serving import Limits, run
    from .app import raise_if_received

    def announce(line: str) -> None:
        raise_if_received()  # one taken while the model loaded: end before serving
        click.echo(line, err=True)

    limits = Limits(max_rows=max_rows, max_body=int(max_body_mb * 2**20), timeout=timeout)
    counts = run(
        model_dir,
        host=host,
        port=port,
        workers=workers,
        limits=limits,
        access_log=access_log,
        announce=announce,
    )
    if workers == 1:
        click.echo(
            f"stopped: answered {counts['answered']} of the {counts['taken']} requests taken in",
            err=True,
        )
    else:  # each worker said how many it answered as it ended
        click.echo("stopped", err=True)
