"""supervisord runs every process ``scripts/up`` starts; this module writes its config and talks
to it over XML-RPC on a unix socket in the run folder.

Why supervisord: it restarts a crashed program (with back-off while it keeps failing at
start), rotates the logs, stops whole process groups, and knows each program's state, so the
scripts keep no pid files of their own. supervisord needs fork and POSIX signals: on Windows
the scripts run under WSL2.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import signal
import sys
import tempfile
import time
import xmlrpc.client
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from scripts import lib

CONF = "supervisord.conf"
PIDFILE = "supervisord.pid"
LOG = "supervisord.log"
LOG_MAXBYTES = "10MB"
LOG_BACKUPS = 5
# A program must stay up START_SECS to count as started; while it keeps dying sooner,
# supervisord waits 1 s, 2 s, ... START_RETRIES s between attempts, then marks it FATAL.
START_SECS = 3
START_RETRIES = 8
STOP_WAIT_SECS = 15
SOCKET_PATH_MAX = 100  # AF_UNIX paths are limited to ~107 bytes
ALIVE_STATES = frozenset({"STARTING", "RUNNING", "BACKOFF", "EXITED"})
WSL_ONLY = ("Windows is supported through WSL2 only: supervisord, which runs and restarts "
            "the processes, needs fork() and POSIX signals that native Windows lacks. "
            "Run the scripts inside a WSL2 shell.")


class SupervisorError(RuntimeError):
    """supervisord did not start or did not answer; the message says why."""


@dataclass(frozen=True)
class ProgramInfo:
    name: str
    state: str
    pid: int
    uptime_s: float | None
    description: str


def require_posix() -> None:
    if os.name == "nt":
        print(f"error: {WSL_ONLY}", file=sys.stderr)
        raise SystemExit(2)


def socket_path(run_dir: Path) -> Path:
    """``<run_dir>/supervisor.sock``, or a short path in the temp folder when that is too long."""
    path = run_dir.resolve() / "supervisor.sock"
    if len(str(path)) <= SOCKET_PATH_MAX:
        return path
    digest = hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"phoenix95-{digest}.sock"


def conf_path(run_dir: Path) -> Path:
    return run_dir / CONF


def pid_path(run_dir: Path) -> Path:
    return run_dir / PIDFILE


def log_path(run_dir: Path) -> Path:
    return lib.log_dir(run_dir) / LOG


def _quote(value: str) -> str:
    return value.replace("%", "%%")  # supervisord expands %(name)s in every value


def _environment(env: Mapping[str, str]) -> str:
    items = {"PYTHONUNBUFFERED": "1", **env}
    return ",".join(f'{k}="{_quote(v)}"' for k, v in items.items()
                    if '"' not in v and "\n" not in v)


def render_config(run_dir: Path, specs: Sequence[lib.ProcSpec]) -> str:
    """The supervisord configuration for ``specs``; every program starts when up says so."""
    run = run_dir.resolve()
    logs = lib.log_dir(run)
    sock = socket_path(run)
    lines = [
        "; written by scripts/up on every run; edit the settings instead",
        "[unix_http_server]", f"file={_quote(str(sock))}", "chmod=0700", "",
        "[supervisord]",
        f"logfile={_quote(str(log_path(run)))}",
        f"logfile_maxbytes={LOG_MAXBYTES}", f"logfile_backups={LOG_BACKUPS}",
        f"pidfile={_quote(str(pid_path(run)))}",
        f"childlogdir={_quote(str(logs))}",
        f"directory={_quote(str(lib.ROOT))}",
        f"identifier=phoenix95:{_quote(str(run))}",
        "nodaemon=false", "minfds=1024", "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface", "",
        "[supervisorctl]", f"serverurl=unix://{_quote(str(sock))}", "",
    ]
    for spec in specs:
        lines += [
            f"[program:{spec.name}]",
            f"command={_quote(shlex.join(spec.argv))}",
            f"directory={_quote(str(lib.ROOT))}",
            f"priority={spec.priority}",
            "autostart=false",  # up starts them in stages, each stage once the last is healthy
            "autorestart=true",
            f"startsecs={START_SECS}", f"startretries={START_RETRIES}",
            "stopsignal=TERM", f"stopwaitsecs={STOP_WAIT_SECS}",
            "stopasgroup=true", "killasgroup=true",
            "redirect_stderr=true",
            f"stdout_logfile={_quote(str(lib.log_file(run, spec.name)))}",
            f"stdout_logfile_maxbytes={LOG_MAXBYTES}",
            f"stdout_logfile_backups={LOG_BACKUPS}",
            f"environment={_environment(spec.env)}",
            "",
        ]
    return "\n".join(lines)


def client(run_dir: Path) -> Any:
    """An XML-RPC proxy to the supervisord of ``run_dir`` (it may not be running)."""
    from supervisor.xmlrpc import SupervisorTransport

    transport = SupervisorTransport(None, None, f"unix://{socket_path(run_dir)}")
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)


def answering(run_dir: Path) -> bool:
    """True when the supervisord of ``run_dir`` answers on its socket."""
    if not socket_path(run_dir).exists():
        return False
    try:
        return bool(client(run_dir).supervisor.getState()["statename"] == "RUNNING")
    except (OSError, xmlrpc.client.Error):
        return False


def start_daemon(run_dir: Path, specs: Sequence[lib.ProcSpec], timeout: float = 30.0) -> str:
    """Write the config; start supervisord, or make the running one load the new config."""
    conf = conf_path(run_dir)
    conf.write_text(render_config(run_dir, specs), encoding="utf-8")
    if answering(run_dir):
        return reload(run_dir)
    cmd = [sys.executable, "-m", "supervisor.supervisord", "-c", str(conf)]
    code, out = lib.run_quiet(cmd, timeout=timeout)  # returns once it has daemonised
    if code != 0:
        raise SupervisorError(f"supervisord failed to start ({code}): {out.strip()[-1000:]}")
    deadline = time.monotonic() + timeout
    while not answering(run_dir):
        if time.monotonic() > deadline:
            raise SupervisorError(f"supervisord did not answer on {socket_path(run_dir)} "
                                  f"within {timeout:.0f}s; see {log_path(run_dir)}")
        time.sleep(0.1)
    return f"supervisord started (pid {read_pid(run_dir)}), config {conf}"


def reload(run_dir: Path) -> str:
    """Apply a changed config to the running supervisord (what ``supervisorctl update`` does)."""
    rpc = client(run_dir).supervisor
    added, changed, removed = rpc.reloadConfig()[0]
    for name in [*changed, *removed]:
        rpc.stopProcessGroup(name, True)
        rpc.removeProcessGroup(name)
    for name in [*changed, *added]:
        rpc.addProcessGroup(name)
    if not (added or changed or removed):
        return "supervisord already running with this config"
    return (f"supervisord reloaded: added {sorted(added)}, changed {sorted(changed)}, "
            f"removed {sorted(removed)}")


def start_programs(run_dir: Path, names: Iterable[str]) -> list[str]:
    """Start every program of ``names`` that is not already up; return one line per program."""
    rpc = client(run_dir).supervisor
    report = []
    for name in names:
        state = rpc.getProcessInfo(name)["statename"]
        if state in {"STARTING", "RUNNING", "BACKOFF"}:
            report.append(f"{name}: already {state.lower()}")
            continue
        rpc.startProcess(name, False)  # do not block: health is waited for afterwards
        report.append(f"{name}: starting, log {lib.log_file(run_dir, name)}")
    return report


def programs(run_dir: Path) -> dict[str, ProgramInfo]:
    """State of every program supervisord knows, by name."""
    infos = cast(list[dict[str, Any]], client(run_dir).supervisor.getAllProcessInfo())
    result = {}
    for info in infos:
        running = info["statename"] == "RUNNING" and info["start"]
        result[info["name"]] = ProgramInfo(
            name=info["name"], state=info["statename"], pid=int(info["pid"]),
            uptime_s=float(info["now"] - info["start"]) if running else None,
            description=str(info["description"]),
        )
    return result


def state_of(run_dir: Path, name: str) -> str:
    try:
        return str(client(run_dir).supervisor.getProcessInfo(name)["statename"])
    except (OSError, xmlrpc.client.Error):
        return "UNKNOWN"


_SPAWNED = re.compile(r"spawned: '([^']+)' with pid")
_STARTED = "supervisord started with pid"


def spawn_counts(log_lines: Iterable[str]) -> dict[str, int]:
    """How often each program was spawned since supervisord last started."""
    counts: dict[str, int] = {}
    for line in log_lines:
        if _STARTED in line:
            counts = {}
            continue
        match = _SPAWNED.search(line)
        if match:
            counts[match.group(1)] = counts.get(match.group(1), 0) + 1
    return counts


def restart_counts(run_dir: Path) -> dict[str, int]:
    """Restarts per program (spawns after the first) since supervisord started."""
    log = log_path(run_dir)
    files = [log.with_name(f"{log.name}.{i}") for i in range(LOG_BACKUPS, 0, -1)] + [log]
    lines: list[str] = []
    for path in files:
        try:
            lines += path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
    return {name: max(0, n - 1) for name, n in spawn_counts(lines).items()}


def read_pid(run_dir: Path) -> int | None:
    try:
        return int(pid_path(run_dir).read_text(encoding="utf-8").split()[0])
    except (OSError, IndexError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (an orphan may wait long for its reaper)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in {"Z", "X"}


def group_alive(pgid: int) -> bool:
    """True while a live (non-zombie) process is left in process group ``pgid``."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in {"Z", "X"}:
            return True
    return False


def _reap_groups(pgids: Sequence[int], timeout: float) -> list[int]:
    """Wait for ``pgids`` to empty; SIGKILL what is left; return the groups that needed it.

    supervisord waits for each program's main process only; a child of it that outlives
    its parent (and may still hold its port) is in the program's group.
    """
    deadline = time.monotonic() + timeout
    pending = [g for g in pgids if group_alive(g)]
    while pending and time.monotonic() < deadline:
        time.sleep(0.1)
        pending = [g for g in pending if group_alive(g)]
    for pgid in pending:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return pending


STOPPED_STATES = frozenset({"STOPPED", "EXITED", "FATAL", "UNKNOWN"})
NOT_RUNNING_FAULT = 70  # supervisor.xmlrpc.Faults.NOT_RUNNING


def stop_in_tiers(run_dir: Path, timeout: float = STOP_WAIT_SECS + 5) -> None:
    """Stop the programs by priority tier, the last started first, every program of a tier
    at once (the services, then the feed, then the paper exchange, then Kafka).

    supervisord's own shutdown stops one program after the other: each nameko service
    takes 3-8 s to stop gracefully, so the stack took 25-50 s to stop that way.
    """
    rpc = client(run_dir).supervisor
    tiers: dict[int, list[str]] = {}
    for info in cast(list[dict[str, Any]], rpc.getAllConfigInfo()):
        tiers.setdefault(int(info["process_prio"]), []).append(str(info["name"]))
    for priority in sorted(tiers, reverse=True):
        names = tiers[priority]
        for name in names:
            try:
                rpc.stopProcess(name, False)  # SIGTERM now; waited for below, together
            except xmlrpc.client.Fault as fault:
                if fault.faultCode != NOT_RUNNING_FAULT:
                    raise
        deadline = time.monotonic() + timeout
        while any(state_of(run_dir, n) not in STOPPED_STATES for n in names) \
                and time.monotonic() < deadline:
            time.sleep(0.1)


def shutdown(run_dir: Path, timeout: float = 90.0,
             leftover_timeout: float = STOP_WAIT_SECS) -> str:
    """Stop every program (tier by tier, see :func:`stop_in_tiers`) and supervisord itself,
    then make sure no process is left in any program's process group."""
    pid = read_pid(run_dir)
    if not answering(run_dir):
        if pid is not None and pid_alive(pid):
            raise SupervisorError(f"supervisord (pid {pid}) does not answer on "
                                  f"{socket_path(run_dir)}; stop it by hand")
        return "supervisord not running"
    # supervisord starts each program in a process group of its own (pgid = its pid).
    groups = [info.pid for info in programs(run_dir).values() if info.pid]
    stop_in_tiers(run_dir)
    client(run_dir).supervisor.shutdown()  # whatever did not stop in time, and itself
    deadline = time.monotonic() + timeout
    while pid is not None and pid_alive(pid):
        if time.monotonic() > deadline:
            raise SupervisorError(f"supervisord (pid {pid}) still running after {timeout:.0f}s")
        time.sleep(0.1)
    killed = _reap_groups(groups, leftover_timeout)
    extra = f"; killed leftovers in process groups {killed}" if killed else ""
    return f"supervisord stopped with every program (pid {pid}){extra}"
