"""Hugging Face checkpoints in and out: the DeepseekV3 (and DeepseekV2) layout of config.json + safetensors shards.

    python model.py --import-hf DIR --out model.pt [--tokenizer NAME] [--no-mtp]   # HF directory -> minR1 model.pt
    python model.py --export-hf runs/toy/zero/model.pt --out DIR [--max-shard-mb 4000] # minR1 model.pt -> HF directory
    python train_pipeline.py --stage zero --config micro --init DIR              # a stage starting from either

The model is the same network in both (V3 §2): only names, a few transposes and the RoPE column order differ.
safetensors is the file format; transformers itself is never imported here (tests/test_hf.py holds both models
side by side). Names below are minR1 -> HF, with `L` = n_layers and the HF prefix `model.layers.{i}.` written `.`:

  embed.weight                     model.embed_tokens.weight
  head.weight                      lm_head.weight                          (never tied, as in V3)
  norm.weight                      model.norm.weight
  layers.{i}.attn_norm / ffn_norm  .input_layernorm / .post_attention_layernorm
  attn.wq                          .self_attn.q_proj                       (q_lora_rank = 0; rope rows: see below)
  attn.wq_a / q_norm / wq_b        .self_attn.q_a_proj / q_a_layernorm / q_b_proj   (q_lora_rank > 0)
  attn.wkv_a / kv_norm / wkv_b     .self_attn.kv_a_proj_with_mqa / kv_a_layernorm / kv_b_proj
  attn.wo                          .self_attn.o_proj
  ffn.w1 / w3 / w2 (dense blocks)  .mlp.gate_proj / up_proj / down_proj
  ffn.gate.weight                  .mlp.gate.weight
  ffn.gate.bias  (V3 eq. 16's b)   .mlp.gate.e_score_correction_bias       (V2 has none: must be 0 to export as V2)
  ffn.w1[e] (D, I), w3[e], w2[e]   .mlp.experts.{e}.gate_proj.weight = w1[e].T (I, D), up_proj = w3[e].T,
                                   down_proj = w2[e].T (D, I)                (per expert: what save_pretrained writes)
                                   or fused .mlp.experts.gate_up_proj (E, 2I, D) = [w1^T ; w3^T], .down_proj (E, D, I)
                                   (transformers 5's in-memory layout; accepted on import, never written)
  ffn.shared_experts.w1 / w3 / w2  .mlp.shared_experts.gate_proj / up_proj / down_proj
  mtp.hnorm / enorm                model.layers.{L}.hnorm / enorm           (the MTP module, V3 §2.2, as DeepSeek's
  mtp.eh_proj [h ; emb] columns    model.layers.{L}.eh_proj [emb ; h]        hub checkpoints store it: layer L,
  mtp.norm                         model.layers.{L}.shared_head.norm         its input halves swapped, and copies
  mtp.block.*                      model.layers.{L}.*  (as a layer above)    of the shared embedding and head)
  (embed, head: shared)            model.layers.{L}.embed_tokens, .shared_head.head   (must equal the main ones)
transformers builds no MTP module (it reports layer L's tensors as unexpected and ignores them); the MTP layout
above follows the engines that run DeepSeek's files (vLLM's deepseek_mtp loader: eh_proj(cat[enorm(emb),
hnorm(h)])) and is checked here only by export -> import, not against a reference implementation.

RoPE layout. minR1 rotates the pairs (x[2j], x[2j+1]) of q_pe and k_pe by angle pos * freq_j (kernels.apply_rope,
interleaved, as DeepSeek's own inference code). transformers' DeepseekV3 with "rope_interleave": true (the
default, and DeepSeek's checkpoints) rotates the same pairs (it de-interleaves q and k alike on the way, which
leaves every score q.k unchanged), and DeepseekV2 rotates them as complex numbers (x[2j] + i x[2j+1]): both map
one to one. With "rope_interleave": false HF rotates (x[j], x[j + R/2]) (rotate_half), so on import the R rope
rows of each head of q_proj / q_b_proj and the R k_pe rows of kv_a_proj_with_mqa are reordered to
[0, R/2, 1, R/2 + 1, ...]. Export always writes the interleaved layout ("rope_interleave": true).

YaRN (V3 §4.3): minR1 extends the context when max_seq_len > original_seq_len and multiplies the softmax scale by
(0.1 mscale ln s + 1)^2; HF's rope_parameters {"rope_type": "yarn", factor = s, original_max_position_embeddings,
beta_fast, beta_slow, mscale, mscale_all_dim} give the same frequencies, the same softmax factor from mscale_all_dim,
and scale cos/sin by mscale(s, mscale) / mscale(s, mscale_all_dim), which is 1 only when the two are equal: other
YaRN settings (and linear, dynamic, llama3, longrope RoPE) are refused, not approximated.

Not handled: FP8 checkpoints (DeepSeek-V3's release stores weights in float8 with `weight_scale_inv` blocks): they
are refused; dequantize them to bf16 first. DeepseekV2 routing by "group_limited_greedy" (groups scored by their
best expert; minR1 scores a group by its top-2 sum, V3's rule) is refused; V2 "greedy" (V2-Lite) is supported.
config.json keeps the minR1 fields HF has no place for (mtp_lambda, bias_update_speed, seq_aux_alpha, unused
YaRN fields, the tokenizer name, the stage) under "minr1", so export -> import gives back the same ModelArgs.
"""
import json
import math
import os
import re
from dataclasses import asdict, fields

import torch
import torch.nn as nn

from common import CheckpointError
from model import ModelArgs, Transformer

CONFIG, INDEX, SINGLE = "config.json", "model.safetensors.index.json", "model.safetensors"
RMS_EPS = 1e-6               # model.RMSNorm's epsilon (fixed in minR1)
# ModelArgs fields that shape no weight but how the model trains: --init takes them from the run's config
TRAINING_KNOBS = ("mtp_lambda", "bias_update_speed", "seq_aux_alpha", "activation_checkpointing")


class HFError(CheckpointError):
    """A Hugging Face checkpoint minR1 cannot read exactly (or a model it cannot write): the message says why
    (common.run_cli prints it as one "error: ..." line)."""


# ------------------------------------------------------------------------------------------------------ config
def _variant(args: ModelArgs) -> str:
    """V3 routes by sigmoid scores (with the bias b), V2 by softmax scores (without)."""
    return "deepseek_v3" if args.score_func == "sigmoid" else "deepseek_v2"


def _rope_parameters(args: ModelArgs) -> dict:
    if args.max_seq_len <= args.original_seq_len:            # minR1 uses plain RoPE
        return {"rope_type": "default", "rope_theta": args.rope_theta}
    rp = {"rope_type": "yarn", "rope_theta": args.rope_theta, "factor": args.rope_factor,
          "original_max_position_embeddings": args.original_seq_len, "beta_fast": args.beta_fast,
          "beta_slow": args.beta_slow, "mscale": args.mscale, "mscale_all_dim": args.mscale}
    if not args.mscale:      # HF reads mscale = 0 as "not given" and would scale cos/sin: say 1 outright
        rp["attention_factor"] = 1.0
    return rp


def hf_config(args: ModelArgs) -> dict:
    """The config.json of `args`: DeepseekV3 for sigmoid routing, DeepseekV2 for softmax routing."""
    variant = _variant(args)
    groups = max(args.n_expert_groups, 1)
    moe = args.n_dense_layers < args.n_layers or args.mtp_depth
    if variant == "deepseek_v3" and moe and groups > 1 and args.n_routed_experts // groups < 2:
        raise HFError(f"cannot export: n_expert_groups={groups} leaves one expert per group, and HF's DeepseekV3 "
                      f"scores a group by its top-2 experts")
    if variant == "deepseek_v2" and moe and groups > 1:
        raise HFError(f"cannot export a softmax-routed model with n_expert_groups={groups} as DeepseekV2: its "
                      f"group_limited_greedy scores a group by its best expert, minR1 by its top-2 sum")
    cfg = {
        "architectures": ["DeepseekV3ForCausalLM" if variant == "deepseek_v3" else "DeepseekV2ForCausalLM"],
        "model_type": variant,
        "vocab_size": args.vocab_size,
        "hidden_size": args.dim,
        "intermediate_size": args.inter_dim,
        "moe_intermediate_size": args.moe_inter_dim,
        "num_hidden_layers": args.n_layers,
        "first_k_dense_replace": args.n_dense_layers,
        "num_attention_heads": args.n_heads,
        "num_key_value_heads": args.n_heads,
        "n_routed_experts": args.n_routed_experts,
        "n_shared_experts": args.n_shared_experts,
        "num_experts_per_tok": args.n_activated_experts,
        "n_group": groups,
        "topk_group": args.n_limited_groups if groups > 1 else 1,
        "routed_scaling_factor": args.route_scale,
        "q_lora_rank": args.q_lora_rank or None,
        "kv_lora_rank": args.kv_lora_rank,
        "qk_nope_head_dim": args.qk_nope_head_dim,
        "qk_rope_head_dim": args.qk_rope_head_dim,
        "v_head_dim": args.v_head_dim,
        "max_position_embeddings": args.max_seq_len,
        "rope_parameters": _rope_parameters(args),
        "hidden_act": "silu",
        "rms_norm_eps": RMS_EPS,
        "attention_bias": False,
        "tie_word_embeddings": False,
    }
    if variant == "deepseek_v3":
        cfg.update(norm_topk_prob=True, rope_interleave=True, scoring_func="sigmoid", topk_method="noaux_tc",
                   num_nextn_predict_layers=args.mtp_depth)
    else:
        cfg.update(norm_topk_prob=False, scoring_func="softmax", topk_method="greedy", mlp_bias=False)
        if args.mtp_depth:
            raise HFError("cannot export MTP weights in the DeepseekV2 layout (V2 has no MTP module)")
    cfg["minr1"] = {"model_args": asdict(args)}
    return cfg


def _get(cfg: dict, key: str, default=None, *, need=False):
    if key not in cfg or cfg[key] is None:
        if need:
            raise HFError(f"config.json: missing '{key}'")
        return default
    return cfg[key]


def _yarn_mscale(scale: float, mscale: float) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _rope_args(cfg: dict, extras: dict) -> dict:
    """max_seq_len, rope_theta and YaRN fields of ModelArgs from config.json's rope_parameters (transformers 5) or
    rope_scaling + rope_theta (transformers 4 and DeepSeek's own files)."""
    rp = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    theta = float(rp.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    kind = rp.get("rope_type", rp.get("type", "default")) or "default"
    max_pos = int(_get(cfg, "max_position_embeddings", need=True))
    out = {"max_seq_len": max_pos, "rope_theta": theta}
    if kind == "default":
        # plain RoPE: minR1 switches YaRN off by original_seq_len >= max_seq_len
        out["original_seq_len"] = max(int(extras.get("original_seq_len", 4096)), max_pos)
        return out
    if kind != "yarn":
        raise HFError(f"config.json: rope type '{kind}' is not supported (minR1 has plain RoPE and YaRN only)")
    orig = int(_get(rp, "original_max_position_embeddings", need=True))
    factor = float(rp.get("factor") or max_pos / orig)
    if max_pos <= orig:
        raise HFError(f"config.json: YaRN with max_position_embeddings={max_pos} <= original_max_position_embeddings="
                      f"{orig}; minR1 switches YaRN on only when the context is extended (max_seq_len > "
                      f"original_seq_len)")
    if factor < 1:
        raise HFError(f"config.json: YaRN factor {factor} < 1 is not supported")
    if rp.get("truncate", True) is False:
        raise HFError("config.json: YaRN with truncate=false is not supported (minR1 rounds the ramp's ends)")
    mscale, all_dim, att = rp.get("mscale"), rp.get("mscale_all_dim") or 0.0, rp.get("attention_factor")
    if att is None:   # HF's rule (modeling_rope_utils._compute_yarn_parameters)
        att = _yarn_mscale(factor, mscale) / _yarn_mscale(factor, all_dim) if mscale and all_dim \
            else _yarn_mscale(factor, 1.0)
    if abs(att - 1.0) > 1e-9:
        raise HFError(f"config.json: YaRN attention_factor {att:.6g} (from mscale={mscale}, mscale_all_dim="
                      f"{all_dim}) scales cos/sin, i.e. only the RoPE part of the scores; minR1 (as V3) scales the "
                      f"whole softmax by mscale_all_dim only, which needs mscale == mscale_all_dim")
    out.update(original_seq_len=orig, rope_factor=factor, beta_fast=int(rp.get("beta_fast") or 32),
               beta_slow=int(rp.get("beta_slow") or 1), mscale=float(all_dim))
    return out


def args_from_hf(cfg: dict, mtp_depth: int | None = None) -> ModelArgs:
    """ModelArgs of a DeepseekV3 / DeepseekV2 config.json dict; anything minR1 would compute differently -> HFError.
    mtp_depth: override the config's num_nextn_predict_layers (the importer sets it from the weights present)."""
    mt = cfg.get("model_type")
    if mt not in ("deepseek_v3", "deepseek_v2"):
        raise HFError(f"config.json: model_type {mt!r} is not supported (deepseek_v3 or deepseek_v2)")
    if cfg.get("quantization_config"):
        q = cfg["quantization_config"]
        raise HFError(f"config.json: a quantized checkpoint ({q.get('quant_method', q) if isinstance(q, dict) else q}"
                      f"), e.g. DeepSeek-V3's FP8 release, is not supported: dequantize it to bf16 first")
    v3 = mt == "deepseek_v3"
    extras = dict((cfg.get("minr1") or {}).get("model_args") or {})
    for key, want in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False)):
        if cfg.get(key, want) != want:
            raise HFError(f"config.json: {key}={cfg[key]!r} is not supported (minR1 has {want!r})")
    if abs(float(cfg.get("rms_norm_eps", RMS_EPS)) - RMS_EPS) > 1e-12:
        raise HFError(f"config.json: rms_norm_eps={cfg['rms_norm_eps']} is not supported (minR1's RMSNorm uses "
                      f"{RMS_EPS})")
    if int(cfg.get("moe_layer_freq", 1)) != 1:
        raise HFError(f"config.json: moe_layer_freq={cfg['moe_layer_freq']} is not supported (every layer after "
                      f"first_k_dense_replace is MoE in minR1)")
    score = cfg.get("scoring_func", "sigmoid" if v3 else "softmax")
    if score != ("sigmoid" if v3 else "softmax"):
        raise HFError(f"config.json: scoring_func={score!r} with model_type {mt} is not supported (transformers' "
                      f"{mt} routes by {'sigmoid' if v3 else 'softmax'} scores)")
    groups = int(cfg.get("n_group") or 1)
    limited = int(cfg.get("topk_group") or 1)
    if v3:
        if cfg.get("norm_topk_prob", True) is not True:
            raise HFError("config.json: norm_topk_prob=false is not supported for DeepseekV3 (minR1 renormalises "
                          "the sigmoid weights, V3 eq. 13)")
        if cfg.get("topk_method", "noaux_tc") != "noaux_tc":
            raise HFError(f"config.json: topk_method={cfg['topk_method']!r} is not supported for DeepseekV3")
    else:
        method = cfg.get("topk_method", "greedy")
        if method == "group_limited_greedy" and (groups > 1 and limited < groups):
            raise HFError(f"config.json: DeepseekV2 topk_method 'group_limited_greedy' (n_group={groups}) scores a "
                          f"group by its best expert; minR1 scores it by its top-2 sum (V3): not supported")
        if method not in ("greedy", "group_limited_greedy"):
            raise HFError(f"config.json: topk_method={method!r} is not supported")
        groups = limited = 1                 # greedy: no groups
    if cfg.get("tie_word_embeddings"):
        print("note: config.json ties the head to the embedding; minR1 keeps an untied copy (V3 does not tie)")
    n_layers = int(_get(cfg, "num_hidden_layers", need=True))
    mtp = int(cfg.get("num_nextn_predict_layers", 0) or 0) if mtp_depth is None else mtp_depth
    q_lora = cfg.get("q_lora_rank") or 0
    kw = dict(
        vocab_size=int(_get(cfg, "vocab_size", need=True)), dim=int(_get(cfg, "hidden_size", need=True)),
        inter_dim=int(_get(cfg, "intermediate_size", need=True)),
        moe_inter_dim=int(_get(cfg, "moe_intermediate_size", need=True)), n_layers=n_layers,
        n_dense_layers=min(int(cfg.get("first_k_dense_replace", 0) or 0), n_layers),
        n_heads=int(_get(cfg, "num_attention_heads", need=True)),
        n_routed_experts=int(cfg.get("n_routed_experts") or 0), n_shared_experts=int(cfg.get("n_shared_experts") or 0),
        n_activated_experts=int(cfg.get("num_experts_per_tok") or 1), n_expert_groups=groups,
        n_limited_groups=limited, score_func=score, route_scale=float(cfg.get("routed_scaling_factor", 1.0)),
        q_lora_rank=int(q_lora), kv_lora_rank=int(_get(cfg, "kv_lora_rank", need=True)),
        qk_nope_head_dim=int(_get(cfg, "qk_nope_head_dim", need=True)),
        qk_rope_head_dim=int(_get(cfg, "qk_rope_head_dim", need=True)),
        v_head_dim=int(_get(cfg, "v_head_dim", need=True)), mtp_depth=mtp, **_rope_args(cfg, extras))
    if mtp > 1:
        raise HFError(f"config.json: num_nextn_predict_layers={mtp}; minR1 has MTP depth 0 or 1 "
                      f"(pass --no-mtp to import without the MTP layers)")
    known = {f.name for f in fields(ModelArgs)}
    for k, v in extras.items():   # minR1's own fields, kept by our exporter: only those HF does not determine
        if k in known and k not in kw:
            kw[k] = v
    try:
        return ModelArgs(**kw)
    except ValueError as e:
        raise HFError(f"config.json: {e}") from None


# ------------------------------------------------------------------------------------------------- state dicts
def _rope_rows(R: int):
    """perm with minR1_rows = hf_rows[perm] for half-split (rotate_half) rope rows: [0, R/2, 1, R/2 + 1, ...]."""
    h = R // 2
    return torch.stack([torch.arange(h), torch.arange(h) + h], dim=-1).flatten()


def _permute_q(w, args: ModelArgs, perm):
    """Reorder the rope rows of every head of a q projection (H * (N + R), in)."""
    N, R = args.qk_nope_head_dim, args.qk_rope_head_dim
    w = w.view(args.n_heads, N + R, -1)
    return torch.cat([w[:, :N], w[:, N:][:, perm]], dim=1).flatten(0, 1)


def _permute_kv_a(w, args: ModelArgs, perm):
    """Reorder the k_pe rows (the last R) of kv_a_proj_with_mqa (C + R, D)."""
    C = args.kv_lora_rank
    return torch.cat([w[:C], w[C:][perm]], dim=0)


def _block_pairs(m: str, h: str, args: ModelArgs, moe: bool) -> list:
    """(minR1 name, HF name) of a block's tensors other than the routed experts."""
    a = [("attn_norm.weight", "input_layernorm.weight"), ("ffn_norm.weight", "post_attention_layernorm.weight"),
         ("attn.wkv_a.weight", "self_attn.kv_a_proj_with_mqa.weight"),
         ("attn.kv_norm.weight", "self_attn.kv_a_layernorm.weight"),
         ("attn.wkv_b.weight", "self_attn.kv_b_proj.weight"), ("attn.wo.weight", "self_attn.o_proj.weight")]
    if args.q_lora_rank:
        a += [("attn.wq_a.weight", "self_attn.q_a_proj.weight"),
              ("attn.q_norm.weight", "self_attn.q_a_layernorm.weight"),
              ("attn.wq_b.weight", "self_attn.q_b_proj.weight")]
    else:
        a += [("attn.wq.weight", "self_attn.q_proj.weight")]
    ffn = [("w1", "gate_proj"), ("w3", "up_proj"), ("w2", "down_proj")]
    if moe:
        a += [("ffn.gate.weight", "mlp.gate.weight")]
        if args.n_shared_experts:
            a += [(f"ffn.shared_experts.{x}.weight", f"mlp.shared_experts.{y}.weight") for x, y in ffn]
    else:
        a += [(f"ffn.{x}.weight", f"mlp.{y}.weight") for x, y in ffn]
    return [(m + x, h + y) for x, y in a]


def _blocks(args: ModelArgs):
    """(minR1 prefix, HF prefix, is MoE) of every block, the MTP block last."""
    out = [(f"layers.{i}.", f"model.layers.{i}.", i >= args.n_dense_layers) for i in range(args.n_layers)]
    if args.mtp_depth:
        out.append(("mtp.block.", f"model.layers.{args.n_layers}.", True))
    return out


def _top_pairs(args: ModelArgs) -> list:
    a = [("embed.weight", "model.embed_tokens.weight"), ("norm.weight", "model.norm.weight"),
         ("head.weight", "lm_head.weight")]
    if args.mtp_depth:
        L = f"model.layers.{args.n_layers}."
        a += [("mtp.hnorm.weight", L + "hnorm.weight"), ("mtp.enorm.weight", L + "enorm.weight"),
              ("mtp.norm.weight", L + "shared_head.norm.weight")]   # eh_proj: its halves swap (below)
    return a


def _swap_halves(w):
    """eh_proj (D, 2D): minR1 [h ; emb] columns (V3 eq. 21) <-> DeepSeek's checkpoints [emb ; h]."""
    D = w.shape[1] // 2
    return torch.cat([w[:, D:], w[:, :D]], dim=1)


def to_hf_state_dict(model_or_state_dict, args: ModelArgs, fused: bool = False) -> dict:
    """minR1 weights (a Transformer, a wrapped one, or its state dict) -> HF tensors (per-expert, interleaved rope),
    as files hold them. Tensors keep their dtype; every one is its own contiguous copy (safetensors refuses shared
    storage). fused: the tensors of transformers' in-memory modules instead, for hf_model.load_state_dict(...):
    experts fused (gate_up_proj, down_proj) and no MTP layer (transformers builds none)."""
    sd = model_or_state_dict
    if isinstance(sd, nn.Module):
        from common import unwrap
        sd = unwrap(sd).state_dict()
    from checkpoint import unwrapped_state_dict
    sd = unwrapped_state_dict(dict(sd))
    out = {}

    def put(h, t):
        out[h] = t.detach().clone().contiguous()

    def take(m):
        if m not in sd:
            raise HFError(f"the minR1 state dict has no '{m}' (does it belong to these ModelArgs?)")
        return sd[m]
    for m, h in _top_pairs(args):
        put(h, take(m))
    for m, h, moe in _blocks(args):
        for mm, hh in _block_pairs(m, h, args, moe):
            put(hh, take(mm))
        if moe:
            b = take(m + "ffn.gate.bias")
            if args.score_func == "sigmoid":
                put(h + "mlp.gate.e_score_correction_bias", b)
            elif bool((b != 0).any()):
                raise HFError(f"cannot export {m}ffn.gate.bias as DeepseekV2: it is not zero and V2 has no "
                              f"e_score_correction_bias (softmax routing without the V3 bias)")
            w1, w3, w2 = take(m + "ffn.w1"), take(m + "ffn.w3"), take(m + "ffn.w2")
            if fused:
                put(h + "mlp.experts.gate_up_proj", torch.cat([w1, w3], dim=2).transpose(1, 2))   # (E, 2I, D)
                put(h + "mlp.experts.down_proj", w2.transpose(1, 2))                              # (E, D, I)
                continue
            for e in range(w1.shape[0]):
                put(f"{h}mlp.experts.{e}.gate_proj.weight", w1[e].t())
                put(f"{h}mlp.experts.{e}.up_proj.weight", w3[e].t())
                put(f"{h}mlp.experts.{e}.down_proj.weight", w2[e].t())
    if args.mtp_depth:
        L = f"model.layers.{args.n_layers}."
        put(L + "eh_proj.weight", _swap_halves(take("mtp.eh_proj.weight")))
        put(L + "embed_tokens.weight", take("embed.weight"))        # DeepSeek's files repeat the shared tensors
        put(L + "shared_head.head.weight", take("head.weight"))
    extra = sorted(set(sd) - _minr1_names(args))
    if extra:
        raise HFError(f"the minR1 state dict has tensors these ModelArgs do not describe: {', '.join(extra[:5])}")
    if fused and args.mtp_depth:
        out = {k: v for k, v in out.items() if not k.startswith(f"model.layers.{args.n_layers}.")}
    return out


def _minr1_names(args):
    return set(_expected_shapes(args))


def _expected_shapes(args: ModelArgs) -> dict:
    """{name: shape} of Transformer(args).state_dict(), from the shapes alone (model.py builds them; building the
    model on the meta device would say the same but costs seconds the first time: its random init loads torch's
    meta kernels). tests/test_hf.py checks the two agree."""
    D, H, E, I = args.dim, args.n_heads, args.n_routed_experts, args.moe_inter_dim
    N, R, V, C = args.qk_nope_head_dim, args.qk_rope_head_dim, args.v_head_dim, args.kv_lora_rank
    out = {"embed.weight": (args.vocab_size, D), "norm.weight": (D,), "head.weight": (args.vocab_size, D)}
    for m, _, moe in _blocks(args):
        a = {"attn_norm.weight": (D,), "ffn_norm.weight": (D,), "attn.wkv_a.weight": (C + R, D),
             "attn.kv_norm.weight": (C,), "attn.wkv_b.weight": (H * (N + V), C), "attn.wo.weight": (D, H * V)}
        if args.q_lora_rank:
            a.update({"attn.wq_a.weight": (args.q_lora_rank, D), "attn.q_norm.weight": (args.q_lora_rank,),
                      "attn.wq_b.weight": (H * (N + R), args.q_lora_rank)})
        else:
            a["attn.wq.weight"] = (H * (N + R), D)
        if moe:
            a.update({"ffn.gate.weight": (E, D), "ffn.gate.bias": (E,), "ffn.w1": (E, D, I), "ffn.w3": (E, D, I),
                      "ffn.w2": (E, I, D)})
            if args.n_shared_experts:
                S = args.n_shared_experts * I
                a.update({"ffn.shared_experts.w1.weight": (S, D), "ffn.shared_experts.w3.weight": (S, D),
                          "ffn.shared_experts.w2.weight": (D, S)})
        else:
            a.update({"ffn.w1.weight": (args.inter_dim, D), "ffn.w3.weight": (args.inter_dim, D),
                      "ffn.w2.weight": (D, args.inter_dim)})
        out.update({m + k: v for k, v in a.items()})
    if args.mtp_depth:
        out.update({"mtp.hnorm.weight": (D,), "mtp.enorm.weight": (D,), "mtp.eh_proj.weight": (D, 2 * D),
                    "mtp.norm.weight": (D,)})
    return out


def from_hf_state_dict(sd: dict, hf_cfg: dict, *, skip_mtp: bool = False):
    """HF tensors + config.json dict -> (ModelArgs, minR1 state dict). The tensors keep their dtype. The MTP layer
    (model.layers.{L}.*) becomes minR1's mtp module; skip_mtp drops it instead (and says so). Missing tensors,
    tensors minR1 has no place for, and shape mismatches raise HFError naming the tensor."""
    sd = dict(sd)
    fp8 = [k for k in sd if k.endswith("weight_scale_inv")] or \
          [k for k, v in sd.items() if v.dtype in (getattr(torch, "float8_e4m3fn", None),
                                                   getattr(torch, "float8_e5m2", None))]
    if fp8:
        raise HFError(f"FP8 weights ({fp8[0]}, ...): DeepSeek-V3's FP8 release (weights in float8 with "
                      f"weight_scale_inv block scales) is not supported; dequantize it to bf16 first")
    for k in [k for k in sd if k.endswith("rotary_emb.inv_freq")]:
        del sd[k]                                     # old files saved the RoPE table: rebuilt from the config
    n_layers = int(_get(hf_cfg, "num_hidden_layers", need=True))
    announced = int(hf_cfg.get("num_nextn_predict_layers", 0) or 0) if hf_cfg.get("model_type") == "deepseek_v3" else 0
    mtp_keys = [k for k in sd if k.startswith("model.layers.") and k.split(".")[2].isdigit()
                and int(k.split(".")[2]) >= n_layers]
    if skip_mtp and mtp_keys:
        print(f"note: --no-mtp: {len(mtp_keys)} tensors of the MTP layer(s) model.layers.{n_layers}+ not imported")
        for k in mtp_keys:
            del sd[k]
        mtp_keys = []
    if announced and not mtp_keys and not skip_mtp:
        print(f"note: config.json announces {announced} MTP layer(s) but the weights have no model.layers."
              f"{n_layers}.*: imported without MTP (transformers' DeepseekV3 does not save one)")
    # depth from the weights present (layer L's tensors without an announced MTP layer are refused below)
    args = args_from_hf(hf_cfg, mtp_depth=announced if mtp_keys else 0)
    shapes = _expected_shapes(args)
    interleaved = hf_cfg.get("rope_interleave", True) if hf_cfg.get("model_type") == "deepseek_v3" else True
    perm = None if interleaved else _rope_rows(args.qk_rope_head_dim)
    out = {}

    def pop(h):
        if h not in sd:
            raise HFError(f"missing tensor {h} (needed for these config.json shapes)")
        return sd.pop(h)

    def put(m, h, t):
        if tuple(t.shape) != shapes[m]:
            raise HFError(f"tensor {h} has shape {tuple(t.shape)}, expected {shapes[m]} from config.json "
                          f"(minR1 {m})")
        out[m] = t.contiguous()
    if "lm_head.weight" not in sd and hf_cfg.get("tie_word_embeddings") and "model.embed_tokens.weight" in sd:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"].clone()
    for m, h in _top_pairs(args):
        put(m, h, pop(h))
    for m, h, moe in _blocks(args):
        for mm, hh in _block_pairs(m, h, args, moe):
            t = pop(hh)
            if perm is not None and hh.endswith(("q_proj.weight", "q_b_proj.weight")):
                if tuple(t.shape) == shapes[mm]:
                    t = _permute_q(t, args, perm)
            elif perm is not None and hh.endswith("kv_a_proj_with_mqa.weight") and tuple(t.shape) == shapes[mm]:
                t = _permute_kv_a(t, args, perm)
            put(mm, hh, t)
        if moe:
            E = args.n_routed_experts
            bias_key = h + "mlp.gate.e_score_correction_bias"
            if bias_key in sd:
                if args.score_func != "sigmoid":
                    raise HFError(f"{bias_key}: a DeepseekV2 (softmax) router has no score correction bias")
                put(m + "ffn.gate.bias", bias_key, sd.pop(bias_key))
            elif args.score_func == "sigmoid":
                raise HFError(f"missing tensor {bias_key} (DeepseekV3's router bias)")
            else:
                out[m + "ffn.gate.bias"] = torch.zeros(E, dtype=torch.float32)   # V2: no bias, b = 0
            fused = h + "mlp.experts.gate_up_proj"
            if fused in sd:                                # transformers 5's in-memory layout
                gu, down = sd.pop(fused), pop(h + "mlp.experts.down_proj")
                I = args.moe_inter_dim
                if tuple(gu.shape) != (E, 2 * I, args.dim):
                    raise HFError(f"tensor {fused} has shape {tuple(gu.shape)}, expected {(E, 2 * I, args.dim)}")
                w1, w3, w2 = gu[:, :I].transpose(1, 2), gu[:, I:].transpose(1, 2), down.transpose(1, 2)
                names = (fused, fused, h + "mlp.experts.down_proj")
            else:
                per = [[pop(f"{h}mlp.experts.{e}.{p}.weight").t() for e in range(E)]
                       for p in ("gate_proj", "up_proj", "down_proj")]
                for p, ts in zip(("gate_proj", "up_proj", "down_proj"), per):
                    for e, t in enumerate(ts):
                        want = shapes[m + ("ffn.w2" if p == "down_proj" else "ffn.w1")][1:]
                        if tuple(t.shape) != want:
                            raise HFError(f"tensor {h}mlp.experts.{e}.{p}.weight has shape {tuple(t.t().shape)}, "
                                          f"expected {tuple(reversed(want))} from config.json")
                w1, w3, w2 = (torch.stack(ts) for ts in per)
                names = tuple(f"{h}mlp.experts.*.{p}.weight" for p in ("gate_proj", "up_proj", "down_proj"))
            for x, t, n in zip(("w1", "w3", "w2"), (w1, w3, w2), names):
                put(m + "ffn." + x, n, t)
    if args.mtp_depth:
        L = f"model.layers.{args.n_layers}."
        put("mtp.eh_proj.weight", L + "eh_proj.weight", _swap_halves(pop(L + "eh_proj.weight")))
        for h, m in ((L + "embed_tokens.weight", "embed.weight"), (L + "shared_head.head.weight", "head.weight")):
            if h in sd:   # minR1 shares them with the main model (V3 §2.2): a copy must be the same tensor
                t = sd.pop(h)
                if t.shape != out[m].shape or not torch.equal(t.to(out[m].dtype), out[m]):
                    raise HFError(f"tensor {h} differs from the main model's {m}: minR1's MTP module shares the "
                                  f"embedding and output head (V3 §2.2); import with --no-mtp")
    if sd:
        left = sorted(sd)
        raise HFError(f"unsupported tensors minR1 has no place for: {', '.join(left[:5])}"
                      f"{f' (and {len(left) - 5} more)' if len(left) > 5 else ''}")
    return args, out


# ------------------------------------------------------------------------------------------------------- files
def export_hf(model, args: ModelArgs, out_dir: str, max_shard_bytes: int = 4 * 1024 ** 3, extra: dict | None = None):
    """Write out_dir/config.json and the weights as safetensors: model.safetensors, or model-0000k-of-0000n
    shards of at most max_shard_bytes each plus model.safetensors.index.json. `model`: a Transformer or its state
    dict. extra: more config.json entries (e.g. eos_token_id), and "minr1" entries (tokenizer, stage)."""
    from safetensors.torch import save_file
    cfg = hf_config(args)
    tensors = to_hf_state_dict(model, args)
    extra = dict(extra or {})
    cfg["minr1"].update(extra.pop("minr1", {}))
    cfg.update(extra)
    dtypes = {t.dtype for n, t in tensors.items() if "gate" not in n}
    cfg["torch_dtype"] = str(next(iter(dtypes))).replace("torch.", "") if len(dtypes) == 1 else "float32"
    os.makedirs(out_dir, exist_ok=True)
    shards, size = [[]], 0
    for name, t in tensors.items():
        n = t.numel() * t.element_size()
        if shards[-1] and size + n > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += n
    for old in os.listdir(out_dir):        # a previous export's shards would be read with the new index
        if old in (SINGLE, INDEX) or re.fullmatch(r"model-\d{5}-of-\d{5}\.safetensors", old):
            os.remove(os.path.join(out_dir, old))
    weight_map = {}
    for k, names in enumerate(shards):
        fname = SINGLE if len(shards) == 1 else f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file({n: tensors[n] for n in names}, os.path.join(out_dir, fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in names})
    if len(shards) > 1:
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        with open(os.path.join(out_dir, INDEX), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    with open(os.path.join(out_dir, CONFIG), "w") as f:
        json.dump(cfg, f, indent=2)
    return out_dir


def read_hf(hf_dir: str):
    """(config.json dict, {name: tensor}) of a HF checkpoint directory, with one-line errors for what is missing."""
    from safetensors.torch import load_file
    if not os.path.isdir(hf_dir):
        raise FileNotFoundError(f"no Hugging Face checkpoint directory at {hf_dir}")
    cpath = os.path.join(hf_dir, CONFIG)
    if not os.path.isfile(cpath):
        raise FileNotFoundError(f"{hf_dir} has no {CONFIG} (a Hugging Face checkpoint directory holds config.json "
                                f"and model.safetensors or model-*.safetensors shards with {INDEX})")
    with open(cpath) as f:
        try:
            cfg = json.load(f)
        except json.JSONDecodeError as e:
            raise HFError(f"{cpath} is not valid JSON ({e.msg}, line {e.lineno})") from None
    ipath, single = os.path.join(hf_dir, INDEX), os.path.join(hf_dir, SINGLE)
    if os.path.isfile(ipath):
        with open(ipath) as f:
            files = sorted(set(json.load(f).get("weight_map", {}).values()))
        if not files:
            raise HFError(f"{ipath} has an empty weight_map")
    elif os.path.isfile(single):
        files = [SINGLE]
    else:
        others = sorted(x for x in os.listdir(hf_dir) if x.endswith((".bin", ".pt", ".pth", ".safetensors")))
        found = f" (found {', '.join(others[:3])}: only safetensors files are read)" if others else ""
        raise FileNotFoundError(f"{hf_dir} has neither {SINGLE} nor {INDEX}{found}")
    sd = {}
    for name in files:
        path = os.path.join(hf_dir, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"shard {path} listed in {INDEX} is missing")
        try:
            sd.update(load_file(path))
        except Exception as e:          # safetensors raises its own error type for a damaged header
            raise HFError(f"{path} is not a readable safetensors file ({type(e).__name__}: {e})") from None
    return cfg, sd


def import_hf(hf_dir: str, skip_mtp: bool = False):
    """(ModelArgs, Transformer in fp32 eval mode) from a HF DeepseekV3 / DeepseekV2 directory."""
    cfg, sd = read_hf(hf_dir)
    try:
        args, state = from_hf_state_dict(sd, cfg, skip_mtp=skip_mtp)
    except HFError as e:
        raise HFError(f"{hf_dir}: {e}") from None
    model = Transformer(args)
    model.load_state_dict(state)                  # cast into fp32
    return args, model.eval()


def load_init(path: str, overrides: dict | None = None) -> Transformer:
    """train_pipeline's --init: a Transformer (fp32, training mode) from a HF directory or a minR1 checkpoint, with
    `overrides` (training-only ModelArgs fields such as bias_update_speed) applied to its args."""
    from checkpoint import build_model_from_checkpoint
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, CONFIG)) and not os.path.isfile(
            os.path.join(path, "model.pt")):
        args, model = import_hf(path)
    else:
        model, _ = build_model_from_checkpoint(path)
        args = model.args
    if overrides:
        new = ModelArgs(**{**asdict(args), **overrides})
        if new != args:
            state = model.state_dict()
            model = Transformer(new)
            model.load_state_dict(state)
    return model.float().train()


# --------------------------------------------------------------------------------------------------------- CLI
def cli_import(hf_dir: str, out: str, tokenizer: str | None = None, skip_mtp: bool = False) -> int:
    """python model.py --import-hf DIR --out model.pt: a checkpoint the pipeline reads (checkpoint.save_model's layout:
    model, model_args, step, tokenizer; stage when the directory came from a minR1 stage), weights in the file's
    dtype."""
    from checkpoint import save_checkpoint
    cfg, sd = read_hf(hf_dir)
    try:
        args, state = from_hf_state_dict(sd, cfg, skip_mtp=skip_mtp)
    except HFError as e:
        raise HFError(f"{hf_dir}: {e}") from None
    mine = cfg.get("minr1") or {}
    ckpt = {"model": state, "model_args": asdict(args), "step": 0, "source": os.path.abspath(hf_dir)}
    tok = tokenizer or mine.get("tokenizer")
    if tok:
        ckpt["tokenizer"] = tok
    else:
        print("warning: no --tokenizer given and none recorded in config.json: sample.py will assume the toy "
              "tokenizer; pass --tokenizer NAME")
    if mine.get("stage"):
        ckpt["stage"] = mine["stage"]
    save_checkpoint(out, ckpt)
    n = sum(t.numel() for t in state.values())
    print(f"{out}: {n:,} weights from {hf_dir} ({cfg.get('model_type')}, {args.n_layers} layers, MTP depth "
          f"{args.mtp_depth})")
    return 0


def cli_export(ckpt_path: str, out_dir: str, max_shard_mb: float = 4096) -> int:
    """python model.py --export-hf model.pt --out DIR: a pipeline checkpoint (runs/<name>/<stage>/model.pt, the
    bf16 copies in docs/toy_run) as a HF directory; the weights keep their dtype."""
    from checkpoint import load_checkpoint, unwrapped_state_dict
    ckpt = load_checkpoint(ckpt_path)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_args" not in ckpt:
        raise HFError(f"{ckpt_path} is not a minR1 model checkpoint (it needs 'model' and 'model_args' entries)")
    if "kind" in ckpt:
        raise HFError(f"{ckpt_path} is a reward model ({ckpt['kind']}): its scoring head has no place in a "
                      f"DeepseekV3ForCausalLM")
    args = ModelArgs(**ckpt["model_args"])
    from sample import checkpoint_stage
    stage = checkpoint_stage(ckpt_path, ckpt)[0]      # recorded, or the run folder's name (runs/<name>/<stage>/)
    extra = {"minr1": {"stage": stage} if stage else {}}
    tok_name = ckpt.get("tokenizer") or (ckpt.get("config") or {}).get("tokenizer")
    if tok_name:
        extra["minr1"]["tokenizer"] = tok_name
        try:                                   # HF's generate stops at eos_token_id: give it the tokenizer's
            import tokenizer
            t = tokenizer.get_tokenizer(tok_name)
            extra.update(eos_token_id=t.eos_id, pad_token_id=t.pad_id, bos_token_id=None)
        except Exception as e:                 # a tokenizer that cannot be loaded here: export the weights anyway
            print(f"warning: tokenizer {tok_name!r} not loaded ({e}); config.json has no eos_token_id")
    export_hf(unwrapped_state_dict(ckpt["model"]), args, out_dir, int(max_shard_mb * 1024 ** 2), extra)
    files = sorted(x for x in os.listdir(out_dir) if x.endswith(".safetensors"))
    print(f"{out_dir}: config.json + {', '.join(files)} ({_variant(args)}{f', stage {stage}' if stage else ''})")
    return 0
