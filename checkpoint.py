"""minR1's one checkpoint format: atomic writes, safe reads, and errors that say what a bad file is.

Checkpoints are one torch.save'd dict (the contract):
    {"model": state_dict, "model_args": dict, "step": int, "optimizer": state_dict | None, "rng": dict,
     + "config", "tokenizer", ... where the caller adds them}
(save_model writes it, resume and build_model_from_checkpoint read it)
written atomically (temp file + fsync + rename: a crash mid-write leaves the previous file intact) and read back
with torch.load(weights_only=True), so a checkpoint can never run code when it is loaded. Everything in it is
therefore tensors, numbers, strings, lists and dicts (the RNG states included).

Tests: python -m pytest -q tests/test_common.py tests/test_cli.py
"""
import dataclasses
import errno
import os
import pickle
import re
import tempfile

import torch
import torch.nn as nn

from common import (CheckpointError, Dist, barrier, get_rng_state, load_model_state_dict, load_optimizer_state_dict,
                    model_state_dict, optimizer_state_dict, set_rng_state, unwrap)
from model import ModelArgs, Transformer


def save_checkpoint(path: str, obj: dict):
    """torch.save(obj, path), atomically: write a temp file in the same directory, flush + fsync it, then
    os.replace it over `path` (atomic on POSIX and Windows) and fsync the directory so the rename itself is
    durable. Until the rename, the previous checkpoint at `path` is untouched; a crash at any point leaves
    either the old file or the new one, never half of one."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:     # KeyboardInterrupt too: never leave the temp file behind
        if os.path.exists(tmp):
            os.remove(tmp)
        full = _disk_full(e)
        if full:                   # the OS error names no file (it came from a write): name the checkpoint
            raise OSError(errno.ENOSPC, full.strerror or os.strerror(errno.ENOSPC), path) from None
        raise
    try:
        dfd = os.open(d, os.O_RDONLY)
    except OSError:                # e.g. Windows cannot open a directory; the rename is still atomic
        return
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


# A torch.save file (the zip format, torch >= 1.6, the only one save_checkpoint writes) starts with a zip header.
_ZIP_MAGIC = b"PK\x03\x04"
# weights_only's wordings of "this file asks for something I will not do" (torch 2.6 - 2.13): a global it does not
# allow or whose module it blocks (posix.system, ...), a call or object construction it will not perform
_REFUSAL = re.compile(r"GLOBAL (\S+)|Can only (create|build)|reduce for|allowlist|is blocked")


def _disk_full(e: BaseException) -> OSError | None:
    """The ENOSPC OSError behind e, if any: torch's zip writer sometimes reports a failed write as a RuntimeError
    whose context is the OSError."""
    while e is not None:
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return e
        e = e.__cause__ or e.__context__
    return None


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """torch.load(path, weights_only=True) with one-line errors: FileNotFoundError when missing, CheckpointError
    (the pickle traceback dropped) in three flavours that call for different actions:
    - not a checkpoint at all (eval.json, a text file, a plain pickle): a wrong path; the file is left alone;
    - refused: a torch.save file asking for code (a class, os.system, ...) that weights_only will not run: it is
      not a plain tensor checkpoint, and may be hostile;
    - corrupt or truncated: a damaged checkpoint, which training rewrites."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}: it is written by training, e.g. "
                                f"`python train_pipeline.py --stage pretrain --config toy`") from None
    if os.path.isdir(path):
        inside = os.path.join(path, "model.pt")
        hint = f"did you mean {inside}?" if os.path.isfile(inside) else "pass a model.pt or ckpt.pt inside it"
        raise CheckpointError(f"{path} is a directory, not a checkpoint file; {hint}")
    with open(path, "rb") as f:
        head = f.read(64)
    if not head:
        raise CheckpointError(f"corrupt or truncated checkpoint {path} (an empty file); delete it and re-run the "
                              f"step that writes it") from None
    # a file of another recognisable kind was passed by mistake: say what it is, and do not suggest deleting it
    # (unrecognisable bytes, and a zip whose end is missing, fall through to torch.load: damage)
    what = _other_format(head) if not head.startswith(_ZIP_MAGIC) else _foreign_zip(path)
    if what:
        raise CheckpointError(f"{path} is not a checkpoint ({what}): pass a model.pt or ckpt.pt written by "
                              f"training") from None
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only wraps every unpickling failure in one long message; its detail line says whether the file
        # asked for something it refuses (REFUSAL) or is damaged (a bad opcode, ...)
        detail = _detail(e)
        refused = _REFUSAL.search(detail)
        if refused:
            what = f"it holds {refused.group(1)}" if refused.group(1) else detail
            raise CheckpointError(f"refused to load {path}: not a plain tensor checkpoint ({what}, which "
                                  f"torch.load(weights_only=True) refuses: a file that runs code when it is loaded "
                                  f"may be hostile); a checkpoint holds only tensors, numbers, strings, lists and "
                                  f"dicts") from None
        raise CheckpointError(f"corrupt or truncated checkpoint {path} ({type(e).__name__}: {detail}); delete it "
                              f"and re-run the step that writes it") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError) as e:
        raise CheckpointError(f"corrupt or truncated checkpoint {path} ({type(e).__name__}: {_detail(e)}); "
                              f"delete it and re-run the step that writes it") from None


def _foreign_zip(path: str) -> str | None:
    """A complete zip archive that torch.save did not write (it writes <name>/data.pkl): say so; None otherwise."""
    import zipfile
    if not zipfile.is_zipfile(path):
        return None                      # a cut-off zip: a truncated checkpoint
    with zipfile.ZipFile(path) as z:
        if any(n.endswith("data.pkl") for n in z.namelist()):
            return None
    return "it is a zip archive, but not one written by torch.save"


def _other_format(head: bytes) -> str | None:
    """What a file that is not a torch.save zip is, judged from its first bytes: JSON, text, a plain pickle; None
    when it is none of these (then it is treated as a damaged checkpoint)."""
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "it is a plain pickle, not a torch.save zip file"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:     # (a multi-byte character cut at byte 64 is rare enough to call binary)
        return None
    if text.lstrip()[:1] in ("{", "["):
        return "it holds JSON"
    if text.isprintable() or all(c.isprintable() or c in "\t\r\n" for c in text):
        return "it is a text file"
    return None


def _detail(e: BaseException) -> str:
    """The informative line of a load error: the unpickler's own error (weights_only puts it after its boilerplate,
    sometimes on the line after "WeightsUnpickler error:", and chains it as __context__), else the first line."""
    inner = e.__context__
    if isinstance(inner, pickle.UnpicklingError) and str(inner).strip():
        return " ".join(str(inner).split())
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    for i, ln in enumerate(lines):
        if ln.startswith("WeightsUnpickler error:"):
            rest = ln[len("WeightsUnpickler error:"):].strip()
            return rest or (lines[i + 1] if i + 1 < len(lines) else ln)
    # the first sentence: miniz's "failed finding central directory." is followed by a paragraph of advice
    return lines[0].split(". ")[0].rstrip(".") if lines else "no detail"


def save_model(path: str, model: nn.Module, dist: "Dist", *, step: int, optimizer=None, **extra):
    """THE checkpoint of minR1 (see the module docstring): the model's full state and its ModelArgs, the step,
    and, when `optimizer` is given, everything a killed run needs to resume exactly (optimizer state, RNG state);
    `extra` adds entries (config, tokenizer, the reference model of an RL run, ...). Every rank calls it
    (gathering a sharded model is a collective); rank 0 writes, atomically; the ranks then wait for each other."""
    state = model_state_dict(model)
    opt_state = optimizer_state_dict(model, optimizer) if optimizer is not None else None
    if dist.is_main:
        save_checkpoint(path, {"model": state, "model_args": dataclasses.asdict(unwrap(model).args), "step": step,
                               "optimizer": opt_state, "rng": get_rng_state() if optimizer is not None else {},
                               **extra})
    barrier(dist)


def load_resumable(path: str, model: nn.Module, optimizer) -> dict:
    """Load a save_model(..., optimizer=...) checkpoint into model + optimizer and restore the RNG states; returns
    the checkpoint (its "step" is where training continues)."""
    ck = load_checkpoint(path)
    load_model_state_dict(model, ck["model"])
    load_optimizer_state_dict(model, optimizer, ck["optimizer"])
    set_rng_state(ck["rng"])
    return ck


def build_model_from_checkpoint(path: str, device="cpu"):
    """(model, ckpt): the Transformer of a checkpoint, its weights loaded, in eval mode on `device`."""
    ckpt = load_checkpoint(path)
    for key in ("model", "model_args"):
        if key not in ckpt:
            raise CheckpointError(f"checkpoint {path} has no '{key}' entry (keys: {sorted(ckpt)}); "
                                  f"is it a minR1 checkpoint?")
    model = Transformer(ModelArgs(**ckpt["model_args"]))
    model.load_state_dict(unwrapped_state_dict(ckpt["model"]))
    return model.to(device).eval(), ckpt


def unwrapped_state_dict(state: dict) -> dict:
    """A state dict taken from a DDP or torch.compile wrapper ("module.", "_orig_mod." on every key) as the plain
    model's."""
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state
