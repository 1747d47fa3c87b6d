"""sample.py: the cache equals recomputation, ragged rows equal rows alone, both attention paths agree, the
returned logprobs equal a teacher-forced pass (GRPO's ratio needs it), EOS stopping, errors, the CLI's errors.

    python -m pytest -q tests/test_sample.py
"""
import pytest
import torch

import sample
from model import ModelArgs, Transformer
from sample import generate, generate_recompute, truncate

V = 67


def tiny_model(seed=0, **over):
    cfg = dict(vocab_size=V, dim=32, inter_dim=48, moe_inter_dim=16, n_layers=3, n_dense_layers=1, n_heads=2,
               n_routed_experts=8, n_shared_experts=1, n_activated_experts=2, n_expert_groups=4, n_limited_groups=2,
               route_scale=2.5, q_lora_rank=0, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=6,
               v_head_dim=10, max_seq_len=64)
    cfg.update(over)
    torch.manual_seed(seed)
    m = Transformer(ModelArgs(**cfg))
    m.init_weights(0.15)   # peaked logits: greedy choices are far from ties, so token equality is a fair test
    return m.eval()


PROMPTS = [[5, 9, 2, 33, 4, 17, 8], [11, 3], [60, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12], [40]]


def teacher_forced_logprobs(model, prompts, gen: sample.Generation, temperature: float):
    """log softmax(logits / T) of each generated token, from ONE forward pass over prompt + completion."""
    B, N = gen.tokens.shape
    L = max(len(p) for p in prompts)
    seq = torch.zeros(B, L + N, dtype=torch.long)
    for b, p in enumerate(prompts):
        seq[b, :len(p)] = torch.tensor(p)
        seq[b, len(p):len(p) + N] = gen.tokens[b]
    with torch.no_grad():
        logp = torch.log_softmax(model(seq) / temperature, -1)                # (B, L + N, V)
    out = torch.zeros(B, N)
    for b, p in enumerate(prompts):
        n = int(gen.lengths[b])
        idx = torch.arange(len(p) - 1, len(p) - 1 + n)                         # the positions predicting them
        out[b, :n] = logp[b, idx].gather(1, gen.tokens[b, :n, None]).squeeze(1)
    return out


@pytest.mark.parametrize("attn", ["absorbed", "naive"])
def test_cache_equals_full_recomputation_token_for_token(attn):
    m = tiny_model()
    ref = generate_recompute(m, PROMPTS, 24)
    got = generate(m, PROMPTS, 24, temperature=0, attn=attn)
    assert torch.equal(got.tokens, ref.tokens)
    torch.testing.assert_close(got.logprobs, ref.logprobs, rtol=0, atol=1e-5)
    assert got.tokens.shape == (4, 24) and got.tokens.dtype == torch.long
    assert got.logprobs.dtype == torch.float32 and got.lengths.tolist() == [24] * 4
    assert not got.finished.any()
    assert len(set(map(tuple, got.tokens.tolist()))) == 4                   # the rows really differ


def test_each_ragged_row_equals_that_prompt_alone():
    m = tiny_model(seed=1)
    batch = generate(m, PROMPTS, 20, temperature=0)
    for b, p in enumerate(PROMPTS):
        alone = generate(m, [p], 20, temperature=0)
        assert torch.equal(batch.tokens[b], alone.tokens[0])
        torch.testing.assert_close(batch.logprobs[b], alone.logprobs[0], rtol=0, atol=1e-5)


def test_naive_and_absorbed_generation_agree():
    m = tiny_model(seed=2, q_lora_rank=8)
    a = generate(m, PROMPTS, 20, temperature=0.9, seed=7, attn="absorbed")
    n = generate(m, PROMPTS, 20, temperature=0.9, seed=7, attn="naive")
    assert torch.equal(a.tokens, n.tokens)                                  # same seed, same distributions
    torch.testing.assert_close(a.logprobs, n.logprobs, rtol=0, atol=1e-5)


@pytest.mark.parametrize("temperature,top_p,top_k", [(1.0, 1.0, 0), (0.7, 0.9, 0), (1.3, 1.0, 10)])
def test_sampled_logprobs_equal_teacher_forced_logprobs(temperature, top_p, top_k):
    """GRPO's pi_old: the logprobs returned while sampling must equal the policy's recomputed ones (fp32, 1e-4),
    under softmax(logits / temperature) and ignoring the truncation.

    Paper leaves this open: which distribution the sampler's logprob is taken under. This test wants the plain
    tempered softmax, not the top-k / top-p renormalised one, because the ratio rho of R1 eq. 1 compares it with
    the policy's teacher-forced softmax at the same temperature."""
    m = tiny_model(seed=3)
    gen = generate(m, PROMPTS, 16, temperature=temperature, top_p=top_p, top_k=top_k, seed=0, eos_id=[3, 7])
    tf = teacher_forced_logprobs(m, PROMPTS, gen, temperature)
    torch.testing.assert_close(
        gen.logprobs, tf, rtol=0, atol=1e-4,
        msg=lambda m: f"the sampled token's logprob must be log softmax(logits / temperature)[token] of the "
                      f"untruncated logits (pi_old of R1 eq. 1), as a teacher-forced forward computes it\n{m}")
    assert (gen.logprobs <= 0).all(), "logprobs are <= 0"


def test_compaction_and_shared_prefill_change_no_token():
    """Dropping ended rows from the decode batch, and prefilling a repeated prompt once (a GRPO group), are speed-ups
    only: the same seed gives the same tokens and the same logprobs as the plain loop."""
    m = tiny_model(seed=5)
    prompts = [PROMPTS[0]] * 4 + [PROMPTS[1]] * 4 + PROMPTS[2:]
    free = generate(m, prompts, 16, temperature=1.0, seed=7)
    eos = torch.mode(free.tokens.flatten()).values.item()            # a frequent token: rows end at different steps
    fast = generate(m, prompts, 16, temperature=1.0, seed=7, eos_id=eos, compact=True)
    plain = generate(m, prompts, 16, temperature=1.0, seed=7, eos_id=eos, compact=False)
    assert len(set(fast.lengths.tolist())) > 2                       # several rows left the batch early
    assert torch.equal(fast.tokens, plain.tokens) and torch.equal(fast.lengths, plain.lengths)
    torch.testing.assert_close(fast.logprobs, plain.logprobs, atol=1e-5, rtol=0)
    greedy = generate(m, prompts, 10, temperature=0)                 # the shared prefill equals one prompt alone
    for b, p in enumerate(prompts):
        assert torch.equal(greedy.tokens[b], generate(m, [p], 10, temperature=0).tokens[0])


def test_compiled_decode_step_gives_the_eager_tokens():
    """generate(compiled=True) runs the one-token steps through torch.compile: a speed-up only. With the same seed
    it gives the eager tokens and lengths (rows end at different steps, so the batch shrinks: new shapes, no new
    compilation), and logprobs within float rounding of the eager ones (fused sums round differently)."""
    m = tiny_model(seed=5)
    prompts = [PROMPTS[0]] * 3 + PROMPTS[1:]
    free = generate(m, prompts, 12, temperature=1.0, seed=3)
    eos = torch.mode(free.tokens.flatten()).values.item()
    eager = generate(m, prompts, 12, temperature=1.0, seed=3, eos_id=eos)
    comp = generate(m, prompts, 12, temperature=1.0, seed=3, eos_id=eos, compiled=True)
    assert len(set(eager.lengths.tolist())) > 2
    assert torch.equal(comp.tokens, eager.tokens) and torch.equal(comp.lengths, eager.lengths)
    torch.testing.assert_close(comp.logprobs, eager.logprobs, atol=1e-4, rtol=0)
    assert torch.equal(generate(m, prompts, 8, temperature=0, compiled=True).tokens,
                       generate(m, prompts, 8, temperature=0).tokens)


def test_compiled_decode_of_a_batch_past_the_all_experts_size():
    """A decode batch with more (row, expert) products than kernels._MOE_ALL_EXPERTS_ROWS (80 rows x 8 experts):
    eagerly its MoE goes through torch._grouped_mm, whose fake-tensor kernel accepts only bf16, so tracing the fp32
    step through it failed (an evaluation at batch 128+ crashed). Compiled, the step takes the all-experts products
    and gives the eager greedy tokens."""
    import kernels
    m = tiny_model(seed=5)
    prompts = PROMPTS * 20
    assert len(prompts) * m.args.n_routed_experts > kernels._MOE_ALL_EXPERTS_ROWS
    assert torch.equal(generate(m, prompts, 6, temperature=0, compiled=True).tokens,
                       generate(m, prompts, 6, temperature=0).tokens)


def test_a_compiled_step_that_cannot_be_built_falls_back_to_eager(monkeypatch):
    """A machine where torch.compile cannot build code (no C compiler): one warning that names the error, then the
    eager step, with the eager tokens; later calls do not try again. Any other error still propagates."""
    import model as model_mod
    from torch._inductor.exc import CppCompileError
    calls = []

    def broken(*args):
        calls.append(1)
        raise CppCompileError(["cc"], "cc: command not found")
    monkeypatch.setattr(model_mod, "_compiled_decode", lambda: broken)
    monkeypatch.setattr(model_mod, "_COMPILE_FAILED", [])
    m = tiny_model(seed=5)
    with pytest.warns(UserWarning, match="CppCompileError.*decoding eagerly"):
        got = generate(m, PROMPTS, 8, temperature=0, compiled=True)
    assert torch.equal(got.tokens, generate(m, PROMPTS, 8, temperature=0).tokens) and len(calls) == 1
    generate(m, PROMPTS, 4, temperature=0, compiled=True)
    assert len(calls) == 1

    def buggy(*args):
        raise IndexError("a real bug")
    monkeypatch.setattr(model_mod, "_compiled_decode", lambda: buggy)
    monkeypatch.setattr(model_mod, "_COMPILE_FAILED", [])
    with pytest.raises(IndexError, match="a real bug"):
        generate(m, PROMPTS, 4, temperature=0, compiled=True)


def test_eos_stops_rows_and_pads_the_rest():
    m = tiny_model(seed=4)
    free = generate(m, PROMPTS, 12, temperature=0)
    eos = int(free.tokens[1, 3])                                            # row 1 emits it at step 3 (or before)
    first = {b: next((i for i, t in enumerate(free.tokens[b].tolist()) if t == eos), None) for b in range(4)}
    gen = generate(m, PROMPTS, 12, temperature=0, eos_id=eos, pad_id=0)
    for b in range(4):
        if first[b] is None:
            assert not gen.finished[b] and gen.lengths[b] == gen.tokens.shape[1]
            continue
        n = first[b] + 1
        assert gen.finished[b] and gen.lengths[b] == n
        assert torch.equal(gen.tokens[b, :n], free.tokens[b, :n])          # the EOS itself is kept
        assert (gen.tokens[b, n:] == 0).all() and (gen.logprobs[b, n:] == 0).all()
        assert (gen.logprobs[b, :n] < 0).all()


def test_early_stop_when_every_row_has_finished():
    m = tiny_model(seed=5)
    free = generate(m, [PROMPTS[0]] * 3, 30, temperature=0)
    eos = int(free.tokens[0, 2])
    stop = free.tokens[0].tolist().index(eos) + 1
    gen = generate(m, [PROMPTS[0]] * 3, 30, temperature=0, eos_id=[eos, V - 1])
    assert gen.tokens.shape == (3, stop) and gen.finished.all()             # no step after the last EOS


def test_seed_reproducible_and_truncation_to_one_token_is_greedy():
    """Paper leaves this open: temperature 0 means greedy here, and the draw uses only the given generator (or
    the given uniform numbers), so a seed fixes the tokens."""
    m = tiny_model(seed=6)
    a = generate(m, PROMPTS, 16, temperature=1.0, seed=123)
    b = generate(m, PROMPTS, 16, temperature=1.0, seed=123)
    c = generate(m, PROMPTS, 16, temperature=1.0, seed=124)
    assert torch.equal(a.tokens, b.tokens) and not torch.equal(a.tokens, c.tokens), \
        "the same seed must give the same tokens and another seed other tokens: draw with the generator / uniform"
    greedy = generate(m, PROMPTS, 16, temperature=0)
    assert torch.equal(generate(m, PROMPTS, 16, temperature=1.0, top_k=1, seed=1).tokens, greedy.tokens), \
        "top_k = 1 keeps only the largest logit: sampling must then equal greedy (temperature 0 = argmax)"
    assert torch.equal(generate(m, PROMPTS, 16, temperature=1.0, top_p=1e-6, seed=1).tokens, greedy.tokens), \
        "a tiny top-p keeps only the top token (the nucleus is never empty): sampling must then equal greedy"


def test_truncate_keeps_the_nucleus_and_the_top_k():
    """Top-p keeps the smallest set of most likely tokens whose probability reaches p (R1 §3 samples at 0.95).

    Paper leaves this open: the boundary. Here a token is kept iff the mass of the tokens ranked above it is
    < top_p, so a set reaching exactly p stops there (0.5 + 0.3 at p = 0.8)."""
    logits = torch.log(torch.tensor([[0.5, 0.05, 0.3, 0.15]]))
    assert torch.isfinite(truncate(logits, top_p=0.5)).tolist() == [[True, False, False, False]], \
        "top_p 0.5: the top token alone (0.5) reaches it"
    assert torch.isfinite(truncate(logits, top_p=0.8)).tolist() == [[True, False, True, False]], \
        "top_p 0.8: 0.5 + 0.3 reaches it exactly, so the 0.15 token is cut (mass above it = 0.8 >= top_p)"
    assert torch.isfinite(truncate(logits, top_p=0.81)).tolist() == [[True, False, True, True]], \
        "top_p 0.81: 0.5 + 0.3 falls short, the 0.15 token joins the nucleus"
    assert torch.isfinite(truncate(logits, top_k=2)).tolist() == [[True, False, True, False]], \
        "top_k 2: the two largest logits stay, the rest become -inf"
    torch.testing.assert_close(truncate(logits, top_p=0.8)[0, [0, 2]], logits[0, [0, 2]],
                               msg=lambda m: f"kept logits are returned unchanged (not renormalised)\n{m}")


def test_requests_too_long_and_bad_options_are_refused():
    m = tiny_model()
    with pytest.raises(ValueError, match="max_seq_len"):
        generate(m, [[1] * 50], 15)
    generate(m, [[1] * 50], 14, temperature=0)                              # exactly max_seq_len is fine
    with pytest.raises(ValueError, match="empty"):
        generate(m, [[1, 2], []], 4)
    with pytest.raises(ValueError, match="top_p"):
        generate(m, [[1, 2]], 4, top_p=0.0)
    with pytest.raises(ValueError, match="mode"):
        generate(m, [[1, 2]], 4, attn="flash")


def test_training_mode_restored_and_no_loads_counted():
    m = tiny_model().train()
    generate(m, PROMPTS, 5)
    assert m.training
    assert all(b.ffn.gate.load is None for b in m.layers[1:])               # sampling never feeds the balancer


def test_cli_missing_and_corrupt_checkpoints(tmp_path, capsys):
    from common import run_cli
    rc = run_cli(sample.main, ["--ckpt", str(tmp_path / "nope.pt"), "--prompt", "hi"])
    err = capsys.readouterr().err
    assert rc == 2 and "nope.pt" in err and err.count("\n") == 1, "a missing checkpoint: one error line, status 2"
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a checkpoint" * 10)
    rc = run_cli(sample.main, ["--ckpt", str(bad), "--prompt", "hi"])
    err = capsys.readouterr().err
    assert rc == 2 and "bad.pt" in err and err.count("\n") == 1, "not a checkpoint: one error line, status 2"


def test_cli_streams_one_completion_and_prints_several(tmp_path, capsys):
    from dataclasses import asdict

    import tokenizer
    from checkpoint import save_checkpoint
    tok = tokenizer.get_tokenizer("toy")
    m = tiny_model(vocab_size=tok.vocab_size)
    path = tmp_path / "model.pt"
    save_checkpoint(str(path), {"model": m.state_dict(), "model_args": asdict(m.args), "tokenizer": "toy"})
    ids = tok.encode("12+35=")
    expect = generate(m, [ids], 10, temperature=0, eos_id=tok.eos_id, pad_id=tok.pad_id)
    n = int(expect.lengths[0]) - int(expect.finished[0])
    completion = tok.decode(expect.tokens[0, :n].tolist())

    assert sample.main(["--ckpt", str(path), "--prompt", "12+35=", "--temperature", "0",
                        "--max-new-tokens", "10"]) == 0
    assert capsys.readouterr().out == "12+35=" + completion + "\n"            # streamed, then one newline
    assert sample.main(["--ckpt", str(path), "--prompt", "12+35=", "-n", "2", "--max-new-tokens", "10",
                        "--seed", "0"]) == 0
    out = capsys.readouterr().out
    assert out.count("--- sample ") == 2 and out.count("12+35=") == 2
    from common import run_cli
    assert run_cli(sample.main, ["--ckpt", str(path), "--prompt", "x", "--max-new-tokens", "64"]) == 2   # too long
    assert "max_seq_len" in capsys.readouterr().err
