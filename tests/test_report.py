"""Tests for report.py: paired changes are matched question by question, and the compare CLI."""
import pytest

import report
from common import write_jsonl


def _qs(correct_by_prompt, set_="arith"):
    return [{"set": set_, "prompt": p, "correct": c, "length": [10.0] * len(c), "reflect_eff": [0.0] * len(c)}
            for p, c in correct_by_prompt.items()]


def test_paired_change_matches_questions_not_positions():
    before = _qs({"a": [0, 0], "b": [1, 1]})
    after = list(reversed(_qs({"a": [1, 1], "b": [1, 1]})))           # same questions, other order
    ch = report.paired_change(after, before, "correct")
    assert ch["before"] == 0.5 and ch["after"] == 1.0 and ch["diff"] == 0.5 and ch["n"] == 2
    assert report.paired_change(_qs({"a": [1, 1]}), before, "correct") is None   # "b" was not evaluated after
    assert report.paired_change(after, before, "mixed") is None                   # a file without the key


def test_compare_cli(tmp_path, capsys):
    for name, qs in (("old", _qs({"a": [0, 0], "b": [0, 1]})), ("new", _qs({"a": [1, 1], "b": [1, 1]}))):
        (tmp_path / name).mkdir()
        write_jsonl(str(tmp_path / name / "eval_questions.jsonl"), qs)
    report.main([str(tmp_path / "new"), str(tmp_path / "old")])
    out = capsys.readouterr().out
    assert "arith, pass@1: 0.250 -> 1.000 (+0.750" in out and "all reasoning questions, pass@1" in out
    with pytest.raises(SystemExit, match="no .*eval_questions.jsonl"):
        report.main([str(tmp_path / "missing"), str(tmp_path / "old")])


def test_budget_table_on_a_hand_computed_case():
    """tools/budget.py: samples within 8 tokens of the budget count as at it; accuracy over the finished ones; rows
    without a layout (general, safety) are left out."""
    from tools.budget import budget_table
    rows = [{"set": "a", "length": [384, 100], "format": [0, 1], "correct": [0, 1]},
            {"set": "a", "length": [50, 376], "format": [1, 1], "correct": [0, 0]},
            {"set": "general", "length": [3], "correct": [1]}]
    assert budget_table(rows, 384) == {"a": {"samples": 4, "at budget": 0.5, "format": 0.75, "pass@1": 0.25,
                                             "pass@1 finished": 1 / 3}}


def test_memory_section_takes_each_stages_last_line(tmp_path):
    """A resumed stage appends a second line to memory.jsonl: the table shows the last one, in minutes and MB."""
    write_jsonl(str(tmp_path / "memory.jsonl"), [
        {"stage": "pretrain", "seconds": 600.0, "peak_rss_mb": 1500.4, "end_rss_mb": 1400.0, "released_rss_mb": 900.0,
         "process_peak_mb": 1500.0},
        {"stage": "pretrain", "seconds": 90.0, "peak_rss_mb": 1200.0, "end_rss_mb": 1100.0, "released_rss_mb": 800.0,
         "process_peak_mb": 1500.0},
        {"stage": "zero", "seconds": None, "peak_rss_mb": 2000.0, "end_rss_mb": 1900.0, "released_rss_mb": 1000.0,
         "process_peak_mb": 2000.0}])
    rows = [r for r in report.memory_section(str(tmp_path)) if r.startswith("| pretrain") or r.startswith("| zero")]
    assert rows == ["| pretrain | 1.5 | 1200 | 1100 | 800 | 1500 |", "| zero | - | 2000 | 1900 | 1000 | 2000 |"]
    assert report.memory_section(str(tmp_path / "none")) == []


def test_source_shares_counts_each_records_source(tmp_path):
    path = str(tmp_path / "data.jsonl")
    write_jsonl(path, [{"source": "zero"}] * 3 + [{"source": "corpus"}])
    assert report.source_shares(path) == ("4 examples: 75.0% R1-Zero's outputs, 25.0% the toy world's own solutions "
                                          "(the hand-made share)")
    assert report.source_shares(str(tmp_path / "missing.jsonl")) == ""
