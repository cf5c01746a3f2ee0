"""``nnreg serve``: the request contract, and a real server on a loopback port.

The contract is tested in-process (every bad request and its one message); the server is
started as a subprocess, as a user starts it, and called over HTTP: its predictions equal
``Regressor.predict``, bad requests get their 4xx, an oversized body is refused unread, a
load test leaves its memory flat, and SIGTERM loses no request it took in.
"""

from __future__ import annotations

import http.client
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install '.[serve]'")
pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install '.[serve]'")

import nnreg  # noqa: E402
from cli_helpers import run  # noqa: E402
from nnreg.serving.app import Limits, Served  # noqa: E402
from nnreg.serving.schema import RequestError  # noqa: E402
from serve_helpers import Server, request  # noqa: E402


def house_frame(n: int, seed: int) -> pd.DataFrame:
    """Numbers (with gaps), integers, text and booleans: every kind of feature."""
    rng = np.random.default_rng(seed)
    size = rng.uniform(40, 200, n)
    rooms = rng.integers(1, 6, n)
    city = rng.choice(["Oslo", "Bergen", "Tromsø"], n)
    new = rng.random(n) < 0.3
    y = 0.02 * size + 0.3 * rooms + (city == "Oslo") + 0.5 * new + rng.normal(0, 0.1, n)
    size[rng.random(n) < 0.05] = np.nan
    return pd.DataFrame({"size": size, "rooms": rooms, "city": city, "new": new, "price": y})


@pytest.fixture(scope="module")
def house_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    frame = house_frame(300, seed=0)
    reg = nnreg.Regressor(
        hidden_layer_sizes=(16,), max_iter=40, n_models=3, missing="impute", random_state=0
    )
    reg.fit(frame.drop(columns="price"), frame["price"])
    return reg.save(tmp_path_factory.mktemp("serve") / "house", target_names=["price"])


@pytest.fixture(scope="module")
def seed_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    frame = nnreg.seed_dataset(n=100, random_state=0)
    reg = nnreg.Regressor(max_iter=30, random_state=0).fit(frame[["x1", "x2"]], frame["y"])
    return reg.save(tmp_path_factory.mktemp("serve") / "seed")


@pytest.fixture(scope="module")
def server(house_model: Path) -> Any:
    with Server(house_model, "--max-body-mb", "1", "--max-rows", "2000") as srv:
        yield srv
        srv.stop()


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as a JSON client sends them: NaN as null, numpy scalars as JSON numbers."""
    features = frame.drop(columns="price", errors="ignore")
    rows = features.astype(object).to_dict(orient="records")  # full precision, unlike to_json
    return [{k: _plain(v) for k, v in row.items()} for row in rows]


def _plain(v: Any) -> Any:
    v = v.item() if isinstance(v, np.generic) else v
    return None if isinstance(v, float) and np.isnan(v) else v


# -- the contract, in-process ------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(house_model: Path) -> Served:
    return Served(house_model, Limits(max_rows=50))


@pytest.fixture(scope="module")
def strict(seed_model: Path) -> Served:
    return Served(seed_model, Limits())


GOOD = {"size": 80.0, "rooms": 3, "city": "Oslo", "new": False}
BAD_BODIES = [
    (b"[{", 400, "not valid JSON"),
    (b"\xff\xfe", 400, "not valid UTF-8"),
    (b'[{"size": NaN, "rooms": 3, "city": "Oslo", "new": false}]', 400, "send null for a missing"),
    (b"[" * 100_000 + b"]" * 100_000, 400, "depth limit exceeded"),
    (b"7", 400, "list of records"),
    (b"[7]", 400, "body[0] is 7, not a record"),
    (b"[]", 422, "no rows"),
    (json.dumps([{"size": 1.0}]).encode(), 422, "missing features 'rooms', 'city', 'new'"),
    (json.dumps([{**GOOD, "zip": 1}]).encode(), 422, "unknown feature 'zip'"),
    (
        json.dumps([GOOD, {**GOOD, "rooms": "3"}]).encode(),
        422,
        'body[1]["rooms"]: expected a number',
    ),
    (json.dumps([{**GOOD, "rooms": True}]).encode(), 422, "expected a number, got true"),
    (json.dumps([{**GOOD, "city": 2.5}]).encode(), 422, "expected text (a category), got 2.5"),
    (json.dumps([{**GOOD, "city": [1]}]).encode(), 422, "got a list"),
    (json.dumps([{**GOOD, "new": "yes"}]).encode(), 422, 'got the text "yes"'),
    (b'[{"size": 1e999, "rooms": 3, "city": "Oslo", "new": false}]', 400, "is infinity"),
    (json.dumps([{**GOOD, "size": 10**400}]).encode(), 400, "is infinity"),
    (b'[{"size": 1' + b"0" * 5000 + b"}]", 400, "not valid JSON"),  # Python's digit limit
    (json.dumps([GOOD] * 51).encode(), 413, "51 rows; at most 50"),
    (json.dumps({k: [v] for k, v in GOOD.items()} | {"rooms": [1, 2]}).encode(), 422, "lengths"),
    (json.dumps({k: v for k, v in GOOD.items()}).encode(), 400, 'body["size"] is 80.0, not a list'),
    (json.dumps({"size": [1.0]}).encode(), 422, "columns do not match the model: missing"),
]


@pytest.mark.parametrize(("body", "status", "says"), BAD_BODIES)
def test_each_bad_body_gets_its_status_and_one_message(
    served: Served, body: bytes, status: int, says: str
) -> None:
    with pytest.raises(RequestError) as info:
        served.answer(body, {})
    assert info.value.status == status
    assert says in info.value.message
    assert "\n" not in info.value.message


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ({"interval": "1.5"}, "coverage in (0, 1)"),
        ({"interval": "nan"}, "coverage in (0, 1)"),
        ({"interval": "wide"}, "coverage in (0, 1)"),
        ({"intervals": "0.9"}, "unknown query parameter 'intervals'"),
    ],
)
def test_a_bad_query_is_refused(served: Served, query: dict[str, str], says: str) -> None:
    with pytest.raises(RequestError, match=says.replace("(", r"\(").replace(")", r"\)")):
        served.answer(json.dumps([GOOD]).encode(), query)


def test_null_is_refused_without_imputation_and_imputed_with_it(
    served: Served, strict: Served
) -> None:
    with pytest.raises(RequestError, match=r'body\[0\]\["x1"\] is null: .*missing=.impute'):
        strict.answer(b'[{"x1": null, "x2": 1.0}]', {})
    with pytest.raises(RequestError, match="no prediction intervals"):
        strict.answer(b'[{"x1": 0.0, "x2": 1.0}]', {"interval": "0.9"})
    answer = served.answer(json.dumps([{**GOOD, "size": None}]).encode(), {})
    expected = served.reg.predict(pd.DataFrame([{**GOOD, "size": np.nan}]))
    np.testing.assert_allclose(answer["predictions"], expected, rtol=1e-12)


def test_records_and_columns_predict_as_the_estimator(served: Served) -> None:
    frame = house_frame(40, seed=1).drop(columns="price")
    rows = records(frame)
    columns = {k: [r[k] for r in rows] for k in frame.columns}
    by_records = served.answer(json.dumps(rows).encode(), {"interval": "0.8"})
    by_columns = served.answer(json.dumps(columns).encode(), {"interval": "0.8"})
    lower, upper = served.reg.predict_interval(frame, 0.8)
    for answer in (by_records, by_columns):
        assert answer["targets"] == ["price"]
        np.testing.assert_allclose(answer["predictions"], served.reg.predict(frame), rtol=1e-12)
        np.testing.assert_allclose(answer["lower"], lower, rtol=1e-12)
        np.testing.assert_allclose(answer["upper"], upper, rtol=1e-12)


def test_inputs_far_outside_the_training_data_never_give_a_number_that_is_not_finite(
    served: Served,
) -> None:
    for size in (1e300, -1e308, 1e308):
        try:
            answer = served.answer(json.dumps([{**GOOD, "size": size}] * 3).encode(), {})
        except RequestError as exc:
            assert exc.status == 422 and "row 0 is not a finite number" in exc.message
        else:
            assert np.isfinite(answer["predictions"]).all()


def test_a_model_fitted_on_an_array_with_two_targets(tmp_path: Path) -> None:
    """Features named x0, x1, ... as in its folder; one list of targets per row."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    Y = np.c_[X.sum(axis=1), X[:, 0] - X[:, 1]]
    reg = nnreg.Regressor(max_iter=5, random_state=0).fit(X, Y)
    served = Served(reg.save(tmp_path / "array"), Limits())
    rows = [{"x0": 1.0, "x1": 2.0, "x2": 3.0}, {"x0": -1.0, "x1": 0.5, "x2": 0.0}]
    answer = served.answer(json.dumps(rows).encode(), {})
    assert answer["targets"] == ["y0", "y1"]
    expected = reg.predict(np.array([[1.0, 2.0, 3.0], [-1.0, 0.5, 0.0]]))
    np.testing.assert_allclose(answer["predictions"], expected, rtol=1e-12)
    assert np.asarray(answer["predictions"]).shape == (2, 2)


def test_requests_predicted_together_get_what_each_gets_alone(served: Served) -> None:
    frames = [house_frame(n, seed=10 + n).drop(columns="price") for n in (1, 7, 3, 12)]
    queries: list[dict[str, str]] = [{}, {"interval": "0.8"}, {}, {"interval": "0.8"}]
    bodies = [json.dumps(records(f)).encode() for f in frames]
    together = served.predict([served.prepare(b, q) for b, q in zip(bodies, queries, strict=True)])
    for (status, answer), body, query in zip(together, bodies, queries, strict=True):
        alone = served.answer(body, query)
        assert status == 200 and answer.keys() == alone.keys()
        for key in ("predictions", "lower", "upper"):
            if key in alone:
                np.testing.assert_allclose(answer[key], alone[key], rtol=1e-12)


def test_a_coverage_the_calibration_cannot_give_is_refused_alone(served: Served) -> None:
    """Too few calibration rows for 0.999: that request hears so (422), and the requests
    predicted beside it are answered as if it had not come."""
    bodies = [json.dumps(records(house_frame(n, seed=n).drop(columns="price"))) for n in (2, 3, 4)]
    queries: list[dict[str, str]] = [{"interval": "0.8"}, {"interval": "0.999"}, {}]
    answers = served.predict(
        [served.prepare(b.encode(), q) for b, q in zip(bodies, queries, strict=True)]
    )
    assert answers[0][0] == 200 and len(answers[0][1]["lower"]) == 2
    assert answers[1][0] == 422 and "coverage 0.999 needs at least" in answers[1][1]["error"]
    assert answers[2][0] == 200 and len(answers[2][1]["predictions"]) == 4


def test_a_batch_that_fails_is_answered_request_by_request(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each request then hears only of its own problem."""
    real = served._predict

    def predict(parts: list[Any], interval: float | None) -> Any:
        if len(parts) > 1 or parts[0].n == 2:
            raise RequestError(422, f"cannot predict {sum(p.n for p in parts)} rows")
        return real(parts, interval)

    monkeypatch.setattr(served, "_predict", predict)
    bodies = [json.dumps(records(house_frame(n, seed=n).drop(columns="price"))) for n in (1, 2)]
    answers = served.predict([served.prepare(b.encode(), {}) for b in bodies])
    assert answers[0][0] == 200 and len(answers[0][1]["predictions"]) == 1
    assert answers[1] == (422, {"error": "cannot predict 2 rows"})


def test_an_unseen_category_and_an_integer_category_are_read_as_predict_reads_them(
    served: Served,
) -> None:
    rows = [{**GOOD, "city": "Paris"}, {**GOOD, "city": 7}]
    answer = served.answer(json.dumps(rows).encode(), {})
    frame = pd.DataFrame(rows).astype({"city": str})
    np.testing.assert_allclose(answer["predictions"], served.reg.predict(frame), rtol=1e-12)


def test_the_openapi_schema_is_the_model_feature_list(served: Served) -> None:
    from nnreg.serving.routes import application

    schema = application(served).openapi()
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    record = body["schema"]["oneOf"][0]["items"]
    assert record["required"] == ["size", "rooms", "city", "new"]
    assert record["additionalProperties"] is False
    assert record["properties"]["size"]["type"] == ["number", "null"]  # imputed
    assert "Oslo" in record["properties"]["city"]["description"]
    assert body["schema"]["oneOf"][0]["maxItems"] == 50
    params = schema["paths"]["/predict"]["post"]["parameters"]
    assert [p["name"] for p in params] == ["interval"]


def test_limits_are_checked() -> None:
    for bad in ({"max_rows": 0}, {"max_body": 1}, {"timeout": 0}, {"timeout": float("inf")}):
        with pytest.raises(nnreg.ConfigError):
            Limits(**bad)  # type: ignore[arg-type]


def _call(app: Any, body_parts: list[bytes], stall: bool = False) -> tuple[int, Any]:
    """POST /predict to the ASGI ``app`` in-process; ``stall``: the body never ends."""
    import anyio

    sent: list[dict[str, Any]] = []
    parts = list(body_parts)

    async def receive() -> dict[str, Any]:
        if parts:
            return {"type": "http.request", "body": parts.pop(0), "more_body": bool(parts) or stall}
        await anyio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [(b"content-type", b"application/json")]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/predict",
        "raw_path": b"/predict",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
    }
    anyio.run(app, scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body)


def test_a_body_that_does_not_arrive_in_time_gets_408(house_model: Path) -> None:
    from nnreg.serving.routes import application

    app = application(Served(house_model, Limits(timeout=0.3)))
    status, answer = _call(app, [b'[{"size": 1'], stall=True)
    assert status == 408 and "did not arrive within 0.3 s" in answer["error"]


def test_a_prediction_that_takes_too_long_gets_503(
    house_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nnreg.serving.routes import INLINE_BYTES, application

    served = Served(house_model, Limits(timeout=0.3))
    slow = served.predict

    def predict(batch: list[Any]) -> list[Any]:
        time.sleep(1.0)
        return slow(batch)

    monkeypatch.setattr(served, "predict", predict)
    rows = json.dumps([GOOD] * (INLINE_BYTES // 40)).encode()  # past the inline size
    status, answer_ = _call(application(served), [rows])
    assert status == 503 and "did not finish within 0.3 s" in answer_["error"]


# -- the real server ---------------------------------------------------------------------------


def test_server_predictions_equal_the_estimator(server: Server, house_model: Path) -> None:
    reg = nnreg.load(house_model)
    frame = house_frame(200, seed=2).drop(columns="price")
    status, answer = request(server.port, "POST", "/predict?interval=0.9", records(frame))
    assert status == 200, answer
    np.testing.assert_allclose(answer["predictions"], reg.predict(frame), rtol=1e-12)
    lower, upper = reg.predict_interval(frame, 0.9)
    np.testing.assert_allclose(answer["lower"], lower, rtol=1e-12)
    np.testing.assert_allclose(answer["upper"], upper, rtol=1e-12)
    one = records(frame.iloc[:1])
    status, answer = request(server.port, "POST", "/predict", one)
    np.testing.assert_allclose(answer["predictions"], reg.predict(frame.iloc[:1]), rtol=1e-12)


def test_server_describes_the_model(server: Server, house_model: Path) -> None:
    doc = json.loads((house_model / "model.json").read_text())
    status, meta = request(server.port, "GET", "/metadata")
    assert status == 200
    assert meta["model"]["weights_sha256"] == doc["weights"]["sha256"]
    assert meta["nnreg_version"] == nnreg.__version__
    assert [f["name"] for f in meta["features"]] == ["size", "rooms", "city", "new"]
    city = meta["features"][2]
    assert city["type"] == "text" and set(city["categories"]) == {"Oslo", "Bergen", "Tromsø"}
    assert meta["features"][3]["type"] == "boolean"
    assert meta["targets"] == ["price"] and meta["model"]["intervals"] is True
    assert request(server.port, "GET", "/health") == (200, {"status": "ok"})
    status, schema = request(server.port, "GET", "/openapi.json")
    assert status == 200 and "/predict" in schema["paths"]


@pytest.mark.parametrize(
    ("method", "path", "raw", "headers", "status", "says"),
    [
        ("POST", "/predict", b"[{", {}, 400, "not valid JSON"),
        ("POST", "/predict", b"[]", {"Content-Type": "text/csv"}, 415, "must be JSON"),
        ("POST", "/predict", json.dumps([GOOD] * 2001).encode(), {}, 413, "at most 2000"),
        ("POST", "/predict", json.dumps([{"size": 1}]).encode(), {}, 422, "missing features"),
        ("GET", "/predict", None, {}, 405, "Method Not Allowed"),
        ("GET", "/nowhere", None, {}, 404, "Not Found"),
    ],
)
def test_server_answers_bad_requests_with_one_json_message(
    server: Server,
    method: str,
    path: str,
    raw: bytes | None,
    headers: dict[str, str],
    status: int,
    says: str,
) -> None:
    got, answer = request(server.port, method, path, raw=raw, headers=headers)
    assert got == status
    assert list(answer) == ["error"] and says in answer["error"]


def test_an_oversized_body_is_refused_unread(server: Server) -> None:
    """A declared length over the limit is refused before a byte is read; a chunked body is
    refused once it passes the limit, and the server's memory does not grow with it."""
    status, answer = request(
        server.port, "POST", "/predict", raw=b"x", headers={"Content-Length": str(2**40)}
    )
    assert status == 413 and "at most 1048576" in answer["error"]
    before = server.rss()
    for _ in range(3):
        assert _chunked_post(server.port, chunks=64, chunk=2**20) == 413  # 64 MiB offered
    assert server.rss() - before < 16 * 2**20
    assert request(server.port, "GET", "/health")[0] == 200


def test_refused_large_bodies_do_not_stay_in_memory(server: Server) -> None:
    """Bodies under the byte limit but over the row limit are parsed, then refused; each
    one's parsed rows must be freed at once (they once stayed, in reference cycles)."""
    n = 40_000  # rows: ~1 MiB of JSON, 20x the row limit
    body = json.dumps({k: [v] * n for k, v in GOOD.items()}).encode()
    assert len(body) < 2**20
    request(server.port, "POST", "/predict", raw=body)
    before = server.rss()
    for _ in range(10):
        status, answer = request(server.port, "POST", "/predict", raw=body)
        assert status == 413 and "40000 rows" in answer["error"]
    assert server.rss() - before < 8 * 2**20


def _chunked_post(port: int, chunks: int, chunk: int) -> int:
    """POST a chunked body of ``chunks`` x ``chunk`` bytes, stopping when the server answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        head = (
            "POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n"
        )
        sock.sendall(head.encode())
        piece = f"{chunk:x}\r\n".encode() + b" " * chunk + b"\r\n"
        try:
            for _ in range(chunks):
                sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass  # it answered and closed: the rest was never read
        reply = sock.recv(4096).decode("latin-1")
    return int(reply.split()[1])


def test_the_server_refuses_a_tampered_model_folder(seed_model: Path, tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "tampered"
    shutil.copytree(seed_model, folder)
    weights = folder / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    done = subprocess.run(
        [sys.executable, "-m", "nnreg", "serve", str(folder), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "SHA-256" in lines[0] and lines[0].startswith("error:")


def test_a_missing_extra_is_one_line_naming_it(
    seed_model: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "fastapi", None)
    code, _, err = run(["serve", str(seed_model)], capsys)
    assert code == 1
    assert err.strip().splitlines() == [err.strip()] and "pip install 'nnreg[serve]'" in err


@pytest.mark.slow
def test_a_load_test_has_no_errors_and_flat_memory(server: Server, house_model: Path) -> None:
    """2,000 requests of 1, 10 and 100 rows at concurrency 16 (predicted in batches): each
    gets the estimator's predictions for its own rows, and resident memory between the first
    and the last quarter stays within a few MiB."""
    frames = [house_frame(n, seed=n).drop(columns="price") for n in (1, 10, 100)]
    bodies = [json.dumps(records(f)).encode() for f in frames]
    reg = nnreg.load(house_model)
    expected = [reg.predict(f) for f in frames]
    wrong: list[int] = []
    statuses: list[int] = []
    rss: list[int] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        for i in range(125):
            which = (k + i) % 3
            conn.request("POST", "/predict", bodies[which], JSON)
            response = conn.getresponse()
            got = json.loads(response.read())
            if not np.allclose(got["predictions"], expected[which], rtol=1e-12, atol=0):
                wrong.append(which)  # answered with another request's rows
            with lock:
                statuses.append(response.status)
                if len(statuses) in (500, 2000):
                    rss.append(server.rss())
        conn.close()

    _run_threads(client, 16)
    assert len(statuses) == 2000 and set(statuses) == {200}
    assert not wrong
    assert rss[1] - rss[0] < 8 * 2**20, rss


JSON = {"Content-Type": "application/json"}


def _run_threads(target: Any, n: int) -> None:
    threads = [threading.Thread(target=target, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)


@pytest.mark.slow
def test_sigterm_during_a_burst_loses_no_request_taken_in(house_model: Path) -> None:
    """Each client opens a connection per request until the server stops; every request the
    server took in was answered in full (its count equals the clients' answers), and the
    others failed to connect, never with an error answer."""
    body = json.dumps(records(house_frame(1000, seed=3))).encode()
    answered: list[int] = []
    failures: list[BaseException] = []
    with Server(house_model) as srv:
        stop = threading.Event()

        def client(k: int) -> None:
            while not stop.is_set():
                conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
                try:
                    conn.request("POST", "/predict", body, {**JSON, "Connection": "close"})
                    response = conn.getresponse()
                    answer = json.loads(response.read())
                    answered.append(response.status)
                    assert len(answer["predictions"]) == 1000
                except (ConnectionError, http.client.RemoteDisconnected) as exc:
                    failures.append(exc)
                    return
                finally:
                    conn.close()

        threads = [threading.Thread(target=client, args=(k,)) for k in range(16)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120
        while len(answered) < 30 and time.monotonic() < deadline:
            time.sleep(0.01)
        code = srv.stop(signal.SIGTERM)
        stop.set()
        for t in threads:
            t.join(60)
        out = srv.output()
    assert code == 0, out
    assert set(answered) == {200}
    taken = int(out.split("the ")[-1].split()[0])
    said = out.strip().splitlines()[-1]
    assert said == f"stopped: answered {taken} of the {taken} requests taken in", out
    assert taken == len(answered) + 1  # and the health check of the start
    assert all(isinstance(f, ConnectionError | http.client.RemoteDisconnected) for f in failures)


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL])
def test_several_workers_serve_the_same_predictions_and_end_with_the_server(
    seed_model: Path, stop: int
) -> None:
    """Two worker processes answer as the estimator does; SIGTERM stops them all, and so
    does SIGKILL of the server process alone (no orphaned worker keeps the port)."""
    reg = nnreg.load(seed_model)
    frame = nnreg.seed_dataset(n=20, random_state=5)[["x1", "x2"]]
    with Server(seed_model, "--workers", "2") as srv:
        for _ in range(4):
            status, answer = request(srv.port, "POST", "/predict", records(frame))
            assert status == 200
            np.testing.assert_allclose(answer["predictions"], reg.predict(frame), rtol=1e-12)
        workers = _children(srv.proc.pid)
        assert len(workers) >= 2
        code = srv.stop(stop)
        assert code == (0 if stop == signal.SIGTERM else -signal.SIGKILL)
        deadline = time.monotonic() + 30
        while any(_alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(p) for p in workers)
        if stop == signal.SIGTERM:  # each worker says what it answered (the health checks too)
            out = srv.output()
            said = re.findall(r"worker (\d+) stopped: answered (\d+) of the (\d+) requests", out)
            assert len(said) == 2 and {int(pid) for pid, _, _ in said} <= set(workers), out
            assert sum(int(n) for _, n, _ in said) >= 4 and all(n == t for _, n, t in said)


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_the_cli_options_are_checked_before_the_model_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(["serve", str(tmp_path / "none"), "--max-rows", "0"], capsys)
    assert code == 2 and "--max-rows" in err
    code, _, err = run(["serve", str(tmp_path / "none")], capsys)
    assert code == 1 and "model folder not found" in err


def test_a_port_in_use_or_an_address_not_here_is_one_line(
    seed_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        code, _, err = run(["serve", str(seed_model), "--port", port], capsys)
    assert code == 2 and f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err
    code, _, err = run(["serve", str(seed_model), "--host", "192.0.2.1"], capsys)  # not ours
    assert code == 2 and "cannot listen on 192.0.2.1:8000" in err
    assert len(err.strip().splitlines()) == 1
