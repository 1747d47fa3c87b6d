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
from array import array
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from tqdm import tqdm

from checkpoint import load_resumable, save_model
from common import MetricsLogger, adamw, autocast, clip_grad_norm, print0, trim_heap, unwrap


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

    def __post_init__(self):
        checks = [(self.steps >= 1, f"steps must be >= 1, got {self.steps}"),
                  (self.batch_size >= 1 and self.grad_accum >= 1 and self.seq_len >= 1,
                   f"batch_size, grad_accum and seq_len must be >= 1, got {self.batch_size}, {self.grad_accum}, "
                   f"{self.seq_len}"),
                  (math.isfinite(self.lr) and self.lr > 0, f"lr must be a positive number, got {self.lr}"),
                  (0 <= self.min_lr_ratio <= 1, f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}"),
                  (self.warmup >= 0 and self.ckpt_every >= 1 and self.log_every >= 1,
                   "warmup must be >= 0, ckpt_every and log_every >= 1")]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"SFTConfig: {msg}")


def pack_examples(examples, seq_len: int, pad_id: int):
    """Greedy packing: whole examples (ids, mask) concatenated into rows of seq_len + 1 tokens.

    An example never straddles two rows (so an SFT completion always sees its prompt); one longer than a row
    is truncated. Attention still runs causally across the examples of a row (nanoGPT-style packing): each
    example starts after an end-of-text token, which the model learns to treat as a reset.
    Returns tokens (R, seq_len + 1) long and mask (R, seq_len + 1) bool, where mask[r, i] says whether token i
    is a training target.
    """
    L = seq_len + 1
    # rows go into flat typed arrays (8 bytes a token), not lists of Python ints (~40 bytes a token): the toy
    # pretraining corpus packs to 18M tokens, and lists of them were most of the pretraining stage's peak memory
    # (examples may be a generator, so the caller need not hold its own list of them either)
    flat_t, flat_m, cur_t, cur_m = array("q"), array("b"), [], []
    for ids, mask in examples:
        ids, mask = list(ids[:L]), list(mask[:L])
        if len(cur_t) + len(ids) > L:                       # the example does not fit: close the row
            flat_t.extend(cur_t + [pad_id] * (L - len(cur_t)))
            flat_m.extend(cur_m + [0] * (L - len(cur_m)))
            cur_t, cur_m = [], []
        cur_t += ids
        cur_m += mask
    if cur_t:
        flat_t.extend(cur_t + [pad_id] * (L - len(cur_t)))
        flat_m.extend(cur_m + [0] * (L - len(cur_m)))
    if not flat_t:
        raise ValueError("pack_examples: no examples to pack")
    tokens = torch.frombuffer(flat_t, dtype=torch.long).view(-1, L).clone()      # clone: owns its memory
    mask = torch.frombuffer(flat_m, dtype=torch.int8).view(-1, L).bool()
    return tokens, mask


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
    """Linear warmup, then cosine decay from lr to lr * min_lr_ratio (R1 §2.3.1: the cold start decays 5e-5 ->
    5e-6; R1 §2.4: distillation decays to lr/10)."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def make_optimizer(model: torch.nn.Module, cfg: SFTConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (norm gains and 1-D params are not decayed)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return adamw([{"params": decay, "weight_decay": cfg.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


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
        start = load_resumable(ckpt_path, model, opt)["step"]
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
                # next-token CE + lambda * MTP loss (V3 eq. 25) + the sequence-wise balance loss (V3 eq. 17)
                loss = (parts["ce"] + core.args.mtp_lambda * parts["mtp"]) * tok_w + parts["balance"] * seq_w
            loss.backward()
            ce, mtp, bal = (parts[k].item() for k in ("ce", "mtp", "balance"))
            sums += torch.tensor([ce * n_local, mtp * n_local, bal * len(rows) * world / cfg.batch_size, n_local])
        gnorm = clip_grad_norm(model, cfg.grad_clip)            # EP: each expert counted once
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
            trim_heap()                       # freed activations back to the system (common.trim_heap), now and then
        bar.set_postfix(loss=f"{metrics['loss']:.3f}", tok_s=f"{metrics['tokens_per_s']:.0f}")
        if (step + 1) % cfg.ckpt_every == 0 or step == cfg.steps - 1:
            save_model(ckpt_path, model, dist, step=step + 1, optimizer=opt, **(extra_ckpt or {}))
    return metrics
