"""R1 §2.3.4's reward models: helpfulness (Bradley-Terry on preference pairs, scores the final answer only) and
safety (pointwise safe / unsafe, scores the whole response, reasoning included), end to end.

    python train_pipeline.py --stage reward_models --config toy      # trains both on the base model, reports accuracy
    python -m pytest -q tests/test_reward_model.py

R1's final RL stage scores general prompts with these two learned models; reasoning prompts keep rule rewards
(R1 §2.2.2: neural rewards on reasoning get hacked). Both are our Transformer with its LM head swapped for a scalar
head read at the last token; "higher is better" for both (the safety RM's score is the logit of SAFE).
RewardModelReward feeds each the right part of a response.
"""
import math
import os

import torch
import torch.nn as nn
from tqdm import tqdm

import data
import toychat
from answers import _strip_end_tokens, _text
from checkpoint import load_checkpoint, save_model
from common import MetricsLogger, unwrap
from model import ModelArgs, Transformer
from rewards import _column, response_summary
from sft import SFTConfig, batch_rows, lr_at, make_optimizer


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
    """A RewardModel saved by build(), in eval mode."""
    ck = load_checkpoint(path)
    rm = RewardModel(ModelArgs(**ck["model_args"]))
    rm.load_state_dict(ck["model"])
    return rm.to(device).eval()



# --------------------------------------------------------------------------------------------- as rewards
class RewardModelReward:
    """Wraps a learned scorer as a reward function. score_fn(prompts: list[str], texts: list[str]) -> sequence of
    floats (a list or a 1-D tensor). on="answer": the RM sees only the final summary (R1 helpfulness RM);
    on="full": the whole response including the reasoning (R1 safety RM). Responses with no summary get
    `missing` and are not sent to the scorer. Texts are cut to their last max_chars characters."""

    def __init__(self, score_fn, on="answer", name=None, missing=0.0, max_chars=8000):
        if on not in ("answer", "full"):
            raise ValueError(f"RewardModelReward: on must be 'answer' or 'full', got {on!r}")
        self.score_fn, self.on, self.missing, self.max_chars = score_fn, on, float(missing), max_chars
        self.__name__ = name or f"rm_{on}"

    def select(self, completion):
        text = _strip_end_tokens(_text(completion)) if self.on == "full" else response_summary(completion)
        return text[-self.max_chars:] if text else None

    def __call__(self, prompts, completions, **columns):
        n = len(completions)
        prompts = [_text(p) for p in _column(prompts, n, "prompts", "")]
        texts = [self.select(c) for c in completions]
        idx = [i for i, t in enumerate(texts) if t is not None]
        out = [self.missing] * n
        if idx:
            scores = self.score_fn([prompts[i] for i in idx], [texts[i] for i in idx])
            scores = scores.tolist() if hasattr(scores, "tolist") else list(scores)
            if len(scores) != len(idx):
                raise ValueError(f"{self.__name__}: score_fn returned {len(scores)} scores for {len(idx)} texts")
            for i, s in zip(idx, scores):
                s = float(s)
                out[i] = s if math.isfinite(s) else self.missing
        return out




def load_reward_models(paths, device):
    """(helpfulness RM, safety RM) from their model.pt paths."""
    return tuple(load_reward_model(p, device) for p in paths)


def rm_rewards(rms, tok, max_len: int):
    """The two reward models as TRL-style reward functions with values in (0, 1): sigmoid of the helpfulness
    RM's score of the final answer/summary, and the safety RM's P(safe) of the whole response, reasoning
    included (R1 §2.3.4). An empty answer is unhelpful (score -10) but harmless (+10)."""
    def scorer(rm):
        return lambda prompts, texts: torch.sigmoid(reward_model_scores(rm, tok, prompts, texts, max_len))
    return (RewardModelReward(scorer(rms[0]), on="answer", name="helpful", missing=1 / (1 + math.exp(10))),
            RewardModelReward(scorer(rms[1]), on="full", name="safety", missing=1 / (1 + math.exp(-10))))


# ------------------------------------------------------------------------------------------ the toy world's data
def preference_examples(split: str, n: int, seed: int) -> list:
    """Helpfulness data: {"prompt" (chat format), "chosen", "rejected"} from the toy world's preference pairs."""
    return [{"prompt": data.chat_prompt(x["prompt"]), "chosen": x["chosen"], "rejected": x["rejected"]}
            for x in toychat.make_preference_pairs(n, seed=seed, split=split)]


def safety_examples(split: str, n: int, seed: int) -> list:
    """Safety data: {"prompt", "response", "safe"}; half of the responses with a CoT are shown in the cold-start
    layout the policy writes."""
    return [{"prompt": data.chat_prompt(x["prompt"]), "safe": not x["unsafe"],
             "response": data.think_to_cold_start(x["response"]) if i % 2 else x["response"]}
            for i, x in enumerate(toychat.make_safety_examples(n, seed=seed, split=split))]


KINDS = {"helpful": ("pairs", preference_examples), "safety": ("pointwise", safety_examples)}


def encode_examples(tok, examples: list, kind: str, max_len: int) -> list:
    """Examples -> what rm_loss takes: (chosen_ids, rejected_ids) pairs or (ids, label) points."""
    if kind == "pairs":
        return [(encode_rm(tok, x["prompt"], x["chosen"], max_len), encode_rm(tok, x["prompt"], x["rejected"], max_len))
                for x in examples]
    return [(encode_rm(tok, x["prompt"], x["response"], max_len), int(x["safe"])) for x in examples]


def build(which: str, load_base, tok, section: dict, scfg, dist, out_dir: str, wrap) -> float:
    """Train reward model `which` ("helpful" | "safety") from the base LM (load_base() -> Transformer) on the toy
    world's data (section: the config's reward_models section; scfg: its sft.SFTConfig), write out_dir/model.pt
    and metrics.jsonl, and return its held-out accuracy. wrap(model) -> the DDP-wrapped model."""
    kind, make = KINDS[which]
    L = section["seq_len"]
    torch.manual_seed(section["seed"])
    rm = RewardModel.from_lm(load_base()).to(dist.device)
    train_reward_model(wrap(rm), encode_examples(tok, make("train", section["n_train"], section["seed"]), kind, L),
                       kind, scfg, dist, out_dir, tok.pad_id, desc=f"rm_{which}")
    acc = reward_model_accuracy(rm, tok, make("eval", section["n_eval"], section["seed"]), kind, L)
    save_model(os.path.join(out_dir, "model.pt"), rm, dist, step=scfg.steps, tokenizer=tok.name, kind=kind)
    return acc
