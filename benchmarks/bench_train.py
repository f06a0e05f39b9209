"""Training-loop overhead and checkpoint cost: `fit` vs a bare AdamW loop on the same model and
batches (ms/step), and save/load time and size of a checkpoint, plus the resume-exactness check.

    python benchmarks/bench_train.py [--quick] [--threads 1]
"""
from __future__ import annotations
import argparse, tempfile, time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from _common import print_table, save_results
from nsp_explore.core import Timer, default_device
from nsp_explore.train import TrainConfig, fit, save_checkpoint, load_checkpoint, make_optimizer


def model_of(width, depth=4):
    torch.manual_seed(0)
    layers = [nn.Linear(64, width), nn.GELU()]
    for _ in range(depth - 2): layers += [nn.Linear(width, width), nn.GELU()]
    return nn.Sequential(*layers, nn.Linear(width, 64))


def batch(step, B=64):
    g = torch.Generator().manual_seed(step)
    return torch.randn(B, 64, generator=g)


def loss_fn(m, x): return dict(loss=F.mse_loss(m(x), x.flip(-1)))


def main(quick: bool):
    dev = default_device()
    steps = 40 if quick else 200
    rows = []
    for width in ([256] if quick else [256, 1024]):
        cfg = TrainConfig(steps=steps, batch_size=64, log_every=10, amp=True)
        fit(model_of(width), batch, loss_fn, cfg.override(steps=5), device=dev, progress_bar=False)   # warm-up
        m = model_of(width).to(dev)
        opt, sched = make_optimizer(m, cfg)
        with Timer(dev) as bare:
            for s in range(steps):
                x = batch(s).to(dev)
                loss = loss_fn(m, x)['loss']; opt.zero_grad(); loss.backward()
                torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0); opt.step(); sched.step()
        m = model_of(width)
        with Timer(dev) as t_fit:
            fit(m, batch, loss_fn, cfg, device=dev, progress_bar=False)
        n = sum(p.numel() for p in m.parameters())
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / 'c.pt'
            opt, sched = make_optimizer(m, cfg)
            with Timer() as ts: save_checkpoint(p, m, opt, sched, step=steps, config=cfg)
            with Timer() as tl: load_checkpoint(p, model_of(width))
            size = p.stat().st_size
        rows.append(dict(case=f'MLP width {width} ({n / 1e6:.2f}M params), B=64', bare_ms_per_step=bare.ms / steps,
                         fit_ms_per_step=t_fit.ms / steps, overhead_pct=100 * (t_fit.ms / bare.ms - 1),
                         ckpt_save_ms=ts.ms, ckpt_load_ms=tl.ms, ckpt_MB=size / 2 ** 20))
    # resume exactness on this device
    cfg = TrainConfig(steps=30, log_every=5, ema_decay=0.9)
    a = fit(model_of(128), batch, loss_fn, cfg, device=dev, progress_bar=False)
    with tempfile.TemporaryDirectory() as d:
        ck = Path(d) / 'r.pt'
        def stop(step, out, h):
            if step == 13: raise KeyboardInterrupt
        try: fit(model_of(128), batch, loss_fn, cfg, ckpt_path=ck, callbacks=[stop], device=dev, progress_bar=False)
        except KeyboardInterrupt: pass
        b = fit(model_of(128), batch, loss_fn, cfg, ckpt_path=ck, device=dev, progress_bar=False)
    diff = max(float((x - y).abs().max()) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    rows.append(dict(case='resume at 13/30 vs straight: max |weight diff|', value=diff))
    print_table(rows, title=f'train loop on {dev}')
    save_results('train', rows, quick=quick)


if __name__ == '__main__':
    ap = argparse.ArgumentParser()
    ap.add_argument('--quick', action='store_true')
    ap.add_argument('--threads', type=int, default=None)
    a = ap.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    main(a.quick)
