"""`nnreg report`: the HTML page, its sections and figures, opened in a real browser; and the
held-out metrics it shows, which the fit records."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import nnreg
from cli_helpers import run
from nnreg.metrics import regression_metrics
from nnreg.recipe import split_rows
from nnreg.report import SECTIONS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
HOSTILE = "<img src=x onerror=alert(1)>"  # a column name that must stay text


def houses(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    area = rng.uniform(40, 200, n)
    city = rng.choice(["Oslo", "Bergen", "Tromsø"], n)
    rooms = rng.integers(1, 6, n)
    noise = rng.normal(size=n)
    bonus = pd.Series(city).map({"Oslo": 50.0, "Bergen": 20.0, "Tromsø": 0.0}).to_numpy()
    price = 2.0 * area + bonus + 5 * rooms + rng.normal(0, 5, n)
    return pd.DataFrame(
        {"area": area, "city": city, "rooms": rooms, HOSTILE: noise, "price": price}
    )


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-member ensemble (so the figures draw intervals) trained by the command line."""
    root = tmp_path_factory.mktemp("report")
    houses(300, seed=0).to_csv(root / "train.csv", index=False)
    houses(120, seed=1).to_csv(root / "test.csv", index=False)
    args = ["train", str(root / "train.csv"), "--target", "price", "--n-models", "3"]
    args += ["--categorical", "city", "--hidden", "16,16", "--epochs", "60", "-q"]
    args += ["-o", str(root / "model")]
    with pytest.raises(SystemExit) as info:
        nnreg.cli.main(args)
    assert info.value.code in (0, None)
    return root


class Page(HTMLParser):
    """What a report holds: section ids and headings, images, scripts, and the text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.headings: list[str] = []
        self.images: list[str] = []
        self.scripts = 0
        self.text: list[str] = []
        self._in_h2 = False
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "section":
            self.sections.append(found.get("id") or "")
        elif tag == "img":
            self.images.append(found.get("src") or "")
        elif tag == "script":
            self.scripts += 1
        self._in_h2 = tag == "h2"

    def handle_endtag(self, tag: str) -> None:
        self._in_h2 = False

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._in_h2:
            self.headings.append(data)


def decoded(src: str) -> np.ndarray:
    """An inline PNG as pixels (rows, columns, channels)."""
    import matplotlib.image

    assert src.startswith("data:image/png;base64,")
    return matplotlib.image.imread(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))


def busy(pixels: np.ndarray) -> bool:
    """Not a blank picture: many colours, and ink on a fair share of it."""
    rgb = (np.asarray(pixels)[..., :3] * (255 if pixels.dtype.kind == "f" else 1)).astype(int)
    colours = len(np.unique(rgb.reshape(-1, 3), axis=0))
    inked = float(np.mean(rgb.sum(axis=-1) < 600))
    return colours > 50 and inked > 0.02


def test_a_report_with_data_has_every_section_and_real_figures(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = folder / "report.html"
    args = ["report", str(folder / "model"), str(folder / "test.csv"), "-o", str(out)]
    code, stdout, _ = run([*args, "--repeats", "3"], capsys)
    assert code == 0 and f"wrote {out}" in stdout
    text = out.read_text(encoding="utf-8")
    page = Page(text)
    assert page.sections == list(SECTIONS) and page.headings == list(SECTIONS.values())
    assert page.scripts == 0 and "http" not in text.replace("http-equiv", "")  # nothing fetched
    assert len(page.images) == 4  # loss, predicted vs actual, residuals, importance
    assert all(busy(decoded(src)) for src in page.images)
    words = " ".join(page.text)
    for expected in ("training rows", "held-out rows", "test.csv", "90% intervals on test.csv"):
        assert expected in words
    assert HOSTILE in words and HOSTILE not in text  # shown as text, never as markup
    assert "&lt;img src=x onerror=alert(1)&gt;" in text
    # The metrics on DATA are nnreg evaluate's.
    code, shown, _ = run(["evaluate", str(folder / "model"), str(folder / "test.csv")], capsys)
    rmse = float(re.search(r"RMSE\s+(\S+)", shown).group(1))  # type: ignore[union-attr]
    row = re.search(r"<td>test\.csv</td><td>120</td><td>([^<]+)</td>", text)
    assert row is not None and float(row.group(1)) == pytest.approx(rmse, rel=1e-3)


def test_without_data_the_figures_that_need_it_are_explained(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The default file is report.html in the model folder, listed in its manifest, and the
    folder still loads."""
    model = folder / "model"
    code, stdout, _ = run(["report", str(model)], capsys)
    assert code == 0 and f"wrote {model / 'report.html'}" in stdout
    page = Page((model / "report.html").read_text(encoding="utf-8"))
    assert page.sections == list(SECTIONS) and len(page.images) == 1  # the loss curve
    assert "No DATA was given" in " ".join(page.text)
    manifest = json.loads((model / "model.json").read_text())["files"]
    assert "report.html" in manifest
    nnreg.load(model)  # every file still matches its hash


def test_an_ensemble_with_too_few_calibration_rows_reports_and_plots_without_intervals(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """12 rows keep 4 calibration rows, fewer than 90% intervals need (9): the report and the
    figures are made without intervals, not refused for a coverage the user cannot change."""
    houses(12, seed=2).to_csv(tmp_path / "small.csv", index=False)
    args = ["train", str(tmp_path / "small.csv"), "--target", "price", "--n-models", "2"]
    args += ["--hidden", "4", "--epochs", "3", "-q", "-o", str(tmp_path / "model")]
    assert run(args, capsys)[0] == 0
    assert len(nnreg.load(tmp_path / "model").calibrator_.scores[0]) < 9
    out = tmp_path / "small.html"
    report = ["report", str(tmp_path / "model"), str(tmp_path / "small.csv"), "-o", str(out)]
    code, _, err = run([*report, "--repeats", "0"], capsys)
    assert code == 0, err
    assert "90% intervals" not in " ".join(Page(out.read_text(encoding="utf-8")).text)
    plots = ["plot", str(tmp_path / "model"), str(tmp_path / "small.csv")]
    code, _, err = run([*plots, "--out-dir", str(tmp_path / "figures")], capsys)
    assert code == 0, err
    assert (tmp_path / "figures" / "pred_vs_actual.png").is_file()


def test_a_file_nnreg_did_not_write_is_never_replaced(
    folder: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    theirs = tmp_path / "notes.html"
    theirs.write_text("<p>my notes</p>")
    code, _, err = run(["report", str(folder / "model"), "-o", str(theirs)], capsys)
    assert code == 1 and "nnreg did not write it" in err
    assert theirs.read_text() == "<p>my notes</p>"
    code, _, err = run(["report", str(folder / "model"), "-o", str(folder / "train.csv")], capsys)
    assert code == 1 and (folder / "train.csv").read_text().startswith("area,")
    mine = tmp_path / "mine.html"  # but a report of its own is, again and again
    for _ in range(2):
        assert run(["report", str(folder / "model"), "-o", str(mine)], capsys)[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.html", "notes.html"]


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make test installs it)")
def test_the_report_renders_in_a_headless_browser(
    folder: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Chromium parses the page into every section, and draws its figures: its screenshot
    holds matplotlib's blue, which the same page without its figures does not."""
    out = tmp_path / "report.html"
    args = ["report", str(folder / "model"), str(folder / "test.csv"), "-o", str(out)]
    assert run([*args, "--repeats", "2"], capsys)[0] == 0
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    flags += [f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,3200"]
    env = {**os.environ, "HOME": str(tmp_path)}
    dom = subprocess.run(
        [CHROMIUM, *flags, "--dump-dom", out.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=True,
    ).stdout
    page = Page(dom)
    assert page.sections == list(SECTIONS) and len(page.images) == 4
    bare = tmp_path / "bare.html"  # the same page, its figures left out
    bare.write_text(re.sub(r'<img src="data:[^"]*"', "<img", out.read_text("utf-8")), "utf-8")
    shots = {page: _screenshot(CHROMIUM, flags, env, page) for page in (out, bare)}
    pixels = shots[out]
    assert pixels.shape[:2] == (3200, 1200) and busy(pixels)
    assert _blue(pixels) > 300 and _blue(shots[bare]) == 0


def _screenshot(chromium: str, flags: list[str], env: dict[str, str], page: Path) -> np.ndarray:
    import matplotlib.image

    shot = page.with_suffix(".png")
    subprocess.run(
        [chromium, *flags, f"--screenshot={shot}", page.as_uri()],
        capture_output=True,
        timeout=120,
        env=env,
        check=True,
    )
    return (matplotlib.image.imread(shot)[..., :3] * 255).astype(int)


def _blue(pixels: np.ndarray) -> int:
    """Pixels of matplotlib's first colour: the figures' lines, points and bars."""
    return int(np.all(np.abs(pixels - np.array([31, 119, 180])) < 12, axis=-1).sum())


def test_the_fit_scores_the_rows_it_held_out() -> None:
    """validation_metrics_ are the metrics of the model's predictions on exactly the rows
    the validation split held out, in the target's units, and survive save and load."""
    frame = houses(400, seed=2).drop(columns=[HOSTILE])
    X, y = frame.drop(columns="price"), frame["price"]
    reg = nnreg.Regressor(hidden_layer_sizes=(16,), max_iter=40, early_stopping=True)
    reg.set_params(random_state=3, validation_fraction=0.2).fit(X, y)
    held_out, _ = split_rows(len(X), 0.2, reg.seed_, min_rows=1, min_train=1)
    expected = regression_metrics(y.iloc[held_out], reg.predict(X.iloc[held_out]))
    found = reg.validation_metrics_
    assert found["rows"] == len(held_out) == 80
    for key in ("mse", "rmse", "mae", "r2"):
        assert found[key] == pytest.approx(expected[key], rel=1e-5)
    assert not hasattr(nnreg.Regressor(max_iter=5).fit(X, y), "validation_metrics_")


def test_saved_and_loaded_held_out_metrics_are_the_same(tmp_path: Path) -> None:
    frame = houses(300, seed=4).drop(columns=[HOSTILE])
    X, y = frame.drop(columns="price"), frame["price"]
    reg = nnreg.Regressor(hidden_layer_sizes=(8,), max_iter=10, n_models=2, random_state=0)
    reg.fit(X, y).save(tmp_path / "m")
    loaded = nnreg.load(tmp_path / "m")
    assert loaded.validation_metrics_ == reg.validation_metrics_
    assert loaded.model_info_["metrics"]["validation_rows"] == 100  # a third: calibration


def test_train_prints_the_held_out_score_it_saves(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    houses(200, seed=5).drop(columns=[HOSTILE]).to_csv(tmp_path / "t.csv", index=False)
    args = ["train", str(tmp_path / "t.csv"), "--target", "price", "--categorical", "city"]
    args += ["--early-stopping", "--epochs", "15", "--hidden", "8"]
    code, out, _ = run([*args, "-o", str(tmp_path / "m")], capsys)
    assert code == 0
    saved = json.loads((tmp_path / "m" / "model.json").read_text())["metrics"]
    line = re.search(r"held-out rows\s+│\s+20 │\s+(\S+) │\s+(\S+) │\s+(\S+)", out)
    assert line is not None, out
    assert float(line.group(1)) == pytest.approx(saved["validation_rmse"], rel=1e-3)
    assert float(line.group(2)) == pytest.approx(saved["validation_mae"], rel=1e-3)
    assert float(line.group(3)) == pytest.approx(saved["validation_r2"], abs=1e-4)
    code, out, _ = run([*args, "-o", str(tmp_path / "m2"), "--json"], capsys)
    assert json.loads(out)["validation_metrics"]["rows"] == 20
    code, out, _ = run(["train", "--epochs", "3", "-o", str(tmp_path / "seed")], capsys)
    assert "held-out" not in out  # the seed experiment holds nothing out
