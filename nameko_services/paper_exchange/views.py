"""Read-only JSON views in Binance's response shapes (the fields ccxt parses, and then some)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from shared.money import DEFAULT_BRACKETS, maintenance_margin

from .book import LIQUIDATION_PREFIX, max_notional
from .engine import MatchingEngine, spec_of
from .market import INTERVAL_MS, MINUTE_MS, SYMBOLS, Candle, Market, quantise
from .models import ZERO, Position, num

ORDER_TYPES = ["LIMIT", "MARKET", "STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET",
               "TRAILING_STOP_MARKET"]


def exchange_info(server_time: int, weight_limit: int = 2400) -> dict[str, Any]:
    symbols = []
    for s in SYMBOLS.values():
        symbols.append({
            "symbol": s.symbol, "pair": s.symbol, "contractType": "PERPETUAL",
            "deliveryDate": 4133404800000, "onboardDate": 1569398400000, "status": "TRADING",
            "baseAsset": s.base, "quoteAsset": "USDT", "marginAsset": "USDT",
            "pricePrecision": s.price_precision, "quantityPrecision": s.quantity_precision,
            "baseAssetPrecision": 8, "quotePrecision": 8, "underlyingType": "COIN",
            "underlyingSubType": [], "settlePlan": 0, "triggerProtect": "0.0500",
            "liquidationFee": "0.012500", "marketTakeBound": "0.05",
            "filters": [
                {"filterType": "PRICE_FILTER", "minPrice": num(s.tick_size),
                 "maxPrice": num(Decimal(s.start_price * 100).quantize(s.tick_size)),
                 "tickSize": str(s.tick_size)},
                {"filterType": "LOT_SIZE", "minQty": str(s.min_qty), "maxQty": str(s.max_qty),
                 "stepSize": str(s.step_size)},
                {"filterType": "MARKET_LOT_SIZE", "minQty": str(s.min_qty),
                 "maxQty": str(s.max_qty), "stepSize": str(s.step_size)},
                {"filterType": "MAX_NUM_ORDERS", "limit": 200},
                {"filterType": "MIN_NOTIONAL", "notional": str(s.min_notional)},
                {"filterType": "PERCENT_PRICE", "multiplierUp": "1.0500",
                 "multiplierDown": "0.9500", "multiplierDecimal": "4"},
            ],
            "orderTypes": ORDER_TYPES,
            "timeInForce": ["GTC", "IOC", "FOK", "GTX", "GTD"],
        })
    return {
        "timezone": "UTC", "serverTime": server_time, "futuresType": "U_MARGINED",
        "rateLimits": [{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE",
                        "intervalNum": 1, "limit": weight_limit}],
        "exchangeFilters": [],
        "assets": [{"asset": "USDT", "marginAvailable": True, "autoAssetExchange": "-10000"}],
        "symbols": symbols,
    }


def fmt_candle(c: Candle, interval_ms: int, tick: Decimal) -> list[Any]:
    vol = Decimal(repr(round(c.volume, 3)))
    mid = quantise((c.open + c.close) / 2, tick)
    return [c.open_time, str(quantise(c.open, tick)), str(quantise(c.high, tick)),
            str(quantise(c.low, tick)), str(quantise(c.close, tick)), num(vol),
            c.open_time + interval_ms - 1, num((vol * mid).quantize(Decimal("0.0001"))),
            max(1, int(c.volume)) if c.volume else 0, num(vol / 2), "0", "0"]


def klines(market: Market, symbol: str, interval: str, limit: int, start: int | None,
           end: int | None) -> list[list[Any]]:
    spec = spec_of(symbol)
    size = INTERVAL_MS[interval]
    return [fmt_candle(c, size, spec.tick_size)
            for c in market.klines(symbol, interval, limit, start, end)]


def ticker_24hr(market: Market, symbol: str, now: int) -> dict[str, Any]:
    spec = spec_of(symbol)
    candles = market.candles_1m(symbol)
    # A replayed symbol lives in the file's time: its day ends with its last candle.
    ref = min(now, candles[-1].open_time + MINUTE_MS)
    day = [c for c in candles if c.open_time > ref - 86_400_000]
    first, last = day[0], day[-1]
    tick = spec.tick_size
    volume = sum(c.volume for c in day)
    quote = sum(c.volume * c.close for c in day)
    open_p, last_p = quantise(first.open, tick), quantise(last.close, tick)
    change = last_p - open_p
    return {
        "symbol": symbol, "priceChange": str(change),
        "priceChangePercent": num((change / open_p * 100).quantize(Decimal("0.001"))),
        "weightedAvgPrice": str(quantise(quote / volume if volume else last.close, tick)),
        "lastPrice": str(last_p), "lastQty": str(spec.min_qty), "openPrice": str(open_p),
        "highPrice": str(quantise(max(c.high for c in day), tick)),
        "lowPrice": str(quantise(min(c.low for c in day), tick)),
        "volume": num(Decimal(repr(round(volume, 3)))),
        "quoteVolume": num(Decimal(repr(round(quote, 2)))),
        "openTime": first.open_time, "closeTime": now, "firstId": 1,
        "lastId": len(day), "count": len(day),
    }


def premium_index(market: Market, symbol: str, now: int) -> dict[str, Any]:
    spec_of(symbol)
    mark = str(market.mark_price(symbol))
    next_funding = now - now % 28_800_000 + 28_800_000
    return {"symbol": symbol, "markPrice": mark, "indexPrice": mark,
            "estimatedSettlePrice": mark, "lastFundingRate": "0.00000000",
            "interestRate": "0.00010000", "nextFundingTime": next_funding, "time": now}


def leverage_brackets(symbol: str) -> dict[str, Any]:
    spec_of(symbol)
    return {"symbol": symbol, "notionalCoef": 1.0, "brackets": [
        {"bracket": b.bracket, "initialLeverage": b.initial_leverage,
         "notionalCap": int(b.notional_cap), "notionalFloor": int(b.notional_floor),
         "maintMarginRatio": float(b.maint_margin_ratio), "cum": float(b.cum)}
        for b in DEFAULT_BRACKETS[symbol]]}


def position_json(engine: MatchingEngine, pos: Position) -> dict[str, Any]:
    spec = SYMBOLS[pos.symbol]
    mark = engine.market.mark_price(pos.symbol)
    notional = pos.amount * mark
    unrealized = pos.unrealized(mark)
    liq = engine.liquidation_price(pos.symbol) or ZERO
    lev = engine.leverage[pos.symbol]
    places = spec.price_precision
    return {
        "symbol": pos.symbol, "positionSide": "BOTH", "positionAmt": num(pos.amount),
        "entryPrice": num(pos.entry_price, 8), "breakEvenPrice": num(pos.entry_price, 8),
        "markPrice": num(mark, 8), "unRealizedProfit": num(unrealized, 8),
        "liquidationPrice": num(liq, places), "isolatedMargin": num(
            pos.isolated_wallet + unrealized, 8),
        "notional": num(notional, 8), "marginAsset": "USDT",
        "isolatedWallet": num(pos.isolated_wallet, 8),
        "initialMargin": num(abs(notional) / lev, 8),
        "maintMargin": num(maintenance_margin(abs(notional), DEFAULT_BRACKETS[pos.symbol]), 8),
        "positionInitialMargin": num(abs(notional) / lev, 8), "openOrderInitialMargin": "0",
        "adl": 0, "bidNotional": "0", "askNotional": "0", "updateTime": pos.update_time,
    }


def positions(engine: MatchingEngine, symbol: str | None) -> list[dict[str, Any]]:
    with engine.lock:
        return [position_json(engine, p) for p in engine.positions.values()
                if p.amount and (symbol is None or p.symbol == symbol)]


def _totals(engine: MatchingEngine) -> dict[str, Decimal]:
    with engine.lock:
        open_pos = [p for p in engine.positions.values() if p.amount]
        unrealized = sum((p.unrealized(engine.market.mark_price(p.symbol)) for p in open_pos),
                         ZERO)
        maint = sum((maintenance_margin(abs(p.amount) * engine.market.mark_price(p.symbol),
                                        DEFAULT_BRACKETS[p.symbol]) for p in open_pos), ZERO)
        return {"wallet": engine.wallet, "unrealized": unrealized, "maint": maint,
                "initial": engine.isolated_total(), "available": engine.available()}


def account(engine: MatchingEngine) -> dict[str, Any]:
    t = _totals(engine)
    margin_balance = t["wallet"] + t["unrealized"]
    asset = {
        "asset": "USDT", "walletBalance": num(t["wallet"], 8),
        "unrealizedProfit": num(t["unrealized"], 8), "marginBalance": num(margin_balance, 8),
        "maintMargin": num(t["maint"], 8), "initialMargin": num(t["initial"], 8),
        "positionInitialMargin": num(t["initial"], 8), "openOrderInitialMargin": "0.00000000",
        "crossWalletBalance": num(t["available"], 8), "crossUnPnl": "0.00000000",
        "availableBalance": num(t["available"], 8), "maxWithdrawAmount": num(t["available"], 8),
        "updateTime": engine.update_time,
    }
    return {
        "totalInitialMargin": asset["initialMargin"], "totalMaintMargin": asset["maintMargin"],
        "totalWalletBalance": asset["walletBalance"],
        "totalUnrealizedProfit": asset["unrealizedProfit"],
        "totalMarginBalance": asset["marginBalance"],
        "totalPositionInitialMargin": asset["positionInitialMargin"],
        "totalOpenOrderInitialMargin": "0.00000000",
        "totalCrossWalletBalance": asset["crossWalletBalance"], "totalCrossUnPnl": "0.00000000",
        "availableBalance": asset["availableBalance"],
        "maxWithdrawAmount": asset["maxWithdrawAmount"],
        "assets": [asset],
        "positions": [{"symbol": p["symbol"], "positionSide": "BOTH",
                       "positionAmt": p["positionAmt"],
                       "unrealizedProfit": p["unRealizedProfit"],
                       "isolatedMargin": p["isolatedMargin"], "notional": p["notional"],
                       "isolatedWallet": p["isolatedWallet"],
                       "initialMargin": p["initialMargin"], "maintMargin": p["maintMargin"],
                       "updateTime": p["updateTime"]} for p in positions(engine, None)],
    }


def balance(engine: MatchingEngine) -> list[dict[str, Any]]:
    t = _totals(engine)
    return [{"accountAlias": "paper", "asset": "USDT", "balance": num(t["wallet"], 8),
             "crossWalletBalance": num(t["available"], 8), "crossUnPnl": "0.00000000",
             "availableBalance": num(t["available"], 8),
             "maxWithdrawAmount": num(t["available"], 8), "marginAvailable": True,
             "updateTime": engine.update_time}]


def state(engine: MatchingEngine) -> dict[str, Any]:
    """Everything a test or an operator wants in one call (GET /paper/state)."""
    with engine.lock:
        return {
            "account": account(engine),
            "positions": positions(engine, None),
            "openAlgoOrders": [a.to_json(SYMBOLS[a.symbol].price_precision)
                               for a in engine.open_algos(None)],
            "leverage": dict(engine.leverage),
            "marginType": dict(engine.margin_type),
            "prices": {s: str(engine.market.price(s)) for s in SYMBOLS},
            "held": [s for s in SYMBOLS if engine.market.is_held(s)],
        }


def symbol_config(engine: MatchingEngine, symbol: str | None) -> list[dict[str, Any]]:
    """GET /fapi/v1/symbolConfig: margin type and leverage as the account has them."""
    with engine.lock:
        return [{"symbol": s, "marginType": engine.margin_type[s], "isAutoAddMargin": "false",
                 "leverage": engine.leverage[s], "maxNotionalValue": str(int(max_notional(
                     DEFAULT_BRACKETS[s], engine.leverage[s])))}
                for s in SYMBOLS if symbol is None or s == symbol]


def force_orders(engine: MatchingEngine, symbol: str | None, auto_close_type: str | None,
                 start: int | None, end: int | None, limit: int) -> list[dict[str, Any]]:
    """GET /fapi/v1/forceOrders: the account's liquidation orders, newest last."""
    if auto_close_type == "ADL":  # ADL is not simulated
        return []
    with engine.lock:
        rows = [o for o in engine.orders.values()
                if o.client_order_id.startswith(LIQUIDATION_PREFIX)
                and (symbol is None or o.symbol == symbol)
                and (start is None or o.time >= start) and (end is None or o.time <= end)]
    return [o.to_json(SYMBOLS[o.symbol].price_precision) for o in rows[-limit:]]
