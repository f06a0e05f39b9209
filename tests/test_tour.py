"""End to end: the tour's command line, as `make tour` calls it (quick preset), and its bad input."""
import json, os, re, subprocess, sys
from pathlib import Path
import pytest

BIN = Path(sys.executable).parent


def test_tour_cli_quick_writes_offline_report(tmp_path):
    out = tmp_path / 'report' / 'tour.html'
    env = dict(os.environ, NSP_PROGRESS='0')
    cmd = [str(BIN / 'nsp-tour'), '--preset', 'quick', '--out', str(out), '--workdir', str(tmp_path / 'runs'), '--device', 'cpu']
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    html = out.read_text()
    assert 'Plotly.newPlot' in html and '<script src="http' not in html      # self-contained
    for section in ('1. Data', '2. Levels of detail', '3. The tokenizer', '4. The next-scale transformer',
                    '5. Sampling', '6. Scores'):
        assert section in html, section
    summary = json.loads(out.with_suffix('.json').read_text())
    assert set(summary['seconds']) == {'data', 'lod', 'tokenizer', 'transformer', 'sampling', 'scores'}
    rows = summary['scores']
    assert len(rows) == 3 and all(0.0 <= r['COV-CD'] <= 1.0 and 0.0 <= r['1-NNA-EMD'] <= 1.0 for r in rows)
    for r in rows:                                  # 1-NNA-CD is a weighted mean of its two halves, both in the report
        lo, hi = sorted((r['1-NNA-CD-acc_sample'], r['1-NNA-CD-acc_ref']))
        assert 0.0 <= lo and hi <= 1.0 and lo - 1e-9 <= r['1-NNA-CD'] <= hi + 1e-9
    assert 'acc_ref' in html
    # checkpoints were written and a rerun resumes from them (no retraining: much faster tokenizer stage)
    ck = sorted(p.name for p in (tmp_path / 'runs').rglob('*.pt'))
    assert 'tokenizer.pt' in ck and any(n.startswith('generator_') for n in ck)
    assert summary['tokenizer']['steps'] == 20 and summary['tokenizer']['resumed_from'] == 0
    # the generator learns every FPS tree of every training shape (FPS augmentation), each once
    m = re.search(r'Token maps of the (\d+) training shapes, each with its (\d+) FPS trees \(FPS augmentation: (\d+) sequences\)', html)
    assert m, 'the report does not say which token maps the generator learned'
    n, trees, seqs = map(int, m.groups())
    assert trees > 1 and seqs == n * trees
    # the trained tokenizer's decoded scale is calibrated (1.0 would mean the step did not run) and the report says so
    scale = summary['tokenizer']['recon_scale']
    assert scale != 1.0 and 0.5 < scale < 2.0 and f'scaled by {scale:.3f}' in html
    assert ('under-trained' in html) == (max(scale, 1 / scale) > 1.25)     # a far factor is explained, a near one not


def test_tour_cli_rejects_unknown_preset(tmp_path):
    r = subprocess.run([str(BIN / 'nsp-tour'), '--preset', 'huge', '--out', str(tmp_path / 'x.html')],
                       capture_output=True, text=True)
    assert r.returncode == 2 and 'no preset' in r.stderr


def test_nano_preset_loads_the_shipped_pair_and_checks_it():
    import torch
    from nsp_explore.tour import TourConfig, _load_pair, _stage_generator, tour_tokenizer_config
    from nsp_explore.tokenizer import TokenizerConfig
    from nsp_explore.viz import Report
    cfg = TourConfig.preset('nano')
    assert cfg.pretrained == 'nano' and TourConfig.preset('nano_train').pretrained is None
    with pytest.raises(ValueError, match='every category'): TourConfig.preset('nano', categories=('mug',))
    with pytest.raises(ValueError, match='needs model'): TourConfig(model='small', pretrained='nano')
    tok_cfg = tour_tokenizer_config(cfg)                          # the pair's own config, from its record
    tok, gen, info = _load_pair(cfg, tok_cfg, torch.device('cpu'))
    assert not tok.training and info['tokenizer_steps'] > 0
    assert tok.cfg.recon_scale != tok_cfg.recon_scale             # calibrated after training: not a config mismatch
    model, rec = _stage_generator(cfg, Report('t'), tok, None, 'cpu', {}, (tok, gen, info))
    assert model is gen and rec['steps_this_run'] == 0 and rec['steps'] == info['generator_steps']
    with pytest.raises(RuntimeError, match='another tokenizer config'):
        _load_pair(cfg, TokenizerConfig.from_dict({**tok_cfg.to_dict(), 'codebook_size': 128}), torch.device('cpu'))


def test_cpu_threads_leaves_busy_cores_alone():
    from nsp_explore.tour import cpu_threads
    assert cpu_threads(2, 0.1) == 2 and cpu_threads(2, 0.9) == 1 and cpu_threads(2, 5.0) == 1
    assert cpu_threads(16, 3.2) == 13 and cpu_threads(1, 0.0) == 1
    for n in range(1, 9):
        for load in (0.0, 0.4, 1.6, 7.0, 30.0):
            assert 1 <= cpu_threads(n, load) <= n
