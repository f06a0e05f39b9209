"""How much of a coarse mistake can the finer scales take back? The ceiling behind corrective training.

    python benchmarks/bench_corrective.py                  # the shipped nano pair, 50 validation shapes per category
    python benchmarks/bench_corrective.py --dir D --n 8    # another pair folder (train_pretrained.py), smaller

For each category: the true tokens of `--n` validation shapes. For each scale j that has finer ones, the pair's
generator draws scale j (temperature 1, teacher-forced on the true scales < j: the parallel draw that sampling makes,
with the best possible prefix). Then the shape is decoded three ways, and each is compared with the validation shape
(Chamfer distance, squared, both directions summed, in the tokenizer's frame):
  - `recon`: all true tokens (the tokenizer's reconstruction: no mistake);
  - `kept`: the drawn scale j, then the true finer tokens (chosen for the true scale j: nobody corrects);
  - `corrected`: the drawn scale j, then `generate.requantize`'s corrective tokens toward the true f̂ (what
    `generate.corrective_loss` trains the generator to predict).
`recovered` = (kept - corrected) / (kept - recon): the share of the mistake's cost that the finer codes can take back.
Writes benchmarks/results/corrective_<device>.json (or --results-dir).
"""
from __future__ import annotations
import argparse, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, save_results   # noqa: E402  (puts the repo on sys.path)
import torch

from nsp_explore.data import SyntheticShapes
from nsp_explore.generate import load_pretrained, requantize, sample_logits
from nsp_explore.metrics import chamfer
from nsp_explore.transformer import flatten_teacher


@torch.no_grad()
def corrective_rows(tok, gen, n: int, seed: int = 0) -> list[dict]:
    "Rows {category, scale (1-based j + 1), changed (share of drawn tokens != true), recon, kept, corrected} per category."
    cats, q, K = tok.info['categories'], tok.quantizer, len(tok.scales)
    ends = [0] + torch.tensor(tok.scales).cumsum(0).tolist()
    g, rows = torch.Generator().manual_seed(seed), []
    for c, cat in enumerate(cats):
        val = SyntheticShapes('val', [cat], n, n_points=tok.n_points, resample=False, normalizer=tok.normalizer())
        x = torch.stack([val[i]['points'] for i in range(len(val))])                  # (n, N, 3)
        idx, lod = tok.encode(x)
        x_tree = lod.gather(x)                                                          # the shape in tree order
        feat, pos, slot = flatten_teacher(tok.teacher_inputs(idx))
        logits = gen(feat, pos, slot, torch.full((len(x),), c)).float()                # (n, L, V) teacher-forced
        cd = lambda maps: chamfer(tok.decode(maps)['points'], x_tree)                  # (n,)
        recon = cd(idx)
        for j in range(K - 1):
            drawn = sample_logits(logits[:, ends[j]:ends[j + 1]], 1.0, generator=g)      # (n, s_j) at T = 1
            kept = cd(idx[:j] + [drawn] + idx[j + 1:])
            corrected = cd(requantize(q, q.indices_to_features(idx), idx[:j] + [drawn]))
            rows.append(dict(category=cat, scale=j + 1, changed=round(float((drawn != idx[j]).float().mean()), 4),
                             recon=float(recon.mean()), kept=float(kept.mean()), corrected=float(corrected.mean())))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--dir', default=None, help='a pair folder (default: the shipped pair)')
    ap.add_argument('--n', type=int, default=50, help='validation shapes per category')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--results-dir', default=None)
    a = ap.parse_args()
    t0 = time.time()
    tok, gen = load_pretrained('nano', directory=a.dir)
    rows = corrective_rows(tok, gen, a.n, a.seed)
    table = []
    for j in sorted({r['scale'] for r in rows}):
        rs = [r for r in rows if r['scale'] == j]
        m = {k: sum(r[k] for r in rs) / len(rs) for k in ('changed', 'recon', 'kept', 'corrected')}
        table.append(dict(drawn_scale=j, tokens=tok.scales[j - 1], changed=round(m['changed'], 3),
                          **{f'CD {k}': round(m[k], 5) for k in ('recon', 'kept', 'corrected')},
                          recovered=round((m['kept'] - m['corrected']) / max(m['kept'] - m['recon'], 1e-12), 3)))
    print_table(table, f'one scale drawn by the generator, the finer ones kept or corrected ({a.n} validation shapes per category)')
    save_results('corrective', table, a.results_dir, command=' '.join(sys.argv), pair=a.dir or 'shipped', n_per_category=a.n,
                 seed=a.seed, scales=list(tok.scales), wall_s=round(time.time() - t0, 1), per_category_rows=rows)


if __name__ == '__main__':
    main()
