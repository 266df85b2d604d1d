"""Least privilege for a local stack: one RabbitMQ user, one Redis ACL user and one signing
identity per process kind, handed to each process through its supervisord environment.

``provision_users(settings, env_file)`` creates or updates them and returns
``{kind: env}``; ``with_identities(specs, envs)`` puts each env on its programs. Passwords
and signing keys are generated once into the stack's ``.env`` (0600) and reused.
User names are ``<message_queue.username>_<kind>``: the stack's admin user (the one in the
settings, used by scripts/up, scripts/dlq, ``nameko shell`` and the tests) prefixes them,
so several stacks can share one broker. The grants are in ``scripts/grants.py``.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from scripts import grants, lib
from shared import names
from shared.settings import Settings
from shared.signing import pair_key

# process kind -> the signer it is (names.SIGNERS); the others sign nothing
SIGNER_OF = {"brain": names.BRAIN, "risk": names.RISK, "execute": names.EXECUTE,
             "telegram": names.TELEGRAM}
OPERATOR_KEY_ENV = "PHOENIX__SECURITY__SIGNING_KEY"  # the operator's (scripts, tests)


def signer_key_env(signer: str) -> str:
    return f"PHOENIX95_SIGNING_KEY_{signer.upper()}"


def mq_password_env(kind: str) -> str:
    return f"PHOENIX95_MQ_PASSWORD_{kind.upper()}"


def redis_password_env(kind: str) -> str:
    return f"PHOENIX95_REDIS_PASSWORD_{kind.upper()}"


def _token() -> str:
    return secrets.token_urlsafe(32)


SECRET_GENERATORS: dict[str, Callable[[], str]] = {
    OPERATOR_KEY_ENV: _token,
    **{signer_key_env(s): _token for s in SIGNER_OF.values()},
    **{mq_password_env(k): _token for k in grants.RABBIT_KINDS},
    **{redis_password_env(k): _token for k in grants.REDIS_KINDS},
}


def kind_of(program: str) -> str | None:
    """The process kind of a supervisord program (``brain-2`` is a brain)."""
    if program == "telegram_worker":
        return "telegram"
    base = program.split("-", 1)[0]
    return base if base in grants.KINDS else None


def receivers_accepting() -> dict[str, set[str]]:
    """service -> the signers whose pair key it needs (RPCs, close requests, approvals)."""
    accepts: dict[str, set[str]] = {}
    for (service, _method), callers in names.SIGNED_RPCS.items():
        accepts.setdefault(service, set()).update(callers)
    accepts.setdefault(names.EXECUTE, set()).update(
        {*names.CLOSE_REQUEST_SIGNERS, names.RISK})
    return accepts


def signing_env(kind: str, secrets_env: Mapping[str, str]) -> dict[str, str]:
    """This kind's identity and own key, and the pair keys of the callers it accepts."""
    signer = SIGNER_OF.get(kind)
    own = secrets_env.get(signer_key_env(signer), "") if signer else ""
    env = {"PHOENIX__SECURITY__SIGNING_IDENTITY": signer or kind,
           "PHOENIX__SECURITY__SIGNING_KEY": own}
    for caller in sorted(receivers_accepting().get(kind, ())):
        master = (secrets_env.get(OPERATOR_KEY_ENV, "") if caller == names.OPERATOR
                  else secrets_env.get(signer_key_env(caller), ""))
        if master:
            env[f"PHOENIX__SECURITY__VERIFY_KEYS__{caller.upper()}"] = pair_key(master, kind)
    return env


def identity_envs(settings: Settings, secrets_env: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """``{kind: env}`` for every process kind (broker users, Redis user, signing)."""
    prefix = settings.message_queue.username
    envs: dict[str, dict[str, str]] = {}
    for kind in grants.KINDS:
        env = signing_env(kind, secrets_env)
        if kind in grants.RABBIT_KINDS:
            env["PHOENIX__MESSAGE_QUEUE__USERNAME"] = f"{prefix}_{kind}"
            env["PHOENIX__MESSAGE_QUEUE__PASSWORD"] = secrets_env[mq_password_env(kind)]
        if kind in grants.REDIS_KINDS:
            env["PHOENIX__REDIS_STREAMS__USERNAME"] = f"{prefix}_{kind}"
            env["PHOENIX__REDIS_STREAMS__PASSWORD"] = secrets_env[redis_password_env(kind)]
        envs[kind] = env
    return envs


def provision_users(settings: Settings, env_file: Path,
                    rabbit: bool = True, redis_acl: bool = True) -> dict[str, dict[str, str]]:
    """Generate missing secrets into ``env_file``, create/update the users, return the
    per-kind environments (see module doc)."""
    _, added = lib.ensure_env_file(env_file, SECRET_GENERATORS)
    if added:
        lib.info(f".env: generated {len(added)} per-process credentials and signing keys")
    secrets_env = lib.parse_env(env_file.read_text(encoding="utf-8"))
    envs = identity_envs(settings, secrets_env)
    if rabbit:
        grants.apply_rabbit(settings, envs)
    if redis_acl:
        grants.apply_redis(settings, envs)
    return envs


def provision_local(settings: Settings, env_file: Path,
                    node: str | None = None) -> dict[str, dict[str, str]]:
    """``provision_users`` where up can: RabbitMQ users need a local ``rabbitmqctl``
    (``node``: the stack's private node), Redis ACLs an admin connection; without them
    the processes keep the shared identity."""
    import shutil

    import redis

    rabbit = lib.is_local_host(settings.message_queue.host) and bool(shutil.which("rabbitmqctl"))
    try:
        envs = provision_users(settings, env_file, rabbit=False, redis_acl=False)
        if rabbit:
            grants.apply_rabbit(settings, envs, node=node)
        grants.apply_redis(settings, envs)
        redis_ok = True
    except redis.RedisError as exc:
        lib.warn(f"redis: per-process ACL users not created ({exc}); processes share "
                 "the configured Redis user")
        redis_ok = False
    for env in envs.values():
        for key in list(env):
            if (not rabbit and key.startswith("PHOENIX__MESSAGE_QUEUE__")) or \
                    (not redis_ok and key.startswith("PHOENIX__REDIS_STREAMS__")):
                del env[key]
    if not rabbit:
        lib.warn("rabbitmq: no local rabbitmqctl: processes share the configured user "
                 "(create the per-process users as in docs/security.md)")
    return envs


def with_identities(specs: Sequence[lib.ProcSpec],
                    envs: Mapping[str, Mapping[str, str]]) -> list[lib.ProcSpec]:
    """Each program with its kind's environment added (others unchanged)."""
    out = []
    for spec in specs:
        kind = kind_of(spec.name)
        extra = envs.get(kind, {}) if kind else {}
        out.append(replace(spec, env={**spec.env, **extra}) if extra else spec)
    return out
