"""MatchingEngine: fills, fees, PnL, margin checks, conditional orders, liquidation."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from nameko_services.paper_exchange.engine import MatchingEngine
from nameko_services.paper_exchange.market import SYMBOLS, Market
from nameko_services.paper_exchange.models import ApiError
from shared.money import DEFAULT_BRACKETS, liquidation_price, maintenance_margin

FEE = Decimal("0.0005")
D = Decimal


@pytest.fixture(scope="module")
def market() -> Market:
    return Market(seed=95, volatility_annual=0.6, tick_interval_ms=500)


@pytest.fixture
def engine(market: Market) -> MatchingEngine:
    market.pin("BTCUSDT", D(60000), hold=True)
    market.pin("ETHUSDT", D(3000), hold=True)
    return MatchingEngine(market, D(10000), FEE)


def move(engine: MatchingEngine, price: str, symbol: str = "BTCUSDT") -> None:
    tick = engine.market.pin(symbol, D(price))
    engine.on_mark(symbol, tick.mark_price)


def code_of(exc: pytest.ExceptionInfo[ApiError]) -> int:
    return exc.value.code


def test_market_buy_fills_at_price_with_fee_and_isolated_margin(engine: MatchingEngine) -> None:
    order = engine.place_market("BTCUSDT", "BUY", D("0.01"), False, "c1")
    assert order.status == "FILLED" and order.avg_price == 60000 and order.cum_quote == 600
    pos = engine.positions["BTCUSDT"]
    assert pos.amount == D("0.01") and pos.entry_price == 60000 and pos.isolated_wallet == 30
    assert engine.wallet == D(10000) - D("0.3")
    assert engine.available() == D(10000) - D("0.3") - 30
    (trade,) = engine.trades
    assert trade.commission == D("0.3") and trade.realized_pnl == 0


def test_slippage_is_against_the_taker(market: Market) -> None:
    market.pin("BTCUSDT", D(60000), hold=True)
    eng = MatchingEngine(market, D(10000), FEE, slippage=D("0.0001"))
    assert eng.place_market("BTCUSDT", "BUY", D("0.01"), False, None).avg_price == D("60006.0")
    assert eng.place_market("BTCUSDT", "SELL", D("0.01"), False, None).avg_price == D("59994.0")


def test_partial_close_realises_pnl_and_releases_margin(engine: MatchingEngine) -> None:
    engine.place_market("BTCUSDT", "BUY", D("0.02"), False, None)
    move(engine, "61000")
    engine.place_market("BTCUSDT", "SELL", D("0.01"), True, None)
    pos = engine.positions["BTCUSDT"]
    assert pos.amount == D("0.01") and pos.entry_price == 60000 and pos.isolated_wallet == 30
    assert engine.trades[-1].realized_pnl == 10
    fees = D("1200") * FEE + D("610") * FEE
    assert engine.wallet == D(10000) + 10 - fees


def test_average_entry_on_increase_and_flip(engine: MatchingEngine) -> None:
    engine.place_market("BTCUSDT", "BUY", D("0.01"), False, None)
    move(engine, "62000")
    engine.place_market("BTCUSDT", "BUY", D("0.01"), False, None)
    assert engine.positions["BTCUSDT"].entry_price == 61000
    engine.place_market("BTCUSDT", "SELL", D("0.03"), False, None)  # close 0.02, open short
    pos = engine.positions["BTCUSDT"]
    assert pos.amount == D("-0.01") and pos.entry_price == 62000 and pos.isolated_wallet == 31
    assert engine.trades[-1].realized_pnl == 20


def test_reduce_only_rules(engine: MatchingEngine) -> None:
    with pytest.raises(ApiError) as exc:
        engine.place_market("BTCUSDT", "SELL", D("0.01"), True, None)
    assert code_of(exc) == -2022
    engine.place_market("BTCUSDT", "BUY", D("0.01"), False, None)
    with pytest.raises(ApiError) as exc:
        engine.place_market("BTCUSDT", "BUY", D("0.01"), True, None)
    assert code_of(exc) == -2022
    # Larger than the position: trimmed to it, never flips.
    order = engine.place_market("BTCUSDT", "SELL", D("0.05"), True, None)
    assert order.executed_qty == D("0.01") and engine.positions["BTCUSDT"].amount == 0
    # Reduce-only may be under MIN_NOTIONAL (60 USDT < 100).
    engine.place_market("BTCUSDT", "BUY", D("0.01"), False, None)
    assert engine.place_market("BTCUSDT", "SELL", D("0.001"), True, None).status == "FILLED"


@pytest.mark.parametrize(
    ("qty", "code"),
    [("0", -4003), ("0.0015", -1111), ("0.001", -4164), ("2000", -1013), ("5", -2019)],
)
def test_order_rejections(engine: MatchingEngine, qty: str, code: int) -> None:
    with pytest.raises(ApiError) as exc:
        engine.place_market("BTCUSDT", "BUY", D(qty), False, None)
    assert code_of(exc) == code
    assert engine.trades == [] and engine.wallet == 10000


def test_client_order_ids(engine: MatchingEngine) -> None:
    engine.place_market("BTCUSDT", "BUY", D("0.01"), False, "same")
    with pytest.raises(ApiError) as exc:
        engine.place_market("BTCUSDT", "BUY", D("0.01"), False, "same")
    assert code_of(exc) == -4116
    with pytest.raises(ApiError) as exc:
        engine.place_market("BTCUSDT", "BUY", D("0.01"), False, "x" * 37)
    assert code_of(exc) == -4015
    assert engine.find_order("BTCUSDT", None, "same").client_order_id == "same"
    with pytest.raises(ApiError) as exc:
        engine.find_order("ETHUSDT", None, "same")
    assert code_of(exc) == -2013


def test_leverage_and_margin_type(engine: MatchingEngine) -> None:
    assert engine.set_leverage("BTCUSDT", 125)["maxNotionalValue"] == "50000"
    with pytest.raises(ApiError) as exc:
        engine.set_leverage("DOGEUSDT", 76)
    assert code_of(exc) == -4028
    assert engine.set_margin_type("BTCUSDT", "ISOLATED") == {"code": 200, "msg": "success"}
    with pytest.raises(ApiError) as exc:
        engine.set_margin_type("BTCUSDT", "ISOLATED")
    assert code_of(exc) == -4046
    engine.set_leverage("BTCUSDT", 20)
    engine.place_market("BTCUSDT", "BUY", D("0.01"), False, None)
    with pytest.raises(ApiError) as exc:
        engine.set_margin_type("BTCUSDT", "CROSSED")
    assert code_of(exc) == -4048
    engine.place_algo("ETHUSDT", "SELL", "STOP_MARKET", D("0.1"), D(2900), True, False, None,
                      "MARK_PRICE")
    with pytest.raises(ApiError) as exc:
        engine.set_margin_type("ETHUSDT", "ISOLATED")
    assert code_of(exc) == -4047


@pytest.mark.parametrize(
    ("side", "kind", "trigger", "immediate"),
    [
        ("SELL", "STOP_MARKET", "60000", True), ("SELL", "STOP_MARKET", "59999.9", False),
        ("BUY", "STOP_MARKET", "60000", True), ("BUY", "STOP_MARKET", "60000.1", False),
        ("SELL", "TAKE_PROFIT_MARKET", "59999.9", True),
        ("SELL", "TAKE_PROFIT_MARKET", "60000.1", False),
        ("BUY", "TAKE_PROFIT_MARKET", "60000.1", True),
        ("BUY", "TAKE_PROFIT_MARKET", "59999.9", False),
    ],
)
def test_algo_immediate_trigger_rejected(engine: MatchingEngine, side: str, kind: str, trigger: str,
                                         immediate: bool) -> None:
    def place() -> object:
        return engine.place_algo("BTCUSDT", side, kind, D("0.01"), D(trigger), True, False,
                                 None, "MARK_PRICE")

    if immediate:
        with pytest.raises(ApiError) as exc:
            place()
        assert code_of(exc) == -2021
    else:
        place()


def test_algo_validation(engine: MatchingEngine) -> None:
    cases: list[tuple[dict[str, object], int]] = [
        (dict(order_type="STOP"), -1116), (dict(trigger=None), -1102),
        (dict(trigger=D("58800.05")), -4014), (dict(qty=None), -1102),
        (dict(qty=D("0.01"), close_position=True), -4137),
    ]
    for override, code in cases:
        args: dict[str, object] = dict(symbol="BTCUSDT", side="SELL", order_type="STOP_MARKET",
                                       qty=D("0.01"), trigger=D(58800), reduce_only=True,
                                       close_position=False, client_algo_id=None,
                                       working_type="MARK_PRICE")
        args.update(override)
        with pytest.raises(ApiError) as exc:
            engine.place_algo(**args)  # type: ignore[arg-type]
        assert code_of(exc) == code, override


def test_stop_loss_triggers_on_mark_cross(engine: MatchingEngine) -> None:
    engine.place_market("BTCUSDT", "BUY", D("0.01"), False, None)
    sl = engine.place_algo("BTCUSDT", "SELL", "STOP_MARKET", D("0.01"), D(58800), True, False,
                           "sl", "MARK_PRICE")
    move(engine, "58801")
    assert sl.status == "NEW"
    move(engine, "58790")
    assert sl.status == "FINISHED" and sl.actual_price == D("58790.0")
    assert engine.positions["BTCUSDT"].amount == 0
    assert engine.trades[-1].realized_pnl == D("-12.1")
    assert engine.orders[sl.actual_order_id or 0].client_order_id == "sl"


def test_close_position_short_take_profit_and_expiry(engine: MatchingEngine) -> None:
    engine.place_market("BTCUSDT", "SELL", D("0.01"), False, None)
    tp = engine.place_algo("BTCUSDT", "BUY", "TAKE_PROFIT_MARKET", None, D(58800), False, True,
                           None, "MARK_PRICE")
    sl = engine.place_algo("BTCUSDT", "BUY", "STOP_MARKET", None, D(61200), False, True, None,
                           "MARK_PRICE")
    move(engine, "58000")
    assert tp.status == "FINISHED" and engine.positions["BTCUSDT"].amount == 0
    assert engine.trades[-1].realized_pnl == 20
    assert sl.status == "NEW"  # Binance does not cancel the other leg
    move(engine, "61300")
    assert sl.status == "EXPIRED" and engine.positions["BTCUSDT"].amount == 0
    with pytest.raises(ApiError) as exc:
        engine.cancel_algo(sl.algo_id, None)
    assert code_of(exc) == -2011


def test_cancel_algo_and_client_id_reuse(engine: MatchingEngine) -> None:
    first = engine.place_algo("BTCUSDT", "SELL", "STOP_MARKET", D("0.01"), D(58800), True,
                              False, "sl-1", "MARK_PRICE")
    with pytest.raises(ApiError) as exc:
        engine.place_algo("BTCUSDT", "SELL", "STOP_MARKET", D("0.01"), D(58800), True, False,
                          "sl-1", "MARK_PRICE")
    assert code_of(exc) == -4116
    assert engine.cancel_algo(None, "sl-1").status == "CANCELED"
    second = engine.place_algo("BTCUSDT", "SELL", "STOP_MARKET", D("0.01"), D(58800), True,
                               False, "sl-1", "MARK_PRICE")
    assert engine.find_algo(None, "sl-1") is second and first.status == "CANCELED"
    assert engine.open_algos("BTCUSDT") == [second] and engine.open_algos("ETHUSDT") == []


@pytest.mark.parametrize(("side", "liq", "beyond"), [("BUY", "57228.92", "57228"),
                                                     ("SELL", "62749.00", "62750")])
def test_liquidation_loses_the_isolated_margin(engine: MatchingEngine, side: str, liq: str,
                                               beyond: str) -> None:
    engine.place_market("BTCUSDT", side, D("0.01"), False, None)
    price = engine.liquidation_price("BTCUSDT")
    assert price is not None and price.quantize(D("0.01")) == D(liq)
    wallet_before = engine.wallet
    move(engine, str(price.quantize(D("0.1")) + (D("0.5") if side == "BUY" else D("-0.5"))))
    assert engine.positions["BTCUSDT"].amount != 0  # not yet
    move(engine, beyond)
    assert engine.positions["BTCUSDT"].amount == 0
    assert engine.wallet == wallet_before - 30
    trade = engine.trades[-1]
    assert trade.liquidation and trade.price == price
    # What is left at the liquidation price is the maintenance margin (clearance fee).
    mm = maintenance_margin(D("0.01") * price, DEFAULT_BRACKETS["BTCUSDT"])
    assert trade.commission == pytest.approx(mm, abs=D("1e-12"))
    assert trade.realized_pnl - trade.commission == -30


def test_stop_fires_before_liquidation_on_a_gap(engine: MatchingEngine) -> None:
    engine.place_market("BTCUSDT", "BUY", D("0.01"), False, None)
    sl = engine.place_algo("BTCUSDT", "SELL", "STOP_MARKET", D("0.01"), D(58800), True, False,
                           None, "MARK_PRICE")
    move(engine, "57000")
    assert sl.status == "FINISHED" and not engine.trades[-1].liquidation


def test_user_trades_window(engine: MatchingEngine) -> None:
    for _ in range(3):
        engine.place_market("BTCUSDT", "BUY", D("0.01"), False, None)
    all_trades = engine.user_trades("BTCUSDT", None, None, 500, None)
    assert len(all_trades) == 3
    assert engine.user_trades("BTCUSDT", None, None, 2, None) == all_trades[-2:]
    assert engine.user_trades("BTCUSDT", None, None, 1, all_trades[1].trade_id) == [
        all_trades[1]]
    assert engine.user_trades("ETHUSDT", None, None, 500, None) == []


_PROPERTY_MARKET: list[Market] = []


def _shared_market() -> Market:
    if not _PROPERTY_MARKET:
        _PROPERTY_MARKET.append(Market(seed=1, volatility_annual=0.6, tick_interval_ms=500))
    return _PROPERTY_MARKET[0]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    symbol=st.sampled_from(sorted(SYMBOLS)),
    side=st.sampled_from(["BUY", "SELL"]),
    price_factor=st.floats(min_value=0.2, max_value=5.0),
    steps=st.integers(min_value=1, max_value=10**6),
    data=st.data(),
)
def test_liquidation_price_matches_shared_money_and_equity_equals_mm(
    symbol: str, side: str, price_factor: float, steps: int, data: st.DataObject
) -> None:
    """The exchange and risk can never disagree on where a position is liquidated."""
    market = _shared_market()
    spec = SYMBOLS[symbol]
    price = market.pin(symbol, D(repr(spec.start_price * price_factor)), hold=True).price
    qty = spec.step_size * steps
    assume(spec.min_qty <= qty <= spec.max_qty)
    notional = qty * price
    assume(notional >= spec.min_notional)
    brackets = DEFAULT_BRACKETS[symbol]
    allowed = max(b.initial_leverage for b in brackets if b.notional_cap >= notional)
    leverage = data.draw(st.integers(min_value=1, max_value=allowed), label="leverage")
    engine = MatchingEngine(market, D(10) ** 12, FEE)
    engine.set_leverage(symbol, leverage)
    engine.place_market(symbol, side, qty, False, None)
    pos = engine.positions[symbol]
    expected = liquidation_price("LONG" if side == "BUY" else "SHORT", price, qty, leverage,
                                 brackets)
    got = engine.liquidation_price(symbol)
    assert got == expected
    assume(got is not None and got > 0)
    assert got is not None
    equity = pos.isolated_wallet + pos.amount * (got - pos.entry_price)
    mm = maintenance_margin(qty * got, brackets)
    assert equity == pytest.approx(mm, rel=D("1e-9"), abs=D("1e-9") * notional)
