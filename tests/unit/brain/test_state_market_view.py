"""Brain's market view on the feed's state: a fake StateReader and fake symbol rules at the
boundary (the real reader on Redis is in tests/integration/test_brain_state.py)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from nameko_services.brain.dependencies import StateMarketView, check_feed_covers_features
from shared.settings import ConfigError, load_settings
from shared.state import (
    MARKET_STALE,
    Account,
    Balance,
    Position,
    Price,
    StaleState,
    now_ms,
)
from shared.symbol_rules import SymbolRules

FIVE_MIN = 300_000


class FakeState:
    """What :class:`shared.state.StateReader` answers, with the staleness it raises."""

    max_age_ms = 5_000

    def __init__(self, candles: list[list[float]], price: Price | None,
                 account: Account) -> None:
        self.rows, self.last, self.acct = candles, price, account

    def price(self, symbol: str) -> Price:
        if self.last is None:
            raise StaleState(MARKET_STALE, f"{symbol}: no market data")
        return self.last

    def prices(self) -> dict[str, Price]:
        return {self.last.symbol: self.last} if self.last else {}

    def candles(self, symbol: str, timeframe: str, limit: int) -> list[list[float]]:
        return self.rows[-limit:]

    def account(self) -> Account:
        return self.acct


class FakeRules:
    """What :class:`shared.symbol_rules.SymbolRulesReader` answers."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def get(self, symbol: str) -> SymbolRules:
        self.asked.append(symbol)
        return SymbolRules(symbol=symbol, tick_size=Decimal("0.1"), step_size=Decimal("0.001"),
                           min_quantity=Decimal("0.001"), min_notional=Decimal(100))


def _candles(forming_open_ms: int, n: int = 5) -> list[list[float]]:
    return [[float(forming_open_ms - i * FIVE_MIN), 1.0, 2.0, 0.5, 1.5, 10.0]
            for i in reversed(range(n))]


def _now_bar() -> int:
    now = now_ms()
    return now - now % FIVE_MIN


def _view(candles: list[list[float]] | None = None, price: Price | None = None,
          account: Account | None = None) -> tuple[StateMarketView, FakeRules]:
    gateway = FakeRules()
    state = FakeState(candles if candles is not None else _candles(_now_bar()),
                      price if price is not None else Price(symbol="BTCUSDT",
                                                            mark=Decimal(60010),
                                                            last=Decimal(60000)),
                      account or Account(balance=Balance(wallet=Decimal(1000))))
    return StateMarketView(state, gateway), gateway  # type: ignore[arg-type]


def test_klines_are_the_states_candles_up_to_the_forming_one() -> None:
    rows = _candles(_now_bar(), n=10)
    view, _ = _view(rows)

    assert view.klines("BTCUSDT", "5m", 4) == rows[-4:]


def test_candles_that_stopped_bars_ago_are_stale() -> None:
    view, _ = _view(_candles(_now_bar() - 3 * FIVE_MIN))

    with pytest.raises(StaleState) as raised:
        view.klines("BTCUSDT", "5m", 4)

    assert raised.value.reason == MARKET_STALE


def test_klines_without_a_fresh_price_are_stale() -> None:
    view, _ = _view()
    view._state.last = None  # type: ignore[attr-defined]

    with pytest.raises(StaleState):
        view.klines("BTCUSDT", "5m", 4)


def test_last_price_is_the_last_trade() -> None:
    view, _ = _view()

    assert view.last_price("BTCUSDT") == Decimal(60000)


def test_equity_marks_open_positions_to_the_mark_price() -> None:
    account = Account(balance=Balance(wallet=Decimal(1000)), positions=(
        Position(symbol="BTCUSDT", side="SHORT", quantity=Decimal("0.1"),
                 entry_price=Decimal(60100), unrealized_pnl=Decimal(99)),))
    view, _ = _view(account=account)

    # (60010 - 60100) * 0.1 * -1 = +9 at the mark, not the 99 of the last account event
    assert view.equity() == Decimal(1009)


def test_symbol_filters_are_the_rules_the_feed_published() -> None:
    view, rules = _view()

    assert view.tick_size("BTCUSDT") == Decimal("0.1")
    assert view.min_notional("BTCUSDT") == Decimal(100)
    assert view.amount_to_precision("BTCUSDT", Decimal("0.26666")) == Decimal("0.266")
    assert rules.asked == ["BTCUSDT"] * 3


@pytest.mark.parametrize("feed,message", [
    ({"timeframes": ["1m", "5m"]}, "feed.timeframes must include 1h"),
    ({"candle_limit": 100}, "feed.candle_limit=100"),
])
def test_a_feed_without_the_features_history_is_refused_at_start(
        secrets_env: dict[str, str], feed: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_feed_covers_features(load_settings(feed=feed))


def test_default_feed_covers_the_features(secrets_env: dict[str, str]) -> None:
    check_feed_covers_features(load_settings())
