"""Benchmark of the next-scale transformer: sampling time per shape (batch 1 and 64, KV cache vs none),
block-sparse FlexAttention vs dense SDPA, and training throughput (tokens/s, model FLOPs utilisation).

    python benchmarks/bench_transformer.py                  # CPU, nano preset (+ small forward, batch 1)
    python benchmarks/bench_transformer.py --quick          # a short run
    python benchmarks/bench_transformer.py --device cuda --preset small --peak-tflops 989   # H100 bf16 dense peak

Models are untrained (timing does not depend on the weights); the tokenizer is the real
`PointNSPTokenizer` of the same preset, so sampling time includes decoding every X̂_k and the final cloud.
"""
from __future__ import annotations
import argparse, os, sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch
from _common import print_table, save_results

from nsp_explore.core import Timer, autocast, seed_everything
from nsp_explore.transformer import HAS_FLEX, ScaleTransformer, TransformerConfig, flatten_teacher, model_flops
from nsp_explore.tokenizer import PointNSPTokenizer
from nsp_explore.generate import sample

# bf16 dense tensor-core peaks (TFLOP/s) to turn achieved FLOP/s into MFU when --peak-tflops is not given
PEAKS = {'H100': 989.0, 'H200': 989.0, 'A100': 312.0}


def build(preset, device, n_classes=8, **over):
    seed_everything(0)
    tok = PointNSPTokenizer(preset).to(device).eval()
    model = ScaleTransformer.for_tokenizer(TransformerConfig.preset(preset, **over), tok, n_classes).to(device).eval()
    return tok, model


def bench_sampling(tok, model, batches, repeats, device, preset):
    rows = []
    for B in batches:
        for cache in (True, False):
            fn = lambda: sample(model, tok, labels=torch.arange(B) % model.n_classes, top_k=50, cfg_scale=1.0,
                                batch_size=B, seed=0, use_cache=cache)
            t = Timer.measure(fn, repeats=repeats, warmup=1, device=device)
            rows.append(dict(bench='sample', preset=preset, batch=B, n_points=tok.n_points, kv_cache=cache,
                             ms_per_batch=t['median_ms'], ms_per_shape=t['median_ms'] / B))
        fn = lambda: sample(model, tok, labels=torch.arange(B) % model.n_classes, top_k=50, cfg_scale=2.0, batch_size=B, seed=0)
        t = Timer.measure(fn, repeats=repeats, warmup=1, device=device)
        rows.append(dict(bench='sample+cfg2', preset=preset, batch=B, n_points=tok.n_points, kv_cache=True,
                         ms_per_batch=t['median_ms'], ms_per_shape=t['median_ms'] / B))
    return rows


def teacher_batch(tok, model, B, device):
    g = torch.Generator().manual_seed(0)
    idx = [torch.randint(0, tok.codebook_size, (B, s), generator=g).to(device) for s in tok.scales]
    return idx, flatten_teacher(tok.teacher_inputs(idx)), (torch.arange(B) % model.n_classes).to(device)


def bench_attention(tok, model, B, repeats, device, preset):
    if not HAS_FLEX: return [dict(bench='forward', preset=preset, note='FlexAttention unavailable in this torch')]
    _, (feat, pos, slot), labels = teacher_batch(tok, model, B, device)
    rows = []
    for backend in ('dense', 'flex'):
        def fn():
            with torch.no_grad(), autocast(device): model(feat, pos, slot, labels, backend=backend)
        t = Timer.measure(fn, repeats=repeats, warmup=2, device=device)
        rows.append(dict(bench=f'forward_{backend}', preset=preset, batch=B, L=model.L, ms=t['median_ms'],
                         note='flex unfused eager on CPU' if device.type == 'cpu' and backend == 'flex' else ''))
    return rows


def bench_training(tok, model, B, steps, device, preset, peak_tflops):
    model.train()
    idx, (feat, pos, slot), labels = teacher_batch(tok, model, B, device)
    tokens = torch.cat(idx, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == 'cuda')
    def step():
        with autocast(device):
            logits = model(feat, pos, slot, labels)
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten())
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    t = Timer.measure(step, repeats=steps, warmup=2, device=device)
    model.eval()
    s = t['median_ms'] / 1000
    flops = model_flops(model) * B / s
    row = dict(bench='train_step', preset=preset, batch=B, L=model.L, ms=t['median_ms'], tokens_per_s=B * model.L / s,
               tflops=flops / 1e12, params_M=model.n_params() / 1e6, amp='bf16' if device.type == 'cuda' else 'fp32')
    if peak_tflops: row['mfu'] = flops / 1e12 / peak_tflops
    return [row]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    ap.add_argument('--preset', default=None, help="nano on CPU, small on CUDA by default")
    ap.add_argument('--quick', action='store_true')
    ap.add_argument('--peak-tflops', type=float, default=None, help='bf16 dense peak of the GPU, for MFU')
    ap.add_argument('--no-small', action='store_true', help='skip the CPU small-preset indication')
    a = ap.parse_args()
    device = torch.device(a.device)
    preset = a.preset or ('small' if device.type == 'cuda' else 'nano')
    peak = a.peak_tflops
    if peak is None and device.type == 'cuda':
        peak = next((v for k, v in PEAKS.items() if k in torch.cuda.get_device_name(0)), None)
    reps = 2 if a.quick else 5
    tok, model = build(preset, device)
    rows = bench_sampling(tok, model, (1, 8) if a.quick else (1, 64), reps, device, preset)
    rows += bench_attention(tok, model, 8 if a.quick else 32, reps, device, preset)
    rows += bench_training(tok, model, 8 if a.quick else 32, 3 if a.quick else 8, device, preset, peak)
    if device.type == 'cpu' and preset == 'nano' and not a.no_small:   # an indication only: small is a GPU preset
        tok_s, model_s = build('small', device)
        rows += [dict(r, note='CPU indication') for r in bench_sampling(tok_s, model_s, (1,), 1 if a.quick else 2, device, 'small')[:1]]
        rows += bench_attention(tok_s, model_s, 1, 2, device, 'small')[:1]
    print_table(rows, f'next-scale transformer ({device.type}, {preset})')
    save_results('transformer', rows, preset=preset, quick=a.quick, peak_tflops=peak,
                 note='timings taken on a CPU shared with other jobs; see machine.loadavg_1min' if device.type == 'cpu' else '')


if __name__ == '__main__':
    main()
