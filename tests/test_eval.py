"""Tests for eval.py: the paired bootstrap interval, effective reflection, cons@k.

    python -m pytest -q tests/test_eval.py
"""
import pytest

from eval import _consensus, effective_reflection, paired_bootstrap, restated_right


def test_paired_bootstrap_on_a_hand_computed_case():
    # Per-question differences d = (1, 1, 1, 0). A resample of 4 questions has mean k/4 with k ~ Binomial(4, 3/4):
    # P(mean = 0) = 1/256 < 2.5% < P(mean <= 1/4) = 13/256, and P(mean = 1) = 81/256 > 2.5%, so the central 95%
    # interval of the mean difference is [1/4, 1] around the observed 3/4.
    r = paired_bootstrap([0, 0, 0, 1], [1, 1, 1, 1], n_boot=20_000)
    assert (r["before"], r["after"], r["diff"], r["n"]) == (0.25, 1.0, 0.75, 4)
    assert (r["lo"], r["hi"]) == (0.25, 1.0)
    same = paired_bootstrap([0.5, 0.2], [0.5, 0.2])
    assert same["lo"] == same["hi"] == same["diff"] == 0.0                 # no change: a zero-width interval
    with pytest.raises(ValueError, match="equal-length"):
        paired_bootstrap([1, 2], [1])


@pytest.mark.parametrize("text, effective", [
    ("tens: 4+9+1=17, write 7. check: 17-9-1=7, not 4. wait, redo: 4+9+1=14, write 4.", True),
    ("try 15+7=24, yes. check: 24-7=17, not 15. wait, 15+7=22, not 24.", True),
    ("ones: 4+9+1=14, write 4. check: 14-9-1=4, ok.", False),                 # a check that confirms
    ("wait, 3+4=7. so 3+4=7.", False),                                      # the same value again
    ("3+4=8. 3+4=7.", False),                                               # a change without a reflection
])
def test_effective_reflection(text, effective):
    assert effective_reflection(text) == effective


def test_consensus_votes_the_most_frequent_answer():
    assert _consensus([1.0, 0.0, 0.0], ["12", " 13", "13"]) == 0.0
    assert _consensus([1.0, 1.0, 0.0], ["12", "12 ", "13"]) == 1.0
    assert _consensus([0.0, 0.0], [None, " "]) == 0.0


def test_restated_right_counts_the_pads_that_copy_the_problem_exactly():
    arith = {"a": 51, "op": "-", "b": 18}
    texts = [" <think> 51-18. ones: 1-8 ...", " <think> 51-11. ones: 1-1=0 ...", " <think> so 33 </think>",
             " The answer is 33."]
    assert restated_right("arith", [arith] * 4, texts) == [2, 0.5]     # two pads restate it, one of them right
    game = {"nums": [6, 1, 3, 7], "target": 24}
    texts = [" <think> 6, 1, 3, 7 -> 24. 6 and 1, then 3, 7: try ...", " <think> 6, 1, 3, 8 -> 24. try ...",
             " <think> 6, 1, 3, 7 -> 42. try ..."]
    assert restated_right("countdown", [game] * 3, texts) == [3, 1 / 3]
    assert restated_right("countdown", [game], [" <think> so 6*3+7-1 </think>"]) == [0, 0.0]

