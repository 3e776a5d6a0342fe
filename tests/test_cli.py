"""The CLI's contract on bad input: exit code 2, one clear line, nothing half-written in --out."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def simgen(*args, cwd=None):
    return subprocess.run([sys.executable, "-c", "from simgen.cli import app; app()", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


def scenario_file(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, message", [
    (None, "no such file"),
    ("map: grid\nspeed: 3\n", "unknown key 'speed'"),
    ("map: grid\nduration_s: soon\n", "key 'duration_s'"),
    ("map: atlantis\n", "atlantis"),
    ("map: {net}\n", "corrupt.net.xml"),
    ("map: grid\nav:\n  route:\n    from: nowhere\n    to: auto\n", "av.route.to: auto"),
    ("map: grid\nav:\n  route:\n    from: nowhere\n    to: A0B0\n", "av.route.from: 'nowhere' is not an edge"),
])
def test_bad_input_exits_2_with_one_message(tmp_path, text, message):
    corrupt = tmp_path / "corrupt.net.xml"
    corrupt.write_text("<net version='1.20'><edge id='a'><lane id='a_0' shape='0,0 10")
    config = tmp_path / "missing.yaml" if text is None else scenario_file(tmp_path, text.format(net=corrupt))
    out = tmp_path / "out"
    result = simgen("rollout", str(config), "--out", str(out))
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert lines and lines[0].startswith("error:"), result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_help_teaches_with_examples():
    result = simgen("rollout", "--help")
    assert result.returncode == 0
    assert "simgen rollout scenarios/city.yaml" in result.stdout


@pytest.mark.parametrize("command", [["map", "atlantis", "--out"], ["logs", "--map", "atlantis", "--out"]])
def test_unknown_map_in_every_command(tmp_path, command):
    out = tmp_path / "out"
    result = simgen(*command, str(out))
    assert result.returncode == 2 and "atlantis" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


def test_same_yaml_and_seed_give_identical_files_across_processes(tmp_path):
    """Byte-identical rollout arrays from two separate `simgen rollout` processes (no hash-order effects)."""
    config = scenario_file(tmp_path, "map: grid\nseed: 5\nduration_s: 4\nworld: sumo\ntraffic:\n  warmup_s: 20\n")
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        result = simgen("rollout", str(config), "--out", str(out), "--no-video")
        assert result.returncode == 0, result.stderr
    assert (outs[0] / "rollout.npz").read_bytes() == (outs[1] / "rollout.npz").read_bytes()
