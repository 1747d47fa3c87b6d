"""The speed paths are exact: each fast path against the plain one it replaces.

    python -m pytest -q tests/test_speed.py

  grouped MoE      kernels.moe_ffn's CPU paths (torch._grouped_mm, no loop over experts; for a decode step's few
                   tokens all experts in batched matmuls, or gathered expert weights) == kernels.moe_ffn_ref,
                   forward and every gradient, fp32, at a nice and a weird shape with an expert that gets no token;
                   the experts' segments padded to a few bucketed sizes (kernels._bucket_rows) change no value
  attention        kernels.attention's CPU path (SDPA's fused kernel, narrower head dim zero-padded) == attention_ref
  rope             kernels.apply_rope's CPU path (one complex multiply) == apply_rope_ref
  AdamW            common.adamw (fused) == torch's per-parameter AdamW loop
The sampler's speed-ups (shared prefill, compaction) are pinned by tests/test_sample.py
(test_compaction_and_shared_prefill_change_no_token).
Speed itself is measured by bench/ (bench/compare.py, bench/train.py), never here.
"""
import pytest
import torch

import kernels

pytestmark = pytest.mark.usefixtures("one_thread")

TIGHT = dict(atol=1e-5, rtol=1e-5)     # fp32; the two paths sum the same products in the same order per expert


def _grads(out, inputs, seed=1):
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    return torch.autograd.grad(out, inputs, g)


def _moe_inputs(N, D, I, E, K, empty):
    gen = torch.Generator().manual_seed(0)
    scores = torch.rand(N, E, generator=gen)
    scores[:, empty] = -1.0                   # expert `empty` is never chosen
    scores[: N // 2, 0] = 2.0                 # half the tokens pick expert 0: a skewed load
    idx = scores.topk(K, dim=-1).indices
    leaf = lambda *s: (torch.randn(*s, generator=gen) * 0.2).requires_grad_()   # noqa: E731
    return leaf(N, D), idx, torch.rand(N, K, generator=gen).requires_grad_(), leaf(E, D, I), leaf(E, D, I), \
        leaf(E, I, D)


@pytest.mark.parametrize("N,D,I,E,K", [(192, 32, 16, 4, 2), (131, 20, 12, 5, 3)], ids=["nice", "weird"])
def test_grouped_moe_equals_reference(N, D, I, E, K, monkeypatch):
    """The grouped-GEMM path runs (not the loop) and equals the reference loop forward and backward; the expert
    that got no token gets an exactly zero weight gradient."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x, idx, w, w1, w3, w2 = _moe_inputs(N, D, I, E, K, empty=E - 2)
    inputs = (x, w, w1, w3, w2)
    assert kernels._grouped_mm_fits(x, w1, torch.float32)
    calls = []
    real = torch._grouped_mm
    monkeypatch.setattr(torch, "_grouped_mm", lambda *a, **k: calls.append(1) or real(*a, **k))
    out = kernels.moe_ffn(x, idx, w, w1, w3, w2)
    assert len(calls) == 3, "the CPU path should be three grouped GEMMs (w1, w3, w2), not the reference's loop"
    ref = kernels.moe_ffn_ref(x, idx, w, w1, w3, w2)
    torch.testing.assert_close(out, ref, **TIGHT)
    for name, a, b in zip(("x", "gate weights", "w1", "w3", "w2"), _grads(out, inputs), _grads(ref, inputs)):
        torch.testing.assert_close(a, b, **TIGHT, msg=lambda m, name=name: f"d{name}: {m}")
    dw1 = _grads(kernels.moe_ffn(x, idx, w, w1, w3, w2), [w1])[0]
    assert dw1[E - 2].abs().max() == 0 and dw1[0].abs().max() > 0


def test_bucketed_expert_segments(monkeypatch):
    """The grouped GEMMs see each expert's rows padded to a bucketed size: at most 1/16 more rows, every segment
    size a few leading bits wide (so a varying routing repeats the same GEMM shapes), counts 0 and 1..16 kept."""
    c = torch.arange(0, 5000)
    b = kernels._bucket_rows(c)
    assert torch.equal(b[:17], c[:17]) and (b >= c).all() and (b <= c + c // 16).all()
    assert len(set(b[1025:2049].tolist())) == 16          # 16 sizes per octave (1088 .. 2048), not 1024
    bits = [v >> (v.bit_length() - 5) << (v.bit_length() - 5) == v for v in b[32:].tolist()]
    assert all(bits)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x, idx, w, w1, w3, w2 = _moe_inputs(300, 32, 16, 4, 2, empty=3)
    seen = []
    real = torch._grouped_mm
    monkeypatch.setattr(torch, "_grouped_mm", lambda a, b, offs: seen.append(offs.clone()) or real(a, b, offs=offs))
    out = kernels.moe_ffn(x, idx, w, w1, w3, w2)
    sizes = torch.diff(seen[0], prepend=seen[0].new_zeros(1)).long()
    counts = torch.bincount(idx.reshape(-1), minlength=4)
    assert torch.equal(sizes, kernels._bucket_rows(counts)) and not torch.equal(sizes, counts)
    torch.testing.assert_close(out, kernels.moe_ffn_ref(x, idx, w, w1, w3, w2), **TIGHT)


@pytest.mark.parametrize("path,N,K", [("all_experts", 5, 2), ("all_experts", 3, 3), ("gathered", 1, 2),
                                      ("gathered", 2, 3)])
def test_small_batch_moe_paths_equal_reference(path, N, K, monkeypatch):
    """A decode step's few tokens: the all-experts batched matmuls (N x E rows at most _MOE_ALL_EXPERTS_ROWS) and,
    with fewer pairs than experts beyond that, the gathered-weights batched matmul; no grouped GEMM over mostly
    empty experts. Each equals the reference forward and backward (the unrouted expert's gradient exactly 0)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if path == "gathered":
        monkeypatch.setattr(kernels, "_MOE_ALL_EXPERTS_ROWS", 0)
    x, idx, w, w1, w3, w2 = _moe_inputs(N, 16, 8, 8, K, empty=3)
    monkeypatch.setattr(torch, "_grouped_mm", lambda *a, **k: pytest.fail("grouped GEMM used for a few pairs"))
    calls = []
    real = getattr(kernels, f"_moe_ffn_{path}")
    monkeypatch.setattr(kernels, f"_moe_ffn_{path}", lambda *a: calls.append(1) or real(*a))
    out = kernels.moe_ffn(x, idx, w, w1, w3, w2)
    assert calls, f"the {path} path did not run"
    ref = kernels.moe_ffn_ref(x, idx, w, w1, w3, w2)
    torch.testing.assert_close(out, ref, **TIGHT)
    inputs = (x, w, w1, w3, w2)
    got, want = _grads(out, inputs), _grads(ref, inputs)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **TIGHT)
    assert got[2][3].abs().max() == 0


def test_grouped_moe_fallbacks_and_autocast(monkeypatch):
    """Shapes the grouped GEMM cannot take (D not a multiple of 4 in fp32) keep the loop and its result; under
    bf16 autocast the grouped path casts like the loop's `@` and matches it to bf16 rounding; no tokens at all
    give zeros."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x, idx, w, w1, w3, w2 = _moe_inputs(11, 9, 6, 4, 2, empty=1)
    assert not kernels._grouped_mm_fits(x, w1, torch.float32)
    torch.testing.assert_close(kernels.moe_ffn(x, idx, w, w1, w3, w2), kernels.moe_ffn_ref(x, idx, w, w1, w3, w2))
    x, idx, w, w1, w3, w2 = _moe_inputs(40, 32, 16, 4, 2, empty=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = kernels.moe_ffn(x, idx, w, w1, w3, w2)
        ref = kernels.moe_ffn_ref(x, idx, w, w1, w3, w2)
    assert out.dtype == ref.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=2e-2, rtol=2e-2)
    empty = kernels.moe_ffn(x[:0], idx[:0], w[:0], w1, w3, w2)
    assert empty.shape == (0, 32)


@pytest.mark.parametrize("Dqk,Dv", [(48, 32), (16, 24)], ids=["v_narrower", "v_wider"])
def test_training_attention_sdpa_equals_reference(Dqk, Dv, monkeypatch):
    """kernels.attention's CPU path pads the narrower head dim with zeros so that torch's fused flash kernel runs
    (not the unfused math path MLA's Dv != Dqk would get); output and gradients equal attention_ref's."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    gen = torch.Generator().manual_seed(0)
    q, k = (torch.randn(2, 19, 3, Dqk, generator=gen).requires_grad_() for _ in range(2))
    v = torch.randn(2, 19, 3, Dv, generator=gen).requires_grad_()
    out = kernels.attention(q, k, v, 0.3)
    ref = kernels.attention_ref(q, k, v, 0.3)
    assert out.shape == (2, 19, 3, Dv)
    torch.testing.assert_close(out, ref, **TIGHT)
    for a, b in zip(_grads(out, (q, k, v)), _grads(ref, (q, k, v))):
        torch.testing.assert_close(a, b, **TIGHT)


def test_adamw_is_fused_and_equals_the_loop():
    """common.adamw picks torch's fused AdamW on CPU; five steps equal the per-parameter loop's within rounding."""
    from common import adamw
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(7, 5, generator=gen), torch.randn(5, generator=gen)]
    a = [p.clone().requires_grad_() for p in params]
    b = [p.clone().requires_grad_() for p in params]
    opt_a = adamw([{"params": a[:1], "weight_decay": 0.1}, {"params": a[1:], "weight_decay": 0.0}], lr=1e-2,
                  betas=(0.9, 0.95))
    opt_b = torch.optim.AdamW([{"params": b[:1], "weight_decay": 0.1}, {"params": b[1:], "weight_decay": 0.0}],
                              lr=1e-2, betas=(0.9, 0.95), foreach=False)
    assert opt_a.defaults["fused"] is True
    for _ in range(5):
        grads = [torch.randn(p.shape, generator=gen) for p in params]
        for ps, opt in ((a, opt_a), (b, opt_b)):
            for p, g in zip(ps, grads):
                p.grad = g.clone()
            opt.step()
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-6)


def test_rope_complex_equals_reference(monkeypatch):
    """kernels.apply_rope's CPU path (one complex multiply) equals apply_rope_ref: the output and dx bitwise on a
    strided view (q_pe is a split of q), dcos/dsin to float rounding (summed over heads in another order)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 7, 3, 24, generator=gen)[..., 8:].requires_grad_()    # (B, T, H, R=16), non-contiguous
    ang = torch.rand(2, 7, 8, generator=gen) * 6
    cos, sin = ang.cos().requires_grad_(), ang.sin().requires_grad_()
    out, ref = kernels.apply_rope(x, cos, sin), kernels.apply_rope_ref(x, cos, sin)
    assert torch.equal(out, ref)
    got, want = _grads(out, (x, cos, sin)), _grads(ref, (x, cos, sin))
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1], **TIGHT)
    torch.testing.assert_close(got[2], want[2], **TIGHT)


def test_compare_bench_dense_peer_has_equal_flops():
    """bench/compare.py's dense GPT is sized to the MoE's training FLOPs per token (model.counters' formula) within
    3%, its own count agrees with the closed form it was sized by, and the shared reward reads the word ids."""
    import importlib.util
    import os
    from model import ModelArgs, Transformer
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "compare.py")
    spec = importlib.util.spec_from_file_location("bench_compare", path)
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)
    args = ModelArgs()                                          # the toy model's shape
    target = Transformer(args).counters(seq_len=384)["train_flops_per_token"]
    d = compare.dense_width(target, args.vocab_size, args.n_layers, 384)
    gpt = compare.GPT(args.vocab_size, d, args.n_layers, 2, 384)
    assert abs(gpt.flops_per_token(384) / target - 1) < 0.03
    assert compare.even_reward(None, ["t2 t3 t4 t5", "t1", ""]) == [0.5, 0.0, 0.0]
    tok = compare.WordTokenizer()
    assert tok.decode(tok.encode("t7 t0 t1023")) == "t7 t0 t1023" and tok.eos_id is None
