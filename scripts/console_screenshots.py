"""Refresh the console screenshots of the README (``docs/images/console-<page>.png``).

The browser tests (``tests/browser``) keep a full-page screenshot of every console page they visit in
``var/artifacts/console/``: the pages as a real fleet fills them (simulated cabinets, a rental, a refund).
This copies one per main page into ``docs/images/``; ``--run`` runs the browser tests first (they need
PostgreSQL, an MQTT broker and Debian's chromium, like ``make test``).

    uv run python scripts/console_screenshots.py --run
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
ARTEFACTS = REPO_ROOT / "var" / "artifacts" / "console"
IMAGES = REPO_ROOT / "docs" / "images"
# The README's pages, in its order (artefact names as the browser tests write them).
MAIN_PAGES = (
    "login",
    "dashboard",
    "stations",
    "station-detail",
    "powerbank-detail",
    "rentals",
    "rental-detail",
    "renters",
    "money",
    "sync-log",
    "audit",
    "config",
    "dashboard-phone",
)


def run_browser_tests() -> int:
    command = [sys.executable, "-m", "pytest", "tests/browser", "-q", "-p", "no:cacheprovider"]
    return subprocess.run(command, cwd=REPO_ROOT, check=False).returncode  # noqa: S603 - fixed arguments


def copy_screenshots(pages: tuple[str, ...] = MAIN_PAGES) -> list[str]:
    """Copy the artefacts of ``pages`` into docs/images; the names of those missing."""
    IMAGES.mkdir(parents=True, exist_ok=True)
    missing = []
    for page in pages:
        source = ARTEFACTS / f"console-{page}.png"
        if not source.exists():
            missing.append(page)
            continue
        shutil.copyfile(source, IMAGES / source.name)
        print(f"docs/images/{source.name}  ({source.stat().st_size // 1024} KiB)")
    return missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", action="store_true", help="run tests/browser first to make new screenshots")
    args = parser.parse_args(argv)
    if args.run and run_browser_tests() != 0:
        print("the browser tests failed; screenshots not copied", file=sys.stderr)
        return 1
    missing = copy_screenshots()
    if missing:
        print(f"no screenshot of: {', '.join(missing)} (run with --run)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
