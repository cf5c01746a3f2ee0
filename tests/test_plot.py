"""Figures read on their own: labels, scores, the chosen epoch, intervals, legends for lines
that exist; ``nnreg plot`` writes residuals.png too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import r2_score, root_mean_squared_error

import nnreg
from cli_helpers import run
from nnreg import plot


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The axes of every figure drawn, as they are just before being written."""
    axes: list[Any] = []
    finish = plot._finish

    def keep(plt: Any, fig: Any, ax: Any, labels: Any, path: Any) -> Path:
        out = finish(plt, fig, ax, labels, path)
        axes.append(ax)
        return out

    monkeypatch.setattr(plot, "_finish", keep)
    return axes


def legend(ax: Any) -> list[str]:
    return list(ax.get_legend_handles_labels()[1])


def test_the_loss_curve_marks_the_epoch_and_draws_no_empty_validation_line(
    drawn: list[Any], tmp_path: Path
) -> None:
    history = {"train_loss": [1.0, 0.5, 0.4, 0.45], "val_loss": [float("nan")] * 4}
    plot.loss_curve(history, tmp_path / "a.png", ylabel="squared error (y)")
    assert legend(drawn[-1]) == ["training"]
    assert drawn[-1].get_ylabel() == "squared error (y)"
    history["val_loss"] = [1.1, 0.6, 0.5, 0.55]
    plot.loss_curve(history, tmp_path / "b.png", best_epoch=2)
    assert legend(drawn[-1]) == ["training", "validation", "weights: epoch 2"]
    plot.loss_curve(history, tmp_path / "c.png", best_epoch=3)  # the last: nothing to mark
    assert legend(drawn[-1]) == ["training", "validation"]


def test_the_validation_line_joins_the_epochs_an_ensemble_scored(
    drawn: list[Any], tmp_path: Path
) -> None:
    """A long ensemble run scores every 4th epoch (NaN between): the line goes through
    them, instead of isolated points that draw nothing."""
    nan = float("nan")
    history = {"train_loss": [1.0] * 8, "val_loss": [nan, nan, nan, 0.9, nan, nan, nan, 0.7]}
    plot.loss_curve(history, tmp_path / "a.png")
    validation = drawn[-1].get_lines()[1]
    np.testing.assert_array_equal(validation.get_xdata(), [3, 7])
    np.testing.assert_array_equal(validation.get_ydata(), [0.9, 0.7])


def test_predicted_vs_actual_and_residuals_say_their_scores_and_interval(
    drawn: list[Any], tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    t = rng.normal(size=200)
    p = t + rng.normal(0, 0.3, size=200)
    lower, upper = p - 0.5, p + 0.5
    share = np.mean((t >= lower) & (t <= upper))
    for draw in (plot.predicted_vs_actual, plot.residuals):
        draw(t, p, tmp_path / "f.png", target="price", bounds=(lower, upper), coverage=0.9)
        ax = drawn[-1]
        assert f"90% interval, {share:.0%} of these rows inside" in legend(ax)
        corner = ax.texts[0].get_text()
        assert f"RMSE {root_mean_squared_error(t, p):.4g}" in corner
        assert f"R² {r2_score(t, p):.3f}" in corner and "200 rows" in corner
        assert "price" in ax.get_xlabel() and "price" in ax.get_ylabel()
    draw(t, p, tmp_path / "g.png")
    assert not any("interval" in label for label in legend(drawn[-1]))


def test_plot_writes_residuals_with_intervals_for_an_ensemble(
    tmp_path: Path, table_frame: Any, capsys: pytest.CaptureFixture[str], drawn: list[Any]
) -> None:
    reg = nnreg.Regressor(hidden_layer_sizes=(16,), max_iter=20, n_models=2, random_state=0)
    reg.fit(table_frame[["a", "b", "c"]], table_frame["y"])
    model = reg.save(tmp_path / "model", target_names=["y"])
    data = tmp_path / "data.csv"
    table_frame.to_csv(data, index=False)
    code, out, err = run(["plot", str(model), str(data), "--out-dir", str(tmp_path / "f")], capsys)
    assert code == 0, err
    names = sorted(p.name for p in (tmp_path / "f").iterdir())
    assert names == ["loss.png", "pred_vs_actual.png", "residuals.png"]
    assert all(any("90% interval" in label for label in legend(ax)) for ax in drawn[-2:])
