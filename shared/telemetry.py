"""Telemetry sink: every pipeline step goes to its Redis stream and its Kafka topic.

Telemetry never blocks or stops trading:

* Kafka: ``emit`` only enqueues into librdkafka's bounded local queue
  (:data:`KAFKA_BUFFER_MESSAGES`); delivery reports are polled by a background loop
  (a Nameko managed thread running ``poll`` through ``eventlet.tpool``, or a plain thread
  outside Nameko). A full queue or a record not acknowledged within
  ``kafka.delivery_timeout_s`` is dropped.
* Redis: one ``XADD`` on a client with a short timeout and no retries; after a failure
  Redis is skipped for :data:`REDIS_BACKOFF_S`, so an outage costs the caller at most one
  timeout. The Redis streams are the audit trail of every outcome (signal_scored,
  risk_check, entry_filled, trade_failed ...), so a record Redis cannot take is **held**,
  not dropped: in a bounded in-memory backlog (``redis_backlog`` records, default
  :data:`REDIS_BACKLOG_MAX`) that the background loop re-sends, in order, as soon as Redis
  answers again. While records are held, new ones queue behind them (the caller never
  talks to Redis then). A re-sent record keeps its ``type``, ``signal_id`` and ``ts``
  (stamped at ``emit``): a consumer dedupes on them, since a write that timed out may
  have landed. Only a full backlog drops records (``reason=buffer_full``, one critical
  log line per outage: the alert), and a process that dies loses what it held.

Every drop is counted (``phoenix95_telemetry_dropped_total{sink,reason}``), held records
are a gauge (``phoenix95_telemetry_held_records{sink}``), the first failure of an outage is
logged once as an error, the recovery once as a warning (with the counts), and the failing
sink is reported by ``health()``. Nothing is ever raised into the caller.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import redis
from confluent_kafka import KafkaException, Producer
from prometheus_client import Counter, Gauge
from redis.backoff import NoBackoff
from redis.retry import Retry

from shared.kafka_producer import RecoveringProducer
from shared.names import TELEMETRY_TOPIC_OF
from shared.records import Record
from shared.redis_conn import redis_client
from shared.settings import Settings

log = logging.getLogger(__name__)

TELEMETRY_ERRORS = Counter(
    "phoenix95_telemetry_errors_total", "Telemetry records a sink failed to store", ["sink"]
)
TELEMETRY_DROPPED = Counter(
    "phoenix95_telemetry_dropped_total",
    "Telemetry records dropped so that trading never waits (buffer full, sink down, "
    "not acknowledged in time)", ["sink", "reason"],
)
TELEMETRY_RECORDS = Counter(
    "phoenix95_telemetry_records_total", "Telemetry records written", ["stream"]
)
TELEMETRY_HELD = Gauge(
    "phoenix95_telemetry_held_records",
    "Telemetry records held while their sink is down, re-sent when it is back", ["sink"],
)

KAFKA_BUFFER_MESSAGES = 10_000  # librdkafka's local queue: beyond it records are dropped
REDIS_TIMEOUT_S = 0.5
REDIS_BACKOFF_S = 2.0
POLL_INTERVAL_S = 0.2
REDIS_BACKLOG_MAX = 10_000  # records held while Redis is down (~1 KB each)
REDIS_RESEND_BATCH = 500  # records per pipelined re-send

Blocking = Callable[..., Any]
Spawn = Callable[[Callable[[], None]], Any]


def _direct(fn: Blocking, *args: Any) -> Any:
    return fn(*args)


def _thread(target: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=target, name="telemetry-delivery", daemon=True)
    thread.start()
    return thread


def kafka_producer_config(settings: Settings) -> dict[str, Any]:
    k = settings.kafka
    return {
        "bootstrap.servers": k.bootstrap_servers,
        "acks": k.acks,
        "retries": k.retries,
        "batch.size": k.batch_size,
        "linger.ms": k.linger_ms,
        "enable.idempotence": k.acks in ("all", "-1"),
        "message.timeout.ms": int(k.delivery_timeout_s * 1000),
        "queue.buffering.max.messages": KAFKA_BUFFER_MESSAGES,
        "client.id": "phoenix95",
        **k.security_config(),
    }


def make_telemetry_redis(settings: Settings) -> redis.Redis:
    """A Redis client for telemetry alone: short timeouts, no retries (redis-py >= 6
    retries timeouts three times with back-off by default: ~10 s, not 0.5 s)."""
    return redis_client(
        settings.redis_streams, decode_responses=True, socket_timeout=REDIS_TIMEOUT_S,
        socket_connect_timeout=REDIS_TIMEOUT_S, retry=Retry(NoBackoff(), 0),
    )


class TelemetryWriter:
    """Append records to Redis Streams (MAXLEN ~) and their Kafka topic, never blocking.

    ``run_blocking`` runs librdkafka's blocking calls (``poll``, the final ``flush``):
    ``eventlet.tpool.execute`` inside Nameko, so the hub keeps running. ``spawn`` starts
    the delivery-report loop (Nameko: ``container.spawn_managed_thread``; default: a
    daemon thread), lazily on the first Kafka record.
    """

    def __init__(
        self,
        settings: Settings,
        redis_client: redis.Redis,
        producer: Producer | RecoveringProducer | None,
        *,
        run_blocking: Blocking = _direct,
        spawn: Spawn = _thread,
        clock: Callable[[], float] = time.monotonic,
        topics: Mapping[str, str] = TELEMETRY_TOPIC_OF,
        redis_backlog: int = REDIS_BACKLOG_MAX,
    ) -> None:
        self._redis = redis_client
        self._topics = topics  # stream -> Kafka topic (benchmarks name their own)
        self._producer = producer
        self._maxlen = settings.redis_streams.maxlen
        self._timeout = settings.kafka.delivery_timeout_s
        self._run_blocking = run_blocking
        self._spawn = spawn
        self._clock = clock
        self._errors: dict[str, str] = {}
        self._dropped: dict[str, int] = {}  # per sink, in the current outage
        self._lock = threading.Lock()
        self._redis_paused_until = 0.0
        # records Redis could not take yet, oldest first: (stream, fields); appended by the
        # callers, re-sent and popped by the background loop alone
        self._held: collections.deque[tuple[str, dict[str, str]]] = collections.deque()
        self._held_max = redis_backlog
        self._held_lock = threading.Lock()  # appends vs the re-sender's copy of a batch
        self._resend_lock = threading.Lock()
        self._held_total = 0  # in the current outage, for the recovery line
        self._full_logged = False
        # delivery reports arrive in librdkafka's (tpool) thread: only a deque is touched
        # there; the loop turns them into metrics and logs on the caller's side
        self._reports: collections.deque[str | None] = collections.deque()
        self._loop_started = False
        self._closed = False

    # ------------------------------------------------------------------ emitting

    def emit(self, stream: str, record: Record) -> None:
        """Write ``record`` to ``stream`` and queue it for Kafka; returns at once."""
        try:
            rec = record.stamped()
        except Exception as exc:  # noqa: BLE001 - telemetry never raises into trading
            self._drop("redis", "invalid", exc)
            return
        self._to_redis(stream, rec)
        topic = self._topics.get(stream)
        if topic is not None and self._producer is not None:
            self._to_kafka(topic, rec)

    # kept for callers written when emit waited for Kafka; both are non-blocking now
    emit_nowait = emit

    def _to_redis(self, stream: str, rec: Record) -> None:
        try:
            fields = rec.stream_fields()
        except Exception as exc:  # noqa: BLE001 - a value that does not serialise
            self._drop("redis", "error", exc)
            return
        if self._held or self._clock() < self._redis_paused_until:
            self._hold(stream, fields)  # behind the records already waiting
            return
        try:
            self._redis.xadd(stream, fields,  # type: ignore[arg-type]
                             maxlen=self._maxlen, approximate=True)
        except redis.RedisError as exc:
            self._redis_paused_until = self._clock() + REDIS_BACKOFF_S
            self._failing("redis", exc)
            self._hold(stream, fields)
            return
        TELEMETRY_RECORDS.labels(stream).inc()
        self._recovered("redis")

    def _hold(self, stream: str, fields: dict[str, str]) -> None:
        """Keep a record for the background loop to re-send; drop it if the backlog is full."""
        if len(self._held) >= self._held_max:
            self._drop("redis", "buffer_full", None)
            if not self._full_logged:
                self._full_logged = True
                log.critical("telemetry: %d records held for Redis, the backlog is full: "
                             "records (outcomes among them) are dropped until Redis is "
                             "back", len(self._held))
            return
        with self._held_lock:
            self._held.append((stream, fields))
        self._held_total += 1
        TELEMETRY_HELD.labels("redis").set(len(self._held))
        if "redis" not in self._errors:
            self._failing("redis", None)
        self._ensure_loop()

    def resend_held(self) -> int:
        """Re-send held records in order while Redis takes them; return how many went.
        Run by the background loop (and ``close``), never by a caller of ``emit``."""
        if not self._held or self._clock() < self._redis_paused_until:
            return 0
        if not self._resend_lock.acquire(blocking=False):
            return 0
        sent = 0
        try:
            while self._held:
                with self._held_lock:
                    batch = list(itertools.islice(self._held, 0, REDIS_RESEND_BATCH))
                pipe = self._redis.pipeline(transaction=False)
                for stream, fields in batch:
                    pipe.xadd(stream, fields,  # type: ignore[arg-type]
                              maxlen=self._maxlen, approximate=True)
                try:
                    pipe.execute()
                except redis.RedisError as exc:
                    self._redis_paused_until = self._clock() + REDIS_BACKOFF_S
                    self._failing("redis", exc)
                    return sent
                for stream, _ in batch:
                    self._held.popleft()
                    TELEMETRY_RECORDS.labels(stream).inc()
                sent += len(batch)
                TELEMETRY_HELD.labels("redis").set(len(self._held))
        finally:
            self._resend_lock.release()
        self._recovered("redis")
        return sent

    def _to_kafka(self, topic: str, rec: Record) -> None:
        assert self._producer is not None
        reports = self._reports

        def on_delivery(err: Any, _msg: Any) -> None:
            reports.append(None if err is None else str(err))

        try:
            self._producer.produce(topic, value=rec.kafka_value(),
                                   key=rec.signal_id or rec.type, on_delivery=on_delivery)
        except BufferError as exc:
            self._drop("kafka", "buffer_full", exc)
        except (KafkaException, ValueError, TypeError) as exc:
            self._drop("kafka", "error", exc)
        self._ensure_loop()

    # ------------------------------------------------------------------ delivery reports

    def _ensure_loop(self) -> None:
        if self._loop_started or self._closed:
            return
        self._loop_started = True
        self._spawn(self._delivery_loop)

    def _delivery_loop(self) -> None:
        while not self._closed:
            try:
                self.poll_deliveries(POLL_INTERVAL_S)
                self.resend_held()
            except Exception:
                log.exception("telemetry delivery poll failed")

    def poll_deliveries(self, timeout: float = 0.0) -> None:
        """Serve librdkafka's delivery reports (blocking up to ``timeout``) and account them."""
        if self._producer is not None:
            self._run_blocking(self._producer.poll, timeout)
        elif timeout:
            time.sleep(timeout)  # green under Nameko (monkey-patched)
        self._account_reports()

    def _account_reports(self) -> None:
        while self._reports:
            err = self._reports.popleft()
            if err is None:
                self._recovered("kafka")
            else:
                self._drop("kafka", "not_acknowledged", RuntimeError(err))

    # ------------------------------------------------------------------ bookkeeping

    def _drop(self, sink: str, reason: str, exc: Exception | None) -> None:
        TELEMETRY_DROPPED.labels(sink, reason).inc()
        if exc is not None:
            TELEMETRY_ERRORS.labels(sink).inc()
        with self._lock:
            first = sink not in self._errors
            if first or exc is not None:
                self._errors[sink] = str(exc) if exc is not None else "paused after a failure"
            self._dropped[sink] = self._dropped.get(sink, 0) + 1
        if first:
            log.error("telemetry sink %s failing, dropping its records until it recovers "
                      "(%s: %s)", sink, reason, exc)

    def _failing(self, sink: str, exc: Exception | None) -> None:
        """The sink failed but nothing was lost (the record is held)."""
        if exc is not None:
            TELEMETRY_ERRORS.labels(sink).inc()
        with self._lock:
            first = sink not in self._errors
            if first or exc is not None:
                self._errors[sink] = str(exc) if exc is not None else "paused after a failure"
        if first:
            log.error("telemetry sink %s failing, holding its records until it recovers "
                      "(%s)", sink, exc)

    def _recovered(self, sink: str) -> None:
        if sink not in self._errors or (sink == "redis" and self._held):
            return
        held = 0
        with self._lock:
            self._errors.pop(sink, None)
            dropped = self._dropped.pop(sink, 0)
            if sink == "redis":
                held, self._held_total, self._full_logged = self._held_total, 0, False
        log.warning("telemetry sink %s recovered; %d record(s) dropped during the outage"
                    "%s", sink, dropped, f", {held} held and re-sent" if held else "")

    def health(self) -> dict[str, str]:
        with self._lock:
            out = {sink: f"failing: {err}" for sink, err in self._errors.items()}
        if self._held and "redis" in out:
            out["redis"] += f" ({len(self._held)} records held)"
        return out

    def close(self) -> None:
        """Stop the delivery loop; give in-flight records one ``delivery_timeout_s``."""
        self._closed = True
        if self._producer is not None:
            self._run_blocking(self._producer.flush, self._timeout)
        self._account_reports()
        self._redis_paused_until = 0.0  # one last try for what is held
        self.resend_held()
        if self._held:
            log.error("telemetry closing with %d record(s) Redis never took", len(self._held))
