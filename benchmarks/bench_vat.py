"""VAT on the synthetic benchmark: nano tokenizers with VVQ (Gaussian latents + KL) and with plain residual VQ
(sigma -> 0, no KL), same steps, data and seed; their occupancy IoU, cross-scale IoU, mesh F@0.01 of every prefix
of scales (the F-score-versus-bytes curve), bytes per shape, codebook usage, and histograms of Z0 and Z_hat
(the paper's Fig. 9). Optionally the shared next-scale generator on the VVQ tokens (--car-steps > 0), its
samples scored with compute_all_metrics, and a scale-count sweep (--hierarchy, the "curse of hierarchy").

    python benchmarks/bench_vat.py [--steps 250 350] [--hierarchy] [--save-tokenizer vvq.pt]   # -> results/vat_<device>.json
    python benchmarks/bench_vat.py --car-from vvq.pt [--car-steps 600]   # adds the generator to results/vat_<device>.json
    python benchmarks/bench_vat.py --extra                               # appends 8 scales and KL weight 1e-2 rows
"""
from __future__ import annotations
import argparse, os, time

import numpy as np
import torch

from _common import print_table, save_results
from nsp_explore.vat import VATTokenizer, train_vat, evaluate_vat, fscore_per_prefix, nbytes
from nsp_explore.occupancy import OccupancyShapes
from nsp_explore.train import TrainConfig

BINS = np.linspace(-4, 4, 61)


def hist(v) -> list:
    return np.histogram(np.asarray(v).ravel(), BINS, density=True)[0].round(4).tolist()


def run(name, train, val, a, n_mesh, **kw):
    torch.manual_seed(0)
    tok = VATTokenizer('nano', **kw)
    t = time.time()
    tok, hists = train_vat(tok, train, tuple(a.steps), batch_size=a.batch_size,
                           train_cfg=TrainConfig.preset('nano', lr=a.lr, warmup_steps=30, log_every=50), progress_bar=False)
    secs = time.time() - t
    r = evaluate_vat(tok, val)
    items = list(range(0, len(val), max(1, len(val) // n_mesh)))[:n_mesh]
    fp = fscore_per_prefix(tok, val, items, res=a.mesh_res)
    with torch.no_grad():
        x = torch.stack([val[i]['points'] for i in range(len(val))]); n = torch.stack([val[i]['normals'] for i in range(len(val))])
        out = tok(x, n)
    z0, zh = out.z0.numpy(), out.z_hat.numpy()
    row = dict(tokenizer=name, scales=str(tok.scales), steps=f'{a.steps[0]}+{a.steps[1]}', train_s=round(secs, 1),
               iou=r['iou'], cs_iou=r['cs_iou'], f_at_0_01=fp['f'][-1], cs_f=float(np.mean(fp['f'])),
               chamfer_l1=fp['chamfer_l1'][-1], bytes=nbytes(tok.scales, tok.codebook_size), near_acc=r['near_acc'],
               z0_mean=float(z0.mean()), z0_std=float(z0.std()), zhat_std=float(zh.std()),
               usage_of_possible_last=r['usage']['of_possible'][-1],
               iou_per_scale=[round(v, 4) for v in r['iou_per_scale']], f_per_prefix=[round(v, 4) for v in fp['f']],
               chamfer_per_prefix=[round(v, 5) for v in fp['chamfer_l1']], bytes_per_prefix=fp['bytes'],
               residual_norm=[round(float(v), 4) for v in r['residual_norm']],
               usage_of_possible=[round(v, 4) for v in r['usage']['of_possible']],
               hist_z0=hist(z0), hist_zhat=hist(zh), n_mesh=len(items),
               last_stage1={k: round(float(v), 5) for k, v in hists[0].rows[-1].items()},
               last_stage2={k: round(float(v), 5) for k, v in hists[-1].rows[-1].items()})
    print({k: v for k, v in row.items() if not isinstance(v, (list, dict))}, flush=True)
    return tok, row


def car(a):
    "The shared next-scale generator on the saved VVQ tokenizer's tokens; merged into the existing results file."
    import json
    from _common import RESULTS, machine
    from nsp_explore.g3pt import train_car
    from nsp_explore.generate import cache_tokens, generator_train_config, sample
    from nsp_explore.metrics import compute_all_metrics
    torch.set_num_threads(1)
    load0 = os.getloadavg()
    prev = json.loads((RESULTS / f"vat_{machine()['device']}.json").read_text())
    tok = VATTokenizer('nano'); tok.load_state_dict(torch.load(a.car_from)); tok.set_stage(2).eval()
    train = OccupancyShapes('train', n_points=256, n_queries=4096, n_per_category=a.train_per_category, sdf=True)
    test = OccupancyShapes('test', n_points=256, n_queries=256, n_per_category=a.test_per_category)
    torch.manual_seed(0)
    t = time.time()
    seqs = cache_tokens(tok, train, teacher=True)
    model, hist_car = train_car(tok, seqs, 'nano', generator_train_config('nano', steps=a.car_steps), progress_bar=False)
    car_s = time.time() - t
    t = time.time()
    labels = torch.tensor([int(test[i]['label']) for i in range(len(test))])
    out = sample(model, tok, labels=labels, top_k=None, top_p=0.95, seed=0)
    sample_s = time.time() - t
    refs = test.all_points()
    m = compute_all_metrics(out['points'], refs, emd='auction')
    # the same metrics for the tokenizer's own reconstructions of the test shapes (its ceiling)
    with torch.no_grad():
        x = torch.stack([test[i]['points'] for i in range(len(test))]); n = torch.stack([test[i]['normals'] for i in range(len(test))])
        rec = tok.surface_points(tok(x, n).z_hat)
    m_rec = compute_all_metrics(rec, refs, emd='auction')
    meta = dict(prev['meta'])
    meta.update(car_steps=a.car_steps, car_train_s=round(car_s, 1), car_sample_s=round(sample_s, 1),
                car_loadavg_start=list(load0), car_loadavg_end=list(os.getloadavg()),
                car_last={k: round(float(v), 5) for k, v in hist_car.rows[-1].items()},
                car_metrics={k: float(v) for k, v in m.items()}, recon_metrics={k: float(v) for k, v in m_rec.items()},
                n_samples=len(labels), categories=list(test.categories),
                sample_labels=labels[::a.test_per_category].tolist(),
                sample_points=[' '.join(f'{v:.3f}' for v in q[:128].reshape(-1).tolist())        # 128 points each, compact
                               for q in out['points'][::a.test_per_category]])
    print('generated:', meta['car_metrics'], '\nreconstructed:', meta['recon_metrics'], flush=True)
    save_results('vat', prev['rows'], **meta)


def extra_rows(a):
    "More nano rows appended to the existing results file: 8 scales (the hierarchy question) and a 100x KL weight."
    import json
    from _common import RESULTS, machine
    torch.set_num_threads(1)
    prev = json.loads((RESULTS / f"vat_{machine()['device']}.json").read_text())
    train = OccupancyShapes('train', n_points=256, n_queries=4096, n_per_category=a.train_per_category, sdf=True)
    val = OccupancyShapes('val', n_points=256, n_queries=4096, sdf=True)
    rows, meta = prev['rows'], dict(prev['meta'])
    for name, kw in [('VVQ, 8 scales', dict(scales=(1, 4, 9, 16, 25, 36, 49, 64))), ('VVQ, KL weight 1e-2', dict(kl_weight=1e-2))]:
        load0 = list(os.getloadavg())
        row = run(name, train, val, a, a.n_mesh, **kw)[1]
        rows = [r for r in rows if r['tokenizer'] != name] + [dict(row, loadavg_start=load0, loadavg_end=list(os.getloadavg()))]
        save_results('vat', rows, **meta)


def main(a):
    if a.car_from: return car(a)
    if a.extra: return extra_rows(a)
    torch.set_num_threads(1)
    load0 = os.getloadavg()
    train = OccupancyShapes('train', n_points=256, n_queries=4096, n_per_category=a.train_per_category, sdf=True)
    val = OccupancyShapes('val', n_points=256, n_queries=4096, sdf=True)
    rows, extra = [], dict(bins=BINS.round(4).tolist(), loadavg_start=list(load0))
    configs = [('VVQ', {}), ('plain residual VQ', dict(variational=False))]
    if a.hierarchy:
        configs += [('VVQ, 4 scales', dict(scales=(1, 4, 16, 64))), ('VVQ, 8 scales', dict(scales=(1, 4, 9, 16, 25, 36, 49, 64)))]
    toks = {}
    for name, kw in configs:
        toks[name], row = run(name, train, val, a, a.n_mesh, **kw)
        rows.append(row)
        if name == 'VVQ' and a.save_tokenizer: torch.save(toks[name].state_dict(), a.save_tokenizer)
        save_results('vat', rows, **extra, loadavg_now=list(os.getloadavg()), args=vars(a))
    save_results('vat', rows, **extra, loadavg_now=list(os.getloadavg()), args=vars(a))
    print_table([{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()
                  if k in ('tokenizer', 'scales', 'steps', 'train_s', 'iou', 'cs_iou', 'f_at_0_01', 'cs_f', 'bytes', 'z0_std')}
                 for r in rows], 'VAT nano: VVQ vs plain residual VQ (val)')


if __name__ == '__main__':
    p = argparse.ArgumentParser()
    p.add_argument('--steps', type=int, nargs=2, default=[300, 500])
    p.add_argument('--lr', type=float, default=1e-3)
    p.add_argument('--batch-size', type=int, default=16)
    p.add_argument('--train-per-category', type=int, default=40)
    p.add_argument('--n-mesh', type=int, default=10)
    p.add_argument('--mesh-res', type=int, default=48)
    p.add_argument('--hierarchy', action='store_true')
    p.add_argument('--save-tokenizer', default='')
    p.add_argument('--car-from', default='')
    p.add_argument('--extra', action='store_true', help='append the 8-scale and KL 1e-2 rows to the results file')
    p.add_argument('--car-steps', type=int, default=600)
    p.add_argument('--test-per-category', type=int, default=5)
    main(p.parse_args())
