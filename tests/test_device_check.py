"""bench/device_check.py --quick --device cpu: the whole device check at tiny sizes, so that it is known to run
before a GPU run."""
import os

import pytest

from crw.bench import device_check
from crw.bench.results import RESULTS


def test_quick_cpu_runs_and_agrees(tmp_path):
    before = os.path.getmtime(RESULTS) if os.path.exists(RESULTS) else None
    out = tmp_path / 'results.md'
    a = device_check.get_args_parser().parse_args(['--quick', '--device', 'cpu', '--workers', '1',
                                                   '--results', str(out)])
    res = device_check.run(a)
    assert device_check.failures(res) == []
    assert res['training_agreement']['loss'] == 0.0           # the CPU against itself
    assert res['mask_agreement']['frames'] == 7 and res['mask_agreement']['worst'] >= 0.99
    assert res['propagation']['frames'] == 8 and res['propagation']['fps'] > 0
    assert set(res['training']) == {'fp32', 'fp32, channels-last'}   # --amp: CUDA only by default
    assert all(t['clips_s'] > 0 for t in res['training'].values()) and res['data'][1] > 0
    table = out.read_text()
    assert table.startswith('### device check') and 'masks (cpu windowed vs cpu reference' in table
    assert '**FAIL**' not in table
    assert (os.path.getmtime(RESULTS) if os.path.exists(RESULTS) else None) == before   # only when asked


def test_missing_data_folder_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match=r'^device_check: --davis .*missing: no such folder$'):
        device_check.main(['--quick', '--device', 'cpu', '--davis', str(tmp_path / 'missing')])
