"""Execute's queue entrypoint through worker_factory: the engine, bus and RPC are fakes."""

from __future__ import annotations

from decimal import Decimal

import ccxt
import pytest
from pydantic import ValidationError

from nameko_services.execute.engine import LockBusy, Outcome
from nameko_services.execute.reconcile import Correction
from shared.consumer import Retryable
from shared.market import ExchangeUnavailable
from shared.models import TradeIntent


def _intent() -> dict:
    return TradeIntent(signal_id="sig-1", idempotency_key="id:1", symbol="BTCUSDT",
                       side="LONG", quantity=Decimal("0.01"), reference_price=Decimal(60000),
                       leverage=20, stop_loss=Decimal(58800), take_profit=Decimal(61200),
                       margin=Decimal(30)).wire()


OPENED = Outcome("opened", "BTCUSDT", "sig-1", "", {
    "side": "LONG", "quantity": "0.01", "entry_price": "60000", "stop_loss": "58800",
    "take_profit": "61200", "liquidation_price": "57228.92", "margin": "30", "leverage": 20,
    "sl_client_id": "p95s-x", "tp_client_id": "p95t-x", "stop_loss_armed": True,
    "take_profit_armed": True, "filled_at": 1})


class FakeEngine:
    def __init__(self, outcome=OPENED, error=None):
        self.outcome, self.error, self.opened = outcome, error, []

    def open(self, intent):
        if self.error:
            raise self.error
        self.opened.append(intent)
        return self.outcome

    def close(self, symbol, reason="manual"):
        if self.error:
            raise self.error
        return Outcome("closed", symbol, "s", reason, {})


class FakeTelemetry:
    def __init__(self):
        self.records = []

    def emit(self, stream, record):
        self.records.append((stream, record.type, record.signal_id, record.data))


class FakeBus:
    def __init__(self):
        self.published = []

    def publish(self, exchange, key, message, declare=None, headers=None):
        self.published.append((exchange, key, message))


@pytest.fixture
def make_service(secrets_env):
    from nameko.testing.services import worker_factory

    from nameko_services.execute.service import ExecuteService
    from shared.settings import load_settings

    def build(engine):
        return worker_factory(ExecuteService, engine=engine, telemetry=FakeTelemetry(),
                              bus=FakeBus(), config=load_settings())

    return build


def test_opened_trade_is_recorded_and_announced(make_service):
    service = make_service(FakeEngine())

    service.execute_trade(_intent())

    assert [r[1] for r in service.telemetry.records] == ["entry_filled", "brackets_placed"]
    assert service.telemetry.records[0][3]["filled_at"] == 1
    event_type, payload = service.dispatch.call_args.args
    assert event_type == "trade_opened"
    assert payload["stop_loss"] == "58800" and payload["liquidation_price"] == "57228.92"


def test_redelivered_duplicate_is_recorded_but_not_announced_again(make_service):
    duplicate = Outcome("duplicate", "BTCUSDT", "sig-1", "already executed", OPENED.details)
    service = make_service(FakeEngine(duplicate))

    service.execute_trade(_intent())

    assert [r[1] for r in service.telemetry.records] == ["entry_filled"]
    service.dispatch.assert_not_called()


@pytest.mark.parametrize("error", [LockBusy("busy"), ExchangeUnavailable("timeout")])
def test_transient_failures_are_retried_through_the_queue(make_service, error):
    service = make_service(FakeEngine(error=error))

    with pytest.raises(Retryable):
        service.execute_trade(_intent())


def test_malformed_intent_is_poison_not_retried(make_service):
    service = make_service(FakeEngine())

    with pytest.raises(ValidationError):
        service.execute_trade({"type": "trade_intent", "symbol": "BTCUSDT"})
    assert service.engine.opened == []


def test_preflight_failure_switches_risk_to_reducing_and_alerts(make_service):
    blocked = Outcome("blocked", "BTCUSDT", "sig-1", "pre-flight failed: leverage 10")
    service = make_service(FakeEngine(blocked))

    service.execute_trade(_intent())

    service.risk.set_state.assert_called_once()
    assert service.risk.set_state.call_args.args[0] == "REDUCING"
    [(_, key, alert)] = service.bus.published
    assert key == "risk.alert" and alert.level == "critical" and alert.code == "PREFLIGHT_FAILED"
    assert service.dispatch.call_args.args[0] == "trade_failed"


def test_reconciliation_close_is_booked_announced_and_alerted_when_critical(make_service):
    service = make_service(FakeEngine())
    correction = Correction("booked_close", "BTCUSDT", "sig-1", "critical", "liquidated",
                            {"reason": "liquidation", "exit_price": "57228.9",
                             "realized_pnl": "-29.9"})

    service._corrected(correction)

    kinds = [r[1] for r in service.telemetry.records]
    assert kinds == ["reconciliation", "position_closed"]
    dispatched = [c.args[0] for c in service.dispatch.call_args_list]
    assert dispatched == ["reconciliation", "position_closed"]
    assert service.bus.published[0][2].code == "RECONCILIATION_BOOKED_CLOSE"


def test_own_telemetry_and_balance_records_on_trade_stream_are_ignored(make_service):
    service = make_service(FakeEngine())  # has no store: touching it would raise

    service.on_exchange_event({"type": "entry_filled", "signal_id": "sig-1", "ts": "1",
                               "data": "{not even json"})
    service.on_exchange_event({"type": "exchange_balance", "signal_id": "", "ts": "1",
                               "data": '{"asset": "USDT", "wallet": "1000"}'})

    assert service.engine.opened == []


@pytest.mark.parametrize("reason", ["intent_expired", "entry rejected: Margin is insufficient."])
def test_failed_intent_releases_the_reservation_and_alerts(make_service, reason):
    service = make_service(FakeEngine(Outcome("failed", "BTCUSDT", "sig-1", reason)))

    service.execute_trade(_intent())

    event_type, payload = service.dispatch.call_args.args
    assert event_type == "trade_failed"  # risk releases the reservation on it
    assert (payload["signal_id"], payload["reason"]) == ("sig-1", reason)
    [(_, key, alert)] = service.bus.published
    assert key == "risk.alert" and alert.signal_id == "sig-1" and reason in alert.text


@pytest.mark.parametrize("error", [ccxt.RequestTimeout("read timeout"),
                                   ccxt.DDoSProtection("429 Too Many Requests"),
                                   ccxt.ExchangeNotAvailable("503"),
                                   # Binance -1001 "Internal error ... try again" (chaos run)
                                   ccxt.OperationFailed("-1001 Internal error")])
def test_network_and_overload_errors_of_a_close_are_retried(make_service, error):
    service = make_service(FakeEngine(error=error))

    with pytest.raises(Retryable):
        service.execute_trade({"type": "close_request", "signal_id": "s", "symbol": "BTCUSDT",
                               "idempotency_key": "k"})


def test_refused_close_request_is_recorded_and_alerted_not_dead_lettered(make_service):
    service = make_service(FakeEngine(error=ccxt.InvalidOrder("ReduceOnly Order is rejected.")))

    service.execute_trade({"type": "close_request", "signal_id": "s", "symbol": "BTCUSDT",
                           "idempotency_key": "k"})

    [(_, _, alert)] = service.bus.published
    assert alert.level == "critical" and "ReduceOnly" in alert.text
    assert "close_failed" in [r[1] for r in service.telemetry.records]


@pytest.mark.parametrize("leading", [True, False])
def test_the_reconciliation_sweep_runs_on_the_leading_instance_only(
        secrets_env, monkeypatch, leading):
    from nameko.testing.services import worker_factory

    from nameko_services.execute import service as module
    from shared.settings import load_settings
    from tests.support.leases import FakeLease

    sweeps = []

    class CountingReconciler:
        def __init__(self, engine):
            pass

        def sweep(self):
            sweeps.append(1)
            return []

    monkeypatch.setattr(module, "Reconciler", CountingReconciler)
    lease = FakeLease(leading)
    service = worker_factory(module.ExecuteService, engine=FakeEngine(), leader=lease,
                             telemetry=FakeTelemetry(), bus=FakeBus(), config=load_settings())

    service.reconcile()

    assert sweeps == ([1] if leading else [])
    assert lease.due_asked == [load_settings().exchange.reconcile_interval]
