"""The shipped nano G3PT tokenizer, its checkpoint round trip, the decoder's query blocks, and the tour's G3PT
section: a regression floor on the shipped model's validation IoU, recomputed here (not read from its record)."""
import json

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from nsp_explore.core import data_samples_dir
from nsp_explore.g3pt import G3PTConfig, G3PTTokenizer, load_g3pt, load_pretrained_g3pt, save_g3pt
from nsp_explore.occupancy import OccupancyShapes, occ_iou
from nsp_explore.train import CheckpointError, save_checkpoint

TINY = dict(n_points=64, n_latents=16, scales=(1, 4, 9, 16), dim=32, n_heads=4, enc_layers=1, dec_layers=1,
            n_freqs=4, n_bits=6, n_queries=64, mesh_res=10)


def cloud(B=2, N=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, N, 3, generator=g) - 0.5, F.normalize(torch.randn(B, N, 3, generator=g), dim=-1)


@pytest.fixture(scope='module')
def shipped():
    return load_pretrained_g3pt()


def test_checkpoint_round_trip_same_tokens_and_logits(tmp_path):
    torch.manual_seed(3)
    tok = G3PTTokenizer(G3PTConfig(**TINY, query_blocks=2)).eval()
    x, n = cloud(seed=4)
    q = torch.rand(2, 50, 3) - 0.5
    save_g3pt(tok, tmp_path / 't.pt')
    back = load_g3pt(tmp_path / 't.pt')
    assert back.cfg == tok.cfg and back.stage == 2 and not back.training
    assert all(torch.equal(a, b) for a, b in zip(tok.encode(x, normals=n)[0], back.encode(x, normals=n)[0]))
    with torch.no_grad():
        assert_close(back.logits(back(x, n).z_hat, q), tok.logits(tok(x, n).z_hat, q), rtol=0, atol=0)


def test_load_g3pt_refuses_other_models(tmp_path):
    save_checkpoint(tmp_path / 'other.pt', torch.nn.Linear(2, 2))
    with pytest.raises(CheckpointError, match='not a G3PTTokenizer'): load_g3pt(tmp_path / 'other.pt')
    with pytest.raises(FileNotFoundError, match='available'): load_pretrained_g3pt('huge')


def test_query_blocks_read_the_latents_again():
    torch.manual_seed(0)
    one, two = G3PTTokenizer(G3PTConfig(**TINY)), G3PTTokenizer(G3PTConfig(**TINY, query_blocks=2, query_mlp=4))
    assert len(one.decoder.cross) == 1 and len(two.decoder.cross) == 2
    assert two.decoder.cross[1].mlp[0].out_features == 4 * TINY['dim']
    x, n = cloud()
    out = two(x, n)
    z = two.logits(out.z_hat, torch.rand(2, 30, 3) - 0.5)
    assert z.shape == (2, 30)
    z.sum().backward()        # both blocks' attention gets a gradient: the second one reads Ẑ too
    assert all(b.attn.kv.weight.grad.abs().sum() > 0 for b in two.decoder.cross)


def test_shipped_tokenizer_is_small_documented_and_reconstructs(shipped):
    d = data_samples_dir() / 'pretrained'
    assert (d / 'g3pt_nano_tokenizer.pt').stat().st_size < 3e6
    info = shipped.info
    assert info['seed'] == 0 and len(info['steps']) == 2 and info['train_wall_s'] > 0 and 'command' in info
    assert shipped.cfg.n_points == 256 and shipped.stage == 2 and not shipped.training
    # recompute the validation IoU on 20 of the 100 validation shapes (2 per category): a broken decoder,
    # a config mismatch or a wrong stage falls far below the recorded value
    val = OccupancyShapes('val', n_per_category=2, n_points=256, n_queries=4096)
    b = {k: torch.stack([val[i][k] for i in range(len(val))]) for k in ('points', 'normals', 'queries', 'occ')}
    with torch.no_grad():
        out = shipped(b['points'], b['normals'])
        ious = [float(occ_iou(shipped.logits(z, b['queries']), b['occ']).mean()) for z in out.cumulative]
    assert ious[-1] > 0.33, ious          # calling every query inside scores 0.21 on the validation pools (half near the surface)
    assert abs(ious[-1] - info['val']['iou']) < 0.1, (ious[-1], info['val']['iou'])
    assert ious[-1] > ious[0]                               # finer scales add detail
    # tokens are integers in range and decode back to the same latents
    idx = shipped.encode(b['points'][:4], normals=b['normals'][:4])[0]
    assert [tuple(i.shape) for i in idx] == [(4, s) for s in shipped.scales]
    assert_close(shipped.z_from_indices(idx)[-1], out.z_hat[:4], rtol=1e-4, atol=1e-5)


def test_tour_g3pt_section(shipped, tmp_path):
    from nsp_explore.tour import TourConfig, _stage_g3pt, main
    from nsp_explore.viz import Report
    rep = Report('t')
    r = _stage_g3pt(TourConfig.preset('quick'), rep, torch.device('cpu'), n_shapes=2, res=16)
    assert r['categories'] == ['chair', 'airplane'] and len(r['iou_per_scale']) == len(shipped.scales)
    assert all(0 <= v <= 1 for v in r['iou_per_scale'])
    html = rep.save(tmp_path / 'r.html').read_text()
    assert 'G3PT' in html and html.count('data-nsp-fig=') == 2
    assert TourConfig.preset('nano').g3pt and not TourConfig.preset('nano', g3pt=False).g3pt
    with pytest.raises(SystemExit): main(['--preset', 'huge', '--no-g3pt'])
