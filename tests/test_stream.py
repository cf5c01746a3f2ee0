"""Streamed Parquet training, prediction and evaluation against their in-memory references."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import r2_score

import nnreg
from nnreg.exceptions import ConfigError, DataError, DataFileError
from nnreg.metrics import RunningMetrics, regression_metrics
from nnreg.model import MLP, MLPConfig
from nnreg.preprocess import TablePreprocessor
from nnreg.stats import StreamingStatistics
from nnreg.stream import (
    ParquetBatches,
    ParquetData,
    evaluate_parquet,
    fit_parquet,
    predict_parquet,
)
from nnreg.train import TrainConfig, Trainer

FEATURES = ["a", "b", "c"]
SMALL = {"hidden_layer_sizes": (16, 16), "dropout": 0.0, "dtype": "float64", "random_state": 3}
SMALL["embedding"] = "none"  # streamed fits do not embed; the in-memory references must not


def _frame(n: int = 900, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=n), rng.uniform(-2, 2, size=n)
    c = rng.choice(["x", "y", "z"], size=n, p=[0.5, 0.3, 0.2])
    y = 2 * a - b + (c == "x") + rng.normal(0, 0.1, size=n)
    return pd.DataFrame({"a": a, "b": b, "c": c, "y": y})


def _folder(tmp_path: Path, frame: pd.DataFrame, cuts: list[int], group: int) -> Path:
    """Files frame[cuts[i]:cuts[i+1]] with row groups of ``group`` rows (the last uneven)."""
    folder = tmp_path / "data"
    folder.mkdir()
    for i, (lo, hi) in enumerate(zip(cuts[:-1], cuts[1:], strict=True)):
        frame.iloc[lo:hi].to_parquet(folder / f"part-{i}.parquet", row_group_size=group)
    return folder


@pytest.fixture
def frame() -> pd.DataFrame:
    return _frame()


@pytest.fixture
def folder(tmp_path: Path, frame: pd.DataFrame) -> Path:
    return _folder(tmp_path, frame, [0, 500, 900], group=96)


# -- statistics ------------------------------------------------------------------------------


@pytest.mark.parametrize("scaling", ["standard", "robust", "quantile", "none"])
def test_streaming_statistics_equal_the_in_memory_fit(scaling: str) -> None:
    """Chunk by chunk, with missing values imputed: the same fitted state as one fit, while
    the sample holds every row; means and deviations stay exact when it does not."""
    rng = np.random.default_rng(1)
    frame = _frame(1000).drop(columns="y")
    frame["a"] = frame["a"] * 1e3 + 5e3
    frame.loc[rng.random(1000) < 0.1, "a"] = np.nan
    y = rng.normal(2, 3, size=(1000, 2))
    reference = TablePreprocessor(scaling, "impute", max_categories=2).fit(frame)
    y_ref = nnreg.preprocess.Standardizer().fit(y)
    stats = StreamingStatistics(TablePreprocessor(scaling, "impute", 2), sample_rows=5000)
    for lo in range(0, 1000, 97):
        stats.update(frame.iloc[lo : lo + 97], y[lo : lo + 97])
    pre, y_scaler = stats.finish()
    got, want = pre.to_dict(), reference.to_dict()
    for key in ("center", "scale", "fill"):
        np.testing.assert_allclose(got.pop(key), want.pop(key), rtol=1e-12)
    assert got == want
    np.testing.assert_allclose(y_scaler.mean, y_ref.mean, rtol=1e-12)
    np.testing.assert_allclose(y_scaler.scale, y_ref.scale, rtol=1e-12)
    np.testing.assert_allclose(pre.transform(frame), reference.transform(frame), atol=1e-12)


def test_streaming_statistics_sample_bounds_the_medians_only() -> None:
    """A sample smaller than the table: exact standard scaling, estimated medians."""
    rng = np.random.default_rng(2)
    frame = pd.DataFrame({"a": rng.normal(10, 2, size=20_000)})
    frame.loc[rng.random(20_000) < 0.05, "a"] = np.nan
    stats = StreamingStatistics(TablePreprocessor("standard", "impute"), sample_rows=500, seed=1)
    for lo in range(0, 20_000, 3000):
        stats.update(frame.iloc[lo : lo + 3000])
    pre = stats.finish()[0]
    reference = TablePreprocessor("standard", "impute").fit(frame)
    assert len(stats.sample.values()) == 500
    assert pre.fill[0] == pytest.approx(reference.fill[0], abs=0.3)  # 0.15 sigma
    filled = frame.fillna(pre.fill[0])  # exact moments of the filled column
    assert pre.center[0] == pytest.approx(filled["a"].mean(), rel=1e-12)
    assert pre.scale[0] == pytest.approx(filled["a"].std(ddof=0), rel=1e-12)


def test_running_metrics_equal_regression_metrics() -> None:
    rng = np.random.default_rng(3)
    t = rng.normal(5, 2, size=(500, 2))
    p = t + rng.normal(size=(500, 2))
    running = RunningMetrics()
    for lo in range(0, 500, 77):
        running.update(t[lo : lo + 77], p[lo : lo + 77])
    got, want = running.result(), regression_metrics(t, p)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-12)
    constant = RunningMetrics()
    constant.update(np.ones(4), np.ones(4))
    assert constant.result()["r2"] == 1.0
    # One row has no spread to explain: R² is undefined, as scikit-learn's r2_score says.
    one = RunningMetrics()
    one.update(np.array([2.0]), np.array([2.5]))
    assert np.isnan(one.result()["r2"]) and np.isnan(regression_metrics([2.0], [2.5])["r2"])
    with pytest.warns(UndefinedMetricWarning):
        assert np.isnan(r2_score([2.0], [2.5]))


# -- training --------------------------------------------------------------------------------


def test_unshuffled_stream_equals_in_memory_training(folder: Path, frame: pd.DataFrame) -> None:
    """shuffle_buffer=0 with one batch of every row: the same preprocessing, initial weights
    and full-batch steps as Regressor.fit, read from two files in chunks of 50 rows."""
    params = {**SMALL, "batch_size": len(frame), "max_iter": 5}
    a = nnreg.Regressor(**params).fit(frame[FEATURES], frame["y"])
    b = fit_parquet(
        nnreg.Regressor(**params), ParquetData(folder, target="y"), shuffle_buffer=0, chunk_rows=50
    )
    assert a.preprocessor_.categories == b.preprocessor_.categories
    np.testing.assert_allclose(a.preprocessor_.scale, b.preprocessor_.scale, rtol=1e-12)
    for pa_, pb in zip(a.model_.parameters(), b.model_.parameters(), strict=True):
        torch.testing.assert_close(pa_, pb, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(a.loss_curve_, b.loss_curve_, rtol=1e-10)
    assert list(b.feature_names_in_) == FEATURES and b.n_features_in_ == 3
    np.testing.assert_allclose(a.predict(frame[FEATURES]), b.predict(frame[FEATURES]), rtol=1e-9)


class InOrder:
    """In-memory minibatches sliced in order: the reference for an unshuffled stream."""

    def __init__(self, X: torch.Tensor, y: torch.Tensor, batch: int) -> None:
        self.X, self.y, self.batch = X, y, batch
        self.steps_per_epoch = -(-len(X) // batch)

    def epoch(self, epoch: int):  # type: ignore[no-untyped-def]
        for lo in range(0, len(self.X), self.batch):
            yield self.X[lo : lo + self.batch], self.y[lo : lo + self.batch], None


def test_unshuffled_minibatches_train_like_in_memory_slices(
    folder: Path, frame: pd.DataFrame
) -> None:
    """Minibatches of 64 rows that straddle row groups and files: the same steps, weights and
    cosine schedule as slicing the in-memory table in order."""
    data = ParquetData(folder, target="y")
    pre = TablePreprocessor().fit(frame[FEATURES])
    y_scaler = nnreg.preprocess.Standardizer().fit(frame[["y"]].to_numpy())
    source = ParquetBatches(
        data, pre, y_scaler, 64, shuffle_buffer=0, dtype=torch.float64, chunk_rows=40
    )
    X = torch.tensor(pre.transform(frame[FEATURES]))
    y = torch.tensor(y_scaler.transform(frame[["y"]].to_numpy()))
    reference = InOrder(X, y, 64)
    assert source.steps_per_epoch == reference.steps_per_epoch == 15
    for (xa, ya, _), (xb, yb, _) in zip(source.epoch(0), reference.epoch(0), strict=True):
        torch.testing.assert_close(xa, xb, rtol=0, atol=0)
        torch.testing.assert_close(ya, yb, rtol=0, atol=0)
    config = TrainConfig(epochs=3, lr=0.01, optimizer="adam", batch_size=64, schedule="cosine")
    torch.manual_seed(0)
    net_a = MLP(MLPConfig(X.shape[1], (8, 8), 1)).double()
    net_b = MLP(MLPConfig(X.shape[1], (8, 8), 1)).double()
    net_b.load_state_dict(net_a.state_dict())
    ta, tb = Trainer(net_a, config), Trainer(net_b, config)
    ta.run(source)
    tb.run(reference)
    for pa_, pb in zip(net_a.parameters(), net_b.parameters(), strict=True):
        torch.testing.assert_close(pa_, pb, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ta.history.lr, tb.history.lr)


def _rows(source: ParquetBatches, epoch: int) -> list[tuple[float, ...]]:
    return [tuple(r) for xb, _, _ in source.epoch(epoch) for r in xb.tolist()]


def test_shuffled_epochs_visit_every_row_once_in_a_seeded_order(
    folder: Path, frame: pd.DataFrame
) -> None:
    data = ParquetData(folder, target="y")
    pre = TablePreprocessor().fit(frame[FEATURES])
    y_scaler = nnreg.preprocess.Standardizer().fit(frame[["y"]].to_numpy())

    def source(seed: int) -> ParquetBatches:
        return ParquetBatches(
            data,
            pre,
            y_scaler,
            64,
            shuffle_buffer=150,
            seed=seed,
            dtype=torch.float64,
            chunk_rows=40,
        )

    everything = sorted(tuple(r) for r in pre.transform(frame[FEATURES]).tolist())
    first, again, other = _rows(source(1), 0), _rows(source(1), 0), _rows(source(2), 0)
    assert sorted(first) == everything and sorted(_rows(source(1), 1)) == everything
    assert first == again  # seeded
    assert first != other and first != _rows(source(1), 1)  # reshuffled per seed and epoch
    in_order = _rows(
        ParquetBatches(data, pre, y_scaler, 64, shuffle_buffer=0, dtype=torch.float64), 0
    )
    assert first != in_order
    sizes = [len(xb) for xb, _, _ in source(1).epoch(0)]
    assert sizes == [64] * 14 + [4] and len(sizes) == source(1).steps_per_epoch


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_share_row_groups_and_take_equal_steps(
    tmp_path: Path, frame: pd.DataFrame, world_size: int
) -> None:
    """Uneven row groups: every rank takes steps_per_epoch steps in every epoch, and the
    ranks' rows never overlap."""
    folder = _folder(tmp_path, frame, [0, 300, 310, 900], group=70)  # a 10-row file too
    data = ParquetData(folder, target="y")
    pre = TablePreprocessor().fit(frame[FEATURES])
    y_scaler = nnreg.preprocess.Standardizer().fit(frame[["y"]].to_numpy())
    for epoch in range(4):
        seen: list[tuple[float, ...]] = []
        steps = set()
        for rank in range(world_size):
            source = ParquetBatches(
                data,
                pre,
                y_scaler,
                32,
                shuffle_buffer=64,
                seed=5,
                rank=rank,
                world_size=world_size,
                dtype=torch.float64,
            )
            batches = list(source.epoch(epoch))
            steps.add((len(batches), source.steps_per_epoch))
            seen += [tuple(r) for xb, _, _ in batches for r in xb.tolist()]
        assert len(steps) == 1 and next(iter(steps))[0] == next(iter(steps))[1]
        assert len(set(seen)) == len(seen)


def test_fewer_row_groups_than_processes_is_refused(tmp_path: Path, frame: pd.DataFrame) -> None:
    path = tmp_path / "one.parquet"
    frame.to_parquet(path)
    data = ParquetData(path, target="y")
    pre = TablePreprocessor().fit(frame[FEATURES])
    with pytest.raises(DataError, match="fewer than the 2 processes"):
        ParquetBatches(data, pre, None, 32, world_size=2, rank=1)


@pytest.mark.slow
def test_many_row_groups_and_an_uneven_last_one_train_without_hanging(tmp_path: Path) -> None:
    """A folder of 7 files, 47 row groups, the last of 12 rows: shuffled training with a
    buffer smaller than a row group ends every epoch and learns."""
    frame = _frame(2000, seed=4)
    folder = _folder(tmp_path, frame, [0, 300, 600, 900, 1200, 1500, 1800, 2000], group=47)
    assert sum(pq.ParquetFile(p).num_row_groups for p in folder.iterdir()) == 47
    reg = nnreg.Regressor(**{**SMALL, "max_iter": 8, "batch_size": 50, "learning_rate_init": 0.01})
    epochs: list[int] = []
    fit_parquet(
        reg,
        ParquetData(folder, target="y"),
        shuffle_buffer=30,
        chunk_rows=20,
        callback=lambda e, loss, val: epochs.append(e),
    )
    assert epochs == list(range(8)) and reg.n_iter_ == 8
    assert reg.loss_curve_[-1] < 0.2 * reg.loss_curve_[0]
    assert reg.score(frame[FEATURES], frame["y"]) > 0.9


def test_streamed_fit_is_seeded(folder: Path) -> None:
    params = {**SMALL, "max_iter": 2, "batch_size": 64}
    a = fit_parquet(nnreg.Regressor(**params), ParquetData(folder, target="y"), shuffle_buffer=100)
    b = fit_parquet(nnreg.Regressor(**params), ParquetData(folder, target="y"), shuffle_buffer=100)
    assert a.loss_curve_ == b.loss_curve_


def test_distributed_hooks_reach_the_trainer(folder: Path) -> None:
    class SoloSync:
        calls = 0

        def average_(self, tensor: torch.Tensor) -> None:
            SoloSync.calls += 1

        def sum_(self, tensor: torch.Tensor) -> None:
            pass

    params = {**SMALL, "max_iter": 2, "batch_size": 64}
    plain = fit_parquet(nnreg.Regressor(**params), ParquetData(folder, target="y"))
    synced = fit_parquet(
        nnreg.Regressor(**params), ParquetData(folder, target="y"), sync=SoloSync()
    )
    assert SoloSync.calls == 2 * 15
    np.testing.assert_allclose(plain.loss_curve_, synced.loss_curve_, rtol=1e-12)


@pytest.mark.parametrize(
    ("setting", "match"),
    [
        ({"n_models": 2}, "n_models"),
        ({"early_stopping": True}, "early_stopping"),
        ({"batch_size": "full"}, "batch_size='full'"),
        ({"warm_start": True}, "warm_start"),
        ({"max_iter": 0}, "max_iter must be"),
    ],
)
def test_unsupported_settings_are_refused(folder: Path, setting: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        fit_parquet(nnreg.Regressor(**setting), ParquetData(folder, target="y"))


# -- prediction and evaluation ---------------------------------------------------------------


@pytest.fixture
def fitted(frame: pd.DataFrame) -> nnreg.Regressor:
    return nnreg.Regressor(**{**SMALL, "max_iter": 3, "batch_size": 64}).fit(
        frame[FEATURES], frame["y"]
    )


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_streamed_predictions_equal_in_memory_ones(
    tmp_path: Path, folder: Path, frame: pd.DataFrame, fitted: nnreg.Regressor, suffix: str
) -> None:
    out = tmp_path / f"pred{suffix}"
    rows = predict_parquet(fitted, ParquetData(folder), out, chunk_rows=70)
    assert rows == len(frame)
    want = pd.DataFrame({"y_pred": fitted.predict(frame[FEATURES])})
    got = pd.read_csv(out) if suffix == ".csv" else pd.read_parquet(out)
    # Chunked and whole-table float64 products may round differently in the last bit (the
    # BLAS blocks them differently), so equal means equal to float64 rounding, not bitwise.
    pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-12, atol=0)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_streamed_evaluation_equals_in_memory_metrics(
    folder: Path, frame: pd.DataFrame, fitted: nnreg.Regressor
) -> None:
    result = evaluate_parquet(fitted, ParquetData(folder, target="y"), chunk_rows=70)
    pred = fitted.predict(frame[FEATURES])
    want = regression_metrics(frame["y"].to_numpy(), pred)
    assert result.rows == len(frame)
    for key, value in want.items():
        assert result.metrics[key] == pytest.approx(value, rel=1e-12)
    assert result.first == (pytest.approx(pred[0]), pytest.approx(frame["y"].iloc[0]))


def test_a_bad_chunk_leaves_no_output(tmp_path: Path, frame: pd.DataFrame, fitted) -> None:
    bad = frame.copy()
    bad.loc[700, "a"] = np.nan
    path = tmp_path / "bad.parquet"
    bad.to_parquet(path, row_group_size=100)
    out = tmp_path / "pred.csv"
    with pytest.raises(DataError, match="column 'a' has 1 missing values in rows from 700"):
        predict_parquet(fitted, ParquetData(path), out)
    assert list(tmp_path.iterdir()) == [path]


# -- bad input -------------------------------------------------------------------------------


def test_bad_data_is_refused_with_one_clear_sentence(tmp_path: Path, frame: pd.DataFrame) -> None:
    csv = tmp_path / "t.csv"
    frame.to_csv(csv, index=False)
    with pytest.raises(DataFileError, match="streaming reads Parquet"):
        ParquetData(csv, target="y")
    with pytest.raises(DataFileError, match="not found"):
        ParquetData(tmp_path / "missing.parquet", target="y")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataFileError, match="holds no Parquet files"):
        ParquetData(empty, target="y")
    path = tmp_path / "t.parquet"
    frame.to_parquet(path)
    with pytest.raises(DataError, match="target column 'price' not found"):
        ParquetData(path, target="price")
    with pytest.raises(DataError, match="target column 'c' .* holds text"):
        ParquetData(path, target="c")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    frame.iloc[:10].to_parquet(mixed / "0.parquet")
    frame.iloc[10:].astype({"a": "float32"}).to_parquet(mixed / "1.parquet")
    with pytest.raises(DataFileError, match="column 'a' is float, not double"):
        ParquetData(mixed, target="y")
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    with pytest.raises(DataFileError, match="cannot read .* as PARQUET"):
        ParquetData(broken, target="y")
    pq.write_table(pa.table({"a": [1.0, 2.0], "y": [1.0, float("nan")]}), tmp_path / "nan.parquet")
    data = ParquetData(tmp_path / "nan.parquet", target="y")
    with pytest.raises(DataError, match="missing values.*first at row 1"):
        fit_parquet(nnreg.Regressor(), data)


# -- command line ----------------------------------------------------------------------------


def test_cli_trains_predicts_and_evaluates_streamed(
    tmp_path: Path, folder: Path, frame: pd.DataFrame, capsys: pytest.CaptureFixture[str]
) -> None:
    from cli_helpers import run

    model = tmp_path / "model"
    code, out, _ = run(
        [
            "train",
            str(folder),
            "--target",
            "y",
            "--stream",
            "--epochs",
            "2",
            "--hidden",
            "8",
            "--batch-size",
            "64",
            "--out",
            str(model),
            "--json",
        ],
        capsys,
    )
    assert code == 0
    summary = json.loads(out)
    reg = nnreg.load(model)
    pred = reg.predict(frame[FEATURES])
    want = regression_metrics(frame["y"].to_numpy(), pred)
    assert summary["train_metrics"]["r2"] == pytest.approx(want["r2"], rel=1e-9)
    assert reg.model_info_["training"]["epochs_run"] == 2
    assert (model / "config.toml").read_text().count("stream = true") == 1
    code, _, err = run(
        ["predict", str(model), str(folder), "--stream", "-o", str(tmp_path / "p.parquet")], capsys
    )
    assert code == 0 and f"wrote {len(frame)} predictions" in err
    got = pd.read_parquet(tmp_path / "p.parquet")["y_pred"].to_numpy()
    np.testing.assert_allclose(got, pred, rtol=1e-12)
    code, out, _ = run(["evaluate", str(model), str(folder), "--stream", "--json"], capsys)
    assert code == 0
    assert json.loads(out)["rows"] == len(frame)
    assert json.loads(out)["rmse"] == pytest.approx(want["rmse"], rel=1e-9)
    code, out, _ = run(
        [
            "train",
            "--config",
            str(model / "config.toml"),
            "--out",
            str(tmp_path / "again"),
            "--quiet",
        ],
        capsys,
    )
    assert code == 0
    assert nnreg.load(tmp_path / "again").loss_curve_ == reg.loss_curve_  # the same run


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["train", "{csv}", "--target", "y", "--stream"], 1, "streaming reads Parquet"),
        (["train", "{folder}", "--target", "price", "--stream"], 1, "'price' not found"),
        (["train", "{folder}", "--target", "c", "--stream"], 1, "must be numbers"),
        (["train", "{empty}", "--target", "y", "--stream"], 1, "holds no Parquet files"),
        (["train", "--stream"], 2, "--stream needs DATA"),
        (
            ["train", "{folder}", "--target", "y", "--stream", "--n-models", "2"],
            2,
            "--n-models above 1",
        ),
        (["train", "{folder}", "--target", "y", "--shuffle-buffer", "9"], 2, "with --stream"),
        (["predict", "{folder}", "{folder}", "--stream"], 2, "give -o/--output"),
    ],
)
def test_cli_stream_errors_are_one_line(
    tmp_path: Path,
    folder: Path,
    frame: pd.DataFrame,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    code: int,
    message: str,
) -> None:
    from cli_helpers import run

    frame.to_csv(tmp_path / "t.csv", index=False)
    (tmp_path / "empty").mkdir()
    paths = {"csv": tmp_path / "t.csv", "folder": folder, "empty": tmp_path / "empty"}
    argv = [a.format(**paths) for a in args]
    if args[0] == "train":
        argv += ["--out", str(tmp_path / "m")]
    got, _, err = run(argv, capsys)
    assert got == code
    assert message in err and err.startswith("error: ") and err.count("\n") == 1
    assert "Traceback" not in err and not (tmp_path / "m").exists()


@pytest.mark.slow
def test_cli_streams_in_two_processes(
    tmp_path: Path, folder: Path, frame: pd.DataFrame, capsys: pytest.CaptureFixture[str]
) -> None:
    """--nproc 2: each process reads its share of the row groups; one model folder results."""
    from cli_helpers import run

    model = tmp_path / "model"
    code, _, err = run(
        [
            "train",
            str(folder),
            "--target",
            "y",
            "--stream",
            "--epochs",
            "2",
            "--hidden",
            "8",
            "--batch-size",
            "32",
            "--nproc",
            "2",
            "--out",
            str(model),
            "--quiet",
        ],
        capsys,
    )
    assert code == 0, err
    reg = nnreg.load(model)
    assert reg.n_iter_ == 2 and np.isfinite(reg.predict(frame[FEATURES])).all()


def test_streamed_run_resumes_from_a_checkpoint_to_the_same_weights(
    tmp_path: Path, folder: Path
) -> None:
    """Stopped after epoch 1 with a checkpoint every epoch, then resumed: the same weights as
    an uninterrupted run (the row-group and buffer order depend on the epoch alone)."""
    import threading

    params = {**SMALL, "max_iter": 4, "batch_size": 64, "dropout": 0.1}
    whole = fit_parquet(
        nnreg.Regressor(**params), ParquetData(folder, target="y"), shuffle_buffer=100
    )
    stop = threading.Event()
    checkpoint = tmp_path / "checkpoint.safetensors"
    fit_parquet(
        nnreg.Regressor(**params),
        ParquetData(folder, target="y"),
        shuffle_buffer=100,
        stop=stop,
        checkpoint=checkpoint,
        checkpoint_every=1,
        callback=lambda e, loss, val: stop.set() if e == 1 else None,
    )
    resumed = fit_parquet(
        nnreg.Regressor(**params),
        ParquetData(folder, target="y"),
        shuffle_buffer=100,
        resume=checkpoint,
    )
    assert resumed.loss_curve_ == whole.loss_curve_
    for pa_, pb in zip(whole.model_.parameters(), resumed.model_.parameters(), strict=True):
        torch.testing.assert_close(pa_, pb, rtol=0, atol=0)


def test_streamed_intervals_equal_in_memory_ones(
    tmp_path: Path, folder: Path, frame: pd.DataFrame
) -> None:
    reg = nnreg.Regressor(**{**SMALL, "max_iter": 2, "batch_size": 64, "n_models": 3})
    reg.fit(frame[FEATURES], frame["y"])
    out = tmp_path / "intervals.csv"
    predict_parquet(
        reg, ParquetData(folder), out, target_names=["price"], interval=0.8, chunk_rows=100
    )
    got = pd.read_csv(out)
    lower, upper = reg.predict_interval(frame[FEATURES], coverage=0.8)
    assert list(got.columns) == ["price_pred", "price_lower", "price_upper"]
    np.testing.assert_allclose(got["price_pred"], reg.predict(frame[FEATURES]), rtol=1e-12)
    np.testing.assert_allclose(got["price_lower"], lower, rtol=1e-12)
    np.testing.assert_allclose(got["price_upper"], upper, rtol=1e-12)
    single = nnreg.Regressor(**{**SMALL, "max_iter": 1}).fit(frame[FEATURES], frame["y"])
    with pytest.raises(ConfigError, match="held out"):
        predict_parquet(single, ParquetData(folder), out, interval=0.8)


def test_several_processes_need_an_integer_seed(folder: Path) -> None:
    with pytest.raises(ConfigError, match="random_state=None with several processes"):
        fit_parquet(
            nnreg.Regressor(random_state=None),
            ParquetData(folder, target="y"),
            rank=0,
            world_size=2,
        )
