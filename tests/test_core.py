"""Denser checks of nsp_explore.core and the packaging promises."""
import subprocess, sys
import numpy as np, pytest, torch
from nsp_explore.core import Config, check_cloud, seed_everything, atomic_save, data_samples_dir


def test_import_is_light():
    "Importing the package (and viz) must not pull pyvista or jupyter machinery."
    code = ("import sys, nsp_explore, nsp_explore.core, nsp_explore.viz; "
            "bad = [m for m in ('pyvista', 'vtk', 'ipywidgets', 'jupyter_client', 'ipykernel') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_seed_reproducible_across_libraries():
    seed_everything(123)
    a = (torch.randn(5), np.random.rand(5))
    seed_everything(123)
    b = (torch.randn(5), np.random.rand(5))
    torch.testing.assert_close(a[0], b[0]); np.testing.assert_array_equal(a[1], b[1])
    seed_everything(124)
    assert not torch.equal(a[0], torch.randn(5))


@pytest.mark.parametrize('bad, msg', [
    (np.zeros((4, 2)), 'expected shape'), (np.zeros((2, 3, 3, 3)), 'expected shape'),
    (np.zeros((0, 3)), 'empty'), (np.array([[0, 0, np.inf]]), 'NaN/inf')])
def test_check_cloud_rejects(bad, msg):
    with pytest.raises(ValueError, match=msg.replace('/', '.')):
        check_cloud(bad)


def test_atomic_save_leaves_no_partial(tmp_path):
    target = tmp_path / 'ck.pt'
    atomic_save({'v': 1}, target)
    class Unpicklable:
        def __reduce__(self): raise RuntimeError('cannot pickle')
    with pytest.raises(RuntimeError):
        atomic_save({'v': Unpicklable()}, target)
    assert torch.load(target)['v'] == 1          # old file intact
    assert [p.name for p in tmp_path.iterdir()] == ['ck.pt']


def test_data_samples_dir_exists():
    assert data_samples_dir().is_dir()


def test_atomic_writes_are_readable_by_others(tmp_path):
    "Reports, summaries and checkpoints get open()'s permissions (0o666 minus the umask), not mkstemp's 0o600."
    import os, stat
    from nsp_explore.core import atomic_write_text
    old = os.umask(0o022)
    try:
        a = atomic_write_text('{}', tmp_path / 'summary.json'); b = atomic_save({'v': 1}, tmp_path / 'ck.pt')
        plain = tmp_path / 'plain.txt'; plain.write_text('x')
    finally: os.umask(old)
    for p in (a, b): assert stat.S_IMODE(p.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o644


def test_progress_in_a_kernel_without_ipywidgets_is_a_text_bar(monkeypatch, capsys):
    "A Jupyter kernel without ipywidgets (the book build's) gets tqdm's text bar and no TqdmWarning under it."
    import sys, types, warnings, tqdm.std
    import nsp_explore.core as core
    monkeypatch.setitem(sys.modules, 'ipykernel', types.ModuleType('ipykernel'))
    monkeypatch.setattr(core, '_have_module', lambda name: False)
    assert core._tqdm_class() is tqdm.std.tqdm
    with warnings.catch_warnings():
        warnings.simplefilter('error')                           # a TqdmWarning would raise here
        assert sum(core.progress(range(4), desc='t')) == 6
    monkeypatch.setattr(core, '_have_module', lambda name: name == 'ipywidgets')
    import tqdm.auto
    assert core._tqdm_class() is tqdm.auto.tqdm                  # with ipywidgets: tqdm's notebook-aware choice
