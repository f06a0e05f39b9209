"""Progress bars do not flood logs: redirected to a file, a bar is redrawn every 30 s at most, not 10 times a second."""
import subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_LOOP = ("import time\nfrom nsp_explore.core import progress\n"
         "for _ in progress(range(200), desc='loop'): time.sleep(0.005)\n")


def _log_size(tmp_path, env_extra) -> tuple[int, int]:
    log = tmp_path / 'log.txt'
    env = {'PATH': '/usr/bin:/bin', 'PYTHONPATH': str(ROOT), 'NSP_PROGRESS': '1', 'OMP_NUM_THREADS': '1', **env_extra}
    with open(log, 'w') as f:
        subprocess.run([sys.executable, '-c', _LOOP], stderr=f, stdout=f, env=env, check=True, timeout=120)
    raw = log.read_bytes()                     # bytes: read_text would turn every \r into \n
    return raw.count(b'\r'), len(raw)


def test_bar_in_a_log_file_is_not_redrawn_every_step(tmp_path):
    redraws, size = _log_size(tmp_path, {})
    assert redraws <= 3 and size < 600, (redraws, size)       # start and end, not ~10 per second
    assert '200/200' in (tmp_path / 'log.txt').read_text()      # the final state is still written


def test_interval_can_be_chosen(tmp_path):
    redraws, _ = _log_size(tmp_path, {'NSP_PROGRESS_EVERY': '0'})
    assert redraws > 10                                        # every update: the old behaviour, on request
