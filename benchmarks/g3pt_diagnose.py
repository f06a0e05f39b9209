"""Why did the nano G3PT tokenizer stall near IoU 0.37? Short measured runs, one suspect each.

Each run trains the nano tokenizer from seed 0 on the 400 training shapes (batch 16, lr 2e-3, 50 warmup steps,
cosine schedule) with one change, then scores IoU on 40 validation shapes (every other one of the first 80 of the
100, i.e. of the first 8 of the 10 categories: their IoU reads higher than the full set's; full
4096-query pools). `--s2 0` keeps it in stage 1 (LayerNorm in place of LFQ: the continuous autoencoder);
`--bypass` also skips the residual loop over scales (encoder straight into the decoder); `--init` starts from a
saved state (stage-2 variants from one stage-1 checkpoint); `--save` writes the trained state; `--eval-stage 2` scores
a stage-1 state through the quantizer untrained (the switch itself); `--freeze` keeps parameters whose names start
with the given prefixes fixed; `--stage1 tanh` (= `--kw '{"stage1": "tanh"}'`) puts the LFQ's own projections
around a tanh in place of stage 1's LayerNorm (Linear(C, bits) -> tanh -> Linear(bits, C): the continuous stage then
trains the quantizer's maps, and the switch only rounds tanh(u) to sign(u)).
Every run appends one row to `results/g3pt_diagnosis_<device>.json` (wall and process CPU time, load average).

    python benchmarks/g3pt_diagnose.py --s1 600 --tag base600
    python benchmarks/g3pt_diagnose.py --s1 600 --tag bypass --bypass
    python benchmarks/g3pt_diagnose.py --s1 600 --tag freq8 --kw '{"n_freqs": 8}'
    python benchmarks/g3pt_diagnose.py --s1 0 --s2 400 --init s1.pt --tag ew0.5 --kw '{"entropy_weight": 0.5}'
    python benchmarks/g3pt_diagnose.py --s1 0 --s2 0 --init s1.pt --eval-stage 2 --tag switch   # IoU right after the switch
    python benchmarks/g3pt_diagnose.py --s1 0 --s2 500 --init s1.pt --lr 5e-4 --tag s2_lr5e-4
    python benchmarks/g3pt_diagnose.py --s1 1000 --n-train 2 --score-train --tag fit20   # can it fit 20 shapes?
    python benchmarks/g3pt_diagnose.py --oracle --tag oracle    # what 256 points with normals say, no learning
"""
from __future__ import annotations
import argparse, json, os, time, types
from pathlib import Path

import torch

from _common import machine, save_results
from nsp_explore.g3pt import G3PTOut, G3PTTokenizer, evaluate_tokenizer, train_tokenizer
from nsp_explore.occupancy import OccupancyShapes
from nsp_explore.train import TrainConfig


def bypass_loop(tok):
    "Encoder straight into the decoder: Ẑ = Z at every scale (no down/up attention, no bottleneck)."
    def fwd(self, x, normals=None):
        z, pos = self.encoder(x, normals)
        return G3PTOut(z, z, [z] * self.K, [None] * self.K, [0.0] * self.K, dict(quant=z.new_zeros(())), dict(usage_frac=[]), pos)
    tok.forward = types.MethodType(fwd, tok)


class Subset(torch.utils.data.Dataset):
    def __init__(self, ds, idx): self.ds, self.idx = ds, idx
    def __len__(self): return len(self.idx)
    def __getitem__(self, i): return self.ds[self.idx[i]]


def nn_normal_oracle(ds, n_points: int = 256) -> dict:
    """No learning: a query is inside when it lies behind the nearest of the shape's `n_points` input points along that
    point's outward normal. What the input points alone say about the occupancy; `occupied` = volume fraction."""
    import numpy as np
    from scipy.spatial import cKDTree
    iou, iou_u, occupied = [], [], []
    for r in ds.records:
        s, n, q, o, near = r['surface'][:n_points], r['normals'][:n_points], r['points'], r['occ'] > 0.5, r['near']
        _, j = cKDTree(s).query(q)
        pred = ((q - s[j]) * n[j]).sum(1) < 0
        iou.append((pred & o).sum() / max(1, (pred | o).sum()))
        u = ~near
        iou_u.append((pred[u] & o[u]).sum() / max(1, (pred[u] | o[u]).sum())); occupied.append(o[u].mean())
    return dict(iou=float(np.mean(iou)), iou_uniform=float(np.mean(iou_u)), occupied=float(np.mean(occupied)), n_val=len(ds))


def main(a):
    torch.set_num_threads(1)
    kw = json.loads(a.kw)
    if a.stage1: kw['stage1'] = a.stage1
    if a.oracle:
        r = nn_normal_oracle(OccupancyShapes('val', n_points=256, n_queries=4096))
        print('RESULT', json.dumps(r)); save_results('g3pt_oracle', [r], note=nn_normal_oracle.__doc__); return
    train = OccupancyShapes('train', n_points=256, n_queries=4096, n_per_category=a.n_train)
    val = OccupancyShapes('val', n_points=256, n_queries=4096)
    torch.manual_seed(0)
    tok = G3PTTokenizer('nano', **kw)
    if a.bypass: bypass_loop(tok)
    if a.init: tok.load_state_dict(torch.load(a.init))
    frozen = [n for n, p in tok.named_parameters() if a.freeze and n.startswith(tuple(a.freeze.split(',')))]
    for n, p in tok.named_parameters(): p.requires_grad_(n not in frozen)
    load0, t, c0 = os.getloadavg()[0], time.time(), time.process_time()
    tok, hists = train_tokenizer(tok, train, (a.s1, a.s2), batch_size=a.bs,
                                 train_cfg=TrainConfig.preset('nano', lr=a.lr, warmup_steps=a.warm, log_every=50))
    wall, cpu = time.time() - t, time.process_time() - c0
    tok.set_stage(a.eval_stage or (1 if a.s2 == 0 else 2))
    r = evaluate_tokenizer(tok, Subset(val, list(range(0, len(val), max(1, len(val) // a.nval)))[:a.nval]))
    row = dict(tag=a.tag, change=kw, bypass=a.bypass, stage1=tok.cfg.stage1, freeze=a.freeze, eval_stage=tok.stage, init=bool(a.init), s1=a.s1, s2=a.s2, lr=a.lr, batch=a.bs, wall_s=round(wall, 1),
               cpu_s=round(cpu, 1), loadavg_1min=[round(load0, 2), round(os.getloadavg()[0], 2)], n_val=a.nval,
               iou=round(r['iou'], 4), iou_uniform=round(r['iou_uniform'], 4), iou_per_scale=[round(v, 3) for v in r['iou_per_scale']],
               usage_of_possible=[round(v, 3) for v in r['usage']['of_possible']] if 'usage' in r else None,
               train_iou_curve=[(int(x['step']), round(float(x['iou']), 3)) for h in hists for x in h.rows[::4]])
    if a.score_train:   # the same shapes it trained on (their first 256 points): under- or overfitting?
        seen = OccupancyShapes('train', n_points=256, n_queries=4096, n_per_category=min(10, a.n_train or 40), resample=False)
        row['train_shapes_iou'] = round(evaluate_tokenizer(tok, seen)['iou'], 4)
    if a.n_train: row['n_train_per_category'] = a.n_train
    print('RESULT', json.dumps(row), flush=True)
    if a.save: torch.save(tok.state_dict(), a.save)
    f = Path(__file__).parent / 'results' / f"g3pt_diagnosis_{machine()['device']}.json"
    rows = json.loads(f.read_text())['rows'] if f.exists() and not a.fresh else []
    save_results('g3pt_diagnosis', [r for r in rows if r['tag'] != a.tag] + [row],
                 note='nano tokenizer, seed 0, one change per run; IoU on 40 validation shapes; 1 torch thread on 2 CPU '
                      'cores shared with other jobs (load average per row)')


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--s1', type=int, default=600); p.add_argument('--s2', type=int, default=0)
    p.add_argument('--lr', type=float, default=2e-3); p.add_argument('--warm', type=int, default=50)
    p.add_argument('--bs', type=int, default=16); p.add_argument('--tag', required=True)
    p.add_argument('--kw', default='{}', help='G3PTConfig overrides as JSON')
    p.add_argument('--nval', type=int, default=40)
    p.add_argument('--n-train', type=int, default=None, help='training shapes per category (default: all 40)')
    p.add_argument('--score-train', action='store_true', help='also score IoU on the first 10 training shapes per category')
    p.add_argument('--bypass', action='store_true'); p.add_argument('--init', default=''); p.add_argument('--save', default='')
    p.add_argument('--eval-stage', type=int, default=0, help='1 | 2: score in this stage (default: 1 when --s2 0, else 2)')
    p.add_argument('--freeze', default='', help='comma-separated parameter-name prefixes kept fixed, e.g. encoder,down_q')
    p.add_argument('--stage1', default='', choices=['', 'layernorm', 'tanh'], help="stage 1's stand-in for the quantizer (G3PTConfig.stage1)")
    p.add_argument('--fresh', action='store_true', help='start a new results file')
    p.add_argument('--oracle', action='store_true', help='only the nearest-point-normal oracle on the 100 validation shapes')
    main(p.parse_args())
