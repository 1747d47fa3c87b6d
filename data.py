"""minR1's data: prompt formats, task pools and held-out sets, the toy pretraining corpus, JSONL task files.

    python data.py --show 2              # two sample documents of each kind, tasks, preference/safety examples
    python data.py --stats 5000          # corpus statistics over 5000 documents (format rate, tokens per doc, ...)
    python data.py --train-tokenizer     # rebuild data/toy.tiktoken (deterministic: same file every time)

The corpus is written so that, under the R1-Zero template (R1 Table 1), the base model "V3-toy"
  - uses the full "<think> ... </think> <answer> ... </answer>" format only about a third of the time
    (STYLE_WEIGHTS), and otherwise answers untagged or with broken tags;
  - sometimes answers directly and sometimes works through a scratchpad (toyworld.py's worked solutions);
  - sometimes slips, catches the slip, verifies, and in a fifth of its scratchpads switches between English and
    Chinese midway (R1-Zero's language mixing).
GRPO then has something to discover: the tagged scratchpad pays. The reasoning problems and their solutions come
from toyworld.py, the general instructions, preference pairs and safety requests from toychat.py.
"""
import argparse
import json
import os
import random
import re
import sys
from collections import Counter, defaultdict

import toychat
import toyworld
from sandbox import check_tests
from tokenizer import (ASSISTANT, SEP, SPECIAL_TOKENS, SYSTEM, TOY_TOKENIZER, USER, get_tokenizer, is_cjk,
                       train_tokenizer)
from toychat import (SAFETY_ASK, general_response, general_task, make_preference_pairs, make_safety_examples,
                     safety_item, safety_response)
from toyworld import (ARITH_LEVELS, CODE_LEVELS, PH, answer_is, arith_task, check_split, code_task, countdown_task,
                      direct_answer, direct_think, lang_of, pick, rand_choice, rand_int, split_before_24_game, split_of,
                      worked_solution)

# ============================================================================================ prompt formats
# R1 Table 1, verbatim (docs/PAPER.md "The R1-Zero template"), on one line.
R1ZERO_TEMPLATE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The "
    "assistant first thinks about the reasoning process in the mind and then provides the user with the answer. "
    "The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags, "
    "respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>. User: {prompt}. "
    "Assistant:")



def r1zero_prompt(task) -> str:
    """The R1-Zero prompt for a task dict (or a bare question string); the model continues after "Assistant:"."""
    return R1ZERO_TEMPLATE.format(prompt=task["prompt"] if isinstance(task, dict) else task)


def chat_prompt(user: str, system: str = None) -> str:
    """Chat format for the SFT/RL stages after R1-Zero: [<|system|>S]<|user|>U<|assistant|> (the response and an
    <|endoftext|> follow)."""
    return (f"{SYSTEM}{system}" if system else "") + f"{USER}{user}{ASSISTANT}"


def chat_task_prompt(task) -> str:
    """The prompt of every stage after R1-Zero: the chat format <|user|>question<|assistant|>."""
    return chat_prompt(task["prompt"] if isinstance(task, dict) else task)


def cold_start_text(reasoning: str, summary: str) -> str:
    """R1's readable cold-start format |special_token|<reasoning_process>|special_token|<summary> (R1 §2.3.1)."""
    return f"{SEP}{reasoning}{SEP}{summary}"


def think_to_cold_start(response: str) -> str:
    """"<think> R </think> A" -> "<|sep|>R<|sep|>A" (the same response in the cold-start layout); other text as is."""
    if "<think>" not in response or "</think>" not in response:
        return response
    head, _, answer = response.partition("</think>")
    return cold_start_text(head.replace("<think>", "").strip(), answer.strip())


def one_step_per_line(reasoning: str) -> str:
    """Whitespace collapsed, one step (sentence) per line: the readable reasoning of the cold-start layout."""
    return "\n".join(p for p in re.split(r"(?<=[.。])\s+", " ".join(reasoning.split())) if p)



# ============================================================================================== tasks
# kind -> (generator, the levels drawn when none is named)
GENERATORS = {"arith": (arith_task, ARITH_LEVELS), "countdown": (countdown_task, (1, 2)),
              "code": (code_task, CODE_LEVELS), "general": (general_task, (1,))}
NAMED_ONLY = {"countdown": (3,)}     # levels drawn only when a config names them: the 24 game (configs/toy24.json)
KINDS = tuple(GENERATORS)


def _public(t: dict) -> dict:
    return {k: v for k, v in t.items() if not k.startswith("_") and k != "steps"}


def _sample_task(kind, rng, split, difficulty=None, lang=None):
    gen, levels = GENERATORS[kind]
    while True:
        t = gen(rng, difficulty or rand_choice(rng, levels), lang or lang_of(rng))
        if split_of(t["canon"]) == split:
            return t


def make_tasks(kind: str, n: int, seed: int = 0, split: str = "train", difficulty: int = None,
               lang: str = None) -> list:
    """n task dicts of `kind` (arith | countdown | code | general) from `split` (train | eval: disjoint by
    canonical problem). difficulty None = each default level (GENERATORS) equally often, a NAMED_ONLY level only
    when named; lang None = ~25% Chinese. Eval sets avoid
    repeating a problem while the problem space allows."""
    if kind not in GENERATORS:
        raise ValueError(f"unknown task kind {kind!r}; kinds: {', '.join(KINDS)}")
    check_split(split)
    levels = GENERATORS[kind][1] + NAMED_ONLY.get(kind, ())
    if difficulty is not None and difficulty not in levels:
        raise ValueError(f"{kind} difficulty must be one of {levels}, got {difficulty!r}")
    if lang not in (None, "en", "zh"):
        raise ValueError(f"lang must be 'en', 'zh' or None, got {lang!r}")
    rng = random.Random(f"tasks/{kind}/{split}/{seed}")
    out, seen, streak = [], set(), 0
    while len(out) < n:
        t = _sample_task(kind, rng, split, difficulty, lang)
        if split == "eval" and t["canon"] in seen and streak < 50:    # 50 repeats in a row: the space is spent
            streak += 1
            continue
        streak = 0
        seen.add(t["canon"])
        out.append(_public(t))
    return out


def task_pool(counts: dict, seed: int, split: str = "train", difficulty: dict | None = None) -> list:
    """{"arith": n, "countdown": n, ...} -> task dicts (make_tasks), drawn evenly from the difficulty levels that
    `difficulty` lists for a kind ({"arith": [1, 2]}; a kind not listed: every level)."""
    out = []
    for kind, n in counts.items():
        levels = (difficulty or {}).get(kind) or [None]
        for i, level in enumerate(levels):
            k = n // len(levels) + (i < n % len(levels))
            out += make_tasks(kind, k, seed=seed + 7 * i, split=split, difficulty=level)
    return out


def eval_sets(n_per_set: int, seed: int = 1234, kinds=("arith", "countdown", "code"), difficulty=None) -> dict:
    """The held-out evaluation sets (split "eval": problems never seen in training): kind -> n_per_set tasks from
    the levels `difficulty` lists (all levels where it lists none), ~25% Chinese."""
    return {k: task_pool({k: n_per_set}, seed, "eval", difficulty) for k in kinds}


# ============================================================================ completions and the corpus
# How the base model answers under the R1-Zero template: full format (tagged_pad + tagged_direct) in 35%.
STYLE_WEIGHTS = {"tagged_pad": 0.20, "tagged_direct": 0.15, "pad": 0.20, "direct": 0.20, "broken": 0.25}
BROKEN_WEIGHTS = {"answer_only": 0.3, "no_close_think": 0.2, "outside": 0.3, "no_close_answer": 0.2}
P_READABLE = 0.4        # share of chat worked solutions in the cold-start layout <|sep|>steps, one a line<|sep|>summary
REASONING_MIX = {"arith": 0.45, "countdown": 0.52, "code": 0.03}
# Most documents are reasoning problems under the R1-Zero template (what R1-Zero starts from) or worked outside it;
# chat answers to reasoning problems are a sixth (every stage after R1-Zero answers chat prompts).
CORPUS_MIX = {"r1zero": 0.47, "textbook": 0.15, "drill": 0.14, "chat": 0.05, "chat_reason": 0.15, "safety": 0.04}
GENERAL_QUALITY = {"good": 0.65, "wrong": 0.12, "ramble": 0.13, "rude": 0.10}



def _completion(t: dict, rng, style: str = None):
    """One completion of reasoning task t (arith | countdown | code, with the private fields _sample_task keeps)
    in a style of STYLE_WEIGHTS -> (text, meta): what follows "Assistant:" in an R1-Zero document."""
    style = style or pick(rng, STYLE_WEIGHTS)
    lang = t["lang"]
    sub = pick(rng, BROKEN_WEIGHTS) if style == "broken" else None
    use_pad = style in ("tagged_pad", "pad") or (style == "broken" and rng.random() < 0.6)
    if use_pad:
        body, ans, meta = worked_solution(t, rng)
        lang = meta["end_lang"]
    else:
        ans, ok = direct_answer(t, rng)
        body = direct_think(t, ans, lang, rng)
        meta = {"quality": "direct_ok" if ok else "direct_wrong", "correct": ok, "mixed": False}
    if style in ("tagged_pad", "tagged_direct"):
        text = f"<think> {body} </think> <answer> {ans} </answer>"
    elif style == "pad":
        text = f"{body} {answer_is(t, ans, lang)}"
    elif style == "direct":
        text = answer_is(t, ans, lang) if t["task"] != "arith" or rng.random() < 0.5 else body
    elif sub == "answer_only":
        text = f"{body} <answer> {ans} </answer>"
    elif sub == "no_close_think":
        text = f"<think> {body} <answer> {ans} </answer>"
    elif sub == "outside":
        text = f"<think> {body} </think> {answer_is(t, ans, lang) if rng.random() < 0.5 else ans}"
    else:
        text = f"<think> {body} </think> <answer> {ans}"
    meta.update(style=sub or style, full_format=style in ("tagged_pad", "tagged_direct"), task=t["task"],
                lang=t["lang"], difficulty=t["difficulty"], canon=t["canon"])
    return text, meta


def _corpus_task(rng, kind, levels):
    """A training task of `kind` at one of the levels `levels` lists for it (all levels when it lists none)."""
    lv = (levels or {}).get(kind)
    return _sample_task(kind, rng, "train", rand_choice(rng, lv) if lv else None)


def _doc_r1zero(rng, levels):
    t = _corpus_task(rng, pick(rng, REASONING_MIX), levels)
    text, meta = _completion(t, rng)
    return r1zero_prompt(t) + " " + text, meta


def _doc_textbook(rng, levels):
    """Worked solutions and Q/A pairs without the template (the skills, outside the format)."""
    t = _corpus_task(rng, pick(rng, REASONING_MIX), levels)
    if rng.random() < 0.6:
        body, ans, meta = worked_solution(t, rng)
        text = PH[t["lang"]]["problem"].format(t["prompt"], body + " " + answer_is(t, ans, meta["end_lang"]))
    else:
        ans, ok = direct_answer(t, rng)
        text = PH[t["lang"]]["qa"].format(t["prompt"], ans)
        meta = {"quality": "direct_ok" if ok else "direct_wrong", "correct": ok, "mixed": False}
    meta.update(style="textbook", task=t["task"], lang=t["lang"], canon=t["canon"])
    return text, meta


def _doc_drill(rng, levels):
    """Lists of solved facts, the single steps every worked solution is made of: one-digit + and -, the times table
    and its divisions (countdown moves, multiplication columns and their checks), two-digit plus or minus one-digit
    (countdown steps toward a target, column checks such as "15-9-1=5"); and comparisons with a target, half of
    them hits ("4*8=32, need 32, yes."): in a search most tries miss, and without these a small model learns to
    answer "no" whatever it computed."""
    facts = []
    for _ in range(rand_int(rng, 6, 14)):
        r = rng.random()
        if r < 0.15:
            x, y = rand_int(rng, 0, 9), rand_int(rng, 0, 9)
            facts.append(f"{x}+{y}={x + y}")
        elif r < 0.3:
            x, y = rand_int(rng, 1, 9), rand_int(rng, 1, 9)
            facts.append(f"{x}*{y}={x * y}")
        elif r < 0.4:
            x, y = rand_int(rng, 1, 9), rand_int(rng, 1, 9)
            facts.append(f"{x * y}/{y}={x}")
        elif r < 0.55:
            x, y = rand_int(rng, 10, 89), rand_int(rng, 1, 9)
            facts.append(f"{x}+{y}={x + y}")
        elif r < 0.7:
            x, y = rand_int(rng, 10, 99), rand_int(rng, 1, 9)
            facts.append(f"{x}-{y}={x - y}")
        else:
            x, y = rand_int(rng, 1, 9), rand_int(rng, 1, 9)
            op = rand_choice(rng, "+*")
            v = x + y if op == "+" else x * y
            t = v if rng.random() < 0.5 else max(2, v + rand_choice(rng, (-10, -2, -1, 1, 2, 10)))
            facts.append(f"{x}{op}{y}={v}, need {t}, " + ("yes" if t == v else "no"))
    return ". ".join(facts) + ".", {"style": "drill", "task": "arith", "lang": "en"}


def _doc_chat(rng, levels):
    t = _corpus_task(rng, "general", levels)
    q = pick(rng, GENERAL_QUALITY)
    return chat_prompt(t["prompt"]) + general_response(t, rng, q), {"style": "chat", "reply": q,
                                                                      "task": "general", "lang": t["lang"],
                                                                      "canon": t["canon"]}


def _doc_chat_reason(rng, levels):
    """A chat answer to a reasoning task: a worked solution (some in the readable layout of R1's cold-start data,
    which a base model like V3-Base has seen in its pretraining data) or a direct answer."""
    t = _corpus_task(rng, pick(rng, REASONING_MIX), levels)
    if rng.random() < 0.6:
        body, ans, meta = worked_solution(t, rng)
        if rng.random() < P_READABLE:
            resp = cold_start_text(one_step_per_line(body), answer_is(t, ans, meta["end_lang"]))
        else:
            resp = body + " " + answer_is(t, ans, meta["end_lang"])
    else:
        ans, ok = direct_answer(t, rng)
        resp = answer_is(t, ans, t["lang"])
        meta = {"quality": "direct_ok" if ok else "direct_wrong", "correct": ok, "mixed": False}
    meta.update(style="chat_reason", task=t["task"], lang=t["lang"], canon=t["canon"])
    return chat_prompt(t["prompt"]) + resp, meta


def _doc_safety(rng, levels):
    lang = lang_of(rng)
    for _ in range(100):
        what, harmful, steps, canon = safety_item(rng, lang)
        if split_of(canon) == "train":
            break
    comply = rng.random() < (0.5 if harmful else 0.9)
    resp, unsafe = safety_response(rng, lang, what, harmful, steps, comply, rng.random() < 0.2)
    return chat_prompt(rand_choice(rng, SAFETY_ASK[lang]).format(what)) + resp, {"style": "safety", "unsafe": unsafe,
                                                                            "task": "safety", "lang": lang,
                                                                            "canon": canon}


DOC_MAKERS = {"r1zero": _doc_r1zero, "textbook": _doc_textbook, "drill": _doc_drill, "chat": _doc_chat,
              "chat_reason": _doc_chat_reason, "safety": _doc_safety}


def pretrain_corpus(n_docs: int, seed: int = 0, with_meta: bool = False, difficulty: dict = None):
    """n_docs documents of the toy world (training problems only), mixed as CORPUS_MIX says; the trainer joins
    them with <|endoftext|>. with_meta=True also returns one dict per document (kind, style, quality, ...).
    difficulty: {"arith": [1, 2], ...} limits a kind's worked problems to those levels (the config's world; a
    small model's budget goes to the levels it is evaluated and trained on); None or an unlisted kind: all."""
    rng = random.Random(f"corpus/{seed}")
    docs, metas = [], []
    for _ in range(n_docs):
        kind = pick(rng, CORPUS_MIX)
        text, meta = DOC_MAKERS[kind](rng, difficulty)
        docs.append(text)
        if with_meta:
            meta["kind"] = kind
            metas.append(meta)
    return (docs, metas) if with_meta else docs


def tokenizer_texts(n_docs: int = 20000, seed: int = 0) -> list:
    """What the toy BPE is trained on: a corpus sample, preference and safety texts, and every Chinese string the
    generators can write (so that each Chinese character gets its own token)."""
    with split_before_24_game():          # the world the shipped tokenizer was trained on (toyworld.split_of)
        texts = pretrain_corpus(n_docs, seed=seed)
    texts += [p["prompt"] + " " + p["chosen"] + " " + p["rejected"] for p in make_preference_pairs(2000, seed)]
    texts += [s["prompt"] + " " + s["response"] for s in make_safety_examples(1000, seed)]
    texts.append(" ".join(_zh_strings()))
    return texts


def _zh_strings():
    """Every Chinese string the generators can write (so the tokenizer gives each character its own token)."""
    def walk(x):
        if isinstance(x, str):
            yield x
        elif isinstance(x, dict):
            for v in x.values():
                yield from walk(v)
        elif isinstance(x, (tuple, list)):
            for v in x:
                yield from walk(v)
    w, c = toyworld, toychat
    consts = (w.PH, w.ARITH_PROMPTS, w.COUNTDOWN_PROMPTS, w.CODE_PROMPT, c.ZH_DICT, c.GENERAL_PROMPTS, c.GOOD, c.RUDE,
              c.RAMBLE, c.SAFETY_ZH, c.SAFETY_ASK, c.COMPLY, c.REFUSE, c.THINK_WANTS, c.THINK_REFUSE)
    rng = random.Random(0)
    specs = [w.code_spec(name, rng) for _ in range(30) for name in w.CODE_TEMPLATES]
    return [s for s in walk(consts) if any(map(is_cjk, s))] + [s["zh"] + s["plan_zh"] for s in specs]


# ============================================================================================ real data
def _detect_lang(text: str) -> str:
    return "zh" if any(map(is_cjk, text)) else "en"


def load_jsonl(path: str, kind: str = None) -> list:
    """Tasks from a JSONL file of {"prompt", "answer"} lines (code: + "tests", a list of assert strings, and an
    optional "entry"; countdown: + "nums", "target"). The kind comes from `kind`, else the line's "task", else
    "code" when it has tests, else "arith" (a math answer compared by rule). A malformed line raises ValueError
    naming the file and the line number. Blank lines are skipped. (datasets_jsonl.py reads real data sets, GSM8K,
    MATH, countdown, with the same per-row check, task_from_row, and can skip bad rows instead.)"""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown task kind {kind!r}; kinds: {', '.join(KINDS)}")
    out = []
    with open(path, encoding="utf-8") as f:
        for ln, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{ln}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
            out.append(task_from_row(row, where, kind))
    return out


def task_from_row(row, where: str, kind: str = None) -> dict:
    """One parsed JSONL row -> a task dict (load_jsonl's rules), or ValueError("<where>: what is wrong")."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for key in ("prompt", "answer"):
        if key not in row:
            raise ValueError(f"{where}: missing field '{key}'")
    if not isinstance(row["prompt"], str) or not row["prompt"].strip():
        raise ValueError(f"{where}: 'prompt' must be a non-empty string, got {row['prompt']!r:.60}")
    ans = row["answer"]
    if isinstance(ans, bool) or not isinstance(ans, (str, int)):
        raise ValueError(f"{where}: 'answer' must be a string or an integer, got {type(ans).__name__}")
    task = kind or row.get("task") or ("code" if "tests" in row else "arith")
    if task not in KINDS:
        raise ValueError(f"{where}: unknown task {task!r}; kinds: {', '.join(KINDS)}")
    if kind is not None and row.get("task", kind) != kind:
        raise ValueError(f"{where}: task {row['task']!r} in a file loaded as {kind!r}")
    if task == "code":
        tests = row.get("tests")
        if not isinstance(tests, list) or not tests or not all(isinstance(x, str) for x in tests):
            raise ValueError(f"{where}: a code task needs 'tests', a non-empty list of strings")
        try:   # each test must be a value test (`assert <expr> == <literal>`), see sandbox.py
            check_tests(tests)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        if "entry" in row and not isinstance(row["entry"], str):
            raise ValueError(f"{where}: 'entry' must be a string")
    if task == "countdown":
        nums, target = row.get("nums"), row.get("target")
        if not isinstance(nums, list) or not nums or not all(
                isinstance(x, int) and not isinstance(x, bool) for x in nums):
            raise ValueError(f"{where}: a countdown task needs 'nums', a non-empty list of integers")
        if not isinstance(target, int) or isinstance(target, bool):
            raise ValueError(f"{where}: a countdown task needs an integer 'target'")
    lang = row.get("lang") or _detect_lang(row["prompt"])
    if lang not in ("en", "zh"):
        raise ValueError(f"{where}: 'lang' must be 'en' or 'zh', got {lang!r}")
    diff = row.get("difficulty", 0)
    if not isinstance(diff, int) or isinstance(diff, bool):
        raise ValueError(f"{where}: 'difficulty' must be an integer")
    return {**row, "task": task, "answer": str(ans), "lang": lang, "difficulty": diff}


# ============================================================================================== the CLI
def corpus_stats(n_docs: int = 5000, seed: int = 0) -> dict:
    """Statistics of a corpus sample: document kinds, completion styles, full-format and language-mixing rates,
    scratchpad quality, tokens per document."""
    docs, metas = pretrain_corpus(n_docs, seed, with_meta=True)
    r1 = [m for m in metas if m["kind"] == "r1zero"]
    pads = [m for m in metas if m.get("quality") in ("clean", "repaired", "wrong")]
    stats = {"docs": n_docs, "kinds": dict(Counter(m["kind"] for m in metas)),
             "r1zero_styles": dict(Counter(m["style"] for m in r1)),
             "r1zero_full_format": sum(m["full_format"] for m in r1) / max(len(r1), 1),
             "scratchpad_quality": dict(Counter(m["quality"] for m in pads)),
             "scratchpad_mixed_language": sum(m["mixed"] for m in pads) / max(len(pads), 1),
             "zh_docs": sum(m.get("lang") == "zh" for m in metas) / n_docs}
    if os.path.exists(TOY_TOKENIZER):
        tok = get_tokenizer("toy")
        lens = [len(x) + 1 for x in tok.encode_batch(docs)]     # + the <|endoftext|> the trainer adds
        srt = sorted(lens)
        stats["tokens_total"] = sum(lens)
        stats["tokens_per_doc"] = {"mean": round(sum(lens) / len(lens), 1), "p50": srt[len(srt) // 2],
                                   "p95": srt[int(0.95 * len(srt))], "max": srt[-1],
                                   "over_256": sum(n > 256 for n in lens) / len(lens)}
        by_kind = defaultdict(list)
        for m, n in zip(metas, lens):
            by_kind[m["kind"] if m["kind"] != "r1zero" else f"r1zero/{m['task']}"].append(n)
        stats["tokens_by_kind"] = {k: round(sum(v) / len(v), 1) for k, v in sorted(by_kind.items())}
        # what a policy generates after "Assistant:" (max_new_tokens must cover the long scratchpads)
        r1docs = [(d, m) for d, m in zip(docs, metas) if m["kind"] == "r1zero"]
        comp = defaultdict(list)
        for (d, m), ids in zip(r1docs, tok.encode_batch([d.split("Assistant:", 1)[1] for d, _ in r1docs])):
            comp[f"{m['style']}/{m['task']}{m['difficulty']}"].append(len(ids) + 1)
        stats["completion_tokens"] = {k: {"mean": round(sum(v) / len(v)), "max": max(v)}
                                      for k, v in sorted(comp.items()) if k.split("/")[0] in
                                      ("tagged_pad", "tagged_direct")}
    return stats


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--show", type=int, default=0, metavar="N", help="print N sample documents of each kind")
    ap.add_argument("--stats", type=int, default=0, metavar="N", help="corpus statistics over N documents")
    ap.add_argument("--train-tokenizer", action="store_true", help=f"rebuild {os.path.relpath(TOY_TOKENIZER)}")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.train_tokenizer:
        ranks = train_tokenizer(tokenizer_texts(seed=args.seed))
        print(f"wrote {TOY_TOKENIZER}: {len(ranks)} ranks + {len(SPECIAL_TOKENS)} special tokens")
    if args.show:
        docs, metas = pretrain_corpus(200 * args.show, seed=args.seed, with_meta=True)
        for kind in DOC_MAKERS:
            shown = [(d, m) for d, m in zip(docs, metas) if m["kind"] == kind][:args.show]
            for d, m in shown:
                print(f"===== {kind} {json.dumps({k: v for k, v in m.items() if k != 'kind'}, ensure_ascii=False)}")
                print(d)
        for kind in KINDS:
            for t in make_tasks(kind, args.show, seed=args.seed):
                print(f"===== task {kind}: {json.dumps(t, ensure_ascii=False)}")
        for p in make_preference_pairs(args.show, args.seed):
            print(f"===== preference: {json.dumps(p, ensure_ascii=False)}")
        for s in make_safety_examples(args.show, args.seed):
            print(f"===== safety: {json.dumps(s, ensure_ascii=False)}")
    if args.stats:
        print(json.dumps(corpus_stats(args.stats, args.seed), indent=1, ensure_ascii=False))
    if not (args.train_tokenizer or args.show or args.stats):
        ap.print_help()


if __name__ == "__main__":
    main(sys.argv[1:])