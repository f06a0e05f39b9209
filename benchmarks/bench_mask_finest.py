"""What do the finest scale's codes tell about each other? The cross-entropy of hidden codes as more are shown.

    python benchmarks/bench_mask_finest.py --dir D              # D: a pair folder whose generator has mask_finest
    python benchmarks/bench_mask_finest.py --dir D --control C  # and a plain generator's line for comparison

A `mask_finest` generator (lesson 10; `scripts/train_pretrained.py ... --generator-mask-finest`) takes the finest
scale's codes as input where they are known. Teacher-forced on `--n` validation shapes per category (their true
coarser scales, one FPS tree), a share of each shape's finest codes is shown (uniformly at random, `--seed`) and the
rest are scored: mean cross-entropy (nats) and top-1 accuracy over the hidden codes. At share 0 the model sees no
finest code (the sampler's first pass). If the codes of a scale were independent given the coarser scales, showing
some would not lower the cross-entropy of the others. `--control C` adds the cross-entropy of a plain generator
(share 0 only). Writes benchmarks/results/mask_finest_<device>.json (or --results-dir).
"""
from __future__ import annotations
import argparse, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, save_results   # noqa: E402  (puts the repo on sys.path)
import torch
import torch.nn.functional as F

from nsp_explore.data import SyntheticShapes
from nsp_explore.generate import cache_tokens, load_pretrained


@torch.no_grad()
def hidden_ce(gen, seqs, share_shown: float, seed: int = 0, batch: int = 100) -> dict:
    "Mean CE (nats) and top-1 accuracy of the hidden finest codes of `seqs` with a share `share_shown` of them shown."
    sK, g = gen.scales[-1], torch.Generator().manual_seed(seed)
    if share_shown > 0 and not gen.cfg.mask_finest: raise ValueError("showing codes needs a mask_finest generator")
    ce_sum, hits, n = 0.0, 0, 0
    for a in range(0, len(seqs), batch):
        b = seqs.batch(torch.arange(a, min(a + batch, len(seqs))))
        true = b['tokens'][:, -sK:]                                                     # (B, s_K)
        shown = torch.rand(true.shape, generator=g) < share_shown                       # (B, s_K)
        kw = dict(revealed=torch.where(shown, true, gen.mask_id)) if gen.cfg.mask_finest else {}
        logits = gen.eval()(b['feat'], b['pos'], b['slot'], b['label'], **kw)[:, -sK:].double()   # (B, s_K, V)
        ce = F.cross_entropy(logits.flatten(0, 1), true.flatten(), reduction='none').view(true.shape)
        ce_sum += float(ce[~shown].sum()); hits += int((logits.argmax(-1) == true)[~shown].sum()); n += int((~shown).sum())
    return dict(ce=ce_sum / n, acc=hits / n, hidden=n)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--dir', required=True, help='a pair folder whose generator was trained with mask_finest')
    ap.add_argument('--control', default=None, help='a pair folder with a plain generator on the same tokenizer')
    ap.add_argument('--n', type=int, default=50, help='validation shapes per category')
    ap.add_argument('--shares', default='0,0.25,0.5,0.75,0.9', help='shares of the finest codes shown')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--results-dir', default=None)
    a = ap.parse_args()
    t0 = time.time()
    tok, gen = load_pretrained('nano', directory=a.dir)
    if not gen.cfg.mask_finest: ap.error(f'{a.dir}: its generator has no mask_finest input')
    val = SyntheticShapes('val', tok.info['categories'], a.n, n_points=tok.n_points, resample=False, normalizer=tok.normalizer())
    seqs = cache_tokens(tok, val)
    rows = [dict(generator='mask_finest', share_shown=float(s), **hidden_ce(gen, seqs, float(s), a.seed))
            for s in a.shares.split(',')]
    if a.control:
        tok_c, ctrl = load_pretrained('nano', directory=a.control)
        if any(not torch.equal(u, v) for u, v in zip(tok_c.state_dict().values(), tok.state_dict().values())):
            ap.error('--control: its tokenizer differs from --dir\'s')
        rows.append(dict(generator='plain (control)', share_shown=0.0, **hidden_ce(ctrl, seqs, 0.0, a.seed)))
    print_table(rows, f'finest-scale codes: cross-entropy of the hidden ones as more are shown ({a.n} validation shapes per category)')
    save_results('mask_finest', rows, a.results_dir, command=' '.join(sys.argv), pair=a.dir, control=a.control,
                 n_per_category=a.n, seed=a.seed, scales=list(tok.scales), wall_s=round(time.time() - t0, 1))


if __name__ == '__main__':
    main()
