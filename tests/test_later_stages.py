"""The later stages' measurement: all-scenario RL's reward table, the general format and language terms,
reward parts averaged over the rows they apply to, the report's interval-worded claims and the plots' axes.

    python -m pytest -q tests/test_later_stages.py
"""
import math
import warnings

import pytest
import torch

import grpo
import report
import train_pipeline as tp
from answers import SEP
from common import plot_metrics, write_jsonl
from rewards import general_format_reward, general_language_reward

# the two reward models, stood in for by constant scorers (the table is under test, not the models)
HELPFUL = lambda prompts, completions, **c: [0.75] * len(completions)   # noqa: E731
SAFE = lambda prompts, completions, **c: [0.5] * len(completions)       # noqa: E731


def test_all_rl_reward_table_applies_each_term_to_its_scenario():
    """R1 §2.3.4: reasoning prompts get the rules, general prompts the reward models + format, and the language
    term applies to both. A term that does not apply is NaN there (adds nothing, left out of its mean)."""
    table = tp.all_rl_reward(HELPFUL, SAFE)
    cols = {"task": ["arith", "general", "safety"], "answer": ["3", "CAT", ""], "lang": ["en", "zh", "en"]}
    completions = [f"{SEP}1+2=3{SEP}The answer is 3.", "CAT", "I can't help with that."]
    total, parts = grpo.score(table, ["p"] * 3, completions, cols)
    applies = {name: [not math.isnan(v) for v in parts[name].tolist()] for name in parts}
    assert applies["accuracy"] == applies["format"] == applies["language"] == [True, False, False]
    for name in ("helpful", "safety", "format_general", "language_general"):
        assert applies[name] == [False, True, True], name
    # reasoning row: accuracy 1 + format 1 + language 1 (the CoT "1+2=3" has no words: 0) -> check the sum exactly
    assert parts["format"][0] == 1.0 and parts["accuracy"][0] == 1.0
    assert total[0].item() == pytest.approx(sum(parts[n][0].item() for n in ("accuracy", "format", "language")))
    # general rows: RM terms + format (a direct answer is the general layout) + language (no CoT: 1.0)
    assert parts["format_general"].tolist()[1:] == [1.0, 1.0]
    assert parts["language_general"].tolist()[1:] == [1.0, 1.0]
    assert total[1:].tolist() == pytest.approx([0.75 + 0.5 + 1.0 + 1.0] * 2)


def test_general_format_accepts_the_two_general_layouts_only():
    ok = ["moon", "The answer is 42.", "好的: 猫.", f"{SEP}the word is cat, in capitals CAT{SEP}CAT",
          "CAT<|endoftext|>"]
    bad = ["", "   ", "<think> cat </think> CAT", "<answer> CAT </answer>", f"{SEP}no summary{SEP}",
           "CAT<|user|>and then", f"{SEP}a{SEP}b{SEP}c"]
    assert general_format_reward([""] * len(ok), ok) == [1.0] * len(ok)
    assert general_format_reward([""] * len(bad), bad) == [0.0] * len(bad)


def test_general_language_counts_the_cot_not_the_answer():
    """A Chinese query whose right answer is an English word scores 1 (no CoT to mix); a CoT scores the share of its
    words in the prompt's language, as the reasoning term does: 把 写 成 大 写 (5 zh) + cat, big (2 en) -> 5/7."""
    texts = ["CAT", f"{SEP}把 cat 写成大写 big{SEP}CAT", f"{SEP}大写{SEP}CAT"]
    out = general_language_reward([""] * 3, texts, lang=["zh"] * 3)
    assert out == [1.0, pytest.approx(5 / 7), 1.0]


class _Chars:
    """A character tokenizer for the tiny policy below."""
    chars = "0123456789 +=abc"
    vocab_size, name, eos_id, pad_id = len(chars) + 2, "chars", len(chars), len(chars) + 1

    def encode(self, text):
        return [self.chars.index(c) for c in text]

    def decode(self, ids):
        return "".join(self.chars[i] if i < len(self.chars) else "" for i in ids)


def test_grpo_step_logs_each_part_over_its_rows_only(one_thread):
    """grpo_step's logged mean of a reward part is over the rows it applies to: a general-only term is absent
    from a step without general prompts (no drop to 0), and on a mixed step a reasoning term is not diluted by
    the general rows."""
    from model import ModelArgs, Transformer
    tok = _Chars()
    torch.manual_seed(0)
    policy = Transformer(ModelArgs(vocab_size=tok.vocab_size, dim=16, inter_dim=32, moe_inter_dim=16, n_layers=1,
                                   n_dense_layers=1, n_heads=2, kv_lora_rank=8, qk_nope_head_dim=8,
                                   qk_rope_head_dim=8, v_head_dim=8, max_seq_len=32))
    cfg = grpo.GRPOConfig(group_size=2, prompts_per_step=2, max_new_tokens=4, beta=0.0, lr=1e-3, seed=0)
    opt = grpo.make_optimizer(policy, cfg)
    ones = lambda prompts, completions, **c: [1.0] * len(completions)    # noqa: E731
    reward = {"rule": (tp.only(("arith",), ones), 1.0), "rm": (tp.only(("general",), HELPFUL), 1.0)}
    arith = {"task": "arith", "prompt": "1+2=", "answer": "3"}
    general = {"task": "general", "prompt": "abc", "answer": "c"}
    m = grpo.grpo_step(policy, None, opt, [arith, arith], reward, tok, cfg, 0, prompt_fn=lambda t: t["prompt"])
    assert m["rule"] == 1.0 and "rm" not in m
    m = grpo.grpo_step(policy, None, opt, [arith, general], reward, tok, cfg, 1, prompt_fn=lambda t: t["prompt"])
    assert m["rule"] == 1.0 and m["rm"] == 0.75 and m["reward"] == pytest.approx((2 * 1.0 + 2 * 0.75) / 4)


# ============================================================================================== plots
def test_plot_metrics_titles_units_ranges_bars_and_no_always_zero_panel(tmp_path):
    """A 1% wobble of accuracy is drawn on [0, 1] and a length from 0 (no auto-zoom), every panel has a title and
    a unit, the always-0 clip fraction gets no panel but a note, and an evaluation with standard errors gets
    95% error bars."""
    from matplotlib.container import ErrorbarContainer

    from common import metrics_figure
    rows = [{"step": s, "accuracy": 0.763 + 0.008 * (s % 2), "response_length": 76.3 + 0.8 * (s % 2),
             "clip_low": 0.0} for s in range(10)]
    rows += [{"step": s, "eval_arith_pass@1": 0.5 + 0.01 * s, "eval_arith_pass@1_se": 0.05} for s in (0, 5, 9)]
    path = str(tmp_path / "metrics.jsonl")
    write_jsonl(path, rows)
    keys = ["accuracy", "response_length", "clip_low", "eval_arith_pass@1"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")                       # no warning of any kind (layout, missing keys, ...)
        fig, drawn = metrics_figure(path, keys, "training")
        assert plot_metrics(path, keys, str(tmp_path / "p" / "t.png")) == drawn
    assert drawn == ["accuracy", "response_length", "eval_arith_pass@1"]
    axes = {ax.get_title().split(":")[0]: ax for ax in fig.axes}
    assert set(axes) == {"accuracy", "response length", "eval arith pass@1"}
    assert axes["accuracy"].get_ylim() == (0.0, 1.02) and axes["eval arith pass@1"].get_ylim() == (0.0, 1.02)
    assert axes["response length"].get_ylim()[0] == 0.0 and axes["response length"].get_ylabel() == "tokens"
    assert all(ax.get_ylabel() for ax in fig.axes) and fig.axes[-1].get_xlabel().startswith("step\n")
    assert axes["accuracy"].get_title() == "accuracy: 0.763 -> 0.771"
    assert any(isinstance(c, ErrorbarContainer) for c in axes["eval arith pass@1"].containers)
    assert fig.get_suptitle() == "training"
    assert "not drawn, 0 at every step: clip_low" in fig.axes[-1].get_xlabel()


# ============================================================================================== report
def _q(set_, prompt, **scores):
    return {"set": set_, "prompt": prompt, **scores}


def test_report_words_claims_by_their_interval(tmp_path):
    """Step3 -> R1: general pass@1 up on every question (interval above 0: 'more helpful'); the optimised RM score
    moves by noise ('no clear change: not shown', and named the optimised reward, not helpfulness)."""
    before, after = [], []
    for i in range(40):
        before.append(_q("arith", f"a{i}", correct=[float(i % 2)] * 2, length=[10, 10], mixed=[0.0, 0.0]))
        after.append(_q("arith", f"a{i}", correct=[float(i % 2)] * 2, length=[10, 10], mixed=[0.0, 0.0]))
        before.append(_q("general", f"g{i}", correct=[0.0, 0.0], helpful_rm=[0.5, 0.5 + 0.1 * (i % 3 - 1)]))
        after.append(_q("general", f"g{i}", correct=[1.0, 0.0], helpful_rm=[0.5, 0.5 + 0.1 * ((i + 1) % 3 - 1)]))
    for stage, qs in (("rejection_sft", before), ("all_rl", after)):
        (tmp_path / stage).mkdir()
        write_jsonl(str(tmp_path / stage / "eval_questions.jsonl"), qs)
    res = {p: {"arith": {"pass@1": 0.5}} for p in ("rejection_sft", "all_rl")}
    cfg = {"eval": {"sets": ["arith"], "k": 2}}
    text = "\n".join(report.stage_paragraphs(list(res), res, report.report_columns(cfg), str(tmp_path), ["arith"]))
    helpful = next(ln for ln in text.splitlines() if ln.startswith("- Helpfulness, Step3 -> R1"))
    assert "0.000 -> 0.500 (+0.500, 95% CI [+0.500, +0.500], n = 40): more helpful." in helpful
    rm = next(ln for ln in text.splitlines() if ln.startswith("- Helpfulness RM score"))
    assert "the optimised reward" in rm and rm.endswith("no clear change: not shown.")
    kept = next(ln for ln in text.splitlines() if ln.startswith("- Reasoning kept"))
    assert kept.endswith("(+0.000, 95% CI [+0.000, +0.000], n = 40): no clear change.")
    harm = next(ln for ln in text.splitlines() if ln.startswith("- Harmlessness"))
    assert harm.endswith("not shown (no per-question results for both models).")
    assert "general pass@1 (held-out, checked by rule" in text     # the stage paragraph's general line
