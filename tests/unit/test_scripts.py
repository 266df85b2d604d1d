"""Behaviour of the pure helpers behind scripts/up, down, status and test."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scripts import _bootstrap, lib
from scripts import test as test_script
from scripts import up as up_script
from shared.settings import load_settings

# --------------------------------------------------------------------------- .env


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


def test_complete_env_file_is_left_byte_for_byte(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    lib.ensure_env_file(path)
    before = path.read_bytes()

    created, added = lib.ensure_env_file(path)

    assert (created, added) == (False, [])
    assert path.read_bytes() == before


def test_generated_env_file_validates_as_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in list(os.environ):
        if key.startswith("PHOENIX__"):
            monkeypatch.delenv(key)
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


# --------------------------------------------------------------------------- processes


def test_start_and_stop_a_managed_process(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    lib.prepare_run_dir(run_dir)
    spec = lib.ProcSpec("sleeper", (sys.executable, "-c",
                                    "import time; print('hello', flush=True); time.sleep(60)"))

    pid = lib.start_process(run_dir, spec, os.environ)
    try:
        assert lib.running_pid(run_dir, "sleeper") == pid
        deadline = time.monotonic() + 10
        while "hello" not in lib.log_file(run_dir, "sleeper").read_text():
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        how = lib.stop_process(pid, timeout=5)

    assert how == "stopped"
    assert lib.running_pid(run_dir, "sleeper") is None
    assert (run_dir / ".gitignore").read_text() == "*\n"


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_foreign_pid_is_not_ours(tmp_path: Path) -> None:
    # A pid file pointing at a live process we did not start (pid reuse) is ignored.
    lib.write_pid(lib.pid_file(tmp_path, "brain"), os.getpid(), "x")

    assert lib.running_pid(tmp_path, "brain") is None


def test_stale_pid_file_is_not_running(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    lib.write_pid(lib.pid_file(tmp_path, "risk"), proc.pid, lib.managed_tag(tmp_path, "risk"))

    assert lib.running_pid(tmp_path, "risk") is None


def test_down_stops_only_recorded_processes(tmp_path: Path) -> None:
    from scripts import down

    run_dir = tmp_path / "run"
    lib.prepare_run_dir(run_dir)
    ours = lib.start_process(run_dir, lib.ProcSpec(
        "notify", (sys.executable, "-c", "import time; time.sleep(60)")), os.environ)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        report = down.stop_all(run_dir, timeout=5)

        assert report == [f"notify: stopped (pid {ours})"]
        assert not lib.pid_alive(ours)
        assert bystander.poll() is None
        assert list(lib.pid_dir(run_dir).glob("*.pid")) == []
    finally:
        bystander.kill()
        bystander.wait()


# --------------------------------------------------------------------------- up / test


def test_process_specs_follow_settings(monkeypatch: pytest.MonkeyPatch,
                                       tmp_path: Path) -> None:
    env = tmp_path / ".env"
    lib.ensure_env_file(env)
    monkeypatch.setenv("PHOENIX_DOTENV", str(env))
    monkeypatch.setenv("PHOENIX__SERVICES__RISK_PORT", "18101")
    monkeypatch.delenv("PHOENIX__TELEGRAM__TOKEN", raising=False)
    monkeypatch.delenv("PHOENIX__TELEGRAM__CHAT_ID", raising=False)
    monkeypatch.setenv("PHOENIX__EXCHANGE__MODE", "paper")
    settings = load_settings()

    specs = {s.name: s for s in up_script.process_specs(settings, dashboard=False)}

    assert set(specs) == {"paper_exchange", "brain", "risk", "execute", "notify"}
    assert specs["risk"].health_url == f"http://{settings.services.host}:18101/health"
    assert specs["brain"].argv[1:] == ("-m", "nameko_services.runner", "brain")

    monkeypatch.setenv("PHOENIX__TELEGRAM__TOKEN", "t")
    monkeypatch.setenv("PHOENIX__TELEGRAM__CHAT_ID", "1")
    specs = {s.name: s for s in up_script.process_specs(load_settings(), dashboard=True)}
    assert {"dashboard", "telegram_worker"} <= set(specs)
    assert specs["dashboard"].health_url is not None
    assert specs["dashboard"].health_url.endswith("/_stcore/health")


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
