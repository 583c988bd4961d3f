"""The benchmark's /proc accounting (bench/proc_cpu.py): parsing, process groups and per-phase deltas, on a
fake /proc tree so the figures are exact."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.append(str(Path(__file__).resolve().parents[2] / "bench"))

# bench/ is not a package: its folder went on the path above.
from proc_cpu import (
    CLOCK_TICKS_PER_S,
    CpuMeter,
    PostgresBackends,
    PostgresServer,
    ProcessTree,
    backend_database,
    descendants,
    parse_stat,
    scan,
)


def stat_line(
    pid: int, comm: str, ppid: int, utime: int, stime: int, *, reaped: int = 0, start: int = 100
) -> str:
    # Fields 3..22 of proc(5): state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime
    # stime cutime cstime priority nice threads itrealvalue starttime, then a few more.
    rest = [
        "S",
        ppid,
        ppid,
        ppid,
        0,
        -1,
        4194304,
        10,
        0,
        0,
        0,
        utime,
        stime,
        reaped,
        0,
        20,
        0,
        1,
        0,
        start,
        1000,
        50,
    ]
    return f"{pid} ({comm}) " + " ".join(map(str, rest)) + "\n"


class FakeProc:
    """A /proc with just ``stat`` and ``cmdline`` files, changed between samples by the test."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "self").mkdir(parents=True)
        (root / "self" / "stat").write_text(stat_line(1, "bench", 0, 0, 0))

    def put(self, pid: int, comm: str, ppid: int, ticks: int, cmdline: str = "", **extra: int) -> None:
        folder = self.root / str(pid)
        folder.mkdir(exist_ok=True)
        (folder / "stat").write_text(stat_line(pid, comm, ppid, ticks, 0, **extra))
        (folder / "cmdline").write_bytes(cmdline.replace(" ", "\0").encode() + b"\0")

    def remove(self, pid: int) -> None:
        for name in ("stat", "cmdline"):
            (self.root / str(pid) / name).unlink()
        (self.root / str(pid)).rmdir()


def test_parse_stat_splits_after_the_last_parenthesis_of_the_command_name() -> None:
    stat = parse_stat(stat_line(4242, "weird) (name", 7, 120, 30, reaped=55, start=999))
    assert (stat.pid, stat.comm, stat.ppid, stat.ticks, stat.reaped_ticks, stat.start) == (
        4242,
        "weird) (name",
        7,
        150,
        55,
        999,
    )


def test_parse_stat_refuses_a_line_without_a_command_name() -> None:
    with pytest.raises(ValueError, match="not a /proc stat line"):
        parse_stat("garbage")


@pytest.mark.parametrize(
    ("title", "database"),
    [
        ("postgres: 15/main: postgres cg_bench_1 127.0.0.1(50412) idle", "cg_bench_1"),
        ("postgres: app_user orders 10.0.0.5(1234) INSERT", "orders"),
        ("postgres: postgres cg_bench_1 [local] idle in transaction", "cg_bench_1"),
        ("postgres: 15/main: checkpointer", None),
        ("postgres: 15/main: autovacuum launcher", None),
        ("/usr/lib/postgresql/15/bin/postgres -D /var/lib/postgresql/15/main", None),
    ],
)
def test_backend_database_reads_the_process_title(title: str, database: str | None) -> None:
    assert backend_database(title) == database


def test_descendants_follow_the_whole_tree_and_nothing_else(tmp_path: Path) -> None:
    proc = FakeProc(tmp_path)
    proc.put(10, "python", 1, 5)  # uvicorn master
    proc.put(11, "python", 10, 5)  # worker
    proc.put(12, "python", 10, 5)  # worker
    proc.put(13, "python", 11, 5)  # something a worker started
    proc.put(20, "python", 1, 5)  # unrelated
    assert descendants(scan(tmp_path), 10) == {10, 11, 12, 13}
    assert descendants(scan(tmp_path), 99) == set()


def test_a_phase_counts_joined_and_departed_processes_and_the_postmasters_reaped_children(
    tmp_path: Path,
) -> None:
    proc = FakeProc(tmp_path)
    proc.put(10, "python", 1, 100)
    proc.put(11, "python", 10, 1000)
    proc.put(500, "postgres", 1, 50, "/usr/lib/postgresql/15/bin/postgres -D main", reaped=300)
    proc.put(501, "postgres", 500, 40, "postgres: 15/main: walwriter")
    proc.put(502, "postgres", 500, 200, "postgres: 15/main: postgres bench_db 127.0.0.1(1) idle")
    proc.put(503, "postgres", 500, 700, "postgres: 15/main: postgres other_db 127.0.0.1(2) idle")
    meter = CpuMeter(
        [
            ProcessTree("server", 10),
            PostgresBackends("postgres", "bench_db", root=tmp_path),
            PostgresServer("postgres_all"),
        ],
        root=tmp_path,
    )

    meter.begin()
    proc.put(11, "python", 10, 1150)  # the worker spent 150 ticks
    proc.put(502, "postgres", 500, 260)  # the bench backend 60
    proc.put(503, "postgres", 500, 900)  # another database's backend 200: not ours
    proc.put(504, "postgres", 500, 25, "postgres: 15/main: postgres bench_db 127.0.0.1(3) idle")  # joins
    meter._sample()  # what the sampling thread does between begin and end
    proc.put(504, "postgres", 500, 35, "postgres: 15/main: postgres bench_db 127.0.0.1(3) idle")
    meter._sample()
    proc.remove(504)  # disconnects; the postmaster reaps it
    proc.put(500, "postgres", 1, 50, "/usr/lib/postgresql/15/bin/postgres -D main", reaped=335)
    cpu = meter.end()

    assert cpu is not None
    ms_per_tick = 1000.0 / CLOCK_TICKS_PER_S
    server, postgres, everything = (cpu.groups[name] for name in ("server", "postgres", "postgres_all"))
    assert server.cpu_ms == pytest.approx(150 * ms_per_tick) and (server.joined, server.left) == (0, 0)
    # 60 from the backend that stayed, 35 (all of its life) from the one that came and went.
    assert postgres.cpu_ms == pytest.approx(95 * ms_per_tick)
    assert (postgres.joined, postgres.left) == (1, 1)
    # Every postgres process of every database: 60 + 200, and the departed backend's whole 35 through the
    # postmaster's reaped-children counter (not once more through its own samples).
    assert everything.cpu_ms == pytest.approx((60 + 200 + 35) * ms_per_tick)


def test_a_pid_reused_by_a_new_process_is_a_new_member(tmp_path: Path) -> None:
    proc = FakeProc(tmp_path)
    proc.put(10, "python", 1, 500, start=100)
    meter = CpuMeter([ProcessTree("server", 10)], root=tmp_path)
    meter.begin()
    proc.remove(10)
    proc.put(10, "python", 1, 30, start=200)  # same pid, other process: its 30 ticks count from zero
    cpu = meter.end()
    assert cpu is not None
    assert cpu.groups["server"].cpu_ms == pytest.approx(30 * 1000.0 / CLOCK_TICKS_PER_S)
    assert (cpu.groups["server"].joined, cpu.groups["server"].left) == (1, 1)


def test_without_proc_the_meter_reports_nothing(tmp_path: Path) -> None:
    meter = CpuMeter([ProcessTree("server", 10)], root=tmp_path / "missing")
    meter.begin()
    assert meter.end() is None


def test_percentile_is_nearest_rank() -> None:
    from bench_support import percentile

    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 0.5), percentile(values, 0.99), percentile(values, 1.0)) == (50.0, 99.0, 100.0)
    assert percentile([7.0], 0.99) == 7.0


def test_another_tree_goes_first_on_the_python_path_with_its_own_migrations(tmp_path: Path) -> None:
    from bench_support import LIVE_ROOT, CodeTree

    (tmp_path / "services" / "core" / "src").mkdir(parents=True)
    (tmp_path / "libs" / "protocol" / "src").mkdir(parents=True)
    env = CodeTree(tmp_path).core_env()
    assert env["PYTHONPATH"].split(":")[:2] == [
        str(tmp_path / "services" / "core" / "src"),
        str(tmp_path / "libs" / "protocol" / "src"),
    ]
    assert env["CORE_DB__ALEMBIC_INI"] == str(tmp_path / "alembic.ini")
    assert "PYTHONPATH" not in CodeTree(LIVE_ROOT).core_env()


def test_a_backend_is_recognised_once_it_has_set_its_title(tmp_path: Path) -> None:
    proc = FakeProc(tmp_path)
    postmaster = "/usr/lib/postgresql/15/bin/postgres -D main"
    proc.put(500, "postgres", 1, 50, postmaster)
    meter = CpuMeter([PostgresBackends("postgres", "bench_db", root=tmp_path)], root=tmp_path)
    meter.begin()
    proc.put(504, "postgres", 500, 2, postmaster)  # forked, title not set yet
    meter._sample()
    proc.put(504, "postgres", 500, 9, "postgres: 15/main: postgres bench_db 127.0.0.1(3) idle")
    cpu = meter.end()
    assert cpu is not None
    assert cpu.groups["postgres"].cpu_ms == pytest.approx(9 * 1000.0 / CLOCK_TICKS_PER_S)
    assert cpu.groups["postgres"].joined == 1
