"""Risk against the real paper exchange (in-process, through ccxt), real Redis and SQLite:
every reason code from a real intent, atomic reservations across instances, the daily
ledger, the live watch's warnings, and the refusals on stale state.

Risk reads market and account from the feed's state with the real StateReader; here
:class:`PaperFeed` stands in for the feed process and writes the paper account's state with
the real StateWriter (Redis db 13, whose ``phoenix95:state:*`` keys belong to these tests).
"""

from __future__ import annotations

import datetime as dtm
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis

from nameko_services.notify.commands import fmt_money, format_pnl, format_status, pnl_summary
from nameko_services.notify.engine import format_daily_summary
from nameko_services.paper_exchange.server import PaperExchange
from nameko_services.risk.desk import RiskDesk
from nameko_services.risk.ledger import Ledger
from nameko_services.risk.reservations import ReservationBook
from nameko_services.risk.stores import StateStore, WarningLatch
from shared.db import make_sessionmaker
from shared.models import TradeIntent
from shared.names import STATE_SYMBOLS_KEY
from shared.settings import load_settings
from shared.state import Position, Price, StateReader, now_ms
from shared.symbol_rules import SymbolRulesReader
from tests.integration.conftest import paper_admin, pin_price
from tests.support.state_feed import PaperFeed, clear_state

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/13"
SYMBOL = "BTCUSDT"
CCXT = "BTC/USDT:USDT"
STALE_MS = 10_000  # older than feed.max_staleness_seconds (5 s)

DeskFactory = Callable[..., RiskDesk]


@pytest.fixture(scope="module")
def paper(exec_paper: PaperExchange) -> PaperExchange:
    """The in-process paper exchange of tests/integration/conftest.py."""
    return exec_paper


@pytest.fixture
def feed(paper: PaperExchange) -> Iterator[PaperFeed]:
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    clear_state(client)
    yield PaperFeed(load_settings(), paper, client)
    clear_state(client)
    client.close()


@pytest.fixture
def make_desk(paper: PaperExchange, feed: PaperFeed, tmp_path: Path) -> Iterator[DeskFactory]:
    """Risk instances sharing one exchange account, one database and one Redis; the state
    is synced once the paper account is reset (call ``feed.sync()`` after a change)."""
    tag = uuid.uuid4().hex[:10]
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    keys = {"res": f"test:risk:{tag}:res", "rate": f"test:risk:{tag}:rate",
            "warn": f"test:risk:{tag}:warn", "throttle": f"test:risk:{tag}:thr:",
            "state": f"test:risk:{tag}:state"}
    db = f"sqlite:///{tmp_path / 'risk.db'}"

    def build(**sections: Any) -> RiskDesk:
        settings = load_settings(redis_streams={"url": REDIS_URL}, database={"url": db},
                                 **sections)
        sessions = make_sessionmaker(settings)
        own = redis.Redis.from_url(REDIS_URL, decode_responses=True)
        return RiskDesk(settings, SymbolRulesReader(own),
                        StateStore(sessions, own, keys["state"]),
                        ReservationBook(own, settings.risk.reservation_ttl_s,
                                        keys["res"], keys["rate"]),
                        Ledger(sessions), WarningLatch(own, keys["warn"], keys["throttle"]),
                        StateReader(own, settings))

    paper_admin(paper, "/paper/reset")
    for symbol, price in (("BTCUSDT", 60000), ("ETHUSDT", 3000)):
        pin_price(paper, price, symbol)
    feed.sync()
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


def open_position(feed: PaperFeed, symbol: str = CCXT, amount: float = 0.01) -> None:
    """Open it on the exchange and let the feed see it."""
    client = feed.client
    client.set_leverage(20, symbol)
    client.set_margin_mode("isolated", symbol)
    client.create_order(symbol, "market", "buy", amount)
    feed.sync()


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


def test_second_position_on_a_symbol_is_denied(make_desk: DeskFactory, feed: PaperFeed) -> None:
    desk = make_desk()
    open_position(feed)

    decision = desk.check(intent())

    assert "position_already_open" in decision["reasons"]


def test_open_position_cap_counts_the_positions_in_the_state(
        make_desk: DeskFactory, feed: PaperFeed) -> None:
    desk = make_desk(trading={"max_open_positions": 1})
    open_position(feed, "ETH/USDT:USDT", 0.2)

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


def test_a_symbol_without_published_rules_is_refused_as_stale_market(
        make_desk: DeskFactory, feed: PaperFeed) -> None:
    desk = make_desk()
    feed.writer.redis.hdel(STATE_SYMBOLS_KEY, SYMBOL)

    decision = desk.check(intent())

    assert decision["reasons"] == ["market_data_stale"]


def test_realised_daily_loss_past_the_limit_halts_and_denies(
        make_desk: DeskFactory, paper: PaperExchange, feed: PaperFeed) -> None:
    desk = make_desk(risk={"max_daily_loss": 0.002})
    desk.supervise()  # the day's starting wallet
    open_position(feed, amount=0.05)
    pin_price(paper, 59000)
    feed.client.create_order(CCXT, "market", "sell", 0.05, None, {"reduceOnly": True})
    feed.sync()

    sup = desk.supervise()
    decision = desk.check(intent(reference_price=Decimal(59000),
                                 alert_price=Decimal(59000), stop_loss=Decimal(57820),
                                 take_profit=Decimal(60180)))

    assert sup.halt_reason.startswith("daily_loss_limit")
    assert sup.ledger is not None and sup.ledger.daily_pnl < Decimal(-50)
    assert "daily_loss_limit" in decision["reasons"]


def test_drawdown_from_the_equity_peak_halts_and_denies(
        make_desk: DeskFactory, paper: PaperExchange, feed: PaperFeed) -> None:
    desk = make_desk(risk={"max_drawdown": 0.002})
    open_position(feed, amount=0.05)
    desk.supervise()  # the peak, at 60000
    pin_price(paper, 59000)
    feed.sync()

    sup = desk.supervise()
    decision = desk.check(intent(symbol="ETHUSDT"))

    assert sup.halt_reason.startswith("max_drawdown")
    assert "max_drawdown" in decision["reasons"]


def test_drawdown_is_marked_to_the_price_stream_not_the_last_account_event(
        make_desk: DeskFactory, feed: PaperFeed) -> None:
    # the user-data stream reports unrealised PnL only with an account event; the mark
    # price moves every second and the equity must follow it
    desk = make_desk(risk={"max_drawdown": 0.002})
    open_position(feed, amount=0.05)
    desk.supervise()  # the peak, at 60000
    feed.writer.prices([Price(symbol=SYMBOL, mark=Decimal(59000), last=Decimal(59000),
                              updated_ms=now_ms())])

    sup = desk.supervise()

    assert sup.halt_reason.startswith("max_drawdown")
    assert sup.equity < Decimal(10000) - Decimal(45)


def test_fifty_concurrent_checks_against_a_cap_for_three_approve_exactly_three(
        make_desk: DeskFactory) -> None:
    # each intent is 600 USDT notional; 0.21 x 10,000 equity leaves room for three
    sections = {"risk": {"max_total_exposure": 0.21},
                "trading": {"allow_same_symbol_position": True, "max_open_positions": 100}}
    desks = [make_desk(**sections) for _ in range(2)]  # two risk instances
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


def test_filled_reservation_is_not_counted_twice_once_the_state_shows_it(
        make_desk: DeskFactory, feed: PaperFeed) -> None:
    # room for two 600 USDT positions: double counting the first would deny the second
    desk = make_desk(risk={"max_total_exposure": 0.15},
                     trading={"allow_same_symbol_position": True})
    first = intent()
    assert desk.check(first)["approved"]
    feed.client.set_leverage(20, CCXT)
    feed.client.create_order(CCXT, "market", "buy", 0.01)  # execute fills it
    desk.reservations.mark_filled(first.signal_id)  # execute.trade_opened
    feed.sync()  # the feed's next heartbeat, with the position

    second = desk.check(intent())

    assert second["approved"], second["reasons"]
    assert desk.reservations.totals(exclude=second["signal_id"]).count == 0


def test_filled_reservation_holds_its_symbol_until_the_state_shows_the_position(
        make_desk: DeskFactory, feed: PaperFeed) -> None:
    # chaos exchange-faults: execute reported the fill, the feed's heartbeat moved on, but
    # the fill's own user-data event came 0.7 s later; in between risk saw neither the
    # reservation nor the position and approved a second entry on the symbol
    desk = make_desk()
    first = intent()
    assert desk.check(first)["approved"]
    desk.reservations.mark_filled(first.signal_id)  # execute.trade_opened
    feed.sync()  # a heartbeat after the fill, without the position (its event is late)

    second = desk.check(intent())

    assert not second["approved"]
    assert "position_already_open" in second["reasons"]


def test_a_price_without_a_value_is_a_refusal_not_an_exception(
        make_desk: DeskFactory, feed: PaperFeed) -> None:
    # chaos kill-feed: the restarted feed had stored DOGEUSDT's price without a value yet;
    # the check raised StaleState, and brain dead-lettered the signal without an outcome
    desk = make_desk()
    feed.writer.prices([Price(symbol=SYMBOL, updated_ms=now_ms())])

    decision = desk.check(intent())

    assert not decision["approved"]
    assert decision["reasons"] == ["market_data_stale"]


def test_price_walk_toward_liquidation_warns_once_per_escalation(
        make_desk: DeskFactory, feed: PaperFeed) -> None:
    desk = make_desk()
    open_position(feed)
    feed.client.create_order(CCXT, "STOP_MARKET", "sell", 0.01, None,
                             {"triggerPrice": 57400, "reduceOnly": True})
    feed.sync()

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


def test_liquidation_price_is_computed_when_the_stream_did_not_give_one(
        make_desk: DeskFactory, feed: PaperFeed) -> None:
    desk = make_desk()
    open_position(feed)
    exchange_liq = desk.on_tick(SYMBOL, Decimal(60000)).risks[0].liquidation_price
    held = feed.writer.redis.hget("phoenix95:state:positions", SYMBOL)
    position = Position.model_validate_json(held)
    # an ACCOUNT_UPDATE carries no liquidation price: the feed stores the position without
    feed.writer.apply(positions=[position.model_copy(update={"liquidation_price": None})])

    computed = desk.on_tick(SYMBOL, Decimal(60000)).risks[0].liquidation_price

    assert abs(computed - exchange_liq) / exchange_liq < Decimal("0.001")


def test_position_without_a_stop_loss_is_reported_missing(
        make_desk: DeskFactory, feed: PaperFeed) -> None:
    # re-checked at every supervision (the interval must be > 0: a microsecond)
    desk = make_desk(risk={"stop_grace_s": 0.0, "stop_check_interval_s": 1e-6})
    open_position(feed)

    sup = desk.supervise()
    again = desk.supervise()

    assert [p.symbol for p in sup.missing_stops] == [SYMBOL]
    assert sup.open_positions == 1 and sup.exposure > 0
    # alerted once (the latch in Redis), reported missing (execute asked to re-arm) each time
    assert [a.code for a in sup.stop_alerts] == ["STOP_LOSS_MISSING"]
    assert [p.symbol for p in again.missing_stops] == [SYMBOL] and again.stop_alerts == []


def test_armed_stop_in_the_state_is_not_reported_missing(
        make_desk: DeskFactory, feed: PaperFeed) -> None:
    desk = make_desk(risk={"stop_grace_s": 0.0})
    open_position(feed)
    feed.client.create_order(CCXT, "STOP_MARKET", "sell", 0.01, None,
                             {"triggerPrice": 57400, "reduceOnly": True})
    feed.sync()

    sup = desk.supervise()

    assert sup.missing_stops == [] and sup.open_positions == 1


# --- stale state: entries refused, the watch goes on ---

def test_fresh_state_approves(make_desk: DeskFactory, feed: PaperFeed) -> None:
    desk = make_desk()
    feed.sync()

    decision = desk.check(intent())

    assert decision["approved"], decision["reasons"]


def test_stale_market_data_refuses_the_entry(make_desk: DeskFactory, feed: PaperFeed) -> None:
    desk = make_desk()
    feed.sync(market_age_ms=STALE_MS)

    decision = desk.check(intent())

    assert not decision["approved"]
    assert decision["reasons"] == ["market_data_stale"]
    assert desk.reservations.totals().count == 0


def test_stale_account_state_refuses_the_entry(make_desk: DeskFactory, feed: PaperFeed) -> None:
    desk = make_desk()
    feed.sync(account_age_ms=STALE_MS)

    decision = desk.check(intent())

    assert decision["reasons"] == ["account_state_stale"]


def test_user_data_stream_down_refuses_at_once(make_desk: DeskFactory, feed: PaperFeed) -> None:
    desk = make_desk()
    feed.writer.mark_down(account=True)  # the feed lost the stream a moment ago

    decision = desk.check(intent())

    assert decision["reasons"] == ["account_state_stale"]


def test_both_stale_reports_both(make_desk: DeskFactory, feed: PaperFeed) -> None:
    desk = make_desk()
    feed.sync(market_age_ms=STALE_MS, account_age_ms=STALE_MS)

    decision = desk.check(intent())

    assert decision["reasons"] == ["market_data_stale", "account_state_stale"]


def test_stale_account_still_watches_the_open_position_and_its_release(
        make_desk: DeskFactory, feed: PaperFeed) -> None:
    # closes and stops never wait for risk: the live watch keeps warning and a closed
    # trade still frees its reservation while the feed is down
    desk = make_desk()
    held = intent()
    assert desk.check(held)["approved"]
    open_position(feed)
    feed.sync(account_age_ms=STALE_MS)

    refused = desk.check(intent(symbol="ETHUSDT"))
    warned = desk.on_tick(SYMBOL, Decimal(57800))
    released = desk.reservations.release(held.signal_id)  # execute.position_closed

    assert refused["reasons"] == ["account_state_stale"]
    assert "LIQUIDATION_CRITICAL" in [a.code for a in warned.alerts]
    assert released


def test_supervision_skips_while_the_account_state_is_stale(
        make_desk: DeskFactory, feed: PaperFeed) -> None:
    from shared.state import StaleState

    desk = make_desk(risk={"stop_grace_s": 0.0})
    open_position(feed)
    feed.sync(account_age_ms=STALE_MS)

    with pytest.raises(StaleState) as raised:
        desk.supervise()

    assert raised.value.reason == "account_state_stale"


def test_warm_risk_makes_no_exchange_request(make_desk: DeskFactory, feed: PaperFeed,
                                            paper: PaperExchange) -> None:
    desk = make_desk(risk={"stop_grace_s": 0.0, "stop_check_interval_s": 0.001},
                     trading={"allow_same_symbol_position": True})
    open_position(feed)
    assert desk.check(intent())["approved"]
    before = paper_requests(paper)

    decisions = [desk.check(intent()) for _ in range(3)]
    desk.supervise()
    desk.on_tick(SYMBOL, Decimal(59000))
    status = desk.status()

    assert all(d["approved"] for d in decisions), [d["reasons"] for d in decisions]
    assert status["open_positions"][0]["symbol"] == SYMBOL
    assert paper_requests(paper) == before  # risk holds no exchange client at all


def paper_requests(paper: PaperExchange) -> float:
    """Every HTTP request the paper exchange has answered so far."""
    return sum(sample.value for metric in paper.metrics.requests.collect()
               for sample in metric.samples if sample.name.endswith("_total"))


def test_a_fresh_price_row_without_any_price_is_refused_as_stale_market(
        make_desk: DeskFactory, feed: PaperFeed) -> None:
    # right after the feed reconnects, a book-ticker update can write the symbol's row
    # before any mark or last price: a check must refuse it, not raise
    desk = make_desk()
    feed.writer.prices([Price(symbol=SYMBOL, bid=Decimal(59990), updated_ms=now_ms())])

    decision = desk.check(intent())

    assert decision["approved"] is False and decision["reasons"] == ["market_data_stale"]


# --------------------------------------------------------------------------- daily PnL
# One definition (issue 10 item 10, issue 15 item 1): risk's ledger owns daily PnL —
# realised, net of fees, since 00:00 UTC (nameko_services/risk/ledger.py) — and /pnl,
# /status and the daily summary show risk's figure, not a sum of their own.


def test_one_realised_trade_with_fees_is_the_same_daily_pnl_on_every_surface(
        make_desk: DeskFactory, paper: PaperExchange, feed: PaperFeed) -> None:
    desk = make_desk()
    desk.supervise()  # the day's first observation: its starting wallet
    open_position(feed, amount=0.05)
    pin_price(paper, 60300)
    feed.client.create_order(CCXT, "market", "sell", 0.05, None, {"reduceOnly": True})
    feed.sync()
    desk.supervise()

    fills = feed.client.fetch_my_trades(CCXT)
    realised = sum((Decimal(str(f["info"]["realizedPnl"])) for f in fills), Decimal(0))
    fees = sum((Decimal(str(f["fee"]["cost"])) for f in fills), Decimal(0))
    assert realised == Decimal("15") and fees > 0  # 0.05 x 300, both legs paid a fee
    status = desk.status()
    assert Decimal(status["daily_pnl"]) == realised - fees

    today = dtm.datetime.now(dtm.UTC).date()
    shown = f"{fmt_money(realised - fees)} USDT"
    # execute's book says +15 gross for the day: /pnl must not show it as the daily PnL
    trades = [{"realized_pnl": "15", "closed_at": today.isoformat() + "T01:00:00+00:00"}]
    pnl = format_pnl(pnl_summary(trades, [], today, status["daily_pnl"]), today)
    assert f"Daily PnL (realised, net of fees, since 00:00 UTC): {shown}" in pnl
    assert shown in format_status(status)
    assert f"realised {shown} (net of fees)" in format_daily_summary(today, status, trades, [])
