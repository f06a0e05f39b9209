"""Does the generator under-fit or over-fit, and at which scale? Teacher-forced cross-entropy per token scale.

    python benchmarks/bench_generator_fit.py                           # the shipped nano pair (~11 min on 2 cores)
    python benchmarks/bench_generator_fit.py --dir D --n-train 4 --n-heldout 2   # another pair folder, smaller

The pair's tokenizer encodes `--n-train` of the generator's own training shapes per category and `--n-heldout`
validation and test shapes, every shape with each of its `fps_trajectories` FPS trees once (the training shapes are
built as `scripts/train_pretrained.py` builds them, so with the pair's own `n_train_shapes` these are exactly the
sequences it trained on). The generator then predicts every scale from the true coarser ones (teacher forcing, the
training loss) and each split gets, per scale, the mean cross-entropy per token (nats) and top-1 accuracy. Beside it,
a unigram baseline: the cross-entropy of the scale's token frequencies on the training shapes (add-one smoothed),
what a model that ignores the shape would pay. Training CE far below held-out CE at a scale: the generator memorizes
that scale (more shapes would help); both near the unigram: it has not learned that scale (more capacity or steps).
Writes benchmarks/results/generator_fit_<device>.json (or --results).
"""
from __future__ import annotations
import argparse, json, math, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, print_table   # noqa: E402  (puts the repo on sys.path)
import torch

from nsp_explore.data import SyntheticShapes
from nsp_explore.generate import cache_tokens, load_pretrained, next_scale_loss
from nsp_explore.lod import LoDDataset
from nsp_explore.train_tokenizer import tokenizer_datasets


def split_sequences(tok, split: str, n: int):
    "Token sequences of `n` shapes per category of `split`, each of the tokenizer's FPS trees once."
    seed, T, frame = int(tok.info.get('seed', 0)), tok.cfg.fps_trajectories, tok.normalizer()
    if split == 'train':                                             # as the generator stage builds them
        ds = tokenizer_datasets(tok.cfg, n_train=n, n_val=1, seed=seed, normalizer=frame)[0]
    else:
        shapes = SyntheticShapes(split, tok.info.get('categories'), n, n_points=tok.cfg.n_points, seed=seed,
                                 resample=False, normalizer=frame)
        ds = LoDDataset(shapes, tok.lod_scales, n_trajectories=T, seed=seed, verbose=False)
    return cache_tokens(tok, ds, passes=T)


@torch.no_grad()
def scale_fit(gen, seqs, batch_size: int = 128) -> dict:
    "Per category: per-scale mean CE and accuracy under teacher forcing. {category index: {'loss': [K], 'acc': [K]}}."
    gen.eval()
    K, out = len(seqs.scales), {}
    for c in seqs.labels.unique().tolist():
        rows = (seqs.labels == c).nonzero().flatten()
        tot = torch.zeros(2, K, dtype=torch.float64)
        for a in range(0, len(rows), batch_size):
            r = next_scale_loss(gen, seqs.batch(rows[a:a + batch_size]))
            tot += len(rows[a:a + batch_size]) * torch.tensor([[float(r[f'{m}_{k}']) for k in range(K)] for m in ('loss', 'acc')],
                                                                   dtype=torch.float64)
        out[c] = dict(loss=(tot[0] / len(rows)).tolist(), acc=(tot[1] / len(rows)).tolist())
    return out


def unigram_ce(train_seqs, seqs, vocab: int) -> list[float]:
    "Per scale: cross-entropy (nats per token) of `seqs` under the add-one smoothed token frequencies of `train_seqs`."
    ces = []
    for tr, ev in zip(train_seqs.indices, seqs.indices):
        p = (torch.bincount(tr.flatten(), minlength=vocab).double() + 1) / (tr.numel() + vocab)
        ces.append(float(-p.log()[ev.flatten()].mean()))
    return ces


def fit_rows(tok, gen, n_train: int, n_heldout: int) -> tuple[list[dict], list[dict]]:
    """(scale rows, category rows). Scale rows: split x scale with tokens per shape, CE, accuracy and the unigram CE
    (means over categories). Category rows: split x category with the finest scale's CE and accuracy."""
    cats, K = tok.info['categories'], len(tok.scales)
    seqs = {s: split_sequences(tok, s, n) for s, n in (('train', n_train), ('val', n_heldout), ('test', n_heldout))}
    scale_rows, cat_rows = [], []
    for split, sq in seqs.items():
        fit = scale_fit(gen, sq)
        uni = unigram_ce(seqs['train'], sq, tok.codebook_size)
        for k in range(K):
            scale_rows.append(dict(split=split, scale=k + 1, tokens=tok.scales[k],
                                   ce=round(sum(f['loss'][k] for f in fit.values()) / len(fit), 4),
                                   acc=round(sum(f['acc'][k] for f in fit.values()) / len(fit), 4),
                                   unigram_ce=round(uni[k], 4)))
        cat_rows += [dict(split=split, category=cats[c], finest_ce=round(f['loss'][-1], 4), finest_acc=round(f['acc'][-1], 4),
                          mean_ce=round(sum(f['loss']) / K, 4)) for c, f in sorted(fit.items())]
    return scale_rows, cat_rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--dir', default=None, help='a pair folder (default: the shipped pair)')
    ap.add_argument('--n-train', type=int, default=None, help="training shapes per category (default: all the pair's)")
    ap.add_argument('--n-heldout', type=int, default=100, help='validation and test shapes per category')
    ap.add_argument('--results', default=None)
    a = ap.parse_args()
    t0 = time.time()
    tok, gen = load_pretrained('nano', directory=a.dir)
    cats = tok.info['categories']
    n_train = a.n_train or int(tok.info.get('n_train_shapes', 40 * len(cats))) // len(cats)
    rows, cat_rows = fit_rows(tok, gen, n_train, a.n_heldout)
    print_table(rows, f'teacher-forced CE per scale (nats; uniform guess ln {tok.codebook_size} = '
                      f'{math.log(tok.codebook_size):.2f})')
    print_table([r for r in cat_rows if r['split'] != 'test'], 'finest scale per category')
    out = Path(a.results) if a.results else RESULTS / f"generator_fit_{machine()['device']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(benchmark='generator_fit', date=time.strftime('%Y-%m-%d %H:%M:%S'), machine=machine(),
                                   meta=dict(pair=a.dir or 'data_samples/pretrained (shipped)', n_train=n_train,
                                             n_heldout=a.n_heldout, trees_per_shape=tok.cfg.fps_trajectories,
                                             generator_steps=tok.info.get('generator_steps'),
                                             generator_loss=tok.info.get('generator_loss'), wall_s=round(time.time() - t0, 1)),
                                   rows=rows, category_rows=cat_rows), indent=2))
    print(f'wrote {out}')


if __name__ == '__main__':
    main()
