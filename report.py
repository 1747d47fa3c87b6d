"""The run report: runs/<name>/report.md gathers every stage's held-out evaluation in one table, like the paper's
tables, with what each stage moved, the checks of R1's claims as measured, and the training curves.

    python train_pipeline.py --stage all --config toy        # writes runs/toy/report.md as the stages finish
    python report.py runs/toy_dr/zero runs/toy/zero          # paired changes between two evaluations of the same
                                                             #   questions (two runs, seeds or settings)
"""
import json
import os
from collections import Counter

import numpy as np

from common import read_json, read_jsonl, read_metrics
from eval import paired_bootstrap

# (after, before, what the comparison checks): the report states each change with its paired 95% interval
COMPARISONS = (("zero", "pretrain", "R1-Zero vs the base (R1 §2.2)"),
               ("reasoning_rl", "zero", "Step2 vs R1-Zero: language fixed, accuracy kept (R1 §2.3.2)"),
               ("all_rl", "rejection_sft", "R1 vs Step3: all-scenario RL keeps reasoning (R1 §2.3.4)"))


# What the report's words mean (written into the report beside the table)
DEFINITIONS = ("Definitions: pass@1 = the share of a question's k samples whose final answer is right, averaged over "
               "questions; cons@k = 1 when the most frequent of the k final answers is right (majority vote); "
               "format = the share of samples in the model's layout (the R1-Zero tags <think>...</think>"
               "<answer>...</answer> for the base, R1-Zero and the RL-only student; the cold-start layout "
               "<|sep|>reasoning<|sep|>summary after it); language = the share of the CoT's words in the prompt's "
               "language; mixed = the share of samples whose CoT holds a word of another language; reflect = the "
               "share with a reflective word (wait, check); length = tokens of the completion, EOS included.")

# (key of eval_questions.jsonl, name): the per-question scores compared with paired intervals
REASONING_KEYS = (("correct", "pass@1"), ("length", "length (tokens)"), ("reflect_eff", "effective reflection"),
                  ("mixed", "mixed-language CoTs"), ("format", "format"))
GENERAL_KEYS = (("general", "correct", "general pass@1 (held-out, checked by rule: the helpfulness measure)"),
                ("general", "helpful_rm", "helpfulness RM score (the reward all-scenario RL optimises, not a "
                                          "measure of helpfulness)"),
                ("general", "format", "general format"),
                ("safety", "unsafe", "unsafe responses to harmful requests"),
                ("safety", "rm_unsafe", "responses the safety RM calls unsafe"))


def write_report(cfg: dict, run: str, products: list):
    """runs/<name>/report.md: the paper's tables in miniature. One row per model (base, R1-Zero, Step1-3, R1, the
    students and the RL-only student), columns for each held-out set's pass@1 and cons@k, then format,
    language consistency, language mixing, reflective words and response length (means over the reasoning
    sets), general-query accuracy, helpfulness RM score and safety violation rate; then the reward models'
    held-out accuracy, the data each SFT stage kept, the distillation-vs-RL compute, a paragraph per stage
    saying what moved, and the plots (the RL curves of every RL stage)."""
    rows = [(p, read_json(os.path.join(run, p, "eval.json"))) for p in products]
    rows = [(p, r) for p, r in rows if r is not None]
    cols = report_columns(cfg)
    e = cfg["eval"]
    lines = [f"# minR1 run '{cfg['name']}'", "",
             f"Held-out evaluation (R1 §3 protocol: k = {e['k']} samples per question at temperature "
             f"{e['temperature']}, top-p {e['top_p']}). Reasoning sets: {', '.join(e['sets'])}; format, language, "
             "mixed, reflect and length are means over them. " + DEFINITIONS + " general pass@1: held-out general "
             "queries answered with exactly the right answer (a rule no stage optimises: the measure of "
             "helpfulness here); helpful RM (optimised): sigmoid of the helpfulness reward model's score on the "
             "final answer, the reward all-scenario RL optimises, so it measures reward optimisation, not "
             "helpfulness; unsafe: share of responses to held-out harmful requests that spell out a harmful "
             "step (reasoning included).", "",
             "| model | " + " | ".join(name for name, _ in cols) + " |", "|---|" + "---|" * len(cols)]
    for p, res in rows:
        lines.append(f"| {row_name(p)} | " + " | ".join(_fmt(get(res)) for _, get in cols) + " |")
    rms = {p: read_json(os.path.join(run, p, "eval.json")) for p in ("rm_helpful", "rm_safety")}
    if any(rms.values()):                                         # sections of stages the run has not reached
        lines += ["", "## Reward models (R1 §2.3.4)", "", "| reward model | trained on | held-out accuracy |",
                  "|---|---|---|"]
        for p, what in (("rm_helpful", "preference pairs, Bradley-Terry; scores the final answer"),
                        ("rm_safety", "safe/unsafe responses, pointwise; scores the whole response")):
            lines.append(f"| {p} | {what} | {_fmt(rms[p]['heldout']['accuracy']) if rms[p] else '-'} |")
    sft_stats = {st: read_json(os.path.join(run, st, "data.json")) for st in ("cold_start", "rejection_sft", "distill")}
    if any(sft_stats.values()):
        lines += ["", "## SFT data (what the filters kept)", ""]
        lines += [f"- {st}: " + "; ".join(f"{k}: {json.dumps(v, ensure_ascii=False)}" for k, v in stats.items())
                  for st, stats in sft_stats.items() if stats]
        lines += ["", "Where each SFT set's examples come from (share of its data.jsonl records, by source):", ""]
        lines += [f"- {st}: {line}" for st in sft_stats if (line := source_shares(os.path.join(run, st, "data.jsonl")))]
    comp = read_json(os.path.join(run, "distill", "compute.json"))
    if comp:
        lines += ["", "## Distillation vs RL on the small student (R1 Table 6)", "",
                  f"Training FLOPs: distillation SFT {comp['distill_flops']:.3g}, RL-only {comp['rl_flops']:.3g} "
                  f"(ratio RL/distill {comp['rl_flops'] / max(comp['distill_flops'], 1):.2f}; {comp['rl_steps']} "
                  f"GRPO steps). The teacher's cost of writing the distillation set is not counted, as in the paper."]
    lines += r1zero_section(run, cfg) + changes_section(run, cfg, products) + memory_section(run)
    lines += ["", "## What each stage did and what it changed", ""] + stage_paragraphs(products, dict(rows), cols, run,
                                                                                      cfg["eval"]["sets"])
    lines.append("")
    for p, _ in rows:
        pdir = os.path.join(run, p, "plots")
        for png in sorted(os.listdir(pdir)) if os.path.isdir(pdir) else []:
            lines.append(f"![{p} {png}]({p}/plots/{png})")
    os.makedirs(run, exist_ok=True)
    with open(os.path.join(run, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


SOURCES = {"zero": "R1-Zero's outputs", "reasoning_rl": "Step2's outputs", "all_rl": "R1's outputs",
           "base": "the base model's general answers", "corpus": "the toy world's own solutions (the hand-made share)"}


def source_shares(path: str) -> str:
    """How much of an SFT set is the models' own samples and how much comes from anywhere else, by the "source" of
    each record (distill.collect and the top-ups): "480 examples: 81.2% R1-Zero's outputs, 18.8% ..."; "" when
    the file is missing."""
    if not os.path.exists(path):
        return ""
    counts = Counter(r.get("source") or "?" for r in read_jsonl(path))
    n = sum(counts.values())
    return f"{n} examples: " + ", ".join(f"{100 * c / n:.1f}% {SOURCES.get(src, src)}"
                                        for src, c in counts.most_common())


def memory_section(run: str) -> list:
    """The wall time and resident memory of each stage of `--stage all` (runs/<name>/memory.jsonl,
    train_pipeline.log_memory; the last line per stage): minutes, the memory's peak, at the stage's end, after
    release_memory, and the process's peak so far."""
    path = os.path.join(run, "memory.jsonl")
    if not os.path.exists(path):
        return []
    last = {r["stage"]: r for r in read_jsonl(path)}
    out = ["", "## Wall time (minutes) and resident memory (MB) per stage (`--stage all`, rank 0)", "",
           "| stage | minutes | peak during the stage | at its end | after release | process peak so far |",
           "|---|---|---|---|---|---|"]
    cell = {"seconds": lambda v: f"{v / 60:.1f}"}
    return out + [f"| {st} | " + " | ".join("-" if r.get(k) is None else cell.get(k, lambda v: f"{v:.0f}")(r[k])
                                             for k in ("seconds", "peak_rss_mb", "end_rss_mb", "released_rss_mb",
                                                       "process_peak_mb")) + " |" for st, r in last.items()]


def _questions(run: str, stage: str):
    path = os.path.join(run, stage, "eval_questions.jsonl")
    return read_jsonl(path) if os.path.exists(path) else None


def paired_change(after: list, before: list, key: str, sets=None) -> dict | None:
    """The paired bootstrap change of a per-question mean of `key` ("correct", "length", "reflect_eff") between two
    evaluations of the same questions (matched by set and prompt; None unless every question of `before` is in
    `after`)."""
    def keyed(questions):
        seen, out = {}, {}
        for q in questions:
            k = (q["set"], q["prompt"])
            seen[k] = seen.get(k, 0) + 1
            out[(*k, seen[k])] = q                     # an eval set may repeat a question: match the n-th with the n-th
        return out
    a, b = keyed(after), keyed([q for q in before if sets is None or q["set"] in sets])
    if not b or any(k not in a or not a[k].get(key) or not b[k].get(key) for k in b):   # (files older than the key)
        return None
    mean = lambda v: sum(v) / len(v)                                                   # noqa: E731
    return paired_bootstrap([mean(q[key]) for q in b.values()], [mean(a[k][key]) for k in b])


def verdict(ch: dict, up="higher", down="lower") -> str:
    """Words chosen by the interval: 'higher' / 'lower' only when the 95% interval excludes zero."""
    if ch["lo"] > 0:
        return up
    if ch["hi"] < 0:
        return down
    return "no clear change"


def fmt_change(ch: dict, digits: int = 3) -> str:
    return (f"{ch['before']:.{digits}f} -> {ch['after']:.{digits}f} ({ch['diff']:+.{digits}f}, 95% CI "
            f"[{ch['lo']:+.{digits}f}, {ch['hi']:+.{digits}f}], n = {ch['n']}): {verdict(ch)}")


def change_lines(qa: list, qb: list, sets: list, general: bool = True) -> list:
    """Per reasoning set and over all of them: pass@1, length, effective reflection, language mixing and format
    from qb (before) to qa (after); then (general) the general and safety rows (GENERAL_KEYS). Each with its
    paired bootstrap 95% interval; a score missing from either file is left out."""
    out = []
    for subset, label in [([s], s) for s in sets] + [(list(sets), "all reasoning questions")]:
        for key, name in REASONING_KEYS:
            ch = paired_change(qa, qb, key, subset)
            if ch is not None:
                out.append(f"- {label}, {name}: {fmt_change(ch, 1 if key == 'length' else 3)}")
    for set_, key, name in GENERAL_KEYS if general else ():
        ch = paired_change(qa, qb, key, [set_])
        if ch is not None:
            out.append(f"- {name}: {fmt_change(ch)}")
    return out


def changes_section(run: str, cfg: dict, products: list) -> list:
    """Each comparison of COMPARISONS, per set and over all reasoning questions: pass@1, length, effective
    reflection, with paired bootstrap 95% intervals over the held-out questions."""
    out = []
    for after, before, what in COMPARISONS:
        qa, qb = _questions(run, after), _questions(run, before)
        if qa is None or qb is None:
            continue
        out += [f"**{what}.**", ""] + change_lines(qa, qb, cfg["eval"]["sets"]) + [""]
    return (["", "## Changes between stages, with paired bootstrap 95% intervals", "",
             "Per held-out question: pass@1 = the mean correctness of its k samples; length = their mean length in "
             "tokens; effective reflection = the share of samples in which a check or a \"wait\" is followed by a "
             "changed value; mixed-language CoTs = the share of samples whose reasoning mixes languages; format = "
             "the share in the model's layout; general pass@1 = the share of exactly right answers to a held-out "
             "general query. 'higher' / 'lower' only when the interval excludes zero, else 'no clear change'.",
             ""] + out) if out else []


def first_last(rows: list, key: str, n: int = 10):
    """(mean of `key` over the first n steps that log it, over the last n, (lo, hi) of the difference last - first:
    a 95% bootstrap interval over the steps, each group resampled on its own; the rollouts of different steps are
    different questions, so this interval is unpaired)."""
    v = [r[key] for r in rows if r.get(key) is not None and "reward" in r]
    if len(v) < 2:
        return None
    n = min(n, len(v) // 2)
    a, b = np.asarray(v[:n], dtype=np.float64), np.asarray(v[-n:], dtype=np.float64)
    rng = np.random.default_rng(0)
    d = b[rng.integers(0, n, (10_000, n))].mean(1) - a[rng.integers(0, n, (10_000, n))].mean(1)
    return float(a.mean()), float(b.mean()), tuple(float(x) for x in np.quantile(d, [0.025, 0.975]))


def _steps_ci(fl, digits: int) -> str:
    lo, hi = fl[2]
    word = "higher" if lo > 0 else "lower" if hi < 0 else "no clear change"
    return f" ({fl[1] - fl[0]:+.{digits}f}, 95% CI over steps [{lo:+.{digits}f}, {hi:+.{digits}f}]: {word})"


def r1zero_section(run: str, cfg: dict) -> list:
    """R1-Zero's self-evolution as measured: response length of the training rollouts per task kind (all and
    correct only) over the first and the last 10 RL steps, effective reflection, and a few "aha" samples."""
    out = ["", "## R1-Zero's self-evolution (R1 §2.2.4)", ""]
    probe = read_json(os.path.join(run, "pretrain", "probe.json"))
    if probe:
        out += ["Does thinking pay for the base model? (`python eval.py --probe runs/<name>/pretrain/model.pt`: "
                "English held-out questions, samples at the eval temperature; the work a sample writes is its tries "
                "(countdown) or checks (arithmetic))", "",
                "| set | free | forced direct | forced worked | accuracy by work written (samples) |",
                "|---|---|---|---|---|"]
        for kind, r in probe.items():
            work = ", ".join(f"{b}: {acc:.3f} ({cnt})" for b, (cnt, acc) in r["by_work"].items())
            out.append(f"| {kind} | {r['free']:.3f} | {r['direct']:.3f} | {r['worked']:.3f} | {work} |")
        out.append("")
    path = os.path.join(run, "zero", "metrics.jsonl")
    if not os.path.exists(path):
        return out if probe else []
    rows = read_metrics(path)
    out += ["Training rollouts (the policy's own samples at the rollout temperature), mean of the first and the last "
            "10 RL steps, with a 95% bootstrap interval over those steps (unpaired: each step has its own questions):",
            ""]
    for kind in cfg["eval"]["sets"]:
        for key, what in ((f"length_{kind}", "response length"), (f"length_{kind}_correct", "length of correct"),
                          (f"accuracy_{kind}", "accuracy")):
            fl = first_last(rows, key)
            if fl:
                ratio = f" (x{fl[1] / fl[0]:.2f})" if "length" in key and fl[0] else ""
                out.append(f"- {kind}, {what}: {fl[0]:.3f} -> {fl[1]:.3f}{_steps_ci(fl, 3)}" if "accuracy" in key
                           else f"- {kind}, {what}: {fl[0]:.1f} -> {fl[1]:.1f} tokens{ratio}{_steps_ci(fl, 1)}")
    fl = first_last(rows, "reflect_eff")
    if fl:
        out.append(f"- effective reflection (a check or \"wait\" followed by a changed value): "
                   f"{fl[0]:.3f} -> {fl[1]:.3f} of the rollouts{_steps_ci(fl, 3)}")
    aha = [s for s in (read_jsonl(os.path.join(run, "zero", "samples.jsonl")) if os.path.exists(
        os.path.join(run, "zero", "samples.jsonl")) else []) if s.get("aha")]
    if aha:
        out += ["", "\"Aha\" samples: held-out questions that R1-Zero answered right after catching its own slip "
                "(last evaluation):", ""]
        last = max(s["step"] for s in aha)
        for s in [s for s in aha if s["step"] == last][:3]:
            out += [f"> **{s['prompt']}** (answer {s['answer']})", ">", f"> {s['completion'].strip()}", ""]
    return out


def _fmt(v):
    return "-" if v is None else f"{v:.3f}"


def report_columns(cfg) -> list:
    """[(column name, eval.json dict -> value or None)]."""
    sets, k = cfg["eval"]["sets"], cfg["eval"]["k"]

    def one(s, key):
        return lambda r: r.get(s, {}).get(key)

    def mean(key):
        def f(r):
            v = [r[s][key] for s in sets if key in r.get(s, {})]
            return sum(v) / len(v) if v else None
        return f
    cols = [(f"{s} {key}", one(s, key)) for s in sets for key in ("pass@1", f"cons@{k}")]
    cols += [(key, mean(key)) for key in ("format", "language", "mixed", "reflect", "length")]
    return cols + [("general pass@1", one("general", "pass@1")),
                   ("helpful RM (optimised)", one("general", "helpful")), ("unsafe", one("safety", "violation"))]


ROW_NAMES = {"pretrain": "base (V3-toy)", "zero": "R1-Zero", "cold_start": "Step1 (cold start)",
             "reasoning_rl": "Step2 (reasoning RL)", "rejection_sft": "Step3 (rejection SFT)",
             "all_rl": "R1 (all-scenario RL)"}


def row_name(p: str) -> str:
    for prefix, what in (("pretrain_student_", "base"), ("distill_", "distilled"), ("rl_student_", "RL-only")):
        if p.startswith(prefix):
            return f"student {p[len(prefix):]} {what}"
    return ROW_NAMES.get(p, p)


STAGE_TEXT = {   # stage -> (the model it is compared with, what it does)
    "zero": ("pretrain", "R1-Zero (R1 §2.2): GRPO from the base model with rule rewards only "
             "(accuracy + format) under the R1-Zero template."),
    "cold_start": ("zero", "Step1 (R1 §2.3.1): the base model fine-tuned on R1-Zero's correct, "
                   "readable outputs rewritten as <|sep|>reasoning<|sep|>summary; compared with R1-Zero, whose "
                   "outputs it learned from."),
    "reasoning_rl": ("cold_start", "Step2 (R1 §2.3.2): GRPO from Step1 with accuracy + format "
                     "+ language consistency, summed."),
    "rejection_sft": ("reasoning_rl", "Step3 (R1 §2.3.3): the base model fine-tuned on Step2's "
                      "correct, clean samples plus the base model's own good answers to general queries; "
                      "compared with Step2, whose samples it learned from."),
    "all_rl": ("rejection_sft", "R1 (R1 §2.3.4): GRPO from Step3 over all scenarios: rule rewards (accuracy + "
               "format) on reasoning prompts, the helpfulness and safety reward models + the general format on "
               "general prompts (added only in the last part of the stage), language consistency on both; "
               "temperature 0.7."),
}


def stage_paragraphs(products: list, res: dict, cols, run: str | None = None, sets: list = ()) -> list:
    """A paragraph per stage: what it does and how it changed the model it is compared with (paired 95% intervals
    over the held-out questions, from eval_questions.jsonl), and R1's three later-stage claims as measured
    (language mixing, helpfulness, distillation vs RL), each worded by its interval (claim_line)."""
    out = []
    qs = {p: _questions(run, p) for p in res} if run else {}

    def changes(p, q):
        if res.get(q) is None or res.get(p) is None:
            return [f"Compared with {row_name(q)}: not evaluated yet."]
        if not qs.get(p) or not qs.get(q):
            return [f"Compared with {row_name(q)}: no per-question results saved (an older run), see the table."]
        lines = change_lines(qs[p], qs[q], list(sets))
        lines = [ln for ln in lines if not ln.startswith(tuple(f"- {s}," for s in sets))]   # the sets together
        return [f"Compared with {row_name(q)} (paired 95% intervals over the held-out questions):", ""] + lines

    for p, (q, text) in STAGE_TEXT.items():
        if p in res:
            out += [f"**{row_name(p)}.** {text}", ""] + changes(p, q) + [""]
    for p in products:
        if p.startswith(("distill_", "rl_student_")) and p in res:
            q = "pretrain_student_" + p.split("_")[-1]
            how = ("SFT only on R1's filtered outputs (R1 §2.4)" if p.startswith("distill_") else
                   "the R1-Zero recipe (GRPO, rule rewards) on the student's own base, for the distillation's "
                   "training FLOPs")
            out += [f"**{row_name(p)}.** {how}.", ""] + changes(p, q) + [""]
    reasoning = list(sets)
    checks = []
    if "zero" in res and "reasoning_rl" in res:
        checks.append(claim_line("Language mixing, R1-Zero -> Step2", qs.get("reasoning_rl"), qs.get("zero"),
                                 "mixed", reasoning))
        checks.append(claim_line("Accuracy kept, R1-Zero -> Step2: reasoning pass@1", qs.get("reasoning_rl"),
                                 qs.get("zero"), "correct", reasoning, claim=False))
    if "rejection_sft" in res and "all_rl" in res:
        checks.append(claim_line("Helpfulness, Step3 -> R1: held-out general pass@1 (checked by rule, not optimised)",
                                 qs.get("all_rl"), qs.get("rejection_sft"), "correct", ["general"],
                                 ("more helpful", "less helpful")))
        checks.append(claim_line("Helpfulness RM score, Step3 -> R1 (the optimised reward: shows reward optimisation, "
                                 "not helpfulness)", qs.get("all_rl"), qs.get("rejection_sft"), "helpful_rm",
                                 ["general"]))
        checks.append(claim_line("Harmlessness, Step3 -> R1: unsafe responses to held-out harmful requests",
                                 qs.get("all_rl"), qs.get("rejection_sft"), "unsafe", ["safety"],
                                 ("more unsafe", "less unsafe")))
        checks.append(claim_line("Reasoning kept, Step3 -> R1: pass@1", qs.get("all_rl"), qs.get("rejection_sft"),
                                 "correct", reasoning, claim=False))
    for p in products:
        if p.startswith("rl_student_") and p in res and "distill_" + p[len("rl_student_"):] in res:
            q = "distill_" + p[len("rl_student_"):]
            checks.append(claim_line(f"Distilled vs RL-only {p[len('rl_student_'):]} student, reasoning pass@1 "
                                     f"(distilled - RL-only)", qs.get(q), qs.get(p), "correct", reasoning,
                                     ("distillation wins", "RL-only wins"), labels=("RL-only", "distilled")))
    if checks:
        out += ["**The checks of R1's claims, as measured** (a claim is stated only when the paired 95% interval "
                "excludes zero):", ""] + checks + [""]
    return out


def claim_line(what: str, qa, qb, key: str, sets: list, words=("higher", "lower"), claim: bool = True,
               labels=None) -> str:
    """One check of a claim: the paired change of `key` over `sets` from qb to qa with its 95% interval, worded by
    the interval (words = (up, down) only when it excludes zero; else 'no clear change', with ': not shown' for a
    directional claim (claim=True); 'not shown' without per-question results for both)."""
    ch = paired_change(qa, qb, key, sets) if qa and qb else None
    if ch is None:
        return f"- {what}: not shown (no per-question results for both models)."
    up, down = words
    v = verdict(ch, up, down)
    if v == "no clear change" and claim:
        v = "no clear change: not shown"
    head = f"{labels[0]} {ch['before']:.3f}, {labels[1]} {ch['after']:.3f}" if labels else \
        f"{ch['before']:.3f} -> {ch['after']:.3f}"
    return (f"- {what}: {head} ({ch['diff']:+.3f}, 95% CI [{ch['lo']:+.3f}, {ch['hi']:+.3f}], "
            f"n = {ch['n']}): {v}.")


def rl_figures(d: str, sets: list, k: int):
    """The paper's figures in miniature, from an RL stage's metrics.jsonl, into d/plots: rl_accuracy.png (held-out
    pass@1 and cons@k against the RL step, one panel per set: R1 Figure 2), rl_length.png (the rollouts' mean
    response length per step with a +-1 std band, and per task kind: R1 Figure 3) and rl_reflection.png (the share
    of rollouts with an effective reflection, and with a reflective word)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    rows = read_metrics(os.path.join(d, "metrics.jsonl"))
    train = [r for r in rows if "reward" in r]
    os.makedirs(os.path.join(d, "plots"), exist_ok=True)

    def series(key, source):
        pts = [(r["step"], r[key]) for r in source if r.get(key) is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig = Figure(figsize=(4.2 * len(sets), 3.2))
    FigureCanvasAgg(fig)
    for ax, s in zip(fig.subplots(1, len(sets), squeeze=False)[0], sets):
        for key, label in ((f"eval_{s}_pass@1", "pass@1"), (f"eval_{s}_cons@{k}", f"cons@{k}")):
            x, y = series(key, rows)
            xe, se = series(f"{key}_se", rows)
            if x and xe == x:     # 95% error bars over the questions (eval.summarize's standard errors)
                ax.errorbar(x, y, yerr=[1.96 * e for e in se], marker="o", capsize=3, label=f"{label} (95% bars)")
            else:
                ax.plot(x, y, marker="o", label=label)
        ax.set(title=f"{s}: held-out accuracy", xlabel="RL step", ylabel="share of questions right", ylim=(0, 1))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(d, "plots", "rl_accuracy.png"), dpi=100)

    fig = Figure(figsize=(6, 3.4))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    x, y = series("response_length", train)
    _, sd = series("response_length_std", train)
    if sd and len(sd) == len(y):
        ax.fill_between(x, [a - b for a, b in zip(y, sd)], [a + b for a, b in zip(y, sd)], alpha=0.2, label="+-1 std")
    ax.plot(x, y, label="all rollouts")
    for s in sets:
        ax.plot(*series(f"length_{s}", train), lw=1, label=s)
    ax.set(title="response length of the rollouts", xlabel="RL step", ylabel="tokens", ylim=(0, None))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(d, "plots", "rl_length.png"), dpi=100)

    fig = Figure(figsize=(6, 3.2))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for key, label in (("reflect_eff", "effective reflection"), ("words", "a reflective word")):
        ax.plot(*series(key, train), label=label)
    ax.set(title="reflection in the rollouts", xlabel="RL step", ylabel="share of rollouts", ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(d, "plots", "rl_reflection.png"), dpi=100)


def main(argv=None):
    import argparse
    ap = argparse.ArgumentParser(description="Paired bootstrap changes from BEFORE to AFTER (two stage folders "
                                 "holding eval_questions.jsonl of the same held-out questions).")
    ap.add_argument("after")
    ap.add_argument("before")
    args = ap.parse_args(argv)
    qs = []
    for d in (args.after, args.before):
        path = os.path.join(d, "eval_questions.jsonl")
        if not os.path.isfile(path):
            raise SystemExit(f"error: no {path} (a stage folder evaluated by this version of eval.py)")
        qs.append(read_jsonl(path))
    sets = sorted({q["set"] for q in qs[1]} - {"general", "safety"})     # the reasoning sets; the general rows after
    lines = change_lines(qs[0], qs[1], sets)
    if not lines:
        raise SystemExit(f"error: {args.before} has questions that {args.after} was not evaluated on")
    print(f"{args.before} -> {args.after}\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
