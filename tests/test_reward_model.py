"""Tests for reward_model.py: the reward models' losses, and that, trained on a small fixture, they rank a hand-made
better answer above a worse one.

    python -m pytest -q tests/test_reward_model.py
"""
import os

import pytest
import torch

import data
import reward_model
import sft
import tokenizer
import toychat
import train_pipeline as tp
from common import Dist
from model import ModelArgs
from rewards import combine

MICRO = os.path.join(tp.ROOT, "configs", "micro.json")
SEP = tokenizer.SEP


pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny_rm(seed=0):
    torch.manual_seed(seed)
    return reward_model.RewardModel(ModelArgs(vocab_size=tokenizer.TOY_VOCAB_SIZE, dim=32, inter_dim=64, moe_inter_dim=32,
                                     n_layers=2, n_dense_layers=1, n_heads=2, n_routed_experts=4,
                                     n_expert_groups=2, n_limited_groups=1, kv_lora_rank=16, qk_nope_head_dim=8,
                                     qk_rope_head_dim=8, v_head_dim=8, max_seq_len=128))


def test_reward_model_losses_start_at_log2():
    """The scalar head starts at zero: every score is 0, so P(chosen > rejected) = 1/2 and P(safe) = 1/2."""
    rm = _tiny_rm()
    pair = ([5, 6, 7], [5, 6, 8, 9])
    loss, _ = reward_model.rm_loss(rm, [pair, pair], "pairs", 0, "cpu")
    assert torch.allclose(loss, torch.tensor(0.6931472), atol=1e-6)
    loss, _ = reward_model.rm_loss(rm, [([5, 6], 1), ([7], 0)], "pointwise", 0, "cpu")
    assert torch.allclose(loss, torch.tensor(0.6931472), atol=1e-6)
    with pytest.raises(ValueError, match="kind"):
        reward_model.rm_loss(rm, [pair], "listwise", 0, "cpu")


def test_reward_models_rank_a_better_answer_above_a_worse_one(tmp_path):
    tok = tokenizer.get_tokenizer("toy")
    cfg = sft.SFTConfig(steps=100, batch_size=16, lr=3e-3, warmup=5, weight_decay=0.0, log_every=50, seed=0)
    L = 64
    pairs = [(reward_model.encode_rm(tok, data.chat_prompt(x["prompt"]), x["chosen"], L),
              reward_model.encode_rm(tok, data.chat_prompt(x["prompt"]), x["rejected"], L))
             for x in toychat.make_preference_pairs(128, seed=0)]
    helpful = _tiny_rm()
    m = reward_model.train_reward_model(helpful, pairs, "pairs", cfg, Dist(), str(tmp_path / "h"), tok.pad_id)
    assert m["loss"] < 0.5
    prompt = data.chat_prompt("Translate 狗 into English")
    good, rude, ramble = "The answer is dog.", "Figure it out yourself.", (
        "Well, there is a lot to say about it. Some people would say one thing and other people another thing. "
        "In the end I think it might be dog, but I am not completely sure.")
    s = reward_model.reward_model_scores(helpful, tok, [prompt] * 3, [good, rude, ramble], L)
    assert s[0] > s[1] and s[0] > s[2], s

    safety = [(reward_model.encode_rm(tok, data.chat_prompt(x["prompt"]), x["response"], L), int(not x["unsafe"]))
              for x in toychat.make_safety_examples(128, seed=0)]
    safe_rm = _tiny_rm(1)
    reward_model.train_reward_model(safe_rm, safety, "pointwise", cfg, Dist(), str(tmp_path / "s"), tok.pad_id)
    prompt = data.chat_prompt("Tell me how to steal a bike")
    s = reward_model.reward_model_scores(safe_rm, tok, [prompt] * 2, [
        "Sorry, I won't help you steal a bike. It is wrong.",
        "Sure. First, wait until nobody is looking. Then, take it and run away."], L)
    assert s[0] > 0 > s[1], s                     # the score is the logit of SAFE (checked on seeds 0-7: all pass)


def test_reward_model_wrapper():
    seen = {}

    def score_fn(prompts, texts):
        seen["texts"] = texts
        return torch.tensor([float(len(t)) for t in texts])

    comps = ["<|sep|> long reasoning <|sep|> Short.", " <think> r </think> Final!<|endoftext|>", "direct",
             "<|sep|>r<|sep|> "]
    helpful = reward_model.RewardModelReward(score_fn, on="answer", name="helpful", missing=-1.0)
    assert helpful(["q"] * 4, comps) == [6.0, 6.0, 6.0, -1.0]
    assert seen["texts"] == ["Short.", "Final!", "direct"]
    safety = reward_model.RewardModelReward(lambda p, t: [1.0 if "reasoning" in x else 0.0 for x in t], on="full")
    assert safety(None, comps) == [1.0, 0.0, 0.0, 0.0]
    assert combine([(helpful, 1.0), (safety, 1.0)]).components(None, comps)["helpful"][0] == 6.0
    with pytest.raises(ValueError, match="on must be"):
        reward_model.RewardModelReward(score_fn, on="cot")
