"""Run settings: a preset, a config file, a resumed checkpoint and explicit overrides, merged
into one validated set of estimator parameters and the run's data settings.

The layers, weakest first::

    preset  <  config file  <  resume checkpoint  <  overrides (e.g. command-line flags)

A config file is TOML with a ``[data]`` table (see :data:`DATA_KEYS`) and a ``[model]`` table
of :class:`~nnreg.estimator.Regressor` parameters; the ``config.toml`` of a model folder is
one, so loading it repeats that run. Without a preset, parameters start from the ``seed``
preset for the seed experiment (no data path) and from ``recommended`` otherwise, unless the
file's ``[model]`` table is there to say everything. A resumed run takes the settings and the
preset its checkpoint recorded (:meth:`RunSettings.checkpoint_info` writes them) in place of
the file and the preset. The parameters are checked once, by
:func:`nnreg.recipe.check_params`, whichever layer they came from.

>>> settings = load_settings(params={"max_iter": 5})
>>> settings.preset, settings.params["max_iter"], settings.data["source"]
('seed', 5, 'seed_dataset')
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .artifact import CHECKPOINT, load_checkpoint
from .exceptions import ConfigError
from .recipe import PRESETS, Label, check_params, jsonable

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["DATA_KEYS", "SEED_SOURCE", "RunSettings", "load_settings", "read_config"]

SEED_SOURCE = "seed_dataset"  # [data] source of the seed experiment's rows
# The [data] table: a file (path) or the seed data (source, n, random_state), the columns,
# and streaming.
DATA_KEYS = frozenset(
    {"path", "source", "n", "random_state", "target", "features", "categorical", "drop"}
    | {"sep", "na_values", "holdout", "test", "stream", "shuffle_buffer"}
)
COLUMN_KEYS = ("target", "features", "categorical", "drop", "na_values")  # lists of names
SEED_FEATURES = ("x1", "x2")
# [data] settings that are whole numbers: name, least value, what is allowed.
RUN_RULES = (
    ("shuffle_buffer", 0, "an integer >= 0 (rows)"),
    ("n", 1, "a positive integer (rows)"),
    ("random_state", 0, "an integer >= 0 (the seed of the seed data)"),
)


@dataclass(frozen=True)
class RunSettings:
    """One training run's settings, merged and validated.

    ``params`` are the estimator's parameters; ``data`` is the ``[data]`` table (for the seed
    experiment: ``source``, ``n``, ``random_state``, ``target`` and ``features``); ``preset``
    is the preset the parameters started from (None: the config file's ``[model]`` table
    alone); ``checkpoint_every`` is 0 without checkpoints; ``resume`` is the checkpoint the
    run continues from, if any; ``stream`` says whether the data is read in chunks.
    """

    params: dict[str, Any]
    data: dict[str, Any]
    preset: str | None
    checkpoint_every: int = 0
    resume: Path | None = None
    stream: bool = False

    @property
    def seed_experiment(self) -> bool:
        """True when the rows are the seed experiment's, drawn rather than read."""
        return self.data.get("source") == SEED_SOURCE

    def checkpoint_info(self) -> dict[str, Any]:
        """What a checkpoint records so that ``load_settings(resume=...)`` continues the run."""
        return {
            "settings": {"data": self.data, "model": jsonable(self.params)},
            "preset": self.preset,
            "checkpoint_every": self.checkpoint_every,
        }


def load_settings(
    *,
    preset: str | None = None,
    config: str | Path | None = None,
    resume: str | Path | None = None,
    params: Mapping[str, Any] | None = None,
    data: Mapping[str, Any] | None = None,
    checkpoint_every: int | None = None,
    label: Label | None = None,
) -> RunSettings:
    """Merge the layers into one :class:`RunSettings`; raise :class:`ConfigError` naming
    every invalid parameter (``label(name)`` names one, as in ``check_params``).

    ``preset`` is a name in :data:`nnreg.recipe.PRESETS`; ``config`` a TOML file (see
    :func:`read_config`); ``resume`` a run folder holding a checkpoint. ``params`` are
    estimator parameters and ``data`` ``[data]`` settings that override the rest (None values
    are not given); a ``data`` path starts a new ``[data]`` table, and ``stream=True`` streams.
    """
    layers = read_config(config) if config is not None else {}
    every, checkpoint = checkpoint_every, None
    if resume is not None:
        checkpoint = Path(resume) / CHECKPOINT
        saved = load_checkpoint(checkpoint)[1]
        layers, preset = saved["settings"], saved["preset"]
        every = int(saved["checkpoint_every"]) if every is None else every
    overrides = {k: v for k, v in (params or {}).items() if v is not None}
    run = _merged_data(layers.get("data", {}), data or {}, overrides.get("random_state"))
    _check_run(run, every, label or (lambda name: name))
    stream = bool((data or {}).get("stream")) or run.get("stream") is True
    preset, merged = _merged_params(preset, layers, overrides, seed_experiment="path" not in run)
    check_params(merged, label)
    if stream:
        from .stream import SHUFFLE_BUFFER

        run.update(stream=True, shuffle_buffer=run.get("shuffle_buffer", SHUFFLE_BUFFER))
    elif "path" not in run:
        run = _seed_data(run, merged.get("random_state"))
    return RunSettings(merged, run, preset, every or 0, checkpoint, stream)


MAX_CONFIG_BYTES = 1 << 20  # a settings file is a few hundred bytes


def read_config(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read a settings file: its ``[data]`` and ``[model]`` tables (column lists may be given
    as ``"a,b"``). A missing file, invalid TOML, or an unknown table or key is a
    :class:`ConfigError`."""
    from .estimator import Regressor

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}; check the path.")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path} is larger than a settings file can be; check the path.")
    try:
        settings = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}.") from exc
    except RecursionError as exc:
        raise ConfigError(f"{path} nests too deeply to be a settings file.") from exc
    allowed = {"data": DATA_KEYS, "model": frozenset(Regressor().get_params())}
    for table, values in settings.items():
        if table not in allowed or not isinstance(values, dict):
            raise ConfigError(f"{path}: unknown table [{table}]; use [data] and [model].")
        unknown = sorted(set(values) - allowed[table])
        if unknown:
            raise ConfigError(
                f"{path}: unknown setting {unknown[0]!r} in [{table}]; allowed: "
                f"{', '.join(sorted(allowed[table]))}."
            )
    data = settings.get("data", {})
    for key in COLUMN_KEYS:
        if isinstance(data.get(key), str):
            data[key] = data[key].split(",")
    return settings


def _merged_data(
    table: Mapping[str, Any], overrides: Mapping[str, Any], seed: Any
) -> dict[str, Any]:
    """The [data] table with the overrides: a path replaces the table, columns replace its
    columns, and a seed given for a seed-experiment run also draws its rows."""
    run = dict(table)
    if overrides.get("path") is not None:
        run = {"path": str(overrides["path"])}
    for key in (*COLUMN_KEYS, "shuffle_buffer", "sep", "holdout", "test"):
        value = overrides.get(key)
        if value is not None:
            run[key] = list(value) if isinstance(value, (list, tuple)) else value
            run[key] = str(value) if isinstance(value, Path) else run[key]
    if seed is not None and run.get("source") == SEED_SOURCE:
        run["random_state"] = seed
    return run


def _merged_params(
    preset: str | None,
    layers: Mapping[str, Any],
    overrides: Mapping[str, Any],
    seed_experiment: bool,
) -> tuple[str | None, dict[str, Any]]:
    """The preset (None when a [model] table alone gives the parameters) and the estimator's
    parameters: the preset's, then the [model] table's, then the overrides."""
    if preset is None and "model" in layers:
        merged = {**layers["model"], **overrides}
    else:
        preset = preset or ("seed" if seed_experiment else "recommended")
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}.")
        merged = {**PRESETS[preset], "random_state": 0, **layers.get("model", {}), **overrides}
    if isinstance(merged.get("hidden_layer_sizes"), list):
        merged["hidden_layer_sizes"] = tuple(merged["hidden_layer_sizes"])
    return preset, merged


def _seed_data(run: Mapping[str, Any], seed: Any) -> dict[str, Any]:
    """The [data] table of the seed experiment: its rows' number and seed (by default the
    estimator's), and its columns."""
    n = int(run.get("n", 100))
    data_seed = int(run.get("random_state", seed if isinstance(seed, int) else 0))
    return {
        "source": SEED_SOURCE,
        "n": n,
        "random_state": data_seed,
        "target": ["y"],
        "features": list(run.get("features", SEED_FEATURES)),
    }


def _check_run(run: Mapping[str, Any], every: Any, label: Label) -> None:
    """The run's own settings, checked like the estimator's parameters."""
    rules = [("checkpoint_every", every, 1, "a positive integer (epochs)")]
    rules += [(k, run[k], least, what) for k, least, what in RUN_RULES if k in run]
    problems = [
        f"{label(name)} must be {what}, got {value!r}"
        for name, value, least, what in rules
        if value is not None and not _whole(value, least)
    ]
    kinds: list[tuple[str, type, str]] = [
        ("path", str, "a file path"),
        ("source", str, "'seed_dataset'"),
        ("stream", bool, "true or false"),
        ("sep", str, "one character"),
        ("test", str, "a file path"),
    ]
    problems += [
        f"{label(key)} must be {what}, got {run[key]!r}"
        for key, kind, what in kinds
        if key in run and not isinstance(run[key], kind)
    ]
    problems += [
        f"{label(key)} must be a list of column names, got {run[key]!r}"
        for key in COLUMN_KEYS
        if key in run
        and not (isinstance(run[key], list) and all(isinstance(v, str) for v in run[key]))
    ]
    if isinstance(run.get("sep"), str) and len(run["sep"]) != 1:
        problems.append(f"{label('sep')} must be one character, got {run['sep']!r}")
    holdout = run.get("holdout")
    if holdout is not None and not (
        isinstance(holdout, (int, float)) and not isinstance(holdout, bool) and 0 <= holdout < 1
    ):
        problems.append(f"{label('holdout')} must be a share of rows in [0, 1), got {holdout!r}")
    if problems:
        raise ConfigError("invalid run settings: " + "; ".join(problems) + ".")


def _whole(value: Any, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least
