"""A report on a real table, as a user makes it, and its screenshot in headless Chromium.

Trains the recommended preset as a 5-member ensemble on 180 rows of plotnine's ``mpg`` table
(highway miles per gallon from the car's maker, engine, year, transmission, drive, fuel and
class), writes ``nnreg report`` on the other 54 rows, and screenshots the page into
``benchmarks/results/report.png`` (the picture in the README).

    python benchmarks/report.py            # needs the bench extra (plotnine) and chromium
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    import plotnine

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("chromium is not installed: apt-get install chromium")
    table = pd.read_csv(Path(plotnine.__file__).parent / "data" / "mpg.csv")
    table = table.sample(frac=1.0, random_state=0)
    features = "manufacturer,displ,year,cyl,trans,drv,fl,class"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        table.iloc[:180].to_csv(work / "train.csv", index=False)
        table.iloc[180:].to_csv(work / "test.csv", index=False)
        nnreg = [sys.executable, "-m", "nnreg"]
        train = ["train", "train.csv", "--target", "hwy", "--features", features]
        train += ["--preset", "recommended", "--n-models", "5", "-o", "mpg", "-q"]
        subprocess.run([*nnreg, *train], cwd=work, check=True)
        report = ["report", "mpg", "test.csv", "-o", "mpg.html"]
        subprocess.run([*nnreg, *report], cwd=work, check=True)
        shot = RESULTS / "report.png"
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
        flags += [f"--user-data-dir={work / 'profile'}", "--window-size=1200,3700"]
        page = (work / "mpg.html").as_uri()
        subprocess.run(
            [chromium, *flags, f"--screenshot={shot.resolve()}", page],
            check=True,
            capture_output=True,
        )
    print(f"wrote {shot}")


if __name__ == "__main__":
    main()
