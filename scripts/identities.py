"""Per-process credentials for compose and k8s (scripts/up provisions its own stack).

    python -m scripts.identities env [--from FILE]   # print the secret lines to append
                                                     # to compose's env file / k8s Secret
    python -m scripts.identities compose-files       # rewrite compose/rabbitmq/users.tsv
                                                     # and compose/redis/users.acl.in

``env`` keeps every value already in ``--from`` (rotation: delete a line, run again) and
derives the receivers' verification keys (``PHOENIX95_VERIFY_<RECEIVER>_<CALLER>``) from
the signers' own keys, so each container is given only its own key and those pair keys.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path

from scripts import grants, lib, provision
from shared import names
from shared.signing import pair_key

COMPOSE = lib.ROOT / "compose"
REDIS_ADMIN_ENV = "PHOENIX95_REDIS_ADMIN_PASSWORD"  # Redis's default user (operator only)


def verify_env(receiver: str, caller: str) -> str:
    return f"PHOENIX95_VERIFY_{receiver.upper()}_{caller.upper()}"


def secret_lines(existing: Mapping[str, str]) -> dict[str, str]:
    """Every per-process secret (kept from ``existing``, else new), plus the pair keys."""
    generators = {**provision.SECRET_GENERATORS, REDIS_ADMIN_ENV: provision._token}
    values = {k: existing.get(k) or gen() for k, gen in generators.items()}
    for receiver, callers in sorted(provision.receivers_accepting().items()):
        for caller in sorted(callers):
            own = values[provision.OPERATOR_KEY_ENV if caller == names.OPERATOR
                         else provision.signer_key_env(caller)]
            values[verify_env(receiver, caller)] = pair_key(own, receiver)
    return values


def write_compose_files(root: Path = COMPOSE) -> list[Path]:
    users = root / "rabbitmq" / "users.tsv"
    acl = root / "redis" / "users.acl.in"
    acl.parent.mkdir(parents=True, exist_ok=True)
    users.write_text(grants.rabbit_users_table(), encoding="utf-8")
    acl.write_text(grants.redis_acl_template(), encoding="utf-8")
    return [users, acl]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("env", "compose-files"))
    parser.add_argument("--from", dest="source", type=Path,
                        help="env file whose values are kept (new ones only for the missing)")
    args = parser.parse_args(argv)
    if args.what == "compose-files":
        for path in write_compose_files():
            print(f"wrote {path.relative_to(lib.ROOT)}")
        return 0
    existing = lib.parse_env(args.source.read_text(encoding="utf-8")) if args.source else {}
    for key, value in secret_lines(existing).items():
        if key not in existing:
            sys.stdout.write(f"{key}={value}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
