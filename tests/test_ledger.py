import pytest

from tracker import Ledger
from tracker.ledger import BudgetExceeded


def test_ledger_keeps_the_ratio_within_budget():
    ledger = Ledger(budget=0.5)
    assert ledger.ratio == 0.0 and not ledger.afford(1)
    ledger.train(100)
    assert ledger.afford(50) and not ledger.afford(51)
    ledger.spend(30)
    with pytest.raises(BudgetExceeded):
        ledger.spend(21)
    assert ledger.explanation_flops == 30 and ledger.ratio == pytest.approx(0.3)
    ledger.skip()
    assert ledger.stale_steps == 1
    with pytest.raises(ValueError):
        Ledger(budget=0)
