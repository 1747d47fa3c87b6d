"""hf.py against Hugging Face transformers: tiny random DeepseekV3 / DeepseekV2 models made by transformers import
into minR1 with the same logits; minR1 models export and transformers generates the same greedy tokens as
sample.generate; export -> import is the identity; bad directories fail with one clear line.

    pip install -r requirements-test.txt && python -m pytest -q tests/test_hf.py
"""
import json
import os

import pytest
import torch

import hf
from common import run_cli
from model import ModelArgs, Transformer
from model import main as model_main
from sample import generate

try:
    import transformers
except ImportError as e:     # a test-time dependency, installed with the README's test set-up
    raise ImportError("tests/test_hf.py needs transformers: pip install -r requirements-test.txt") from e

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.usefixtures("one_thread")
TOL = dict(atol=2e-5, rtol=1e-4)   # fp32: the two models sum in different orders


def hf_model(seed=0, v2=False, **over):
    """A tiny random transformers model, every weight (the router bias too) drawn wide enough for peaked logits."""
    base = dict(vocab_size=97, hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=3,
                first_k_dense_replace=1, num_attention_heads=2, num_key_value_heads=2, n_routed_experts=8,
                n_shared_experts=1, num_experts_per_tok=2, kv_lora_rank=16, q_lora_rank=None, qk_nope_head_dim=8,
                qk_rope_head_dim=8, v_head_dim=12, max_position_embeddings=64, routed_scaling_factor=2.5)
    if v2:
        base.update(routed_scaling_factor=1.5, topk_method="greedy")
        cls, conf = transformers.DeepseekV2ForCausalLM, transformers.DeepseekV2Config
    else:
        base.update(n_group=4, topk_group=2, num_mtp_layers=0)
        cls, conf = transformers.DeepseekV3ForCausalLM, transformers.DeepseekV3Config
    base.update(over)
    torch.manual_seed(seed)
    model = cls(conf(**base, attn_implementation="eager")).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.endswith("layernorm.weight") and not name.endswith("norm.weight"):
                p.normal_(0.0, 0.15)
            else:
                p.uniform_(0.5, 1.5)      # norms off 1: a swapped norm would show
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.uniform_(-0.1, 0.1)     # a real bias changes which experts are picked
    return model


def check_import(model, tmp_path):
    model.save_pretrained(tmp_path)
    args, mine = hf.import_hf(str(tmp_path))
    torch.manual_seed(1)
    tokens = torch.randint(0, args.vocab_size, (2, 20))
    with torch.no_grad():
        ref = model(tokens).logits.float()
        got = mine(tokens)
    torch.testing.assert_close(got, ref, **TOL)
    return args, mine


# ---------------------------------------------------------------------------------------- import: same logits
@pytest.mark.parametrize("over", [
    dict(),                                                         # no q_lora, 4 groups of 2, pick 2 groups
    dict(q_lora_rank=12, n_group=2, topk_group=1),                  # q_lora, 2 groups of 4
    dict(n_group=1, topk_group=1, routed_scaling_factor=1.0),       # no groups
    dict(rope_interleave=False, q_lora_rank=12),                    # half-split rope: rows permuted on import
    dict(max_position_embeddings=96, rope_parameters=dict(          # YaRN on, scores at positions past 16
        rope_type="yarn", rope_theta=10000.0, factor=6.0, original_max_position_embeddings=16, beta_fast=32,
        beta_slow=1, mscale=0.8, mscale_all_dim=0.8)),
], ids=["plain", "q_lora-2groups", "nogroups", "halfsplit-rope", "yarn"])
def test_import_v3_same_logits(tmp_path, over):
    args, _ = check_import(hf_model(**over), tmp_path)
    if "rope_parameters" in over:
        assert args.max_seq_len > args.original_seq_len and args.rope_factor == 6.0 and args.mscale == 0.8


def test_import_v2_lite_style_same_logits(tmp_path):
    """DeepseekV2 (softmax routing, greedy top-k, no bias, complex = interleaved rope), YaRN as V2-Lite."""
    args, mine = check_import(hf_model(v2=True, max_position_embeddings=96, rope_parameters=dict(
        rope_type="yarn", rope_theta=10000.0, factor=6.0, original_max_position_embeddings=16, beta_fast=32,
        beta_slow=1, mscale=0.707, mscale_all_dim=0.707)), tmp_path)
    assert args.score_func == "softmax" and args.n_expert_groups == 1
    assert all(not bool(m.ffn.gate.bias.any()) for m in mine.layers[1:])


def test_import_fused_experts_and_shards(tmp_path):
    """transformers 5's in-memory fused experts (gate_up_proj, down_proj) are read too; sharded files as well."""
    from safetensors.torch import save_file
    model = hf_model(seed=3)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    assert "model.layers.1.mlp.experts.gate_up_proj" in sd        # what the module holds in memory
    cfg = model.config.to_dict()
    names = sorted(sd)
    save_file({n: sd[n] for n in names[:20]}, tmp_path / "a.safetensors")
    save_file({n: sd[n] for n in names[20:]}, tmp_path / "b.safetensors")
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {n: "a.safetensors" if i < 20 else "b.safetensors" for i, n in enumerate(names)}}))
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    args, mine = hf.import_hf(str(tmp_path))
    tokens = torch.randint(0, args.vocab_size, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(mine(tokens), model(tokens).logits, **TOL)


# ------------------------------------------------------------------------------ export: same greedy tokens
def toy_args(**over):
    cfg = dict(vocab_size=101, dim=32, inter_dim=64, moe_inter_dim=16, n_layers=3, n_dense_layers=1, n_heads=2,
               n_routed_experts=8, n_shared_experts=1, n_activated_experts=2, n_expert_groups=4, n_limited_groups=2,
               route_scale=2.5, q_lora_rank=0, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8,
               v_head_dim=8, max_seq_len=64)
    cfg.update(over)
    return ModelArgs(**cfg)


def minr1_model(args, seed=0):
    torch.manual_seed(seed)
    m = Transformer(args)
    m.init_weights(0.15)                 # peaked logits: argmax ties are impossible in practice
    with torch.no_grad():
        for g in (b.ffn.gate for b in m.layers[args.n_dense_layers:]):
            g.bias.uniform_(-0.1, 0.1)   # as after update_bias steps
    return m.eval()


@pytest.mark.parametrize("over", [
    dict(),
    dict(q_lora_rank=12, max_seq_len=96, original_seq_len=32, rope_factor=4.0, mscale=0.9),
    # softmax routing is written as DeepseekV2 (greedy top-k, no bias); mscale 0: no YaRN temperature at all
    dict(score_func="softmax", n_expert_groups=1, n_limited_groups=1, route_scale=1.5, max_seq_len=96,
         original_seq_len=32, rope_factor=4.0, mscale=0.0),
], ids=["plain", "q_lora-yarn", "v2-softmax-yarn-mscale0"])
def test_export_generate_same_greedy_tokens(tmp_path, over):
    args = toy_args(**over)
    mine = minr1_model(args)
    if args.score_func == "softmax":
        for layer in mine.layers[args.n_dense_layers:]:
            layer.ffn.gate.bias.zero_()       # V2 has no bias to carry it
        with pytest.raises(hf.HFError, match="V2 has no e_score_correction_bias"):
            hf.to_hf_state_dict(minr1_model(args), args)
    hf.export_hf(mine, args, str(tmp_path), extra={"eos_token_id": None})
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), attn_implementation="eager").eval()
    prompts = [[5, 17, 33, 2, 9, 40, 41], [7, 7, 8]]
    new = 40 if "original_seq_len" in over else 24          # YaRN: past original_seq_len
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == hf._variant(args)
    ours = generate(mine, prompts, new, temperature=0.0)
    for p, row in zip(prompts, ours.tokens):
        out = theirs.generate(torch.tensor([p]), max_new_tokens=new, do_sample=False, eos_token_id=None,
                              pad_token_id=0)
        assert out[0, len(p):].tolist() == row.tolist()
    tokens = torch.randint(0, args.vocab_size, (2, 50))
    with torch.no_grad():
        torch.testing.assert_close(theirs(tokens).logits, mine(tokens), **TOL)


def test_export_import_identity_bitwise_with_mtp_and_shards(tmp_path):
    for args, dtype in ((toy_args(q_lora_rank=12, mtp_depth=1, mtp_lambda=0.5, seq_aux_alpha=0.01), torch.float32),
                        (toy_args(max_seq_len=96, original_seq_len=32, rope_factor=4.0), torch.bfloat16)):
        m = minr1_model(args)
        sd = {k: v.to(dtype) if k.endswith(("w1", "w2", "w3", "weight")) else v for k, v in m.state_dict().items()}
        d = tmp_path / str(dtype)
        hf.export_hf(sd, args, str(d), max_shard_bytes=20_000)
        assert os.path.isfile(d / "model.safetensors.index.json")
        assert len([f for f in os.listdir(d) if f.endswith(".safetensors")]) > 2
        cfg, hsd = hf.read_hf(str(d))
        args2, sd2 = hf.from_hf_state_dict(hsd, cfg)
        assert args2 == args
        assert sd2.keys() == sd.keys()
        for k in sd:
            assert sd2[k].dtype == sd[k].dtype and torch.equal(sd2[k], sd[k]), k
    # the MTP layer is written as DeepSeek's checkpoints hold it: layer L, eh_proj halves [emb ; h], shared copies
    assert "model.layers.3.shared_head.head.weight" in hf.to_hf_state_dict(minr1_model(toy_args(mtp_depth=1)),
                                                                          toy_args(mtp_depth=1))


@pytest.mark.parametrize("over", [dict(q_lora_rank=12, mtp_depth=1), dict(n_shared_experts=0, n_dense_layers=3),
                                  dict(n_shared_experts=2, n_dense_layers=0)])
def test_expected_shapes_are_the_models(over):
    args = toy_args(**over)
    assert hf._expected_shapes(args) == {k: tuple(v.shape) for k, v in Transformer(args).state_dict().items()}


def test_half_split_export_roundtrip_of_permutation():
    """The rope permutation used for rope_interleave=false files and its inverse are each other's inverse."""
    args = toy_args(q_lora_rank=12)
    perm = hf._rope_rows(8)
    w = torch.randn(2 * 16, 12)
    inv = torch.argsort(perm)
    assert torch.equal(hf._permute_q(hf._permute_q(w, args, perm), args, inv), w)
    assert perm.tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


# ---------------------------------------------------------------------------------------------- the CLI
def test_cli_export_shipped_bf16_checkpoint_and_import_back(tmp_path):
    """docs/toy_run/zero/model.pt (bf16) -> HF dir -> model.pt: same tensors, dtype kept; sample.py's loader reads it,
    with the stage and tokenizer recorded."""
    src = os.path.join(ROOT, "docs", "toy_run", "zero", "model.pt")
    d, out = tmp_path / "hf", tmp_path / "back" / "model.pt"
    assert run_cli(model_main, ["--export-hf", src, "--out", str(d)]) == 0
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["model_type"] == "deepseek_v3" and cfg["minr1"]["stage"] == "zero" and cfg["torch_dtype"] == "bfloat16"
    assert run_cli(model_main, ["--import-hf", str(d), "--out", str(out)]) == 0
    a, b = torch.load(src, weights_only=True), torch.load(out, weights_only=True)
    assert ModelArgs(**a["model_args"]) == ModelArgs(**b["model_args"])
    assert b["stage"] == "zero" and b["tokenizer"] == a["tokenizer"]
    assert all(torch.equal(a["model"][k], b["model"][k]) and a["model"][k].dtype == b["model"][k].dtype
               for k in a["model"]) and a["model"].keys() == b["model"].keys()
    import sample
    model, ckpt, tok = sample.load_model(str(out))
    assert tok == "toy" and model.args == ModelArgs(**a["model_args"])


# ---------------------------------------------------------------------------------------------- errors
def test_clear_errors(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="no Hugging Face checkpoint directory"):
        hf.import_hf(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        hf.import_hf(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="neither model.safetensors nor model.safetensors.index.json .found "
                                                "pytorch_model.bin: only safetensors files are read"):
        hf.import_hf(str(tmp_path))
    args = toy_args()
    d = tmp_path / "m"
    hf.export_hf(minr1_model(args), args, str(d), max_shard_bytes=20_000)
    cfg = json.loads((d / "config.json").read_text())
    index = json.loads((d / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[1]
    os.rename(d / shard, d / "away")
    with pytest.raises(FileNotFoundError, match=f"shard .*{shard} listed in"):
        hf.import_hf(str(d))
    os.rename(d / "away", d / shard)
    for change, pattern in (
            (dict(kv_lora_rank=20), r"tensor model.layers.0.self_attn.kv_a_proj_with_mqa.weight has shape \(24, 32\), "
                                    r"expected \(28, 32\)"),
            (dict(n_routed_experts=16), r"tensor model.layers.1.mlp.gate.weight has shape \(8, 32\), expected "
                                        r"\(16, 32\)"),
            (dict(num_hidden_layers=2), r"unsupported tensors minR1 has no place for: model.layers.2"),
            (dict(quantization_config={"quant_method": "fp8"}), "FP8 release.*dequantize"),
            (dict(rope_parameters={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
                                   "mscale": 1.0, "mscale_all_dim": 0.5}), "attention_factor"),
            (dict(model_type="llama"), "model_type 'llama' is not supported"),
            (dict(hidden_act="gelu"), "hidden_act='gelu'")):
        (d / "config.json").write_text(json.dumps({**cfg, **change}))
        with pytest.raises(hf.HFError, match=pattern):
            hf.import_hf(str(d))
    (d / "config.json").write_text(json.dumps(cfg))
    _, sd = hf.read_hf(str(d))
    with pytest.raises(hf.HFError, match="missing tensor model.layers.2.mlp.experts.5.up_proj.weight"):
        hf.from_hf_state_dict({k: v for k, v in sd.items() if k != "model.layers.2.mlp.experts.5.up_proj.weight"}, cfg)
    with pytest.raises(hf.HFError, match="weight_scale_inv"):
        hf.from_hf_state_dict({**sd, "model.layers.0.self_attn.q_proj.weight_scale_inv": torch.ones(1)}, cfg)
    with pytest.raises(hf.HFError, match="FP8 weights"):
        hf.from_hf_state_dict({**sd, "model.norm.weight": sd["model.norm.weight"].to(torch.float8_e4m3fn)}, cfg)
    assert run_cli(model_main, ["--import-hf", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.pt")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: no Hugging Face checkpoint directory at {tmp_path / 'nowhere'}"]
    assert run_cli(model_main, ["--import-hf", str(d), "--out", str(tmp_path / "x.pt"), "--config", "toy",
                                "--export-hf", "y"]) == 2


# ------------------------------------------------------------------------------------ a stage from --init
def test_zero_stage_starts_from_an_imported_hf_checkpoint(tmp_path):
    """--stage zero --init DIR on the micro config: the stage trains the HF directory's model (its own shape, not the
    config's), builds no pretrain stage, and records where the weights came from."""
    import tokenizer
    import train_pipeline as tp
    micro = os.path.join(ROOT, "configs", "micro.json")
    args = toy_args(vocab_size=tokenizer.get_tokenizer("toy").vocab_size, dim=24, q_lora_rank=12, max_seq_len=256,
                    n_layers=2)
    start = minr1_model(args)
    hf.export_hf(start, args, str(tmp_path / "hf"))
    tp.main(["--stage", "zero", "--config", micro, "--name", "t", "--runs_dir", str(tmp_path / "runs"),
             "--init", str(tmp_path / "hf"), "--zero.steps", "1", "--eval.n_per_set", "1"])
    d = tmp_path / "runs" / "t"
    ck = torch.load(d / "zero" / "model.pt", weights_only=True)
    assert ModelArgs(**ck["model_args"]) == args and not (d / "pretrain").exists()
    assert json.loads((d / "zero" / "config.json").read_text())["init"] == str(tmp_path / "hf")
    moved = [k for k, v in start.state_dict().items() if not torch.equal(v, ck["model"][k])]
    assert moved, "GRPO steps changed no weight"
    # the stage's own checkpoint (fp32, with its optimizer state) exports, its stage recorded for sample.py
    assert run_cli(model_main, ["--export-hf", str(d / "zero" / "model.pt"), "--out", str(tmp_path / "out")]) == 0
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["minr1"]["stage"] == "zero" and cfg["minr1"]["tokenizer"] == "toy"
    assert cfg["eos_token_id"] == tokenizer.get_tokenizer("toy").eos_id
    _, back = hf.from_hf_state_dict(hf.read_hf(str(tmp_path / "out"))[1], cfg)
    assert all(torch.equal(back[k], ck["model"][k]) for k in back)
    with pytest.raises(SystemExit, match="--init applies to one stage"):
        tp.main(["--stage", "pretrain", "--config", micro, "--runs_dir", str(tmp_path / "runs"), "--init",
                 str(tmp_path / "hf")])


def test_fused_state_dict_loads_into_transformers_modules():
    """to_hf_state_dict(..., fused=True) is what transformers' modules hold in memory: load_state_dict(strict) takes
    it, with the same logits (bench/compare.py's way to give both models the same weights)."""
    args = toy_args(q_lora_rank=12, mtp_depth=1)
    mine = minr1_model(args)
    theirs = transformers.DeepseekV3ForCausalLM(transformers.DeepseekV3Config.from_dict(
        hf.hf_config(args), attn_implementation="eager")).eval()
    theirs.load_state_dict(hf.to_hf_state_dict(mine, args, fused=True), strict=True)
    tokens = torch.randint(0, args.vocab_size, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(theirs(tokens).logits, mine(tokens), **TOL)
