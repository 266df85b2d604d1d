"""Risk's entrypoints through worker_factory; the desk, bus, telemetry and execute are
fakes at the service boundary."""

from __future__ import annotations

from decimal import Decimal as D
from typing import Any

import pytest

from nameko_services.risk.desk import Supervision, TickResult
from nameko_services.risk.watch import WatchedPosition
from shared.models import RiskAlert
from shared.records import Record
from shared.state import StaleState


class FakeLatch:
    def __init__(self) -> None:
        self.levels: dict[str, str] = {}

    def escalated(self, symbol: str, kind: str, level: str) -> bool:
        rank = {"": 0, "warning": 1, "critical": 2}
        key = f"{symbol}:{kind}"
        before = self.levels.get(key, "")
        self.levels[key] = level
        return rank[level] > rank[before]


class FakeReservations:
    def __init__(self) -> None:
        self.released: list[str] = []
        self.filled: list[str] = []

    def release(self, signal_id: str) -> bool:
        self.released.append(signal_id)
        return True

    def mark_filled(self, signal_id: str) -> bool:
        self.filled.append(signal_id)
        return True


class FakeStateStore:
    key = "phoenix95:trading_state"

    def mirror(self, state: str | None = None) -> str:
        return state or "ACTIVE"

    def get(self) -> tuple[str, str]:
        return "ACTIVE", ""


class FakeDesk:
    def __init__(self, decision: dict[str, Any] | None = None,
                 supervision: Supervision | None = None,
                 tick: TickResult | None = None) -> None:
        self.state_now = "ACTIVE"
        self.changes: list[tuple[str, str]] = []
        self.decision = decision
        self.supervision = supervision
        self.tick = tick or TickResult()
        self.ticks: list[tuple[str, D]] = []
        self.latch = FakeLatch()
        self.reservations = FakeReservations()
        self.state = FakeStateStore()

    def check(self, intent: Any) -> dict[str, Any]:
        assert self.decision is not None
        return {**self.decision, "signal_id": intent.signal_id}

    def set_state(self, state: str, reason: str) -> tuple[str, str]:
        previous, self.state_now = self.state_now, state.upper()
        self.changes.append((self.state_now, reason))
        return previous, self.state_now

    def supervise(self) -> Supervision:
        if self.supervision is None:
            raise StaleState("account_state_stale", "account state 9000 ms old")
        return self.supervision

    def on_tick(self, symbol: str, mark: D) -> TickResult:
        self.ticks.append((symbol, mark))
        return self.tick


class FakeBus:
    def __init__(self) -> None:
        self.alerts: list[RiskAlert] = []

    def publish(self, exchange: str, key: str, message: Any, **_: Any) -> None:
        self.alerts.append(message)


class FakeTelemetry:
    def __init__(self) -> None:
        self.records: list[tuple[str, Record]] = []

    def emit(self, stream: str, record: Record) -> None:
        self.records.append((stream, record))

    def health(self) -> dict[str, str]:
        return {}


class FakeExecute:
    def __init__(self, fail: bool = False) -> None:
        self.rearmed: list[str] = []
        self.fail = fail

    def rearm(self, symbol: str) -> dict[str, str]:
        self.rearmed.append(symbol)
        if self.fail:
            raise RuntimeError("MethodNotFound: rearm")
        return {"status": "rearmed"}


INTENT = {"signal_id": "sig-1", "idempotency_key": "k", "symbol": "BTCUSDT", "side": "LONG",
          "quantity": "0.01", "reference_price": "60000", "leverage": 20,
          "stop_loss": "58800", "take_profit": "61200", "margin": "30"}


@pytest.fixture
def make_service(secrets_env: dict[str, str]) -> Any:
    from nameko.testing.services import worker_factory

    from nameko_services.risk.service import RiskService
    from shared.settings import get_settings

    def build(desk: FakeDesk, execute: FakeExecute | None = None) -> Any:
        return worker_factory(RiskService, desk=desk, bus=FakeBus(), telemetry=FakeTelemetry(),
                              execute=execute or FakeExecute(),
                              config=get_settings())

    return build


def _decision(*reasons: str) -> dict[str, Any]:
    return {"type": "risk_decision", "approved": not reasons, "reasons": list(reasons),
            "checks": {"equity": "10000"}, "liquidation_price": "57228.9"}


def test_check_records_its_decision_on_the_risk_stream(make_service: Any) -> None:
    svc = make_service(FakeDesk(_decision()))

    decision = svc.check(INTENT)

    assert decision["approved"]
    [(stream, record)] = svc.telemetry.records
    assert stream == "risk:stream" and record.type == "risk_check"
    assert record.signal_id == "sig-1" and record.data["approved"] is True


def test_denial_for_a_breached_daily_loss_halts_trading_once(make_service: Any) -> None:
    desk = FakeDesk(_decision("daily_loss_limit"))
    svc = make_service(desk)

    svc.check(INTENT)
    svc.check(INTENT)

    assert desk.state_now == "HALTED"
    [alert] = svc.bus.alerts
    assert alert.code == "STATE_CHANGED" and alert.alert_id.startswith("state:")
    [change] = [r for _, r in svc.telemetry.records if r.type == "state_changed"]
    assert alert.alert_id == f"state:{change.data['change_id']}"


def test_set_state_announces_a_change_by_one_alert_with_an_id_and_a_record(
        make_service: Any) -> None:
    svc = make_service(FakeDesk())

    reply = svc.set_state("reducing", "exchange pre-flight failed")
    svc.set_state("active", "recovered")

    assert reply == {"state": "REDUCING", "previous": "ACTIVE",
                     "reason": "exchange pre-flight failed"}
    first, second = svc.bus.alerts  # one message per change, nothing else announces it
    assert first.level == "critical" and "ACTIVE -> REDUCING" in first.text
    assert second.level == "info" and "REDUCING -> ACTIVE" in second.text
    assert first.alert_id and second.alert_id and first.alert_id != second.alert_id
    changes = [r.data for _, r in svc.telemetry.records if r.type == "state_changed"]
    assert [c["state"] for c in changes] == ["REDUCING", "ACTIVE"]


def test_supervision_breach_halts_and_a_missing_stop_is_alerted_once_and_rearmed(
        make_service: Any) -> None:
    pos = WatchedPosition("ETHUSDT", "LONG", D("0.2"), D(3000), D(2860), D(30))
    desk = FakeDesk(supervision=Supervision(state="ACTIVE", ledger=None,
                                            halt_reason="max_drawdown: 25%",
                                            missing_stops=[pos]))
    execute = FakeExecute()
    svc = make_service(desk, execute)

    svc.supervise()
    svc.supervise()

    assert desk.state_now == "HALTED"
    codes = [a.code for a in svc.bus.alerts]
    assert codes.count("STATE_CHANGED") == 1
    assert codes.count("STOP_LOSS_MISSING") == 1
    assert execute.rearmed == ["ETHUSDT", "ETHUSDT"]


def test_missing_rearm_rpc_is_tolerated(make_service: Any) -> None:
    pos = WatchedPosition("ETHUSDT", "LONG", D("0.2"), D(3000), D(2860), D(30))
    desk = FakeDesk(supervision=Supervision(state="ACTIVE", ledger=None, missing_stops=[pos]))
    svc = make_service(desk, FakeExecute(fail=True))

    svc.supervise()

    assert [a.code for a in svc.bus.alerts] == ["STOP_LOSS_MISSING"]


def test_tick_fans_out_alerts_and_metrics_records(make_service: Any) -> None:
    alert = RiskAlert(level="warning", code="LIQUIDATION_WARNING", text="close",
                      symbol="BTCUSDT")
    tick = TickResult(alerts=[alert], records=[Record("position_risk", {"symbol": "BTCUSDT"})])
    desk = FakeDesk(tick=tick)
    svc = make_service(desk)
    fields = Record("tick", {"symbol": "BTCUSDT", "price": "59000",
                             "mark_price": "58990"}).stream_fields()

    svc.on_market(fields)

    assert desk.ticks == [("BTCUSDT", D("58990"))]
    assert [a.code for a in svc.bus.alerts] == ["LIQUIDATION_WARNING"]
    assert [r.type for _, r in svc.telemetry.records] == ["risk_alert", "position_risk"]


def test_non_tick_and_stale_entries_are_skipped(make_service: Any) -> None:
    desk = FakeDesk()
    svc = make_service(desk)

    svc.on_market(Record("kline", {"symbol": "BTCUSDT"}).stream_fields())
    svc.on_market(Record("tick", {"symbol": "BTCUSDT", "price": "1"}, ts=1000).stream_fields())

    assert desk.ticks == []


def test_execute_events_release_or_convert_the_reservation(make_service: Any) -> None:
    desk = FakeDesk()
    svc = make_service(desk)

    svc.on_trade_failed({"signal_id": "a"})
    svc.on_position_closed({"signal_id": "b"})
    svc.on_trade_opened({"signal_id": "c"})

    assert desk.reservations.released == ["a", "b"]
    assert desk.reservations.filled == ["c"]


def test_supervision_on_stale_account_state_halts_nothing_and_alerts_nothing(
        make_service: Any) -> None:
    # notify raises the one stale-state alert; risk must not act on numbers it lacks
    desk = FakeDesk(supervision=None)
    execute = FakeExecute()
    svc = make_service(desk, execute)

    svc.supervise()

    assert desk.changes == [] and svc.bus.alerts == [] and execute.rearmed == []
