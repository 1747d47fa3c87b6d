"""sample.py's command line: one-line errors (exit 2) for bad inputs before any model is loaded, checkpoints that
are not models, the template picked from the checkpoint's stage, bf16 weights, the interactive loop, --help.

    python -m pytest -q tests/test_sample_cli.py
"""
import io
import json
import os
import subprocess
import sys
import zipfile
from dataclasses import asdict
from types import SimpleNamespace

import pytest
import torch

import data
import sample
import tokenizer
from checkpoint import save_checkpoint
from common import run_cli
from model import ModelArgs, Transformer
from sample import generate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOK = tokenizer.get_tokenizer("toy")
N_NEW = 8


def tiny_model(seed=0):
    """A small random model over the toy tokenizer, long enough for the R1-Zero template plus a few tokens."""
    torch.manual_seed(seed)
    m = Transformer(ModelArgs(vocab_size=TOK.vocab_size, dim=32, inter_dim=48, moe_inter_dim=16, n_layers=2,
                              n_dense_layers=1, n_heads=2, n_routed_experts=4, n_shared_experts=1,
                              n_activated_experts=2, n_expert_groups=2, n_limited_groups=1, q_lora_rank=0,
                              kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=6, v_head_dim=8,
                              max_seq_len=256))
    m.init_weights(0.15)   # peaked logits: greedy tokens far from ties
    return m.eval()


def save_run_model(folder, model, **extra):
    """model.pt as the pipeline writes it (checkpoint.save_model's entries) into folder, which names the stage."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "model.pt")
    save_checkpoint(path, {"model": model.state_dict(), "model_args": asdict(model.args), "step": 1,
                           "tokenizer": "toy", **extra})
    return path


def greedy_answer(model, text):
    """What the CLI must print after `text` at temperature 0: the completion without its EOS."""
    g = generate(model, [TOK.encode(text)], N_NEW, temperature=0, eos_id=TOK.eos_id, pad_id=TOK.pad_id)
    return TOK.decode(g.tokens[0, :int(g.lengths[0]) - int(g.finished[0])].tolist())


def cli(argv, capsys):
    """(exit status, stdout, stderr) of the CLI as the shell runs it (common.run_cli around main)."""
    rc = run_cli(sample.main, argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture
def zero_ckpt(tmp_path, model):
    return save_run_model(str(tmp_path / "runs" / "t" / "zero"), model)


# ------------------------------------------------------------------------------------- bad inputs, fast errors
@pytest.mark.parametrize("args, says", [
    (["   "], "prompt is empty"),
    (["What is 2+3", "--max-new-tokens", "0"], "--max-new-tokens must be >= 1, got 0"),
    (["What is 2+3", "--max-new-tokens", "-5"], "--max-new-tokens must be >= 1, got -5"),
    (["What is 2+3", "--temperature", "-1"], "--temperature must be a finite number >= 0"),
    (["What is 2+3", "--temperature", "nan"], "got nan"),
    (["What is 2+3", "--temperature", "inf"], "got inf"),
    (["What is 2+3", "--top-p", "0"], "--top-p must be in (0, 1]"),
    (["What is 2+3", "--top-p", "1.5"], "got 1.5"),
    (["What is 2+3", "--top-p", "nan"], "got nan"),
    (["What is 2+3", "--top-k", "-1"], "--top-k must be >= 0"),
    (["What is 2+3", "-n", "0"], "-n must be >= 1"),
    (["What is 2+3", "--temperature", "hot"], "invalid float value: 'hot'"),
    (["What is 2+3", "--prompt", "What is 1+1"], "not both"),
    (["What is 2+3", "-i"], "give no prompt with it"),
    ([], "no prompt"),                        # stdin is not a terminal under pytest, so no interactive fallback
])
def test_bad_values_fail_in_one_line_before_the_checkpoint_is_read(args, says, zero_ckpt, capsys, monkeypatch):
    def must_not_load(*a, **k):
        raise AssertionError("a bad option must be refused before the checkpoint is read")
    monkeypatch.setattr(sample, "load_checkpoint", must_not_load)
    rc, out, err = cli(["--ckpt", zero_ckpt, *args], capsys)
    assert rc == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and says in err


def test_missing_checkpoint_and_directories(tmp_path, capsys):
    rc, _, err = cli(["--ckpt", str(tmp_path / "nope.pt"), "hi"], capsys)
    assert rc == 2 and err.count("\n") == 1 and f"no checkpoint at {tmp_path / 'nope.pt'}" in err

    rc, _, err = cli(["--ckpt", str(tmp_path), "hi"], capsys)
    assert rc == 2 and err.count("\n") == 1 and "is a directory" in err and "did you mean" not in err
    path = save_run_model(str(tmp_path / "zero"), tiny_model())
    rc, _, err = cli(["--ckpt", str(tmp_path / "zero"), "hi"], capsys)
    assert rc == 2 and err.count("\n") == 1 and f"did you mean {path}?" in err


def test_files_that_are_not_checkpoints_are_named_as_such_not_corrupt(tmp_path, capsys):
    run = tmp_path / "runs" / "x" / "zero"
    path = save_run_model(str(run), tiny_model())
    eval_json = run / "eval.json"
    eval_json.write_text(json.dumps({"arith": {"pass@1": 0.4}}))
    rc, _, err = cli(["--ckpt", str(eval_json), "hi"], capsys)
    assert rc == 2 and err.count("\n") == 1
    assert "is not a checkpoint" in err and "JSON" in err and path in err   # points at the model
    assert "delete" not in err and "corrupt" not in err                                # never "delete your eval"

    lonely = tmp_path / "notes.txt"                # no model.pt beside it: the hint says where models live
    lonely.write_text("hello")
    rc, _, err = cli(["--ckpt", str(lonely), "hi"], capsys)
    assert rc == 2 and "not a checkpoint" in err and "text file" in err and "runs/<name>/<stage>/model.pt" in err

    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    rc, _, err = cli(["--ckpt", str(empty), "hi"], capsys)
    assert rc == 2 and "empty file" in err

    archive = tmp_path / "data.zip"                # a zip archive, but not torch.save's
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("readme.txt", "not weights")
    rc, _, err = cli(["--ckpt", str(archive), "hi"], capsys)
    assert rc == 2 and "not one written by torch.save" in err

    tensor = tmp_path / "tensor.pt"                # torch.save output, but no model in it
    torch.save({"step": 3, "note": "hi"}, tensor)
    rc, _, err = cli(["--ckpt", str(tensor), "hi"], capsys)
    assert rc == 2 and err.count("\n") == 1 and "no model weights" in err and "note, step" in err


def test_truncated_checkpoint_is_still_reported_as_damaged(tmp_path, capsys):
    path = save_run_model(str(tmp_path / "zero"), tiny_model())
    blob = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(blob[:len(blob) // 2])             # a real checkpoint cut short: here "corrupt or truncated" is right
    rc, _, err = cli(["--ckpt", path, "hi"], capsys)
    assert rc == 2 and err.count("\n") == 1 and "corrupt or truncated" in err


def test_reward_model_is_refused(tmp_path, capsys):
    path = save_run_model(str(tmp_path / "rm_safety"), tiny_model(), kind="pointwise")
    rc, _, err = cli(["--ckpt", path, "hi"], capsys)
    assert rc == 2 and err.count("\n") == 1 and "is a reward model (pointwise)" in err


def test_prompt_too_long_for_the_model(zero_ckpt, capsys):
    rc, _, err = cli(["--ckpt", zero_ckpt, "--template", "none", "x", "--max-new-tokens", "256"], capsys)
    assert rc == 2 and err.count("\n") == 1 and "max_seq_len=256" in err


# ------------------------------------------------------------------------------------------------ templates
@pytest.mark.parametrize("stage, template", [
    ("pretrain", "r1zero"), ("zero", "r1zero"), ("pretrain_student_m", "r1zero"), ("rl_student_s", "r1zero"),
    ("cold_start", "chat"), ("reasoning_rl", "chat"), ("rejection_sft", "chat"), ("all_rl", "chat"),
    ("distill_m", "chat"),
    ("rm_helpful", "none"), ("my_copy", "none"),
])
def test_auto_template_follows_the_stage_folder(stage, template):
    chosen, note = sample.choose_template("auto", f"runs/t/{stage}/model.pt", {})
    assert chosen == template
    if template == "none":
        assert "unknown" in note and "--template r1zero" in note and "--template chat" in note
    else:
        assert note.startswith(f"template: {template}") and stage in note


def test_stage_recorded_in_the_checkpoint_wins_and_explicit_choices_are_kept():
    assert sample.choose_template("auto", "copies/model.pt", {"stage": "cold_start"})[0] == "chat"
    assert sample.choose_template("auto", "runs/t/zero/model.pt", {"stage": "all_rl"})[0] == "chat"
    chosen, note = sample.choose_template("chat", "runs/t/zero/model.pt", {})
    assert chosen == "chat" and "warning" in note and "r1zero" in note   # kept, but the mismatch is pointed out
    assert sample.choose_template("r1zero", "runs/t/zero/model.pt", {}) == ("r1zero", None)


def test_format_prompt_wraps_once():
    q = "What is 17+25"
    assert sample.format_prompt(q, "r1zero") == data.r1zero_prompt(q)
    assert sample.format_prompt(q, "chat") == f"{tokenizer.USER}{q}{tokenizer.ASSISTANT}"
    assert sample.format_prompt(q, "none") == q
    typed = data.chat_task_prompt(q)              # markup typed by hand, as before --template chat existed
    assert sample.format_prompt(typed, "chat", auto=True) == typed
    assert sample.format_prompt(data.r1zero_prompt(q), "r1zero", auto=True) == data.r1zero_prompt(q)
    assert sample.format_prompt(typed, "chat") == data.chat_task_prompt(typed)   # explicit: exactly as asked


@pytest.mark.parametrize("stage, wrap", [("zero", data.r1zero_prompt), ("cold_start", data.chat_task_prompt)])
def test_cli_answers_in_the_stage_template(stage, wrap, tmp_path, model, capsys):
    path = save_run_model(str(tmp_path / "runs" / "t" / stage), model)
    q = "What is 17+25"
    rc, out, err = cli(["--ckpt", path, q, "--temperature", "0", "--max-new-tokens", str(N_NEW)], capsys)
    assert rc == 0
    assert out == greedy_answer(model, wrap(q)) + "\n"         # only the answer: the template is not echoed
    assert f"template: {'r1zero' if stage == 'zero' else 'chat'}" in err and stage in err


def test_unknown_stage_continues_the_prompt_as_typed(tmp_path, model, capsys):
    path = save_run_model(str(tmp_path / "somewhere"), model)
    rc, out, err = cli(["--ckpt", path, "--prompt", "12+35=", "--temperature", "0", "--max-new-tokens",
                        str(N_NEW)], capsys)
    assert rc == 0 and out == "12+35=" + greedy_answer(model, "12+35=") + "\n"   # echoed and continued
    assert "template: none" in err


def test_several_samples_print_their_stop_reason_not_the_eos(zero_ckpt, capsys):
    rc, out, _ = cli(["--ckpt", zero_ckpt, "What is 2+3", "-n", "3", "--seed", "0", "--max-new-tokens", "6"], capsys)
    assert rc == 0 and out.count("--- sample ") == 3 and "stop: " in out
    assert tokenizer.EOS not in out and "A conversation between" not in out


# ------------------------------------------------------------------------------------------------ bf16 weights
def bf16_rounded(model):
    """An fp32 copy of model whose weights went through bf16: what a bf16 checkpoint holds, cast back up."""
    ref = tiny_model()
    ref.load_state_dict({k: v.to(torch.bfloat16).float() if v.is_floating_point() else v
                         for k, v in model.state_dict().items()})
    return ref.eval()


def test_bf16_checkpoint_loads_in_fp32_and_samples(tmp_path, model, capsys):
    folder = tmp_path / "docs" / "toy_run" / "zero"
    folder.mkdir(parents=True)
    half = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    path = str(folder / "model.pt")
    save_checkpoint(path, {"model": half, "model_args": asdict(model.args), "step": 1, "tokenizer": "toy"})

    loaded, _, tok_name = sample.load_model(path)
    assert tok_name == "toy"
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    assert all(b.dtype == torch.float32 for b in loaded.buffers() if b.is_floating_point())
    ref = bf16_rounded(model)
    for (name, p), q in zip(loaded.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(p, q), name

    q = "What is 17+25"
    rc, out, _ = cli(["--ckpt", path, q, "--temperature", "0", "--max-new-tokens", str(N_NEW)], capsys)
    assert rc == 0 and out == greedy_answer(ref, data.r1zero_prompt(q)) + "\n"


def test_bare_bf16_state_dict_takes_its_shape_and_tokenizer_from_config_json(tmp_path, model, capsys):
    folder = tmp_path / "zero"
    folder.mkdir()
    path = str(folder / "model.pt")
    # prefixed as a DDP wrapper's state dict is, and without model_args or tokenizer entries
    torch.save({f"module.{k}": v.to(torch.bfloat16) if v.is_floating_point() else v
                for k, v in model.state_dict().items()}, path)
    args = {**asdict(model.args), "vocab_size": 1024}        # the config's placeholder, as in configs/*.json
    (folder / "config.json").write_text(json.dumps({"name": "t", "tokenizer": "toy", "model": args}))
    loaded, ckpt, tok_name = sample.load_model(path)
    assert loaded.args.vocab_size == TOK.vocab_size and tok_name == "toy" and ckpt == {}

    q = "What is 2+3"
    rc, out, err = cli(["--ckpt", path, q, "--temperature", "0", "--max-new-tokens", str(N_NEW)], capsys)
    assert rc == 0 and out == greedy_answer(bf16_rounded(model), data.r1zero_prompt(q)) + "\n"

    os.remove(folder / "config.json")
    rc, _, err = cli(["--ckpt", path, q], capsys)
    assert rc == 2 and err.count("\n") == 1 and "no config.json" in err


# -------------------------------------------------------------------------------------------- interactive mode
def settings(**over):
    return SimpleNamespace(**{"n": 1, "temperature": 0.0, "top_p": 1.0, "top_k": 0, "max_new_tokens": N_NEW,
                              "seed": None, "attn": "absorbed", **over})


def test_interact_answers_each_line_until_exit(model, capsys):
    stdin = io.StringIO("What is 2+3\n\n   \nCompute 24*7\nexit\nWhat is 9+9\n")
    out = io.StringIO()
    assert sample.interact(model, TOK, "chat", settings(), stdin=stdin, out=out) == 0
    expect = [greedy_answer(model, data.chat_task_prompt(q)) for q in ("What is 2+3", "Compute 24*7")]
    assert out.getvalue() == "".join(a + "\n" for a in expect)     # blank lines skipped, nothing after exit
    assert stdin.readline() == "What is 9+9\n"                     # the loop stopped reading at exit


def test_interact_ends_cleanly_at_eof_and_ctrl_c_and_survives_a_long_question(model, capsys):
    out = io.StringIO()
    assert sample.interact(model, TOK, "r1zero", settings(), stdin=io.StringIO("What is 2+3"), out=out) == 0
    assert out.getvalue() == greedy_answer(model, data.r1zero_prompt("What is 2+3")) + "\n"   # EOF without newline

    class CtrlC(io.StringIO):
        def readline(self, *a):
            raise KeyboardInterrupt
    assert sample.interact(model, TOK, "r1zero", settings(), stdin=CtrlC(), out=io.StringIO()) == 0

    out = io.StringIO()
    long_q = "9 " * 300                                            # over max_seq_len: an error line, then go on
    assert sample.interact(model, TOK, "none", settings(), stdin=io.StringIO(f"{long_q}\nWhat is 1+1\n"),
                           out=out) == 0
    assert "max_seq_len" in capsys.readouterr().err
    assert out.getvalue() == greedy_answer(model, "What is 1+1") + "\n"


def test_interactive_cli_in_a_subprocess(zero_ckpt, model):
    """The real program, stdin piped: -i reads questions until exit; stdout holds only the answers."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, os.path.join(ROOT, "sample.py"), "--ckpt", zero_ckpt, "-i",
                        "--temperature", "0", "--max-new-tokens", str(N_NEW), "--device", "cpu"],
                       input="What is 2+3\nquit\n", capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert p.returncode == 0, p.stderr
    assert p.stdout == greedy_answer(model, data.r1zero_prompt("What is 2+3")) + "\n"
    assert "template: r1zero" in p.stderr and "Traceback" not in p.stderr


# --------------------------------------------------------------------------------------------------- --help
def test_help_shows_examples_and_templates(capsys):
    rc, out, _ = cli(["--help"], capsys)
    assert rc == 0
    assert 'python sample.py --ckpt docs/toy_run/zero/model.pt "What is 17 + 25?"' in out
    for word in ("--interactive", "--template", "auto", "r1zero", "chat", "cold_start"):
        assert word in out


@pytest.mark.parametrize("stage", ["pretrain", "zero"])
def test_shipped_models_answer_right_after_cloning(stage, capsys):
    """The README's first command: docs/toy_run's bf16 models load on CPU, get the R1-Zero template from the stage
    they record, and answer a toy arithmetic question in the template's format (greedy: deterministic)."""
    ckpt = os.path.join(ROOT, "docs", "toy_run", stage, "model.pt")
    rc, out, err = cli(["--ckpt", ckpt, "What is 86+42", "--temperature", "0"], capsys)
    assert rc == 0 and "template: r1zero" in err, err
    assert "<think>" in out and "</think> <answer> 128 </answer>" in out, out
