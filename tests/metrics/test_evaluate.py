"""simgen eval: reference worlds bracket the others, the SUMO oracle diverges plausibly, reports are
deterministic, and the CLI writes a readable report folder or refuses bad input with one message."""

import json
import subprocess
import sys

import pytest
import torch

from simgen.io import load_logs
from simgen.metrics.evaluate import EvalError, evaluate, evaluate_worlds, roll_out
from simgen.traffic import Demand, generate_logs
from simgen.types import AgentType

SCENES = 3
ROLLOUTS = 4
WORLDS = ["constant_velocity", "idm", "sumo_branch", "log_copies"]


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory):
    """A few busy grid windows, with pedestrians (saved SUMO states keep them), and one short trip."""
    demand = Demand(vehicles_per_hour_per_km=200.0)
    return generate_logs("grid", tmp_path_factory.mktemp("eval") / "logs", scenes=SCENES, seed=5, workers=1,
                         trip_seconds=10.0, demand=demand, warmup_s=60.0, progress=False)


@pytest.fixture(scope="session")
def comparison(log_dir):
    return evaluate_worlds(log_dir, WORLDS, rollouts=ROLLOUTS, workers=2, progress=False)


def test_log_copies_is_the_ceiling_of_every_scene(comparison):
    per_scene = {w: [s["meta_metric"] for s in comparison["reports"][w]["per_scene"]] for w in WORLDS}
    for scene in range(SCENES):
        for world in WORLDS:
            assert per_scene["log_copies"][scene] >= per_scene[world][scene] - 1e-12, (world, scene, per_scene)


def test_oracle_ordering_and_gap(comparison):
    rows = comparison["worlds"]
    print({w: (round(r["meta_metric"], 4), r["gap_closed"]) for w, r in rows.items()})  # idm: numbers only
    assert rows["log_copies"]["meta_metric"] >= rows["sumo_branch"]["meta_metric"] > \
        rows["constant_velocity"]["meta_metric"]
    assert rows["constant_velocity"]["gap_closed"] == 0.0 and rows["log_copies"]["gap_closed"] == 1.0
    assert 0.0 < rows["sumo_branch"]["gap_closed"] <= 1.0
    report = comparison["reports"]["sumo_branch"]
    assert report["protocol"]["mode"] == "wosac" and report["protocol"]["config"] == "WOSAC 2025 weights"
    assert report["scenes"] == list(range(SCENES)) and len(report["per_scene"]) == SCENES
    assert set(report["likelihoods"]) == set(report["histograms"]) and report["min_ade"] > 0
    assert comparison["reports"]["log_copies"]["min_ade"] == 0.0


def test_sumo_branch_diverges_by_metres_and_stays_plausible(log_dir):
    roadmap = load_logs(log_dir).roadmap()
    redrawn, seed_only = [], []  # per moving agent: largest displacement from the log over the future, m
    differ = []  # per scene: do two re-drawn branches differ? (not where everyone waits at a red light)
    for scene in range(SCENES):
        log, (a, b) = roll_out(log_dir, scene, "sumo_branch", rollouts=2)
        _, (c,) = roll_out(log_dir, scene, "sumo", rollouts=1)  # the same branch point, a new seed only
        fut = slice(log.step + 1, None)
        moving = log.traj.speed_mps[:, log.step] > 1.0
        for sim, out in ((a, redrawn), (c, seed_only)):
            both = log.traj.valid[:, fut] & sim.traj.valid[:, fut]
            d = torch.hypot(sim.traj.x - log.traj.x, sim.traj.y - log.traj.y)[:, fut]
            out.append(torch.where(both, d, torch.zeros_like(d)).amax(-1)[moving])
        differ.append(not torch.equal(a.traj.x, b.traj.x))
        for sim in (a, b):
            traj = sim.traj
            assert torch.equal(traj.valid[:, :log.step + 1], log.traj.valid[:, :log.step + 1])
            vehicles = traj.valid & (sim.meta.agent_type == AgentType.VEHICLE)[:, None]
            assert roadmap.is_drivable(traj.xy[vehicles]).float().mean() > 0.99, "vehicles stay on the road"
            steps = traj.valid[:, 1:] & traj.valid[:, :-1]
            jump = torch.hypot(traj.x.diff(dim=-1), traj.y.diff(dim=-1))[steps]
            assert jump.max() < 3.5, "no teleports: under 35 m/s between consecutive steps"
            assert sim.lights.valid[:, fut].all(), "SUMO gives every light slot's state"
    assert any(differ), "branches of different seeds differ"
    redrawn, seed_only = torch.cat(redrawn).median(), torch.cat(seed_only).median()
    print(f"median largest displacement: re-drawn {redrawn:.3f} m, seed only {seed_only:.3f} m")
    assert seed_only < 0.25, "a seed-only branch stays within centimetres of the log (bar the odd lane change)"
    assert redrawn > 1.0, "re-drawn speed factors move agents by metres"


def test_same_seed_same_report_with_any_number_of_workers(log_dir):
    kwargs = dict(rollouts=2, scenes=2, seed=3, progress=False)
    one = evaluate_worlds(log_dir, ["idm", "sumo_branch"], workers=1, **kwargs)
    two = evaluate_worlds(log_dir, ["idm", "sumo_branch"], workers=2, **kwargs)
    for world in ("idm", "sumo_branch"):
        a, b = one["reports"][world], two["reports"][world]
        for key in ("meta_metric", "likelihoods", "min_ade", "rates", "histograms"):
            assert a[key] == b[key], (world, key)
        assert [s["meta_metric"] for s in a["per_scene"]] == [s["meta_metric"] for s in b["per_scene"]]
    other = evaluate(log_dir, "idm", **{**kwargs, "seed": 4})
    assert other["meta_metric"] != one["reports"]["idm"]["meta_metric"], "the seed matters"


def test_closed_loop_protocol_with_an_av_policy(log_dir):
    report = evaluate(log_dir, "sumo", av="constant_velocity", rollouts=1, scenes=1, progress=False)
    assert report["protocol"]["mode"] == "closed_loop" and "constant_velocity" in report["protocol"]["text"]
    assert report["av"] == "constant_velocity" and 0.0 < report["meta_metric"] < 1.0


def test_library_refuses_bad_requests(log_dir):
    with pytest.raises(EvalError, match="unknown world 'teleport'"):
        evaluate(log_dir, "teleport", progress=False)
    with pytest.raises(EvalError, match="unknown AV policy"):
        evaluate(log_dir, "idm", av="teleport", progress=False)
    with pytest.raises(EvalError, match=f"holds {SCENES} scene windows"):
        evaluate(log_dir, "idm", scenes=SCENES + 1, progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(EvalError, match="--device cuda: .* sees no CUDA device; use --device cpu"):
            evaluate(log_dir, "world_model", device="cuda", progress=False)


def simgen(*args):
    return subprocess.run([sys.executable, "-c", "from simgen.cli import app; app()", *args],
                          capture_output=True, text=True, timeout=300)


def test_cli_writes_a_readable_report_folder(log_dir, tmp_path):
    out = tmp_path / "eval"
    result = simgen("eval", "--logs", str(log_dir), "--world", "constant_velocity,log_copies", "--out", str(out),
                    "--rollouts", "2", "--scenes", "2", "--trips")
    assert result.returncode == 0, result.stderr
    assert {p.name for p in out.iterdir()} == {"report.json", "report.md", "histograms.png"}
    report = json.loads((out / "report.json").read_text())
    assert set(report["worlds"]) == {"constant_velocity", "log_copies"}
    assert report["worlds"]["log_copies"]["gap_closed"] == 1.0
    for world, single in report["reports"].items():
        for key in ("meta_metric", "per_scene", "likelihoods", "min_ade", "rates", "trip", "protocol", "world",
                    "scenes", "seeds", "timing", "versions"):
            assert key in single, (world, key)
    trips = {w: report["reports"][w]["trip"] for w in report["worlds"]}
    assert trips["log_copies"]["composite"] < 1e-9 < trips["constant_velocity"]["composite"] <= 1.0
    assert "| meta-metric |" in (out / "report.md").read_text()
    assert (out / "histograms.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args, message", [
    (["--logs", "{missing}", "--world", "idm"], "no such file"),
    (["--logs", "{logs}", "--world", "idm,teleport"], "unknown world 'teleport'"),
])
def test_cli_bad_input_exits_2_with_one_message(log_dir, tmp_path, args, message):
    out = tmp_path / "out"
    args = [a.format(missing=tmp_path / "nowhere", logs=log_dir) for a in args]
    result = simgen("eval", *args, "--out", str(out), "--rollouts", "1")
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.stderr
    assert not out.exists()
