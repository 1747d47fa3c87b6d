"""Next-token training with a loss mask: pretraining (every token counts) and SFT (completion tokens only).

The same loop serves the toy base model's pretraining, the cold-start SFT, the rejection-sampling SFT and the
distillation of students (R1 §2.3, §2.4): only the data and the mask change.

    python train_pipeline.py --stage pretrain --config toy                      # one process
    torchrun --nproc_per_node=2 train_pipeline.py --stage pretrain --config toy  # DDP over gloo on CPU

Data flow: examples (token ids + a 0/1 loss mask per token) are packed whole into rows of seq_len + 1 tokens
(`pack_examples`); step s of training reads a fixed slice of a per-epoch permutation of the rows, so a step's
batch depends only on (seed, s): a killed run resumed from its checkpoint sees exactly the batches it would
have seen, and N ranks each take every N-th row of the same global batch.
"""
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
from tqdm import tqdm

from common import (MetricsLogger, autocast, get_rng_state, load_checkpoint, load_model_state_dict,
                    load_optimizer_state_dict, model_state_dict, optimizer_state_dict, print0, save_checkpoint,
                    set_rng_state, unwrap)
from model import ModelArgs, Transformer


@dataclass
class SFTConfig:
    steps: int = 1000            # optimizer steps
    batch_size: int = 32         # rows per optimizer step, over all ranks and micro-steps (the global batch)
    grad_accum: int = 1          # micro-steps per optimizer step (batch_size / world / grad_accum rows each)
    seq_len: int = 256           # tokens per row (each row holds seq_len + 1 tokens: inputs and shifted targets)
    lr: float = 3e-3             # peak learning rate
    min_lr_ratio: float = 0.1    # cosine decays to lr * min_lr_ratio (R1 cold start: 5e-5 -> 5e-6)
    warmup: int = 50             # linear warmup steps
    weight_decay: float = 0.1    # on matrices only (not norms, biases, embeddings' gains)
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    ckpt_every: int = 200        # resumable checkpoint (model + optimizer + RNG) every N steps
    log_every: int = 10
    seed: int = 1337
    precision: str = "auto"      # bf16 autocast: "auto" (CUDA, or a CPU with native bf16) | "bf16" | "fp32"


def pack_examples(examples, seq_len: int, pad_id: int):
    """Greedy packing: whole examples (ids, mask) concatenated into rows of seq_len + 1 tokens.

    An example never straddles two rows (so an SFT completion always sees its prompt); one longer than a row
    is truncated. Attention still runs causally across the examples of a row (nanoGPT-style packing): each
    example starts after an end-of-text token, which the model learns to treat as a reset.
    Returns tokens (R, seq_len + 1) long and mask (R, seq_len + 1) bool, where mask[r, i] says whether token i
    is a training target.
    """
    L = seq_len + 1
    rows_t, rows_m, cur_t, cur_m = [], [], [], []
    for ids, mask in examples:
        ids, mask = list(ids[:L]), list(mask[:L])
        if len(cur_t) + len(ids) > L:                       # the example does not fit: close the row
            rows_t.append(cur_t + [pad_id] * (L - len(cur_t)))
            rows_m.append(cur_m + [0] * (L - len(cur_m)))
            cur_t, cur_m = [], []
        cur_t += ids
        cur_m += mask
    if cur_t:
        rows_t.append(cur_t + [pad_id] * (L - len(cur_t)))
        rows_m.append(cur_m + [0] * (L - len(cur_m)))
    if not rows_t:
        raise ValueError("pack_examples: no examples to pack")
    return torch.tensor(rows_t, dtype=torch.long), torch.tensor(rows_m, dtype=torch.bool)


def batch_rows(n_rows: int, step: int, batch_size: int, seed: int) -> torch.Tensor:
    """Row indices of step `step`'s global batch: consecutive slices of one permutation per epoch."""
    per_epoch = max(1, n_rows // batch_size)
    epoch, i = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n_rows, generator=g)
    idx = perm[i * batch_size:(i + 1) * batch_size]
    if len(idx) < batch_size:                               # fewer rows than a batch: wrap around
        idx = perm.repeat(math.ceil(batch_size / n_rows))[:batch_size]
    return idx


def inputs_targets(x, m):
    """Rows (B, L+1) and their loss mask -> inputs (B, L) and targets (B, L) with -1 where no loss is taken:
    the target of position t is token t+1, kept only where mask[t+1] (a completion token in SFT)."""
    return x[:, :-1], x[:, 1:].masked_fill(~m[:, 1:], -1)


def lr_at(step: int, cfg: SFTConfig) -> float:
    """Linear warmup, then cosine decay from lr to lr * min_lr_ratio."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def make_optimizer(model: torch.nn.Module, cfg: SFTConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (norm gains and 1-D params are not decayed)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


def train(model, tokens, mask, cfg: SFTConfig, dist, out_dir: str, *, resume: bool = False,
          extra_ckpt: dict | None = None, desc: str = "train"):
    """Train `model` (possibly DDP/FSDP-wrapped) on packed rows for cfg.steps optimizer steps.

    tokens, mask: (R, seq_len + 1) from pack_examples. The loss of a step is the mean cross-entropy over all
    target tokens of the global batch, whatever the ranks and micro-steps (each micro-batch's mean is weighted
    by its share of the global token count), so 1 process and N processes follow the same curve.
    Writes out_dir/metrics.jsonl and out_dir/ckpt.pt (resumable); returns the final step's metrics.
    """
    os.makedirs(out_dir, exist_ok=True)
    ckpt_path = os.path.join(out_dir, "ckpt.pt")
    core = unwrap(model)
    opt = make_optimizer(model, cfg)
    start = 0
    if resume and os.path.exists(ckpt_path):
        ck = load_checkpoint(ckpt_path)
        load_model_state_dict(model, ck["model"])
        load_optimizer_state_dict(model, opt, ck["optimizer"])
        set_rng_state(ck["rng"])
        start = ck["step"]
        print0(f"resumed from {ckpt_path} at step {start}")
    elif not resume and dist.is_main:
        for f in ("metrics.jsonl", "samples.jsonl"):         # a fresh run starts fresh curves and samples
            if os.path.exists(os.path.join(out_dir, f)):
                os.remove(os.path.join(out_dir, f))
    logger = MetricsLogger(os.path.join(out_dir, "metrics.jsonl"))

    world, rank = dist.world_size, dist.rank
    if cfg.batch_size % (world * cfg.grad_accum):
        raise ValueError(f"batch_size {cfg.batch_size} must be divisible by world_size {world} x grad_accum "
                         f"{cfg.grad_accum}")
    device = dist.device
    amp = autocast(device, cfg.precision)
    model.train()
    bar = tqdm(range(start, cfg.steps), desc=desc, disable=not dist.is_main, initial=start, total=cfg.steps)
    metrics = {}
    for step in bar:
        t0 = time.perf_counter()
        lr = lr_at(step, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        idx = batch_rows(len(tokens), step, cfg.batch_size, cfg.seed)
        x_all, m_all = tokens[idx], mask[idx]
        n_global = m_all[:, 1:].sum().clamp(min=1).item()       # target tokens in the whole global batch
        local = torch.arange(rank, cfg.batch_size, world)        # this rank's rows: every world-th row
        micro = local.chunk(cfg.grad_accum)
        sums = torch.zeros(4)                                    # ce*n, mtp*n, balance, n (for logging)
        for j, rows in enumerate(micro):
            x = x_all[rows].to(device)
            m = m_all[rows].to(device)
            inp, tgt = inputs_targets(x, m)
            n_local = m[:, 1:].sum().item()
            sync = j == len(micro) - 1
            ctx = model.no_sync() if (not sync and hasattr(model, "no_sync")) else nullcontext()
            with ctx, amp:
                _, _, parts = model(inp, tgt)
                # Weigh each term by this micro-batch's share of the global batch so that the step is the same
                # for any split over ranks and micro-steps: CE and MTP are means over target tokens, the
                # balance loss a mean over sequences. DDP then averages over the `world` ranks, hence * world.
                tok_w, seq_w = n_local * world / n_global, len(rows) * world / cfg.batch_size
                loss = (parts["ce"] + core.args.mtp_lambda * parts["mtp"]) * tok_w + parts["balance"] * seq_w
            loss.backward()
            ce, mtp, bal = (parts[k].item() for k in ("ce", "mtp", "balance"))
            sums += torch.tensor([ce * n_local, mtp * n_local, bal * len(rows) * world / cfg.batch_size, n_local])
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        core.update_bias()                                       # V3 aux-loss-free balancing, once per step
        if world > 1:
            torch.distributed.all_reduce(sums)
        dt = time.perf_counter() - t0
        n_tok = cfg.batch_size * cfg.seq_len
        metrics = {"loss": sums[0].item() / max(sums[3].item(), 1), "mtp": sums[1].item() / max(sums[3].item(), 1),
                   "balance": sums[2].item() / world, "lr": lr, "grad_norm": float(gnorm),
                   "tokens_per_s": n_tok / dt, "step_time": dt}
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            logger.log(step=step, **metrics)
        bar.set_postfix(loss=f"{metrics['loss']:.3f}", tok_s=f"{metrics['tokens_per_s']:.0f}")
        if (step + 1) % cfg.ckpt_every == 0 or step == cfg.steps - 1:
            save_resumable(model, opt, step + 1, ckpt_path, dist, extra_ckpt)
    return metrics


def save_resumable(model, opt, step, path, dist, extra: dict | None = None):
    """Model + optimizer + step + RNG, atomically (common.save_checkpoint). Every rank takes part in gathering
    the full state (a collective under FSDP2); rank 0 writes; all ranks wait."""
    state, opt_state = model_state_dict(model), optimizer_state_dict(model, opt)
    if dist.is_main:
        obj = {"model": state, "model_args": asdict(unwrap(model).args), "optimizer": opt_state, "step": step,
               "rng": get_rng_state()}
        obj.update(extra or {})
        save_checkpoint(path, obj)
    if dist.world_size > 1:
        torch.distributed.barrier()



# ============================================================================ reward models (R1 §2.3.4)
# R1's final RL stage scores general prompts with two learned reward models: a helpfulness RM trained on
# preference pairs (Bradley-Terry), which sees only the final summary, and a safety RM trained pointwise on
# responses labelled safe / unsafe, which sees the whole response, reasoning included. Both are our
# Transformer with its LM head swapped for a scalar head read at the last token; "higher is better" for both
# (the safety RM's score is the logit of SAFE). rewards.RewardModelReward feeds each the right part of a
# response; train_pipeline.py's reward_models stage trains them and reports their held-out accuracy.

class RewardModel(nn.Module):
    """Transformer body (LM head removed) + a scalar head on the final hidden state of each row's last token."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.body = Transformer(args)
        self.body.head = nn.Identity()      # the body's forward now returns the final RMSNorm'd states (B, T, D)
        self.score = nn.Linear(args.dim, 1)
        nn.init.zeros_(self.score.weight)   # every response scores 0 at the start: no initial preference
        nn.init.zeros_(self.score.bias)

    @classmethod
    def from_lm(cls, lm: Transformer) -> "RewardModel":
        """A reward model initialised from a language model's weights (R1's RMs start from DeepSeek-V3)."""
        rm = cls(lm.args)
        rm.body.load_state_dict({k: v for k, v in lm.state_dict().items() if not k.startswith("head.")})
        return rm

    def forward(self, tokens, lengths):
        """tokens (B, T) long, right-padded; lengths (B,) long -> scores (B,) fp32."""
        h = self.body(tokens)                                            # (B, T, D)
        last = h[torch.arange(tokens.shape[0], device=tokens.device), lengths - 1]   # (B, D)
        return self.score(last).squeeze(-1).float()                      # (B,)


def encode_rm(tok, prompt: str, response: str, max_len: int) -> list:
    """prompt + response + EOS as token ids, cut to the LAST max_len tokens (the score is read at the end)."""
    return (tok.encode(prompt + response) + [tok.eos_id])[-max_len:]


def _collate(seqs: list, pad_id: int, device):
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    tokens = torch.full((len(seqs), int(lengths.max())), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        tokens[i, :len(s)] = torch.tensor(s, dtype=torch.long)
    return tokens.to(device), lengths.to(device)


def rm_loss(rm, batch: list, kind: str, pad_id: int, device):
    """The loss of one batch and its accuracy.
    kind "pairs": batch = [(chosen_ids, rejected_ids)]; Bradley-Terry: P(chosen > rejected) = sigmoid(r_c - r_r),
      loss = -log sigmoid(r_c - r_r) (R1 §2.3.4 helpfulness RM); accuracy = share with r_c > r_r.
    kind "pointwise": batch = [(ids, label)], label 1 = safe, 0 = unsafe; loss = binary cross-entropy of
      sigmoid(r) (R1 §2.3.4 safety RM); accuracy = share with (r > 0) == label."""
    if kind == "pairs":
        tokens, lengths = _collate([c for c, _ in batch] + [r for _, r in batch], pad_id, device)
        r = rm(tokens, lengths)
        margin = r[:len(batch)] - r[len(batch):]                                  # r_c - r_r, (B,)
        return -torch.nn.functional.logsigmoid(margin).mean(), float((margin > 0).float().mean())
    if kind == "pointwise":
        tokens, lengths = _collate([x for x, _ in batch], pad_id, device)
        r = rm(tokens, lengths)
        y = torch.tensor([float(lab) for _, lab in batch], device=device)
        return (torch.nn.functional.binary_cross_entropy_with_logits(r, y),
                float(((r > 0).float() == y).float().mean()))
    raise ValueError(f"rm_loss: kind must be 'pairs' or 'pointwise', got {kind!r}")


def train_reward_model(rm, examples: list, kind: str, cfg: SFTConfig, dist, out_dir: str, pad_id: int,
                       desc: str = "rm") -> dict:
    """Train a RewardModel (possibly DDP-wrapped) for cfg.steps steps on encoded examples (see rm_loss), with
    sft.py's optimizer and schedule; step s reads batch_rows(s) of the examples, each rank every world-th.
    Writes out_dir/metrics.jsonl; returns the last step's metrics."""
    os.makedirs(out_dir, exist_ok=True)
    core = unwrap(rm)
    opt = make_optimizer(rm, cfg)
    if cfg.batch_size % dist.world_size:
        raise ValueError(f"batch_size {cfg.batch_size} must be divisible by world_size {dist.world_size}")
    if dist.is_main and os.path.exists(os.path.join(out_dir, "metrics.jsonl")):
        os.remove(os.path.join(out_dir, "metrics.jsonl"))
    logger = MetricsLogger(os.path.join(out_dir, "metrics.jsonl"))
    rm.train()
    metrics = {}
    bar = tqdm(range(cfg.steps), desc=desc, disable=not dist.is_main)
    for step in bar:
        lr = lr_at(step, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        idx = batch_rows(len(examples), step, cfg.batch_size, cfg.seed)[dist.rank::dist.world_size]
        loss, acc = rm_loss(rm, [examples[i] for i in idx], kind, pad_id, dist.device)
        loss.backward()                                          # DDP averages the ranks' means: equal shares
        gnorm = torch.nn.utils.clip_grad_norm_(rm.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        core.body.update_bias()                                  # V3 aux-loss-free balancing, once per step
        metrics = {"loss": float(loss.detach()), "accuracy": acc, "lr": lr, "grad_norm": float(gnorm)}
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            logger.log(step=step, **metrics)
        bar.set_postfix(loss=f"{metrics['loss']:.3f}", acc=f"{acc:.2f}")
    logger.close()
    return metrics


@torch.no_grad()
def reward_model_scores(rm, tok, prompts: list, responses: list, max_len: int, batch_size: int = 64):
    """Scores (N,) fp32 on the CPU of prompt + response pairs (prompt texts as the policy saw them)."""
    core = unwrap(rm)
    was_training = core.training
    core.eval()
    device = next(core.parameters()).device
    out = []
    for i in range(0, len(prompts), batch_size):
        seqs = [encode_rm(tok, p, r, max_len) for p, r in zip(prompts[i:i + batch_size], responses[i:i + batch_size])]
        out.append(core(*_collate(seqs, tok.pad_id, device)).cpu())
    core.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


@torch.no_grad()
def reward_model_accuracy(rm, tok, examples: list, kind: str, max_len: int) -> float:
    """Held-out accuracy. kind "pairs": examples {"prompt", "chosen", "rejected"} (prompts already formatted),
    the share ranked chosen above rejected; "pointwise": {"prompt", "response", "safe"}, the share on the right
    side of 0."""
    if kind == "pairs":
        c = reward_model_scores(rm, tok, [e["prompt"] for e in examples], [e["chosen"] for e in examples], max_len)
        r = reward_model_scores(rm, tok, [e["prompt"] for e in examples], [e["rejected"] for e in examples], max_len)
        return float((c > r).float().mean())
    s = reward_model_scores(rm, tok, [e["prompt"] for e in examples], [e["response"] for e in examples], max_len)
    return float(((s > 0) == torch.tensor([bool(e["safe"]) for e in examples])).float().mean())


def load_reward_model(path: str, device="cpu") -> RewardModel:
    """A RewardModel saved by train_pipeline.py's reward_models stage, in eval mode."""
    ck = load_checkpoint(path)
    rm = RewardModel(ModelArgs(**ck["model_args"]))
    rm.load_state_dict(ck["model"])
    return rm.to(device).eval()
