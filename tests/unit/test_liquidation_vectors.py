"""The liquidation price against vectors computed outside the code under test.

The paper exchange computes its liquidation price with :func:`shared.money.liquidation_price`
too, so an e2e test comparing the two cannot catch a wrong formula. These vectors can:

* Binance's published figures (FAQ "How to Calculate Liquidation Price of USDⓈ-M Futures
  Contracts", https://www.binance.com/en/support/faq/b3c689c1f50a44cabb3a84e663b81d93):
  a BTCUSDT position of 264,000 USDT has a maintenance margin rate of 1 %; one of 500,000
  USDT a maintenance amount of 1,300 USDT (= 250,000 * (1 % - 0.5 %) + 50, level 3); in
  isolated mode ``LP = (WB + cum - side * Q * EP) / (Q * (MMR - side))`` with WB the isolated
  wallet, TMM = UPNL = 0; a liquidation price below 0 is shown as "--".
* Hand-computed cases, one LONG and one SHORT in EACH bracket of both tables the project
  uses (``DEFAULT_BRACKETS``: the BTC/ETH table and the altcoin table), worked out with that
  formula by hand (exact fractions), the arithmetic in the comment above each case. WB is
  the initial margin ``N / leverage`` at the lower of 20x (the project's leverage) and the
  bracket's maximum. Where the price lands in another bracket, Binance's note applies
  ("substitute the maintenance margin rate and amount of the level at the liquidation
  price and recalculate"): the comment shows the second step.
"""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from shared.money import (
    DEFAULT_BRACKETS,
    bracket_for_notional,
    liquidation_price,
    maintenance_margin,
)

BTC = DEFAULT_BRACKETS["BTCUSDT"]


def test_binance_published_bracket_figures() -> None:
    assert bracket_for_notional(BTC, D(264_000)).maint_margin_ratio == D("0.01")
    assert bracket_for_notional(BTC, D(500_000)).cum == D(1300)
    # maintenance margin = N * MMR - maintenance amount = 500,000 * 1 % - 1,300
    assert maintenance_margin(D(500_000), BTC) == D(3700)


@pytest.mark.parametrize("table,cums", [
    # cum_n = floor_n * (MMR_n - MMR_n-1) + cum_n-1, by hand:
    # 0; 50,000*0.001 = 50; 250,000*0.005 + 50 = 1,300; 1,000,000*0.015 + 1,300 = 16,300;
    # 10,000,000*0.025 + 16,300 = 266,300; 20,000,000*0.05 + 266,300 = 1,266,300;
    # 50,000,000*0.025 + 1,266,300 = 2,516,300; 100,000,000*0.025 + 2,516,300 = 5,016,300;
    # 200,000,000*0.1 + 5,016,300 = 25,016,300; 300,000,000*0.25 + 25,016,300 = 100,016,300
    ("BTCUSDT", [0, 50, 1300, 16300, 266300, 1266300, 2516300, 5016300, 25016300, 100016300]),
    # 0; 10,000*0.0035 = 35; 50,000*0.01 + 35 = 535; 250,000*0.03 + 535 = 8,035;
    # 1,000,000*0.05 + 8,035 = 58,035; 2,000,000*0.025 + 58,035 = 108,035;
    # 5,000,000*0.025 + 108,035 = 233,035; 10,000,000*0.1 + 233,035 = 1,233,035;
    # 20,000,000*0.25 + 1,233,035 = 6,233,035
    ("BNBUSDT", [0, 35, 535, 8035, 58035, 108035, 233035, 1233035, 6233035]),
])
def test_maintenance_amounts_of_every_bracket(table: str, cums: list[int]) -> None:
    assert [b.cum for b in DEFAULT_BRACKETS[table]] == [D(c) for c in cums]


CASES = [
    # BTCUSDT bracket 1: notional 0-50,000, MMR 0.4 %, cum 0, max 125x.
    # 0.2 @ 50,000 = N 10,000, 20x: WB = N / 20 = 500
    #   LONG  (10,000 - 500 - 0) / (0.2 * 0.996)
    #         = 9,500 / 0.1992 = 47,690.7631 (N 9,538: bracket 1)
    ("BTCUSDT", "LONG", "50000", "0.2", 20, "47690.7631"),
    #   SHORT (10,000 + 500 + 0) / (0.2 * 1.004)
    #         = 10,500 / 0.2008 = 52,290.8367 (N 10,458: bracket 1)
    ("BTCUSDT", "SHORT", "50000", "0.2", 20, "52290.8367"),
    # BTCUSDT bracket 2: notional 50,000-250,000, MMR 0.5 %, cum 50, max 100x.
    # 2 @ 50,000 = N 100,000, 20x: WB = N / 20 = 5,000
    #   LONG  (100,000 - 5,000 - 50) / (2 * 0.995)
    #         = 94,950 / 1.99 = 47,713.5678 (N 95,427: bracket 2)
    ("BTCUSDT", "LONG", "50000", "2", 20, "47713.5678"),
    #   SHORT (100,000 + 5,000 + 50) / (2 * 1.005)
    #         = 105,050 / 2.01 = 52,263.6816 (N 104,527: bracket 2)
    ("BTCUSDT", "SHORT", "50000", "2", 20, "52263.6816"),
    # BTCUSDT bracket 3: notional 250,000-1,000,000, MMR 1 %, cum 1,300, max 50x.
    # 10 @ 50,000 = N 500,000, 20x: WB = N / 20 = 25,000
    #   LONG  (500,000 - 25,000 - 1,300) / (10 * 0.99)
    #         = 473,700 / 9.9 = 47,848.4848 (N 478,485: bracket 3)
    ("BTCUSDT", "LONG", "50000", "10", 20, "47848.4848"),
    #   SHORT (500,000 + 25,000 + 1,300) / (10 * 1.01)
    #         = 526,300 / 10.1 = 52,108.9109 (N 521,089: bracket 3)
    ("BTCUSDT", "SHORT", "50000", "10", 20, "52108.9109"),
    # BTCUSDT bracket 4: notional 1,000,000-10,000,000, MMR 2.5 %, cum 16,300, max 20x.
    # 100 @ 50,000 = N 5,000,000, 20x: WB = N / 20 = 250,000
    #   LONG  (5,000,000 - 250,000 - 16,300) / (100 * 0.975)
    #         = 4,733,700 / 97.5 = 48,550.7692 (N 4,855,077: bracket 4)
    ("BTCUSDT", "LONG", "50000", "100", 20, "48550.7692"),
    #   SHORT (5,000,000 + 250,000 + 16,300) / (100 * 1.025)
    #         = 5,266,300 / 102.5 = 51,378.5366 (N 5,137,854: bracket 4)
    ("BTCUSDT", "SHORT", "50000", "100", 20, "51378.5366"),
    # BTCUSDT bracket 5: notional 10,000,000-20,000,000, MMR 5 %, cum 266,300, max 10x.
    # 300 @ 50,000 = N 15,000,000, 10x: WB = N / 10 = 1,500,000
    #   LONG  (15,000,000 - 1,500,000 - 266,300) / (300 * 0.95)
    #         = 13,233,700 / 285 = 46,434.0351 (N 13,930,211: bracket 5)
    ("BTCUSDT", "LONG", "50000", "300", 10, "46434.0351"),
    #   SHORT (15,000,000 + 1,500,000 + 266,300) / (300 * 1.05)
    #         = 16,766,300 / 315 = 53,226.3492 (N 15,967,905: bracket 5)
    ("BTCUSDT", "SHORT", "50000", "300", 10, "53226.3492"),
    # BTCUSDT bracket 6: notional 20,000,000-50,000,000, MMR 10 %, cum 1,266,300, max 5x.
    # 700 @ 50,000 = N 35,000,000, 5x: WB = N / 5 = 7,000,000
    #   LONG  (35,000,000 - 7,000,000 - 1,266,300) / (700 * 0.9)
    #         = 26,733,700 / 630 = 42,434.4444 (N 29,704,111: bracket 6)
    ("BTCUSDT", "LONG", "50000", "700", 5, "42434.4444"),
    #   SHORT (35,000,000 + 7,000,000 + 1,266,300) / (700 * 1.1)
    #         = 43,266,300 / 770 = 56,190 (N 39,333,000: bracket 6)
    ("BTCUSDT", "SHORT", "50000", "700", 5, "56190.0000"),
    # BTCUSDT bracket 7: notional 50,000,000-100,000,000, MMR 12.5 %, cum 2,516,300, max 4x.
    # 1500 @ 50,000 = N 75,000,000, 4x: WB = N / 4 = 18,750,000
    #   LONG  (75,000,000 - 18,750,000 - 2,516,300) / (1500 * 0.875)
    #         = 53,733,700 / 1,312.5 = 40,939.9619 (N 61,409,943: bracket 7)
    ("BTCUSDT", "LONG", "50000", "1500", 4, "40939.9619"),
    #   SHORT (75,000,000 + 18,750,000 + 2,516,300) / (1500 * 1.125)
    #         = 96,266,300 / 1,687.5 = 57,046.6963 (N 85,570,044: bracket 7)
    ("BTCUSDT", "SHORT", "50000", "1500", 4, "57046.6963"),
    # BTCUSDT bracket 8: notional 100,000,000-200,000,000, MMR 15 %, cum 5,016,300, max 3x.
    # 3000 @ 50,000 = N 150,000,000, 3x: WB = N / 3 = 50,000,000
    #   LONG  (150,000,000 - 50,000,000 - 5,016,300) / (3000 * 0.85)
    #         = 94,983,700 / 2,550 = 37,248.5098 (N 111,745,529: bracket 8)
    ("BTCUSDT", "LONG", "50000", "3000", 3, "37248.5098"),
    #   SHORT (150,000,000 + 50,000,000 + 5,016,300) / (3000 * 1.15)
    #         = 205,016,300 / 3,450 = 59,425.0145 (N 178,275,043: bracket 8)
    ("BTCUSDT", "SHORT", "50000", "3000", 3, "59425.0145"),
    # BTCUSDT bracket 9: notional 200,000,000-300,000,000, MMR 25 %, cum 25,016,300, max 2x.
    # 4200 @ 50,000 = N 210,000,000, 2x: WB = N / 2 = 105,000,000
    #   LONG  (210,000,000 - 105,000,000 - 25,016,300) / (4200 * 0.75)
    #         = 79,983,700 / 3,150 = 25,391.6508: N 106,644,933 is bracket 8, so again:
    #         (210,000,000 - 105,000,000 - 5,016,300) / (4200 * 0.85)
    #         = 99,983,700 / 3,570 = 28,006.6387 (N 117,627,882: bracket 8)
    ("BTCUSDT", "LONG", "50000", "4200", 2, "28006.6387"),
    #   SHORT (210,000,000 + 105,000,000 + 25,016,300) / (4200 * 1.25)
    #         = 340,016,300 / 5,250 = 64,765.0095 (N 272,013,040: bracket 9)
    ("BTCUSDT", "SHORT", "50000", "4200", 2, "64765.0095"),
    # BTCUSDT bracket 10: notional 300,000,000-9,000,000,000, MMR 50 %, cum 100,016,300, max 1x.
    # 8000 @ 50,000 = N 400,000,000, 1x: WB = N / 1 = 400,000,000
    #   LONG  (400,000,000 - 400,000,000 - 100,016,300) / (8000 * 0.5)
    #         = -100,016,300 / 4,000 = -25,004.075 < 0: none (Binance shows '--')
    ("BTCUSDT", "LONG", "50000", "8000", 1, "0"),
    #   SHORT (400,000,000 + 400,000,000 + 100,016,300) / (8000 * 1.5)
    #         = 900,016,300 / 12,000 = 75,001.3583 (N 600,010,867: bracket 10)
    ("BTCUSDT", "SHORT", "50000", "8000", 1, "75001.3583"),
    # BNBUSDT bracket 1: notional 0-10,000, MMR 0.65 %, cum 0, max 75x.
    # 4 @ 500 = N 2,000, 20x: WB = N / 20 = 100
    #   LONG  (2,000 - 100 - 0) / (4 * 0.9935)
    #         = 1,900 / 3.974 = 478.1077 (N 1,912: bracket 1)
    ("BNBUSDT", "LONG", "500", "4", 20, "478.1077"),
    #   SHORT (2,000 + 100 + 0) / (4 * 1.0065)
    #         = 2,100 / 4.026 = 521.6095 (N 2,086: bracket 1)
    ("BNBUSDT", "SHORT", "500", "4", 20, "521.6095"),
    # BNBUSDT bracket 2: notional 10,000-50,000, MMR 1 %, cum 35, max 50x.
    # 60 @ 500 = N 30,000, 20x: WB = N / 20 = 1,500
    #   LONG  (30,000 - 1,500 - 35) / (60 * 0.99)
    #         = 28,465 / 59.4 = 479.2088 (N 28,753: bracket 2)
    ("BNBUSDT", "LONG", "500", "60", 20, "479.2088"),
    #   SHORT (30,000 + 1,500 + 35) / (60 * 1.01)
    #         = 31,535 / 60.6 = 520.3795 (N 31,223: bracket 2)
    ("BNBUSDT", "SHORT", "500", "60", 20, "520.3795"),
    # BNBUSDT bracket 3: notional 50,000-250,000, MMR 2 %, cum 535, max 25x.
    # 300 @ 500 = N 150,000, 20x: WB = N / 20 = 7,500
    #   LONG  (150,000 - 7,500 - 535) / (300 * 0.98)
    #         = 141,965 / 294 = 482.8741 (N 144,862: bracket 3)
    ("BNBUSDT", "LONG", "500", "300", 20, "482.8741"),
    #   SHORT (150,000 + 7,500 + 535) / (300 * 1.02)
    #         = 158,035 / 306 = 516.4542 (N 154,936: bracket 3)
    ("BNBUSDT", "SHORT", "500", "300", 20, "516.4542"),
    # BNBUSDT bracket 4: notional 250,000-1,000,000, MMR 5 %, cum 8,035, max 10x.
    # 1200 @ 500 = N 600,000, 10x: WB = N / 10 = 60,000
    #   LONG  (600,000 - 60,000 - 8,035) / (1200 * 0.95)
    #         = 531,965 / 1,140 = 466.6360 (N 559,963: bracket 4)
    ("BNBUSDT", "LONG", "500", "1200", 10, "466.6360"),
    #   SHORT (600,000 + 60,000 + 8,035) / (1200 * 1.05)
    #         = 668,035 / 1,260 = 530.1865 (N 636,224: bracket 4)
    ("BNBUSDT", "SHORT", "500", "1200", 10, "530.1865"),
    # BNBUSDT bracket 5: notional 1,000,000-2,000,000, MMR 10 %, cum 58,035, max 5x.
    # 3000 @ 500 = N 1,500,000, 5x: WB = N / 5 = 300,000
    #   LONG  (1,500,000 - 300,000 - 58,035) / (3000 * 0.9)
    #         = 1,141,965 / 2,700 = 422.95 (N 1,268,850: bracket 5)
    ("BNBUSDT", "LONG", "500", "3000", 5, "422.9500"),
    #   SHORT (1,500,000 + 300,000 + 58,035) / (3000 * 1.1)
    #         = 1,858,035 / 3,300 = 563.0409 (N 1,689,123: bracket 5)
    ("BNBUSDT", "SHORT", "500", "3000", 5, "563.0409"),
    # BNBUSDT bracket 6: notional 2,000,000-5,000,000, MMR 12.5 %, cum 108,035, max 4x.
    # 7000 @ 500 = N 3,500,000, 4x: WB = N / 4 = 875,000
    #   LONG  (3,500,000 - 875,000 - 108,035) / (7000 * 0.875)
    #         = 2,516,965 / 6,125 = 410.9331 (N 2,876,531: bracket 6)
    ("BNBUSDT", "LONG", "500", "7000", 4, "410.9331"),
    #   SHORT (3,500,000 + 875,000 + 108,035) / (7000 * 1.125)
    #         = 4,483,035 / 7,875 = 569.2743 (N 3,984,920: bracket 6)
    ("BNBUSDT", "SHORT", "500", "7000", 4, "569.2743"),
    # BNBUSDT bracket 7: notional 5,000,000-10,000,000, MMR 15 %, cum 233,035, max 3x.
    # 15000 @ 500 = N 7,500,000, 3x: WB = N / 3 = 2,500,000
    #   LONG  (7,500,000 - 2,500,000 - 233,035) / (15000 * 0.85)
    #         = 4,766,965 / 12,750 = 373.8796 (N 5,608,194: bracket 7)
    ("BNBUSDT", "LONG", "500", "15000", 3, "373.8796"),
    #   SHORT (7,500,000 + 2,500,000 + 233,035) / (15000 * 1.15)
    #         = 10,233,035 / 17,250 = 593.2194 (N 8,898,291: bracket 7)
    ("BNBUSDT", "SHORT", "500", "15000", 3, "593.2194"),
    # BNBUSDT bracket 8: notional 10,000,000-20,000,000, MMR 25 %, cum 1,233,035, max 2x.
    # 30000 @ 500 = N 15,000,000, 2x: WB = N / 2 = 7,500,000
    #   LONG  (15,000,000 - 7,500,000 - 1,233,035) / (30000 * 0.75)
    #         = 6,266,965 / 22,500 = 278.5318: N 8,355,953 is bracket 7, so again:
    #         (15,000,000 - 7,500,000 - 233,035) / (30000 * 0.85)
    #         = 7,266,965 / 25,500 = 284.9790 (N 8,549,371: bracket 7)
    ("BNBUSDT", "LONG", "500", "30000", 2, "284.9790"),
    #   SHORT (15,000,000 + 7,500,000 + 1,233,035) / (30000 * 1.25)
    #         = 23,733,035 / 37,500 = 632.8809 (N 18,986,428: bracket 8)
    ("BNBUSDT", "SHORT", "500", "30000", 2, "632.8809"),
    # BNBUSDT bracket 9: notional 20,000,000-9,000,000,000, MMR 50 %, cum 6,233,035, max 1x.
    # 60000 @ 500 = N 30,000,000, 1x: WB = N / 1 = 30,000,000
    #   LONG  (30,000,000 - 30,000,000 - 6,233,035) / (60000 * 0.5)
    #         = -6,233,035 / 30,000 = -207.7678 < 0: none (Binance shows '--')
    ("BNBUSDT", "LONG", "500", "60000", 1, "0"),
    #   SHORT (30,000,000 + 30,000,000 + 6,233,035) / (60000 * 1.5)
    #         = 66,233,035 / 90,000 = 735.9226 (N 44,155,357: bracket 9)
    ("BNBUSDT", "SHORT", "500", "60000", 1, "735.9226"),
]


@pytest.mark.parametrize("symbol,side,entry,quantity,leverage,expected", CASES)
def test_liquidation_price_in_every_bracket(symbol: str, side: str, entry: str,
                                            quantity: str, leverage: int,
                                            expected: str) -> None:
    price = liquidation_price(side, D(entry), D(quantity), leverage,  # type: ignore[arg-type]
                              DEFAULT_BRACKETS[symbol])

    assert price.quantize(D("0.0001")) == D(expected)


def test_every_bracket_of_both_tables_has_a_case() -> None:
    covered = {(symbol, bracket_for_notional(DEFAULT_BRACKETS[symbol],
                                             D(entry) * D(q)).bracket)
               for symbol, _, entry, q, _, _ in CASES}
    assert covered == {(s, b.bracket) for s in ("BTCUSDT", "BNBUSDT")
                       for b in DEFAULT_BRACKETS[s]}


def test_isolated_wallet_with_added_margin() -> None:
    # 0.2 BTC @ 50,000 at 20x, 500 USDT added: WB = 500 + 500 = 1,000, bracket 1 (0.4 %, 0)
    #   LONG  (10,000 - 1,000 - 0) / (0.2 * 0.996) = 9,000 / 0.1992 = 45,180.7229
    #   SHORT (10,000 + 1,000 + 0) / (0.2 * 1.004) = 11,000 / 0.2008 = 54,780.8765
    long = liquidation_price("LONG", D(50_000), D("0.2"), 20, BTC, D(1000))
    short = liquidation_price("SHORT", D(50_000), D("0.2"), 20, BTC, D(1000))

    assert (long.quantize(D("0.0001")), short.quantize(D("0.0001"))) == (
        D("45180.7229"), D("54780.8765"))
