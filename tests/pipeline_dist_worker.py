"""`train_pipeline.py --stage all` under torchrun, once per given config, in one launch (tests/test_scale.py).

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/pipeline_dist_worker.py CFG.json [CFG2.json]

Each config runs through train_pipeline.main as from the command line, in the one process group the first
run sets up. The figures (plot_stage, rl_figures: matplotlib PNGs drawn by rank 0 alone, most of a tiny run's
time) are replaced by no-ops: they involve no collective and no model, and tests/test_report.py covers them.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import train_pipeline as tp  # noqa: E402

tp.plot_stage = lambda *a, **k: None
tp.rl_figures = lambda *a, **k: None

if __name__ == "__main__":
    # one process group for all the runs: main leaves it up (a group destroyed and made again under the same
    # torchrun rendezvous hangs), and the last run's main takes it down
    cleanup = tp.cleanup_distributed
    tp.cleanup_distributed = lambda: None
    for i, path in enumerate(sys.argv[1:]):
        if i == len(sys.argv) - 2:
            tp.cleanup_distributed = cleanup
        tp.main(["--stage", "all", "--config", path])
