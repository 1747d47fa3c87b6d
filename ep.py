"""Expert parallelism (V3 §3.2-3.4): the routed experts of every MoE layer sharded over an expert-parallel group.

    torchrun --nproc_per_node=2 train_pipeline.py --stage pretrain --config micro --ep 2   # 2 ranks, 2 experts each
    torchrun --nproc_per_node=4 train_pipeline.py --stage pretrain --config micro --ep 2   # data 2 x expert 2

Layout. The ranks form a 2-D device mesh (data, expert), rank = d * ep + e. Rank (d, e) holds experts
e * E/ep .. (e+1) * E/ep - 1 of every MoE layer (w1, w3, w2 sliced on their first dimension, the expert);
everything else -- embedding, attention, dense FFNs, shared experts, the gate, head -- is data parallel over
all ranks as before (DDP, or FSDP2 sharding it over all ranks). V3 trains with 64-way EP over 8 nodes beside
16-way pipeline and ZeRO-1 data parallelism (§3.2); here EP is a plain all_to_all_single, without V3's node-limited
dispatch through IB then NVLink and without its overlap of communication with computation (DualPipe, §3.2.1-3.2.2).

One MoE layer under EP (model.MoE.forward calls routed_experts when MoE.ep_group is set):
  1. route     every rank runs the FULL gate on its own tokens (V3 eq. 13-16): top-K experts per token
  2. dispatch  the number of rows for each (destination rank, expert) is exchanged first (all_to_all_single of E
               numbers), then the token rows themselves, sorted by expert, with variable split sizes
  3. experts   each rank runs the rows it received through its local experts (kernels.moe_ffn, grouped GEMM)
  4. combine   the outputs go back by the reverse all_to_all and are summed per token, weighted by the routing
               weights g (V3 eq. 12)
Gradients flow back through both exchanges: the backward of an all_to_all is the all_to_all with the send and
receive sizes swapped (_AllToAll). Every rank of an expert group must therefore run the same number of MoE
forwards (and backwards): an SFT step does; a GRPO step pads each rank to the busiest rank's number of
micro-batches with zero-loss ones (grpo._minibatch_step); sampling and GRPO's no-grad log-prob passes, whose
numbers differ between ranks, run on full experts gathered once beforehand (full_experts, via common.full_params).

Gradients. A replicated parameter's gradient is averaged over ALL ranks (DDP or FSDP2, told to ignore the experts).
An expert weight's gradient already sums, through the combine/dispatch backward, the contributions of every
token of its expert group; it is summed over the ranks that hold the SAME experts (the mesh's data dimension)
and divided by the world size, so the step equals the one-process step on the global batch. The gradient norm
for clipping counts each expert once (clip_grad_norm). The balancing bias needs no change: every rank counts the
loads of its own tokens over all E experts (the gate is full) and Gate.update_bias all-reduces them over all
ranks: the global loads.

Checkpoints keep the one-process layout: full_state_dict / full_optimizer_state gather the expert shards,
load_full_state_dict / load_full_optimizer_state slice them (under FSDP2: gather_experts, slice_experts and the
name-keyed optimizer variants, beside FSDP2's own gathering), so a model trained with EP loads in one process and
vice versa (common.model_state_dict and friends call them).

Tests: python -m pytest -q tests/test_ep.py        Bench: torchrun --nproc_per_node=2 bench/alltoall.py
"""
from contextlib import contextmanager

import torch
import torch.distributed as dist
import torch.nn as nn

import kernels

EXPERT_WEIGHTS = ("w1", "w3", "w2")     # the stacked routed-expert weights of model.MoE, (E, ...) each


# ------------------------------------------------------------------------------------------- process groups
def init_mesh(world_size: int, ep: int, device_type: str = "cpu"):
    """The (data, expert) device mesh: world_size // ep replicas of an expert group of ep ranks. Consecutive ranks
    share an expert group (on GPUs: the same node, so the all_to_all stays on NVLink when ep <= GPUs per node)."""
    if ep < 1 or world_size % ep:
        raise ValueError(f"ep={ep} must divide the world size {world_size} (launch with torchrun "
                         f"--nproc_per_node a multiple of {ep})")
    from torch.distributed.device_mesh import init_device_mesh
    return init_device_mesh(device_type, (world_size // ep, ep), mesh_dim_names=("data", "expert"))


def moe_layers(model: nn.Module) -> list:
    """Every model.MoE of the model (the MTP block's included): the modules with an `ep_group` attribute."""
    return [m for m in model.modules() if hasattr(m, "ep_group") and hasattr(m, "w1")]


def is_sharded(model: nn.Module) -> bool:
    return any(m.ep_group is not None for m in moe_layers(model))


def expert_param_names(model: nn.Module) -> list:
    """Names (in model.named_parameters()) of the sharded expert weights."""
    return [n for n, p in model.named_parameters() if getattr(p, "_ep_expert", False)]


@torch.no_grad()
def shard_experts(model: nn.Module, mesh) -> nn.Module:
    """Keep only this rank's slice of every MoE layer's routed experts, in place. The full weights are first
    broadcast from rank 0, so every rank slices the same tensors (as DDP broadcasts the replicated ones)."""
    ep, e = mesh.size(1), mesh.get_local_rank("expert")
    for m in moe_layers(model):
        E = m.w1.shape[0]
        if E % ep:
            raise ValueError(f"ep={ep} must divide n_routed_experts={E}")
        n_local = E // ep
        for name in EXPERT_WEIGHTS:
            full = getattr(m, name).detach()
            if dist.get_world_size() > 1:
                dist.broadcast(full, src=0)
            p = nn.Parameter(full[e * n_local:(e + 1) * n_local].clone())   # (E/ep, ...) this rank's experts
            p._ep_expert = True
            p._ep = (mesh.get_group("expert"), e, ep)      # where its other slices live (full_state_dict)
            setattr(m, name, p)
        m.ep_group, m.ep_size, m.ep_rank, m.n_local = mesh.get_group("expert"), ep, e, n_local
        m.data_group = mesh.get_group("data")
    return model


# ----------------------------------------------------------------------------------------- the exchanges
class _AllToAll(torch.autograd.Function):
    """all_to_all_single with autograd: rows [sum(send[:r]), sum(send[:r+1])) go to rank r, and rank r's rows for
    us arrive in rank order, recv[r] of them. Backward: each row's gradient travels back the way it came."""

    @staticmethod
    def forward(ctx, x, send: list, recv: list, group):
        ctx.send, ctx.recv, ctx.group = send, recv, group
        return _all_to_all(x, send, recv, group)

    @staticmethod
    def backward(ctx, grad):
        return _all_to_all(grad, ctx.recv, ctx.send, ctx.group), None, None, None


def _all_to_all(x, send: list, recv: list, group):
    out = x.new_empty((sum(recv), *x.shape[1:]))
    dist.all_to_all_single(out, x.contiguous(), output_split_sizes=recv, input_split_sizes=send, group=group)
    return out


def dispatch(x, idx, m):
    """Send each (token, chosen expert) pair to the rank holding that expert (V3 §3.2.2, dispatching).

    x (N, D) this rank's tokens; idx (N, K) their experts (global ids, from the full gate).
    -> rows (M, D) the pairs this rank received, local (M,) their expert among this rank's E/ep, and the plan
       (order, send, recv, group) that combine needs to bring the results back.
    """
    K = idx.shape[1]
    ep, n_local = m.ep_size, m.n_local
    flat = idx.reshape(-1)                                            # (N*K,) expert of pair p = n*K + k
    order = flat.argsort(stable=True)                                 # pairs sorted by expert, hence by rank
    per_expert = torch.bincount(flat, minlength=ep * n_local)        # (E,) rows this rank sends to each expert
    # 1. counts first: received[s, j] = rows rank s sends to our local expert j (so buffers can be sized)
    received = torch.empty_like(per_expert)
    dist.all_to_all_single(received, per_expert, group=m.ep_group)   # E numbers, n_local to each rank
    received = received.view(ep, n_local)
    send = per_expert.view(ep, n_local).sum(1).tolist()               # rows to each rank
    recv = received.sum(1).tolist()                                   # rows from each rank
    # 2. then the rows, grouped by destination rank (and by expert within it) with variable split sizes
    rows = _AllToAll.apply(x[order // K], send, recv, m.ep_group)     # (M, D)
    # rows from rank s arrive sorted by expert: received[s, j] rows of local expert j, for j = 0..n_local-1
    local = torch.arange(n_local, device=x.device).repeat(ep).repeat_interleave(received.flatten())   # (M,)
    return rows, local, (order, send, recv, m.ep_group)


def combine(y, weights, plan, N: int):
    """Bring the expert outputs back to the tokens' ranks and sum each token's K outputs weighted by its routing
    weights (V3 eq. 12; §3.2.2, combining). y (M, D) outputs of the received rows; weights (N, K) -> (N, D)."""
    order, send, recv, group = plan
    K = weights.shape[1]
    back = _AllToAll.apply(y, recv, send, group)                      # (N*K, D) in the dispatch order
    back = back * weights.reshape(-1)[order, None].to(back.dtype)     # g_{i,t} FFN_i(u_t)
    return back.new_zeros((N, back.shape[1])).index_add(0, order // K, back)   # sum over each token's K pairs


def routed_experts(m, x, idx, weights):
    """The routed part of model.MoE.forward under EP: x (N, D), idx / weights (N, K) from the full gate -> (N, D)."""
    rows, local, plan = dispatch(x, idx, m)
    if rows.shape[0]:
        ones = torch.ones(rows.shape[0], 1, device=rows.device, dtype=torch.float32)
        y = kernels.moe_ffn(rows, local[:, None], ones, m.w1, m.w3, m.w2)   # (M, D) local experts, weight 1
    else:   # nothing routed here this time: still take part in both exchanges, and give the weights a (zero)
        y = rows + 0.0 * sum(getattr(m, w).sum() for w in EXPERT_WEIGHTS)   # gradient, so grads exist everywhere
    return combine(y, weights, plan, x.shape[0])


def wrap(model: nn.Module, d, ep: int, find_unused_parameters: bool = False, fsdp: bool = False,
         mp_policy=None) -> nn.Module:
    """common.wrap_model(..., ep=N): shard the experts over the (data, expert) mesh; the replicated weights data
    parallel over ALL ranks with the expert weights excluded -- DDP (it would otherwise average the experts over
    ranks that hold different ones, and broadcast rank 0's slice over the others'), or with fsdp FSDP2
    fully_shard per block and root with the experts as ignored_params --; the expert gradients reduced over the
    data dimension by hooks (register_grad_reduction). d: common.Dist."""
    from torch.nn.parallel import DistributedDataParallel as DDP
    if not dist.is_initialized():
        raise ValueError(f"ep={ep} needs {ep} or a multiple of {ep} processes: launch with torchrun "
                         f"--nproc_per_node={ep} (this is one process)")
    shard_experts(model, init_mesh(d.world_size, ep, d.device.type))
    if fsdp:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        kw = {"mesh": init_device_mesh(d.device.type, (d.world_size,)), "ignored_params": set(
            p for p in model.parameters() if getattr(p, "_ep_expert", False)), "mp_policy": mp_policy or
            MixedPrecisionPolicy()}
        for block in model.layers:   # (mp_policy casts FSDP2's weights only: the experts keep their dtype)
            fully_shard(block, **kw)
        fully_shard(model, **kw)
        register_grad_reduction(model, None, d.world_size)
        return model
    DDP._set_params_and_buffers_to_ignore_for_model(model, expert_param_names(model))
    device_ids = [d.device.index] if d.device.type == "cuda" else None
    ddp = DDP(model, device_ids=device_ids, forward_sync_buffers=False, find_unused_parameters=find_unused_parameters)
    register_grad_reduction(model, ddp, d.world_size)
    return ddp


# ---------------------------------------------------------------------------------------------- gradients
def register_grad_reduction(model: nn.Module, ddp: nn.Module | None, world_size: int):
    """Sum each expert weight's gradient over the data dimension of the mesh (the ranks holding the same experts)
    and divide by the world size: DDP's and FSDP2's averaging convention, applied to the parameters they were told
    to ignore. DDP: once, after the backward of a gradient-synchronised step; DDP decides at FORWARD time whether a
    backward synchronises (no_sync around the forward), so a forward hook records that decision for the grad
    hooks. FSDP2 (ddp None) reduces every backward, and so do the hooks: each backward's own gradient, before it is
    added to what earlier micro-steps accumulated."""
    if ddp is None:
        for m in moe_layers(model):
            for name in EXPERT_WEIGHTS:
                def reduce_new(g, group=m.data_group):
                    g = g.clone()
                    if dist.get_world_size(group) > 1:
                        dist.all_reduce(g, group=group)
                    return g / world_size
                getattr(m, name).register_hook(reduce_new)
        return
    model._ep_sync = True

    def remember(module, args):
        module._ep_sync = ddp.require_backward_grad_sync
    model.register_forward_pre_hook(remember)
    for m in moe_layers(model):
        for name in EXPERT_WEIGHTS:
            def reduce(p, group=m.data_group):
                if model._ep_sync:
                    if dist.get_world_size(group) > 1:
                        dist.all_reduce(p.grad, group=group)
                    p.grad.div_(world_size)
            getattr(m, name).register_post_accumulate_grad_hook(reduce)


@torch.no_grad()
def clip_grad_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_ for an EP model: the norm of the FULL gradient, each expert counted once
    (the squares of the local expert gradients summed over the expert group), so every rank clips by the same
    factor and the replicated weights stay identical. Returns the total norm."""
    def sq(g):   # squared norm; an FSDP2 gradient is a DTensor shard: its sum of squares over every rank
        s = g.float().pow(2).sum()
        return s.full_tensor() if hasattr(s, "full_tensor") else s
    params = [p for p in model.parameters() if p.grad is not None]
    zero = torch.zeros((), device=next(model.parameters()).device)
    sq_rest = sum((sq(p.grad) for p in params if not getattr(p, "_ep_expert", False)), zero)
    sq_expert = sum((sq(p.grad) for p in params if getattr(p, "_ep_expert", False)), zero.clone())
    group = next(p._ep[0] for p in model.parameters() if getattr(p, "_ep_expert", False))
    dist.all_reduce(sq_expert, group=group)
    total = (sq_rest + sq_expert).sqrt()
    coef = float((max_norm / (total + 1e-6)).clamp(max=1.0))   # torch's rule: scale only when the norm exceeds it
    for p in params:
        p.grad.mul_(coef)
    return total


# ---------------------------------------------------------------------------------------------- checkpoints
def _gather(t: torch.Tensor, where) -> torch.Tensor:
    """The full (E, ...) tensor from every expert rank's (E/ep, ...) slice (a collective over the expert group)."""
    group, _, ep = where
    parts = [torch.empty_like(t) for _ in range(ep)]
    dist.all_gather(parts, t.contiguous(), group=group)
    return torch.cat(parts)


def _slice(full: torch.Tensor, p: torch.Tensor, what: str) -> torch.Tensor:
    _, e, ep = p._ep
    n = p.shape[0]
    if full.shape[0] != n * ep or full.shape[1:] != p.shape[1:]:
        raise ValueError(f"{what}: expected the full expert tensor of shape {(n * ep, *p.shape[1:])}, "
                         f"got {tuple(full.shape)}")
    return full[e * n:(e + 1) * n]


def gather_experts(model: nn.Module) -> dict:
    """{name: full (E, ...) tensor} of every sharded expert weight (a collective; every rank gets them)."""
    return {n: _gather(p.detach(), p._ep) for n, p in model.named_parameters() if getattr(p, "_ep_expert", False)}


def slice_experts(model: nn.Module, state: dict) -> dict:
    """A one-process state dict with its expert entries cut to this rank's slices (the other entries as they are)."""
    params = dict(model.named_parameters())
    return {k: _slice(v, params[k], f"state dict entry '{k}'") if getattr(params.get(k), "_ep_expert", False)
            else v for k, v in state.items()}


def full_state_dict(model: nn.Module) -> dict:
    """model.state_dict() in the one-process layout: the expert shards gathered (a collective; every rank gets it)."""
    return {**model.state_dict(), **gather_experts(model)}


def load_full_state_dict(model: nn.Module, state: dict):
    """Load a one-process state dict (full experts) into an EP model: each rank keeps its experts' slice."""
    model.load_state_dict(slice_experts(model, state))


def _indexed(opt) -> list:
    """The optimizer's parameters in the order of its state dict's integer keys."""
    return [p for g in opt.param_groups for p in g["params"]]


def full_optimizer_state(model: nn.Module, opt) -> dict:
    """opt.state_dict() in the one-process layout: per-expert states (Adam's moments) gathered (a collective)."""
    sd = opt.state_dict()
    state = dict(sd["state"])
    for i, p in enumerate(_indexed(opt)):
        if getattr(p, "_ep_expert", False) and i in state:
            state[i] = {k: _gather(v, p._ep) if torch.is_tensor(v) and v.shape == p.shape else v
                        for k, v in state[i].items()}
    return {**sd, "state": state}


def gather_expert_optimizer_state(model: nn.Module, opt) -> dict:
    """{parameter name: {state key: full tensor}} of the expert weights' optimizer states (a collective): for
    FSDP2's name-keyed optimizer state dicts (common.optimizer_state_dict)."""
    out = {}
    for n, p in model.named_parameters():
        if getattr(p, "_ep_expert", False) and p in opt.state:
            out[n] = {k: _gather(v, p._ep) if torch.is_tensor(v) and v.shape == p.shape else v
                      for k, v in opt.state[p].items()}
    return out


def slice_expert_optimizer_state(model: nn.Module, sd: dict) -> dict:
    """A name-keyed (FSDP2) one-process optimizer state dict with the expert entries cut to this rank's slices."""
    params = dict(model.named_parameters())
    state = dict(sd["state"])
    for n, s in sd["state"].items():
        p = params.get(n)
        if getattr(p, "_ep_expert", False):
            state[n] = {k: _slice(v, p, f"optimizer state {n}.{k}")
                        if torch.is_tensor(v) and v.dim() > 0 and v.shape[1:] == p.shape[1:] else v
                        for k, v in s.items()}
    return {**sd, "state": state}


def load_full_optimizer_state(model: nn.Module, opt, sd: dict):
    """Load a one-process optimizer state into the optimizer of an EP model (each rank keeps its slices)."""
    state = dict(sd["state"])
    for i, p in enumerate(_indexed(opt)):
        if getattr(p, "_ep_expert", False) and i in state:
            state[i] = {k: _slice(v, p, f"optimizer state {i}.{k}")
                        if torch.is_tensor(v) and v.dim() > 0 and v.shape[1:] == p.shape[1:] else v
                        for k, v in state[i].items()}
    opt.load_state_dict({**sd, "state": state})


# ------------------------------------------------------------------------------------------------ sampling
@contextmanager
def full_experts(model: nn.Module):
    """Every rank holds every expert for the duration (a collective on entry), and MoE layers run locally.

    Sampling cannot use the EP path: ranks decode different numbers of steps (rows end at different times,
    ranks get different numbers of prompts) and each MoE forward is a collective. As grpo.py unshards FSDP2
    before sampling, the expert weights are gathered once before and dropped after (the memory of the full
    experts on each rank while sampling; V3's deployment (§3.4) instead keeps EP while decoding, EP320 with
    redundant experts, every rank stepping together)."""
    layers = [m for m in moe_layers(model) if m.ep_group is not None]
    saved = []
    with torch.no_grad():
        for m in layers:
            saved.append((m, m.ep_group, {n: getattr(m, n) for n in EXPERT_WEIGHTS}))
            for name, p in saved[-1][2].items():
                m._parameters[name] = nn.Parameter(_gather(p.detach(), p._ep), requires_grad=False)
            m.ep_group = None
    try:
        yield model
    finally:
        for m, group, params in saved:
            for name, p in params.items():
                m._parameters[name] = p
            m.ep_group = group
