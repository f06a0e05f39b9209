"""Benchmark of SMART-3D-style masked generation (nsp_explore.masked).

1. `block`: time and peak memory of one pre-norm block, linear attention (+ the convolutional spatial
   bias) against softmax attention (+ the same bias), forward, batch 1, d = 64, 4 heads, for L = 64 .. 8192
   tokens. On CPU each (attention, L) runs in a fresh subprocess and the peak memory is the growth of
   the process's peak resident set during the forward passes (ru_maxrss; about 16 MB of it is the
   one-off cost of the first call); on CUDA it is torch.cuda.max_memory_allocated above the inputs.
   `softmax` is PyTorch's fused kernel (no L x L matrix kept); `softmax_naive` (CPU) stores it.
2. `sample`: sampling time per shape and network evaluations, masked (T rounds) against next-scale
   PointNSP (K scales) at the nano preset, untrained models (time does not depend on the weights),
   decoding to points included.
3. `--quality`: trains both pipelines on the same synthetic data with the same step budget and scores
   their samples with `compute_all_metrics` (minutes on CPU).

    python benchmarks/bench_masked.py                      # CPU: block sweep + sampling
    python benchmarks/bench_masked.py --quality            # + the trained comparison
    python benchmarks/bench_masked.py --device cuda        # GPU sweep (writes masked_cuda.json)
"""
from __future__ import annotations
import argparse, json, os, resource, subprocess, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch
from _common import print_table, save_results

LS = (64, 128, 256, 512, 1024, 2048, 4096, 8192)


def child(attn: str, L: int, repeats: int) -> dict:
    "Runs in a fresh process: time and peak-RSS growth of one block forward on CPU."
    torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', '1')))
    from nsp_explore.core import Timer
    from nsp_explore.masked import MaskedBlock, MaskedConfig, box_for
    if attn == 'softmax_naive':            # softmax with the L x L matrix stored, as a plain implementation does
        def naive(q, k, v, **kw): return (q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).softmax(-1) @ v
        torch.nn.functional.scaled_dot_product_attention = naive
    blk = MaskedBlock(MaskedConfig(d_model=64, n_head=4, attn='softmax' if attn.startswith('softmax') else attn), box_for(L)).eval()
    x = torch.randn(1, L, 64)
    with torch.no_grad():
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = Timer.measure(lambda: blk(x), repeats=repeats, warmup=1)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return dict(ms=t['median_ms'], min_ms=t['min_ms'], peak_mb=(peak - base) / 1024)


def bench_block_cpu(repeats: int, Ls=LS) -> list[dict]:
    rows = []
    for attn in ('linear', 'softmax', 'softmax_naive'):
        for L in Ls:
            r = subprocess.run([sys.executable, __file__, '--child', attn, str(L), str(repeats)], capture_output=True, text=True,
                               env={**os.environ, 'PYTHONPATH': str(Path(__file__).resolve().parents[1])})
            if r.returncode:
                rows.append(dict(bench='block', device='cpu', attn=attn, L=L, ms=None, note=r.stderr.strip()[-200:])); continue
            res = json.loads(r.stdout.strip().splitlines()[-1])
            rows.append(dict(bench='block', device='cpu', attn=attn, L=L, **res))
            print(rows[-1], flush=True)
    return rows


def bench_block_cuda(repeats: int, Ls=LS) -> list[dict]:
    import torch.nn.functional as F
    from nsp_explore.masked import block_cost
    fused = F.scaled_dot_product_attention
    def naive(q, k, v, **kw): return (q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).softmax(-1) @ v
    rows = []
    for attn in ('linear', 'softmax', 'softmax_naive'):
        F.scaled_dot_product_attention = naive if attn == 'softmax_naive' else fused
        try:
            for L in Ls:
                r = block_cost(L, 'softmax' if attn.startswith('softmax') else attn, repeats=max(repeats, 10), device='cuda')
                rows.append(dict(bench='block', device='cuda', **r, attn_impl=attn)); rows[-1]['attn'] = attn
                print(rows[-1], flush=True)
        finally:
            F.scaled_dot_product_attention = fused
    return rows


def bench_sampling(device, batches=(1, 64), repeats=3) -> list[dict]:
    from nsp_explore.core import Timer, seed_everything
    from nsp_explore.masked import MaskedTransformer, VoxelPatchVQ, sample_clouds
    from nsp_explore.tokenizer import PointNSPTokenizer
    from nsp_explore.transformer import ScaleTransformer
    from nsp_explore.generate import sample
    seed_everything(0)
    vq = VoxelPatchVQ('nano').to(device).eval()
    vq.fit_frame(torch.randn(4, 256, 3, device=device))
    mm = MaskedTransformer.for_tokenizer('nano', vq, n_classes=3).to(device).eval()
    tok = PointNSPTokenizer('nano').to(device).eval()
    ns = ScaleTransformer.for_tokenizer('nano', tok, 3).to(device).eval()
    rows = []
    for B in batches:
        lab = torch.arange(B) % 3
        for T in (4, 8):
            t = Timer.measure(lambda: sample_clouds(mm, vq, labels=lab, steps=T, top_k=20), repeats=repeats, warmup=1, device=device)
            rows.append(dict(bench='sample', model=f'masked T={T}', batch=B, network_calls=T, tokens=mm.L,
                             ms_per_batch=t['median_ms'], ms_per_shape=t['median_ms'] / B))
        t = Timer.measure(lambda: sample(ns, tok, labels=lab, top_k=20), repeats=repeats, warmup=1, device=device)
        rows.append(dict(bench='sample', model=f'next-scale K={len(tok.scales)}', batch=B, network_calls=len(tok.scales),
                         tokens=sum(tok.scales), ms_per_batch=t['median_ms'], ms_per_shape=t['median_ms'] / B))
        for r in rows[-3:]: print(r, flush=True)
    return rows


def bench_quality(device, vq_steps=400, gen_steps=1000) -> list[dict]:
    "Train masked and next-scale nano pipelines on the same data and budget; score both with compute_all_metrics."
    from nsp_explore.core import Timer, seed_everything
    from nsp_explore.data import SyntheticShapes
    from nsp_explore.metrics import compute_all_metrics
    from nsp_explore.train import TrainConfig, fit
    from nsp_explore import masked as M
    from nsp_explore.tokenizer import PointNSPTokenizer
    from nsp_explore.generate import generator_train_config, train_generator, sample
    seed_everything(0)
    cats = ['airplane', 'chair', 'table']
    train = SyntheticShapes('train', categories=cats, n_per_category=16, n_points=256)
    test = SyntheticShapes('test', categories=cats, n_per_category=4, n_points=256, normalizer=train.normalizer, resample=False)
    refs = torch.stack([test[i]['points'] for i in range(len(test))])
    labels = test.labels
    mean, std = train.normalizer.mean, train.normalizer.std
    score = lambda s, mats=None: compute_all_metrics(s.cpu(), refs, mean=mean, std=std, emd='exact', return_matrices=True, ref_matrices=mats)
    keys = ('1-NNA-CD', '1-NNA-EMD', 'COV-CD', 'COV-EMD', 'MMD-CD', 'MMD-EMD', 'JSD')
    rows = []
    # masked
    with Timer() as t_tok:
        vq, _ = M.train_voxel_vq(train, 'nano', TrainConfig.preset('nano', **{**M.VQ_TRAIN['nano'], 'steps': vq_steps}), device=device)
    with Timer() as t_gen:
        seqs = M.encode_dataset(vq, train, passes=4)
        mm, h = M.train_masked(vq, seqs, 'nano', TrainConfig.preset('nano', **{**M.MASKED_TRAIN['nano'], 'steps': gen_steps}), device=device)
    rec = vq.decode(vq.encode(refs.to(device)), generator=torch.Generator().manual_seed(0))
    r = score(rec); mats = r.pop('matrices')
    rows.append(dict(bench='quality', model='masked: tokenizer reconstructions', **{k: r[k] for k in keys}))
    for T in (4, 8, 16):
        for pol in ('confidence', 'spatial', 'random'):
            with Timer() as t_s:
                out = M.sample_clouds(mm, vq, labels=labels, steps=T, policy=pol, top_k=20, seed=0)
            r = score(out['points'], mats); r.pop('matrices')
            rows.append(dict(bench='quality', model=f'masked T={T} {pol}', network_calls=out['n_evals'],
                             train_s=t_tok.elapsed + t_gen.elapsed, sample_ms_per_shape=t_s.ms / len(labels), **{k: r[k] for k in keys}))
            print(rows[-1], flush=True)
    # next-scale PointNSP, same data and budget (as 10_generate: no EMD term in the tokenizer loss)
    seed_everything(0)
    tok = PointNSPTokenizer('nano', w_emd=0.0)
    with Timer() as t_tok2:
        fit(tok, train, lambda m, b: m(b['points']).losses, TrainConfig.preset('nano', steps=vq_steps), device=device)
    tok.eval()
    with Timer() as t_gen2:
        ns, _ = train_generator(tok, train, 'nano', train_cfg=generator_train_config('nano', steps=gen_steps), device=device)
    with torch.no_grad():
        rec2 = tok(refs.to(device)).x_hat.float()
    r = score(rec2, mats); r.pop('matrices')
    rows.append(dict(bench='quality', model='next-scale: tokenizer reconstructions', **{k: r[k] for k in keys}))
    with Timer() as t_s:
        out = sample(ns, tok, labels=labels.to(device), top_k=20, seed=0)
    r = score(out['points'], mats); r.pop('matrices')
    rows.append(dict(bench='quality', model=f'next-scale K={len(tok.scales)}', network_calls=len(tok.scales),
                     train_s=t_tok2.elapsed + t_gen2.elapsed, sample_ms_per_shape=t_s.ms / len(labels), **{k: r[k] for k in keys}))
    other = SyntheticShapes('val', categories=cats, n_per_category=4, n_points=256, seed=1, resample=False, normalizer=train.normalizer)
    r = score(torch.stack([other[i]['points'] for i in range(len(other))]), mats); r.pop('matrices')
    rows.append(dict(bench='quality', model='other real shapes (the ideal)', **{k: r[k] for k in keys}))
    for r in rows[-3:]: print(r, flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--quality', action='store_true', help='also train both pipelines and score them (minutes)')
    ap.add_argument('--child', nargs=3, metavar=('ATTN', 'L', 'REPEATS'), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child[0], int(a.child[1]), int(a.child[2])))); return
    device = torch.device(a.device)
    load_before = subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()
    t0 = time.perf_counter()
    rows = bench_block_cuda(a.repeats) if device.type == 'cuda' else bench_block_cpu(a.repeats)
    try: rows += bench_sampling(device, repeats=a.repeats)
    except Exception as e: rows.append(dict(bench='sample', error=f'{type(e).__name__}: {e}'[:300]))
    if a.quality: rows += bench_quality(device)
    load_after = subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()
    print_table([r for r in rows if r['bench'] == 'block'], f'one block against L ({device.type})')
    print_table([r for r in rows if r['bench'] == 'sample'], 'sampling')
    if a.quality: print_table([r for r in rows if r['bench'] == 'quality'], 'quality (nano, same data and budget)')
    # growth exponents between the smallest and largest L: ~1 linear, ~2 quadratic
    for attn in ('linear', 'softmax', 'softmax_naive'):
        rs = [r for r in rows if r['bench'] == 'block' and r['attn'] == attn and r.get('ms')]
        if len(rs) >= 2:
            import math
            lo, hi = rs[len(rs) // 2], rs[-1]      # the upper half of the sweep, past fixed overheads
            print(f'{attn}: time grows like L^{math.log(hi["ms"] / lo["ms"]) / math.log(hi["L"] / lo["L"]):.2f} from L={lo["L"]} to {hi["L"]}')
    save_results('masked', rows, uptime_before=load_before, uptime_after=load_after, seconds=time.perf_counter() - t0,
                 block='d_model=64, n_head=4, batch 1, forward, spatial bias on; CPU peak memory = growth of ru_maxrss in a fresh process',
                 note='CPU shared with other jobs (see uptime); untrained models for the sampling rows' if device.type == 'cpu' else '')


if __name__ == '__main__':
    main()
