"""model.py: shapes, causality, the two MLA paths, routing, balancing, gradients, parameter counts.

    python -m pytest -q tests/test_model.py
"""
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

from model import Gate, KVCache, MoE, ModelArgs, Transformer, rope_tables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny(**over) -> ModelArgs:
    """A model small enough for a unit test, with every feature on: q_lora, groups, MTP, balance loss."""
    cfg = dict(vocab_size=61, dim=32, inter_dim=48, moe_inter_dim=16, n_layers=3, n_dense_layers=1, n_heads=2,
               n_routed_experts=8, n_shared_experts=1, n_activated_experts=2, n_expert_groups=4, n_limited_groups=2,
               route_scale=2.5, q_lora_rank=12, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=6,
               v_head_dim=10, max_seq_len=48, mtp_depth=1, seq_aux_alpha=0.01)
    cfg.update(over)
    return ModelArgs(**cfg)


def build(args, seed=0, std=0.1):
    torch.manual_seed(seed)
    model = Transformer(args)
    model.init_weights(std)   # larger than training's 0.02: peaked logits, so argmax comparisons are meaningful
    return model.eval()


# ------------------------------------------------------------------------------------------ shapes and config
def test_forward_shapes_dtypes_and_loss_parts():
    m = build(tiny())
    tok = torch.randint(0, 61, (3, 11))
    logits = m(tok)
    assert logits.shape == (3, 11, 61) and logits.dtype == torch.float32
    tgt = torch.randint(0, 61, (3, 11))
    logits2, loss, parts = m(tok, tgt)
    assert torch.equal(logits, logits2)
    assert loss.dim() == 0 and set(parts) == {"ce", "mtp", "balance"}
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in parts.values())
    assert parts["mtp"] > 0 and parts["balance"] > 0
    p = {k: float(v.detach()) for k, v in parts.items()}
    assert loss.item() == pytest.approx(p["ce"] + 0.3 * p["mtp"] + p["balance"], rel=1e-5)


def test_loss_is_mean_ce_over_non_ignored_targets():
    m = build(tiny(mtp_depth=0, seq_aux_alpha=0.0))
    tok = torch.randint(0, 61, (2, 9))
    tgt = torch.randint(0, 61, (2, 9))
    tgt[0, :4] = -1
    tgt[1, 7:] = -1
    logits, loss, parts = m(tok, tgt)
    ref = F.cross_entropy(logits.flatten(0, 1), tgt.flatten(), ignore_index=-1)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    assert parts["mtp"] == 0 and parts["balance"] == 0


def test_structure_follows_v3():
    a = tiny()
    m = Transformer(a)
    assert [type(b.ffn).__name__ for b in m.layers] == ["MLP", "MoE", "MoE"]   # leading dense layers
    moe = m.layers[1].ffn
    assert moe.w1.shape == (8, 32, 16) and moe.w3.shape == (8, 32, 16) and moe.w2.shape == (8, 16, 32)
    assert moe.shared_experts.w1.weight.shape == (16, 32)
    assert m.head.weight.data_ptr() != m.embed.weight.data_ptr()              # not tied
    names = dict(m.named_parameters())
    assert "layers.0.attn.wq_a.weight" in names and "layers.0.attn.wkv_b.weight" in names
    assert not any(n.endswith("gate.bias") for n in names)                   # the bias is a buffer ...
    assert "layers.1.ffn.gate.bias" in m.state_dict()                         # ... saved with the model
    assert not any("rope" in k for k in m.state_dict())                       # rope tables are rebuilt, not saved
    assert hasattr(Transformer(tiny(q_lora_rank=0)).layers[0].attn, "wq")


def test_from_json_preset_flat_and_unknown_field(tmp_path):
    toy = ModelArgs.from_json(os.path.join(ROOT, "configs", "toy.json"))
    with open(os.path.join(ROOT, "configs", "toy.json")) as f:
        preset = json.load(f)
    assert preset["name"] == "toy" and toy.dim == preset["model"]["dim"]
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps({"dim": 64, "n_layers": 2}))
    assert ModelArgs.from_json(str(flat)).dim == 64
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": {"dim": 64, "n_experts": 3}}))
    with pytest.raises(ValueError, match="n_experts"):
        ModelArgs.from_json(str(bad))
    with pytest.raises(ValueError, match="score_func"):
        ModelArgs(score_func="relu")


def test_bad_inputs_are_named():
    m = build(tiny())
    with pytest.raises(ValueError, match="max_seq_len"):
        m(torch.zeros(1, 49, dtype=torch.long))
    with pytest.raises(ValueError, match="vocab_size"):
        m(torch.full((1, 4), 61, dtype=torch.long))
    with pytest.raises(ValueError, match="long"):
        m(torch.zeros(1, 4))
    cache = m.new_cache(2, 10)
    with pytest.raises(ValueError, match="positions"):
        m.decode(torch.zeros(2, 1, dtype=torch.long), torch.full((2, 1), 10), cache)
    with pytest.raises(ValueError, match="batch"):
        m.decode(torch.zeros(3, 1, dtype=torch.long), torch.zeros(3, 1, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="max_seq_len"):
        m.new_cache(1, 49)


# ------------------------------------------------------------------------------------------ attention paths
def test_causality_future_tokens_never_change_past_logits():
    m = build(tiny())
    tok = torch.randint(0, 61, (2, 16))
    base = m(tok)
    for t in (5, 15):
        changed = tok.clone()
        changed[:, t] = (changed[:, t] + 1) % 61
        out = m(changed)
        torch.testing.assert_close(out[:, :t], base[:, :t], rtol=0, atol=1e-6)
        assert (out[:, t] - base[:, t]).abs().max() > 1e-3   # and the changed position does change


YARN = {"q_lora_rank": 0, "max_seq_len": 40, "original_seq_len": 16, "rope_factor": 4.0}


@pytest.mark.parametrize("over", [{}, YARN])
def test_decode_naive_and_absorbed_equal_forward(over):
    """Prefill + token-by-token decode over a ragged batch, in both cache modes, against one forward pass.
    The second case has no query compression and YaRN on (max_seq_len > original_seq_len)."""
    m = build(tiny(**over))
    B, T = 3, 20
    seq = torch.randint(0, 61, (B, T))
    full = m(seq)                                                  # (B, T, V) the training path
    lens = torch.tensor([4, 9, 6])                                 # ragged prompts, right-padded
    out = {}
    for mode in ("naive", "absorbed"):
        cache = m.new_cache(B, T, mode)
        prompt = torch.where(torch.arange(9) < lens[:, None], seq[:, :9], 0)
        pre = m.decode(prompt, torch.arange(9).expand(B, 9), cache)   # (B, 9, V)
        steps = []
        pos = lens.clone()
        while int(pos.min()) < T:                                  # one token per row at its own position
            p = pos.clamp(max=T - 1)
            steps.append(m.decode(seq.gather(1, p[:, None]), p[:, None], cache)[:, 0])
            pos += 1
        out[mode] = (pre, torch.stack(steps, 1), lens)
        for b in range(B):
            L = int(lens[b])
            torch.testing.assert_close(
                pre[b, :L], full[b, :L], rtol=0, atol=2e-5,
                msg=lambda m, b=b, mode=mode: f"{mode} prefill, row {b}: the logits of a prompt decoded into the "
                                              f"cache must equal the training forward (MLA, V3 eq. 1-11)\n{m}")
            n = T - L
            torch.testing.assert_close(
                out[mode][1][b, :n], full[b, L:], rtol=0, atol=2e-5,
                msg=lambda m, b=b, mode=mode: f"{mode} decode, row {b}: one token at a time at its own position "
                                              f"(cache index = position) must equal the training forward; absorbed "
                                              f"= W_uk folded into the query, W_uv into the output (V3 eq. 1-11)\n{m}")
    torch.testing.assert_close(out["naive"][1], out["absorbed"][1], rtol=0, atol=1e-5,
                               msg=lambda m: f"naive and absorbed decoding must give the same logits\n{m}")


def test_multi_token_decode_at_ragged_positions():
    """T > 1 tokens per row at different offsets per row (the general masked path) equals the forward pass."""
    m = build(tiny())
    B, T = 2, 14
    seq = torch.randint(0, 61, (B, T))
    full = m(seq)
    for mode in ("naive", "absorbed"):
        cache = m.new_cache(B, T, mode)
        m.decode(seq[:, :8], torch.arange(8).expand(B, 8), cache)      # prefill 8 (row 0 will redo 5..7)
        pos = torch.tensor([[5, 6, 7, 8], [8, 9, 10, 11]])              # row 0 restarts at 5: slots rewritten
        got = m.decode(seq.gather(1, pos), pos, cache)
        torch.testing.assert_close(
            got, full.gather(1, pos[..., None].expand(-1, -1, 61)), rtol=0, atol=2e-5,
            msg=lambda m, mode=mode: f"{mode}: 4 tokens per row at ragged positions (key s visible to the query at "
                                     f"position p iff s <= p, slots rewritten) must equal the training forward\n{m}")


def test_absorbed_cache_is_latent_sized():
    a = tiny()
    ab, nv = KVCache(a, 2, 10, "absorbed", "cpu", torch.float32), KVCache(a, 2, 10, "naive", "cpu", torch.float32)
    per_token_ab = ab.nbytes() / (2 * 10 * a.n_layers * 4)
    per_token_nv = nv.nbytes() / (2 * 10 * a.n_layers * 4)
    assert per_token_ab == a.kv_lora_rank + a.qk_rope_head_dim
    assert per_token_nv == a.n_heads * (a.qk_nope_head_dim + a.qk_rope_head_dim + a.v_head_dim)
    c = Transformer(a).counters(dtype_bytes=4)
    assert c["kv_bytes_per_token_absorbed"] == per_token_ab * a.n_layers * 4


def test_yarn_frequencies_and_scale():
    """V3's YaRN numbers (s = 40, beta_fast 32, beta_slow 1, 4K original context, rope dim 64): pairs 0..10
    turn >= 32 times in 4K tokens and keep their frequency, pairs 23..31 turn < 1 time and are slowed 40x."""
    a = ModelArgs(qk_rope_head_dim=64, max_seq_len=4097, original_seq_len=4096, rope_factor=40.0, mscale=1.0)
    plain = ModelArgs(qk_rope_head_dim=64, max_seq_len=4096, original_seq_len=4096)
    cos_y, sin_y = rope_tables(a)
    cos_p, sin_p = rope_tables(plain)
    assert cos_y.shape == (4097, 32)
    ang_y, ang_p = torch.atan2(sin_y[1], cos_y[1]), torch.atan2(sin_p[1], cos_p[1])  # position 1: the frequencies
    torch.testing.assert_close(ang_y[:11], ang_p[:11])            # fast pairs keep their frequency
    torch.testing.assert_close(ang_y[23:], ang_p[23:] / 40.0)     # slow pairs are interpolated by 1/s
    assert torch.all(ang_y[11:23] < ang_p[11:23]) and torch.all(ang_y[11:23] > ang_p[11:23] / 40.0)
    from model import MLA
    m = 0.1 * math.log(40.0) + 1.0
    scale = MLA(ModelArgs(**{**a.__dict__, "qk_rope_head_dim": 16})).softmax_scale
    assert scale == pytest.approx(m * m / math.sqrt(48))           # nope 32 + rope 16, times mscale^2


# ----------------------------------------------------------------------------------------------------- routing
def gate_for(args, seed=0):
    torch.manual_seed(seed)
    g = Gate(args)
    torch.nn.init.normal_(g.weight, std=0.5)
    return g


def test_gate_weights_formula_and_route_scale():
    """s = sigmoid(u . e_i) (V3 eq. 15), g = s / sum of the selected s (V3 eq. 13), times route_scale.

    Paper leaves this open: route_scale (2.5 for V3) is in the official code, not in V3 eq. 13."""
    a = tiny()
    g = gate_for(a)
    x = torch.randn(64, a.dim)
    w, idx, s = g(x)
    assert w.shape == idx.shape == (64, 2) and s.shape == (64, 8), \
        "Gate.forward: x (N, D) -> weights (N, K), indices (N, K), scores (N, E)"
    torch.testing.assert_close(s, torch.sigmoid(x @ g.weight.T),
                               msg=lambda m: f"scores s = sigmoid(u . e_i) (V3 eq. 15)\n{m}")
    torch.testing.assert_close(w.sum(-1), torch.full((64,), 2.5),
                               msg=lambda m: f"weights are renormalised to sum 1 (V3 eq. 13), times route_scale "
                                             f"2.5\n{m}")
    raw = s.gather(1, idx)
    torch.testing.assert_close(w, raw / raw.sum(-1, keepdim=True) * 2.5,
                               msg=lambda m: f"g_i = s_i / sum of the selected s (V3 eq. 13) * route_scale\n{m}")
    assert (idx[:, 0] != idx[:, 1]).all(), "top-K picks K distinct experts"


def test_routing_stays_fp32_under_bf16_autocast():
    """The router's scores decide which experts run: under bf16 autocast they must still be the fp32 scores (a bf16
    matmul rounds near-tied scores and changes the selection)."""
    a = tiny()
    g = gate_for(a)
    x = torch.randn(64, a.dim)
    w32, idx32, s32 = g(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        w, idx, s = g(x)
    assert s.dtype == torch.float32 and w.dtype == torch.float32, "Gate.forward: routing scores in fp32"
    torch.testing.assert_close(s, s32, rtol=0, atol=0, msg=lambda m: f"autocast changed the routing scores\n{m}")
    assert torch.equal(idx, idx32)


def test_bias_changes_selection_not_weights():
    a = tiny()
    g = gate_for(a)
    x = torch.randn(64, a.dim)
    w0, idx0, s0 = g(x)
    g.bias[5] = 10.0                                                        # expert 5 now wins every selection
    w1, idx1, s1 = g(x)
    assert (idx1 == 5).any(-1).all() and not (idx0 == 5).any(-1).all(), \
        "selection is top-K over s + b (V3 eq. 16): a bias of 10 must put expert 5 in every token's top-K"
    torch.testing.assert_close(s1, s0, msg=lambda m: f"the scores s do not include the bias (V3 eq. 15)\n{m}")
    raw = s1.gather(1, idx1)
    torch.testing.assert_close(w1, raw / raw.sum(-1, keepdim=True) * 2.5,
                               msg=lambda m: f"weights come from the raw s of the selected experts, never from "
                                             f"s + b (V3 eq. 13: the bias only selects)\n{m}")
    assert not g.bias.requires_grad, "the bias is a buffer moved by update_bias, not a learned parameter"


def test_group_limited_routing():
    """Top-K of s + b only inside the n_limited_groups best groups.

    Paper leaves this open: V3 ranks the groups by the sum of each group's top-2 (s + b) in its official code;
    the paper only says the experts of each token come from at most M groups."""
    a = tiny(n_routed_experts=12, n_expert_groups=4, n_limited_groups=2, n_activated_experts=3)
    g = gate_for(a)
    g.bias.copy_(torch.randn(12) * 0.1)
    x = torch.randn(200, a.dim)
    w, idx, s = g(x)
    biased = (s + g.bias).view(200, 4, 3)
    top2 = biased.topk(2, dim=-1).values.sum(-1)                            # (N, G) group scores
    kept = top2.topk(2, dim=-1).indices
    groups_used = idx // 3
    for n in range(200):
        assert set(groups_used[n].tolist()) <= set(kept[n].tolist()), \
            f"token {n}: experts only from the 2 groups with the largest sum of their top-2 (s + b)"
        allowed = torch.cat([torch.arange(3) + 3 * gi for gi in kept[n].tolist()])
        best = allowed[(s[n] + g.bias)[allowed].topk(3).indices]
        assert set(best.tolist()) == set(idx[n].tolist()), \
            f"token {n}: the top-K of s + b (V3 eq. 16) inside the kept groups"
    # without the limit some tokens would have used a third group: the limit is doing something
    free = (s + g.bias).topk(3, dim=-1).indices // 3
    assert any(len(set(r.tolist())) > 2 for r in free), "the example must need the group limit"


def test_softmax_scores_are_not_renormalised():
    """Paper leaves this open: V3 eq. 13's renormalisation is for sigmoid scores; with V2's softmax scores the
    weights are the softmax probabilities themselves (V2-Lite's official code), which this test pins."""
    a = tiny(score_func="softmax", route_scale=1.0, n_expert_groups=1, n_limited_groups=1)
    g = gate_for(a)
    x = torch.randn(32, a.dim)
    w, idx, s = g(x)
    torch.testing.assert_close(s, torch.softmax(x @ g.weight.T, -1),
                               msg=lambda m: f"score_func='softmax': s = softmax(u . e) over the experts\n{m}")
    torch.testing.assert_close(w, s.gather(1, idx),
                               msg=lambda m: f"softmax scores: weights = the selected probabilities, not "
                                             f"renormalised (route_scale 1)\n{m}")
    assert (w.sum(-1) < 1).all(), "softmax weights of K < E experts sum to less than 1 (no renormalisation)"


def test_moe_equals_dense_sum_over_selected_experts():
    a = tiny()
    torch.manual_seed(0)
    moe = MoE(a)
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(2, 5, a.dim)
    y, _ = moe(x)
    w, idx, _ = moe.gate(x.view(10, -1))
    ref = moe.shared_experts(x.view(10, -1))
    for n in range(10):
        for k in range(2):
            e = int(idx[n, k])
            h = F.silu(x.view(10, -1)[n] @ moe.w1[e]) * (x.view(10, -1)[n] @ moe.w3[e])
            ref[n] += w[n, k] * (h @ moe.w2[e])
    torch.testing.assert_close(y.view(10, -1), ref, rtol=1e-5, atol=1e-6)


def test_loads_counted_in_training_only_and_bias_update_balances_a_skewed_batch():
    """b_i += gamma * sign(mean_load - load_i) after each step (V3 §2.1.2) spreads a skewed batch's load.

    Paper leaves this open: loads are counted in training-mode forwards only (not while sampling or evaluating),
    and the counters are reset by each update; both are this repository's choices."""
    a = tiny(bias_update_speed=0.02, n_expert_groups=1, n_limited_groups=1)
    m = build(a)
    moe = m.layers[1].ffn
    torch.manual_seed(1)
    u = F.normalize(torch.randn(a.dim), dim=0)
    with torch.no_grad():
        moe.gate.weight.normal_(0, 0.05)
        moe.gate.weight[0] += 2.0 * u                                       # experts 0 and 1 attract every token
        moe.gate.weight[1] += 1.5 * u
    x = torch.randn(4, 32, a.dim) * 0.5 + 2.0 * u                            # a skewed batch: all tokens near u

    moe.eval()
    moe(x)
    assert moe.gate.load is None, "eval-mode forwards must count no load"
    moe.train()

    def imbalance():
        moe(x)
        load = moe.gate.load.clone()
        assert load.sum() == 4 * 32 * 2, "a training forward counts every (token, selected expert) pair"
        m.update_bias()
        assert moe.gate.load.sum() == 0, "update_bias must reset the load counters"
        return (load.max() / load.mean()).item()

    first = imbalance()
    for _ in range(60):
        last = imbalance()
    assert first >= 3.5, "the example must start skewed: experts 0 and 1 take (almost) every token"
    assert last < 1.6, \
        f"61 updates b_i += gamma * sign(mean_load - load_i) (V3 §2.1.2) must spread the load: max/mean " \
        f"{first:.2f} -> {last:.2f}, expected < 1.6"
    assert moe.gate.bias[0] < 0 and moe.gate.bias[1] < 0, \
        "overloaded experts (load > mean) get their bias lowered: sign(mean_load - load_i) = -1"


def test_gradients_reach_every_learnable_parameter_but_not_the_bias():
    m = build(tiny(), std=0.1).train()
    tok = torch.randint(0, 61, (4, 24))
    _, loss, _ = m(tok, torch.roll(tok, -1, 1))
    loss.backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())
    for mod in m.modules():
        if isinstance(mod, Gate):
            assert mod.bias.grad is None and not mod.bias.requires_grad
    assert any(n.startswith("mtp.") for n, _ in m.named_parameters())      # the MTP module learns too


# ------------------------------------------------------------------------------------------------- counters
def expected_counts(a: ModelArgs):
    """Closed-form parameter counts, written independently of the modules."""
    H, qk = a.n_heads, a.qk_nope_head_dim + a.qk_rope_head_dim
    q = a.dim * H * qk if a.q_lora_rank == 0 else a.dim * a.q_lora_rank + a.q_lora_rank + a.q_lora_rank * H * qk
    attn = (q + a.dim * (a.kv_lora_rank + a.qk_rope_head_dim) + a.kv_lora_rank
            + a.kv_lora_rank * H * (a.qk_nope_head_dim + a.v_head_dim) + H * a.v_head_dim * a.dim)
    expert = 3 * a.dim * a.moe_inter_dim
    moe = (a.n_routed_experts + a.n_shared_experts) * expert + a.n_routed_experts * a.dim
    dense = 3 * a.dim * a.inter_dim
    n_moe = a.n_layers - a.n_dense_layers
    total = (a.n_layers * (attn + 2 * a.dim) + a.n_dense_layers * dense + n_moe * moe
             + 2 * a.vocab_size * a.dim + a.dim)
    active = total - a.vocab_size * a.dim - n_moe * (a.n_routed_experts - a.n_activated_experts) * expert
    return total, active


@pytest.mark.parametrize("name,total,active", [("v3-671b", 671e9, 37e9), ("v2-lite", 15.7e9, 2.4e9)])
def test_parameter_counts_of_the_real_configs(name, total, active):
    a = ModelArgs.from_json(os.path.join(ROOT, "configs", f"{name}.json"))
    with torch.device("meta"):
        m = Transformer(a)
    c = m.counters()
    assert (c["total_params"], c["active_params"]) == expected_counts(a)
    assert abs(c["total_params"] - total) / total < 0.005                   # 671.0B ; 15.71B
    assert abs(c["active_params"] - active) / active < 0.025                # 36.6B ; 2.45B
    if name == "v3-671b":
        assert 11e9 < c["mtp_params"] < 14e9                                # one MoE block + projection
        assert c["kv_bytes_per_token_absorbed"] == 61 * 576 * 2             # 70 KB per token in bf16
        assert c["kv_bytes_per_token_naive"] == 61 * 128 * (192 + 128) * 2
        assert c["train_flops_per_token"] > 6 * c["active_params"]


def test_toy_counts_match_the_closed_form():
    a = ModelArgs.from_json(os.path.join(ROOT, "configs", "toy.json"))
    c = Transformer(a).counters()
    assert (c["total_params"], c["active_params"]) == expected_counts(a)
    assert c["mtp_params"] == 0


def test_learns_to_copy():
    """The whole model (MLA, RoPE, MoE, balancing) can learn the induction-style copy a scratchpad needs:
    8 random digits, a separator, the same digits again; the copy is right after 150 AdamW steps."""
    torch.manual_seed(0)
    m = Transformer(tiny(mtp_depth=0, dim=48, n_heads=4)).train()
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3, betas=(0.9, 0.95))
    L = 8

    def batch(b):
        x = torch.randint(10, 20, (b, L))
        return torch.cat([x, torch.full((b, 1), 5), x], 1)                  # (b, 2L + 1)

    for _ in range(150):
        s = batch(32)
        tgt = s[:, 1:].clone()
        tgt[:, :L] = -1                                                      # loss on the copy only
        _, loss, _ = m(s[:, :-1], tgt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        m.update_bias()
    with torch.no_grad():
        s = batch(256)
        pred = m.eval()(s[:, :-1]).argmax(-1)[:, L:]
    assert (pred == s[:, L + 1:]).float().mean() > 0.95
