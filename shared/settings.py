"""Typed, frozen settings: config.yaml, overridden by ``PHOENIX__<SECTION>__<KEY>``.

Precedence (highest first): process environment, the git-ignored ``.env`` file,
``config.yaml`` (path in ``PHOENIX_CONFIG``, default: the repository's), field defaults.
Settings are validated once, at the edge of each process; a bad value raises
:class:`ConfigError` whose message is one line naming the key, the value and what is
allowed, before anything connects anywhere.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

ROOT = Path(__file__).resolve().parents[1]
ENV_PREFIX = "PHOENIX__"
CONFIG_ENV = "PHOENIX_CONFIG"
DOTENV_ENV = "PHOENIX_DOTENV"

Fraction = Annotated[float, Field(gt=0.0, le=1.0)]
Port = Annotated[int, Field(ge=1, le=65535)]
MIN_API_KEY_LENGTH = 24


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TradingSettings(_Section):
    allowed_symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT", "BNBUSDT", "ADAUSDT", "DOGEUSDT")
    min_confidence: Annotated[float, Field(ge=0.0, le=1.0)] = 0.25
    max_position_size: Fraction = 0.15
    kelly_fraction: Fraction = 0.20
    max_open_positions: Annotated[int, Field(ge=1, le=100)] = 5
    allow_same_symbol_position: bool = False
    sizing: Literal["kelly", "fixed"] = "kelly"
    fixed_margin_fraction: Fraction = 0.05
    # The brief's name for phoenix_95.threshold; Settings folds it in (both set: must agree).
    phoenix_95_threshold: Annotated[float | None, Field(ge=0.0, le=1.0)] = None

    @field_validator("allowed_symbols")
    @classmethod
    def _upper_symbols(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one symbol is required")
        return tuple(s.strip().upper() for s in value)


class LeverageSettings(_Section):
    leverage: Annotated[int, Field(ge=1, le=125)] = 20
    margin_mode: Literal["ISOLATED"] = "ISOLATED"
    stop_loss_percent: Annotated[float, Field(gt=0.0, lt=0.5)] = 0.02
    take_profit_percent: Annotated[float, Field(gt=0.0, lt=5.0)] = 0.02
    liquidation_buffer: Annotated[float, Field(ge=0.0, le=10.0)] = 0.1


class Phoenix95Settings(_Section):
    threshold: Annotated[float, Field(ge=0.0, le=1.0)] = 0.45
    execute_threshold: Annotated[float, Field(ge=0.0, le=1.0)] = 0.85
    multiplier: Annotated[float, Field(gt=0.0, le=10.0)] = 1.3
    weight: Annotated[float, Field(ge=0.0, le=1.0)] = 0.95
    analysis_timeout: Annotated[float, Field(gt=0.0, le=600.0)] = 30.0
    cache_duration: Annotated[float, Field(ge=0.0, le=86400.0)] = 120.0
    model_path: str = ""  # empty: the shipped nameko_services/brain/model/phoenix95_model.json
    # the alert's confidence, tilted by the market model's edge, is the Beta prior's mean
    confidence_prior: bool = True


class SecuritySettings(_Section):
    webhook_secret: SecretStr = SecretStr("")
    api_keys: tuple[SecretStr, ...] = ()
    rate_limit_per_minute: Annotated[int, Field(ge=1, le=100000)] = 120
    max_alert_age_seconds: Annotated[int, Field(ge=1, le=86400)] = 300
    max_clock_skew_seconds: Annotated[int, Field(ge=0, le=3600)] = 30
    source_allowlist_enabled: bool = False
    source_allowlist: tuple[str, ...] = (
        "52.89.214.238", "34.212.75.30", "54.218.53.128", "52.32.178.7",
    )
    # addresses or networks (CIDR) of the proxies in front of brain; X-Forwarded-For is
    # believed from them only
    trusted_proxies: tuple[str, ...] = ()
    # Failed X-API-Key attempts per client (Redis): past the limit inside the window the
    # client waits 2**(failures - limit) s, up to auth_max_lockout_s. 0 = no slow-down.
    auth_failure_limit: Annotated[int, Field(ge=0, le=100000)] = 20
    auth_failure_window_s: Annotated[int, Field(ge=1, le=86400)] = 300
    auth_max_lockout_s: Annotated[int, Field(ge=1, le=86400)] = 900
    auth_failure_redis_url: str = ""  # "" = redis_streams.url
    # Signed caller identity (shared/signing.py): who this process signs as, with its own
    # key; and, per caller this process's service accepts, the key pair-derived for it
    # (never the caller's own key). scripts/up gives each process only its own.
    signing_identity: str = "operator"
    signing_key: SecretStr = SecretStr("")
    verify_keys: dict[str, SecretStr] = {}
    signature_max_age_s: Annotated[float, Field(gt=0.0, le=3600.0)] = 60.0

    @field_validator("trusted_proxies")
    @classmethod
    def _addresses_or_networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        import ipaddress

        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is neither an IP address nor a CIDR network "
                                 "(e.g. 10.244.0.0/16)") from None
        return value

    def api_key_values(self) -> frozenset[str]:
        return frozenset(k.get_secret_value() for k in self.api_keys)

    @field_validator("signing_identity")
    @classmethod
    def _identity(cls, value: str) -> str:
        # it names the reply queues too (rpc.reply-<identity>-<uuid>, broker grants)
        if not value.replace("_", "").isalnum() or not value.islower():
            raise ValueError("lower-case letters, digits and _ only (e.g. operator, brain)")
        return value

    @field_validator("verify_keys")
    @classmethod
    def _known_callers(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        from shared.names import SIGNERS

        unknown = sorted(set(value) - set(SIGNERS))
        if unknown:
            raise ValueError(f"unknown caller(s) {', '.join(unknown)}; one of "
                             f"{', '.join(SIGNERS)}")
        return value


class TelegramSettings(_Section):
    enabled: bool = True  # false keeps Telegram off even with a token and chat id
    token: SecretStr = SecretStr("")
    chat_id: str = ""
    api_base_url: str = "https://api.telegram.org/bot"
    # quiet: trades, risk alerts, state changes, service health, daily summary;
    # normal: + rejected signals; verbose: + accepted signals
    verbosity: Literal["quiet", "normal", "verbose"] = "normal"
    daily_summary_hour: Annotated[int, Field(ge=-1, le=23)] = 21  # UTC hour; -1 = off
    command_poll_timeout: Annotated[int, Field(ge=0, le=50)] = 20  # getUpdates long poll, s
    # Who may command the bot: a command needs an allowed chat AND (when this is not
    # empty) an allowed Telegram user id; destructive commands need a non-empty list.
    allowed_user_ids: tuple[int, ...] = ()
    # Key of the HMAC that binds a pending confirmation to its command and user;
    # "" = derived from security.webhook_secret (rotating either voids pending ones).
    confirm_secret: SecretStr = SecretStr("")

    @field_validator("allowed_user_ids", mode="before")
    @classmethod
    def _user_ids(cls, value: Any) -> Any:
        if isinstance(value, str):  # "1,2" from a plain env variable
            return tuple(int(v) for v in value.replace(" ", "").split(",") if v)
        if isinstance(value, int):
            return (value,)
        return value

    @property
    def active(self) -> bool:
        """Telegram is actually on: enabled, and a token and a chat id to send with."""
        return bool(self.enabled and self.token.get_secret_value() and self.chat_id)


class ExchangeSettings(_Section):
    mode: Literal["paper", "demo", "live"] = "paper"
    api_key: SecretStr = SecretStr("")
    api_secret: SecretStr = SecretStr("")
    timeout_ms: Annotated[int, Field(ge=100, le=120000)] = 10000
    # REST safety sweep; reconciliation is otherwise driven by the user-data stream
    reconcile_interval: Annotated[float, Field(ge=1.0, le=3600.0)] = 60.0
    # Endpoints: empty = Binance's own for the mode (paper: the local paper exchange).
    # ccxt's own throttle spaces every request of a client by 50 ms x its cost, which would
    # serialise the concurrent stop-loss and take-profit; risk's order-rate cap
    # (risk.max_orders_per_minute) keeps Phoenix 95 far below Binance's limits instead.
    client_rate_limit: bool = False
    rest_url: str = ""  # REST origin, e.g. http://127.0.0.1:8110 (/fapi/... is appended)
    ws_url: str = ""  # WebSocket base as ccxt.pro takes it, e.g. ws://127.0.0.1:8110/ws

    @field_validator("rest_url", "ws_url")
    @classmethod
    def _url_scheme(cls, value: str, info: ValidationInfo) -> str:
        value = value.strip().rstrip("/")
        rest = info.field_name == "rest_url"
        schemes = ("http://", "https://") if rest else ("ws://", "wss://")
        if value and not value.startswith(schemes):
            raise ValueError(f"must start with {' or '.join(schemes)}")
        return value


class PaperExchangeSettings(_Section):
    host: str = "127.0.0.1"
    port: Port = 8110
    starting_balance: Annotated[float, Field(gt=0.0)] = 10000.0
    taker_fee: Annotated[float, Field(ge=0.0, lt=0.01)] = 0.0005
    maker_fee: Annotated[float, Field(ge=0.0, lt=0.01)] = 0.0002
    seed: int = 95
    tick_interval_ms: Annotated[int, Field(ge=10, le=60000)] = 500
    volatility_annual: Annotated[float, Field(gt=0.0, le=10.0)] = 0.6
    state_path: str = "var/paper_exchange.db"  # SQLite file; "" = in memory only
    replay_csv: str = ""  # OHLCV CSV to replay; "" = simulate (GBM)
    max_requests_per_minute: Annotated[int, Field(ge=0)] = 0  # request weight; 0 = off
    # a network round trip: every REST answer and WebSocket event is delayed this much
    latency_ms: Annotated[int, Field(ge=0, le=60000)] = 0
    latency_jitter_ms: Annotated[int, Field(ge=0, le=60000)] = 0
    listen_key_ttl_s: Annotated[float, Field(gt=0.0, le=86400.0)] = 3600.0  # Binance: 60 min

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/ws"

    @staticmethod
    def _anchored(path: str) -> Path | None:
        if not path or path == ":memory:":
            return None
        candidate = Path(path)
        return candidate if candidate.is_absolute() else ROOT / candidate

    def resolved_state_path(self) -> Path | None:
        """The state file anchored at the repository root; None = keep state in memory."""
        return self._anchored(self.state_path)

    def resolved_replay_csv(self) -> Path | None:
        return self._anchored(self.replay_csv)


class MessageQueueSettings(_Section):
    host: str = "127.0.0.1"
    port: Port = 5672
    username: str = "phoenix95"
    password: SecretStr = SecretStr("")
    virtual_host: str = "/trading"
    connection_timeout: Annotated[float, Field(gt=0.0)] = 30.0
    heartbeat: Annotated[int, Field(ge=0)] = 300
    publisher_confirms: bool = True
    mandatory: bool = True
    retries: Annotated[int, Field(ge=0, le=100)] = 3
    retry_delay: Annotated[float, Field(ge=0.0)] = 5.0
    max_workers: Annotated[int, Field(ge=1, le=1000)] = 10
    # TLS to the broker (amqps, usually port 5671); the CA/cert/key paths are files.
    ssl: bool = False
    ssl_ca_file: str = ""  # "" = the system CA store
    ssl_cert_file: str = ""  # client certificate (mutual TLS), optional
    ssl_key_file: str = ""
    ssl_verify: bool = True  # false only for a lab broker with a self-signed certificate
    # A cluster: "host:port" of every node; clients fail over between them in this order
    # (kombu's alternates). Empty = the one node at host:port.
    hosts: tuple[str, ...] = ()
    # The vhost's default queue type, given when scripts/up creates the vhost: every queue
    # declared without x-queue-type (ours and nameko's RPC/event queues) becomes this type;
    # exclusive/auto-delete queues stay classic. An existing vhost keeps its own.
    queue_type: Literal["classic", "quorum"] = "classic"

    @field_validator("hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: Any) -> Any:
        if isinstance(value, str):  # "h1:5672,h2:5672" from a plain env variable
            return tuple(v.strip() for v in value.split(",") if v.strip())
        return value

    @field_validator("hosts")
    @classmethod
    def _host_ports(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            host, sep, port = item.rpartition(":")
            if not (sep and host and port.isdigit() and 1 <= int(port) <= 65535):
                raise ValueError(f"{item!r}: each node is host:port")
        return value

    def nodes(self) -> tuple[tuple[str, int], ...]:
        """(host, port) of every node, the first one first."""
        if not self.hosts:
            return ((self.host, self.port),)
        return tuple((h, int(p)) for h, _, p in (n.rpartition(":") for n in self.hosts))

    def ssl_options(self) -> dict[str, Any] | None:
        """Nameko's AMQP_SSL / kombu's ``ssl`` argument; None = plain AMQP."""
        if not self.ssl:
            return None
        import ssl as _ssl

        options: dict[str, Any] = {
            "cert_reqs": _ssl.CERT_REQUIRED if self.ssl_verify else _ssl.CERT_NONE}
        if self.ssl_ca_file:
            options["ca_certs"] = self.ssl_ca_file
        if self.ssl_cert_file:
            options["certfile"] = self.ssl_cert_file
        if self.ssl_key_file:
            options["keyfile"] = self.ssl_key_file
        return options

    @property
    def amqp_uri(self) -> str:
        user = quote(self.username, safe="")
        password = quote(self.password.get_secret_value(), safe="")
        vhost = quote(self.virtual_host, safe="")
        scheme = "amqps" if self.ssl else "amqp"
        # several nodes: kombu's failover list "amqp://a;amqp://b", tried round-robin
        return ";".join(f"{scheme}://{user}:{password}@{host}:{port}/{vhost}"
                        for host, port in self.nodes())


class RedisStreamsSettings(_Section):
    # Host, port and db index; with ``sentinels`` set, only the db index of the URL is used
    # and the master's address comes from Sentinel (shared/redis_conn.py).
    url: str = "redis://127.0.0.1:6379/0"
    # "host:port" of each Sentinel; empty = connect to ``url`` directly
    sentinels: tuple[str, ...] = ()
    sentinel_master: str = "phoenix95"
    # Redis ACL user of this process (empty = the URL's user, or the default user)
    username: str = ""
    password: SecretStr = SecretStr("")
    # TLS: on when the URL is rediss:// or ``tls`` is true
    tls: bool = False
    tls_ca_certs: str = ""
    tls_certfile: str = ""
    tls_keyfile: str = ""
    maxlen: Annotated[int, Field(ge=100)] = 10000
    block_ms: Annotated[int, Field(ge=1)] = 1000
    consumers_per_group: Annotated[int, Field(ge=1, le=64)] = 2


class KafkaSettings(_Section):
    bootstrap_servers: str = "127.0.0.1:9092"
    acks: Literal["all", "1", "0", "-1"] = "all"
    retries: Annotated[int, Field(ge=0)] = 3
    batch_size: Annotated[int, Field(ge=1)] = 16384
    linger_ms: Annotated[int, Field(ge=0)] = 10
    consumer_group: str = "phoenix95_processors"
    delivery_timeout_s: Annotated[float, Field(gt=0.0)] = 5.0
    # librdkafka security: PLAINTEXT (lab), SSL, SASL_SSL (username/password over TLS)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    ssl_ca_location: str = ""
    ssl_certificate_location: str = ""
    ssl_key_location: str = ""
    ssl_endpoint_identification: bool = True  # false: skip the host-name check (lab only)
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    sasl_username: str = ""
    sasl_password: SecretStr = SecretStr("")

    def security_config(self) -> dict[str, str]:
        """librdkafka keys to merge into every producer/consumer/admin configuration."""
        conf: dict[str, str] = {"security.protocol": self.security_protocol}
        if "SSL" in self.security_protocol and not self.security_protocol.startswith("SASL_P"):
            conf["ssl.endpoint.identification.algorithm"] = (
                "https" if self.ssl_endpoint_identification else "none")
            for key, value in (("ssl.ca.location", self.ssl_ca_location),
                               ("ssl.certificate.location", self.ssl_certificate_location),
                               ("ssl.key.location", self.ssl_key_location)):
                if value:
                    conf[key] = value
        if self.security_protocol.startswith("SASL"):
            conf["sasl.mechanism"] = self.sasl_mechanism
            conf["sasl.username"] = self.sasl_username
            conf["sasl.password"] = self.sasl_password.get_secret_value()
        return conf

    @field_validator("acks", mode="before")
    @classmethod
    def _acks_as_str(cls, value: Any) -> Any:
        return str(value)


class FeedSettings(_Section):
    """The market and account feed (``nameko_services/feed``): one writer of the state."""

    # state older than this is stale: risk refuses new entries, notify alerts once
    max_staleness_seconds: Annotated[float, Field(gt=0.0, le=3600.0)] = 5.0
    timeframes: tuple[str, ...] = ("1m", "5m", "1h")  # candles kept for brain's features
    candle_limit: Annotated[int, Field(ge=10, le=1500)] = 300  # closed candles kept per timeframe
    heartbeat_interval_s: Annotated[float, Field(gt=0.0, le=60.0)] = 1.0
    listen_key_keepalive_s: Annotated[float, Field(ge=1.0, le=1800.0)] = 1800.0  # <= 30 min


class DashboardSettings(_Section):
    """Who may see the dashboard: a login (streamlit-authenticator, bcrypt hash)."""

    auth_enabled: bool = True
    username: str = "admin"
    password_hash: SecretStr = SecretStr("")  # bcrypt; scripts/up generates one into .env
    cookie_key: SecretStr = SecretStr("")  # signs the re-login cookie; "" = no cookie
    cookie_expiry_days: Annotated[float, Field(ge=0.0, le=30.0)] = 1.0
    # where a browser opens the dashboard (behind a proxy, a port-forward...): notify's
    # /dashboard link; empty = the dashboard's advertised address (services.hosts)
    public_url: str = ""

    @field_validator("public_url")
    @classmethod
    def _absolute_http_url(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must be an absolute http(s):// URL a browser can open")
        return value.rstrip("/")

    @field_validator("password_hash")
    @classmethod
    def _bcrypt(cls, value: SecretStr) -> SecretStr:
        raw = value.get_secret_value()
        if raw.strip().lower() in ("change-me", "changeme", "change_me"):
            return SecretStr("")  # the .env.example placeholder: no login configured yet
        if raw and not raw.startswith(("$2a$", "$2b$", "$2y$")):
            raise ValueError("must be a bcrypt hash ($2b$...): scripts/dashboard_password "
                             "makes one; the password itself never goes in the config")
        return value


class HighAvailabilitySettings(_Section):
    health_check_interval: int = 30
    health_check_timeout: int = 5
    max_fails: int = 3
    fail_timeout: int = 30
    consul_ttl: int = 30
    circuit_breaker_failures: Annotated[int, Field(ge=1)] = 5
    circuit_breaker_recovery: Annotated[float, Field(gt=0.0)] = 60.0
    prometheus_port: Port = 9090
    grafana_port: Port = 3000
    alertmanager_port: Port = 9093
    # leader leases (shared/leader.py): a dead leader's duty resumes elsewhere within
    # ttl + renew; a leader that could not renew stops acting before its lease expires
    leader_ttl_s: Annotated[float, Field(ge=1.0, le=60.0)] = 6.0
    leader_renew_s: Annotated[float, Field(ge=0.1, le=20.0)] = 2.0

    @model_validator(mode="after")
    def _renew_within_ttl(self) -> HighAvailabilitySettings:
        if self.leader_renew_s * 2 > self.leader_ttl_s:
            raise ValueError(f"leader_renew_s ({self.leader_renew_s}) must be at most half of "
                             f"leader_ttl_s ({self.leader_ttl_s}): a lease renewed that late "
                             "expires between two renewals")
        return self


class DatabaseSettings(_Section):
    url: str = "sqlite:///var/phoenix95.db"

    def resolved_url(self) -> str:
        """Anchor a relative SQLite path at the repository root, not the cwd."""
        prefix = "sqlite:///"
        if self.url.startswith(prefix) and not self.url.startswith(prefix + "/"):
            path = self.url[len(prefix):]
            if path and path != ":memory:":
                return prefix + str(ROOT / path)
        return self.url


WILDCARDS = frozenset({"0.0.0.0", "::", "[::]"})
SERVICE_NAMES = frozenset({"brain", "risk", "execute", "notify", "feed", "dashboard"})


class ServicesSettings(_Section):
    """Where the services listen and where they are called.

    ``host`` is the address others CALL (advertised); ``bind_host`` the address a service
    LISTENS on (default: ``host``). On one machine both are 127.0.0.1. In compose/k8s every
    service listens on 0.0.0.0 and is called by its DNS name: ``hosts`` maps a service to
    its advertised host (``PHOENIX__SERVICES__HOSTS__RISK=risk``); a service not in
    ``hosts`` is called at ``host``. 0.0.0.0 is never an address to call.
    """

    host: str = "127.0.0.1"
    bind_host: str | None = None
    hosts: dict[str, str] = {}
    brain_port: Port = 8100
    risk_port: Port = 8101
    execute_port: Port = 8102
    notify_port: Port = 8103
    feed_port: Port = 8104
    dashboard_port: Port = 8501
    run_dir: str = ".run"
    # brain processes sharing brain_port (SO_REUSEPORT) and the signal queue; 0 = one per
    # core. Only brain: its intake limits and idempotency live in Redis, so any count is safe
    brain_processes: Annotated[int, Field(ge=0, le=64)] = 0

    def brain_process_count(self) -> int:
        return self.brain_processes or os.cpu_count() or 1

    def port_of(self, service: str) -> int:
        return int(getattr(self, f"{service}_port"))

    def url_of(self, service: str) -> str:
        return f"http://{self.host_of(service)}:{self.port_of(service)}"

    def host_of(self, service: str) -> str:
        """The advertised host of ``service`` (what a caller connects to)."""
        return self.hosts.get(service, self.host)

    def bind_address(self) -> str:
        """The address this process listens on."""
        return self.bind_host or self.host

    @model_validator(mode="before")
    @classmethod
    def _wildcard_host_binds(cls, data: Any) -> Any:
        """``host: 0.0.0.0`` (the old way to listen on every interface) means bind there and
        be called on 127.0.0.1: a wildcard is never an address to call."""
        if isinstance(data, dict) and str(data.get("host", "")) in WILDCARDS:
            data = {**data, "bind_host": data.get("bind_host") or data["host"],
                    "host": "127.0.0.1"}
        return data

    @field_validator("hosts")
    @classmethod
    def _callable_hosts(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - SERVICE_NAMES)
        if unknown:
            raise ValueError(f"unknown service(s) {', '.join(unknown)}; "
                             f"one of {', '.join(sorted(SERVICE_NAMES))}")
        wild = sorted(k for k, v in value.items() if v in WILDCARDS or not v)
        if wild:
            raise ValueError(f"hosts.{wild[0]}: a bind address is not one to call; give the "
                             "name callers use (e.g. the compose/k8s service name)")
        return value

    def run_path(self) -> Path:
        path = Path(self.run_dir)
        return path if path.is_absolute() else ROOT / path


class RiskSettings(_Section):
    """Risk's configured caps and live-watch thresholds (fractions of equity or of price)."""

    max_total_exposure: Annotated[float, Field(gt=0.0, le=1000.0)] = 15.0  # notional / equity
    max_daily_loss: Fraction = 0.10  # realised loss today / equity at the day's start
    max_drawdown: Fraction = 0.20  # equity below its peak / the peak
    max_orders_per_minute: Annotated[int, Field(ge=1, le=100000)] = 30  # approved intents
    max_price_age_ms: Annotated[int, Field(ge=100, le=3_600_000)] = 60_000
    price_band: Fraction = 0.05  # alert price within this fraction of the market
    liquidation_warning: Fraction = 0.03  # |mark - liq| / mark below this: warning
    liquidation_critical: Fraction = 0.015  # ... below this: critical
    stop_warning: Fraction = 0.005  # |mark - stop| / mark below this: warning
    reservation_ttl_s: Annotated[float, Field(gt=0.0, le=86400.0)] = 120.0
    metrics_interval_s: Annotated[float, Field(gt=0.0, le=3600.0)] = 1.0
    stop_check_interval_s: Annotated[float, Field(gt=0.0, le=3600.0)] = 10.0
    stop_grace_s: Annotated[float, Field(ge=0.0, le=3600.0)] = 5.0


class Settings(BaseSettings):
    """The whole validated configuration of one Phoenix 95 process."""

    model_config = SettingsConfigDict(
        frozen=True,
        extra="ignore",
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        case_sensitive=False,
    )

    trading: TradingSettings = TradingSettings()
    leverage: LeverageSettings = LeverageSettings()
    phoenix_95: Phoenix95Settings = Phoenix95Settings()
    security: SecuritySettings = SecuritySettings()
    telegram: TelegramSettings = TelegramSettings()
    exchange: ExchangeSettings = ExchangeSettings()
    paper_exchange: PaperExchangeSettings = PaperExchangeSettings()
    message_queue: MessageQueueSettings = MessageQueueSettings()
    redis_streams: RedisStreamsSettings = RedisStreamsSettings()
    feed: FeedSettings = FeedSettings()
    kafka: KafkaSettings = KafkaSettings()
    high_availability: HighAvailabilitySettings = HighAvailabilitySettings()
    dashboard: DashboardSettings = DashboardSettings()
    database: DatabaseSettings = DatabaseSettings()
    services: ServicesSettings = ServicesSettings()
    risk: RiskSettings = RiskSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        yaml_path = Path(os.environ.get(CONFIG_ENV, str(ROOT / "config.yaml")))
        return (
            init_settings,
            env_settings,
            dotenv_settings,
            YamlConfigSettingsSource(settings_cls, yaml_file=yaml_path),
        )

    @model_validator(mode="after")
    def _threshold_alias(self) -> Settings:
        alias = self.trading.phoenix_95_threshold
        if alias is None:
            return self
        if "threshold" in self.phoenix_95.model_fields_set:
            if self.phoenix_95.threshold != alias:
                raise ValueError(
                    f"trading.phoenix_95_threshold={alias} and phoenix_95.threshold="
                    f"{self.phoenix_95.threshold} disagree: they are the same setting, set one "
                    f"({env_name('trading.phoenix_95_threshold')} or "
                    f"{env_name('phoenix_95.threshold')}) or give both the same value"
                )
            return self
        # Frozen model: the validated alias replaces the default once, here at the edge.
        object.__setattr__(
            self, "phoenix_95", self.phoenix_95.model_copy(update={"threshold": alias})
        )
        return self

    @model_validator(mode="after")
    def _secrets_present(self) -> Settings:
        required = {
            "security.webhook_secret": self.security.webhook_secret.get_secret_value(),
            "security.api_keys": ",".join(self.security.api_key_values()),
            "message_queue.password": self.message_queue.password.get_secret_value(),
            "exchange.api_key": self.exchange.api_key.get_secret_value(),
            "exchange.api_secret": self.exchange.api_secret.get_secret_value(),
        }
        for key, value in required.items():
            if not value:
                hint = (
                    "run scripts/up once to generate .env"
                    if self.exchange.mode == "paper"
                    else f"required in {self.exchange.mode} mode"
                )
                raise ValueError(f"{key} is empty; set {env_name(key)} ({hint})")
        placeholders = {"change-me", "changeme", "change_me"}
        if self.exchange.mode != "paper":
            for key, value in required.items():
                if any(v.strip().lower() in placeholders for v in value.split(",")):
                    raise ValueError(f"{key} is still the .env.example placeholder; "
                                     f"set {env_name(key)} ({self.exchange.mode} mode)")
        if self.exchange.mode != "paper" and len(self.security.webhook_secret) < 16:
            raise ValueError(
                "security.webhook_secret must be at least 16 characters outside paper mode"
            )
        short = [k for k in self.security.api_key_values() if len(k) < MIN_API_KEY_LENGTH]
        if self.exchange.mode != "paper" and short:
            raise ValueError(f"security.api_keys: every key must be at least "
                             f"{MIN_API_KEY_LENGTH} characters outside paper mode "
                             f"(python -c 'import secrets; print(secrets.token_urlsafe(32))')")
        return self


class ConfigError(RuntimeError):
    """A configuration value is invalid; the message is one line for the operator."""


def env_name(dotted_key: str) -> str:
    return ENV_PREFIX + dotted_key.replace(".", "__").upper()


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    loc = ".".join(str(p) for p in first["loc"] if not str(p).isdigit())
    message = first["msg"].removeprefix("Value error, ")
    if not loc:
        return f"config error: {message}"
    value = first.get("input")
    shown = "<secret>" if any(s in loc for s in ("secret", "password", "token", "key")) else value
    return f"config error: {loc}={shown!r} ({env_name(loc)}): {message}"


def load_settings(**overrides: Any) -> Settings:
    """Read and validate the configuration; raise :class:`ConfigError` on a bad value."""
    dotenv = os.environ.get(DOTENV_ENV, str(ROOT / ".env"))
    try:
        return Settings(_env_file=dotenv if Path(dotenv).is_file() else None, **overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, validated on first use."""
    return load_settings()


def settings_or_exit() -> Settings:
    """Validate the configuration at process start; print one line and exit 2 if bad."""
    try:
        return get_settings()
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        raise SystemExit(2) from None
