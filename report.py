"""The run report: runs/<name>/report.md gathers every stage's held-out evaluation in one table, like the paper's
tables, with what each stage moved, the checks of R1's claims as measured, and the training curves.

    python train_pipeline.py --stage all --config toy        # writes runs/toy/report.md as the stages finish
"""
import json
import os

from common import read_json


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
             "mixed, reflect and length are means over them (format = the model's own layout: the R1-Zero tags "
             "for the base, R1-Zero and the RL-only student, the cold-start layout after it). general: held-out "
             "general queries (pass@1 = exact answer; helpful = sigmoid of the helpfulness RM's score on the "
             "final answer); unsafe: share of responses to held-out harmful requests that spell out a harmful "
             "step (reasoning included).", "",
             "| model | " + " | ".join(name for name, _ in cols) + " |", "|---|" + "---|" * len(cols)]
    for p, res in rows:
        lines.append(f"| {row_name(p)} | " + " | ".join(_fmt(get(res)) for _, get in cols) + " |")
    lines += ["", "## Reward models (R1 §2.3.4)", "", "| reward model | trained on | held-out accuracy |",
              "|---|---|---|"]
    for p, what in (("rm_helpful", "preference pairs, Bradley-Terry; scores the final answer"),
                    ("rm_safety", "safe/unsafe responses, pointwise; scores the whole response")):
        r = read_json(os.path.join(run, p, "eval.json"))
        lines.append(f"| {p} | {what} | {_fmt(r['heldout']['accuracy']) if r else '-'} |")
    lines += ["", "## SFT data (what the filters kept)", ""]
    for stage in ("cold_start", "rejection_sft", "distill"):
        stats = read_json(os.path.join(run, stage, "data.json"))
        if stats:
            lines.append(f"- {stage}: " + "; ".join(f"{k}: {json.dumps(v, ensure_ascii=False)}"
                                                    for k, v in stats.items()))
    comp = read_json(os.path.join(run, "distill", "compute.json"))
    if comp:
        lines += ["", "## Distillation vs RL on the small student (R1 Table 6)", "",
                  f"Training FLOPs: distillation SFT {comp['distill_flops']:.3g}, RL-only {comp['rl_flops']:.3g} "
                  f"(ratio RL/distill {comp['rl_flops'] / max(comp['distill_flops'], 1):.2f}; {comp['rl_steps']} "
                  f"GRPO steps). The teacher's cost of writing the distillation set is not counted, as in the paper."]
    lines += ["", "## What each stage did and what moved", ""] + stage_paragraphs(products, dict(rows), cols)
    lines.append("")
    for p, _ in rows:
        pdir = os.path.join(run, p, "plots")
        for png in sorted(os.listdir(pdir)) if os.path.isdir(pdir) else []:
            lines.append(f"![{p} {png}]({p}/plots/{png})")
    os.makedirs(run, exist_ok=True)
    with open(os.path.join(run, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")



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
    return cols + [("general pass@1", one("general", "pass@1")), ("helpful RM", one("general", "helpful")),
                   ("unsafe", one("safety", "violation"))]


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
    "all_rl": ("rejection_sft", "R1 (R1 §2.3.4): GRPO from Step3 over all scenarios: rule rewards on "
               "reasoning prompts, the helpfulness and safety reward models on general prompts (added only in "
               "the last part of the stage), temperature 0.7."),
}


def stage_paragraphs(products: list, res: dict, cols) -> list:
    """A paragraph per stage: what it does, the metrics that moved most against the model it is compared with,
    and R1's three later-stage claims as measured (language mixing, helpfulness, distillation vs RL)."""
    out = []

    def moved(p, q):
        a, b = res.get(q), res.get(p)
        if a is None or b is None:
            return "not evaluated yet."
        d = [(name, get(a), get(b)) for name, get in cols if get(a) is not None and get(b) is not None]
        d = [x for x in d if abs(x[2] - x[1]) >= (0.5 if x[0] == "length" else 0.005)]
        d.sort(key=lambda x: -abs(x[2] - x[1]) / (abs(x[1]) + 1.0 if x[0] == "length" else 1.0))
        return "; ".join(f"{n} {x:.3f} -> {y:.3f}" for n, x, y in d[:6]) + "." if d else "nothing moved."

    for p, (q, text) in STAGE_TEXT.items():
        if p in res:
            out += [f"**{row_name(p)}.** {text} Moved most (vs {row_name(q)}): {moved(p, q)}", ""]
    for p in products:
        if p.startswith(("distill_", "rl_student_")) and p in res:
            q = "pretrain_student_" + p.split("_")[-1]
            how = ("SFT only on R1's filtered outputs (R1 §2.4)" if p.startswith("distill_") else
                   "the R1-Zero recipe (GRPO, rule rewards) on the student's own base, for the distillation's "
                   "training FLOPs")
            out += [f"**{row_name(p)}.** {how}. Moved most (vs {row_name(q)}): {moved(p, q)}", ""]
    pass1 = [get for name, get in cols if name.endswith("pass@1") and not name.startswith("general")]

    def mean_acc(p):
        v = [g(res[p]) for g in pass1 if p in res and g(res[p]) is not None]
        return sum(v) / len(v) if v else None
    checks = []
    mix = dict(cols)["mixed"]
    if "zero" in res and "reasoning_rl" in res:
        m0, m2, a0, a2 = mix(res["zero"]), mix(res["reasoning_rl"]), mean_acc("zero"), mean_acc("reasoning_rl")
        checks.append(f"- Language mixing, R1-Zero -> Step2: {m0:.3f} -> {m2:.3f} ({m2 - m0:+.3f}: "
                      f"{'lower' if m2 < m0 else 'NOT lower'}); mean reasoning pass@1 {a0:.3f} -> {a2:.3f} "
                      f"({a2 - a0:+.3f}).")
    helpful = dict(cols)["helpful RM"]
    if "rejection_sft" in res and "all_rl" in res and helpful(res["all_rl"]) is not None \
            and helpful(res["rejection_sft"]) is not None:
        h3, h4 = helpful(res["rejection_sft"]), helpful(res["all_rl"])
        a3, a4 = mean_acc("rejection_sft"), mean_acc("all_rl")
        checks.append(f"- Helpfulness RM score, Step3 -> R1: {h3:.3f} -> {h4:.3f} ({h4 - h3:+.3f}: "
                      f"{'higher' if h4 > h3 else 'NOT higher'}); mean reasoning pass@1 {a3:.3f} -> {a4:.3f} "
                      f"({a4 - a3:+.3f}).")
    for p in products:
        if p.startswith("rl_student_") and p in res and "distill_" + p[len("rl_student_"):] in res:
            q = "distill_" + p[len("rl_student_"):]
            a, b = mean_acc(q), mean_acc(p)
            checks.append(f"- Distilled vs RL-only {p[len('rl_student_'):]} student, mean reasoning pass@1: "
                          f"{a:.3f} vs {b:.3f} ({a - b:+.3f}: "
                          f"{'distillation wins' if a > b else 'distillation does NOT win'}).")
    if checks:
        out += ["**The checks of R1's claims, as measured:**", ""] + checks + [""]
    return out

