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
from shared.names import AUTH_HEADER, BRAIN, EXECUTE, RISK
from shared.signing import CallerRefused, pair_key, sign_approval, sign_call
from tests.support.bus import FakeBus

RISK_KEY, BRAIN_KEY = "risk-own-key-for-tests", "brain-own-key-for-tests"


def _unsigned_intent() -> dict:
    return TradeIntent(signal_id="sig-1", idempotency_key="id:1", symbol="BTCUSDT",
                       side="LONG", quantity=Decimal("0.01"), reference_price=Decimal(60000),
                       leverage=20, stop_loss=Decimal(58800), take_profit=Decimal(61200),
                       margin=Decimal(30)).wire()


def _intent() -> dict:
    """An intent as brain queues it: with risk's signed approval."""
    body = _unsigned_intent()
    return {**body, "approval": sign_approval(RISK_KEY, EXECUTE, body, ttl_s=120)}


CLOSE = {"type": "close_request", "signal_id": "s", "symbol": "BTCUSDT",
         "idempotency_key": "k", "reason": "signal"}


def _signed_close(key: str = BRAIN_KEY) -> dict:
    return {AUTH_HEADER: sign_call(BRAIN, key, EXECUTE, "close_request", [CLOSE], {})}


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


@pytest.fixture
def make_service(secrets_env):
    from nameko.testing.services import worker_factory

    from nameko_services.execute.service import ExecuteService
    from shared.settings import load_settings

    def build(engine, headers=None):
        keys = {RISK: pair_key(RISK_KEY, EXECUTE), BRAIN: pair_key(BRAIN_KEY, EXECUTE)}
        return worker_factory(ExecuteService, engine=engine, telemetry=FakeTelemetry(),
                              bus=FakeBus(), headers=headers or {},
                              config=load_settings(security={"verify_keys": keys}))

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


def test_position_closed_carries_the_strategy_and_side_of_its_intent(make_service):
    service = make_service(FakeEngine())
    correction = Correction("booked_close", "BTCUSDT", "sig-1", "info", "stop fired",
                            {"reason": "stop_loss", "exit_price": "58800",
                             "realized_pnl": "-12.4", "side": "LONG", "strategy": "ema"})

    service._corrected(correction)

    [(stream, _, signal_id, data)] = [r for r in service.telemetry.records
                                      if r[1] == "position_closed"]
    assert (stream, signal_id) == ("trade:stream", "sig-1")
    assert data == {"symbol": "BTCUSDT", "side": "LONG", "strategy": "ema",
                    "reason": "stop_loss", "exit_price": "58800", "realized_pnl": "-12.4"}
    event = service.dispatch.call_args_list[-1].args[1]
    assert event == {"type": "position_closed", "signal_id": "sig-1", **data}


def test_a_manual_close_reports_the_strategy_too(make_service):
    class Closing(FakeEngine):
        def close(self, symbol, reason="manual"):
            return Outcome("closed", symbol, "sig-7", reason, {
                "exit_price": "61000", "realized_pnl": "5", "side": "SHORT",
                "strategy": "rsi"})

    service = make_service(Closing())

    service.close("BTCUSDT")

    [data] = [r[3] for r in service.telemetry.records if r[1] == "position_closed"]
    assert (data["strategy"], data["side"], data["reason"]) == ("rsi", "SHORT", "manual")


def test_entry_filled_and_trade_opened_carry_the_strategy(make_service):
    opened = Outcome("opened", "BTCUSDT", "sig-1", "", {**OPENED.details, "strategy": "ema"})
    service = make_service(FakeEngine(opened))

    service.execute_trade(_intent())

    [entry] = [r[3] for r in service.telemetry.records if r[1] == "entry_filled"]
    assert entry["strategy"] == "ema"
    assert service.dispatch.call_args_list[0].args[1]["strategy"] == "ema"


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
    service = make_service(FakeEngine(error=error), _signed_close())

    with pytest.raises(Retryable):
        service.execute_trade(CLOSE)


def test_refused_close_request_is_recorded_and_alerted_not_dead_lettered(make_service):
    service = make_service(FakeEngine(error=ccxt.InvalidOrder("ReduceOnly Order is rejected.")),
                           _signed_close())

    service.execute_trade(CLOSE)

    [(_, _, alert)] = service.bus.published
    assert alert.level == "critical" and "ReduceOnly" in alert.text
    assert "close_failed" in [r[1] for r in service.telemetry.records]


def _forged_approval() -> dict:
    body = _unsigned_intent()
    return {**body, "approval": sign_approval("not-risk", EXECUTE, body, ttl_s=120)}


@pytest.mark.parametrize("make_body", [
    _unsigned_intent,  # no approval at all: published straight onto trade_execution
    lambda: {**_intent(), "quantity": "5"},  # approved, then changed
    _forged_approval,  # signed with a key that is not risk's
])
def test_an_intent_without_risk_s_approval_is_not_traded_but_failed_and_dead_lettered(
        make_service, make_body):
    engine = FakeEngine()
    service = make_service(engine)
    body = make_body()

    with pytest.raises(CallerRefused, match="unsigned_intent"):  # -> the dead-letter queue
        service.execute_trade(body)

    assert engine.opened == []
    failed = [c for c in service.dispatch.call_args_list if c.args[0] == "trade_failed"]
    assert failed and failed[0].args[1]["reason"] == "unsigned_intent"  # frees the reservation


@pytest.mark.parametrize("headers", [
    {"x-other": "1"}, {AUTH_HEADER: "v1:brain:1:n:forged"}, _signed_close(key="not-brain")])
def test_a_close_request_without_brain_s_signature_is_refused(make_service, headers):
    engine = FakeEngine()
    closed = []
    engine.close = lambda symbol, reason="manual": closed.append(symbol)
    service = make_service(engine, headers)

    with pytest.raises(CallerRefused):
        service.execute_trade(CLOSE)

    assert closed == []


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
