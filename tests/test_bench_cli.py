"""``python -m bench``: a bad argument is one line naming it, exit code 2, nothing run or written."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("args", "message"), [
    (["label_efficiency", "--rounds", "x"], "python -m bench label_efficiency: argument --rounds: invalid int value"),
    (["label_efficiency", "--merge"], "python -m bench label_efficiency: argument --merge: expected at least one"),
    (["label_efficiency", "--updates", "0"], "python -m bench label_efficiency: argument --updates: expected a"),
    (["label_efficiency", "--suite", "default", "--methods", "bc", "--method-params", '{"bc": {"lr_decayy": true}}'],
     "python -m bench label_efficiency: method bc: BCConfig.__init__() got an unexpected keyword argument 'lr_decayy'"),
    (["imitation_peer", "--labelz", "5"], "python -m bench imitation_peer: unrecognized arguments: --labelz 5"),
    (["imitation_peer", "--eval-episodes", "0"],
     "python -m bench imitation_peer: --eval-episodes must be an int >= 1, got 0"),
    (["nope"], "unknown benchmark 'nope'; benchmarks: async_inference, "),
])
def test_a_bad_argument_is_one_line_and_exit_code_2(args: list[str], message: str, tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "bench", *args, "--results-dir", str(tmp_path / "out")], cwd=REPO,
                         capture_output=True, text=True)
    lines = (run.stdout + run.stderr).strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1 and lines[0].startswith(message), lines
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("method", ["bc", "dagger", "gated", "intervention"])
def test_a_methods_own_keys_reach_its_config(method: str) -> None:
    from bench.label_efficiency import method_config

    common = {"episodes_per_task": 1, "updates_per_round": None, "teacher_noise": 0.0, "collect_steps": None}
    gate_params = {"query_rate": 0.1, "takeover_steps": 5, "intervene_at": 0.3}
    schedule = {"schedule": "step", "switch_round": 1} if method == "dagger" else {}
    config = method_config(method, 10, common, schedule, gate_params, {"lr_decay": True, "rounds": 4})
    assert config.lr_decay is True and config.rounds == 4
