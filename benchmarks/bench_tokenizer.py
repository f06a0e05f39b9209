"""Tokenizer training throughput: nano training steps/s and shapes/s on this device, small's
forward+backward time per batch (an indication on CPU), and parameter counts of every preset.

    python benchmarks/bench_tokenizer.py            # 200 timed nano steps
    python benchmarks/bench_tokenizer.py --quick    # 30 timed nano steps
"""
from __future__ import annotations
import argparse, time

import _common  # noqa: F401  (puts the checkout on sys.path)
from _common import print_table, save_results

import torch

from nsp_explore.core import Timer, default_device
from nsp_explore.data import collate
from nsp_explore.lod import build_lod
from nsp_explore.tokenizer import PointNSPTokenizer
from nsp_explore.train_tokenizer import tokenizer_datasets, tokenizer_loss, tokenizer_train_config
from nsp_explore.train import fit


def params(name):
    m = PointNSPTokenizer(name)
    parts = dict(encoder=m.encoder, quantizer=m.quantizer, structure=m.structure, expansion=m.expand)
    d = {k: sum(p.numel() for p in v.parameters()) for k, v in parts.items()}
    return dict(preset=name, n_points=m.n_points, scales=str(m.scales), dim=m.token_dim, codebook=m.codebook_size,
                params_M=sum(p.numel() for p in m.parameters()) / 1e6, **{f'{k}_M': v / 1e6 for k, v in d.items()})


def nano_training(steps, device):
    "Steps/s and shapes/s of `fit` on nano (the LoD trees are cached by the dataset, as in real training)."
    train, _ = tokenizer_datasets('nano', n_train=16, n_val=1)
    cfg = tokenizer_train_config('nano', steps=steps + 10, log_every=10)
    torch.manual_seed(0)
    model = PointNSPTokenizer('nano')
    t0 = time.perf_counter()
    hist = fit(model, train, tokenizer_loss, cfg, device=device, progress_bar=False)
    wall = time.perf_counter() - t0
    timed = hist.rows[1:]                                  # the first window includes warm-up
    step_s = sum(r['step_time'] for r in timed) / len(timed)
    return dict(case='nano fit', device=str(device), batch=cfg.batch_size, steps=steps, step_ms=1000 * step_s,
                steps_per_s=1 / step_s, shapes_per_s=cfg.batch_size / step_s, wall_s=wall, final_cd=hist.last()['cd'])


def fwd_bwd(name, batch, device, repeats):
    "Forward + backward of one batch of random clouds (LoD precomputed), median ms."
    torch.manual_seed(0)
    m = PointNSPTokenizer(name).to(device)
    x = torch.randn(batch, m.n_points, 3, device=device)
    lod = build_lod(x, m.lod_scales)
    def step():
        out = m(x, lod)
        out.losses['loss'].backward()
        m.zero_grad(set_to_none=True)
    t = Timer.measure(step, repeats=repeats, warmup=1, device=device)
    return dict(case=f'{name} fwd+bwd', device=str(device), batch=batch, step_ms=t['median_ms'],
                steps_per_s=1000 / t['median_ms'], shapes_per_s=1000 * batch / t['median_ms'])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--quick', action='store_true')
    a = ap.parse_args()
    device = default_device()
    rows_p = [params(n) for n in ('nano', 'small', 'medium')]
    print_table(rows_p, 'parameters per preset')
    rows = [nano_training(30 if a.quick else 200, device),
            fwd_bwd('nano', 16, device, 5),
            fwd_bwd('small', 2 if device.type == 'cpu' else 32, device, 2 if a.quick else 3)]
    print_table(rows, 'tokenizer training throughput')
    save_results('tokenizer', rows + rows_p, quick=a.quick, torch_threads=torch.get_num_threads(),
                 note='CPU numbers taken on a shared 2-core machine (see loadavg_1min); small on CPU is an indication only')


if __name__ == '__main__':
    main()
