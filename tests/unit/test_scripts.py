"""Behaviour of the pure helpers behind scripts/up, down, status and test."""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from scripts import _bootstrap, lib, supervise
from scripts import test as test_script
from scripts import up as up_script
from shared.settings import Settings, load_settings

# --------------------------------------------------------------------------- .env


@pytest.fixture
def no_phoenix_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the .env file under test configures the settings."""
    for key in list(os.environ):
        if key.startswith("PHOENIX__"):
            monkeypatch.delenv(key)


def test_new_env_file_is_private_and_holds_every_secret(tmp_path: Path) -> None:
    path = tmp_path / "sub" / ".env"

    created, added = lib.ensure_env_file(path)

    assert created is True
    assert added == list(lib.SECRET_GENERATORS)
    values = lib.parse_env(path.read_text())
    assert set(values) == set(lib.SECRET_GENERATORS)
    assert all(len(v) >= 20 for v in values.values())
    assert json.loads(values["PHOENIX__SECURITY__API_KEYS"])[0]
    if os.name != "nt":
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_generated_secrets_differ_between_files(tmp_path: Path) -> None:
    lib.ensure_env_file(tmp_path / "a.env")
    lib.ensure_env_file(tmp_path / "b.env")

    a = lib.parse_env((tmp_path / "a.env").read_text())
    b = lib.parse_env((tmp_path / "b.env").read_text())

    assert all(a[k] != b[k] for k in a)


def test_existing_values_are_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_text(
        "# mine\nPHOENIX__SECURITY__WEBHOOK_SECRET=keep-this\n"
        "export PHOENIX__EXCHANGE__API_KEY='quoted key'\nOTHER=1"  # no trailing newline
    )

    created, added = lib.ensure_env_file(path)

    assert created is False
    assert set(added) == set(lib.SECRET_GENERATORS) - {
        "PHOENIX__SECURITY__WEBHOOK_SECRET", "PHOENIX__EXCHANGE__API_KEY"}
    text = path.read_text()
    assert text.startswith("# mine\nPHOENIX__SECURITY__WEBHOOK_SECRET=keep-this\n")
    values = lib.parse_env(text)
    assert values["PHOENIX__SECURITY__WEBHOOK_SECRET"] == "keep-this"
    assert values["PHOENIX__EXCHANGE__API_KEY"] == "quoted key"
    assert values["OTHER"] == "1"
    assert set(lib.SECRET_GENERATORS) <= set(values)


def test_env_is_read_as_pydantic_settings_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_phoenix_env: None
) -> None:
    # inline comments, escapes and export: the script and the settings must see one value
    path = tmp_path / ".env"
    path.write_text(
        "PHOENIX__SECURITY__WEBHOOK_SECRET=abc123  # rotated monthly\n"
        'export PHOENIX__MESSAGE_QUEUE__PASSWORD="p\\"w#1"\n'
        "PHOENIX__TELEGRAM__CONFIRM_SECRET='lit $HOME # not a comment'\n"
        "JUST_A_KEY\n")
    lib.ensure_env_file(path)  # adds the other secrets the settings require
    monkeypatch.setenv("PHOENIX_DOTENV", str(path))

    values = lib.parse_env(path.read_text())
    settings = load_settings()

    assert values["PHOENIX__SECURITY__WEBHOOK_SECRET"] == "abc123"
    assert values["PHOENIX__MESSAGE_QUEUE__PASSWORD"] == 'p"w#1'
    assert values["PHOENIX__TELEGRAM__CONFIRM_SECRET"] == "lit $HOME # not a comment"
    assert "JUST_A_KEY" not in values
    assert settings.security.webhook_secret.get_secret_value() == values[
        "PHOENIX__SECURITY__WEBHOOK_SECRET"]
    assert settings.message_queue.password.get_secret_value() == values[
        "PHOENIX__MESSAGE_QUEUE__PASSWORD"]
    assert settings.telegram.confirm_secret.get_secret_value() == values[
        "PHOENIX__TELEGRAM__CONFIRM_SECRET"]


def test_complete_env_file_is_left_byte_for_byte(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    lib.ensure_env_file(path)
    before = path.read_bytes()

    created, added = lib.ensure_env_file(path)

    assert (created, added) == (False, [])
    assert path.read_bytes() == before


def test_generated_env_file_validates_as_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_phoenix_env: None
) -> None:
    path = tmp_path / ".env"
    lib.ensure_env_file(path)
    monkeypatch.setenv("PHOENIX_DOTENV", str(path))

    settings = load_settings()

    values = lib.parse_env(path.read_text())
    assert settings.security.webhook_secret.get_secret_value() == values[
        "PHOENIX__SECURITY__WEBHOOK_SECRET"]
    assert settings.security.api_key_values() == frozenset(
        json.loads(values["PHOENIX__SECURITY__API_KEYS"]))
    assert settings.message_queue.password.get_secret_value() == values[
        "PHOENIX__MESSAGE_QUEUE__PASSWORD"]


def test_process_environment_wins_over_env_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / ".env"
    lib.ensure_env_file(path)
    monkeypatch.setenv("PHOENIX_DOTENV", str(path))
    monkeypatch.setenv("PHOENIX__MESSAGE_QUEUE__PASSWORD", "from-the-shell")

    assert load_settings().message_queue.password.get_secret_value() == "from-the-shell"


def test_env_example_has_placeholders_only() -> None:
    example = Path(__file__).resolve().parents[2] / ".env.example"
    values = lib.parse_env(example.read_text())

    assert set(lib.SECRET_GENERATORS) <= set(values)
    for key in lib.SECRET_GENERATORS:
        assert "change-me" in values[key], key
    assert values["PHOENIX__TELEGRAM__TOKEN"] == ""


# --------------------------------------------------------------------------- health


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_health_wait_reports_the_part_that_never_became_healthy() -> None:
    clock = FakeClock()
    targets = {"brain": "http://h/brain", "risk": "http://h/risk"}

    def probe(url: str) -> tuple[bool, str]:
        return (True, "200") if url.endswith("brain") else (False, "Connection refused")

    result = lib.wait_for_health(targets, timeout=5, probe=probe, clock=clock,
                                 sleep=clock.sleep)

    assert result.ok == {"brain": "http://h/brain"}
    assert list(result.failed) == ["risk"]
    assert "Connection refused" in result.failed["risk"]
    assert "http://h/risk" in result.failed["risk"]
    assert not result.all_ok
    assert clock.now >= 5


def test_health_wait_fails_fast_when_the_process_died() -> None:
    clock = FakeClock()

    result = lib.wait_for_health(
        {"execute": "http://h/execute"}, timeout=90,
        alive=lambda name: False, probe=lambda url: (False, "refused"),
        clock=clock, sleep=clock.sleep,
    )

    assert "process exited" in result.failed["execute"]
    assert clock.now < 1


def test_health_wait_succeeds_once_every_part_answers() -> None:
    clock = FakeClock()
    calls: dict[str, int] = {}

    def probe(url: str) -> tuple[bool, str]:
        calls[url] = calls.get(url, 0) + 1
        return calls[url] >= 3, "starting"

    result = lib.wait_for_health({"a": "u1", "b": "u2"}, timeout=30, probe=probe,
                                 clock=clock, sleep=clock.sleep)

    assert result.all_ok
    assert set(result.ok) == {"a", "b"}


def test_http_ok_reports_refused_port() -> None:
    ok, reason = lib.http_ok("http://127.0.0.1:9/health", timeout=1)

    assert ok is False
    assert reason


def test_tail_returns_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("\n".join(str(i) for i in range(50)))

    assert lib.tail(log, 3) == ["47", "48", "49"]
    assert lib.tail(tmp_path / "missing.log") == []


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:19092", ("127.0.0.1", 19092)),
        ("kafka:9092,other:9093", ("kafka", 9092)),
        ("PLAINTEXT://broker:9094", ("broker", 9094)),
        ("justhost", ("justhost", 9092)),
        ("[::1]:9092", ("::1", 9092)),
    ],
)
def test_split_host_port(address: str, expected: tuple[str, int]) -> None:
    assert lib.split_host_port(address, 9092) == expected


def test_names_in_reads_first_column() -> None:
    lines = ["/\n", "/trading\tsomething", "guest\t[administrator]", ""]
    assert lib.names_in(lines) == {"/", "/trading", "guest"}


# --------------------------------------------------------------------------- supervisord


def _sleeper(name: str) -> lib.ProcSpec:
    code = f"import time; print('{name} up', flush=True); time.sleep(120)"
    return lib.ProcSpec(name, (sys.executable, "-c", code), env={"MARK": "100%"})


def _wait_for(condition: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_config_restarts_stops_groups_and_rotates_logs(tmp_path: Path) -> None:
    import configparser

    run_dir = tmp_path / "run"
    specs = [_sleeper("brain"), lib.ProcSpec("kafka", ("tansu", "broker"), priority=1)]

    text = supervise.render_config(run_dir, specs)

    conf = configparser.RawConfigParser()
    conf.read_string(text)
    assert conf["unix_http_server"]["file"] == str(supervise.socket_path(run_dir))
    assert conf["supervisord"]["pidfile"] == str(run_dir.resolve() / "supervisord.pid")
    for name in ("brain", "kafka"):
        program = conf[f"program:{name}"]
        assert program["autorestart"] == "true"
        assert program["autostart"] == "false"
        assert int(program["startsecs"]) > 0 and int(program["startretries"]) > 0
        assert program["stopasgroup"] == program["killasgroup"] == "true"
        assert program["stdout_logfile"] == str(lib.log_file(run_dir.resolve(), name))
        assert program["stdout_logfile_maxbytes"] and int(program["stdout_logfile_backups"]) > 0
    assert conf["program:kafka"]["priority"] == "1"
    assert 'MARK="100%%"' in conf["program:brain"]["environment"]  # % escaped for supervisord


def test_long_run_dir_gets_a_short_socket_path(tmp_path: Path) -> None:
    deep = tmp_path / ("x" * 120)

    path = supervise.socket_path(deep)

    assert len(str(path)) <= supervise.SOCKET_PATH_MAX
    assert path == supervise.socket_path(deep)  # stable: status and down find it again


def test_spawn_counts_restart_with_supervisord() -> None:
    lines = [
        "2026-01-01 00:00:00,000 INFO supervisord started with pid 10",
        "2026-01-01 00:00:01,000 INFO spawned: 'brain' with pid 11",
        "2026-01-01 00:00:02,000 INFO supervisord started with pid 20",
        "2026-01-01 00:00:03,000 INFO spawned: 'brain' with pid 21",
        "2026-01-01 00:00:04,000 WARN exited: brain (terminated by SIGKILL; not expected)",
        "2026-01-01 00:00:04,100 INFO spawned: 'brain' with pid 22",
        "2026-01-01 00:00:05,000 INFO spawned: 'risk' with pid 23",
    ]

    assert supervise.spawn_counts(lines) == {"brain": 2, "risk": 1}


@pytest.mark.skipif(os.name == "nt", reason="supervisord is POSIX only (WSL on Windows)")
def test_supervisord_restarts_a_killed_program_and_shutdown_stops_all(tmp_path: Path) -> None:
    import signal

    run_dir = tmp_path / "run"
    lib.prepare_run_dir(run_dir)
    specs = [_sleeper("alpha"), _sleeper("beta")]
    try:
        supervise.start_daemon(run_dir, specs)
        supervise.start_programs(run_dir, ["alpha", "beta"])
        first = _wait_for(lambda: supervise.programs(run_dir)["alpha"].pid, "alpha to start")

        os.kill(first, signal.SIGKILL)

        again = _wait_for(
            lambda: (info := supervise.programs(run_dir)["alpha"]).pid not in (0, first)
            and info.pid, "alpha to be restarted")
        assert supervise.restart_counts(run_dir) == {"alpha": 1, "beta": 0}
        _wait_for(lambda: "alpha up" in lib.log_file(run_dir, "alpha").read_text(), "log")
        pids = [again, supervise.programs(run_dir)["beta"].pid]
    finally:
        supervise.shutdown(run_dir, timeout=30)

    assert not supervise.answering(run_dir)
    assert not any(supervise.pid_alive(pid) for pid in pids)


@pytest.mark.skipif(os.name == "nt", reason="supervisord is POSIX only (WSL on Windows)")
def test_second_start_reloads_the_changed_config(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    lib.prepare_run_dir(run_dir)
    try:
        supervise.start_daemon(run_dir, [_sleeper("alpha")])

        message = supervise.start_daemon(run_dir, [_sleeper("alpha"), _sleeper("beta")])

        assert "added ['beta']" in message
        assert set(supervise.programs(run_dir)) == {"alpha", "beta"}
        assert "already running" in supervise.start_daemon(
            run_dir, [_sleeper("alpha"), _sleeper("beta")])
    finally:
        supervise.shutdown(run_dir, timeout=30)


@pytest.mark.skipif(os.name == "nt", reason="supervisord is POSIX only (WSL on Windows)")
def test_shutdown_kills_a_child_that_outlives_its_program(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    lib.prepare_run_dir(run_dir)
    child_pid = tmp_path / "child.pid"
    stubborn = ("import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                f"open({str(child_pid)!r}, 'w').write(str(os.getpid())); time.sleep(120)")
    parent = (f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
              f"{stubborn!r}]); time.sleep(120)")
    supervise.start_daemon(run_dir, [lib.ProcSpec("parent", (sys.executable, "-c", parent))])
    supervise.start_programs(run_dir, ["parent"])
    pid = int(_wait_for(lambda: child_pid.exists() and child_pid.read_text(), "the child"))

    message = supervise.shutdown(run_dir, timeout=30, leftover_timeout=1)

    assert "killed leftovers" in message
    _wait_for(lambda: not supervise.pid_alive(pid), "the stubborn child to be gone", 5)


def test_shutdown_without_supervisord_is_a_no_op(tmp_path: Path) -> None:
    assert supervise.shutdown(tmp_path) == "supervisord not running"


def test_status_row_shows_state_uptime_restarts_and_health() -> None:
    from scripts import status

    info = supervise.ProgramInfo("brain", "RUNNING", 4242, 3725.0, "pid 4242, uptime 1:02:05")

    name, ok, detail = status.program_row("brain", info, 2, "http://127.0.0.1:9/health")

    assert (name, ok) == ("brain", False)  # running, but /health does not answer
    assert "RUNNING" in detail and "pid 4242" in detail
    assert "up 1:02:05" in detail and "restarts 2" in detail
    assert "http://127.0.0.1:9/health ->" in detail


def test_status_row_of_a_program_supervisord_gave_up_on() -> None:
    from scripts import status

    info = supervise.ProgramInfo("risk", "FATAL", 0, None, "Exited too quickly")

    _, ok, detail = status.program_row("risk", info, 8, None)

    assert ok is False
    assert "FATAL" in detail and "restarts 8" in detail and "Exited too quickly" in detail


# --------------------------------------------------------------------------- up / test


def test_process_specs_follow_settings(monkeypatch: pytest.MonkeyPatch,
                                       tmp_path: Path) -> None:
    env = tmp_path / ".env"
    lib.ensure_env_file(env)
    monkeypatch.setenv("PHOENIX_DOTENV", str(env))
    monkeypatch.setenv("PHOENIX__SERVICES__RISK_PORT", "18101")
    monkeypatch.setenv("PHOENIX__SERVICES__BRAIN_PROCESSES", "1")
    monkeypatch.delenv("PHOENIX__TELEGRAM__TOKEN", raising=False)
    monkeypatch.delenv("PHOENIX__TELEGRAM__CHAT_ID", raising=False)
    monkeypatch.setenv("PHOENIX__EXCHANGE__MODE", "paper")
    monkeypatch.delenv("PHOENIX__EXCHANGE__REST_URL", raising=False)
    monkeypatch.delenv("PHOENIX__EXCHANGE__WS_URL", raising=False)
    settings = load_settings()

    specs = {s.name: s for s in up_script.process_specs(settings, dashboard=False)}

    expected = {"paper_exchange", "brain", "risk", "execute", "notify"}
    assert set(specs) == expected | {"feed"}
    assert specs["risk"].health_url == f"http://{settings.services.host}:18101/health"
    assert specs["brain"].argv[1:] == ("-m", "nameko_services.runner", "brain")

    monkeypatch.setenv("PHOENIX__TELEGRAM__TOKEN", "t")
    monkeypatch.setenv("PHOENIX__TELEGRAM__CHAT_ID", "1")
    specs = {s.name: s for s in up_script.process_specs(load_settings(), dashboard=True)}
    assert {"dashboard", "telegram_worker"} <= set(specs)
    assert specs["dashboard"].health_url is not None
    assert specs["dashboard"].health_url.endswith("/_stcore/health")
    assert specs["paper_exchange"].priority < specs["brain"].priority  # started first


def _settings_with(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **env: str) -> Settings:
    dotenv = tmp_path / ".env"
    lib.ensure_env_file(dotenv)
    for key in [k for k in os.environ if k.startswith("PHOENIX")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PHOENIX_DOTENV", str(dotenv))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return load_settings()


@pytest.mark.parametrize("configured,expected", [("3", 3), ("1", 1), ("0", os.cpu_count())])
def test_brain_runs_as_many_processes_as_configured_or_one_per_core(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, configured: str, expected: int
) -> None:
    settings = _settings_with(monkeypatch, tmp_path,
                              PHOENIX__SERVICES__BRAIN_PROCESSES=configured)

    specs = [s for s in up_script.process_specs(settings, dashboard=False)
             if s.argv[-1] == "brain"]

    assert len(specs) == expected
    assert len({s.name for s in specs}) == expected  # each its own supervisord program
    assert [s.health_url is not None for s in specs].count(True) == 1


def test_paper_exchange_with_a_rest_url_is_started_separately(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = _settings_with(monkeypatch, tmp_path,
                              PHOENIX__EXCHANGE__REST_URL="http://127.0.0.1:9999")

    names = {s.name for s in up_script.process_specs(settings, dashboard=False)}

    assert "paper_exchange" not in names
    assert "brain" in names


def test_telegram_enabled_false_starts_no_telegram_worker(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = _settings_with(monkeypatch, tmp_path, PHOENIX__TELEGRAM__TOKEN="t",
                              PHOENIX__TELEGRAM__CHAT_ID="1", PHOENIX__TELEGRAM__ENABLED="false")

    names = {s.name for s in up_script.process_specs(settings, dashboard=False)}

    assert "telegram_worker" not in names


def test_feed_is_started_and_health_checked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = _settings_with(monkeypatch, tmp_path, PHOENIX__SERVICES__FEED_PORT="18104")

    specs = {s.name: s for s in up_script.process_specs(settings, dashboard=False)}

    assert specs["feed"].argv[1:] == ("-m", "nameko_services.feed")
    assert specs["feed"].health_url == f"http://{settings.services.host}:18104/health"
    assert specs["paper_exchange"].priority < specs["feed"].priority


def test_isolated_environment_never_points_at_user_resources() -> None:
    base = {"PATH": "/bin", "PHOENIX__MESSAGE_QUEUE__VIRTUAL_HOST": "/trading",
            "PHOENIX_DOTENV": ".env", "PHOENIX__SECURITY__WEBHOOK_SECRET": "users"}

    env = test_script.isolated_environment(base)

    assert env["PATH"] == "/bin"
    assert env["PHOENIX__MESSAGE_QUEUE__VIRTUAL_HOST"] == "/trading_test"
    assert env["PHOENIX__MESSAGE_QUEUE__USERNAME"] != "phoenix95"
    assert env["PHOENIX_DOTENV"] == ".run-test/.env.test"
    assert "PHOENIX__SECURITY__WEBHOOK_SECRET" not in env
    assert test_script.redis_db_index(env["PHOENIX__REDIS_STREAMS__URL"]) == 1
    assert env["PHOENIX__SERVICES__RUN_DIR"] == ".run-test"
    assert env["PHOENIX__SERVICES__FEED_PORT"] == "18104"
    ports = [v for k, v in env.items() if k.endswith("_PORT")]
    assert ports and all(int(p) >= 18000 for p in ports)


def test_requirements_stamp_controls_reinstall(tmp_path: Path) -> None:
    req = tmp_path / "requirements.txt"
    stamp = tmp_path / "stamp"
    req.write_text("x\n")
    assert _bootstrap.requirements_stale(req, stamp)

    stamp.touch()
    os.utime(req, (time.time() - 100, time.time() - 100))
    assert not _bootstrap.requirements_stale(req, stamp)

    os.utime(req, (time.time() + 100, time.time() + 100))
    assert _bootstrap.requirements_stale(req, stamp)
