"""Risk against the real paper exchange (in-process, through ccxt), real Redis and SQLite:
every reason code from a real intent, atomic reservations across instances, the daily
ledger, and the live watch's warnings."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis

from nameko_services.paper_exchange.server import PaperExchange
from nameko_services.risk.dependencies import RiskDesk, StateStore, WarningLatch
from nameko_services.risk.ledger import Ledger
from nameko_services.risk.reservations import ReservationBook
from shared.db import make_sessionmaker
from shared.exchange import make_exchange
from shared.market import ExchangeGateway
from shared.models import TradeIntent
from shared.settings import load_settings
from tests.integration.conftest import paper_admin, pin_price

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/14"
SYMBOL = "BTCUSDT"
CCXT = "BTC/USDT:USDT"

DeskFactory = Callable[..., RiskDesk]


@pytest.fixture(scope="module")
def paper(exec_paper: PaperExchange) -> PaperExchange:
    """The in-process paper exchange of tests/integration/conftest.py."""
    return exec_paper


@pytest.fixture
def make_desk(paper: PaperExchange, tmp_path: Path) -> Iterator[DeskFactory]:
    """Risk instances sharing one exchange account, one database and one Redis."""
    tag = uuid.uuid4().hex[:10]
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    keys = {"res": f"test:risk:{tag}:res", "rate": f"test:risk:{tag}:rate",
            "warn": f"test:risk:{tag}:warn", "throttle": f"test:risk:{tag}:thr:",
            "state": f"test:risk:{tag}:state"}
    db = f"sqlite:///{tmp_path / 'risk.db'}"

    def build(base_url: str | None = None, **sections: Any) -> RiskDesk:
        settings = load_settings(redis_streams={"url": REDIS_URL}, database={"url": db},
                                 **sections)
        sessions = make_sessionmaker(settings)
        own = redis.Redis.from_url(REDIS_URL, decode_responses=True)
        gateway = ExchangeGateway(settings, make_exchange(settings,
                                                          base_url=base_url or paper.base_url))
        return RiskDesk(settings, gateway, StateStore(sessions, own, keys["state"]),
                        ReservationBook(own, settings.risk.reservation_ttl_s,
                                        keys["res"], keys["rate"]),
                        Ledger(sessions), WarningLatch(own, keys["warn"], keys["throttle"]))

    paper_admin(paper, "/paper/reset")
    for symbol, price in (("BTCUSDT", 60000), ("ETHUSDT", 3000)):
        pin_price(paper, price, symbol)
    yield build
    for key in client.scan_iter(f"test:risk:{tag}:*"):
        client.delete(key)
    client.close()


def intent(symbol: str = SYMBOL, **over: Any) -> TradeIntent:
    price = Decimal(60000 if symbol == "BTCUSDT" else 3000)
    fields: dict[str, Any] = dict(
        signal_id=uuid.uuid4().hex, idempotency_key=uuid.uuid4().hex, symbol=symbol,
        side="LONG", quantity=Decimal("0.010") if symbol == "BTCUSDT" else Decimal("0.2"),
        reference_price=price, alert_price=price, leverage=20,
        stop_loss=price * Decimal("0.98"), take_profit=price * Decimal("1.02"),
        margin=Decimal(30))
    fields.update(over)
    return TradeIntent(**fields)


def open_position(desk: RiskDesk, symbol: str = CCXT, amount: float = 0.01) -> None:
    client = desk.gateway.client
    client.set_leverage(20, symbol)
    client.set_margin_mode("isolated", symbol)
    client.create_order(symbol, "market", "buy", amount)


def test_sane_intent_is_approved_and_holds_a_reservation(make_desk: DeskFactory) -> None:
    desk = make_desk()
    it = intent()

    decision = desk.check(it)

    assert decision["approved"], decision["reasons"]
    assert decision["checks"]["reserved"] is True
    assert Decimal(decision["liquidation_price"]) < it.stop_loss
    assert desk.reservations.totals().count == 1


@pytest.mark.parametrize("sections,over,code", [
    ({"trading": {"allowed_symbols": ["ETHUSDT"]}}, {}, "symbol_not_allowed"),
    ({}, {"leverage": 50}, "leverage_exceeded"),
    ({}, {"margin_mode": "CROSSED"}, "margin_mode_not_isolated"),
    ({}, {"quantity": Decimal("0.0001")}, "quantity_below_minimum"),
    ({}, {"quantity": Decimal("0.001")}, "below_min_notional"),
    ({}, {"stop_loss": Decimal(61000)}, "stop_loss_missing_or_wrong_side"),
    ({}, {"take_profit": Decimal(59000)}, "take_profit_missing_or_wrong_side"),
    ({}, {"quantity": Decimal(4)}, "insufficient_margin"),
    ({}, {"quantity": Decimal("0.6")}, "position_size_exceeded"),
    ({"risk": {"max_total_exposure": 0.1}}, {"quantity": Decimal("0.02")},
     "max_exposure_exceeded"),
    ({}, {"alert_price": Decimal(70000)}, "price_out_of_band"),
    ({}, {"stop_loss": Decimal(57300)}, "liquidation_before_stop"),
])
def test_each_order_and_market_violation_is_denied_with_its_code(
        make_desk: DeskFactory, sections: dict[str, Any], over: dict[str, Any],
        code: str) -> None:
    desk = make_desk(**sections)

    decision = desk.check(intent(**over))

    assert not decision["approved"]
    assert code in decision["reasons"]
    assert desk.reservations.totals().count == 0


def test_second_position_on_a_symbol_is_denied(make_desk: DeskFactory) -> None:
    desk = make_desk()
    open_position(desk)

    decision = desk.check(intent())

    assert "position_already_open" in decision["reasons"]


def test_open_position_cap_counts_the_exchange(make_desk: DeskFactory) -> None:
    desk = make_desk(trading={"max_open_positions": 1})
    open_position(desk, "ETH/USDT:USDT", 0.2)

    decision = desk.check(intent())

    assert "max_open_positions" in decision["reasons"]


def test_order_rate_limit_is_shared_by_instances(make_desk: DeskFactory) -> None:
    sections = {"risk": {"max_orders_per_minute": 2},
                "trading": {"allow_same_symbol_position": True}}
    first, second = make_desk(**sections), make_desk(**sections)

    results = [first.check(intent()), second.check(intent()), first.check(intent())]

    assert [r["approved"] for r in results] == [True, True, False]
    assert results[2]["reasons"] == ["order_rate_exceeded"]


def test_state_denies_and_is_mirrored_to_redis(make_desk: DeskFactory) -> None:
    desk = make_desk()

    desk.set_state("HALTED", "test")
    halted = desk.check(intent())
    desk.set_state("REDUCING", "test")
    reducing = desk.check(intent())

    assert halted["reasons"][0] == "halted" and reducing["reasons"][0] == "reducing"
    assert desk.state._redis is not None and desk.state._redis.get(desk.state.key) == "REDUCING"


def test_unreachable_exchange_is_a_denial_not_an_error(make_desk: DeskFactory) -> None:
    desk = make_desk(base_url="http://127.0.0.1:9")

    decision = desk.check(intent())

    assert decision["reasons"] == ["exchange_unavailable"]


def test_realised_daily_loss_past_the_limit_halts_and_denies(
        make_desk: DeskFactory, paper: PaperExchange) -> None:
    desk = make_desk(risk={"max_daily_loss": 0.002})
    desk.supervise()  # the day's starting wallet
    open_position(desk, amount=0.05)
    pin_price(paper, 59000)
    desk.gateway.client.create_order(CCXT, "market", "sell", 0.05, None, {"reduceOnly": True})

    sup = desk.supervise()
    decision = desk.check(intent(reference_price=Decimal(59000),
                                 alert_price=Decimal(59000), stop_loss=Decimal(57820),
                                 take_profit=Decimal(60180)))

    assert sup.halt_reason.startswith("daily_loss_limit")
    assert sup.ledger is not None and sup.ledger.daily_pnl < Decimal(-50)
    assert "daily_loss_limit" in decision["reasons"]


def test_drawdown_from_the_equity_peak_halts_and_denies(
        make_desk: DeskFactory, paper: PaperExchange) -> None:
    desk = make_desk(risk={"max_drawdown": 0.002})
    open_position(desk, amount=0.05)
    desk.supervise()  # the peak, at 60000
    pin_price(paper, 59000)

    sup = desk.supervise()
    decision = desk.check(intent(symbol="ETHUSDT"))

    assert sup.halt_reason.startswith("max_drawdown")
    assert "max_drawdown" in decision["reasons"]


def test_fifty_concurrent_checks_against_a_cap_for_three_approve_exactly_three(
        make_desk: DeskFactory) -> None:
    # each intent is 600 USDT notional; 0.21 x 10,000 equity leaves room for three
    sections = {"risk": {"max_total_exposure": 0.21},
                "trading": {"allow_same_symbol_position": True, "max_open_positions": 100}}
    desks = [make_desk(**sections) for _ in range(2)]  # two risk instances
    for d in desks:
        d.gateway.ensure_markets()
    start = threading.Barrier(50)

    def one(i: int) -> dict[str, Any]:
        start.wait()
        return desks[i % 2].check(intent())

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(one, range(50)))

    approved = [r for r in results if r["approved"]]
    assert len(approved) == 3
    assert all("max_exposure_exceeded" in r["reasons"] for r in results if not r["approved"])
    assert desks[0].reservations.totals().count == 3


def test_released_reservation_frees_its_room(make_desk: DeskFactory) -> None:
    desk = make_desk(risk={"max_total_exposure": 0.07},
                     trading={"allow_same_symbol_position": True})
    first = intent()
    assert desk.check(first)["approved"]
    assert not desk.check(intent())["approved"]

    desk.reservations.release(first.signal_id)  # execute.trade_failed
    again = desk.check(intent())

    assert again["approved"], again["reasons"]


def test_filled_reservation_is_not_counted_twice_once_the_exchange_shows_it(
        make_desk: DeskFactory) -> None:
    # room for two 600 USDT positions: double counting the first would deny the second
    desk = make_desk(risk={"max_total_exposure": 0.15, "position_cache_s": 0.0},
                     trading={"allow_same_symbol_position": True})
    first = intent()
    assert desk.check(first)["approved"]
    open_position(desk)  # execute fills it
    desk.reservations.mark_filled(first.signal_id)  # execute.trade_opened

    second = desk.check(intent())

    assert second["approved"], second["reasons"]
    assert desk.reservations.totals(exclude=second["signal_id"]).count == 0


def test_price_walk_toward_liquidation_warns_once_per_escalation(
        make_desk: DeskFactory) -> None:
    desk = make_desk(risk={"position_cache_s": 0.0, "stop_check_interval_s": 0.1})
    open_position(desk)
    desk.gateway.client.create_order(CCXT, "STOP_MARKET", "sell", 0.01, None,
                                     {"triggerPrice": 57400, "reduceOnly": True})

    calm = desk.on_tick(SYMBOL, Decimal(60000))
    warned = desk.on_tick(SYMBOL, Decimal(58900))
    repeated = desk.on_tick(SYMBOL, Decimal(58850))
    critical = desk.on_tick(SYMBOL, Decimal(57800))

    assert calm.alerts == [] and calm.risks[0].liquidation_level == ""
    assert [a.code for a in warned.alerts] == ["LIQUIDATION_WARNING"]
    assert repeated.alerts == []
    assert "LIQUIDATION_CRITICAL" in [a.code for a in critical.alerts]
    risk = critical.risks[0]
    assert risk.stop_loss == Decimal(57400) and risk.unrealized_pnl < 0
    assert Decimal(0) < risk.margin_ratio < Decimal(1)


def test_position_without_a_stop_loss_is_reported_missing(make_desk: DeskFactory) -> None:
    desk = make_desk(risk={"stop_grace_s": 0.0, "position_cache_s": 0.0})
    open_position(desk)

    sup = desk.supervise()

    assert [p.symbol for p in sup.missing_stops] == [SYMBOL]
    assert sup.open_positions == 1 and sup.exposure > 0
