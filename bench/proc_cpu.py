"""CPU time of process groups, read from /proc: what one benchmark phase cost each part of the system.

On a machine shared with other work, requests per second and latency move with everybody else's load; the
CPU time a process spends on our requests (``utime + stime`` of /proc/<pid>/stat) hardly does, so CPU
milliseconds per request is the figure that compares from run to run. A :class:`CpuMeter` samples the
groups it is given in a background thread (PostgreSQL backends and pool overflow connections may come and
go within a phase) and, per phase, reports each group's CPU delta, how many processes joined and how many
left, and the benchmark process's own CPU with the sampler's share taken out.

Linux only (the figures are ``None`` elsewhere). A process that starts and exits between two samples is
not seen at all; its CPU is missing from its group (``PostgresServer`` counts it through the postmaster's
reaped-children counters, for all databases at once).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

PROC = Path("/proc")
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

# A sampled quantity: (pid, start time) tells a reused pid apart from its predecessor; a string key names a
# counter that is not one process's own time (the postmaster's reaped children).
SampleKey = tuple[int, int] | str


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/<pid>/stat a benchmark needs."""

    pid: int
    comm: str
    ppid: int
    ticks: int  # utime + stime of the process itself (all its threads)
    reaped_ticks: int  # cutime + cstime: children it has waited for
    start: int  # starttime, in ticks after boot

    @property
    def key(self) -> tuple[int, int]:
        return (self.pid, self.start)


def parse_stat(text: str) -> ProcStat:
    """Parse one /proc/<pid>/stat line. The command name sits in parentheses and may itself hold spaces or
    parentheses, so the fields are split after its *last* closing parenthesis."""
    head, closing, tail = text.rpartition(")")
    if not closing:
        raise ValueError(f"not a /proc stat line: {text[:80]!r}")
    pid_text, _, comm = head.partition(" (")
    fields = tail.split()
    # fields[0] is field 3 (state) of proc(5): ppid = 4, utime = 14, stime = 15, cutime = 16, cstime = 17,
    # starttime = 22.
    return ProcStat(
        pid=int(pid_text),
        comm=comm,
        ppid=int(fields[1]),
        ticks=int(fields[11]) + int(fields[12]),
        reaped_ticks=int(fields[13]) + int(fields[14]),
        start=int(fields[19]),
    )


def read_stat(pid: int, root: Path = PROC) -> ProcStat | None:
    try:
        return parse_stat((root / str(pid) / "stat").read_text())
    except (OSError, ValueError, IndexError):
        return None  # gone, or not ours to read


def read_cmdline(pid: int, root: Path = PROC) -> str:
    try:
        raw = (root / str(pid) / "cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()


def scan(root: Path = PROC) -> dict[int, ProcStat]:
    """Every process visible in ``root`` (a fraction of a millisecond per hundred processes)."""
    table: dict[int, ProcStat] = {}
    try:
        entries = os.listdir(root)
    except OSError:
        return table
    for name in entries:
        if name.isdigit():
            stat = read_stat(int(name), root)
            if stat is not None:
                table[stat.pid] = stat
    return table


def machine_ticks(root: Path = PROC) -> tuple[int, int] | None:
    """(busy, total) ticks of all CPUs since boot, from the first line of /proc/stat: how loaded the whole
    machine was over a phase, our processes and everybody else's."""
    try:
        first = (root / "stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    if not first or first[0] != "cpu":
        return None
    values = [int(value) for value in first[1:9]]  # user nice system idle iowait irq softirq steal
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def descendants(table: Mapping[int, ProcStat], root_pid: int) -> set[int]:
    """``root_pid`` and every process below it (uvicorn's master and its workers)."""
    children: dict[int, list[int]] = {}
    for stat in table.values():
        children.setdefault(stat.ppid, []).append(stat.pid)
    found: set[int] = set()
    pending = [root_pid] if root_pid in table else []
    while pending:
        pid = pending.pop()
        if pid not in found:
            found.add(pid)
            pending.extend(children.get(pid, ()))
    return found


def backend_database(cmdline: str) -> str | None:
    """The database a PostgreSQL backend serves, from its process title ``postgres: [cluster: ]user db
    host(port) state``; None for the postmaster and the auxiliary processes (checkpointer, walwriter, …)."""
    if not cmdline.startswith("postgres: "):
        return None
    words = cmdline[len("postgres: ") :].split()
    if words and words[0].endswith(":"):  # Debian's cluster_name prefix, e.g. "15/main:"
        words = words[1:]
    # A client backend's title has at least user, database and client address; "(" marks the address.
    if len(words) >= 3 and ("(" in words[2] or words[2] == "[local]"):
        return words[1]
    return None


class ProcessGroup(Protocol):
    """A named set of processes whose CPU one figure reports."""

    name: str
    # True when the group's parent counters hold a departed member's whole CPU (the postmaster's reaped
    # children): a member that leaves is then counted through them, not through its last sample.
    counts_reaped: bool

    def sample(self, table: Mapping[int, ProcStat]) -> dict[SampleKey, int]:
        """Ticks per member, from one scan of /proc."""
        ...


@dataclass
class ProcessTree:
    """A process and everything it started (core's uvicorn master and workers, the ingest, the broker)."""

    name: str
    root_pid: int
    counts_reaped: bool = False

    def sample(self, table: Mapping[int, ProcStat]) -> dict[SampleKey, int]:
        return {table[pid].key: table[pid].ticks for pid in descendants(table, self.root_pid)}


@dataclass
class PostgresBackends:
    """The PostgreSQL backends connected to one database: the server's work for this benchmark only, even
    when other databases on the same server are busy. The database is read from each backend's process
    title once per process (the title's state word changes, its database does not)."""

    name: str
    database: str
    exclude: frozenset[int] = frozenset()  # e.g. the benchmark's own monitoring connection
    root: Path = PROC
    counts_reaped: bool = False
    _verdicts: dict[tuple[int, int], bool] = field(default_factory=dict, repr=False)

    def sample(self, table: Mapping[int, ProcStat]) -> dict[SampleKey, int]:
        members: dict[SampleKey, int] = {}
        for stat in table.values():
            if stat.comm != "postgres":
                continue
            verdict = self._verdicts.get(stat.key)
            if verdict is None:
                title = read_cmdline(stat.pid, self.root)
                verdict = backend_database(title) == self.database and stat.pid not in self.exclude
                # A backend just forked still shows the postmaster's command line until it has read the
                # client's startup packet: only a title of its own is final.
                if title.startswith("postgres: "):
                    self._verdicts[stat.key] = verdict
            if verdict:
                members[stat.key] = stat.ticks
        return members


@dataclass
class PostgresServer:
    """Every PostgreSQL process (all databases, auxiliary processes) plus the backends the postmaster reaped
    during the phase: a complete but shared figure, noisy when other work uses the same server."""

    name: str
    counts_reaped: bool = True

    def sample(self, table: Mapping[int, ProcStat]) -> dict[SampleKey, int]:
        members: dict[SampleKey, int] = {}
        for stat in table.values():
            if stat.comm != "postgres":
                continue
            members[stat.key] = stat.ticks
            parent = table.get(stat.ppid)
            if parent is None or parent.comm != "postgres":  # the postmaster
                members[f"reaped:{stat.pid}:{stat.start}"] = stat.reaped_ticks
        return members


@dataclass(frozen=True)
class GroupCpu:
    """One group's CPU over one phase."""

    cpu_ms: float
    joined: int  # processes seen during the phase that were not there at its start
    left: int  # processes seen during the phase that were gone at its end


@dataclass(frozen=True)
class PhaseCpu:
    seconds: float
    groups: dict[str, GroupCpu]
    loadgen_ms: float  # this process, without the sampler thread
    sampler_ms: float
    # Busy share of all CPUs together over the phase, everybody's work (200 = both of two cores all the time).
    machine_busy_pct: float | None = None

    def ms(self, group: str) -> float | None:
        figure = self.groups.get(group)
        return None if figure is None else figure.cpu_ms


@dataclass
class _Phase:
    started: float
    process_cpu: float
    sampler_cpu: float
    base: dict[str, dict[SampleKey, int]]
    last: dict[str, dict[SampleKey, int]]
    machine: tuple[int, int] | None


class CpuMeter:
    """Samples ``groups`` every ``interval_s`` in a thread; :meth:`begin` / :meth:`end` bracket a phase.

    One phase at a time. The thread only updates the latest ticks of every member it sees, so a process that
    leaves during a phase keeps the CPU it had at its last sample.
    """

    def __init__(self, groups: Iterable[ProcessGroup], interval_s: float = 0.5, root: Path = PROC) -> None:
        self.groups = list(groups)
        self.interval_s = interval_s
        self.root = root
        self.available = (root / "self" / "stat").exists()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._phase: _Phase | None = None
        self._sampler_cpu = 0.0

    def add(self, group: ProcessGroup) -> None:
        with self._lock:
            self.groups.append(group)

    def start(self) -> CpuMeter:
        if self.available and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="cpu-meter", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self) -> dict[str, dict[SampleKey, int]]:
        """One scan; updates the running phase's latest ticks and returns who is alive now."""
        started = time.thread_time()
        table = scan(self.root)
        with self._lock:
            alive = {group.name: group.sample(table) for group in self.groups}
            if self._phase is not None:
                for name, members in alive.items():
                    self._phase.last.setdefault(name, {}).update(members)
            self._sampler_cpu += time.thread_time() - started
        return alive

    def _sampler_seconds(self) -> float:
        with self._lock:
            return self._sampler_cpu

    def begin(self) -> None:
        if not self.available:
            return
        alive = self._sample()
        with self._lock:
            self._phase = _Phase(
                started=time.perf_counter(),
                process_cpu=time.process_time(),
                sampler_cpu=self._sampler_cpu,
                base=alive,
                last={name: dict(members) for name, members in alive.items()},
                machine=machine_ticks(self.root),
            )

    def end(self) -> PhaseCpu | None:
        if not self.available or self._phase is None:
            return None
        alive = self._sample()
        process_cpu = time.process_time()
        machine_now = machine_ticks(self.root)
        with self._lock:
            phase, self._phase = self._phase, None
            sampler_s = self._sampler_cpu - phase.sampler_cpu
        figures: dict[str, GroupCpu] = {}
        for group in self.groups:
            base = phase.base.get(group.name, {})
            last = phase.last.get(group.name, {})
            now = alive.get(group.name, {})
            if group.counts_reaped:
                # Alive at the end: what they spent since the start (all of it when they are new); the
                # reaped counters: every departed member's whole life, so less what it had at the start.
                ticks = sum(value - base.get(key, 0) for key, value in now.items())
                ticks -= sum(
                    value for key, value in base.items() if isinstance(key, tuple) and key not in now
                )
            else:
                ticks = sum(value - base.get(key, 0) for key, value in last.items())
            processes = [key for key in last if isinstance(key, tuple)]
            figures[group.name] = GroupCpu(
                cpu_ms=ticks * 1000.0 / CLOCK_TICKS_PER_S,
                joined=sum(1 for key in processes if key not in base),
                left=sum(1 for key in processes if key not in now),
            )
        busy_pct = None
        if phase.machine is not None and machine_now is not None and machine_now[1] > phase.machine[1]:
            busy = machine_now[0] - phase.machine[0]
            busy_pct = 100.0 * (os.cpu_count() or 1) * busy / (machine_now[1] - phase.machine[1])
        return PhaseCpu(
            seconds=time.perf_counter() - phase.started,
            groups=figures,
            loadgen_ms=max(0.0, (process_cpu - phase.process_cpu - sampler_s) * 1000.0),
            sampler_ms=sampler_s * 1000.0,
            machine_busy_pct=busy_pct,
        )


def load_average() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except OSError:
        return None
