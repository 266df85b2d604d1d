"""Start one Phoenix 95 service as ``nameko run``, after validating the configuration.

``python -m nameko_services.runner brain`` checks the settings (one line and exit 2 on a
bad value, before anything connects), writes the Nameko config for that service
(AMQP URI, its HTTP address, worker pool) into the run folder and replaces itself with
``nameko run --config <file> nameko_services.brain.service``. Works the same on Windows.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from shared.names import SERVICES
from shared.settings import Settings, settings_or_exit


def nameko_config(settings: Settings, service: str) -> dict[str, object]:
    mq = settings.message_queue
    tls = {"AMQP_SSL": mq.ssl_options()} if mq.ssl else {}
    return {
        **tls,
        "AMQP_URI": mq.amqp_uri,
        # bind_host, not host: 0.0.0.0 in a container, while callers use its DNS name
        "WEB_SERVER_ADDRESS": f"{settings.services.bind_address()}:"
                              f"{settings.services.port_of(service)}",
        "max_workers": mq.max_workers,
        "HEARTBEAT": mq.heartbeat,
        "TRANSPORT_OPTIONS": {
            "max_retries": mq.retries,
            "interval_start": mq.retry_delay,
            "interval_step": mq.retry_delay,
            "interval_max": mq.retry_delay,
        },
        "serializer": "json",
        "LOGGING": {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {
                "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
            },
            "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
            "root": {"level": os.environ.get("PHOENIX_LOG_LEVEL", "INFO"),
                     "handlers": ["console"]},
        },
    }


def write_config(settings: Settings, service: str) -> Path:
    run_dir = settings.services.run_path()
    run_dir.mkdir(parents=True, exist_ok=True)
    # one file per port: two instances of a service (the HA lab) listen on two ports
    path = run_dir / f"nameko-{service}-{settings.services.port_of(service)}.yaml"
    # The file holds the broker password: readable by its owner only. Written aside and
    # renamed: several brain processes start at once and must never read it half written.
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        yaml.safe_dump(nameko_config(settings, service), fh)
    os.replace(tmp, path)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("service", choices=SERVICES)
    args = parser.parse_args(argv)
    settings = settings_or_exit()
    config_path = write_config(settings, args.service)
    nameko = Path(sys.executable).with_name("nameko.exe" if os.name == "nt" else "nameko")
    command = [
        str(nameko), "run", "--config", str(config_path),
        f"nameko_services.{args.service}.service",
    ]
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
