"""An HTML report of a trained model: ``nnreg report MODEL_DIR [DATA]``.

One self-contained page (the figures are PNGs inside it, no script, nothing fetched: its
Content-Security-Policy allows nothing else) with the run's settings, the columns and their
roles, the metrics on the training rows, on the rows the fit held out and on DATA, the loss
curves with the epoch the weights come from marked, predicted against actual values and
residuals (with each row's interval for a model that has intervals) and permutation
importance. Everything from the data or the folder is escaped: a column may be named
``<script>``.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import math
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ._version import __version__
from .metrics import regression_metrics

if TYPE_CHECKING:
    from .estimator import Regressor
    from .importance import Importance

__all__ = ["SECTIONS", "Scored", "made_report", "render", "score"]

# Each section's id and heading, in the page's order.
SECTIONS = {
    "settings": "Settings",
    "data": "Data",
    "metrics": "Metrics",
    "loss": "Loss curves",
    "predictions": "Predictions",
    "importance": "Feature importance",
}
COVERAGE = 0.9  # the interval the figures draw, for a model that has intervals
GENERATOR = f"nnreg {__version__}"
POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


@dataclass(frozen=True)
class Scored:
    """The model on a table that holds the target: what the report shows of DATA."""

    name: str
    frame: pd.DataFrame  # the feature columns, as read
    y: np.ndarray
    pred: np.ndarray
    bounds: tuple[np.ndarray, np.ndarray] | None  # the COVERAGE interval, or None
    importance: Importance | None


def score(
    reg: Regressor,
    X: pd.DataFrame,
    y: Any,
    name: str,
    *,
    repeats: int = 5,
    seed: int = 0,
) -> Scored:
    """Predict ``X`` (with intervals when ``reg`` has them) and rank its columns by
    permutation importance (``repeats`` shuffles each; 0 leaves importance out)."""
    y = np.asarray(y, dtype=np.float64)
    pred = reg.predict(X)
    bounds = intervals(reg, X)
    found = None
    if repeats > 0:
        found = reg.feature_importances(X, y, n_repeats=repeats, random_state=seed)
    return Scored(name, X, y, np.asarray(pred), bounds, found)


def intervals(reg: Regressor, X: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """``reg``'s COVERAGE intervals on ``X``; None without calibration rows, or with fewer
    than COVERAGE needs (figures and reports then draw none)."""
    calibrator = getattr(reg, "calibrator_", None)
    if calibrator is None or not calibrator.covers(COVERAGE):
        return None
    return reg.predict_interval(X, COVERAGE)


def render(
    reg: Regressor,
    title: str,
    scored: Scored | None = None,
    run_settings: Mapping[str, Any] | None = None,
) -> str:
    """The page for ``reg``, a model read by :func:`nnreg.load` (its ``model_info_`` is the
    folder's model.json), with ``scored`` DATA when given and the ``[data]`` settings of
    its config.toml."""
    meta = reg.model_info_
    bodies = {
        "settings": _settings(reg, meta, run_settings or {}),
        "data": _columns(meta, scored),
        "metrics": _metrics(meta, scored),
        "loss": _loss(reg, meta),
        "predictions": _predictions(meta, scored),
        "importance": _importance(scored),
    }
    nav = " · ".join(f'<a href="#{k}">{_e(v)}</a>' for k, v in SECTIONS.items())
    sections = "\n".join(
        f'<section id="{key}">\n<h2>{_e(SECTIONS[key])}</h2>\n{body}\n</section>'
        for key, body in bodies.items()
    )
    made = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return PAGE.format(
        title=_e(title),
        policy=POLICY,
        generator=_e(GENERATOR),
        style=STYLE,
        subtitle=_e(
            f"model trained {meta.get('created', '?')} with nnreg {meta.get('nnreg_version')}; "
            f"report made {made}"
        ),
        nav=nav,
        sections=sections,
    )


def made_report(path: Path) -> bool:
    """True for an HTML file that nnreg wrote (its generator meta tag names nnreg)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return head.startswith(b"<!DOCTYPE html>") and b'<meta name="generator" content="nnreg' in head


def _settings(reg: Regressor, meta: dict[str, Any], run: Mapping[str, Any]) -> str:
    training = meta.get("training", {})
    params = training.get("params", {})
    run_rows = [(k, _value(v)) for k, v in run.items()]
    model_rows = [
        ("members", str(meta.get("n_models", 1))),
        ("parameters", f"{meta.get('n_parameters', 0):,}"),
        ("epochs run", str(training.get("epochs_run", "?"))),
        ("weights from epoch", str(training.get("best_epoch", "?"))),
        ("weights SHA-256", str(meta.get("weights_sha256", "?"))),
    ]
    from .model import summary

    layers = [
        (r["layer"], r["in"], r["out"], f"{r['params']:,}") for r in summary(reg.model_.config)
    ]
    return "\n".join(
        [
            '<div class="grid">',
            "<div><h3>The run</h3>",
            _kv(run_rows + model_rows),
            "<h3>Layers</h3>",
            _table(["layer", "in", "out", "parameters"], layers),
            "</div>",
            "<div><h3>Estimator parameters</h3>",
            _kv([(k, _value(v)) for k, v in sorted(params.items())]),
            "</div></div>",
        ]
    )


def _columns(meta: dict[str, Any], scored: Scored | None) -> str:
    """One row per column: its role, how the model reads it, and what DATA holds in it."""
    pre = meta.get("preprocessing", {}).get("inputs", {})
    categories = pre.get("categories", {})
    indicators = set(pre.get("indicators", []))
    scaling = pre.get("scaling", "standard")
    rows = []
    for feature in meta.get("features", []):
        name = feature["name"]
        if name in pre.get("dates", {}):
            parts = ", ".join(pre["dates"][name]["parts"])
            role, reading = "date", f"as {parts}, each scaled ({scaling})"
        elif name in categories:
            kept = [c for c in categories[name] if not c.startswith("__")]
            other = " + other (the rarer ones)" if "__other__" in categories[name] else ""
            role, reading = "categorical", f"one-hot, {len(kept)} categories{other}"
        else:
            role, reading = "numeric", f"scaled ({scaling})"
        derived = [f"{name}:{p}" for p in pre.get("dates", {}).get(name, {}).get("parts", [])]
        if (
            name in indicators
            or set(derived) & indicators
            or (name in categories and "__missing__" in categories[name])
        ):
            reading += "; missing values imputed"
        rows.append((name, role, feature.get("dtype", "?"), reading, *_on_data(scored, name)))
    target = meta.get("preprocessing", {}).get("target", {})
    for j, name in enumerate(meta.get("targets", [])):
        mean, scale = target.get("mean", [math.nan])[j], target.get("scale", [math.nan])[j]
        reading = f"mean {mean:.4g}, std {scale:.4g} on the training rows"
        on_data = _describe(pd.Series(scored.y.reshape(len(scored.y), -1)[:, j])) if scored else ()
        rows.append((name, "target", "float64", reading, *(on_data or ("", ""))))
    where = f"in {scored.name}" if scored is not None else "in DATA (none given)"
    headers = ["column", "role", "type", "how the model reads it", "missing " + where, "values"]
    return _table(headers, rows, "columns")


def _on_data(scored: Scored | None, name: str) -> tuple[str, str]:
    if scored is None or name not in scored.frame.columns:
        return "", ""
    return _describe(scored.frame[name])


def _describe(col: pd.Series) -> tuple[str, str]:
    """A column of DATA in two cells: its missing values, and its range or commonest values."""
    missing = f"{int(col.isna().sum())} of {len(col)}"
    if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
        values = col.dropna().astype(float)
        if values.empty:
            return missing, ""
        return missing, f"{values.min():.4g} to {values.max():.4g}, median {values.median():.4g}"
    counts = col.astype(str).value_counts()
    top = ", ".join(f"{k} ({v})" for k, v in counts.head(3).items())
    return missing, f"{len(counts)} distinct; commonest {top}"


def _metrics(meta: dict[str, Any], scored: Scored | None) -> str:
    saved = meta.get("metrics", {})
    rows = []
    for prefix, label in (("train_", "training rows"), ("validation_", "held-out rows")):
        if f"{prefix}mse" in saved:
            count = saved.get(f"{prefix}rows")
            rows.append((label, "" if count is None else f"{int(count)}", *_scores(saved, prefix)))
    notes = []
    if "validation_mse" in saved and saved.get("validation_rows") == saved.get("train_rows"):
        notes.append(
            "Held-out rows: every training row, each scored out of fold by a model of the "
            "epoch search that did not train on it (shared members train on every row)."
        )
    elif "validation_mse" in saved:
        notes.append(
            "Held-out rows: the share of the training table the fit set aside "
            "(an ensemble's are scored out-of-fold, each by a helper network that did not "
            "train on them)."
        )
    else:
        notes.append("The fit held no rows out; give DATA the model did not train on.")
    if scored is not None:
        found = regression_metrics(scored.y, scored.pred)
        rows.append((scored.name, str(len(scored.y)), *_scores(found, "")))
        if scored.bounds is not None:
            lower, upper = (np.ravel(b) for b in scored.bounds)
            y = scored.y.ravel()
            inside = float(np.mean((y >= lower) & (y <= upper)))
            notes.append(
                f"{COVERAGE:.0%} intervals on {scored.name}: {inside:.1%} of the rows inside, "
                f"mean width {float(np.mean(upper - lower)):.4g}."
            )
    headers = ["rows scored", "count", "RMSE", "MAE", "R²", "MSE"]
    units = ", ".join(meta.get("targets", []))
    paragraphs = "".join(f"<p>{_e(n)}</p>" for n in notes)
    return f"<p>In the units of {_e(units)}.</p>{_table(headers, rows)}{paragraphs}"


def _scores(metrics: Mapping[str, Any], prefix: str) -> tuple[str, ...]:
    return tuple(f"{metrics[prefix + k]:.4g}" for k in ("rmse", "mae", "r2", "mse"))


def _loss(reg: Regressor, meta: dict[str, Any]) -> str:
    from .artifact import loss_labels
    from .plot import loss_curve

    history = reg.history_.to_dict()
    labels = loss_labels(meta)
    image = _figure(lambda p: loss_curve(history, p, **labels), "loss per epoch")
    best = meta.get("training", {}).get("best_epoch")
    return f"<p>The weights come from epoch {_e(str(best))}.</p>{image}"


def _predictions(meta: dict[str, Any], scored: Scored | None) -> str:
    if scored is None:
        return _missing("predicted against actual values and residuals")
    from .plot import predicted_vs_actual, residuals

    extra: dict[str, Any] = {"target": ", ".join(meta.get("targets", []))}
    if scored.bounds is not None:
        extra.update(bounds=scored.bounds, coverage=COVERAGE)
    name = scored.name
    return '<div class="grid">{}{}</div>'.format(
        _figure(
            lambda p: predicted_vs_actual(
                scored.y, scored.pred, p, title=f"Predicted vs actual ({name})", **extra
            ),
            "predicted against actual values",
        ),
        _figure(
            lambda p: residuals(scored.y, scored.pred, p, title=f"Residuals ({name})", **extra),
            "residuals against predicted values",
        ),
    )


def _importance(scored: Scored | None) -> str:
    if scored is None or scored.importance is None:
        return _missing("permutation importance")
    from .plot import importance_chart

    found = scored.importance
    frame = found.to_frame()
    repeats = found.scores.shape[1]
    chart = _figure(
        lambda p: importance_chart(
            frame, found.baseline_rmse, p, f"Permutation importance ({scored.name})"
        ),
        "permutation importance",
    )
    rows = [
        (r.feature, f"{r.importance:.4g}", f"{r.std:.2g}", f"{r.share:.1%}")
        for r in frame.itertuples()
    ]
    intro = (
        f"How much the RMSE on {scored.name} (baseline {found.baseline_rmse:.4g}) grows when "
        f"one column is shuffled, over {repeats} shuffles; a categorical column is shuffled "
        "as one."
    )
    table = _table(["column", "RMSE growth", "std", "of the baseline"], rows)
    return f'<p>{_e(intro)}</p><div class="grid">{chart}<div>{table}</div></div>'


def _missing(what: str) -> str:
    return (
        f'<p class="note">No DATA was given: {_e(what)} need a table that holds the target, '
        "as in <code>nnreg report MODEL_DIR test.csv</code>.</p>"
    )


def _figure(draw: Callable[[Path], Any], alt: str) -> str:
    """The figure ``draw(path)`` writes, as an inline PNG."""
    with tempfile.TemporaryDirectory(prefix="nnreg-report-") as tmp:
        path = Path(tmp) / "figure.png"
        draw(path)
        data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img src="data:image/png;base64,{data}" alt="{_e(alt)}"></figure>'


def _value(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return ", ".join(str(x) for x in v) if v else "(none)"
    return str(v)


def _kv(rows: Iterable[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f'<table class="kv">{body}</table>'


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], kind: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_e(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    of_kind = f' class="{kind}"' if kind else ""
    return f"<table{of_kind}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _e(text: str) -> str:
    return html.escape(text, quote=True)


STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2328;
       max-width: 1180px; margin: 0 auto; padding: 24px; }
h1 { margin-bottom: 0; } .subtitle { color: #59636e; margin-top: 4px; }
nav { margin: 12px 0 8px; } nav a { color: #0550ae; }
section { border-top: 1px solid #d0d7de; margin-top: 24px; }
h3 { margin-bottom: 6px; }
table { border-collapse: collapse; margin: 8px 0; font-size: 14px; }
th, td { padding: 3px 10px; border-bottom: 1px solid #eaeef2; text-align: left;
         vertical-align: top; }
thead th { background: #f6f8fa; } .kv th { font-weight: 500; color: #59636e; }
td { font-variant-numeric: tabular-nums; overflow-wrap: anywhere; }
.columns td:nth-child(-n+3) { white-space: nowrap; }
.grid { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
.grid > * { flex: 1 1 460px; min-width: 0; }
figure { margin: 8px 0; } img { max-width: 100%; border: 1px solid #eaeef2; }
.note { color: #59636e; }
"""

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="generator" content="{generator}">
<meta http-equiv="Content-Security-Policy" content="{policy}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
<h1>{title}</h1>
<p class="subtitle">{subtitle}</p>
<nav>{nav}</nav>
{sections}
</body>
</html>
"""
