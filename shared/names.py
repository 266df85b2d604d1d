"""Every name on the wire, in one place: exchanges, queues, routing keys, streams,
consumer groups, Kafka topics, Nameko service and event names.

rabbitmq/definitions.json declares the same topology; a unit test keeps them equal.
"""

from __future__ import annotations

from typing import Final

from kombu import Exchange, Queue

# --- Nameko service names (also the RPC proxy names: n.rpc.risk.status()) ---
BRAIN: Final = "brain"
RISK: Final = "risk"
EXECUTE: Final = "execute"
NOTIFY: Final = "notify"
SERVICES: Final = (BRAIN, RISK, EXECUTE, NOTIFY)

# --- RabbitMQ exchanges ---
ANALYSIS_EXCHANGE: Final = "phoenix95.analysis"  # direct
SIGNALS_EXCHANGE: Final = "trading.signals"  # topic
RISK_EXCHANGE: Final = "risk.management"  # direct
DEAD_LETTER_EXCHANGE: Final = "phoenix95.dlx"  # direct, key = source queue name

# --- RabbitMQ queues and their routing keys ---
SIGNAL_QUEUE: Final = "signal_processing"
SIGNAL_KEY: Final = "signal.process"
TRADE_QUEUE: Final = "trade_execution"
TRADE_KEY: Final = "trade.execute"
RISK_ALERT_QUEUE: Final = "risk_alerts"
RISK_ALERT_KEY: Final = "risk.alert"
# every dead-lettered trade_execution message, a copy beside trade_execution.dlq: execute
# writes the intent's failed outcome from it (the .dlq copy stays for scripts/dlq)
TRADE_FAILED_QUEUE: Final = "trade_execution.failed"
DLQ_SUFFIX: Final = ".dlq"
# <queue>.retry holds a failed message for message_queue.retry_delay (per-message TTL),
# then dead-letters it through the default exchange back to <queue>
RETRY_SUFFIX: Final = ".retry"
# dead letters raise a RiskAlert on risk_alerts; one dead-lettered there is only logged
DEAD_LETTER_ALERT_CODE: Final = "DEAD_LETTER"

# queue -> (exchange, exchange type, routing key)
QUEUE_BINDINGS: Final = {
    SIGNAL_QUEUE: (SIGNALS_EXCHANGE, "topic", SIGNAL_KEY),
    TRADE_QUEUE: (SIGNALS_EXCHANGE, "topic", TRADE_KEY),
    RISK_ALERT_QUEUE: (RISK_EXCHANGE, "direct", RISK_ALERT_KEY),
    TRADE_FAILED_QUEUE: (DEAD_LETTER_EXCHANGE, "direct", TRADE_QUEUE),
}
EXCHANGE_TYPES: Final = {
    ANALYSIS_EXCHANGE: "direct",
    SIGNALS_EXCHANGE: "topic",
    RISK_EXCHANGE: "direct",
    DEAD_LETTER_EXCHANGE: "direct",
}


def queue_arguments(queue: str) -> dict[str, str]:
    """Arguments every work queue is declared with (must match definitions.json)."""
    return {"x-dead-letter-exchange": DEAD_LETTER_EXCHANGE, "x-dead-letter-routing-key": queue}


def kombu_exchange(name: str) -> Exchange:
    return Exchange(name, type=EXCHANGE_TYPES[name], durable=True)


def kombu_queue(queue: str) -> Queue:
    exchange, _, key = QUEUE_BINDINGS[queue]
    return Queue(
        queue,
        exchange=kombu_exchange(exchange),
        routing_key=key,
        durable=True,
        queue_arguments=queue_arguments(queue),
    )


def retry_queue_arguments(queue: str) -> dict[str, str]:
    """Arguments of ``<queue>.retry`` (must match definitions.json): expired messages go
    through the default exchange (``""``) straight back to the work queue."""
    return {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": queue}


def kombu_retry_queue(queue: str) -> Queue:
    """``<queue>.retry``, bound only to the default exchange (routing key = its name)."""
    return Queue(queue + RETRY_SUFFIX, durable=True, queue_arguments=retry_queue_arguments(queue))


def kombu_dead_letter_queue(queue: str) -> Queue:
    return Queue(
        queue + DLQ_SUFFIX,
        exchange=kombu_exchange(DEAD_LETTER_EXCHANGE),
        routing_key=queue,
        durable=True,
    )


# --- Redis Streams and their consumer groups ---
MARKET_STREAM: Final = "market:stream"
SIGNAL_STREAM: Final = "signal:stream"
TRADE_STREAM: Final = "trade:stream"
RISK_STREAM: Final = "risk:stream"
ALERT_OUTBOX_STREAM: Final = "notify:outbox"
STREAMS: Final = (MARKET_STREAM, SIGNAL_STREAM, TRADE_STREAM, RISK_STREAM)

BRAIN_GROUP: Final = "brain_processors"
RISK_GROUP: Final = "risk_processors"
EXECUTION_GROUP: Final = "execution_processors"
TELEGRAM_GROUP: Final = "telegram_senders"
# stream -> the consumer groups created on it
STREAM_GROUPS: Final = {
    MARKET_STREAM: (BRAIN_GROUP, RISK_GROUP),
    SIGNAL_STREAM: (BRAIN_GROUP,),
    TRADE_STREAM: (EXECUTION_GROUP, RISK_GROUP),
    RISK_STREAM: (RISK_GROUP,),
    ALERT_OUTBOX_STREAM: (TELEGRAM_GROUP,),
}

# --- Kafka topics (name -> partitions) ---
SIGNALS_TOPIC: Final = "phoenix95_signals"
TRADING_TOPIC: Final = "trading_events"
RISK_TOPIC: Final = "risk_events"
TOPIC_PARTITIONS: Final = {SIGNALS_TOPIC: 3, TRADING_TOPIC: 3, RISK_TOPIC: 2}

# Telemetry: Redis stream <-> Kafka topic carrying the same records
TELEMETRY_TOPIC_OF: Final = {
    SIGNAL_STREAM: SIGNALS_TOPIC,
    TRADE_STREAM: TRADING_TOPIC,
    RISK_STREAM: RISK_TOPIC,
}

# --- Nameko events (source service, event type) ---
EVT_SIGNAL_ACCEPTED: Final = "signal_accepted"
EVT_SIGNAL_REJECTED: Final = "signal_rejected"
EVT_TRADE_OPENED: Final = "trade_opened"
EVT_TRADE_FAILED: Final = "trade_failed"
EVT_POSITION_CLOSED: Final = "position_closed"
EVT_RECONCILIATION: Final = "reconciliation"

# --- Redis keys ---
IDEMPOTENCY_KEY_PREFIX: Final = "phoenix95:idem:"
SYMBOL_LOCK_PREFIX: Final = "phoenix95:lock:"
# hash symbol -> why execute refuses it (a failed pre-flight); lifted by a passing one
EXECUTE_BLOCKS_KEY: Final = "phoenix95:execute:blocked"
# how long brain remembers an alert id (and execute treats a reused one as a clash)
IDEMPOTENCY_WINDOW_S: Final = 24 * 3600
RATE_LIMIT_PREFIX: Final = "phoenix95:rate:"
TELEGRAM_OFFSET_KEY: Final = "phoenix95:telegram:offset"  # last confirmed getUpdates id
TELEGRAM_CONFIRM_PREFIX: Final = "phoenix95:telegram:confirm:"  # pending confirmations
# alerts Telegram refused for good (bot blocked, chat not found), newest first, JSON each
TELEGRAM_DEAD_LETTERS_KEY: Final = "phoenix95:telegram:dead_letters"
NOTIFY_SUMMARY_PREFIX: Final = "phoenix95:notify:summary:"  # daily summary sent, per date
NOTIFY_STALE_PREFIX: Final = "phoenix95:notify:stale:"  # + market/account: stale alert sent
NOTIFY_SENT_PREFIX: Final = "phoenix95:notify:sent:"  # + dedupe key: alert queued (SET NX EX)
TRADING_STATE_KEY: Final = "phoenix95:trading_state"  # ACTIVE | REDUCING | HALTED (risk mirrors)
RISK_RESERVATIONS_KEY: Final = "phoenix95:risk:reservations"  # hash signal_id -> reservation
RISK_ORDER_RATE_KEY: Final = "phoenix95:risk:orders"  # zset of approved intents by time
RISK_WARNINGS_KEY: Final = "phoenix95:risk:warnings"  # hash symbol:kind -> level last sent
RISK_THROTTLE_PREFIX: Final = "phoenix95:risk:throttle:"  # per-position metrics throttle

# --- Market and account state (one writer: the feed; see shared/state.py) ---
STATE_PRICES_KEY: Final = "phoenix95:state:prices"  # hash symbol -> Price JSON
STATE_CANDLES_PREFIX: Final = "phoenix95:state:candles:"  # + SYMBOL:tf -> closed candles JSON
STATE_LIVE_CANDLE_PREFIX: Final = "phoenix95:state:candle:"  # + SYMBOL:tf -> forming candle
STATE_BALANCE_KEY: Final = "phoenix95:state:balance"  # Balance JSON
STATE_POSITIONS_KEY: Final = "phoenix95:state:positions"  # hash symbol -> Position JSON
STATE_ORDERS_KEY: Final = "phoenix95:state:orders"  # hash kind:id -> open Order JSON
STATE_FEED_KEY: Final = "phoenix95:state:feed"  # hash: heartbeats and last sync times
STATE_SYMBOLS_KEY: Final = "phoenix95:state:symbols"  # hash symbol -> SymbolRules JSON
FEED: Final = "feed"  # the market and account feed process (health on services.feed_port)

# --- Record types on the streams (shared.records.Record.type) ---
REC_TICK: Final = "tick"  # market:stream, shared.models.TickRecord
REC_KLINE: Final = "kline"  # market:stream, shared.models.KlineRecord (closed candles)
REC_EXCHANGE_ORDER: Final = "exchange_order"  # trade:stream, ExchangeOrderRecord
REC_EXCHANGE_POSITION: Final = "exchange_position"  # trade:stream, ExchangePositionRecord
REC_EXCHANGE_BALANCE: Final = "exchange_balance"  # trade:stream, ExchangeBalanceRecord
