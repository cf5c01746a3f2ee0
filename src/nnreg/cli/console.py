"""What the commands print: headers, progress (a bar on a terminal, lines otherwise), results,
tables, and the JSON summaries. Text from data and files is printed, never read as markup."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._version import __version__

if TYPE_CHECKING:
    import pandas as pd

    from ..data import Table
    from ..estimator import Regressor
    from ..recipe import Recipe
    from ..sweep import Trial

SWEEP_ROWS_SHOWN = 20
EpochFn = Callable[[int, float, "float | None"], None]


class Report:
    """What `nnreg train` and `nnreg sweep` print: a header, progress, and the result (or
    JSON on stdout, with progress on stderr; or, quiet, only the model folder)."""

    def __init__(self, quiet: bool, as_json: bool) -> None:
        from rich.console import Console

        self.quiet, self.as_json = quiet, as_json
        self.out = Console(highlight=False, soft_wrap=True)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)
        self.progress_console = self.err if as_json else self.out
        self.show = not (quiet or as_json)

    def _data(self, command: str, source: str, rows: int, features: Any, targets: Any) -> None:
        self.out.print(f"[bold]nnreg {__version__}[/bold] · {command}")
        self.out.print(
            f"data    {source}: {rows} rows, features {', '.join(features)} -> "
            f"target {', '.join(targets)}",
            markup=False,
        )

    def header(
        self, source: str, rows: int, features: Any, targets: Any, preset: str, reg: Regressor
    ) -> None:
        """The data and the settings of a training run."""
        self.targets = list(targets)
        if not self.show:
            return
        batch = {"full": "full batch", "auto": "batch auto"}.get(
            str(reg.batch_size), f"batch {reg.batch_size}"
        )
        self._data("train", source, rows, features, targets)
        self.out.print(
            f"preset  {preset}: {reg.optimizer}, lr {reg.learning_rate_init:g}, "
            f"{batch}, {_epochs_text(reg)}, {reg.loss} loss, seed {reg.random_state}",
            markup=False,
        )
        self.out.print(f"loss    {loss_units(reg)}", markup=False)

    def columns(self, roles: Any, train_rows: int, held: Any) -> None:
        """How the table's columns are read, and which rows train and which are held out (a
        file's table: the summary then scores them all)."""
        self.train_rows, self.held_by_cli = train_rows, held is not None
        if not self.show:
            return
        self.out.print(roles_table(roles))
        if any(r.role == "id" for r in roles):
            self.out.print("(a column left out as an id is used when --features names it)")
        if held is not None:
            n = len(held.features)
            self.out.print(
                f"rows    {train_rows} to train on, {n} held out to score the model "
                "(--holdout 0 trains on every row)",
                markup=False,
            )

    def ranks(self, world_size: int, sweep: bool = False) -> None:
        if not self.show:
            return
        if sweep:
            self.out.print(
                f"ranks   {world_size} processes: each trains 1/{world_size} of the "
                "configurations on every training row"
            )
        else:
            self.out.print(
                f"ranks   {world_size} processes, data-parallel: each trains on "
                f"1/{world_size} of the training rows"
            )

    def network(self, config: Any) -> None:
        """fit's ``on_start``: told the network's architecture once the fit has built it (its
        input width depends on the fitted encoding of categorical columns)."""
        self.config = config

    def layers(self, reg: Regressor) -> None:
        """The layer table of the network the fit built, printed before the first epoch."""
        from ..model import summary

        if self.show and getattr(self, "config", None) is not None:
            self.out.print(layer_table(summary(self.config)))

    def progress(self, reg: Regressor, log_every: int | None) -> Any:
        """A context manager yielding fit's epoch callback (None when nothing is shown)."""
        epochs, console = _known_epochs(reg), self.progress_console
        if self.quiet or (self.as_json and not console.is_terminal):
            return contextlib.nullcontext(None)
        if console.is_terminal and log_every is None:
            return _bar(console, epochs, lambda: self.layers(reg))
        from ..recipe import epochs_of  # 'auto': about ten lines of its usual length

        usual = epochs_of("auto", _recipe(reg).shared_ensemble is not None)
        return self._lines(reg, log_every or max(1, (epochs or usual) // 10))

    @contextlib.contextmanager
    def _lines(self, reg: Regressor, every: int) -> Iterator[EpochFn]:
        epochs = _known_epochs(reg)  # None: chosen during the fit (max_iter='auto')
        width, total = len(str(epochs or 100)), "" if epochs is None else f"/{epochs}"
        tag = "  (standardised)" if reg.scale_target else ""

        latest = _LatestValidation()

        def on_epoch(epoch: int, loss: float, val: float | None) -> None:
            if epoch == 0:
                self.layers(reg)
            extra = latest(epoch, val)
            if epoch % every == 0 or epoch == (epochs or 0) - 1:
                self.progress_console.print(
                    f"epoch {epoch:>{width}}{total}  loss {loss:.6g}{extra}{tag}"
                )

        yield on_epoch

    def result(
        self,
        out: Path,
        reg: Regressor,
        metrics: dict[str, float],
        first: tuple[float, float],
        seconds: float,
        tests: dict[str, dict[str, float]] | None = None,
    ) -> None:
        """The trained model's metrics (on the training rows, the held-out rows and each
        --test file) and folder."""
        tests = tests or {}
        if self.as_json:
            summary = {
                "model_dir": str(out),
                "n_parameters": reg.n_parameters(),
                "epochs": reg.n_iter_,
                "final_train_loss": reg.loss_curve_[-1],
                "train_metrics": metrics,
                "validation_metrics": getattr(reg, "validation_metrics_", None),
                "test_metrics": next(iter(tests.values()), None),
                "best_epoch": reg.best_epoch_,
                "device": trained_on(reg),
                "first_observation": {"predicted": first[0], "actual": first[1]},
                "seconds": round(seconds, 4),
            }
            print(to_json(summary))
        elif self.quiet:
            print(out)
        elif getattr(self, "train_rows", None) is not None:
            self._scores(out, reg, metrics, seconds, tests)
        else:  # the seed experiment's own summary
            self.out.print(
                f"final training MSE: {metrics['mse']:.6g} (RMSE {metrics['rmse']:.4g}, "
                f"R² {metrics['r2']:.4f}) after {reg.n_iter_} epochs in {seconds:.2f} s"
            )
            held = getattr(reg, "validation_metrics_", None)
            if held is not None:
                self.out.print(
                    f"held-out MSE: {held['mse']:.6g} (RMSE {held['rmse']:.4g}, R² "
                    f"{held['r2']:.4f}) on the {int(held['rows'])} rows the fit set aside"
                )
            self.out.print(f"first observation: predicted {first[0]:.6g}, actual {first[1]:.6g}")
            self.out.print(f"model folder: {out}", markup=False)

    def _scores(
        self,
        out: Path,
        reg: Regressor,
        metrics: dict[str, float],
        seconds: float,
        tests: dict[str, dict[str, float]],
    ) -> None:
        last = reg.n_iter_ - 1
        which = "the last" if reg.best_epoch_ == last else "the best on the validation rows"
        self.out.print(
            f"trained {reg.n_iter_} epochs in {seconds:.2f} s on {trained_on(reg)}; the weights "
            f"are epoch {reg.best_epoch_}'s ({which})",
            markup=False,
        )
        cv = getattr(reg, "epochs_cv_", None)
        if cv is not None:
            losses = ", ".join(
                f"{e}: {'diverged' if x is None else f'{x:.4g}'}"
                for e, x in zip(cv["candidates"], cv["held_out_loss"], strict=True)
            )
            self.out.print(
                f"epochs  {cv['epochs']}, chosen by {cv['folds']}-fold cross-validation "
                f"(held-out loss {losses})",
                markup=False,
            )
        held = getattr(reg, "validation_metrics_", None)
        # The fit's own held-out rows (early stopping, calibration) are among DATA's rows;
        # shared members whose epochs were cross-validated score every row out of fold.
        every = held is not None and int(held["rows"]) == self.train_rows
        own = held is not None and not self.held_by_cli and not every
        rows = {
            "all rows of DATA" if own else "training rows": metrics
            | {"rows": float(self.train_rows)}
        }
        if held is not None:
            rows["every row, out of fold" if every else "held-out rows"] = held
        rows |= tests
        self.out.print(scores_table(rows, ", ".join(self.targets)))
        if held is None and not tests:
            small = " (a table under 10 rows is not split)" if self.train_rows < 10 else ""
            self.out.print(
                f"(training rows only{small}: they flatter the model; --test FILE or "
                "--holdout SHARE scores rows it did not train on)",
                markup=False,
            )
        self.out.print(f"model folder: {out}", markup=False)

    def sweep_header(self, source: str, table: Table, trials: list[Trial], settings: str) -> None:
        """The data and the grid of a sweep."""
        if not self.show:
            return
        rows, features, targets = len(table.features), table.feature_names, table.target_names
        self.targets = list(targets)
        self._data("sweep", source, rows, features, targets)
        n_arch = len({t.hidden for t in trials})
        batches = f"{n_arch} batch{'es' if n_arch > 1 else ''} (one per architecture)"
        self.out.print(f"grid    {len(trials)} configurations in {batches}, {settings}")

    def sweep_progress(self) -> Any:
        """A context manager yielding the sweep's progress callback (None off a terminal)."""
        if self.show and self.progress_console.is_terminal:
            return _sweep_bar(self.progress_console)
        return contextlib.nullcontext(None)

    def sweep_result(
        self,
        out: Path,
        ranking: pd.DataFrame,
        top: int,
        tests: dict[str, dict[str, float]] | None = None,
    ) -> None:
        """The ranking, the chosen model's scores on each --test file, and where it went."""
        tests = tests or {}
        if self.as_json:
            records = ranking.to_dict(orient="records")
            found = {"model_dir": str(out), "ranking": records}
            print(to_json(found | {"test_metrics": next(iter(tests.values()), None)}))
        elif self.quiet:
            print(out)
        else:
            self.out.print(ranking_table(ranking))
            if tests:
                self.out.print(scores_table(tests, ", ".join(self.targets)))
            kept = "the best configuration" if top == 1 else f"the best {top} as an ensemble"
            self.out.print(
                f"model folder: {out} ({kept}); ranking: {out / 'sweep.csv'}", markup=False
            )


def loss_units(reg: Regressor) -> str:
    """What the progress line's loss is, in words."""
    loss = str(reg.loss).replace("_", " ")
    if reg.scale_target:
        return f"{loss} on the standardised target (1.0: no better than predicting the mean)"
    return f"{loss} in the target's units"


def trained_on(reg: Regressor) -> str:
    """The device the network trained on (where its weights are after fit)."""
    return str(next(reg.model_.parameters()).device)


def roles_table(roles: Any) -> Any:
    """Each column of the table and how the run reads it."""
    from rich.table import Table
    from rich.text import Text

    t = Table(show_edge=False, pad_edge=False)
    for col in ("column", "role", "how it is read"):
        t.add_column(col)
    for r in roles:
        t.add_row(Text(r.name), r.role, Text(r.note))  # names are text, never markup
    return t


def scores_table(rows: dict[str, dict[str, float]], target: str) -> Any:
    """Metrics in the target's units, one row per set of rows scored."""
    from rich.table import Table
    from rich.text import Text

    t = Table(show_edge=False, pad_edge=False, title=None)
    t.add_column(Text(f"scores ({target})"))
    for col in ("rows", "RMSE", "MAE", "R²"):
        t.add_column(col, justify="right")
    for name, m in rows.items():
        t.add_row(
            Text(name), f"{int(m['rows'])}", f"{m['rmse']:.5g}", f"{m['mae']:.5g}", f"{m['r2']:.4f}"
        )
    return t


def layer_table(rows: list[dict[str, Any]]) -> Any:
    """The network's layers with their weight, bias and parameter counts, and the totals."""
    from rich.table import Table

    t = Table(title=None, show_edge=False, pad_edge=False)
    for col in ("layer", "shape", "weights", "biases", "params"):
        t.add_column(col, justify="left" if col == "layer" else "right")
    for r in rows:
        shape = f"{r['in']} -> {r['out']}"
        t.add_row(r["layer"], shape, str(r["weights"]), str(r["biases"]), str(r["params"]))
    totals = (str(sum(r[k] for r in rows)) for k in ("weights", "biases", "params"))
    t.add_row("total", "", *totals, style="bold")
    return t


def ranking_table(ranking: pd.DataFrame) -> Any:
    """The best configurations of a sweep, best first."""
    from rich.table import Table

    t = Table(show_edge=False, pad_edge=False)
    for col in ("rank", "hidden", "lr", "weight decay", "seed", "val RMSE", "val MAE", "epochs"):
        t.add_column(col, justify="left" if col == "hidden" else "right")
    for r in ranking.head(SWEEP_ROWS_SHOWN).itertuples():
        t.add_row(
            str(r.rank),
            r.hidden,
            f"{r.lr:g}",
            f"{r.weight_decay:g}",
            str(r.seed),
            f"{r.val_rmse:.5g}",
            f"{r.val_mae:.5g}",
            str(r.epochs),
        )
    if len(ranking) > SWEEP_ROWS_SHOWN:
        t.caption = f"{len(ranking) - SWEEP_ROWS_SHOWN} more rows in sweep.csv"
    return t


def importance_table(frame: pd.DataFrame) -> None:
    """The columns by permutation importance, the most important first."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    t = Table(show_edge=False, pad_edge=False)
    for col in ("rank", "feature", "RMSE growth", "std", "share of RMSE"):
        t.add_column(col, justify="left" if col == "feature" else "right")
    for rank, r in enumerate(frame.itertuples(), start=1):
        name = Text(str(r.feature))  # a column's name is text, never markup
        t.add_row(str(rank), name, f"{r.importance:.4g}", f"{r.std:.2g}", f"{r.share:.1%}")
    Console().print(t)


def print_info(model_dir: Path, meta: dict[str, Any], layers: list[dict[str, Any]]) -> None:
    """`nnreg info`: a model folder's versions, columns, layers, settings and metrics."""
    from rich.console import Console
    from rich.text import Text

    out = Console(highlight=False, soft_wrap=True)
    versions = f"nnreg {meta.get('nnreg_version', '?')}, torch {meta.get('torch_version', '?')}"
    created = meta.get("created", "?")
    out.print(Text.assemble((str(model_dir), "bold"), f"  ({versions}, created {created})"))
    from ..columns import saved_roles

    out.print(roles_table(saved_roles(meta)))
    out.print(layer_table(layers))
    params = meta["training"]["params"]
    out.print("training  " + ", ".join(f"{k}={v}" for k, v in params.items()), markup=False)
    out.print(f"epochs    {meta['training'].get('epochs_run', '?')}", markup=False)
    metrics = ", ".join(f"{k}={v:.6g}" for k, v in meta.get("metrics", {}).items())
    out.print("metrics   " + metrics, markup=False)


def _recipe(reg: Regressor) -> Recipe:
    """The recipe ``reg`` fits with (which says, for one, whether its members share weights)."""
    from ..recipe import Recipe

    return Recipe.from_params(reg.get_params())


def _epochs_text(reg: Regressor) -> str:
    from ..epochs import FOLDS, candidates

    if reg.max_iter != "auto":
        return f"{reg.max_iter} epochs"
    counts = candidates(_recipe(reg))
    return f"epochs auto ({', '.join(map(str, counts))}: {FOLDS}-fold cross-validation)"


def _known_epochs(reg: Regressor) -> int | None:
    """The epochs a fit will train, or None when it chooses them (``max_iter='auto'``)."""
    return None if reg.max_iter == "auto" else int(reg.max_iter)


@contextlib.contextmanager
def _bar(console: Any, epochs: int | None, before: Callable[[], None]) -> Iterator[EpochFn]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("train", total=epochs, loss="-")
        latest = _LatestValidation()

        def on_epoch(epoch: int, loss: float, val: float | None) -> None:
            if epoch == 0:
                before()
            progress.update(task, completed=epoch + 1, loss=f"{loss:.6g}{latest(epoch, val)}")

        yield on_epoch


class _LatestValidation:
    """The progress text of the latest validation loss: a long ensemble run scores its
    held-out rows every few epochs only, so an epoch between says the one it last scored."""

    def __init__(self) -> None:
        self.scored: tuple[int, float] | None = None

    def __call__(self, epoch: int, val: float | None) -> str:
        if val is not None:
            self.scored = (epoch, val)
        if self.scored is None:
            return ""
        at, value = self.scored
        return f"  val {value:.6g}" + ("" if at == epoch else f" (epoch {at})")


@contextlib.contextmanager
def _sweep_bar(console: Any) -> Iterator[Callable[[int, int], None]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("sweeping"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("epochs"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("sweep", total=None)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield update


def to_json(value: Any) -> str:
    """``value`` as indented JSON that any parser reads: NaN and infinities become null."""
    import math

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(value), indent=2, allow_nan=False)
