"""What each process kind may do on RabbitMQ and Redis, and applying it to a local broker.

RabbitMQ (per vhost): ``configure`` / ``write`` / ``read`` regexes on exchange and queue
names, plus topic permissions on the topic exchanges (``nameko-rpc``: which
``<service>.<method>`` a user may call, and RPC replies whose routing key is a uuid;
``trading.signals``: which routing keys). Derived from what each process declares,
publishes and consumes (docs/security.md has the table); RabbitMQ also asks, for a queue
declared with a dead-letter exchange, read on the queue and write on that exchange.

Redis: ACL users with read on everything and write only on their own key patterns, no
dangerous commands; the dashboard reads only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from scripts import lib
from shared import names
from shared.settings import RedisStreamsSettings, Settings

RPC_EXCHANGE = "nameko-rpc"
REPLY_KEY = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"  # uuid4
DEFAULT_EXCHANGE = "amq.default"

KINDS = ("brain", "risk", "execute", "notify", "feed", "dashboard", "telegram")
RABBIT_KINDS = ("brain", "risk", "execute", "notify", "dashboard", "telegram")
REDIS_KINDS = KINDS


@dataclass(frozen=True)
class RabbitGrant:
    configure: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    read: tuple[str, ...] = ()
    # topic exchange -> routing keys this user may publish with
    topics: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def _names(*items: str) -> tuple[str, ...]:
    return tuple(re.escape(i) for i in items)


def _rpc_service(svc: str, handles: Iterable[str] = ()) -> RabbitGrant:
    """A Nameko service: its RPC queue, its reply queues, its events, its event handlers'
    queues (bound to the source services' ``<source>.events``)."""
    own = (*_names(f"rpc-{svc}", RPC_EXCHANGE, f"{svc}.events"),
           rf"rpc\.reply-{re.escape(svc)}-.+", rf"evt-.+--{re.escape(svc)}\..+")
    sources = _names(*(f"{s}.events" for s in handles))
    return RabbitGrant(configure=own + sources, write=own, read=own + sources)


def _caller(caller: str) -> RabbitGrant:
    """A standalone RPC client (reply queues ``rpc.reply-<caller>-<uuid>``)."""
    own = (*_names(RPC_EXCHANGE), rf"rpc\.reply-{re.escape(caller)}-.+")
    return RabbitGrant(configure=own, write=own, read=own)


def _consumer(queue: str) -> RabbitGrant:
    """A durable consumer of ``queue``: it, its retry and dead-letter queues."""
    exchange = names.QUEUE_BINDINGS[queue][0]
    # and the queues fed by its dead letters (trade_execution.failed: execute's outcome)
    fed = [q for q, (ex, _, key) in names.QUEUE_BINDINGS.items()
           if ex == names.DEAD_LETTER_EXCHANGE and key == queue]
    mine = _names(queue, queue + names.RETRY_SUFFIX, queue + names.DLQ_SUFFIX, *fed)
    dlx = _names(names.DEAD_LETTER_EXCHANGE, DEFAULT_EXCHANGE)
    return RabbitGrant(configure=mine + _names(exchange, names.DEAD_LETTER_EXCHANGE),
                       write=mine + dlx, read=mine + _names(exchange,
                                                            names.DEAD_LETTER_EXCHANGE))


def _publisher(*exchanges: str) -> RabbitGrant:
    return RabbitGrant(write=_names(*exchanges))


def _merge(*grants: RabbitGrant, topics: Mapping[str, tuple[str, ...]]) -> RabbitGrant:
    return RabbitGrant(
        configure=tuple(dict.fromkeys(p for g in grants for p in g.configure)),
        write=tuple(dict.fromkeys(p for g in grants for p in g.write)),
        read=tuple(dict.fromkeys(p for g in grants for p in g.read)),
        topics=topics)


def _calls(*methods: str, replies: bool = True) -> tuple[str, ...]:
    return (*_names(*methods), *((REPLY_KEY,) if replies else ()))


B, R, E, N = names.BRAIN, names.RISK, names.EXECUTE, names.NOTIFY
ALERTS = names.RISK_EXCHANGE
SIGNALS = names.SIGNALS_EXCHANGE
RABBIT_GRANTS: dict[str, RabbitGrant] = {
    "brain": _merge(_rpc_service(B), _consumer(names.SIGNAL_QUEUE), _publisher(SIGNALS, ALERTS),
                    topics={RPC_EXCHANGE: _calls(f"{R}.check"),
                            SIGNALS: _names(names.SIGNAL_KEY, names.TRADE_KEY)}),
    "risk": _merge(_rpc_service(R, handles=(E,)), _publisher(ALERTS),
                   topics={RPC_EXCHANGE: _calls(f"{E}.rearm"), SIGNALS: ()}),
    "execute": _merge(_rpc_service(E), _consumer(names.TRADE_QUEUE),
                      _publisher(SIGNALS, ALERTS),
                      topics={RPC_EXCHANGE: _calls(f"{R}.check", f"{R}.set_state"),
                              SIGNALS: _names(names.TRADE_KEY)}),
    "notify": _merge(_rpc_service(N, handles=(B, E)), _consumer(names.RISK_ALERT_QUEUE),
                     topics={RPC_EXCHANGE: _calls(f"{R}.status", f"{E}.positions",
                                                  f"{E}.trades"), SIGNALS: ()}),
    "dashboard": _merge(_caller("dashboard"),
                        topics={RPC_EXCHANGE: _calls(f"{R}.status", f"{E}.positions",
                                                     f"{E}.trades"), SIGNALS: ()}),
    "telegram": _merge(_caller(names.TELEGRAM),
                       topics={RPC_EXCHANGE: _calls(f"{R}.status", f"{R}.set_state",
                                                    f"{E}.positions", f"{E}.close",
                                                    f"{E}.close_all", f"{E}.trades"),
                               SIGNALS: ()}),
}

NOTHING = "^$"


def regex(patterns: Iterable[str]) -> str:
    items = list(patterns)
    return f"^({'|'.join(items)})$" if items else NOTHING


# --------------------------------------------------------------------------- Redis

P = "phoenix95:"
AUTH_FAILURES = P + "authfail:*"
LEADERS = names.LEADER_KEY_PREFIX + "*"
REDIS_WRITES: dict[str, tuple[str, ...]] = {
    "feed": (P + "state:*", names.MARKET_STREAM, names.TRADE_STREAM),
    # trading_state: brain's intake script reads it, and Redis checks a script's keys for
    # write too; risk keeps the real state (its database) and re-checks every intent
    "brain": (P + "idem:*", P + "rate:*", AUTH_FAILURES, names.SIGNAL_STREAM,
              names.MARKET_STREAM, names.TRADE_STREAM, names.TRADING_STATE_KEY),
    # + LEADERS: the leases of the duties that run on one instance (shared/leader.py)
    "risk": (P + "risk:*", names.TRADING_STATE_KEY, AUTH_FAILURES, names.RISK_STREAM,
             names.MARKET_STREAM, names.TRADE_STREAM, LEADERS),
    "execute": (P + "lock:*", P + "execute:*", AUTH_FAILURES, names.TRADE_STREAM, LEADERS),
    "notify": (P + "notify:*", names.ALERT_OUTBOX_STREAM, AUTH_FAILURES, LEADERS),
    "telegram": (P + "telegram:*", names.ALERT_OUTBOX_STREAM, LEADERS),
    "dashboard": (),
}


def redis_acl_rules(kind: str, password: str) -> list[str]:
    """``ACL SETUSER`` arguments: read everything, write only ``REDIS_WRITES[kind]``."""
    rules = ["reset", "on", ">" + password, "%R~*"]
    rules += [f"%RW~{pattern}" for pattern in REDIS_WRITES[kind]]
    if REDIS_WRITES[kind]:
        rules += ["+@all", "-@dangerous"]
    else:  # read only: no write command at all
        rules += ["+@read", "+@connection", "-@dangerous"]
    return rules


# --------------------------------------------------------------------------- apply


def apply_rabbit(settings: Settings, envs: Mapping[str, Mapping[str, str]],
                 node: str | None = None) -> None:
    """Create/update each kind's user on the local broker (``node``: a lab node; users and
    permissions are cluster-wide) with its grants."""
    from scripts import infra

    mq = settings.message_queue
    users = lib.names_in(infra._ctl_ok("-q", "list_users", node=node).splitlines())
    for kind, grant in RABBIT_GRANTS.items():
        user = envs[kind]["PHOENIX__MESSAGE_QUEUE__USERNAME"]
        password = envs[kind]["PHOENIX__MESSAGE_QUEUE__PASSWORD"]
        if user not in users:
            infra._set_password("add_user", user, password, node=node)
        elif infra._ctl("-q", "authenticate_user", user, stdin=password + "\n",
                        node=node)[0] != 0:
            infra._set_password("change_password", user, password, node=node)
        infra._ctl_ok("set_permissions", "-p", mq.virtual_host, user, regex(grant.configure),
                      regex(grant.write), regex(grant.read), node=node)
        infra._ctl("-q", "clear_topic_permissions", "-p", mq.virtual_host, user, node=node)
        for exchange, keys in grant.topics.items():
            infra._ctl_ok("set_topic_permissions", "-p", mq.virtual_host, user, exchange,
                          regex(keys), ".*", node=node)
    lib.info(f"rabbitmq: {len(RABBIT_GRANTS)} per-process users with least permissions "
             f"on {mq.virtual_host} ({', '.join(RABBIT_GRANTS)})")


def apply_redis(settings: Settings, envs: Mapping[str, Mapping[str, str]],
                redis_settings: RedisStreamsSettings | None = None) -> None:
    """``ACL SETUSER`` each kind's user on the stack's Redis (as the admin connection), or
    on the one node ``redis_settings`` names (Redis does not replicate ACLs: a replica
    needs its own)."""
    from shared.redis_conn import redis_client

    client = redis_client(redis_settings or settings.redis_streams, socket_timeout=5)
    try:
        for kind in REDIS_KINDS:
            user = envs[kind]["PHOENIX__REDIS_STREAMS__USERNAME"]
            client.execute_command("ACL", "SETUSER", user,
                                   *redis_acl_rules(kind, envs[kind][
                                       "PHOENIX__REDIS_STREAMS__PASSWORD"]))
    finally:
        client.close()
    lib.info(f"redis: {len(REDIS_KINDS)} ACL users (write only on their own keys)")


# --------------------------------------------------------------------------- compose files


def rabbit_users_table(prefix: str = "phoenix95") -> str:
    """compose/rabbitmq/users.tsv: ``kind user configure write read`` then one
    ``topic user exchange write`` line per topic grant (the compose entrypoint applies it)."""
    lines = ["# generated by: python -m scripts.identities compose-files  (do not edit)"]
    for kind, grant in RABBIT_GRANTS.items():
        user = f"{prefix}_{kind}"
        lines.append("\t".join(("user", kind, user, regex(grant.configure),
                                regex(grant.write), regex(grant.read))))
        lines += ["\t".join(("topic", kind, user, exchange, regex(keys)))
                  for exchange, keys in grant.topics.items()]
    return "\n".join(lines) + "\n"


def redis_acl_template(prefix: str = "phoenix95") -> str:
    """compose/redis/users.acl.in: ``kind user rules`` (the start script adds passwords)."""
    lines = ["# generated by: python -m scripts.identities compose-files  (do not edit)"]
    for kind in REDIS_KINDS:
        rules = [r for r in redis_acl_rules(kind, "") if r not in ("reset", "on", ">")]
        lines.append(" ".join((kind, f"{prefix}_{kind}", *rules)))
    return "\n".join(lines) + "\n"
