"""The run report as a person sees it: rendered by headless Chromium (Debian's ``chromium``).

    python bench/screenshot.py runs/demo-pbc/report.html docs/img/report-summary.png [--height 1500]

Chromium runs with a throw-away profile and its background network features off (the report has
no external resource; nothing is fetched). ``rendered_text`` gives the page's DOM after Chromium
parsed it (what the report test checks); ``screenshot`` writes a PNG of the top of the page.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

QUIET = [
    "--headless",
    "--no-sandbox",  # root in a container: Chromium's sandbox needs user namespaces it may not get
    "--disable-gpu",
    "--hide-scrollbars",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-sync",
]


def chromium() -> str | None:
    """The Chromium executable on PATH (None: not installed)."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _run(arguments: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    executable = chromium()
    if executable is None:
        raise FileNotFoundError("chromium is not installed (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="fedlego-chromium-") as profile:
        command = [executable, *QUIET, f"--user-data-dir={profile}", *arguments]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=True)


def rendered_text(page: Path, timeout: float = 60) -> str:
    """The page's DOM as Chromium serialises it after loading it."""
    return _run(["--dump-dom", Path(page).resolve().as_uri()], timeout).stdout


def screenshot(page: Path, png: Path, width: int = 1200, height: int = 1500, timeout: float = 60) -> Path:
    """A PNG of the top ``height`` pixels of the page at ``width``."""
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    _run([f"--window-size={width},{height}", f"--screenshot={png}", Path(page).resolve().as_uri()], timeout)
    return png


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Screenshot a fedlego report with headless Chromium.")
    parser.add_argument("report", type=Path, help="report.html of a run")
    parser.add_argument("png", type=Path, help="PNG to write")
    parser.add_argument("--width", type=int, default=1200, help="viewport width in pixels (default 1200)")
    parser.add_argument("--height", type=int, default=1500, help="viewport height in pixels (default 1500)")
    args = parser.parse_args(argv)
    print(screenshot(args.report, args.png, args.width, args.height))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
