"""Is the shipped nano generator under-trained? The same tokens, seed and recipe, only the step count changes.

    python benchmarks/bench_generator_steps.py --steps 2000,4000,8000          # one process per count (a GPU)
    python benchmarks/bench_generator_steps.py --steps 4,8 --jobs 1 --n-train 2 --n-val 1   # a quick check (CPU)

Each count trains a nano `ScaleTransformer` on the shipped tokenizer's tokens of the 400 training shapes (4 FPS
trajectories per shape, `scripts/train_pretrained.py`'s generator stage: batch 64, lr 2e-3, cosine schedule to
the count, seed 0) and measures its next-scale loss and per-scale accuracy on the validation shapes' tokens (the
sign of over-fitting that the training loss hides). Each run is saved as a pair folder (`<out>/steps_<N>/`: the
shipped tokenizer, the new generator, the record) that `scripts/eval_pretrained.py --dir` scores with the
per-category protocol. Writes benchmarks/results/generator_steps_<device>.json (and the generators and the
JSON under $OUT when that is set).
"""
from __future__ import annotations
import argparse, json, os, shutil, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, print_table, run_workers   # noqa: E402  (puts the repo on sys.path)
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'scripts'))
import torch


def run_count(steps: int, out: Path, device, n_val, n_train=None) -> dict:
    "Train one generator of `steps` steps on the shipped tokens; save its pair folder; return its record."
    from train_pretrained import retrain_generator
    from nsp_explore.generate import cache_tokens, next_scale_loss
    d = out / f'steps_{steps}'
    tok, gen, val, info = retrain_generator(ROOT / 'data_samples' / 'pretrained', steps, d, device, n_train=n_train, n_val=n_val,
                                            command=' '.join(sys.argv))
    dev = next(gen.parameters()).device
    va = cache_tokens(tok, val, device=dev).to(dev)
    gen = gen.to(dev).eval()
    with torch.no_grad():
        vl = next_scale_loss(gen, va.batch(torch.arange(len(va))))
    K = len(tok.scales)
    rec = dict(steps=steps, device=str(dev), generator_s=round(info['generator_s'], 1), train_loss=round(info['generator_loss'], 4),
               val_loss=round(float(vl['loss']), 4), **{f'val_acc_{k}': round(float(vl[f'acc_{k}']), 4) for k in range(K)},
               n_train_shapes=info['n_train_shapes'], n_val_shapes=len(val), tokenizer_steps=info.get('tokenizer_steps'))
    (out / f'steps_{steps}.json').write_text(json.dumps(rec))
    return rec


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--steps', default='2000,4000,8000', help='comma-separated step counts')
    ap.add_argument('--out', default='runs/generator_steps', help='pair folders go here')
    ap.add_argument('--device', default=None)
    ap.add_argument('--n-train', type=int, default=None, help='training shapes per category (default: the shipped pair\'s, 40)')
    ap.add_argument('--n-val', type=int, default=None, help='validation shapes per category (default: tokenizer_datasets\')')
    ap.add_argument('--results', default=None, help='JSON path (default benchmarks/results/generator_steps_<device>.json)')
    ap.add_argument('--jobs', type=int, default=0, help='counts trained at once (0: all; 1 on a 2-core CPU)')
    ap.add_argument('--deadline-s', type=float, default=None, help='stop counts still running after this many seconds')
    ap.add_argument('--one', type=int, default=None, help=argparse.SUPPRESS)   # a worker process
    a = ap.parse_args()
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    if a.one is not None:
        run_count(a.one, out, a.device, a.n_val, a.n_train); return
    counts = [int(s) for s in a.steps.split(',')]
    if not counts or min(counts) < 1: ap.error('--steps: positive step counts, e.g. 2000,4000')
    env = {**os.environ, 'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS', '1'), 'NSP_PROGRESS': '0'}
    t0, cmds = time.time(), {}
    for n in counts:
        (out / f'steps_{n}.json').unlink(missing_ok=True)
        cmds[n] = [sys.executable, __file__, '--one', str(n), '--out', str(out)] + (['--device', a.device] if a.device else []) \
            + (['--n-val', str(a.n_val)] if a.n_val else []) + (['--n-train', str(a.n_train)] if a.n_train else [])
    run_workers(cmds, {n: out / f'steps_{n}.log' for n in counts}, env, a.jobs, a.deadline_s)
    rows = [json.loads((out / f'steps_{n}.json').read_text()) for n in counts if (out / f'steps_{n}.json').exists()]
    for n in counts:
        if not (out / f'steps_{n}.json').exists():
            print(f'--- {n} steps failed; log tail:\n' + '\n'.join((out / f'steps_{n}.log').read_text().splitlines()[-8:]))
    print_table(rows, 'nano generator on the shipped tokens: step count against validation next-scale loss')
    dev = rows[0]['device'] if rows else 'cpu'
    res = dict(benchmark='generator_steps', command=' '.join(sys.argv), date=time.strftime('%Y-%m-%d %H:%M:%S'),
               machine=machine(), wall_s=round(time.time() - t0, 1), rows=rows,
               missing=[n for n in counts if not (out / f'steps_{n}.json').exists()])
    path = Path(a.results) if a.results else RESULTS / f"generator_steps_{'cuda' if dev.startswith('cuda') else 'cpu'}.json"
    path.parent.mkdir(parents=True, exist_ok=True); path.write_text(json.dumps(res, indent=1, default=str))
    if os.environ.get('OUT'):
        o = Path(os.environ['OUT']); shutil.copy(path, o / path.name)
        for r in rows: shutil.copy(out / f"steps_{r['steps']}" / 'nano_generator.pt', o / f"generator_{r['steps']}.pt")
    print(f'wrote {path}')
    if res['missing']: sys.exit(f"step counts that did not finish: {res['missing']}")


if __name__ == '__main__':
    main()
