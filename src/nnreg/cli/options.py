"""Options shared by the commands, and the parameter types behind them.

click parses syntax only (numbers, comma-separated lists, "20,20" into a tuple); the library
checks values, so a bad value reads the same from a flag as from a config file. An option
that sets an estimator parameter is declared with that parameter as its destination
(``--lr`` -> ``learning_rate_init``), so nothing renames it on the way to the library.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


class Names(click.ParamType):
    """One of the names in a library constant, e.g. ``nnreg.model.ACTIVATIONS``, listed in
    --help. The constant is imported only when needed (it lives beside PyTorch). With
    ``check=False`` any name passes, for the library to check."""

    name = "choice"

    def __init__(self, module: str, constant: str, *, check: bool = False) -> None:
        self.module, self.constant, self.check = module, constant, check

    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(getattr(importlib.import_module(self.module), self.constant))

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "[" + "|".join(self.choices) + "]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if self.check and value not in self.choices:
            listed = ", ".join(repr(c) for c in self.choices)
            self.fail(f"{value!r} is not one of {listed}.", param, ctx)
        return value


def comma_list(kind: type = str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A callback parsing ``a,b,c`` (or ``a, b, c``) into a list of ``kind`` (str, int or
    float); a repeated option's values are joined."""

    def parse(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is None or (param.multiple and not value):
            return None
        text = ",".join(value) if isinstance(value, (list, tuple)) else value
        try:
            return [kind(v.strip()) for v in text.split(",") if v.strip()]
        except ValueError:
            noun, like = ("integers", "0,1,2") if kind is int else ("numbers", "1e-3,3e-3")
            raise click.BadParameter(
                f"expected comma-separated {noun} like {like}, got {value!r}"
            ) from None

    return parse


def hidden_sizes(value: str) -> tuple[int, ...]:
    """``"20,20"`` -> ``(20, 20)``; ``""`` or ``"none"`` -> ``()`` (a linear model)."""
    if value.strip().lower() in ("", "none"):
        return ()
    try:
        return tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(
            f"expected comma-separated integers like 20,20, got {value!r}"
        ) from None


def _parse_hidden(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    if param.multiple:
        return [hidden_sizes(v) for v in value] or None
    return None if value is None else hidden_sizes(value)


def _parse_batch(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """A whole number of rows when it reads as one, else the word as given."""
    try:
        return None if value is None else int(value)
    except ValueError:
        return value


def _parse_epochs(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """A whole number (checked with the other settings), or 'auto'."""
    if value is None or value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a whole number or 'auto'.") from None


def compose(*decorators: Decorator) -> Decorator:
    """One decorator applying ``decorators``; their options appear in --help in this order."""

    def apply(f: Callable[..., Any]) -> Callable[..., Any]:
        for decorator in reversed(decorators):
            f = decorator(f)
        return f

    return apply


def flag_label(command: click.Command) -> Callable[[str], str]:
    """How the library's messages name a parameter for this command: its flag, then its
    name, where the two are spelt differently (``--lr/learning_rate_init``,
    ``--batch-size/batch_size``), else its name alone; the flag's user and the config file's
    author both find theirs, in the same message."""
    flags = {}
    for p in command.params:
        if isinstance(p, click.Option) and p.name and not p.is_flag:
            flag = max(p.opts, key=len)
            if flag != "--" + p.name:
                flags[p.name] = flag
    return lambda name: f"{flags[name]}/{name}" if name in flags else name


def json_flag(help: str) -> Decorator:
    return click.option("--json", "as_json", is_flag=True, help=help)


def columns(*, target_required: bool = False) -> Decorator:
    """--target, --features, --categorical and --impute: which columns a table holds."""
    return compose(
        click.option(
            "--target",
            "-t",
            required=target_required,
            callback=comma_list(),
            help="Target column (several: a,b).",
        ),
        click.option(
            "--features",
            callback=comma_list(),
            help="Feature columns, comma-separated (default: all but the target).",
        ),
        click.option(
            "--categorical",
            callback=comma_list(),
            help="Columns to treat as categorical even if they hold numbers, comma-separated.",
        ),
        click.option(
            "--drop",
            callback=comma_list(),
            help="Columns to leave out, comma-separated.",
        ),
        click.option(
            "--impute",
            "missing",
            flag_value="impute",
            default=None,
            help="Fill missing values (median + indicator; a category for text) instead of "
            "failing.",
        ),
        dialect(),
    )


DATA_OPTIONS = ("target", "features", "categorical", "drop", "sep", "na_values", "test", "holdout")


def data_settings(data: Path | None, given: dict[str, Any]) -> dict[str, Any]:
    """The [data] settings a command's options give (removed from ``given``, which keeps
    the estimator's parameters): DATA's path and the column and dialect options."""
    return {"path": data} | {k: given.pop(k) for k in DATA_OPTIONS if k in given}


def _delimiter(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``tab`` and ``\\t`` as a tab, so that no shell quoting is needed for one."""
    return "\t" if value in ("tab", "\\t") else value


def dialect() -> Decorator:
    """--sep and --na-values: how a text file is read."""
    return compose(
        click.option(
            "--sep",
            callback=_delimiter,
            help="Field delimiter of a text file, e.g. ';' or tab (default: sniffed from its "
            "first lines).",
        ),
        click.option(
            "--na-values",
            callback=comma_list(),
            help="The texts that mean missing, comma-separated, e.g. NA,? (default: pandas' "
            "usual ones, such as NA, null and None; an empty field is always missing).",
        ),
    )


def outputs(folder: str, as_json: str) -> Decorator:
    """--out, --quiet and --json: where the model folder goes and what is printed."""
    return compose(
        click.option("--out", "-o", type=click.Path(path_type=Path), help=folder),
        click.option("--quiet", "-q", is_flag=True, help="Print only the model folder's path."),
        json_flag(as_json),
    )


def model_and_data(*, data_required: bool = True) -> Decorator:
    """The MODEL_DIR and DATA arguments of the commands that use a trained model."""
    return compose(
        click.argument("model_dir", type=click.Path(path_type=Path)),
        click.argument("data", required=data_required, type=click.Path(path_type=Path)),
    )


def with_presets(text: str, param: str) -> str:
    """``text`` with the presets' values of ``param``, as --help shows them."""
    from ..presets import PRESETS

    def shown(v: object) -> str:
        if isinstance(v, tuple):
            return ",".join(map(str, v)) or "none"
        return str(v).lower() if isinstance(v, bool) else str(v)

    values = [f"{name} {shown(p[param])}" for name, p in PRESETS.items() if param in p]
    return f"{text} [{'; '.join(values)}]" if values else text


epochs = click.option(
    "--epochs",
    "max_iter",
    callback=_parse_epochs,
    help=with_presets(
        "Number of epochs (at least 1), or 'auto': 32, 64, 128 or 256, chosen by 3-fold "
        "cross-validation on a table of 100 to 1,000 rows (else 128); twice these counts "
        "for --ensemble tabm or tabm-mini.",
        "max_iter",
    ),
)
batch_size = click.option(
    "--batch-size",
    callback=_parse_batch,
    help=with_presets(
        "Rows per step (a positive integer), 'auto' (the epoch in equal batches of at most "
        "256 rows) or 'full'.",
        "batch_size",
    ),
)


def _choice(flag: str, param: str, module: str, constant: str, help: str) -> Decorator:
    return click.option(flag, param, type=Names(module, constant), help=with_presets(help, param))


def _number(flag: str, param: str, kind: type, help: str) -> Decorator:
    return click.option(flag, param, type=kind, help=with_presets(help, param))


def preset(**attrs: Any) -> Decorator:
    return click.option("--preset", type=Names("nnreg.presets", "PRESETS", check=True), **attrs)


def hidden(param: str, help: str, *, multiple: bool = False) -> Decorator:
    return click.option("--hidden", param, multiple=multiple, callback=_parse_hidden, help=help)


def estimator_parameters() -> Decorator:
    """The options that set Regressor parameters, each named after its parameter."""
    return compose(_network_options(), _fit_options(), _member_options())


def _member_options() -> Decorator:
    """How ensemble members are built, and numeric embeddings."""
    return compose(
        _choice(
            "--ensemble",
            "ensemble",
            "nnreg.names",
            "ENSEMBLES",
            "How --n-models members are built: independent networks, or TabM's members that "
            "share each layer's weights (tabm; tabm-mini: an input scaling only) [independent].",
        ),
        _choice(
            "--embedding",
            "embedding",
            "nnreg.names",
            "EMBEDDINGS",
            "Numeric embeddings: each numeric column enters the network as --d-embedding "
            "learned numbers, piecewise-linear over --n-bins quantile bins or periodic; auto: "
            "piecewise-linear where the fit embeds (in memory; not --stream) [auto].",
        ),
        _number("--d-embedding", "d_embedding", int, "Numbers per embedded column [16]."),
        _number(
            "--n-bins",
            "n_bins",
            int,
            "Bins (piecewise; fewer on small tables) or frequencies (periodic) per numeric "
            "column [48].",
        ),
    )


def _network_options() -> Decorator:
    """The network and how it trains."""
    return compose(
        epochs,
        _number("--lr", "learning_rate_init", float, "Learning rate (> 0)."),
        hidden(
            "hidden_layer_sizes",
            with_presets("Hidden layer sizes, e.g. 20,20.", "hidden_layer_sizes"),
        ),
        batch_size,
        _choice("--optimizer", "optimizer", "nnreg.names", "OPTIMIZERS", "Optimiser."),
        _choice(
            "--activation", "activation", "nnreg.names", "ACTIVATIONS", "Hidden layers' activation."
        ),
        _choice(
            "--loss",
            "loss",
            "nnreg.names",
            "LOSSES",
            "Training loss (huber: squared for errors below 1, absolute beyond).",
        ),
        _number("--momentum", "momentum", float, "SGD momentum, in [0, 1)."),
        _number("--weight-decay", "weight_decay", float, "Weight decay (>= 0)."),
        _number("--dropout", "dropout", float, "Dropout rate, in [0, 1)."),
        _choice(
            "--schedule", "learning_rate", "nnreg.names", "SCHEDULES", "Learning-rate schedule."
        ),
    )


def _fit_options() -> Decorator:
    """Stopping, scaling, ensembles, the seed and the device."""
    option = click.option
    return compose(
        option(
            "--early-stopping/--no-early-stopping",
            default=None,
            help=with_presets(
                "Hold out --validation-fraction of the rows; stop when their loss stalls.",
                "early_stopping",
            ),
        ),
        option(
            "--validation-fraction", type=float, help="Share of rows held out, in (0, 1) [0.1]."
        ),
        option("--patience", "n_iter_no_change", type=int, help="Epochs without improvement [10]."),
        _choice(
            "--scaling",
            "scaling",
            "nnreg.names",
            "SCALINGS",
            "How numeric columns are scaled (robust: median and quartiles, then a smooth clip; "
            "quantile: through the training quantiles to a standard normal).",
        ),
        option(
            "--clip-predictions/--no-clip-predictions",
            default=None,
            help="Clip predictions to the training target's range [no].",
        ),
        option(
            "--n-models",
            type=int,
            help="Train an ensemble of N members at once (mean prediction, calibrated "
            "intervals) [1].",
        ),
        option(
            "--seed",
            "random_state",
            type=int,
            help="Random seed of the weights and batches (and the seed data), in [0, 2**32). "
            "Default 0.",
        ),
        option(
            "--device", help="Where to train: auto (CUDA if available), cpu, cuda, cuda:N [cpu]."
        ),
    )
