"""Test accuracy of nnreg against its peers, on synthetic and real tables, in one process.

Every model is fit on the same training rows and scored by its root mean squared error (RMSE)
on the same held-out rows: a 20% test split drawn with each split seed (default 0, 1, 2), the
model seeded with the same seed. The seed data is the exception: 100 training rows from
``nnreg.seed_dataset(n=100, random_state=SEED)`` and 2,000 test rows from the same distribution
(``random_state=1000 + SEED``). Datasets:

* seed: the seed experiment's data (x1, x2 -> y);
* friedman1: ``make_friedman1(n_samples=2000, noise=1.0, random_state=0)``;
* diabetes: scikit-learn's bundled diabetes table (442 rows);
* diamonds, mpg, penguins, midwest, txhousing: real tables with categorical columns, read from
  the CSV files that plotnine ships inside its package (``plotnine/data/``), so nothing is
  downloaded.

Models run at their defaults except where ``MODELS`` says otherwise. A model that raises is
recorded as ``error: <message>`` and the run goes on. Only ``fit`` is timed. Results go to
stdout and ``benchmarks/results/accuracy.md``, with an automated check of the acceptance
criteria for nnreg's ``recommended`` preset, and a picture beside it (``accuracy.png``): each
model's test RMSE relative to the best on each table against its training time.

    python benchmarks/accuracy.py                   # what results/accuracy.md was made with
    python benchmarks/accuracy.py --quick           # smoke run: one seed, small tables
    python benchmarks/accuracy.py --datasets mpg,penguins --models nnreg,hgb --seeds 0
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import random
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.compose import ColumnTransformer, TransformedTargetRegressor
from sklearn.datasets import load_diabetes, make_friedman1
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

import nnreg

RESULTS = Path(__file__).parent / "results"
SEEDS = (0, 1, 2)
TEST_SIZE = 0.2
SEED_TRAIN_ROWS = 100
SEED_TEST_ROWS = 2_000
FRIEDMAN_ROWS = 2_000
TXHOUSING_ROWS = 5_000  # of 7,126 complete rows, sampled like diamonds
RANDHIE_ROWS = 5_000  # of 20,190
DIAMONDS_ROWS = 10_000  # of 53,940; a fixed subsample keeps the full run near a quarter hour
QUICK_DATASETS = ("seed", "diabetes", "mpg")
QUICK_MAX_ROWS = 1_000
CELL_ERROR_CHARS = 60

# --------------------------------------------------------------------------- datasets

Table = tuple[pd.DataFrame, np.ndarray]  # features (categoricals as "category"), target


@dataclass(frozen=True)
class Dataset:
    name: str
    source: str
    target: str
    load: Callable[[], Table]  # the whole table, before the split


def _seed_table(n: int, random_state: int) -> Table:
    df = nnreg.seed_dataset(n=n, random_state=random_state)
    return df[["x1", "x2"]].reset_index(drop=True), df["y"].to_numpy(np.float64)


def _friedman1() -> Table:
    X, y = make_friedman1(n_samples=FRIEDMAN_ROWS, noise=1.0, random_state=0)
    return pd.DataFrame(X, columns=[f"x{i}" for i in range(X.shape[1])]), y


def _diabetes() -> Table:
    bunch = load_diabetes(as_frame=True)
    return bunch.data, bunch.target.to_numpy(np.float64)


def _plotnine_csv(name: str) -> pd.DataFrame:
    """A CSV file that plotnine ships in its package folder; found without importing plotnine."""
    spec = importlib.util.find_spec("plotnine")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            "the real tables come from plotnine's bundled data: pip install plotnine "
            "(or install nnreg with the `bench` extra)"
        )
    return pd.read_csv(Path(spec.origin).parent / "data" / f"{name}.csv")


def _split_target(df: pd.DataFrame, target: str, categorical: Sequence[str]) -> Table:
    X = df.drop(columns=[target]).reset_index(drop=True)
    for col in categorical:
        X[col] = X[col].astype(str).astype("category")
    return X, df[target].to_numpy(np.float64)


def _diamonds() -> Table:
    df = _plotnine_csv("diamonds").sample(n=DIAMONDS_ROWS, random_state=0)
    return _split_target(df, "price", ["cut", "color", "clarity"])


def _mpg() -> Table:
    # cty (city mileage) is a second measurement of the target itself, so it is left out.
    df = _plotnine_csv("mpg").drop(columns=["cty"])
    return _split_target(df, "hwy", ["manufacturer", "model", "trans", "drv", "fl", "class"])


def _midwest() -> Table:
    # Share of college graduates per Midwest county, from its other census figures; the
    # identifiers and the head counts the percentages are made of are left out.
    df = _plotnine_csv("midwest")
    counts = ["popwhite", "popblack", "popamerindian", "popasian", "popother", "popadults"]
    df = df.drop(columns=["PID", "county", *counts])
    return _split_target(df, "percollege", ["state", "category"])


def _txhousing() -> Table:
    # Median house price per Texas city and month, from the market's other figures.
    df = _plotnine_csv("txhousing").drop(columns=["date"]).dropna()
    df = df.sample(n=min(len(df), TXHOUSING_ROWS), random_state=0)
    return _split_target(df, "median", ["city"])


def _penguins() -> Table:
    df = _plotnine_csv("penguins").dropna()  # 11 of 344 rows miss a measurement or the sex
    return _split_target(df, "body_mass_g", ["species", "island", "sex"])


def _statsmodels(name: str) -> pd.DataFrame:
    """A table that statsmodels ships in its package (plotnine depends on it)."""
    import statsmodels.api as sm

    return getattr(sm.datasets, name).load_pandas().data


def _fair() -> Table:
    # Time spent in extramarital affairs, from a 1974 survey of women.
    return _split_target(_statsmodels("fair"), "affairs", ["occupation", "occupation_husb"])


def _randhie() -> Table:
    # Doctor visits in the RAND health insurance experiment.
    df = _statsmodels("randhie").sample(n=RANDHIE_ROWS, random_state=0)
    return _split_target(df, "mdvis", [])


def _grunfeld() -> Table:
    return _split_target(_statsmodels("grunfeld"), "invest", ["firm"])


def _star98() -> Table:
    # The share of a California school district's pupils above the national median in maths.
    df = _statsmodels("star98")
    df["share_above"] = df["NABOVE"] / (df["NABOVE"] + df["NBELOW"])
    return _split_target(df.drop(columns=["NABOVE", "NBELOW"]), "share_above", [])


def _seals() -> Table:
    # The east-west component of seals' movement, from position and north-south component.
    return _split_target(_plotnine_csv("seals"), "delta_long", [])


def _economics() -> Table:
    # US unemployment (thousands) from spending, population, saving rate and duration.
    return _split_target(_plotnine_csv("economics").drop(columns=["date"]), "unemploy", [])


# Tables nnreg's defaults were not chosen on: ``--datasets extra`` scores them.
EXTRA: list[Dataset] = [
    Dataset("fair", "statsmodels `datasets.fair` (6,366 rows)", "affairs", _fair),
    Dataset(
        "randhie",
        f"statsmodels `datasets.randhie` (20,190 rows), {RANDHIE_ROWS:,} sampled with "
        "random_state=0",
        "mdvis",
        _randhie,
    ),
    Dataset("grunfeld", "statsmodels `datasets.grunfeld` (220 rows)", "invest", _grunfeld),
    Dataset(
        "star98",
        "statsmodels `datasets.star98` (303 rows), NABOVE / (NABOVE + NBELOW)",
        "share above",
        _star98,
    ),
    Dataset("seals", "plotnine `data/seals.csv` (1,155 rows)", "delta_long", _seals),
    Dataset("economics", "plotnine `data/economics.csv` without date", "unemploy", _economics),
]

DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in [
        Dataset(
            "seed",
            f"`nnreg.seed_dataset`: {SEED_TRAIN_ROWS} training rows (random_state=SEED), "
            f"{SEED_TEST_ROWS:,} test rows (random_state=1000+SEED)",
            "y",
            lambda: _seed_table(SEED_TRAIN_ROWS, 0),
        ),
        Dataset(
            "friedman1",
            f"`sklearn.datasets.make_friedman1(n_samples={FRIEDMAN_ROWS}, noise=1.0, "
            "random_state=0)`",
            "y",
            _friedman1,
        ),
        Dataset("diabetes", "`sklearn.datasets.load_diabetes()`", "disease progression", _diabetes),
        Dataset(
            "diamonds",
            f"plotnine `data/diamonds.csv` (53,940 rows), {DIAMONDS_ROWS:,} sampled with "
            "random_state=0",
            "price",
            _diamonds,
        ),
        Dataset("mpg", "plotnine `data/mpg.csv`, without `cty`", "hwy", _mpg),
        Dataset(
            "penguins",
            "plotnine `data/penguins.csv`, rows with missing values dropped",
            "body_mass_g",
            _penguins,
        ),
        Dataset(
            "midwest",
            "plotnine `data/midwest.csv` (437 counties), without PID, county and the head "
            "counts behind the percentages",
            "percollege",
            _midwest,
        ),
        Dataset(
            "txhousing",
            f"plotnine `data/txhousing.csv`, complete rows without `date`, {TXHOUSING_ROWS:,} "
            "sampled with random_state=0",
            "median",
            _txhousing,
        ),
    ]
}
PANEL = tuple(DATASETS)  # the default run's tables
DATASETS.update({d.name: d for d in EXTRA})


@cache
def _whole_table(name: str) -> Table:
    return DATASETS[name].load()


def load_dataset(
    name: str, seed: int, max_rows: int | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray, np.ndarray]:
    """(X_train, X_test, y_train, y_test) of dataset ``name`` for split seed ``seed``.

    Categorical columns have the "category" dtype, with the same categories in both parts.
    ``max_rows`` caps the table (a fixed subsample, drawn before the split) for quick runs.
    """
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    if name == "seed":
        X_train, y_train = _seed_table(SEED_TRAIN_ROWS, seed)
        X_test, y_test = _seed_table(SEED_TEST_ROWS, 1000 + seed)
        return X_train, X_test, y_train, y_test
    X, y = _whole_table(name)
    if max_rows is not None and len(X) > max_rows:
        rows = np.random.default_rng(0).choice(len(X), size=max_rows, replace=False)
        X, y = X.iloc[np.sort(rows)], y[np.sort(rows)]
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=TEST_SIZE, random_state=seed
    )
    return X_train.reset_index(drop=True), X_test.reset_index(drop=True), y_train, y_test


def categorical_columns(X: pd.DataFrame) -> list[str]:
    return [str(c) for c in X.columns if isinstance(X[c].dtype, pd.CategoricalDtype)]


# ----------------------------------------------------------------------------- models

Factory = Callable[[int, list[str]], Any]  # (seed, categorical column names) -> estimator


def nnreg_recommended(seed: int, cat_cols: list[str]) -> Any:
    return nnreg.Regressor.from_preset("recommended", random_state=seed)


def nnreg_plain(seed: int, cat_cols: list[str]) -> Any:
    return nnreg.Regressor.from_preset("plain", random_state=seed)


def nnreg_seed(seed: int, cat_cols: list[str]) -> Any:
    return nnreg.Regressor.from_preset("seed", random_state=seed)


def _encoded_inputs(cat_cols: list[str]) -> ColumnTransformer:
    """One-hot for the categorical columns, standard scaling for all the others."""
    return ColumnTransformer(
        [("categorical", OneHotEncoder(handle_unknown="ignore"), cat_cols)],
        remainder=StandardScaler(),
    )


def mlp(seed: int, cat_cols: list[str]) -> Any:
    return Pipeline(
        [
            ("inputs", _encoded_inputs(cat_cols)),
            ("mlp", MLPRegressor(max_iter=500, random_state=seed)),
        ]
    )


def mlp_scaled_target(seed: int, cat_cols: list[str]) -> Any:
    return TransformedTargetRegressor(regressor=mlp(seed, cat_cols), transformer=StandardScaler())


def hist_gradient_boosting(seed: int, cat_cols: list[str]) -> Any:
    return HistGradientBoostingRegressor(categorical_features="from_dtype", random_state=seed)


def realmlp_td(seed: int, cat_cols: list[str]) -> Any:
    from pytabkit import RealMLP_TD_Regressor

    # Categoricals are found from the "category" dtype; its defaults hold out 20% of the
    # training rows to pick the best epoch.
    return RealMLP_TD_Regressor(
        device="cpu", random_state=seed, n_threads=torch.get_num_threads(), verbosity=0
    )


def nnreg_tabm(seed: int, cat_cols: list[str]) -> Any:
    return nnreg.Regressor(random_state=seed, n_models=8, ensemble="tabm-mini")


def tabm_d(seed: int, cat_cols: list[str]) -> Any:
    from pytabkit import TabM_D_Regressor

    return TabM_D_Regressor(
        device="cpu", random_state=seed, n_threads=torch.get_num_threads(), verbosity=0
    )


def lightgbm(seed: int, cat_cols: list[str]) -> Any:
    from lightgbm import LGBMRegressor

    return LGBMRegressor(random_state=seed, verbose=-1)  # categoricals from the "category" dtype


def catboost(seed: int, cat_cols: list[str]) -> Any:
    from catboost import CatBoostRegressor

    return CatBoostRegressor(
        random_seed=seed, verbose=0, cat_features=cat_cols or None, allow_writing_files=False
    )


MODELS: dict[str, Factory] = {
    "nnreg": nnreg_recommended,
    "nnreg-plain": nnreg_plain,
    "nnreg-seed": nnreg_seed,
    "mlp": mlp,
    "mlp-scaled-y": mlp_scaled_target,
    "hgb": hist_gradient_boosting,
    "nnreg-tabm": nnreg_tabm,
    "realmlp-td": realmlp_td,
    "tabm-d": tabm_d,
    "lightgbm": lightgbm,
    "catboost": catboost,
}

LABELS = {
    "nnreg": "nnreg recommended",
    "nnreg-plain": "nnreg plain",
    "nnreg-seed": "nnreg seed",
    "mlp": "MLPRegressor",
    "mlp-scaled-y": "MLPRegressor, scaled y",
    "hgb": "HistGradientBoosting",
    "nnreg-tabm": "nnreg tabm-mini x8",
    "realmlp-td": "RealMLP-TD",
    "tabm-d": "TabM-D",
    "lightgbm": "LightGBM",
    "catboost": "CatBoost",
}

CONFIGS = {
    "nnreg": '`nnreg.Regressor.from_preset("recommended", random_state=SEED)` on the raw '
    "DataFrame (numeric and categorical columns)",
    "nnreg-plain": '`nnreg.Regressor.from_preset("plain", random_state=SEED)`: the recommended '
    "recipe without numeric embeddings (nnreg's default before them), on the raw DataFrame",
    "nnreg-seed": '`nnreg.Regressor.from_preset("seed", random_state=SEED)` on the raw DataFrame',
    "mlp": "`MLPRegressor(max_iter=500, random_state=SEED)` after a ColumnTransformer: "
    '`OneHotEncoder(handle_unknown="ignore")` for categoricals, `StandardScaler` for the rest',
    "mlp-scaled-y": "the same, inside `TransformedTargetRegressor(transformer=StandardScaler())`",
    "hgb": '`HistGradientBoostingRegressor(categorical_features="from_dtype", random_state=SEED)`',
    "realmlp-td": '`pytabkit.RealMLP_TD_Regressor(device="cpu", random_state=SEED, '
    "n_threads=torch.get_num_threads())`, categoricals from the dtype (its defaults hold out 20% "
    "of the training rows for epoch selection)",
    "nnreg-tabm": '`nnreg.Regressor(random_state=SEED, n_models=8, ensemble="tabm-mini")`: the '
    "recommended recipe as 8 shared-weight members, on the raw DataFrame",
    "tabm-d": '`pytabkit.TabM_D_Regressor(device="cpu", random_state=SEED, '
    "n_threads=torch.get_num_threads())`, categoricals from the dtype (its defaults hold out "
    "part of the training rows for early stopping)",
    "lightgbm": "`LGBMRegressor(random_state=SEED, verbose=-1)`, categoricals from the dtype",
    "catboost": "`CatBoostRegressor(random_seed=SEED, verbose=0, cat_features=<categoricals>, "
    "allow_writing_files=False)`",
}

# ---------------------------------------------------------------------------- running


@dataclass
class Result:
    rmse: float | None = None
    seconds: float | None = None
    error: str | None = None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - for any peer that draws from the global generator
    torch.manual_seed(seed)


def rmse(y_true: np.ndarray, y_pred: Any) -> float:
    diff = np.asarray(y_pred, dtype=np.float64).reshape(-1) - np.asarray(y_true, np.float64)
    return float(np.sqrt(np.mean(diff**2)))


def fit_and_score(
    model: str,
    seed: int,
    X_train: pd.DataFrame,
    X_test: pd.DataFrame,
    y_train: np.ndarray,
    y_test: np.ndarray,
) -> Result:
    """Fit one model (timed) and score it on the test rows; an exception becomes the result."""
    seed_everything(seed)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            estimator = MODELS[model](seed, categorical_columns(X_train))
            X_train, X_test = X_train.copy(), X_test.copy()  # no model sees another's edits
            start = time.perf_counter()
            estimator.fit(X_train, y_train)
            seconds = time.perf_counter() - start
            score = rmse(y_test, estimator.predict(X_test))
    except Exception as exc:  # one failing model must not stop the benchmark
        message = " ".join(str(exc).split()) or type(exc).__name__
        return Result(error=f"{type(exc).__name__}: {message}")
    if not np.isfinite(score):
        return Result(seconds=seconds, error=f"non-finite test RMSE ({score})")
    return Result(rmse=score, seconds=seconds)


Results = dict[tuple[str, str, int], Result]  # (dataset, model, seed) -> result


def run(
    datasets: Sequence[str],
    models: Sequence[str],
    seeds: Sequence[int],
    max_rows: int | None = None,
) -> Results:
    results: Results = {}
    total = len(datasets) * len(models) * len(seeds)
    for dataset in datasets:
        for seed in seeds:
            X_train, X_test, y_train, y_test = load_dataset(dataset, seed, max_rows)
            for model in models:
                result = fit_and_score(model, seed, X_train, X_test, y_train, y_test)
                results[dataset, model, seed] = result
                outcome = (
                    f"RMSE {result.rmse:.4g} in {result.seconds:.2f} s"
                    if result.error is None
                    else f"error: {result.error}"
                )
                print(
                    f"[{len(results)}/{total}] {dataset} seed {seed} {LABELS[model]}: {outcome}",
                    flush=True,
                )
    return results


# ---------------------------------------------------------------------------- summary


def mean_rmse(results: Results, dataset: str, model: str, seeds: Sequence[int]) -> float | None:
    """The mean test RMSE over the seeds, or None when any seed failed or did not run."""
    runs = [results.get((dataset, model, s)) for s in seeds]
    if any(r is None or r.rmse is None for r in runs):
        return None
    return float(np.mean([r.rmse for r in runs if r is not None and r.rmse is not None]))


def total_seconds(
    results: Results, datasets: Sequence[str], model: str, seeds: Sequence[int]
) -> float | None:
    runs = [results.get((d, model, s)) for d in datasets for s in seeds]
    if any(r is None or r.seconds is None for r in runs):
        return None
    return float(sum(r.seconds for r in runs if r is not None and r.seconds is not None))


RIVALS = ("mlp", "mlp-scaled-y", "hgb", "lightgbm", "catboost", "realmlp-td", "tabm-d")
SLOW_RIVALS = ("realmlp-td", "tabm-d")  # nnreg's default trains in a third of their time


def acceptance(results: Results, datasets: Sequence[str], seeds: Sequence[int]) -> list[str]:
    """PASS/FAIL lines for nnreg recommended against every rival, from the mean RMSE over
    the seeds: (a) the lowest of all on at least half the tables, (b) within 5% of the best
    on every table, (c) at most a third of RealMLP-TD's and of TabM-D's training time."""
    models = {m for _, m, _ in results}
    missing = [m for m in ("nnreg", *RIVALS) if m not in models]
    if missing:
        return [f"- not evaluated: this run left out {', '.join(LABELS[m] for m in missing)}."]
    wins, ratios, ok_b = [], [], True
    for d in datasets:
        ours = mean_rmse(results, d, "nnreg", seeds)
        theirs = {m: mean_rmse(results, d, m, seeds) for m in RIVALS}
        known = {m: v for m, v in theirs.items() if v is not None}
        if ours is None or not known:
            ok_b = False
            ratios.append(f"{d} n/a")
            continue
        best_model = min(known, key=lambda m: known[m])
        if ours < known[best_model]:
            wins.append(d)
        ok_b &= ours <= 1.05 * known[best_model]
        ratios.append(f"{d} {ours / known[best_model]:.3f} ({LABELS[best_model]})")
    half = (len(datasets) + 1) // 2
    lines = [
        f"- (a) {'PASS' if len(wins) >= half else 'FAIL'}: the lowest mean RMSE of every model "
        f"on {len(wins)} of {len(datasets)} tables (needs {half}): {', '.join(wins) or 'none'}.",
        f"- (b) {'PASS' if ok_b else 'FAIL'}: within 5% of the best rival on every table (RMSE "
        f"ratio to the best rival, needs <= 1.05): {'; '.join(ratios)}.",
    ]
    ours_s = total_seconds(results, datasets, "nnreg", seeds)
    for rival in SLOW_RIVALS:
        theirs_s = total_seconds(results, datasets, rival, seeds)
        if ours_s is None or theirs_s is None:
            lines.append(f"- (c) FAIL: nnreg or {LABELS[rival]} failed on a table.")
            continue
        verdict = "PASS" if 3 * ours_s <= theirs_s else "FAIL"
        lines.append(
            f"- (c) {verdict}: total training time {ours_s:.1f} s vs {LABELS[rival]}'s "
            f"{theirs_s:.1f} s, {theirs_s / ours_s:.1f}x faster (needs >= 3x)."
        )
    return lines


# ---------------------------------------------------------------------------- report


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git_revision() -> str:
    """The commit the benchmark ran on, and whether src/ differed from it."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "src"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "unknown commit"
    if not head:
        return "unknown commit"
    return f"commit {head}" + (" with uncommitted changes in src/" if dirty else "")


def _cell_text(text: str) -> str:
    text = text.replace("|", "\\|")
    return text if len(text) <= CELL_ERROR_CHARS else text[: CELL_ERROR_CHARS - 1] + "…"


def _first_error(results: Results, dataset: str, model: str, seeds: Sequence[int]) -> str | None:
    for s in seeds:
        r = results.get((dataset, model, s))
        if r is not None and r.error is not None:
            return r.error
    return None


def _table_head(models: Sequence[str]) -> list[str]:
    return [
        "| dataset | " + " | ".join(LABELS[m] for m in models) + " |",
        "|---|" + "---:|" * len(models),
    ]


def rmse_table(
    results: Results, datasets: Sequence[str], models: Sequence[str], seeds: Sequence[int]
) -> str:
    lines = _table_head(models)
    for d in datasets:
        means = {m: mean_rmse(results, d, m, seeds) for m in models}
        known = [v for v in means.values() if v is not None]
        best = min(known) if known else None
        cells = []
        for m in models:
            error = _first_error(results, d, m, seeds)
            if error is not None:
                cells.append("error: " + _cell_text(error))
                continue
            first = results[d, m, seeds[0]].rmse
            text = f"{first:.4g}" if len(seeds) == 1 else f"{first:.4g} (mean {means[m]:.4g})"
            cells.append(f"**{text}**" if means[m] == best and len(known) > 1 else text)
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def seconds_table(
    results: Results, datasets: Sequence[str], models: Sequence[str], seeds: Sequence[int]
) -> str:
    lines = _table_head(models)
    for d in datasets:
        cells = []
        for m in models:
            runs = [results.get((d, m, s)) for s in seeds]
            secs = [r.seconds for r in runs if r is not None and r.seconds is not None]
            cells.append(f"{np.mean(secs):.2f}" if secs else "error")
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    totals = [total_seconds(results, datasets, m, seeds) for m in models]
    lines.append(
        "| **total, all fits** | "
        + " | ".join("n/a" if t is None else f"**{t:.2f}**" for t in totals)
        + " |"
    )
    return "\n".join(lines)


def dataset_table(datasets: Sequence[str], seeds: Sequence[int], max_rows: int | None) -> str:
    lines = [
        "| dataset | source | train / test rows | features (categorical) | target | target std |",
        "|---|---|---:|---|---|---:|",
    ]
    for d in datasets:
        X_train, X_test, y_train, y_test = load_dataset(d, seeds[0], max_rows)
        cats = categorical_columns(X_train)
        features = f"{X_train.shape[1]}" + (f" ({', '.join(cats)})" if cats else " (none)")
        std = float(np.std(np.concatenate([y_train, y_test])))
        lines.append(
            f"| {d} | {DATASETS[d].source} | {len(X_train):,} / {len(X_test):,} | {features} | "
            f"{DATASETS[d].target} | {std:.4g} |"
        )
    return "\n".join(lines)


def report(
    results: Results,
    datasets: Sequence[str],
    models: Sequence[str],
    seeds: Sequence[int],
    max_rows: int | None,
    command: str,
    wall_seconds: float,
    revision: str = "",
    loads: tuple[float, float] | None = None,
) -> str:
    versions = ", ".join(
        f"{name} {version}"
        for name, version in [
            ("Python", platform.python_version()),
            ("torch", torch.__version__),
            ("scikit-learn", _version("scikit-learn")),
            ("nnreg", nnreg.__version__),
            ("pytabkit", _version("pytabkit")),
            ("lightgbm", _version("lightgbm")),
            ("catboost", _version("catboost")),
            ("pandas", pd.__version__),
            ("plotnine (data)", _version("plotnine")),
        ]
    )
    seed_text = ", ".join(str(s) for s in seeds)
    cap = f" Every table is capped at {max_rows:,} rows (a fixed subsample)." if max_rows else ""
    mean_text = (
        f"the RMSE with split seed {seeds[0]}, then (mean ...) the mean over seeds {seed_text}"
        if len(seeds) > 1
        else f"the RMSE with split seed {seeds[0]}"
    )
    parts = [
        "# Test accuracy",
        "",
        f"Made by `{command}` on {platform.machine()}, {os.cpu_count()} cores, in "
        f"{wall_seconds / 60:.1f} min; nnreg at {revision or _git_revision()}; {versions}."
        + (
            f" Load average (1 min) {loads[0]:.2f} at the start, {loads[1]:.2f} at the end: "
            "other processes on the machine slow the timings."
            if loads
            else ""
        ),
        "",
        f"Each model is fit on the same training rows and scored on the same held-out rows: a "
        f"{TEST_SIZE:.0%} test split per split seed ({seed_text}), with the model seeded by the "
        f"same seed; the seed data instead has {SEED_TRAIN_ROWS} training rows and "
        f"{SEED_TEST_ROWS:,} test rows from the same distribution.{cap} Categorical columns are "
        "pandas `category` columns; each model gets them as described below.",
        "",
        "## Datasets",
        "",
        dataset_table(datasets, seeds, max_rows),
        "",
        "## Models",
        "",
        *[f"- {LABELS[m]}: {CONFIGS[m]}" for m in models],
        "",
        "## Test RMSE",
        "",
        f"Each cell: {mean_text}; lower is better, the best mean of each row in bold.",
        "",
        rmse_table(results, datasets, models, seeds),
        "",
        "## Training time (s)",
        "",
        "Mean seconds of one `fit` over the seeds; the last row adds up every fit (all datasets "
        "and seeds).",
        "",
        seconds_table(results, datasets, models, seeds),
        "",
        "## Acceptance criteria (nnreg recommended, mean RMSE over the seeds)",
        "",
        *acceptance(results, datasets, seeds),
    ]
    errors = [(key, r.error) for key, r in results.items() if r.error is not None]
    if errors:
        parts += ["", "## Errors", ""]
        parts += [f"- {d} seed {s}, {LABELS[m]}: {e}" for (d, m, s), e in errors]
    return "\n".join(parts) + "\n"


PICTURE_CEILING = 3.0  # ratios above it are drawn at it, so that the close ones stay apart


def picture(
    results: Results,
    datasets: Sequence[str],
    models: Sequence[str],
    seeds: Sequence[int],
    out: Path,
) -> Path | None:
    """Test RMSE relative to the best model of each table against the mean training time,
    one point per model and table (log time), written as a PNG; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    markers = "osD^v<>pXh*"
    for i, m in enumerate(models):
        xs, ys = [], []
        for d in datasets:
            best = min(v for n in models if (v := mean_rmse(results, d, n, seeds)) is not None)
            score = mean_rmse(results, d, m, seeds)
            times = [results[(d, m, s)].seconds for s in seeds]
            if score is None or None in times:
                continue
            xs.append(float(np.mean([t for t in times if t is not None])))
            ys.append(min(score / best, PICTURE_CEILING))  # a failed fit sits on the edge
        ax.scatter(xs, ys, label=LABELS[m], marker=markers[i % len(markers)], alpha=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(0.95, PICTURE_CEILING * 1.05)
    ax.set_xlabel("mean training time of one fit (s, log scale)")
    ax.set_ylabel(
        f"test RMSE / best model's on the table (log; {PICTURE_CEILING:g}x and over on top)"
    )
    ax.axhline(1.05, color="grey", linestyle=":", linewidth=1)
    ax.set_title(f"{len(datasets)} tables, mean over split seeds {', '.join(map(str, seeds))}")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


# ------------------------------------------------------------------------------- main


def _names(text: str, known: Sequence[str], what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise SystemExit(f"error: unknown {what} {unknown}; choose from {', '.join(known)}")
    return names


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--datasets",
        help=f"comma-separated, from {', '.join(DATASETS)}; 'extra' names "
        f"{', '.join(d.name for d in EXTRA)} (default: {', '.join(PANEL)})",
    )
    parser.add_argument("--models", help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--seeds", help="comma-separated split seeds (default 0,1,2)")
    parser.add_argument("--max-rows", type=int, help="cap every table at this many rows")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: seed 0, datasets {','.join(QUICK_DATASETS)}, "
        f"at most {QUICK_MAX_ROWS:,} rows (explicit options still win)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "accuracy.md")
    args = parser.parse_args(argv)

    default_datasets = QUICK_DATASETS if args.quick else PANEL
    chosen = (args.datasets or ",".join(default_datasets)).replace(
        "extra", ",".join(d.name for d in EXTRA)
    )
    datasets = _names(chosen, list(DATASETS), "dataset")
    models = _names(args.models or ",".join(MODELS), list(MODELS), "model")
    try:
        seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",")]
    except ValueError:
        raise SystemExit("error: --seeds takes comma-separated integers, e.g. 0,1,2") from None
    max_rows = args.max_rows
    if max_rows is None and args.quick:
        max_rows = QUICK_MAX_ROWS

    given = sys.argv[1:] if argv is None else list(argv)
    command = " ".join(["python benchmarks/accuracy.py", *given])
    print(f"{command}: {len(datasets)} datasets x {len(models)} models x {len(seeds)} seeds")
    revision = _git_revision()  # before the run: the code that is imported now is measured
    load_start = os.getloadavg()[0]
    start = time.perf_counter()
    results = run(datasets, models, seeds, max_rows)
    wall = time.perf_counter() - start
    loads = (load_start, os.getloadavg()[0])
    text = report(results, datasets, models, seeds, max_rows, command, wall, revision, loads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    figure = picture(results, datasets, models, seeds, args.out.with_suffix(".png"))
    print()
    print(text)
    if figure is not None:
        print(f"wrote {figure}")
    print(f"wrote {args.out} ({wall / 60:.1f} min)")


if __name__ == "__main__":
    main()
