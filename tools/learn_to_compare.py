"""How long does the toy model take to learn the countdown verdict when it learns nothing else?

    python tools/learn_to_compare.py                                  # 1200 steps, ~12 min on 2 CPU cores
    python tools/learn_to_compare.py --shape sum --steps 301          # ~4 min
    python tools/learn_to_compare.py --shape sum --target 24 --steps 301

A fresh model of the toy config trains on documents made of comparisons only, half of them hits, the misses off by
1, 2 or 10, at the pretraining learning rate and batch (16 x 256 tokens). Every 25 steps it is asked the verdict of
200 fresh comparisons (teacher-forced, P(yes) > P(no)), and the share of "yes" is printed for hits and for misses.
Shapes: "drill" is data._doc_drill's ("4*8=32, need 32, yes."; with --share < 1 the other facts are two-digit
additions, a stand-in for everything else a corpus teaches); "sum" is "22+2=24, need 24, yes." with a two-digit
value and a target drawn from 12..98, or always the same one (--target).

Why: R1-Zero lengthens a search only if writing more tries pays, and a try pays only if the model knows
when it has hit the target. docs/toy_run's base cannot tell (tools/countdown_verdicts.py --model: 0.54 mean P(yes)
at a drill hit, 0.44 at a miss). This measures the comparison's learnability by itself, so that a world change
meant to make the verdict learnable can be tried in minutes before a 40-minute pretraining run. One run each (the
numbers were first made by scratch scripts with the same draws, and this file reproduces their first steps):
- drill, 1200 steps: at chance (yes at every hit and every miss, or at none) up to about step 900; from step 1000
  to 1200 yes at 0.84-0.95 of hits and still 0.38-0.56 of misses. ~16k rows of nothing but comparisons buy a
  partial comparison; the toy pretraining's 2000 steps hold far fewer.
- sum, a target drawn each time, 300 steps: at chance throughout (yes at 0.81 of hits and 0.74 of misses at best).
- sum, the target always 24, 300 steps: yes at 0.80 of hits and 0.15 of misses by step 125, 1.00 and 0.00 from
  step 225 on. Telling whether a value is one fixed number is learned fast; matching two numbers that both vary
  (binding the target written earlier to the value just computed) is what the small model is slow at.
"""
import argparse
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=1201)
    ap.add_argument("--shape", choices=("drill", "sum"), default="drill",
                    help='drill: "4*8=32, need 32, yes" as data._doc_drill writes it; sum: "22+2=24, need 24, yes" '
                         "(a two-digit value, a target in 12..98 or --target)")
    ap.add_argument("--target", type=int, default=None, help="sum shape: the same target every time (e.g. 24)")
    ap.add_argument("--share", type=float, default=1.0, help="drill shape: share of comparisons among the facts")
    ap.add_argument("--lr", type=float, default=3e-3)
    a = ap.parse_args(argv)
    if a.target is not None and a.shape != "sum":
        ap.error("--target needs --shape sum")

    import torch

    from model import ModelArgs, Transformer
    from tokenizer import get_tokenizer
    tok = get_tokenizer("toy")
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "toy.json")) as f:
        cfg = json.load(f)
    torch.manual_seed(0)
    m = Transformer(ModelArgs(**{**cfg["model"], "vocab_size": tok.vocab_size}))
    rng = random.Random(0)

    def drill(r, hit=None):
        """A comparison in the drill's shape (hit None: a coin flip inside, as the corpus draws it)."""
        x, y = r.randint(1, 9), r.randint(1, 9)
        op = r.choice("+*")
        v = x + y if op == "+" else x * y
        t = v if (r.random() < 0.5 if hit is None else hit) else max(2, v + r.choice((-10, -2, -1, 1, 2, 10)))
        return f"{x}{op}{y}={v}, need {t}, " + ("yes" if t == v else "no"), t == v

    def summed(r, hit):
        t = a.target if a.target is not None else r.randint(12, 98)
        v = t if hit else max(11, t + r.choice((-10, -2, -1, 1, 2, 10)))
        y = r.randint(1, 9)
        x = v - y
        if x < 1:
            x, y = v - 1, 1
        return f"{x}+{y}={v}, need {t}, " + ("yes" if v == t else "no"), v == t

    def fact():
        if a.shape == "sum":
            return summed(rng, rng.random() < 0.5)[0]
        if rng.random() > a.share:
            x, y = rng.randint(10, 89), rng.randint(1, 9)
            return f"{x}+{y}={x + y}"
        return drill(rng)[0]

    def batch(B=16, T=256):          # the pretraining's rows: 16 x 256 tokens, documents joined by EOS
        rows = []
        for _ in range(B):
            ids = []
            while len(ids) < T + 1:
                ids += tok.encode(". ".join(fact() for _ in range(10)) + ".") + [tok.eos_id]
            rows.append(ids[:T + 1])
        return torch.tensor(rows)

    yes, no = tok.encode(" yes")[0], tok.encode(" no")[0]
    prng, probe = random.Random(123), []
    for i in range(200):             # 200 fresh comparisons, every other one a hit, after one solved fact
        text, hit = (summed if a.shape == "sum" else drill)(prng, i % 2 == 0)
        if hit != (i % 2 == 0):      # a miss that landed on its target
            continue
        probe.append((tok.encode(("3+4=7. " if a.shape == "sum" else "3*4=12. ") + text.rsplit(",", 1)[0] + ","), hit))

    def verdicts():
        m.eval()
        said = {True: [], False: []}
        with torch.no_grad():
            for ids, hit in probe:
                p = torch.softmax(m(torch.tensor([ids]))[0, -1].float(), -1)
                said[hit].append(float(p[yes] / (p[yes] + p[no])) > 0.5)
        m.train()
        return sum(said[True]) / len(said[True]), sum(said[False]) / len(said[False])

    opt = torch.optim.AdamW(m.parameters(), lr=a.lr, weight_decay=0.1)
    t0 = time.time()
    for step in range(a.steps):
        x = batch()
        _, _, parts = m(x[:, :-1], x[:, 1:])
        (parts["ce"] + parts["balance"]).backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        if step % 25 == 0:
            print(f"step {step}: loss {parts['ce'].item():.3f}, says yes at %.2f of hits and %.2f of misses "
                  f"({time.time() - t0:.0f} s)" % verdicts(), flush=True)


if __name__ == "__main__":
    main()
