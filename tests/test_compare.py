"""Tests of the paradigm comparison (nsp_explore.compare) and of the committed results it reads."""
import itertools

import numpy as np
import pytest

from nsp_explore.compare import (QUALITY, load_results, pack_clouds, pareto, quality_time_fig, samples_fig, table_md,
                                 unpack_clouds)


def test_pack_round_trip_within_float16():
    rng = np.random.default_rng(0)
    for shape in ((1, 5, 3), (3, 64, 3)):
        x = rng.normal(size=shape).astype(np.float32) * 2
        y = unpack_clouds(pack_clouds(x), shape)
        assert y.shape == shape and y.dtype == np.float32
        assert np.abs(y - x).max() <= 2 ** -10 * np.abs(x).max() + 1e-7          # float16: 10 mantissa bits
    with pytest.raises(ValueError): unpack_clouds(pack_clouds(np.zeros((2, 4, 3))), (3, 4, 3))


def _pareto_naive(pts):
    front = []
    for m, a, b in pts:
        dominated = False
        for m2, a2, b2 in pts:
            if m2 != m and a2 <= a and b2 <= b and (a2, b2) != (a, b): dominated = True
        if not dominated: front.append(m)
    return front


def test_pareto_matches_brute_force():
    rng = np.random.default_rng(1)
    for _ in range(50):
        n = int(rng.integers(1, 7))
        rows = [dict(model=f'm{i}', t=float(rng.integers(1, 5)), q=float(rng.integers(1, 5))) for i in range(n)]
        rows.append(dict(model='ideal', t=None, q=0.0))                               # rows without a time are left out
        front = pareto(rows, 't', 'q')
        assert front == _pareto_naive([(r['model'], r['t'], r['q']) for r in rows if r['t'] is not None])
        assert 'ideal' not in front and len(front) >= 1
        for a, b in itertools.combinations([r for r in rows if r['model'] in front], 2):   # no front member beats another
            assert not (a['t'] <= b['t'] and a['q'] <= b['q'] and (a['t'], a['q']) != (b['t'], b['q']))


def test_table_md_shape():
    rows = [dict(model='a', x=0.123456, n=12345, note='hidden'), dict(model='b', x=None, n=2)]
    lines = table_md(rows).splitlines()
    assert len(lines) == 4 and lines[0] == '| model | x | n |'
    assert '0.1235' in lines[2] and '12,345' in lines[2] and lines[3] == '| b |  | 2 |'


# --- the committed results ----------------------------------------------------------------------
@pytest.fixture(scope='module')
def res(): return load_results()


def test_committed_results_follow_the_protocol(res):
    meta, rows = res['meta'], res['rows']
    assert meta['n_test'] >= 100 and meta['n_points'] == 256
    assert 'loadavg_1min' in res['machine'] and meta['loadavg_start'] > 0 and res['machine']['device'] == 'cpu'
    models = [r['model'] for r in rows]
    for m in ('next-scale (PointNSP, T = 1)', 'masked (SMART-3D)', 'flat AR (fps order)', 'real shapes (val vs test)'):
        assert m in models
    redone = [m for u in meta.get('updates', []) for m in u['rows']]             # rows re-run after the full run say so
    assert all(m in models for m in redone) and all(u['note'] and u['loadavg_start'] > 0 for u in meta.get('updates', []))
    for r in rows:
        for k in QUALITY: assert r[k] is not None and r[k] >= 0
        for k in ('1-NNA-CD', '1-NNA-EMD', 'COV-CD', 'COV-EMD'): assert 0 <= r[k] <= 1
    ev = {r['model']: r['evals_per_shape'] for r in rows}
    import json
    from nsp_explore.core import data_samples_dir
    K = len(json.loads((data_samples_dir() / 'pretrained' / 'nano.json').read_text())['tokenizer_config']['scales'])
    assert ev['next-scale (PointNSP, T = 1)'] == K                               # the shipped pair: one call per scale
    assert ev['masked (SMART-3D)'] == 8 and ev['flat AR (fps order)'] == 256
    gen = [r for r in rows if r['evals_per_shape'] is not None]
    assert all(r['sample_s_b1'] > 0 and r['sample_s_b64_per_shape'] > 0 and r['train_s'] > 0 and r['params'] > 0 for r in gen)
    assert all(r['params'] >= r['params_generator'] for r in gen)


def test_committed_figure_samples_decode(res):
    meta = res['meta']
    for name, s in meta['fig_samples'].items():
        x = unpack_clouds(s, meta['fig_shape'])
        assert x.shape == tuple(meta['fig_shape']) and np.isfinite(x).all() and x.std() > 0.05, name
    fig = samples_fig(res)
    assert len(meta['fig_samples']) == len(res['rows']) + 1
    assert len(fig.data) >= len(meta['fig_samples'])


def test_quality_time_fig(res):
    fig = quality_time_fig(res['rows'])
    assert len(fig.data) == 2 and fig.layout.xaxis.type == 'log'
    assert len(fig.data[0].x) == sum(r['sample_s_b1'] is not None for r in res['rows'])


def test_retire_rows_moves_only_rows_gone_from_the_table():
    "bench_compare --next-scale-only: an earlier update's rows that were dropped or renamed since move to rows_retired."
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'benchmarks'))
    from bench_compare import retire_rows
    meta = dict(updates=[dict(rows=['a', 'b', 'c'], note='x'), dict(rows=['a'], note='y', rows_retired=['z'])])
    retire_rows(meta, ['a', 'c'])
    assert meta['updates'][0]['rows'] == ['a', 'c'] and meta['updates'][0]['rows_retired'] == ['b']
    assert meta['updates'][1] == dict(rows=['a'], note='y', rows_retired=['z'])      # nothing gone: unchanged
    retire_rows(meta, ['c'])
    assert meta['updates'][0]['rows_retired'] == ['b', 'a'] and meta['updates'][1]['rows'] == []
