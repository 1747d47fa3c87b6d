"""Real data sets (datasets_jsonl.py): the problem format, the GSM8K / MATH / countdown readers, bad rows (skip or
refuse), the math checker on their answers, and `--stage zero --data ... --eval-data ...` end to end on micro.

    python -m pytest -q tests/test_datasets_jsonl.py
"""
import json
import os

import pytest

import datasets_jsonl as D
import eval as evaluation
import grpo
import train_pipeline as tp
from common import DataError, read_json, read_jsonl
from config import load_config
from rewards import accuracy_reward

MICRO = os.path.join(tp.ROOT, "configs", "micro.json")
pytestmark = pytest.mark.usefixtures("one_thread")


def write(path, lines):
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    return str(path)


GSM8K = [{"question": "Ann has 1,200 beads and gives away 7. How many are left?",
          "answer": "1200 - 7 = 1193\n#### 1,193"},
         {"question": "It was 5 degrees and fell by 9. What is it now?", "answer": "5-9=-4\n#### -4"},
         {"question": "Half of 7?", "answer": "7/2 = 3.5\n#### 3.5"}]
MATH = [{"problem": "Compute $\\frac{1}{2}+\\frac{1}{4}$.", "solution": "So $\\boxed{\\frac{3}{4}}$.",
         "level": "Level 2", "type": "Algebra"},
        {"problem": "Simplify $x^{2}\\cdot x$.", "solution": "First \\boxed{2}, no: \\boxed{x^{3}}",
         "level": "Level ?"},
        {"problem": "MATH-500 keeps the answer", "solution": "... \\boxed{7}", "answer": "\\frac{14}{2}"}]
COUNTDOWN = [{"nums": [2, 5, 3], "target": 13}, {"nums": [4, 6], "target": 24, "answer": "4*6"}]


def test_readers_map_rows_onto_problems(tmp_path):
    tasks, info = D.read_problems(write(tmp_path / "gsm8k.jsonl", GSM8K))
    assert info["format"] == "gsm8k" and info["rows"] == 3 and info["skipped"] == 0 and info["kinds"] == {"math": 3}
    assert [t["answer"] for t in tasks] == ["1,193", "-4", "3.5"]
    assert tasks[0]["prompt"] == GSM8K[0]["question"] and tasks[0]["solution"] == "1200 - 7 = 1193"
    assert {t["task"] for t in tasks} == {"arith"} and tasks[1]["source"] == "gsm8k.jsonl:2" == tasks[1]["canon"]

    tasks, info = D.read_problems(write(tmp_path / "math.jsonl", MATH))
    assert info["format"] == "math"
    assert [t["answer"] for t in tasks] == ["\\frac{3}{4}", "x^{3}", "\\frac{14}{2}"]   # nested braces, last box
    assert [t["difficulty"] for t in tasks] == [2, 0, 0] and tasks[0]["type"] == "Algebra"

    tasks, info = D.read_problems(write(tmp_path / "cd.jsonl", COUNTDOWN))
    assert info["format"] == "countdown" and info["kinds"] == {"countdown": 2}
    assert tasks[0]["task"] == "countdown" and tasks[0]["nums"] == [2, 5, 3] and tasks[0]["target"] == 13
    assert "2, 5, 3" in tasks[0]["prompt"] and "13" in tasks[0]["prompt"] and tasks[1]["answer"] == "4*6"

    problems = [{"prompt": "2+3?", "answer": 5}, {"question": "写出 7", "answer": "7", "kind": "math"},
                {"prompt": "make 10", "kind": "countdown", "nums": [2, 5], "target": 10},
                {"prompt": "Write f", "answer": "def f(x): return 2*x", "tests": ["assert f(2) == 4"], "entry": "f"},
                {"prompt": "toy-world line", "answer": "1", "task": "countdown", "nums": [1], "target": 1}]
    tasks, info = D.read_problems(write(tmp_path / "p.jsonl", problems))
    assert info["format"] == "problems" and info["kinds"] == {"math": 2, "countdown": 2, "code": 1}
    assert [t["task"] for t in tasks] == ["arith", "arith", "countdown", "code", "countdown"]
    assert tasks[0]["answer"] == "5" and tasks[1]["prompt"] == "写出 7" and tasks[1]["lang"] == "zh"
    assert tasks[3]["tests"] == ["assert f(2) == 4"] and tasks[3]["entry"] == "f"
    # a format named on the command line wins over detection
    tasks, info = D.read_problems(write(tmp_path / "g2.jsonl", GSM8K[:1]), fmt="problems")
    assert info["format"] == "problems" and tasks[0]["answer"].endswith("#### 1,193")


BAD = {   # file kind -> (a bad line, what its error says)
    "gsm8k": [("{not json", "not valid JSON"),
              ({"question": "q"}, "missing field 'answer'"),
              ({"question": "q", "answer": "no final answer"}, "has no '####"),
              ({"question": "q", "answer": "#### seven"}, "'seven' is not a number"),
              ({"question": "q", "answer": "####   "}, "nothing after '####'"),
              ([1, 2], "expected a JSON object")],
    "math": [({"problem": "p", "solution": "the answer is 3"}, "no \\boxed{...}"),
             ({"problem": "p", "solution": "\\boxed{\\frac{1}{2}"}, "no \\boxed{...}"),      # unbalanced
             ({"problem": "p", "solution": "\\boxed{}"}, "is empty"),
             ({"problem": "", "solution": "\\boxed{1}"}, "'problem' must be a non-empty string")],
    "countdown": [({"nums": "2 5", "target": 7}, "'nums' must be a non-empty list of integers"),
                  ({"nums": [2, 5]}, "missing field 'target'"),
                  ({"nums": [2, True], "target": 7}, "'nums' must be"),
                  ({"nums": [2, 5], "target": "7"}, "'target' must be an integer"),
                  ({"nums": [2, 5], "target": 7, "answer": "2*5"}, "does not make 7")],
    "problems": [({"prompt": "p", "answer": "1", "kind": "poetry"}, "'kind' must be one of"),
                 ({"prompt": "p"}, "missing field 'answer'"),
                 ({"prompt": "p", "answer": "1", "tests": ["assert f(1)"]}, "assert <expr> == <literal>"),
                 ({"prompt": "p", "answer": "1", "kind": "countdown", "nums": [1, "2"], "target": 3}, "nums"),
                 ({"prompt": "p", "answer": "1", "kind": "math", "task": "code"}, "contradicts")],
}
GOOD = {"gsm8k": GSM8K[0], "math": MATH[0], "countdown": COUNTDOWN[0], "problems": {"prompt": "1+1", "answer": 2}}


@pytest.mark.parametrize("fmt", sorted(BAD))
def test_bad_rows_refused_or_skipped_with_file_and_line(tmp_path, fmt, capsys):
    for bad, msg in BAD[fmt]:          # refuse: the first bad row stops the load, one line naming file and line
        path = write(tmp_path / f"{fmt}.jsonl", [GOOD[fmt], "", bad, GOOD[fmt]])
        with pytest.raises(DataError) as e:
            D.read_problems(path)
        assert str(e.value).startswith(f"{path}:3: ") and msg in str(e.value) and "\n" not in str(e.value), e.value
    # skip: every bad row reported with its file and line, then the count; the good rows kept, in order
    lines = [GOOD[fmt]] + [bad for bad, _ in BAD[fmt]] + [GOOD[fmt]]
    path = write(tmp_path / f"{fmt}_all.jsonl", lines)
    logged = []
    tasks, info = D.read_problems(path, bad_rows="skip", log=logged.append)
    assert len(tasks) == 2 and info["skipped"] == len(BAD[fmt]) and info["rows"] == 2
    assert [t["source"] for t in tasks] == [f"{fmt}_all.jsonl:1", f"{fmt}_all.jsonl:{len(lines)}"]
    assert logged[:-1] == [f"skipped {path}:{i + 2}: " + logged[i].split(f"{path}:{i + 2}: ", 1)[1]
                           for i in range(len(BAD[fmt]))]
    assert all(msg in line for (_, msg), line in zip(BAD[fmt], logged))
    assert logged[-1] == f"{path}: skipped {len(BAD[fmt])} bad row(s), kept 2"


def test_file_level_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        D.read_problems(str(tmp_path / "nope.jsonl"))
    path = write(tmp_path / "none.jsonl", ["{bad", '{"question": "q"}'])
    with pytest.raises(DataError, match=r"none.jsonl: no usable problem in the file \(2 bad rows skipped\)"):
        D.read_problems(path, bad_rows="skip", log=lambda m: None)
    with pytest.raises(DataError, match="cannot tell the format"):
        D.read_problems(write(tmp_path / "odd.jsonl", [{"text": "hello"}]))
    with pytest.raises(DataError, match="unknown data format"):
        D.read_problems(path, fmt="csv")


def test_math_checker_on_gsm8k_and_math_answers(tmp_path):
    """The accuracy reward on the gold answers these readers produce, answered in the R1-Zero layout."""
    gsm = [{"question": f"q{i}", "answer": f"#### {a}"}
           for i, a in enumerate(["1,234", "-7", "0.25", "3/4", "1,000,000"])]
    tasks, _ = D.read_problems(write(tmp_path / "g.jsonl", gsm))
    tasks += D.read_problems(write(tmp_path / "m.jsonl", MATH))[0]
    right = ["1234", "-7", "1/4", "0.75", "1000000", "\\frac{3}{4}", "x^{3}", "7"]
    wrong = ["1243", "7", "0.52", "4/3", "100000", "\\frac{4}{3}", "x^{2}", "14"]
    cols = {"task": [t["task"] for t in tasks], "answer": [t["answer"] for t in tasks]}
    for answers, want in ((right, 1.0), (wrong, 0.0)):
        comps = [f" <think> ok </think> <answer> {a} </answer>" for a in answers]
        assert accuracy_reward([""] * len(comps), comps, **cols) == [want] * len(comps), answers


def test_zero_stage_trains_and_evaluates_on_jsonl_files(tmp_path, monkeypatch, capsys):
    """--stage zero on micro with --data (GSM8K-style) and --eval-data (MATH- and countdown-style): the rollouts are
    the file's problems, the run records which files it used, and the evaluation has one row per file question."""
    train = write(tmp_path / "train.jsonl", GSM8K + ["{broken"])
    test = write(tmp_path / "test.jsonl", [{"prompt": p["problem"], "answer": t["answer"]} for p, t in
                                           zip(MATH[:2], D.read_problems(write(tmp_path / "m.jsonl", MATH[:2]))[0])]
                 + [{"prompt": "make 13", "kind": "countdown", "nums": [2, 5, 3], "target": 13}])
    seen = []
    real_rollout = grpo.rollout

    def spy(policy, tasks, *a, **k):
        seen.extend(t["prompt"] for t in tasks)
        return real_rollout(policy, tasks, *a, **k)
    monkeypatch.setattr(grpo, "rollout", spy)
    args = ["--stage", "zero", "--config", MICRO, "--name", "dz", "--runs_dir", str(tmp_path / "runs"),
            "--data", train, "--eval-data", test, "--pretrain.steps", "1", "--zero.steps", "2",
            "--zero.eval_every", "2", "--reward_models.eval_general", "0", "--reward_models.eval_safety", "0"]
    with pytest.raises(DataError, match=r"train.jsonl:4: not valid JSON"):     # bad_rows refuse: stops first
        tp.main(args)
    assert not (tmp_path / "runs" / "dz" / "pretrain").exists()
    tp.main(args + ["--bad-rows", "skip"])
    out = capsys.readouterr().out
    assert f"skipped {train}:4: not valid JSON" in out and "skipped 1 bad row(s), kept 3" in out
    assert len(seen) == 2 * 2 and set(seen) <= {r["question"] for r in GSM8K}     # 2 steps x prompts_per_step 2
    d = tmp_path / "runs" / "dz" / "zero"
    used = read_json(str(d / "data_files.json"))
    assert used["train"]["path"] == train and used["train"]["rows"] == 3 and used["train"]["skipped"] == 1
    assert used["eval"]["path"] == test and used["eval"]["kinds"] == {"math": 2, "countdown": 1}
    assert read_json(str(d / "config.json"))["data"] == train
    questions = read_jsonl(str(d / "eval_questions.jsonl"))
    assert [(q["set"], q["canon"]) for q in questions] == [("arith", "test.jsonl:1"), ("arith", "test.jsonl:2"),
                                                           ("countdown", "test.jsonl:3")]
    assert [q["answer"] for q in questions[:2]] == ["\\frac{3}{4}", "x^{3}"] and all(len(q["correct"]) == 2
                                                                                   for q in questions)
    assert set(read_json(str(d / "eval.json"))) >= {"arith", "countdown"}

    # eval.py evaluates a finished model on a file the same way
    evaluation.main(["--model", str(d / "model.pt"), "--config", MICRO, "--eval-data", test, "-k", "1",
                     "--max_new_tokens", "4"])                  # an override of the eval section
    res = read_json(str(d / "eval_test.json"))
    assert res["arith"]["n"] == 2 and res["countdown"]["n"] == 1 and res["eval_data"]["path"] == test
    qs = read_jsonl(str(d / "eval_test_questions.jsonl"))
    assert len(qs) == 3 and all(len(q["correct"]) == 1 and max(q["length"]) <= 4 for q in qs)

    # and on another draw of the config's own toy sets (--seed), into a folder that report.py pairs
    micro = load_config(MICRO)["eval"]
    for seed in (0, 1):
        evaluation.main(["--model", str(d / "model.pt"), "--config", MICRO, "--out", str(tmp_path / f"s{seed}"),
                         "--seed", str(seed), "-k", "1", "--max_new_tokens", "4"])
    draws = [read_jsonl(str(tmp_path / f"s{seed}" / "eval_questions.jsonl")) for seed in (0, 1)]
    assert [len(q) for q in draws] == [len(micro["sets"]) * micro["n_per_set"]] * 2
    assert read_json(str(tmp_path / "s1" / "eval.json"))["eval_data"] == {"toy_sets": micro["sets"], "seed": 1}
    assert [q["prompt"] for q in draws[0]] != [q["prompt"] for q in draws[1]]       # another draw
    with pytest.raises(SystemExit, match="--eval-data FILE .* or --out DIR"):
        evaluation.main(["--model", str(d / "model.pt"), "--config", MICRO])


def test_config_names_a_missing_data_file(tmp_path):
    with pytest.raises(SystemExit, match=r"data: no file .*nope.jsonl"):
        tp.main(["--stage", "zero", "--config", MICRO, "--runs_dir", str(tmp_path), "--data",
                 str(tmp_path / "nope.jsonl")])
    with pytest.raises(SystemExit, match=r"bad_rows must be one of"):
        tp.main(["--stage", "zero", "--config", MICRO, "--runs_dir", str(tmp_path), "--bad-rows", "ignore"])
