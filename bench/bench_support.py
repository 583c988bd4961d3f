"""What the core and pipeline benchmarks share: which code tree runs core, percentiles, machine facts."""

from __future__ import annotations

import math
import os
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proc_cpu import load_average

LIVE_ROOT = Path(__file__).resolve().parents[1]
CPU_NOTE = (
    "CPU ms per request is the figure to compare: the machine is shared, so requests/s and latencies "
    "move with other work."
)


@dataclass(frozen=True)
class CodeTree:
    """A checkout whose core (and protocol library) the benchmark runs: the live tree by default, or another
    copy, e.g. the code as it was before a change, for before/after figures from the same benchmark. Another
    tree's packages come first on PYTHONPATH, and its alembic.ini and migrations migrate the database."""

    root: Path

    @property
    def is_live(self) -> bool:
        return self.root.resolve() == LIVE_ROOT

    @property
    def alembic_ini(self) -> Path:
        return self.root / "alembic.ini"

    def core_env(self) -> dict[str, str]:
        """Environment additions that make a child Python process import this tree's core."""
        env = {"CORE_DB__ALEMBIC_INI": str(self.alembic_ini)}
        if not self.is_live:
            paths = [self.root / "services" / "core" / "src", self.root / "libs" / "protocol" / "src"]
            missing = [str(path) for path in paths if not path.is_dir()]
            if missing:
                raise SystemExit(f"--repo-root {self.root}: missing {', '.join(missing)}")
            inherited = os.environ.get("PYTHONPATH")
            env["PYTHONPATH"] = os.pathsep.join([*map(str, paths), *([inherited] if inherited else [])])
        return env

    def describe(self) -> str:
        try:
            commit = subprocess.run(
                ["git", "-C", str(self.root), "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            ).stdout.strip()
            dirty = subprocess.run(
                ["git", "-C", str(self.root), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            commit, dirty = "", ""
        if not commit:
            return f"{self.root} (not a git checkout)"
        return f"{self.root} at {commit}{' + uncommitted changes' if dirty else ''}"


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted ``values`` (NaN when there are none)."""
    if not values:
        return math.nan
    rank = max(1, math.ceil(fraction * len(values)))
    return values[min(len(values), rank) - 1]


def machine() -> dict[str, Any]:
    load = load_average()
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_average": None if load is None else [round(value, 2) for value in load],
    }


def per(total: float | None, count: int) -> float | None:
    return None if total is None or count <= 0 else total / count


def fmt(value: float | None, width: int, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-".rjust(width)
    return f"{value:{width}.{digits}f}"
