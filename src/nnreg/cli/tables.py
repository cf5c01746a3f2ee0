"""Reading the rows a command works on: a file, the seed experiment's data, or a file laid
out as a model folder's features."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from ..data import Table
    from ..estimator import Regressor


def training_table(data: dict[str, Any]) -> tuple[Table, str]:
    """The table a run's [data] settings name, and where its rows came from."""
    from ..data import read_table, seed_dataset
    from ..settings import SEED_SOURCE

    if data.get("source") == SEED_SOURCE:
        n, seed = data["n"], data["random_state"]
        source = f"seed experiment: seed_dataset(n={n}, random_state={seed})"
        frame = seed_dataset(n=n, random_state=seed)
    else:
        source = str(Path(data["path"]))
        frame = read_table(source)
        if "target" not in data:
            raise click.UsageError("DATA needs --target COLUMN (the column to predict).")
    found = table(frame, data["target"], data.get("features"), source, data.get("categorical"))
    return found, source


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
    from ..data import read_table, table_from_frame
    from ..estimator import load

    reg = load(model_dir, history=history)
    frame = read_table(data)
    return reg, table_from_frame(
        frame,
        target=reg.model_info_["targets"] if with_target else None,
        features=feature_names(reg),
        source=str(data),
    )


def feature_names(reg: Regressor) -> list[str]:
    """The feature columns a loaded model reads, in its order."""
    return [f["name"] for f in reg.model_info_["features"]]
