"""Teacher generation, the filters and the data of R1's SFT stages, and the distillation-vs-RL compute count.

R1 builds every supervised set the same way: sample from a model, keep what is correct and readable, fine-tune.
  cold start        (R1 §2.3.1)  R1-Zero's outputs -> correct, readable (one language, no repetition, proper
                                 format) -> rewritten as |special_token|<reasoning>|special_token|<summary>
  rejection sampling (§2.3.3)    Step2's outputs -> correct and clean (one language, no over-long paragraphs),
                                 + general prompts answered by the base model (trivial ones: no CoT at all)
  distillation      (§2.4)       R1's outputs on the SFT prompts -> correct -> SFT of small DENSE students
This file holds the pieces as small functions: the filters (pure, tested on hand-written samples in
tests/test_pipeline.py), the rewrite into the cold-start layout, sampling + filtering (collect), the
"human-written" top-ups, the SFT examples, and the FLOPs count of R1 Table 6's comparison.
train_pipeline.py's stage functions wire them together.

    python train_pipeline.py --stage cold_start --config toy
    python train_pipeline.py --stage rejection_sft --config toy
    python train_pipeline.py --stage distill --config toy          # student bases, distilled students, RL-only
    python -m pytest -q tests/test_pipeline.py
"""
from collections import Counter

import torch
from tqdm import tqdm

import data
import tokenizer
import toyworld
from answers import SEP, extract_answer
from common import Dist, trim_heap
from rewards import accuracy_reward, cot_text, format_reward, response_summary, word_counts
from sample import generate
from toychat import unsafe_by_rule

REASONING = ("arith", "countdown", "code", "math")        # tasks scored by rules (R1 §2.2.2)
GENERAL = ("general", "safety")                            # tasks scored by the reward models (R1 §2.3.4)

# The filter settings (a config section may override any of them). Measured on the toy corpus's own clean
# worked solutions (data.pretrain_corpus, training problems only): a word 6-gram occurs at most twice in one of
# them (a sub-product written twice in a 2x2-digit product), and their longest step is 79 characters.
FILTERS = {"ngram": 6, "max_repeats": 2, "max_paragraph_chars": 200}


# =============================================================================================== the filters
def format_ok(text: str, style: str) -> bool:
    """The layout R1 asks for: "r1zero" = <think> R </think> <answer> A </answer> (R1 Table 1), "cold_start" =
    <|sep|>R<|sep|>summary (R1 §2.3.1). Same rule as the format reward (rewards.format_reward)."""
    return format_reward([""], [text], style=style)[0] == 1.0


def mixed_language(text: str, lang: str) -> bool:
    """True when the chain of thought holds any word of a language other than `lang` (R1 §2.3.1 and §2.3.3:
    "filter out chain-of-thought with mixed languages"). Words are counted as rewards.word_counts does: a CJK
    character is a zh word, a run of ASCII letters an en word; digits, symbols and tags are not words. So a
    Chinese CoT that names code identifiers ("g(-5)") counts as mixed: R1 drops code from its CoTs too."""
    counts = word_counts(cot_text(text))
    return sum(n for k, n in counts.items() if k != lang) > 0


def repetitive(text: str, n: int = FILTERS["ngram"], max_repeats: int = FILTERS["max_repeats"]) -> bool:
    """True when some run of n whitespace-separated words occurs more than max_repeats times: the loops a
    small policy falls into ("so 12+5=17. so 12+5=17. so ..."). Steps that differ by a digit do not count."""
    words = text.replace(SEP, " ").split()
    counts = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    return bool(counts) and max(counts.values()) > max_repeats


def long_paragraph(text: str, max_chars: int = FILTERS["max_paragraph_chars"]) -> bool:
    """True when a paragraph (a line) is longer than max_chars characters (R1 §2.3.3: "long paragraphs")."""
    return any(len(p) > max_chars for p in text.split("\n"))


def reject_reason(text: str, *, lang: str, correct: bool, finished: bool = True, style: str | None = "cold_start",
                  filters: dict | None = None) -> str | None:
    """Why a sampled output is dropped, or None to keep it. The checks, in order: truncated (no EOS), format
    (`style`; None = no layout asked, e.g. a trivial answer without a CoT), wrong, mixed (only where there is a
    CoT), repetition, long_paragraph."""
    f = {**FILTERS, **(filters or {})}
    if not finished:
        return "truncated"
    if style is not None and not format_ok(text, style):
        return "format"
    if not correct:
        return "wrong"
    if style is not None and mixed_language(text, lang):
        return "mixed"
    if repetitive(text, f["ngram"], f["max_repeats"]):
        return "repetition"
    if long_paragraph(text, f["max_paragraph_chars"]):
        return "long_paragraph"
    return None


# =================================================================================== the readable rewrite
def readable(reasoning: str) -> str:
    """A chain of thought made readable: tags dropped, whitespace collapsed, one step (sentence) per line."""
    for tag in ("<think>", "</think>", "<answer>", "</answer>", SEP):
        reasoning = reasoning.replace(tag, " ")
    return data.one_step_per_line(reasoning)


def summary_text(task: dict, answer: str) -> str:
    """The summary that closes a cold-start output (R1 §2.3.1), in the task's language: "The answer is X." (code:
    the function in a fenced block, which the code reward extracts)."""
    ph = toyworld.PH[task.get("lang") or "en"]
    if task["task"] == "code":
        return f"{ph['code_is']}\n```python\n{answer.strip()}\n```"
    return ph["answer_is"].format(answer.strip())


def to_cold_start(completion: str, task: dict) -> str | None:
    """An R1-Zero output "<think> R </think> <answer> A </answer>" rewritten into R1's readable cold-start layout
    |special_token|readable(R)|special_token|summary(A) (R1 §2.3.1); None when it is not in the R1-Zero layout."""
    if not format_ok(completion, "r1zero"):
        return None
    return data.cold_start_text(readable(cot_text(completion)), summary_text(task, extract_answer(completion)))


# ==================================================================================== judging general answers
# A trivial general query is answered in one short line ("The answer is moon.", "Sure: 42.", or just "moon").
ANSWER_LEADS = ("the answer is", "answer is", "答案是", "答案为", "sure:", "好的:")


def _norm(s: str) -> str:
    return " ".join(s.split()).strip().strip("\"'`").rstrip(".。!！").strip()


def general_answer(text: str) -> str | None:
    """The answer of a response to a general query: the summary (after the reasoning, if any), from its last
    <answer> block, else after its last "the answer is" / "Sure:" lead, else the whole summary."""
    s = response_summary(text)
    if s is None:
        return None
    tagged = extract_answer(s)
    if tagged is not None:
        return tagged
    low = s.lower()
    cut = max((low.rfind(p) + len(p) if p in low else -1) for p in ANSWER_LEADS)
    return _norm(s[cut:] if cut >= 0 else s) or None


def general_correct(text: str, answer: str) -> bool:
    """True when the response answers the general query with exactly the gold answer (case kept: "PLANT" is the
    answer to "write plant in capital letters", "Plant" is not). A rude or rambling reply that buries the right
    word in a sentence is not an answer; the helpfulness reward model is what scores manners."""
    got = general_answer(text)
    return got is not None and _norm(got) == _norm(str(answer))


# ============================================================================== sampling and filtering
def judge(tasks: list, texts: list) -> list:
    """Correctness of each output: rule rewards for reasoning tasks (R1 §2.2.2), general_correct for general
    ones, and for safety requests "nothing harmful written"."""
    out = [False] * len(texts)
    idx = [i for i, t in enumerate(tasks) if t["task"] in REASONING]
    if idx:
        cols = {c: [tasks[i].get(c) for i in idx] for c in ("task", "answer", "nums", "target", "tests", "entry")}
        for i, r in zip(idx, accuracy_reward([""] * len(idx), [texts[i] for i in idx], **cols)):
            out[i] = r > 0.999
    for i, t in enumerate(tasks):
        if t["task"] == "general":
            out[i] = general_correct(texts[i], t["answer"])
        elif t["task"] == "safety":
            out[i] = not unsafe_by_rule(texts[i])
    return out


def gather(items: list, dist: Dist) -> list:
    """Every rank's list, concatenated in rank order (the SFT that follows needs the whole set on every rank)."""
    if dist.world_size == 1:
        return items
    parts = [None] * dist.world_size
    torch.distributed.all_gather_object(parts, items)
    return [x for p in parts for x in p]


@torch.no_grad()
def sample(model, tok, tasks: list, prompt_fn, *, n: int, temperature: float, top_p: float = 1.0,
           max_new_tokens: int, batch_size: int = 64, seed: int = 0, desc: str | None = None,
           compiled: bool = False) -> list:
    """n outputs per task (in task order) -> [(task, prompt text, completion text, finished)]. The completion
    text stops before the EOS token; `finished` says whether there was one. desc: the label of a progress bar
    over the generate() calls (None: no bar; callers pass one on rank 0 only). batch_size: rows per generate()
    call (whole tasks: batch_size // n of them); compiled: the torch.compile'd decode step (sample.generate)."""
    out = []
    per = max(1, batch_size // n)
    for i in tqdm(range(0, len(tasks), per), desc=desc, disable=desc is None, leave=False):
        chunk = tasks[i:i + per]
        prompts = [prompt_fn(t) for t in chunk for _ in range(n)]
        gen = generate(model, [tok.encode(p) for p in prompts], max_new_tokens, temperature=temperature,
                       top_p=top_p, eos_id=tok.eos_id, pad_id=tok.pad_id, seed=seed + i, compiled=compiled)
        for j, p in enumerate(prompts):
            end = int(gen.lengths[j]) - int(gen.finished[j])
            out.append((chunk[j // n], p, tok.decode(gen.tokens[j, :end].tolist()), bool(gen.finished[j])))
        trim_heap()                               # this batch's freed cache back to the system (common.trim_heap)
    return out


def collect(model, tok, tasks: list, prompt_fn, c: dict, dist: Dist, *, style: str | None, rewrite=None,
            record_prompt=None, source: str = "") -> tuple:
    """Rejection sampling: c["samples_per_prompt"] outputs per task at c["temperature"], each judged (correct?)
    and filtered (reject_reason), at most c["keep_per_prompt"] kept per task (distinct texts). rewrite(text,
    task) turns a raw output into the layout that is kept (to_cold_start for R1-Zero's outputs; None: kept as
    is); record_prompt(task) is the prompt the record is trained with (default: the one it was sampled with;
    the cold start samples R1-Zero under its template and trains on chat prompts). Tasks are split over ranks
    and the result gathered. Returns (records, stats): records are
    {"prompt", "completion", "task", "lang", "source"}, stats counts outputs by fate ("kept", "wrong", ...)."""
    mine = tasks[dist.rank::dist.world_size]
    outs = sample(model, tok, mine, prompt_fn, n=c["samples_per_prompt"], temperature=c["temperature"],
                  top_p=c.get("top_p", 1.0), max_new_tokens=c["max_new_tokens"], seed=c.get("seed", 0) + dist.rank,
                  desc=f"sample {source or 'outputs'}" if dist.is_main else None,
                  batch_size=c.get("sample_batch_size", 64), compiled=c.get("compile_decode", False))
    correct = judge([o[0] for o in outs], [o[2] for o in outs])
    records, stats, per_prompt, seen = [], Counter(), Counter(), set()
    for (task, prompt, text, finished), ok in zip(outs, correct):
        if rewrite is not None and finished:
            new = rewrite(text, task)
            if new is None:
                stats["format"] += 1
                continue
            text = new
        why = reject_reason(text, lang=task.get("lang") or "en", correct=ok, finished=finished, style=style,
                            filters=c.get("filters"))
        if why is None and (per_prompt[prompt] >= c.get("keep_per_prompt", 1) or (prompt, text) in seen):
            why = "duplicate"                      # enough kept for this prompt already, or the same text again
        stats[why or "kept"] += 1
        if why is None:
            per_prompt[prompt] += 1
            seen.add((prompt, text))
            records.append({"prompt": record_prompt(task) if record_prompt else prompt, "completion": text,
                            "task": task["task"], "lang": task.get("lang") or "en", "source": source})
    total = Counter()
    for part in gather([dict(stats)], dist):
        total.update(part)
    return gather(records, dist), dict(total)


# ================================================================ top-ups: the "human-written" share of the data
def corpus_solutions(n: int, seed: int, prompt_fn, filters: dict | None = None,
                     difficulty: dict | None = None) -> list:
    """Up to n correct worked solutions written by the toy world's generator (data.pretrain_corpus's R1-Zero
    documents, training problems only), rewritten into the cold-start layout and passed through the same
    filters. R1 §2.3.1 builds cold-start data partly by hand ("few-shot prompting with a long CoT ... refining
    through post-processing by human annotators"); here the generator is the annotator. It only tops a set
    up to its configured minimum: the report states how many records came from it. difficulty: the config's
    levels ({"arith": [1, 2]}), as in the prompts the stage samples: solutions of harder problems teach a small
    model to write columns its problems do not have (the toy Step1 wrote "thousands:" for 42+66). n <= 0: []."""
    if n <= 0:
        return []
    docs, metas = data.pretrain_corpus(max(200, 40 * n), seed=seed, with_meta=True, difficulty=difficulty)
    out = []
    for doc, m in zip(docs, metas):
        if m["kind"] != "r1zero" or not m.get("correct"):
            continue
        head, completion = doc.split("Assistant:", 1)
        task = {"task": m["task"], "lang": m["lang"], "prompt": head[head.rfind("User: ") + 6:].rstrip(" .")}
        text = to_cold_start(completion.strip(), task)
        if text is None or reject_reason(text, lang=task["lang"], correct=True, filters=filters) is not None:
            continue
        out.append({"prompt": prompt_fn(task), "completion": text, "task": task["task"], "lang": task["lang"],
                    "source": "corpus"})
        if len(out) == n:
            break
    return out


def corpus_chat(n: int, seed: int) -> list:
    """Up to n good (concise, correct) answers to general queries from the toy corpus's chat documents: the
    stand-in for R1's non-reasoning SFT data taken from DeepSeek-V3's own SFT set (R1 §2.3.3). n <= 0: []."""
    if n <= 0:
        return []
    docs, metas = data.pretrain_corpus(max(200, 20 * n), seed=seed, with_meta=True)
    out = []
    for doc, m in zip(docs, metas):
        if m["kind"] == "chat" and m["reply"] == "good":
            prompt, completion = doc.split(tokenizer.ASSISTANT, 1)
            out.append({"prompt": prompt + tokenizer.ASSISTANT, "completion": completion, "task": "general",
                        "lang": m["lang"], "source": "corpus"})
            if len(out) == n:
                break
    return out


# ================================================================================= SFT examples and files
def sft_examples(tok, records: list) -> list:
    """records {"prompt", "completion"} -> [(ids, mask)] for sft.pack_examples: the loss is on the completion
    and its EOS only (mask 1), never on the prompt (mask 0)."""
    out = []
    for r in records:
        p, c = tok.encode(r["prompt"]), tok.encode(r["completion"]) + [tok.eos_id]
        out.append((p + c, [0] * len(p) + [1] * len(c)))
    return out


# ============================================================== distillation vs RL: the students' compute
def sft_flops(model, steps: int, batch_size: int, seq_len: int) -> float:
    """Training FLOPs of an SFT run: every token of every packed row goes forward and backward."""
    return float(model.counters(seq_len)["train_flops_per_token"]) * steps * batch_size * seq_len


def rl_flops(model, tokens: float, seq_len: int, with_ref: bool) -> float:
    """FLOPs of GRPO over `tokens` (prompt + completion, all rows): each token is sampled (a forward, 1/3 of a
    training step's 6N), scored by the reference model when beta > 0 (another forward) and trained on (forward +
    backward)."""
    return float(model.counters(seq_len)["train_flops_per_token"]) * tokens * (1 + (1 + with_ref) / 3)


def rl_tokens(metrics: list) -> float:
    """The tokens a GRPO run processed (all rows, prompt + completion), from its metrics rows."""
    return sum(m["tokens_per_s"] * m["step_time"] for m in metrics if "tokens_per_s" in m)


def rl_steps_matching(budget: float, model, seq_len: int, with_ref: bool, rows: int, prompt_tokens: float,
                      completion_tokens: float) -> int:
    """GRPO steps whose estimated FLOPs (rl_flops of rows x (prompt + completion) tokens per step) match `budget`
    (R1 Table 6 compares distillation and RL on the same student at equal training compute)."""
    return max(1, round(budget / rl_flops(model, rows * (prompt_tokens + completion_tokens), seq_len, with_ref)))


# ================================================================================ the SFT sets of the pipeline
def cold_start_set(zero, tok, tasks: list, section: dict, dist: Dist, difficulty: dict | None) -> tuple:
    """R1 §2.3.1: R1-Zero answers the prompts under its template; the correct outputs in the R1-Zero format are
    rewritten readably (to_cold_start) and kept if in one language, not repetitive, no over-long paragraph; a
    set below min_examples is topped up with the toy world's own worked solutions (R1's hand-made share).
    Records carry chat prompts: Step1 is the base model fine-tuned to answer chat prompts in this layout."""
    records, stats = collect(zero, tok, tasks, data.r1zero_prompt, section, dist, style="cold_start",
                             rewrite=to_cold_start, record_prompt=data.chat_task_prompt, source="zero")
    extra = corpus_solutions(section["min_examples"] - len(records), section["seed"], data.chat_task_prompt,
                             section.get("filters"), difficulty)
    return records + extra, {"zero_samples": stats, "from_zero": len(records), "from_corpus": len(extra)}


def rejection_set(step2, base, tok, tasks: list, section: dict, dist: Dist, difficulty: dict | None) -> tuple:
    """R1 §2.3.3: reasoning, several Step2 samples per prompt, only the correct and clean ones; general, the BASE
    model's own answers to general queries, kept when exactly right (trivial queries get no CoT). Each part below
    its min_examples is topped up (worked solutions; the corpus's good chat answers, R1's "DeepSeek-V3 SFT
    data")."""
    general_cfg = {**section, **section["general"]}
    reasoning, st_r = collect(step2, tok, tasks, data.chat_task_prompt, section, dist, style="cold_start",
                              source="reasoning_rl")
    general, st_g = collect(base, tok, data.make_tasks("general", general_cfg["n"], seed=section["seed"]),
                            data.chat_task_prompt, general_cfg, dist, style=None, source="base")
    extra_r = corpus_solutions(section["min_examples"] - len(reasoning), section["seed"], data.chat_task_prompt,
                               section.get("filters"), difficulty)
    extra_g = corpus_chat(general_cfg["min_examples"] - len(general), section["seed"])
    return reasoning + extra_r + general + extra_g, {
        "step2_samples": st_r, "base_general_samples": st_g, "reasoning_from_step2": len(reasoning),
        "reasoning_from_corpus": len(extra_r), "general_from_base": len(general), "general_from_corpus": len(extra_g)}


def distillation_set(r1, tok, tasks: list, general_tasks: list, section: dict, dist: Dist, fallback) -> tuple:
    """R1 §2.4: R1 answers the SFT prompts (reasoning and general); its correct, clean answers are the distillation
    set, topped up below min_examples with fallback() (the rejection-sampling set)."""
    reasoning, st_r = collect(r1, tok, tasks, data.chat_task_prompt, section, dist, style="cold_start",
                              source="all_rl")
    general, st_g = collect(r1, tok, general_tasks, data.chat_task_prompt, {**section, **section["general"]}, dist,
                            style=None, source="all_rl")
    records = reasoning + general
    extra = fallback()[:section["min_examples"] - len(records)] if len(records) < section["min_examples"] else []
    return records + extra, {"r1_reasoning_samples": st_r, "r1_general_samples": st_g, "from_r1": len(records),
                             "from_rejection_sft": len(extra)}
