"""Reading the rows a command works on: a file, the seed experiment's data, or a file laid
out as a model folder's features."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from ..columns import Role
    from ..data import Table
    from ..estimator import Regressor


def training_table(data: dict[str, Any], max_categories: int = 32) -> tuple[Table, str, list[Role]]:
    """The table a run's [data] settings name, where its rows came from, and each column's
    role (see :mod:`nnreg.columns`: ids left out, dates read as dates)."""
    from ..columns import Role, read_roles
    from ..data import seed_dataset
    from ..settings import SEED_SOURCE

    if data.get("source") == SEED_SOURCE:
        n, seed = data["n"], data["random_state"]
        source = f"seed experiment: seed_dataset(n={n}, random_state={seed})"
        frame = seed_dataset(n=n, random_state=seed)
        found = table(frame, data["target"], data.get("features"), source)
        roles = [Role(c, "numeric") for c in found.feature_names] + [Role("y", "target")]
        return found, source, roles
    source = str(Path(data["path"]))
    frame = read_file(Path(source), data)
    if "target" not in data:
        raise click.UsageError("DATA needs --target COLUMN (the column to predict).")
    categorical = data.get("categorical") or []
    feats, roles = read_roles(
        frame,
        data["target"],
        data.get("features"),
        categorical,
        data.get("drop") or [],
        max_categories,
        source,
    )
    return table(frame, data["target"], feats, source, categorical), source, roles


def read_file(path: Path, data: dict[str, Any]) -> Any:
    """``path`` read with the run's dialect (its ``sep`` and ``na_values``)."""
    from ..data import read_table

    return read_table(path, sep=data.get("sep"), na_values=data.get("na_values"))


def table(frame: Any, target: Any, features: Any, source: str, categorical: Any = None) -> Table:
    """``frame`` as a validated table, the ``categorical`` columns made categorical."""
    from ..data import table_from_frame
    from ..exceptions import DataError

    for name in categorical or []:
        if name not in frame.columns:
            raise DataError(f"--categorical column {name!r} not found in {source}.")
        frame = frame.assign(**{name: frame[name].astype(str).astype("category")})
    return table_from_frame(frame, target=target, features=features, source=source)


def target_values(table: Table) -> Any:
    """The target as a 1-D array for one column, else 2-D (rows, targets)."""
    assert table.y is not None  # tables built with a target always have y
    return table.y[:, 0] if table.y.shape[1] == 1 else table.y


def model_and_table(
    model_dir: Path, data: Path, with_target: bool, history: bool = False
) -> tuple[Regressor, Table]:
    """The model in ``model_dir`` (its training history only if asked for: predicting does
    not read it), and ``data``'s columns that it was trained on."""
    from ..data import table_from_frame
    from ..estimator import load

    reg = load(model_dir, history=history)
    frame = read_data(model_dir, data)
    return reg, table_from_frame(
        frame,
        target=reg.model_info_["targets"] if with_target else None,
        features=feature_names(reg),
        source=str(data),
    )


def read_data(model_dir: Path, data: Path) -> Any:
    """``data`` read the way the model's training data was: with the delimiter and the
    missing-value texts its config.toml records (a delimiter not given is sniffed)."""
    return read_file(data, model_dialect(model_dir))


def model_dialect(model_dir: Path) -> dict[str, Any]:
    """``sep`` and ``na_values`` of a model folder's config.toml ``[data]`` table (read like
    every file of the folder: no link followed, bounded), or none."""
    import sys

    from ..exceptions import ModelFileError
    from ..reading import MAX_TEXT_BYTES
    from ..reading import read_file as read_bytes

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    path = model_dir / "config.toml"
    if not path.exists() and not path.is_symlink():
        return {}
    try:
        table = tomllib.loads(read_bytes(path, MAX_TEXT_BYTES).decode("utf-8")).get("data", {})
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ModelFileError(f"{path} is not valid TOML ({exc}); the folder is corrupt.") from exc
    found = {k: table[k] for k in ("sep", "na_values") if k in table}
    ok = isinstance(found.get("sep", ""), str) and all(
        isinstance(v, str) for v in found.get("na_values", [])
    )
    if not ok or not isinstance(found.get("na_values", []), list):
        raise ModelFileError(f"{path}: its sep or na_values are not what nnreg writes.")
    return found


def feature_names(reg: Regressor) -> list[str]:
    """The feature columns a loaded model reads, in its order."""
    return [f["name"] for f in reg.model_info_["features"]]


DEFAULT_HOLDOUT = 0.2  # share of a file's rows `nnreg train` keeps out to score the model
MIN_HOLDOUT_ROWS = 10  # a smaller table is too small to split: trained on whole


def holdout_share(run: dict[str, Any], reg: Regressor, n_rows: int) -> float:
    """The share of the rows to keep out of training and score: as given, else 0 when the
    fit sets rows aside itself (an ensemble, early stopping) or a --test file scores it,
    else DEFAULT_HOLDOUT (0 for a table of fewer than MIN_HOLDOUT_ROWS rows)."""
    if run.get("holdout") is not None:
        return float(run["holdout"])
    own = int(reg.n_models) > 1 or bool(reg.early_stopping)
    if own or "test" in run or n_rows < MIN_HOLDOUT_ROWS:
        return 0.0
    return DEFAULT_HOLDOUT


def split_table(whole: Table, share: float, seed: Any) -> tuple[Table, Table | None]:
    """(the rows to train on, the held-out rows or None): ``share`` of the rows, drawn with
    the run's seed (as :func:`nnreg.recipe.split_rows` draws a validation split)."""
    from dataclasses import replace

    from ..recipe import split_rows

    n = len(whole.features)
    if share <= 0 or n < 2:
        return whole, None
    held, train = split_rows(n, share, int(seed or 0), min_rows=1, min_train=1)
    y = whole.y
    assert y is not None

    def rows(idx: Any) -> Table:
        return replace(whole, features=whole.features.iloc[idx], y=y[idx])

    return rows(train), rows(held)


def test_table(path: Path, run: dict[str, Any], like: Table) -> Table:
    """The --test file's rows, with the training table's columns (read the same way)."""
    frame = read_file(path, run)
    categorical = [c for c in run.get("categorical") or [] if c in frame.columns]
    return table(frame, like.target_names, like.feature_names, str(path), categorical)


def score(reg: Regressor, table: Table) -> dict[str, float]:
    """Metrics of ``reg`` on ``table``, in the target's units, with the number of rows."""
    from ..metrics import regression_metrics

    metrics = regression_metrics(target_values(table), reg.predict(table.features))
    return {"rows": float(len(table.features)), **metrics}
