"""The plumbing every training stage shares: distributed set-up, model wrapping, rank-0 logging, metrics JSONL and
plots, RNG state, seeds, and the machine's matmul peak (for MFU). Checkpoints: checkpoint.py.

    python train_pipeline.py --stage pretrain --config toy                       # one process, no process group
    torchrun --nproc_per_node=2 train_pipeline.py --stage pretrain --config toy   # 2 ranks: gloo on CPU
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_endpoint=HOST:29500 train_pipeline.py ...   # nccl on CUDA

Tests: python -m pytest -q tests/test_common.py
"""
import contextlib
import errno
import functools
import json
import math
import os
import random
import re
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as tdist
import torch.nn as nn

import ep as _ep


# ---------------------------------------------------------------------------------------------- distributed
@dataclass
class Dist:
    """Where this process sits: rank among world_size processes, its GPU index on the node, its device."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    is_main: bool = True          # rank 0: the one that prints, logs metrics and writes checkpoints


def setup_distributed(device: str | None = None) -> Dist:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) and join the group.

    Without torchrun (or with a world of 1) this is a single process and no process group is created, so the
    same script runs under `python` and under `torchrun`. On CUDA each rank takes the GPU of its LOCAL_RANK
    and the group is "cpu:gloo,cuda:nccl": NCCL for the tensors on the GPU, gloo for the small CPU tensors that
    the loops all-reduce (logged sums, eval counts), which NCCL alone would refuse.
    device: None = CUDA when available, else CPU; "cpu" forces CPU + gloo even on a GPU machine.
    """
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices are "
                               f"visible: use --nproc_per_node <= {torch.cuda.device_count()}")
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)   # before init: NCCL binds each rank to the current device
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not tdist.is_initialized():
        for var in ("MASTER_ADDR", "MASTER_PORT"):
            if var not in os.environ:
                raise RuntimeError(f"WORLD_SIZE={world_size} but {var} is not set: launch with torchrun "
                                   f"(e.g. torchrun --nproc_per_node={world_size} train_pipeline.py ...)")
        backend = "cpu:gloo,cuda:nccl" if use_cuda else "gloo"
        tdist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return Dist(rank=rank, world_size=world_size, local_rank=local_rank, device=dev, is_main=rank == 0)


def cleanup_distributed():
    """Leave the process group (a no-op for a single process). Dead DDP wrappers are collected first: freed
    after the group is gone, they abort the process at exit now and then ("terminate called without an
    active exception")."""
    if tdist.is_available() and tdist.is_initialized():
        import gc
        gc.collect()
        tdist.destroy_process_group()


def _rank() -> int:
    if tdist.is_available() and tdist.is_initialized():
        return tdist.get_rank()
    return int(os.environ.get("RANK", 0))


def print0(*args, **kwargs):
    """print() on rank 0 only; flushed, so that torchrun's interleaved output stays in order."""
    if _rank() == 0:
        kwargs.setdefault("flush", True)
        print(*args, **kwargs)


def all_reduce_mean(values: dict, dist: Dist) -> dict:
    """{name: float} averaged over all ranks (every rank must pass the same keys). One collective for the dict."""
    out = {k: float(v) for k, v in values.items()}
    if dist.world_size == 1:
        return out
    keys = sorted(out)   # same order on every rank, whatever order the dicts were built in
    t = torch.tensor([out[k] for k in keys], dtype=torch.float64, device=dist.device)
    tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    t /= dist.world_size
    return dict(zip(keys, t.tolist()))


def barrier(dist: Dist):
    if dist.world_size > 1:
        tdist.barrier()


# -------------------------------------------------------------------------------------------- model wrapping
def wrap_model(model: nn.Module, dist: Dist, fsdp: bool = False, find_unused_parameters: bool = False,
               mp_policy=None, ep: int = 1) -> nn.Module:
    """Data parallelism over the ranks: DDP (replicated weights), or FSDP2 (`fully_shard`, sharded weights).

    One process: the model is returned as is. Either way `unwrap(result)` is the model itself (its methods:
    update_bias, new_cache, ...), and the global batch is split across ranks with gradients AVERAGED over
    ranks, so N ranks with B/N rows each take the same step as one rank with B rows.

    DDP choices, and why:
    - find_unused_parameters=False. DDP must know which parameters get no gradient in a step; an MoE expert
      that received no tokens is the classic case. minR1 stores the routed experts stacked, one (E, in, out)
      tensor per projection (DESIGN.md), so a projection is one parameter: any token routed anywhere in the
      layer gives it a gradient (zero rows for the idle experts) and no parameter ever goes unused. A model with
      an nn.ModuleList of experts would need True (DDP then fails loudly at the next step, naming the unused
      parameters), at the cost of a graph traversal per step.
    - forward_sync_buffers=False (the old broadcast_buffers=False). By default DDP copies rank 0's buffers to
      every rank at the start of a forward that follows a gradient-synchronised one. The MoE gate keeps
      per-rank expert-load counters as buffers that update_bias() all-reduces itself; with several micro-steps
      per optimizer step the copy would replace each rank's counts with rank 0's (tests/test_common.py
      catches it: the routing biases and then the weights diverge from one process). The bias buffers stay
      identical on every rank because every rank applies the same all-reduced update (and DDP still syncs
      all buffers once, at wrap time).

    FSDP2: `fully_shard` on each transformer block (model.layers, an nn.ModuleList), then on the root, so that
    a block's full weights are gathered just before it runs and freed after. Buffers are not sharded. Save
    and load through model_state_dict / optimizer_state_dict below, not .state_dict() (DTensor shards).
    mp_policy: an optional torch.distributed.fsdp.MixedPrecisionPolicy (e.g. bf16 params, fp32 gradient reduction
    on GPUs).

    ep > 1: expert parallelism (ep.py): each MoE layer's routed experts sharded over groups of ep ranks on a
    (data, expert) mesh, DDP (or FSDP2) over all ranks for the other weights (the experts excluded from it), the
    expert gradients reduced over the ranks holding the same experts. Clip with clip_grad_norm below (the full norm).
    """
    model = model.to(dist.device)
    if ep > 1:   # expert parallelism: routed experts sharded over groups of ep ranks, DDP or FSDP2 for the rest
        return _ep.wrap(model, dist, ep, find_unused_parameters, fsdp=fsdp, mp_policy=mp_policy)
    if dist.world_size == 1:
        return model
    if not fsdp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        device_ids = [dist.device.index] if dist.device.type == "cuda" else None
        return DDP(model, device_ids=device_ids, forward_sync_buffers=False,
                   find_unused_parameters=find_unused_parameters)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    mesh = init_device_mesh(dist.device.type, (dist.world_size,))
    kw = {"mesh": mesh, "mp_policy": mp_policy or MixedPrecisionPolicy()}
    layers = getattr(model, "layers", None)
    if isinstance(layers, nn.ModuleList) and len(layers) > 0:
        for block in layers:
            fully_shard(block, **kw)
    else:
        warnings.warn(f"wrap_model(fsdp=True): {type(model).__name__} has no `layers` nn.ModuleList of blocks; "
                      "sharding the whole model as one unit (every weight is gathered at once)")
    fully_shard(model, **kw)   # the root: embeddings, final norm, head and whatever is outside the blocks
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The underlying model: strips DDP (.module) and torch.compile (._orig_mod). FSDP2 shards in place, so a
    fully_shard'ed model is its own underlying module (its parameters are DTensors: see model_state_dict)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def is_fsdp(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule
    return isinstance(unwrap(model), FSDPModule)


@contextlib.contextmanager
def full_params(model: nn.Module):
    """`with full_params(model) as core:` core is the underlying model (unwrap) with every weight whole, for the
    code that does not go through forward(): sampling (model.decode), evaluation.

    Why: FSDP2 gathers a unit's full weights in the forward hook of that unit (a block, the root), but
    Transformer.decode calls Block.decode, not Block.__call__, so no hook fires and the weights stay DTensor
    shards ("aten.embedding.default got mixed torch.Tensor and DTensor"). Here every FSDP unit is unshard()ed
    (an all-gather) on entry and reshard()ed on exit. Under FSDP2 this is a collective: every rank enters once,
    and in between it may sample as many or as few rows as it likes (decode runs no collective). Costs one full
    copy of the weights per rank while inside. DDP and one process: a no-op that yields the underlying model."""
    core = unwrap(model)
    from torch.distributed.fsdp import FSDPModule
    # nested use (an evaluation inside a function that already holds the weights) must not reshard early
    units = [] if getattr(core, "_full_params_held", False) else \
        [m for m in core.modules() if isinstance(m, FSDPModule)]
    for m in units:
        m.unshard()
    core._full_params_held = bool(units) or getattr(core, "_full_params_held", False)
    try:
        with _ep.full_experts(core):   # expert parallelism: every expert on every rank while inside (ep.py)
            yield core
    finally:
        for m in units:
            m.reshard()
        if units:
            core._full_params_held = False


def on_full_params(fn):
    """Decorator: fn(model, ...) runs inside `with full_params(model)` and receives the underlying model (the
    evaluations of eval.py: every rank calls them once, whatever share of the questions it samples)."""
    @functools.wraps(fn)
    def wrapper(model, *args, **kwargs):
        with full_params(model) as core:
            return fn(core, *args, **kwargs)
    return wrapper


# Under FSDP2 a parameter is a DTensor holding one shard: `state_dict()` would save only this rank's pieces, as
# DTensors that weights_only loading refuses. These four helpers give plain full tensors for every layout; they
# are collectives under FSDP2 (call them on every rank), plain calls otherwise.
def _full_options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions
    return StateDictOptions(full_state_dict=True, **kw)


def model_state_dict(model: nn.Module) -> dict:
    """Full (unsharded) state dict of the underlying model, keys without DDP/compile prefixes. Under FSDP2 this
    is a collective: rank 0 receives the full tensors on the CPU (it is the one that saves), the other ranks
    an empty dict, so no rank holds more than one extra copy of the model."""
    if is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import get_model_state_dict
        state = get_model_state_dict(unwrap(model), options=_full_options(cpu_offload=True))
        if _ep.is_sharded(unwrap(model)):   # FSDP2 + EP: the experts (not FSDP's) gathered apart, on every rank
            experts = _ep.gather_experts(unwrap(model))
            state.update({k: v.cpu() for k, v in experts.items()} if state else {})
        return state
    if _ep.is_sharded(unwrap(model)):   # EP: the expert shards gathered into the one-process layout
        return _ep.full_state_dict(unwrap(model))
    return unwrap(model).state_dict()


def load_model_state_dict(model: nn.Module, state: dict):
    """Load a full state dict (as saved by model_state_dict) into a plain, DDP or FSDP2 model. Under FSDP2
    every rank passes the full dict (each rank reads the checkpoint file) and keeps its own shards."""
    if is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import set_model_state_dict
        if _ep.is_sharded(unwrap(model)):   # FSDP2 + EP: this rank's experts cut out of the full ones
            state = _ep.slice_experts(unwrap(model), state)
        set_model_state_dict(unwrap(model), state, options=_full_options())
    elif _ep.is_sharded(unwrap(model)):
        _ep.load_full_state_dict(unwrap(model), state)
    else:
        unwrap(model).load_state_dict(state)


def optimizer_state_dict(model: nn.Module, opt: torch.optim.Optimizer) -> dict:
    """Full optimizer state. Plain/DDP: opt.state_dict(). FSDP2: unsharded and keyed by parameter name, on
    rank 0's CPU (other ranks: empty), like model_state_dict."""
    if is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
        state = get_optimizer_state_dict(unwrap(model), opt, options=_full_options(cpu_offload=True))
        if _ep.is_sharded(unwrap(model)):   # FSDP2 + EP: the experts' states gathered apart, on every rank
            experts = _ep.gather_expert_optimizer_state(unwrap(model), opt)
            if state:
                state["state"].update(experts)
        return state
    if _ep.is_sharded(unwrap(model)):
        return _ep.full_optimizer_state(unwrap(model), opt)
    return opt.state_dict()


def load_optimizer_state_dict(model: nn.Module, opt: torch.optim.Optimizer, state: dict):
    if is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict
        if _ep.is_sharded(unwrap(model)):
            state = _ep.slice_expert_optimizer_state(unwrap(model), state)
        set_optimizer_state_dict(unwrap(model), opt, state, options=_full_options())
    elif _ep.is_sharded(unwrap(model)):
        _ep.load_full_optimizer_state(unwrap(model), opt, state)
    else:
        opt.load_state_dict(state)


def clip_grad_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_ over the model's parameters; under expert parallelism the norm of the full
    gradient, each expert counted once (ep.clip_grad_norm), so that every rank clips by the same factor."""
    if _ep.is_sharded(unwrap(model)):
        return _ep.clip_grad_norm(unwrap(model), max_norm)
    return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)


# ------------------------------------------------------------------------------------------ metrics + plots
def _jsonable(v):
    """Tensors and numpy scalars -> Python numbers; NaN/inf -> None (null), so every line is strict JSON."""
    if isinstance(v, torch.Tensor):
        v = v.item() if v.numel() == 1 else v.tolist()
    elif isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class MetricsLogger:
    """Appends one JSON object per log() call to a .jsonl file, on rank 0 only, flushed at once (a killed run
    keeps every line it logged). Appending is what --resume wants: the resumed run continues the same curve."""

    def __init__(self, path: str):
        self.path = path
        self.f = None
        if _rank() == 0:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self.f = open(path, "a", encoding="utf-8")
            # a run killed mid-write can leave a torn last line: start ours on a fresh line
            if self.f.tell() > 0:
                with open(path, "rb") as g:
                    g.seek(-1, os.SEEK_END)
                    if g.read(1) != b"\n":
                        self.f.write("\n")

    def log(self, step: int | None = None, **metrics):
        if self.f is None:
            return
        row = {"step": step} if step is not None else {}
        row.update({k: _jsonable(v) for k, v in metrics.items()})
        self.f.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
        self.f.flush()

    def close(self):
        if self.f is not None:
            self.f.close()
            self.f = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_metrics(path: str) -> list[dict]:
    """The rows of a metrics .jsonl. A malformed line (a write torn by a kill) is skipped with a warning."""
    rows, bad = [], []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                bad.append(i)
    if bad:
        warnings.warn(f"{path}: skipped malformed line(s) {bad}")
    return rows


# How a logged metric is drawn: (axis label with its unit, y range). Shares and [0, 1] rewards are drawn on [0, 1]
# whatever their values, counts, lengths and losses from 0: a 1% wobble stays a 1% wobble, never a trend.
_SHARE_RE = re.compile(r"(^|_)(accuracy|format|language|helpful|safety|pass@1|pass@\d+|cons@\d+|mixed|reflect|"
                       r"reflect_eff|words|clip_low|clip_high|truncated|violation|unsafe|rm_unsafe)(_|$)")
_UNITS = (("tokens_per_s", "tokens/s"), ("length", "tokens"), ("loss", "loss (nats/token)"), ("lr", "learning rate"),
          ("kl", "KL to the reference (nats/token)"), ("entropy", "entropy (nats/token)"),
          ("grad_norm", "gradient norm"), ("time", "seconds"), ("rss", "MB"), ("reward", "reward"))


def metric_axis(key: str, values: list) -> tuple:
    """(y label with unit, (bottom, top) with None = automatic) for metric `key` whose logged values are `values`."""
    if _SHARE_RE.search(key) and all(0.0 <= v <= 1.0 for v in values):
        return ("share" if key.startswith(("eval_", "clip", "truncated", "words", "reflect", "mixed")) else
                "reward / share (0-1)"), (0.0, 1.02)
    unit = next((u for pat, u in _UNITS if pat in key), "")
    return unit, ((0.0, None) if min(values) >= 0 else (None, None))


def plot_metrics(jsonl_path: str, keys: list[str], out_png: str, title: str | None = None,
                 xlabel: str = "step") -> list[str]:
    """One panel per key against the step, stacked, saved as a PNG; keys absent from the file are skipped. Each panel
    is titled with the metric and its first -> last value, its y label gives the unit (metric_axis: shares on
    [0, 1], lengths and losses from 0); where the file logs KEY_se (a standard error, e.g. eval.summarize's
    pass@1_se) the points get 95% error bars. A key that is 0 at every step (the clip fractions when the ratio
    stays 1) gets no panel; a note under the figure names it. Rows of the same step are merged (a training row
    and an evaluation row), and a key logged twice for a step (a resumed run re-logs the steps after its last
    checkpoint) keeps its last value. Returns the keys plotted; writes nothing when none of them is present."""
    fig, present = metrics_figure(jsonl_path, keys, title or os.path.splitext(os.path.basename(out_png))[0].replace(
        "_", " "), xlabel)
    if fig is not None:
        os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
        fig.savefig(out_png, dpi=100)
    return present


def metrics_figure(jsonl_path: str, keys: list[str], title: str, xlabel: str = "step"):
    """plot_metrics' figure, not saved: (matplotlib Figure or None, the keys drawn)."""
    # Figure + its own Agg canvas: no pyplot, so no global backend switch and no display needed
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    by_step = {}
    for i, row in enumerate(read_metrics(jsonl_path)):
        by_step.setdefault(row.get("step", i), {}).update(row)   # rows of one step merge; the last value wins
    steps = sorted(by_step)
    logged = [k for k in keys if any(by_step[s].get(k) is not None for s in steps)]
    present = [k for k in logged if any(by_step[s].get(k) not in (None, 0, 0.0) for s in steps)]
    zero = [k for k in logged if k not in present]
    if not present:
        warnings.warn(f"plot_metrics: none of {keys} in {jsonl_path} (or 0 throughout); no plot written")
        return None, []
    fig = Figure(figsize=(7, 2.5 * len(present) + (0.8 if zero else 0.5)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(present), 1, sharex=True, squeeze=False)[:, 0]
    for ax, k in zip(axes, present):
        xs = [s for s in steps if by_step[s].get(k) is not None]
        ys = [by_step[s][k] for s in xs]
        se = [by_step[s].get(f"{k}_se") for s in xs]
        if all(e is not None for e in se):
            ax.errorbar(xs, ys, yerr=[1.96 * e for e in se], lw=1.2, marker="o", capsize=3, label="95% interval")
            ax.legend(fontsize=8)
        else:
            ax.plot(xs, ys, lw=1.2, marker="o" if len(xs) < 20 else None)
        unit, (bottom, top) = metric_axis(k, ys)
        ax.set_ylabel(unit)
        if bottom is not None:
            ax.set_ylim(bottom=bottom)
        if top is not None:
            ax.set_ylim(top=top)
        ax.set_title(f"{k.replace('_', ' ')}: {ys[0]:.3g} -> {ys[-1]:.3g}", fontsize=10)
        ax.grid(alpha=0.3)
    from matplotlib.ticker import MaxNLocator
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1].set_xlabel(xlabel + (f"\n(not drawn, 0 at every step: {', '.join(zero)})" if zero else ""))
    fig.suptitle(title)
    return fig, present


# --------------------------------------------------------------------------------------------- command line
def _error_line(msg) -> str:
    """One line, starting with "error: " exactly once: messages raised as SystemExit("error: ...") keep theirs."""
    msg = " ".join(str(msg).split())        # a multi-line message becomes one line
    return msg if msg.startswith("error: ") else f"error: {msg}"


def run_cli(main, argv=None) -> int:
    """Run a command-line main(argv) and return its exit status, turning every EXPECTED failure into one line on
    stderr, "error: ...", with status 2 and no traceback: a bad argument or config value (SystemExit with a
    message), a damaged checkpoint (CheckpointError), a malformed data file (DataError), a missing or unreadable
    input file, a full disk, a file that is not valid JSON. Ctrl-C prints one line and returns 130 (the shell's code for SIGINT). Anything else
    is a bug and keeps its traceback.
        if __name__ == "__main__":
            sys.exit(run_cli(main))
    """
    import sys

    def fail(msg, code=2) -> int:
        print(_error_line(msg), file=sys.stderr, flush=True)
        return code
    try:
        main(sys.argv[1:] if argv is None else argv)
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):   # argparse's own exits (--help: 0, usage error: 2)
            return 0 if e.code is None else e.code
        return fail(e.code)
    except KeyboardInterrupt:
        return fail("interrupted", 130)
    except (CheckpointError, DataError) as e:
        return fail(e)
    except json.JSONDecodeError as e:
        # json.load's message names no file; the caller's chained exception may, so report what we can
        return fail(f"not valid JSON ({e.msg}, line {e.lineno} column {e.colno})")
    except OSError as e:
        if e.errno == errno.ENOSPC:
            return fail(f"disk full while writing {e.filename or 'a file'}")
        if isinstance(e, (FileNotFoundError, IsADirectoryError, PermissionError)):
            # our own raises carry a full sentence; the OS's carry strerror + filename
            return fail(f"{e.strerror}: {e.filename}" if e.filename and e.strerror else e)
        raise
    return 0


# ---------------------------------------------------------------------------------------------------- JSONL
def write_jsonl(path: str, rows: list):
    """Rows as JSON lines, atomically (temp file + rename): a killed stage never leaves half a data set."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


class CheckpointError(RuntimeError):
    """A checkpoint file (checkpoint.py) exists but cannot be read back (corrupt, truncated, or not a weights_only
    file)."""


class DataError(ValueError):
    """An input file that exists but cannot be used (a malformed JSONL line, ...): the message names the file and,
    where it helps, the line. A ValueError, so callers that caught ValueError before still do."""


def read_jsonl(path: str) -> list:
    """The rows of a JSONL file; a malformed line is a DataError naming the file and the line."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{i}: not valid JSON ({e.msg})") from None
    return rows


def read_json(path: str):
    """A JSON file's content, or None when there is no such file."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def trim_heap():
    """Hand glibc's free heap pages back to the system (malloc_trim). Without it an RL stage's resident memory
    grows by 20-80 MB a step on the toy (each step frees tensors of new sizes, and glibc keeps the freed pages):
    3.34 GB at the end of R1-Zero's 80 steps. Trimmed after each step (and each sampling batch) the stage peaks at
    2.58 GB with the same results (docs/toy_run_all/README.md). A no-op where the C library is not glibc (macOS,
    musl)."""
    import ctypes
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def release_memory():
    """Give the memory a finished stage held back to the system: Python's garbage, then glibc's free heap pages
    (without it, the resident size of `--stage all` keeps the high-water mark of every stage before)."""
    import gc
    gc.collect()
    trim_heap()


def resident_mb() -> dict:
    """{"rss_mb": resident memory now, "peak_mb": the process's peak so far} in MB, from /proc/self/status (VmRSS,
    VmHWM; Linux); elsewhere the peak from getrusage and no current value."""
    try:
        with open("/proc/self/status") as f:
            v = {k: int(x.split()[0]) / 1024 for k, _, x in (ln.partition(":") for ln in f) if k in ("VmRSS", "VmHWM")}
        return {"rss_mb": v.get("VmRSS"), "peak_mb": v.get("VmHWM")}
    except OSError:
        import resource
        import sys
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss          # kB on Linux, bytes on macOS
        return {"rss_mb": None, "peak_mb": peak / (2 ** 20 if sys.platform == "darwin" else 1024)}


class PeakRSS:
    """`with PeakRSS() as m: ...` -> m.peak_mb: the resident memory's maximum over the block, sampled every
    `every` seconds by a daemon thread (VmHWM is the whole process's peak, and resetting it through clear_refs
    would also reset the figure /usr/bin/time -v reports); m.end_mb: resident at the block's end; m.seconds: the
    block's wall time."""

    def __init__(self, every: float = 0.1):
        import threading
        self.every, self.peak_mb, self.end_mb, self.seconds = every, resident_mb()["rss_mb"], None, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self):
        while not self._stop.wait(self.every):
            now = resident_mb()["rss_mb"]
            if now is not None:
                self.peak_mb = max(self.peak_mb or 0.0, now)

    def __enter__(self):
        self._t0 = time.perf_counter()
        if self.peak_mb is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self._t0
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.end_mb = resident_mb()["rss_mb"]
        if self.end_mb is not None:
            self.peak_mb = max(self.peak_mb or 0.0, self.end_mb)
        return False


def plot_stage(d: str, keys: list, name: str, xlabel: str = "step"):
    """plot_metrics of stage folder d's metrics.jsonl into d/plots/name (nothing when there are no metrics), titled
    "<stage>: <name>"."""
    os.makedirs(os.path.join(d, "plots"), exist_ok=True)
    if os.path.exists(os.path.join(d, "metrics.jsonl")):
        plot_metrics(os.path.join(d, "metrics.jsonl"), keys, os.path.join(d, "plots", name),
                     title=f"{os.path.basename(os.path.normpath(d))}: {os.path.splitext(name)[0].replace('_', ' ')}",
                     xlabel=xlabel)


# ------------------------------------------------------------------------------------------------------ RNG
def set_seed(seed: int):
    """Seed python's random, numpy's global generator and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)   # also seeds all CUDA devices


def get_rng_state() -> dict:
    """Every global RNG this process uses, in types that torch.load(weights_only=True) accepts."""
    version, mt, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "state": list(mt), "gauss_next": gauss_next},
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict):
    """Restore what get_rng_state() captured (missing parts, e.g. CUDA on a CPU machine, are left alone)."""
    if "python" in state:
        p = state["python"]
        random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
    if "numpy" in state:
        n = state["numpy"]
        keys = np.asarray(n["keys"].numpy() if isinstance(n["keys"], torch.Tensor) else n["keys"], dtype=np.uint32)
        np.random.set_state((n["name"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        states = state["cuda"][:torch.cuda.device_count()]
        for i, s in enumerate(states):
            torch.cuda.set_rng_state(s, i)


# ------------------------------------------------------------------------------------------------ precision
PRECISIONS = ("auto", "bf16", "fp32")


def cpuinfo(field: str) -> str:
    """The first `field` line of /proc/cpuinfo ("flags", "model name"), or "" where there is none (not Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((ln.split(":", 1)[1].strip() for ln in f if ln.split(":", 1)[0].strip() == field), "")
    except OSError:
        return ""


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (x86 AVX512-BF16 or AMX). There, bf16 matmuls run ~2x faster than
    fp32 (toy model, AMD EPYC: 13.5k vs 6.9k training tokens/s on 2 threads); elsewhere they are emulated, slower."""
    flags = cpuinfo("flags").split()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def uses_bf16(device, precision: str = "auto") -> bool:
    """precision: "bf16" | "fp32" | "auto" (bf16 on CUDA and on CPUs with native bf16, else fp32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision == "bf16"
    return torch.device(device).type == "cuda" or (torch.device(device).type == "cpu" and cpu_has_bf16())


def autocast(device, precision: str = "auto"):
    """The training forward's mixed precision: bf16 matmuls under torch.autocast, fp32 weights, optimizer
    states and losses (cross-entropy and log-softmax autocast to fp32)."""
    device = torch.device(device)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=uses_bf16(device, precision))


def adamw(param_groups, **kwargs) -> torch.optim.AdamW:
    """torch.optim.AdamW with its fused kernel where torch has one (CPU and CUDA): the whole update is one
    multi-tensor op instead of ~10 elementwise ops per parameter. torch's default on CPU is the per-parameter
    loop (bench/train.py --profile shows its mul/add_/sqrt calls); fused computes the same update (equal to the
    loop's within float rounding, tests/test_speed.py). The one place every trainer builds its optimizer."""
    param_groups = list(param_groups)     # a generator (model.parameters()) is read once, here
    params = [p for g in param_groups for p in (g["params"] if isinstance(g, dict) else [g])]
    fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    from torch.distributed.tensor import DTensor
    if len({isinstance(p, DTensor) for p in params}) > 1:   # FSDP2 + EP: DTensor shards beside plain expert
        return torch.optim.AdamW(param_groups, foreach=False, **kwargs)   # slices; multi-tensor ops refuse the mix
    return torch.optim.AdamW(param_groups, fused=fused or None, **kwargs)


# --------------------------------------------------------------------------------------------------- timing
def get_peak_flops(device="cpu", n: int | None = None, iters: int = 5, dtype=None) -> float:
    """The machine's measured matmul peak in FLOP/s (the MFU denominator): the best of `iters` timed (n, n) @
    (n, n) products in `dtype` (default: bf16 on CUDA, fp32 on CPU; with the current torch thread count)."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    n = n or (8192 if cuda else 1024)
    dtype = dtype or (torch.bfloat16 if cuda else torch.float32)
    g = torch.Generator().manual_seed(0)   # a private generator: measuring must not move the global RNG
    a = torch.randn(n, n, generator=g).to(device, dtype)
    b = torch.randn(n, n, generator=g).to(device, dtype)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    a @ b                           # warm-up: allocations, kernel selection
    sync()
    best = float("inf")
    for _ in range(iters):
        t0 = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best          # n^2 outputs, n multiply-adds each
