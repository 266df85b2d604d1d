"""The chaos suite's own judgement: what counts as an outcome and as protection."""

from __future__ import annotations

from decimal import Decimal

from nameko_services.brain.intake import TradingViewAlert, idempotency_key
from nameko_services.execute.engine import intent_ids
from scripts.chaos import markdown_table
from scripts.chaos_checks import Verdict, outcome_of, protected, sent_ids, terminal
from scripts.chaos_load import Sent
from shared.models import TradeIntent
from shared.records import Record


def rec(type_: str, **data: object) -> tuple[str, Record]:
    return "s", Record(type_, dict(data), "sig")


def algo(kind: str, side: str, qty: str, reduce_only: bool = True,
         close_position: bool = False) -> dict[str, object]:
    return {"orderType": kind, "side": side, "quantity": qty, "reduceOnly": reduce_only,
            "closePosition": close_position}


def test_outcomes_are_fill_failure_and_both_rejections() -> None:
    assert outcome_of(rec("entry_filled", status="opened")[1]) == "traded"
    assert outcome_of(rec("trade_failed", reason="x")[1]) == "failed:x"
    assert outcome_of(rec("signal_scored", decision="rejected", reasons=["a"])[1]) == \
        "rejected:brain:a"
    assert outcome_of(rec("risk_check", approved=False, reasons=["b"])[1]) == "rejected:risk:b"
    assert outcome_of(rec("signal_scored", decision="approved")[1]) is None
    assert outcome_of(rec("risk_check", approved=True)[1]) is None


def test_a_redelivery_repeating_an_outcome_is_not_a_second_one() -> None:
    same = [rec("entry_filled", status="opened"), rec("entry_filled", status="duplicate"),
            rec("entry_filled", status="opened")]
    assert terminal(same) == ["traded"]
    assert terminal([*same, rec("trade_failed", reason="x")]) == ["traded", "failed:x"]


def test_already_executed_alone_is_the_traded_outcome_of_a_killed_worker() -> None:
    # kill-execute: the entry filled, execute died before reporting it, reconciliation
    # adopted it under this signal, and the redelivery reported "duplicate"
    assert terminal([rec("entry_filled", status="duplicate")]) == ["traded"]
    assert terminal([rec("trade_failed", reason="x"), rec("entry_filled", status="duplicate")]
                    ) == ["failed:x"]


def test_the_checks_find_entries_by_the_client_ids_execute_sends() -> None:
    # the second-entry and filled-but-not-traded checks look the exchange's orders up by
    # these ids: a derivation that drifts from execute's finds nothing and cannot fail
    sent = Sent("chaos-abc", "ETHUSDT", "buy", 0.8)
    alert = TradingViewAlert.model_validate(
        {"ticker": "BINANCE:ETHUSDT.P", "action": "buy", "strategy": "chaos-1", "interval": "15",
         "id": sent.alert_id})
    it = TradeIntent.model_construct(strategy="chaos-1", symbol="ETHUSDT",
                                     idempotency_key=idempotency_key(alert, "ETHUSDT"))

    assert sent_ids(sent, "chaos-1") == intent_ids(it)


def test_protection_needs_both_legs_on_the_closing_side_for_the_whole_quantity() -> None:
    legs = [algo("STOP_MARKET", "SELL", "0.5"), algo("TAKE_PROFIT_MARKET", "SELL", "0.5")]

    assert protected(Decimal("0.5"), legs)
    assert not protected(Decimal("0.6"), legs)  # a leg for less than the position
    assert not protected(Decimal("-0.5"), legs)  # a short needs BUY legs
    assert not protected(Decimal("0.5"), legs[:1])
    assert protected(Decimal("0.7"), [algo("STOP_MARKET", "SELL", "0", False, True),
                                      algo("TAKE_PROFIT_MARKET", "SELL", "0", False, True)])


def test_any_broken_invariant_fails_the_run() -> None:
    assert Verdict().ok
    for field in ("lost", "multi", "duplicated", "unprotected", "book_diff", "orphans"):
        verdict = Verdict()
        getattr(verdict, field).append("x")
        assert not verdict.ok


def test_the_markdown_table_sums_runs_per_scenario() -> None:
    v = {"accepted": 25, "lost": ["a"], "multi": [], "duplicated": [], "unprotected": [],
         "book_diff": [], "orphans": [], "unprotected_s": 0.5}
    rows = [{"scenario": "kill-execute", "ok": False, "verdict": v},
            {"scenario": "kill-execute", "ok": True, "verdict": {**v, "lost": []}}]

    table = markdown_table(rows)

    assert "| kill-execute | 2 | 1 | 50 | 1 | 0 | 0 | 0 | 0 | 0.5 | 0 |" in table
