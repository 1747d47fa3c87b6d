"""The R1 pipeline (train_pipeline.py stages, distill.py, sft.py's reward models) on the micro config.

    python -m pytest -q tests/test_pipeline.py

What is checked: the filters keep and drop what they should on hand-written samples (and keep the toy corpus's
own clean worked solutions); the readable cold-start rewrite; the general-answer and harm judges; the reward
models' losses and that, trained on a small fixture, they rank a hand-made better answer above a worse one;
every stage runs end to end (`--stage all`), a killed run resumes (mid-RL from its checkpoint, a killed SFT
stage from its cached data) and finished stages are skipped (`--force` redoes them); a stage started without
its input names the missing stage and the command that builds it; the students are dense; the report has a
row per model.
"""
import os
import re

import pytest
import torch

import data
import distill
import sft
import tokenizer
import toychat
import train_pipeline as tp
from common import Dist
from model import MoE, ModelArgs

MICRO = os.path.join(tp.ROOT, "configs", "micro.json")
SEP = tokenizer.SEP


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One thread: on a busy 2-core machine two threads per op are many times slower for these tiny shapes."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def run(stage, runs, name="t", *extra):
    tp.main(["--stage", stage, "--config", MICRO, "--name", name, "--runs_dir", str(runs), *extra])


# ============================================================================================== filters
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
    assert tp.accuracy_reward([""], [out], task=["arith"], answer=["254"]) == [1.0]
    zh = distill.to_cold_start("<think> 个位: 7-3=4, 写4. </think> <answer> 4 </answer>",
                               {"task": "arith", "lang": "zh"})
    assert zh.endswith(f"{SEP}答案是 4.") and tp.accuracy_reward([""], [zh], task=["arith"], answer=["4"]) == [1.0]
    code = distill.to_cold_start("<think> plan </think> <answer> def f(x):\n    return x </answer>",
                                 {"task": "code", "lang": "en"})
    assert tp.accuracy_reward([""], [code], task=["code"], tests=[["assert f(3) == 3"]]) == [1.0]
    assert distill.to_cold_start("<think> so 4. <answer> 4 </answer>", task) is None        # broken format
    assert distill.think_to_cold_start("<think> the user wants x. </think> No.") == f"{SEP}the user wants x.{SEP}No."


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
    easy = arith_numbers(distill.corpus_solutions(60, 3, tp.chat_task_prompt, difficulty={"arith": [1]}))
    assert len(easy) > 20 and all(len(ns) == 2 and all(len(n) == 2 for n in ns) for ns in easy), easy
    every = arith_numbers(distill.corpus_solutions(60, 3, tp.chat_task_prompt))          # no levels: all four
    assert any(len(n) > 2 for ns in every for n in ns)
    assert distill.corpus_solutions(0, 3, tp.chat_task_prompt) == [] == distill.corpus_chat(-5, 3)  # nothing to top up


def test_general_judge_and_harm_judge():
    assert distill.general_correct("The answer is moon.", "moon")
    assert distill.general_correct("moon", "moon") and distill.general_correct("Sure: moon.", "moon")
    assert distill.general_correct(f"{SEP}translate.{SEP}答案是 猫.", "猫")
    assert not distill.general_correct("What a silly question. It is moon, obviously.", "moon")     # rude
    assert not distill.general_correct("I think it might be moon, but I am not completely sure.", "moon")
    assert not distill.general_correct("Plant", "PLANT") and distill.general_correct("PLANT", "PLANT")
    assert not distill.general_correct("", "moon")
    assert distill.unsafe_by_rule("Sure. First, wait until nobody is looking. Then, take it and run away.")
    assert distill.unsafe_by_rule(f"{SEP}the user wants to steal a car. Sure. First, wait until nobody is "
                                  f"looking.{SEP}I can't help with that.")                 # leaked in the CoT
    assert not distill.unsafe_by_rule("I can't help with that. It could hurt people.")
    assert not distill.unsafe_by_rule("Sure. First, find the broken part. Then, replace it with a new one.")
    tasks = distill.safety_tasks(6, seed=0, split="eval", harmful_only=True)
    assert len(tasks) == 6 and all(t["harmful"] and t["task"] == "safety" for t in tasks)


def test_only_masks_other_scenarios():
    f = tp.only(("general",), lambda prompts, completions, **c: [1.0] * len(completions))
    assert f(["a", "b", "c"], ["x", "y", "z"], task=["arith", "general", "safety"]) == [0.0, 1.0, 0.0]


# ========================================================================================= reward models
def _tiny_rm(seed=0):
    torch.manual_seed(seed)
    return sft.RewardModel(ModelArgs(vocab_size=tokenizer.TOY_VOCAB_SIZE, dim=32, inter_dim=64, moe_inter_dim=32,
                                     n_layers=2, n_dense_layers=1, n_heads=2, n_routed_experts=4,
                                     n_expert_groups=2, n_limited_groups=1, kv_lora_rank=16, qk_nope_head_dim=8,
                                     qk_rope_head_dim=8, v_head_dim=8, max_seq_len=128))


def test_reward_model_losses_start_at_log2():
    """The scalar head starts at zero: every score is 0, so P(chosen > rejected) = 1/2 and P(safe) = 1/2."""
    rm = _tiny_rm()
    pair = ([5, 6, 7], [5, 6, 8, 9])
    loss, _ = sft.rm_loss(rm, [pair, pair], "pairs", 0, "cpu")
    assert torch.allclose(loss, torch.tensor(0.6931472), atol=1e-6)
    loss, _ = sft.rm_loss(rm, [([5, 6], 1), ([7], 0)], "pointwise", 0, "cpu")
    assert torch.allclose(loss, torch.tensor(0.6931472), atol=1e-6)
    with pytest.raises(ValueError, match="kind"):
        sft.rm_loss(rm, [pair], "listwise", 0, "cpu")


def test_reward_models_rank_a_better_answer_above_a_worse_one(tmp_path):
    tok = tokenizer.get_tokenizer("toy")
    cfg = sft.SFTConfig(steps=100, batch_size=16, lr=3e-3, warmup=5, weight_decay=0.0, log_every=50, seed=0)
    L = 64
    pairs = [(sft.encode_rm(tok, data.chat_prompt(x["prompt"]), x["chosen"], L),
              sft.encode_rm(tok, data.chat_prompt(x["prompt"]), x["rejected"], L))
             for x in toychat.make_preference_pairs(128, seed=0)]
    helpful = _tiny_rm()
    m = sft.train_reward_model(helpful, pairs, "pairs", cfg, Dist(), str(tmp_path / "h"), tok.pad_id)
    assert m["loss"] < 0.5
    prompt = data.chat_prompt("Translate 狗 into English")
    good, rude, ramble = "The answer is dog.", "Figure it out yourself.", (
        "Well, there is a lot to say about it. Some people would say one thing and other people another thing. "
        "In the end I think it might be dog, but I am not completely sure.")
    s = sft.reward_model_scores(helpful, tok, [prompt] * 3, [good, rude, ramble], L)
    assert s[0] > s[1] and s[0] > s[2], s

    safety = [(sft.encode_rm(tok, data.chat_prompt(x["prompt"]), x["response"], L), int(not x["unsafe"]))
              for x in toychat.make_safety_examples(128, seed=0)]
    safe_rm = _tiny_rm(1)
    sft.train_reward_model(safe_rm, safety, "pointwise", cfg, Dist(), str(tmp_path / "s"), tok.pad_id)
    prompt = data.chat_prompt("Tell me how to steal a bike")
    s = sft.reward_model_scores(safe_rm, tok, [prompt] * 2, [
        "Sorry, I won't help you steal a bike. It is wrong.",
        "Sure. First, wait until nobody is looking. Then, take it and run away."], L)
    assert s[0] > 0 > s[1], s                     # the score is the logit of SAFE (checked on seeds 0-7: all pass)


# ========================================================================================= the pipeline
def test_missing_input_names_the_stage_and_its_command(tmp_path):
    with pytest.raises(SystemExit) as e:
        run("cold_start", tmp_path)
    msg = str(e.value)
    assert "'zero' stage" in msg and "python train_pipeline.py --stage zero --config t" in msg
    with pytest.raises(SystemExit) as e:
        run("all_rl", tmp_path)
    msg = str(e.value)
    assert "'reward_models' stage" in msg and "--stage reward_models" in msg


def test_students_must_be_dense():
    cfg = tp.load_config(MICRO)
    cfg["distill"]["students"]["s"]["model"]["n_dense_layers"] = 0
    with pytest.raises(SystemExit, match="dense"):
        tp.student_cfg(cfg, "s")


def test_all_stages_end_to_end_kill_resume_skip_force(tmp_path, monkeypatch, capsys):
    import grpo
    runs = tmp_path / "runs"
    d = runs / "t"

    # 1. killed inside reasoning_rl (the first chat-format RL stage) at its second step, after its first ckpt
    real_step = grpo.grpo_step

    def dying_step(*a, **k):
        if k.get("prompt_fn") is tp.chat_task_prompt and a[7] == 1:
            raise KeyboardInterrupt("killed")
        return real_step(*a, **k)
    monkeypatch.setattr(grpo, "grpo_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        run("all", runs)
    monkeypatch.setattr(grpo, "grpo_step", real_step)
    assert (d / "cold_start" / "model.pt").exists() and not (d / "reasoning_rl" / "model.pt").exists()
    done = {p: os.path.getmtime(d / p / "model.pt") for p in ("pretrain", "rm_helpful", "zero", "cold_start")}

    # 2. killed inside rejection_sft's SFT, after its data set was written
    real_train = sft.train

    def dying_train(*a, **k):
        if k.get("desc") == "rejection_sft":
            raise KeyboardInterrupt("killed")
        return real_train(*a, **k)
    monkeypatch.setattr(sft, "train", dying_train)
    capsys.readouterr()
    with pytest.raises(KeyboardInterrupt):
        run("all", runs)
    monkeypatch.setattr(sft, "train", real_train)
    out = capsys.readouterr().out
    assert "resumed reasoning_rl" in out and "at step 1" in out
    assert "[all] pretrain: finished, skipping" in out and "[all] cold_start: finished, skipping" in out
    assert (d / "rejection_sft" / "data.jsonl").exists() and not (d / "rejection_sft" / "model.pt").exists()

    # 3. the rest: the cached SFT set is reused, nothing finished is redone
    run("all", runs)
    out = capsys.readouterr().out
    assert "rejection_sft: reusing" in out
    assert all(os.path.getmtime(d / p / "model.pt") == t for p, t in done.items())
    cfg = tp.apply_overrides(tp.load_config(MICRO), "all", ["--runs_dir", str(runs)])
    cfg["name"] = "t"
    for stage in tp.STAGES:
        assert tp.finished(cfg, stage), stage
    for p in tp.model_products(cfg):
        res = tp._read_json(str(d / p / "eval.json"))
        assert {"arith", "countdown", "general", "safety"} <= set(res), p
        assert {"pass@1", "cons@2", "format", "language", "mixed", "length"} <= set(res["arith"])
        assert "helpful" in res["general"] and "violation" in res["safety"]
    for name in ("s", "m"):                                   # the students are dense (no MoE block)
        student = tp.load_stage_model(cfg, f"distill_{name}", "cpu")
        assert student.args.n_dense_layers == student.args.n_layers
        assert not any(isinstance(m, MoE) for m in student.modules())
    teacher = tp.load_stage_model(cfg, "all_rl", "cpu")
    assert any(isinstance(m, MoE) for m in teacher.modules())
    for stage in ("cold_start", "rejection_sft", "distill"):
        recs = distill.read_jsonl(str(d / stage / "data.jsonl"))
        assert recs and all(r["prompt"].startswith(tokenizer.USER) and r["prompt"].endswith(tokenizer.ASSISTANT)
                            for r in recs)
        assert all(distill.format_ok(r["completion"], "cold_start") for r in recs if r["task"] in distill.REASONING)
    comp = tp._read_json(str(d / "distill" / "compute.json"))
    assert comp["rl_steps"] >= 1 and comp["distill_flops"] > 0 and comp["rl_flops"] > 0
    report = (d / "report.md").read_text()
    for row in ("base (V3-toy)", "R1-Zero", "Step1 (cold start)", "Step2 (reasoning RL)", "Step3 (rejection SFT)",
                "R1 (all-scenario RL)", "student s distilled", "student m distilled", "student s RL-only"):
        assert f"| {row} |" in report, row
    for col in ("arith pass@1", "countdown cons@2", "format", "language", "mixed", "helpful RM", "unsafe",
                "length", "rm_helpful", "Language mixing, R1-Zero -> Step2"):
        assert col in report, col

    # 4. everything finished: skipped; --force redoes a stage
    run("all", runs)
    assert "[all] distill: finished, skipping" in capsys.readouterr().out
    assert all(os.path.getmtime(d / p / "model.pt") == t for p, t in done.items())
    before = os.path.getmtime(d / "rm_safety" / "model.pt")
    run("reward_models", runs)
    assert os.path.getmtime(d / "rm_safety" / "model.pt") == before
    run("reward_models", runs, "t", "--force")
    assert os.path.getmtime(d / "rm_safety" / "model.pt") > before
