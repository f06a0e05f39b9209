"""G3PT on the synthetic benchmark: the nano CQT tokenizer (two stages), its occupancy quality (IoU, CS-IoU,
near-surface accuracy, mesh F@0.01 / Chamfer), codebook usage per scale, the tokenizer ablations at the same
token budget and steps (CQT+LFQ, pooling+LFQ, single-scale LFQ, CQT+VQ), then the CAR generator: samples
decoded to meshes, their surface points scored with compute_all_metrics against held-out shapes.

    python benchmarks/bench_g3pt.py [--steps 600 1400] [--car-steps 800]        # -> results/g3pt_<device>.json
    python benchmarks/bench_g3pt.py --tokenizer data_samples/pretrained/g3pt_nano_tokenizer.pt   # the shipped one
    python benchmarks/bench_g3pt.py --ablations-only [--ablation-steps 200 400]  # -> results/g3pt_ablation_<device>.json
    python benchmarks/bench_g3pt.py --ablations-only --recipe shipped --steps 2500 1000   # the shipped recipe, ~7 min a row
"""
from __future__ import annotations
import argparse, json, os, time
from pathlib import Path

import numpy as np
import torch

from _common import print_table, save_results
from nsp_explore.g3pt import G3PTTokenizer, evaluate_tokenizer, load_g3pt, train_tokenizer, train_car
from nsp_explore.generate import cache_tokens, generator_train_config, sample
from nsp_explore.metrics import compute_all_metrics
from nsp_explore.occupancy import OccupancyShapes, mesh_metrics
from nsp_explore.train import TrainConfig


def eval_row(name, tok, val, steps, secs, n_mesh=10):
    "Validation scores of a trained tokenizer as one table row (IoU on the full pools, usage per scale, mesh F / Chamfer)."
    r = evaluate_tokenizer(tok, val)
    row = dict(tokenizer=name, steps=f'{steps[0]}+{steps[1]}', train_s=round(secs, 1), iou=r['iou'], iou_uniform=r['iou_uniform'],
               near_acc=r['near_acc'], cs_iou=r['cs_iou'], iou_per_scale=[round(v, 4) for v in r['iou_per_scale']],
               usage_frac=[round(v, 4) for v in r['usage']['frac']], usage_of_possible=[round(v, 4) for v in r['usage']['of_possible']],
               tokens=sum(tok.scales))
    if n_mesh:
        mm = []
        for i in range(0, len(val), max(1, len(val) // n_mesh))[:n_mesh]:
            it = val[i]
            with torch.no_grad(): z = tok(it['points'][None], it['normals'][None]).z_hat
            mm.append(mesh_metrics(tok.meshes(z, res=64)[0], val.mesh(i), n=10000, tau=0.01))
        ch = [m['chamfer_l1'] for m in mm if np.isfinite(m['chamfer_l1'])]    # an empty mesh has no Chamfer distance
        row.update(f_at_0_01=float(np.mean([m['f'] for m in mm])), chamfer_l1=float(np.mean(ch)) if ch else float('inf'),
                   n_mesh=len(mm), empty_meshes=len(mm) - len(ch))
    print({k: v for k, v in row.items()}, flush=True)
    return row


def tokenizer_run(name, train, val, steps, lr, n_mesh=10, lr2=None, **kw):
    torch.manual_seed(0)
    tok = G3PTTokenizer('nano', **kw)
    t, c, load0 = time.time(), time.process_time(), os.getloadavg()[0]
    tok, hists = train_tokenizer(tok, train, steps, train_cfg=TrainConfig.preset('nano', lr=lr, warmup_steps=50, log_every=50), lr2=lr2)
    extra = dict(stage1=tok.cfg.stage1, lr=lr, lr_stage2=lr if lr2 is None else lr2, train_cpu_s=round(time.process_time() - c, 1),
                 loadavg_1min=[round(load0, 2), round(os.getloadavg()[0], 2)])
    return tok, {**eval_row(name, tok, val, steps, time.time() - t, n_mesh), **extra}


# the ablations of G3PT's tokenizer table: (name, G3PTTokenizer overrides). 'short': the nano preset's options at
# --ablation-steps; 'shipped': the shipped tokenizer's recipe (tanh stage 1, stage 2 at --lr2) at --steps, where
# CQT + VQ keeps the LayerNorm stage 1 (a tanh stage 1 is LFQ's own projections) and a LayerNorm CQT + LFQ row
# says how much of any gap is the stage-1 choice
ABLATIONS = dict(
    short=[('CQT + LFQ', {}), ('pooling + LFQ', dict(down='pool')), ('single-scale LFQ', dict(scales=(64,))),
           ('CQT + VQ', dict(quantizer='vq'))],
    shipped=[('CQT + LFQ', dict(stage1='tanh')), ('pooling + LFQ', dict(down='pool', stage1='tanh')),
             ('single-scale LFQ', dict(scales=(64,), stage1='tanh')), ('CQT + VQ (LayerNorm stage 1)', dict(quantizer='vq')),
             ('CQT + LFQ (LayerNorm stage 1)', {})])


def main(a):
    torch.set_num_threads(1)
    train = OccupancyShapes('train', n_points=256, n_queries=4096)
    val = OccupancyShapes('val', n_points=256, n_queries=4096)
    test = OccupancyShapes('test', n_points=256, n_queries=256, n_per_category=a.test_per_category)
    rows, extra = [], {}
    if a.ablations_only:
        short = a.recipe == 'short'
        steps, lr2 = (tuple(a.ablation_steps), None) if short else (tuple(a.steps), a.lr2)
        for name, kw in ABLATIONS[a.recipe]:
            if a.only and name not in a.only.split(','): continue
            rows.append(tokenizer_run(name, train, val, steps, a.lr, n_mesh=5 if short else 10, lr2=lr2, **kw)[1])
            save_results('g3pt_ablation' + ('' if short else '_shipped_recipe'), rows, args=vars(a))
        print_table([{k: v for k, v in r.items() if not isinstance(v, list)} for r in rows], 'G3PT tokenizer ablations')
        return
    if a.tokenizer:     # a tokenizer trained by scripts/train_g3pt_pretrained.py (its record: steps, time, load)
        tok = load_g3pt(a.tokenizer)
        rec = json.loads(Path(a.tokenizer).with_name(Path(a.tokenizer).name.replace('_tokenizer.pt', '.json')).read_text())
        row = eval_row('CQT + LFQ (nano, shipped)', tok, val, rec['steps'], rec['train_wall_s'])
        row.update(train_cpu_s=rec['train_cpu_s'], train_loadavg=rec['loadavg_1min'], trained_by=rec['command'])
    else:
        tok, row = tokenizer_run('CQT + LFQ (nano)', train, val, tuple(a.steps), a.lr)
    rows.append(row)
    save_results('g3pt', rows, args=vars(a))
    torch.save(tok.state_dict(), a.save_tokenizer) if a.save_tokenizer else None
    # the CAR generator on the main tokenizer
    t = time.time()
    seqs = cache_tokens(tok, train, teacher=True)
    model, hist = train_car(tok, seqs, 'nano', generator_train_config('nano', steps=a.car_steps))
    car_s = time.time() - t
    t = time.time()
    out = sample(model, tok, labels=test.all_points().new_tensor([int(test[i]['label']) for i in range(len(test))]).long(),
                 top_k=None, top_p=0.95, seed=0)
    refs = test.all_points()
    m = compute_all_metrics(out['points'], refs, emd='auction')
    extra = dict(car_train_s=round(car_s, 1), car_sample_s=round(time.time() - t, 1), car_last=hist.rows[-1],
                 car_metrics=m, n_samples=len(refs))
    print(extra, flush=True)
    save_results('g3pt', rows, **extra, args=vars(a))


if __name__ == '__main__':
    p = argparse.ArgumentParser()
    p.add_argument('--steps', type=int, nargs=2, default=[600, 1400])
    p.add_argument('--ablation-steps', type=int, nargs=2, default=[200, 400])
    p.add_argument('--car-steps', type=int, default=800)
    p.add_argument('--lr', type=float, default=2e-3)
    p.add_argument('--ablations-only', action='store_true')
    p.add_argument('--recipe', default='short', choices=['short', 'shipped'],
                   help="ablations: 'short' (nano preset, --ablation-steps) or 'shipped' (the shipped tokenizer's recipe: "
                        "tanh stage 1, --steps 2500 1000, stage 2 at --lr2; -> g3pt_ablation_shipped_recipe_<device>.json)")
    p.add_argument('--lr2', type=float, default=5e-4, help="stage 2's peak learning rate of --recipe shipped")
    p.add_argument('--only', default='', help='ablations: comma-separated row names to run (default: all)')
    p.add_argument('--test-per-category', type=int, default=5)
    p.add_argument('--save-tokenizer', default='')
    p.add_argument('--tokenizer', default='', help='evaluate this saved tokenizer (and train the generator on it) instead of training one')
    main(p.parse_args())
