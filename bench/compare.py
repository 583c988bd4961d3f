"""Two runs of bench_core.py (``--json``) side by side: CPU per request before and after a change.

    uv run python bench/compare.py BEFORE.json AFTER.json

Prints, per phase, the server and PostgreSQL CPU milliseconds per request (per event for a batch) of both
runs and their ratio, with requests/s and p99 for context; then the issue's targets for the second run.
Only figures from the same benchmark, ideally on the same machine, are comparable.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bench_support import CPU_NOTE, fmt


def _phases(report: dict[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
    return {(phase["phase"], phase["concurrency"]): phase for phase in report.get("phases", [])}


def _cpu(phase: dict[str, Any] | None, group: str) -> float | None:
    if phase is None:
        return None
    value = phase["cpu"].get(f"{group}_ms_per_{phase['unit']}")
    return None if value is None else float(value)


def compare(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    old, new = _phases(before), _phases(after)
    keys = list(old) + [key for key in new if key not in old]
    lines = [
        f"before: {before.get('label') or ''} {before.get('code')} ({before.get('started_at')})",
        f"after:  {after.get('label') or ''} {after.get('code')} ({after.get('started_at')})",
        "",
        f"{'phase':<12}{'C':>3} │ {'server+pg CPU ms/req':>20} {'':>7} │ {'server':>13} │ {'pg':>13} │"
        f" {'items/s':>15} │ {'p99 ms':>15}",
        f"{'':<12}{'':>3} │ {'before':>9} {'after':>10} {'ratio':>7} │ {'before':>6} {'after':>6} │"
        f" {'before':>6} {'after':>6} │ {'before':>7} {'after':>7} │ {'before':>7} {'after':>7}",
    ]
    for key in keys:
        was, now = old.get(key), new.get(key)
        total_was, total_now = _cpu(was, "server_plus_postgres"), _cpu(now, "server_plus_postgres")
        ratio = total_was / total_now if total_was and total_now else None
        lines.append(
            f"{key[0]:<12}{key[1]:>3} │ {fmt(total_was, 9)} {fmt(total_now, 10)} "
            f"{fmt(ratio, 6, 1)}{'×' if ratio else ' '} │"
            f" {fmt(_cpu(was, 'server'), 6)} {fmt(_cpu(now, 'server'), 6)} │"
            f" {fmt(_cpu(was, 'postgres'), 6)} {fmt(_cpu(now, 'postgres'), 6)} │"
            f" {fmt(was and was['items_per_second'], 7, 0)} {fmt(now and now['items_per_second'], 7, 0)} │"
            f" {fmt(was and was['latency_ms']['p99'], 7, 1)} {fmt(now and now['latency_ms']['p99'], 7, 1)}"
        )
    lines += ["", "targets, after:"]
    for target in after.get("targets", []):
        verdict = {True: "met", False: "NOT met", None: "no figure"}[target["met"]]
        lines.append(f"  {target['figure']:<58} {fmt(target['value'], 7)}  (≤ {target['target']})  {verdict}")
    lines += ["", CPU_NOTE]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args()
    before, after = (json.loads(path.read_text()) for path in (args.before, args.after))
    for report, path in ((before, args.before), (after, args.after)):
        if report.get("bench") != "core":
            print(f"{path}: not a bench_core.py --json report", file=sys.stderr)
            return 2
    print("\n".join(compare(before, after)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
