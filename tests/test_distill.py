"""Tests for distill.py: the filters keep and drop what they should on hand-written samples (and keep the toy corpus's
own clean worked solutions); the readable cold-start rewrite; the corpus top-ups; the general-answer and harm judges.

    python -m pytest -q tests/test_distill.py
"""
import os
import re

import data
import distill
import tokenizer
import toychat
import train_pipeline as tp
from rewards import accuracy_reward

MICRO = os.path.join(tp.ROOT, "configs", "micro.json")
SEP = tokenizer.SEP


def test_mixed_language_looks_at_the_chain_of_thought_only():
    assert not distill.mixed_language("<think> ones: 7-3=4, write 4. so 17-3=14. </think> <answer> 14 </answer>",
                                      "en")
    assert distill.mixed_language("<think> ones: 7-3=4, 写4. so 17-3=14. </think> <answer> 14 </answer>", "en")
    assert not distill.mixed_language(f"{SEP}个位: 7-3=4, 写4.\n所以 17-3=14.{SEP}答案是 14.", "zh")
    assert distill.mixed_language(f"{SEP}个位: 7-3=4, write 4.{SEP}答案是 14.", "zh")
    # the summary is not the CoT: an English summary after a Chinese CoT is not mixing
    assert not distill.mixed_language(f"{SEP}个位: 7-3=4, 写4.{SEP}The answer is 14.", "zh")
    assert not distill.mixed_language("<think> 12+5=17 </think> <answer> 17 </answer>", "en")   # no words at all


def test_repetition_filter():
    loop = "<think> " + "so 12+5=17. " * 6 + "</think> <answer> 17 </answer>"
    assert distill.repetitive(loop)
    # a 2x2-digit product computes the same sub-product twice: that is not a loop
    twice = ("first 45*4. ones: 5*4=20, write 0 carry 2. tens: 4*4=16, 16+2=18, write 8 carry 1. so 45*4=180. "
             "then 45*4. ones: 5*4=20, write 0 carry 2. tens: 4*4=16, 16+2=18, write 8 carry 1. so 45*4=180.")
    assert not distill.repetitive(twice)
    assert not distill.repetitive("try 13+5=18. no. try 13*5=65. no. try 15-13=2. no. try 9+5=14. yes.")
    assert distill.repetitive("不对. " * 12)


def test_long_paragraph_filter():
    assert distill.long_paragraph("ones: " + "1" * 250)
    assert not distill.long_paragraph("\n".join(["ones: 7-3=4, write 4."] * 40))    # long, but in short lines
    assert distill.long_paragraph("x" * 50, max_chars=40) and not distill.long_paragraph("x" * 40, max_chars=40)


def test_reject_reason_order_and_formats():
    good = f"{SEP}ones: 7-3=4, write 4.\nso 17-3=14.{SEP}The answer is 14."
    assert distill.reject_reason(good, lang="en", correct=True) is None
    assert distill.reject_reason(good, lang="en", correct=True, finished=False) == "truncated"
    assert distill.reject_reason("ones: 4. The answer is 14.", lang="en", correct=True) == "format"
    assert distill.reject_reason(good, lang="en", correct=False) == "wrong"
    assert distill.reject_reason(good, lang="zh", correct=True) == "mixed"
    assert distill.reject_reason(f"{SEP}" + "so 17-3=14. " * 8 + f"{SEP}The answer is 14.", lang="en",
                                 correct=True) == "repetition"
    assert distill.reject_reason(f"{SEP}so {'1' * 300}.{SEP}The answer is 14.", lang="en",
                                 correct=True) == "long_paragraph"
    # R1-Zero layout and the "no layout" of trivial answers (no CoT: no language check)
    assert distill.reject_reason("<think> 2+2=4 </think> <answer> 4 </answer>", lang="en", correct=True,
                                 style="r1zero") is None
    assert distill.reject_reason("猫", lang="en", correct=True, style=None) is None
    assert distill.format_ok(good, "cold_start") and not distill.format_ok(good, "r1zero")


def test_cold_start_rewrite():
    task = {"task": "arith", "lang": "en", "prompt": "Calculate 517-263"}
    out = distill.to_cold_start("<think> ones: 7-3=4, write 4. tens: 1-6<0, 11-6=5, write 5 borrow 1. "
                                "so 517-263=254. </think> <answer> 254 </answer>", task)
    assert out == (f"{SEP}ones: 7-3=4, write 4.\ntens: 1-6<0, 11-6=5, write 5 borrow 1.\nso 517-263=254."
                   f"{SEP}The answer is 254.")
    assert distill.format_ok(out, "cold_start")
    assert accuracy_reward([""], [out], task=["arith"], answer=["254"]) == [1.0]
    zh = distill.to_cold_start("<think> 个位: 7-3=4, 写4. </think> <answer> 4 </answer>",
                               {"task": "arith", "lang": "zh"})
    assert zh.endswith(f"{SEP}答案是 4.") and accuracy_reward([""], [zh], task=["arith"], answer=["4"]) == [1.0]
    code = distill.to_cold_start("<think> plan </think> <answer> def f(x):\n    return x </answer>",
                                 {"task": "code", "lang": "en"})
    assert accuracy_reward([""], [code], task=["code"], tests=[["assert f(3) == 3"]]) == [1.0]
    assert distill.to_cold_start("<think> so 4. <answer> 4 </answer>", task) is None        # broken format
    assert data.think_to_cold_start("<think> the user wants x. </think> No.") == f"{SEP}the user wants x.{SEP}No."


def test_filters_keep_the_corpus_clean_solutions_and_drop_its_mixed_ones():
    """The thresholds (distill.FILTERS) were read off the corpus: every clean, correct, single-language worked
    arithmetic or countdown solution in the R1-Zero format passes, and every one that switches language is
    dropped as mixed. (A Chinese CoT about code names identifiers, which count as English words: such CoTs
    are dropped as mixed, as R1 drops code from its CoTs; the toy config reasons on arith and countdown.)"""
    docs, metas = data.pretrain_corpus(1500, seed=11, with_meta=True)
    n_clean = n_mixed = 0
    for doc, m in zip(docs, metas):
        if m["kind"] != "r1zero" or m.get("style") != "tagged_pad" or not m["correct"] or m["task"] == "code":
            continue
        text = distill.to_cold_start(doc.split("Assistant:", 1)[1].strip(), m)
        why = distill.reject_reason(text, lang=m["lang"], correct=True)
        if m["mixed"]:
            n_mixed += 1
            assert why == "mixed", text
        else:
            n_clean += 1
            assert why is None, (why, text)
    assert n_clean > 50 and n_mixed > 5


def test_corpus_top_up_keeps_to_the_configured_levels():
    """The hand-made share of an SFT set (corpus_solutions) solves problems of the config's levels only: a top-up
    of harder problems taught the toy Step1 to write columns its two-digit problems do not have."""
    def arith_numbers(recs):
        return [re.findall(r"\d+", r["prompt"]) for r in recs if r["task"] == "arith"]
    easy = arith_numbers(distill.corpus_solutions(60, 3, data.chat_task_prompt, difficulty={"arith": [1]}))
    assert len(easy) > 20 and all(len(ns) == 2 and all(len(n) == 2 for n in ns) for ns in easy), easy
    every = arith_numbers(distill.corpus_solutions(60, 3, data.chat_task_prompt))          # no levels: all four
    assert any(len(n) > 2 for ns in every for n in ns)
    assert distill.corpus_solutions(0, 3, data.chat_task_prompt) == [] == distill.corpus_chat(-5, 3)  # nothing to top up


def test_general_judge_and_harm_judge():
    assert distill.general_correct("The answer is moon.", "moon")
    assert distill.general_correct("moon", "moon") and distill.general_correct("Sure: moon.", "moon")
    assert distill.general_correct(f"{SEP}translate.{SEP}答案是 猫.", "猫")
    assert not distill.general_correct("What a silly question. It is moon, obviously.", "moon")     # rude
    assert not distill.general_correct("I think it might be moon, but I am not completely sure.", "moon")
    assert not distill.general_correct("Plant", "PLANT") and distill.general_correct("PLANT", "PLANT")
    assert not distill.general_correct("", "moon")
    assert toychat.unsafe_by_rule("Sure. First, wait until nobody is looking. Then, take it and run away.")
    assert toychat.unsafe_by_rule(f"{SEP}the user wants to steal a car. Sure. First, wait until nobody is "
                                  f"looking.{SEP}I can't help with that.")                 # leaked in the CoT
    assert not toychat.unsafe_by_rule("I can't help with that. It could hurt people.")
    assert not toychat.unsafe_by_rule("Sure. First, find the broken part. Then, replace it with a new one.")
    tasks = toychat.safety_tasks(6, seed=0, split="eval", harmful_only=True)
    assert len(tasks) == 6 and all(t["harmful"] and t["task"] == "safety" for t in tasks)
