"""Ablation of the soft mask inside a scale: none / fixed (Gaussian of parent distance) / learned (PointNSP's).

    python benchmarks/bench_soft_mask.py --tokenizer path/to/nano_tokenizer.pt --steps 300

Trains one nano generator per mode on the same cached tokens (same seed, same batches, same steps) and reports
the validation cross-entropy and top-1 accuracy per scale. Writes benchmarks/results/soft_mask_<device>.json.
"""
from __future__ import annotations
import argparse, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, save_results   # noqa: E402
import torch

from nsp_explore.core import seed_everything
from nsp_explore.generate import cache_tokens, generator_train_config, next_scale_loss
from nsp_explore.train import fit
from nsp_explore.train_tokenizer import load_tokenizer, tokenizer_datasets
from nsp_explore.transformer import ScaleTransformer, TransformerConfig


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--tokenizer', required=True)
    ap.add_argument('--steps', type=int, default=300)
    ap.add_argument('--batch-size', type=int, default=32)
    ap.add_argument('--n-train', type=int, default=None)
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--cache-dir', default=None)
    a = ap.parse_args()
    dev = torch.device(a.device)
    tok = load_tokenizer(a.tokenizer).to(dev)
    train, val = tokenizer_datasets(tok.cfg, n_train=a.n_train, cache_dir=a.cache_dir)
    tr, va = cache_tokens(tok, train, device=dev, passes=tok.cfg.fps_trajectories), cache_tokens(tok, val, device=dev)
    rows = []
    for mode in ('none', 'fixed', 'learned'):
        seed_everything(0)
        gen = ScaleTransformer.for_tokenizer(TransformerConfig.preset('nano', soft_mask=mode, attn='dense'), tok,
                                             len(train.dataset.categories))
        cfg = generator_train_config('nano', steps=a.steps, batch_size=a.batch_size, warmup_steps=a.steps // 10 + 1,
                                     log_every=max(1, a.steps // 5))
        t = time.perf_counter()
        h = fit(gen, tr.sampler(cfg.batch_size, cfg.seed), next_scale_loss, cfg, device=dev, progress_bar=False)
        gen.eval()
        with torch.no_grad(): vl = next_scale_loss(gen, va.batch(torch.arange(len(va))))
        rows.append(dict(soft_mask=mode, steps=a.steps, train_s=time.perf_counter() - t, train_loss=h.last('loss'),
                         val_loss=float(vl['loss']), **{f'val_acc_{k}': float(vl[f'acc_{k}']) for k in range(len(tok.scales))}))
    print_table(rows, 'soft mask ablation (nano generator, identical tokens and batches)')
    save_results('soft_mask', rows, tokenizer=str(a.tokenizer), n_train_shapes=len(train), n_val_shapes=len(val),
                 tokenizer_note='tokenizer checkpoint given on the command line (see the closing note for how it was trained)')


if __name__ == '__main__':
    main()
