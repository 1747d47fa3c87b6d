"""A plan before a run: what one GPU holds and does in a training step of a config on N nodes x G GPUs.

    python train_pipeline.py --config v2-lite-node8 --plan --nodes 1 --gpus-per-node 8
    python plan.py --config v3-nodes --nodes 256 --gpus-per-node 8 --gpu-mem-gb 80 --mfu 0.4 --gpu-tflops 989
    python plan.py --config toy --nodes 1 --gpus-per-node 1 --gpu-mem-gb 24

It builds the config's Transformer on the meta device (no memory), counts its parameters exactly, and prints per
GPU: weights, gradients and AdamW states under the config's sharding, the activations of one micro-batch with and
without activation checkpointing, the KV cache of one rollout batch, the communication volume of a step, its
FLOPs and its time at an assumed MFU. A plan whose memory exceeds --gpu-mem-gb is refused: the error names the
phase (training step or rollout) and the largest term, and the plan is printed above it.

What the estimate assumes (the layout of THIS code, not of DeepSeek's own trainer):
- Mixed precision as common.autocast does it: fp32 weights, fp32 gradients, AdamW's exp_avg and exp_avg_sq in
  fp32 (4 + 4 + 8 = 16 bytes per parameter held), bf16 activations (precision "fp32": 4-byte activations).
- Sharding. DDP: every GPU holds every non-expert parameter. FSDP2 (common.wrap_model, "fsdp": true): each
  parameter is cut along dim 0 over the ranks that share it, padded to a multiple of their number (FSDP2's
  rule), and one block's full weights are gathered at a time, the next prefetched (2 x the largest block, fp32).
  EP ("ep": e, ep.wrap): the routed experts of each MoE layer are divided over e ranks; the world is (W / e data)
  x (e expert) ranks, and an expert's weights, gradients and AdamW states are replicated over the W / e data
  ranks, under DDP and under FSDP2 alike (FSDP2 shards the rest and leaves the experts out: ignored_params).
- Activations: tokens = micro-batch rows x seq_len per GPU, where the micro-batch is batch_size / W / grad_accum
  (sft.py splits the global batch that way). Per token and block, the tensors autograd keeps for backward,
  counted as numbers (ACTIVATIONS below gives the formula per term), attention FlashAttention-style (no T x T
  matrix kept), plus the fp32 logits and their log-softmax (2 x vocab x 4 bytes per token). With activation
  checkpointing (model.ModelArgs.activation_checkpointing) each block keeps only its fp32 input (4 D bytes per
  token) and one block's activations are live again during its recomputation.
- Rollout KV cache (GRPO sampling): the absorbed MLA cache, (kv_lora_rank + qk_rope_head_dim) numbers per token
  per layer (model.Transformer.counters), in the weights' dtype (fp32 here: KVCache takes the embedding's dtype),
  for group_size x prompts_per_step x n_minibatches / W rows of --prompt-len + max_new_tokens tokens. Sampling
  runs on whole weights (common.full_params gathers every FSDP2 shard, ep.py every expert): the rollout phase
  therefore holds the full fp32 model on each GPU, which is what limits RL at V2-Lite and V3 sizes with this code.
- Communication per optimizer step and GPU (bytes each GPU receives, = sends: a ring collective over n ranks moves
  (n-1)/n of the buffer through every rank per pass):
  DDP all-reduce of the fp32 gradients (2 passes), once per step; FSDP2 all-gather of the weights in forward and
  again in backward and reduce-scatter of the gradients (3 passes), every micro-step, and with EP the all-reduce
  of the expert gradients over the data ranks every micro-step (ep.register_grad_reduction); EP all-to-all: each
  token's K expert rows leave its rank with probability (e-1)/e (uniform routing), dispatch + combine in forward and both again
  in backward (4 passes), for every MoE layer and micro-step.
- FLOPs per token: model.Transformer.counters: 6 x active parameters (forward 2, backward 4) + causal attention
  3 x n_layers x H x (qk + v) x seq_len; x 4/3 with activation checkpointing (the forward is run twice). The
  step time is FLOPs per GPU / (MFU x peak): communication and load imbalance are inside the assumed MFU.
"""
import argparse
import math
from dataclasses import asdict, dataclass

import torch

from model import MoE, ModelArgs, Transformer

GiB = 1024 ** 3
EXPERT = ("w1", "w3", "w2")       # model.MoE's stacked routed-expert weights, (E, ...) each

# Per token and block, the numbers autograd keeps for the backward pass (D dim, H heads, N qk_nope, R qk_rope,
# V v_head, C kv_lora_rank, Q q_lora_rank, E routed experts, K activated, I expert width, S shared width, F dense
# width). Each entry: (term, numbers) as a function of ModelArgs.
ACTIVATIONS = """
  attention  2D (attn_norm in, out) + q [H(N+R), or 2Q + H(N+R) with a query latent] + (C+R) (wkv_a out) + C
             (kv_norm out) + H(N+V) (wkv_b out) + 2H(N+R) (q and k after RoPE) + 2HV (v, attention out)
  MoE        2D (ffn_norm in, out) + 4E (fp32 router logits and scores, in bf16 units) + K(2D + 3I) (each routed
             copy: its input, w1 and w3 outputs, SwiGLU product, output) + 3S + D (shared experts)
  dense FFN  2D + 3F + D
"""


def block_activations(a: ModelArgs, moe: bool) -> int:
    """Numbers kept per token by one block for its backward pass (ACTIVATIONS)."""
    D, H, N, R, V, C, Q = a.dim, a.n_heads, a.qk_nope_head_dim, a.qk_rope_head_dim, a.v_head_dim, a.kv_lora_rank, \
        a.q_lora_rank
    q = H * (N + R) + (2 * Q if Q else 0)
    attn = 2 * D + q + (C + R) + C + H * (N + V) + 2 * H * (N + R) + 2 * H * V
    if moe:
        S = a.n_shared_experts * a.moe_inter_dim
        ffn = 2 * D + 4 * a.n_routed_experts + a.n_activated_experts * (2 * D + 3 * a.moe_inter_dim) + 3 * S + D
    else:
        ffn = 2 * D + 3 * a.inter_dim + D
    return attn + ffn


@dataclass
class Setup:
    nodes: int = 1
    gpus_per_node: int = 1
    gpu_mem_gb: float = 80.0
    mfu: float = 0.4
    gpu_tflops: float = 989.0       # dense bf16 peak of an H100 / H800 SXM (the MFU denominator)
    prompt_len: int = 128           # prompt tokens of a rollout row (the cache holds prompt + completion)
    link_gbs: float = 0.0           # GB/s per GPU for the communication time (0: 50 across nodes, 300 in one node)


def shard(numel_dim0: int, rest: int, n: int) -> int:
    """Numbers one of n ranks holds of a parameter cut along dim 0 (FSDP2 pads dim 0 to a multiple of n)."""
    return math.ceil(numel_dim0 / n) * rest


def build_meta(args: ModelArgs) -> Transformer:
    with torch.device("meta"):
        return Transformer(args)


def count_params(model: Transformer, world: int, ep: int, fsdp: bool) -> dict:
    """Parameters (numbers) one GPU holds, split into the non-expert and expert parts, and the largest FSDP unit
    (a block, or the root: embedding + head + norms + MTP) as gathered in full (experts divided by ep)."""
    out = {"dense": 0, "expert": 0, "dense_total": 0, "expert_total": 0}
    units = {}
    for name, p in model.named_parameters():
        is_expert = name.split(".")[-1] in EXPERT and isinstance(model.get_submodule(name.rsplit(".", 1)[0]), MoE)
        rest = p[0].numel() if p.dim() > 1 else 1
        if is_expert:
            rows = p.shape[0] // ep                     # this rank's experts
            out["expert_total"] += p.numel()
            # ep == 1: the experts are ordinary parameters (FSDP2 shards them over all W ranks). ep > 1 (ep.wrap):
            # a rank keeps its E/ep experts whole, DDP and FSDP2 alike (FSDP2 gets them as ignored_params)
            out["expert"] += shard(p.shape[0], rest, world) if fsdp and ep == 1 else rows * rest
        else:
            rows = p.shape[0]
            out["dense_total"] += p.numel()
            out["dense"] += shard(rows, rest, world) if fsdp else p.numel()
        unit = ".".join(name.split(".")[:2]) if name.startswith("layers.") else "root"
        if not (is_expert and ep > 1):          # what FSDP2 gathers of the unit (EP experts are not its own)
            units[unit] = units.get(unit, 0) + rows * rest
    out["root_unit"] = units.pop("root")
    out["largest_unit"] = max(units.values()) if units else 0
    out["local"] = out["dense"] + out["expert"]
    return out


def training_section(cfg: dict, stage: str) -> dict:
    """The batch of a training step: the stage's section (pretrain by default; an RL stage trains on its rollout)."""
    sec = cfg.get(stage) if stage != "all" else None
    sec = sec or cfg.get("pretrain") or {}
    if stage in ("zero", "reasoning_rl", "all_rl"):
        g = {**cfg.get("grpo", {}), **cfg.get(stage, {})}
        rows = g.get("group_size", 16) * g.get("prompts_per_step", 8)
        return {"batch_size": rows, "seq_len": None, "grad_accum": 1, "grpo": g}
    return {"batch_size": sec.get("batch_size", 32), "seq_len": sec.get("seq_len", 1024),
            "grad_accum": sec.get("grad_accum", 1), "grpo": {**cfg.get("grpo", {}), **cfg.get("zero", {})}}


def make_plan(cfg: dict, setup: Setup, stage: str = "pretrain") -> dict:
    """Every figure of the plan (bytes, FLOPs, seconds) for `stage`'s training step; see the module docstring."""
    args = ModelArgs(**cfg["model"])
    W = setup.nodes * setup.gpus_per_node
    ep = int(cfg.get("ep", 1) or 1)
    fsdp = bool(cfg.get("fsdp", False)) and W > 1
    if W % ep:
        raise SystemExit(f"error: plan: ep={ep} must divide the world of {W} GPUs ({setup.nodes} nodes x "
                         f"{setup.gpus_per_node})")
    if args.n_routed_experts % ep:
        raise SystemExit(f"error: plan: ep={ep} must divide n_routed_experts={args.n_routed_experts}")
    model = build_meta(args)
    c = model.counters()
    p = count_params(model, W, ep, fsdp)
    sec = training_section(cfg, stage)
    g = sec["grpo"]
    gen_len = setup.prompt_len + g.get("max_new_tokens", 1024)
    seq = min(sec["seq_len"] or gen_len, args.max_seq_len)
    if sec["batch_size"] % (W * sec["grad_accum"]):
        micro = sec["batch_size"] / (W * sec["grad_accum"])
        note = f" (batch_size {sec['batch_size']} is not a multiple of {W} GPUs x grad_accum {sec['grad_accum']})"
    else:
        micro, note = sec["batch_size"] // (W * sec["grad_accum"]), ""
    micro = max(micro, 1)
    tokens = math.ceil(micro) * seq                  # per GPU and micro-step
    act_b = 4 if cfg.get("precision") == "fp32" else 2
    moe_layers = [isinstance(b.ffn, MoE) for b in model.layers]
    per_block = [block_activations(args, m) * act_b for m in moe_layers]
    if args.mtp_depth:
        per_block.append(block_activations(args, True) * act_b)
    logits = 2 * args.vocab_size * 4 * (1 + args.mtp_depth)
    full_act = tokens * (sum(per_block) + logits + 4 * args.dim)
    ckpt_act = tokens * (len(per_block) * 4 * args.dim + max(per_block) + logits + 4 * args.dim)
    ac = bool(args.activation_checkpointing)

    mem = {"weights (fp32)": 4 * p["local"], "gradients (fp32)": 4 * p["local"],
           "AdamW states (2 x fp32)": 8 * p["local"]}
    if fsdp:   # the root unit stays gathered from forward to backward (FSDP2 keeps the root unsharded)
        mem["FSDP2 gathered: root + 2 blocks (fp32)"] = 4 * (p["root_unit"] + 2 * p["largest_unit"])
    mem["activations" + (" (checkpointed)" if ac else "")] = ckpt_act if ac else full_act

    rows = g.get("group_size", 16) * g.get("prompts_per_step", 8) * g.get("n_minibatches", 1)
    rows_gpu = math.ceil(rows / W)
    kv = rows_gpu * min(gen_len, args.max_seq_len) * args.n_layers * (args.kv_lora_rank + args.qk_rope_head_dim) * 4
    full_model = 4 * (p["dense_total"] + p["expert_total"])
    rollout = {"whole weights for sampling (fp32)": full_model, "KV cache (absorbed MLA, fp32)": kv}
    if W == 1 or (not fsdp and ep == 1):    # DDP: the weights are already whole; the optimizer stays resident
        rollout = {"weights (fp32)": 4 * p["local"], "gradients (fp32)": 4 * p["local"],
                   "AdamW states (2 x fp32)": 8 * p["local"], "KV cache (absorbed MLA, fp32)": kv}
    else:                                   # sharded states stay resident beside the gathered weights
        rollout = {"sharded weights, gradients, AdamW states": 16 * p["local"], **rollout}

    # communication per optimizer step (bytes through this GPU)
    A = sec["grad_accum"]
    comm = {}
    dense_b, expert_b = 4 * p["dense_total"], 4 * p["expert_total"] / ep
    data = W // ep
    if W > 1:
        if fsdp and ep == 1:
            comm["FSDP2 all-gather x2 + reduce-scatter (fp32)"] = A * 3 * (W - 1) / W * (dense_b + expert_b)
        elif fsdp:
            comm["FSDP2 all-gather x2 + reduce-scatter (fp32)"] = A * 3 * (W - 1) / W * dense_b
            if data > 1:
                comm["expert gradient all-reduce over data ranks"] = A * 2 * (data - 1) / data * expert_b
        else:
            comm["DDP all-reduce of gradients (fp32)"] = 2 * ((W - 1) / W * dense_b + (data - 1) / data * expert_b)
        if ep > 1:
            comm["EP all-to-all (dispatch + combine, fwd + bwd)"] = (
                A * 4 * (sum(moe_layers) + args.mtp_depth) * tokens * args.n_activated_experts * args.dim * act_b * (ep - 1) / ep)

    flops_tok = model.counters(seq_len=seq)["train_flops_per_token"]
    if ac:
        flops_tok *= 4 / 3
    global_tokens = sec["batch_size"] * seq
    flops_gpu = flops_tok * global_tokens / W
    step_s = flops_gpu / (setup.mfu * setup.gpu_tflops * 1e12)
    return {"model": asdict(args), "world": W, "ep": ep, "fsdp": fsdp, "stage": stage, "params": p,
            "counters": c, "micro_batch": micro, "micro_note": note, "seq_len": seq, "tokens_per_gpu": tokens,
            "global_tokens": global_tokens, "grad_accum": A, "act_checkpointing": ac,
            "activations_full": full_act, "activations_ckpt": ckpt_act, "memory": mem, "rollout": rollout,
            "rollout_rows_per_gpu": rows_gpu, "rollout_len": gen_len, "comm": comm, "flops_per_token": flops_tok,
            "flops_per_gpu": flops_gpu, "step_s": step_s, "setup": asdict(setup),
            "gpu_hours_per_T_tokens": 1e12 / global_tokens * step_s * W / 3600}


RL_STAGES = ("zero", "reasoning_rl", "all_rl", "distill", "all")   # the stages that sample rollouts (GRPO)


def check_fits(plan: dict, cap_gb: float) -> list:
    """The phases of the plan's stage that do not fit: [(phase, total bytes, largest term, its bytes)]. The rollout
    counts only for a stage that runs GRPO."""
    bad = []
    phases = [("training step", plan["memory"])]
    if plan["stage"] in RL_STAGES:
        phases.append(("rollout", plan["rollout"]))
    for phase, terms in phases:
        total = sum(terms.values())
        if total > cap_gb * GiB:
            term = max(terms, key=terms.get)
            bad.append((phase, total, term, terms[term]))
    return bad


def fmt_b(n: float) -> str:
    return f"{n / GiB:10.2f} GiB"


def render(plan: dict, name: str) -> str:
    s, p, c = plan["setup"], plan["params"], plan["counters"]
    W = plan["world"]
    layout = ("FSDP2" if plan["fsdp"] else "DDP" if W > 1 else "one GPU") + \
        (f" + EP {plan['ep']}" if plan["ep"] > 1 else "")
    lines = [f"plan: {name} on {s['nodes']} node(s) x {s['gpus_per_node']} GPU(s) = {W}, {layout}, "
             f"stage {plan['stage']}",
             f"  model: {c['total_params'] / 1e9:.3f}B total ({c['mtp_params'] / 1e9:.3f}B MTP apart), "
             f"{c['active_params'] / 1e9:.3f}B active per token; routed experts "
             f"{p['expert_total'] / 1e9:.3f}B, the rest {p['dense_total'] / 1e9:.3f}B",
             f"  parameters per GPU: {p['local'] / 1e9:.4f}B ({p['dense'] / 1e9:.4f}B non-expert + "
             f"{p['expert'] / 1e9:.4f}B expert)",
             f"  batch: {plan['global_tokens']:,} tokens per step; per GPU micro-batch {plan['micro_batch']:g} x "
             f"{plan['seq_len']} tokens x grad_accum {plan['grad_accum']}{plan['micro_note']}",
             f"  memory per GPU, training step (of {s['gpu_mem_gb']:g} GiB):"]
    for k, v in plan["memory"].items():
        lines.append(f"    {k:<48}{fmt_b(v)}")
    lines.append(f"    {'total':<48}{fmt_b(sum(plan['memory'].values()))}")
    lines.append(f"    activations without / with checkpointing: {fmt_b(plan['activations_full']).strip()} / "
                 f"{fmt_b(plan['activations_ckpt']).strip()}")
    lines.append(f"  memory per GPU, rollout ({plan['rollout_rows_per_gpu']} rows x {plan['rollout_len']} tokens)"
                 f"{'' if plan['stage'] in RL_STAGES else ', not run by this stage (--stage all checks it)'}:")
    for k, v in plan["rollout"].items():
        lines.append(f"    {k:<48}{fmt_b(v)}")
    lines.append(f"    {'total':<48}{fmt_b(sum(plan['rollout'].values()))}")
    lines.append("  communication per step and GPU:" + ("" if plan["comm"] else " none (one GPU)"))
    gbs = s["link_gbs"] or (300.0 if s["nodes"] == 1 else 50.0)
    for k, v in plan["comm"].items():
        lines.append(f"    {k:<48}{fmt_b(v)}   >= {v / (gbs * 1e9):.3g} s at {gbs:g} GB/s unless overlapped")
    lines.append(f"  FLOPs: {plan['flops_per_token']:.4g} per token, {plan['flops_per_gpu']:.4g} per GPU per step; "
                 f"step {plan['step_s']:.3g} s at MFU {s['mfu']:g} of {s['gpu_tflops']:g} TFLOP/s; "
                 f"{plan['gpu_hours_per_T_tokens']:,.0f} GPU hours per trillion tokens")
    return "\n".join(lines)


def main(argv=None, cfg: dict | None = None, name: str | None = None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    if cfg is None:
        ap.add_argument("--config", required=True, help="preset name in configs/ or a JSON path")
    ap.add_argument("--plan", action="store_true", help=argparse.SUPPRESS)   # train_pipeline.py's flag
    ap.add_argument("--stage", default="pretrain", help="whose training batch to plan (default pretrain)")
    ap.add_argument("--nodes", type=int, default=1)
    ap.add_argument("--gpus-per-node", type=int, default=1)
    ap.add_argument("--gpu-mem-gb", type=float, default=80.0)
    ap.add_argument("--mfu", type=float, default=0.4)
    ap.add_argument("--gpu-tflops", type=float, default=989.0, help="peak dense TFLOP/s of one GPU")
    ap.add_argument("--prompt-len", type=int, default=128, help="prompt tokens of a rollout row")
    ap.add_argument("--link-gbs", type=float, default=0.0, help="network GB/s per GPU for the communication times "
                    "(default: 300 on one node, NVLink-class; 50 across nodes, a 400 Gb/s InfiniBand NIC per GPU)")
    args, rest = ap.parse_known_args(argv)
    for flag, v in (("--nodes", args.nodes), ("--gpus-per-node", args.gpus_per_node),
                    ("--prompt-len", args.prompt_len)):
        if v < 1:
            raise SystemExit(f"error: {flag} must be >= 1, got {v}")
    for flag, v in (("--gpu-mem-gb", args.gpu_mem_gb), ("--gpu-tflops", args.gpu_tflops)):
        if not v > 0:
            raise SystemExit(f"error: {flag} must be > 0, got {v}")
    if not 0 < args.mfu <= 1:
        raise SystemExit(f"error: --mfu must be in (0, 1], got {args.mfu}")
    if cfg is None:
        from config import apply_overrides, check_config, load_config, resolve
        cfg = resolve(apply_overrides(load_config(args.config), args.stage, rest))
        check_config(cfg, f"config '{args.config}'")
        name = args.config
    elif rest:
        raise SystemExit(f"error: unknown plan option(s): {' '.join(rest)}")
    if args.link_gbs < 0:
        raise SystemExit(f"error: --link-gbs must be >= 0, got {args.link_gbs}")
    setup = Setup(args.nodes, args.gpus_per_node, args.gpu_mem_gb, args.mfu, args.gpu_tflops, args.prompt_len,
                  args.link_gbs)
    plan = make_plan(cfg, setup, args.stage)
    print(render(plan, name or cfg.get("name", "")))
    bad = check_fits(plan, args.gpu_mem_gb)
    if bad:
        phase, total, term, size = bad[0]
        raise SystemExit(f"error: plan does not fit: the {phase} needs {total / GiB:.1f} GiB per GPU > "
                         f"--gpu-mem-gb {args.gpu_mem_gb:g}; largest term: {term} = {size / GiB:.1f} GiB")
    print("  fits.")
    return plan


if __name__ == "__main__":
    main()
