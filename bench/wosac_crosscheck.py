"""Cross-check simgen's WOSAC-2025 metrics against Waymo's official implementation, scene by scene.

1. Take scene windows from a `simgen logs` folder (made on demand: `--map`, `--scenes`).
2. Build rollouts of several kinds per scene (all R x 80 future steps, every agent valid at the last
   history step simulated, as the official protocol assumes: it has no validity for simulated agents):
   ``log_copies`` (the log, agents that vanish from the log are held at constant velocity),
   ``noisy`` (log plus seeded position and heading noise per rollout) and ``constant_velocity``.
3. Score each with ``simgen.metrics.wosac.score_scene`` here, and export the same scene and rollouts as plain
   arrays that ``bench/wosac_official.py`` turns into Waymo ``Scenario`` / ``ScenarioRollouts`` protos and
   scores with the official code (2025 config) inside a separate venv, created on first use:
   ``python3 -m venv ~/.cache/simgen/wod-venv && pip install waymo-open-dataset-tf-2-12-0==1.6.7`` (2.8 GB).
4. Print per scene and per feature |delta| tables and write them to ``--out`` as JSON.

Conversion (docs/FORMATS.md): road edges are our closed road-edge rings, road on their left, as the official
code expects; each light slot becomes one lane (approach lane + junction lane) with its stop point at the
end of the approach, carrying the slot's state per step.

    .venv/bin/python bench/wosac_crosscheck.py --map berlin --scenes 20 --out /tmp/crosscheck.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from simgen import io
from simgen.agents.lanes import lane_polyline
from simgen.metrics.wosac import score_scene
from simgen.sim.env import wrap_angle
from simgen.types import DT_S, AgentTrajectory, RoadMap, SceneState

WOD_VENV = Path.home() / ".cache" / "simgen" / "wod-venv"
WOD_PACKAGE = "waymo-open-dataset-tf-2-12-0==1.6.7"
HISTORY = 11
EDGE_MARGIN_M = 150.0  # road-edge rings with a point this close to a scene agent are exported whole


def wod_python() -> Path:
    python = WOD_VENV / "bin" / "python"
    if not python.exists():
        print(f"creating the official venv in {WOD_VENV} ({WOD_PACKAGE}, about 2.8 GB) ...", flush=True)
        subprocess.run([sys.executable.replace("/.venv/", "/"), "-m", "venv", str(WOD_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", WOD_PACKAGE], check=True)
    return python


def rollouts(log: SceneState, kind: str, num: int, seed: int) -> AgentTrajectory:
    """``[R, A, 91]`` rollouts of one kind; every agent valid at the last history step stays valid."""
    t0, traj = log.step, log.traj
    alive = traj.valid[:, t0]  # [A]
    k = torch.arange(1, traj.num_steps - t0, dtype=torch.float32) * DT_S  # [F] s after the last history step
    cv_x = traj.x[:, t0, None] + traj.vel_x[:, t0, None] * k  # [A, F]
    cv_y = traj.y[:, t0, None] + traj.vel_y[:, t0, None] * k
    cv_h = traj.heading[:, t0, None].expand_as(cv_x)
    if kind == "constant_velocity":
        fx, fy, fh = cv_x, cv_y, cv_h
    else:  # the log; agents the log loses keep going at constant velocity
        keep = traj.valid[:, t0 + 1:]
        fx = torch.where(keep, traj.x[:, t0 + 1:], cv_x)
        fy = torch.where(keep, traj.y[:, t0 + 1:], cv_y)
        fh = torch.where(keep, traj.heading[:, t0 + 1:], cv_h)
    fx, fy, fh = (v[None].expand(num, -1, -1).clone() for v in (fx, fy, fh))  # [R, A, F]
    if kind == "noisy":
        g = torch.Generator().manual_seed(seed)
        fx += 0.1 * torch.randn(fx.shape, generator=g).cumsum(-1)
        fy += 0.1 * torch.randn(fy.shape, generator=g).cumsum(-1)
        fh = wrap_angle(fh + 0.02 * torch.randn(fh.shape, generator=g))

    def history(field: torch.Tensor) -> torch.Tensor:  # [R, A, t0 + 1]
        return field[None, :, :t0 + 1].expand(num, -1, -1)

    def future_velocity(pos: torch.Tensor, future: torch.Tensor) -> torch.Tensor:
        return torch.diff(torch.cat([history(pos)[..., -1:], future], -1), dim=-1) / DT_S

    fields = {"x": fx, "y": fy, "heading": fh, "vel_x": future_velocity(traj.x, fx),
              "vel_y": future_velocity(traj.y, fy)}
    for name in ("z", "length", "width", "height"):
        fields[name] = history(getattr(traj, name))[..., -1:].expand_as(fx)
    valid = torch.cat([history(traj.valid), alive[None, :, None].expand_as(fx)], -1)
    out = {name: torch.cat([history(getattr(traj, name)), future], -1) for name, future in fields.items()}
    out = {name: torch.where(valid, value, torch.zeros(())) for name, value in out.items()}
    return AgentTrajectory(**out, valid=valid)


def export_scene(path: Path, roadmap: RoadMap, log: SceneState, sims: AgentTrajectory) -> None:
    """The plain-array scene file read by bench/wosac_official.py (its docstring lists the keys)."""
    t = log.traj
    d = {f"log_{k}": getattr(t, k).numpy() for k in AgentTrajectory.tensor_fields() if k != "valid"}
    d.update(log_valid=t.valid.numpy(), object_type=log.meta.agent_type.numpy(),
             object_id=np.arange(log.num_agents), av_row=np.int64(log.av_index), evaluated=t.valid[:, log.step].numpy())
    agents = t.xy[t.valid]
    rings = []
    for r in range(roadmap.road_edge_xy.shape[0]):
        ring = roadmap.road_edge_xy[r][roadmap.road_edge_valid[r]]
        if torch.cdist(ring, agents).min() < EDGE_MARGIN_M:
            rings.append(ring.numpy())
    d.update(edge_xy=np.concatenate(rings), edge_start=np.cumsum([0] + [len(r) for r in rings]))
    lanes = []
    lights = log.lights
    for s in range(lights.num_slots):
        g = int(lights.signal_id[s, 0])
        parts = [lane_polyline(roadmap, int(roadmap.signal_lane[g])).numpy()]
        if roadmap.signal_via_lane[g] >= 0:
            parts.append(lane_polyline(roadmap, int(roadmap.signal_via_lane[g])).numpy())
        lanes.append(np.concatenate(parts))
    d.update(light_lane_xy=np.concatenate(lanes) if lanes else np.zeros((0, 2)),
             light_lane_start=np.cumsum([0] + [len(lane) for lane in lanes]), light_state=lights.state.numpy(),
             light_valid=lights.valid.numpy(),
             stop_xy=torch.stack([lights.stop_x[:, 0], lights.stop_y[:, 0]], -1).numpy())
    d["sim_xyzh"] = torch.stack([sims.x, sims.y, sims.z, sims.heading], -1)[:, :, HISTORY:].numpy()
    np.savez(path, **d)


FEATURES = {  # ours -> official field
    "linear_speed": "linear_speed_likelihood", "linear_acceleration": "linear_acceleration_likelihood",
    "angular_speed": "angular_speed_likelihood", "angular_acceleration": "angular_acceleration_likelihood",
    "distance_to_nearest_object": "distance_to_nearest_object_likelihood",
    "collision_indication": "collision_indication_likelihood", "time_to_collision": "time_to_collision_likelihood",
    "distance_to_road_edge": "distance_to_road_edge_likelihood", "offroad_indication": "offroad_indication_likelihood",
    "traffic_light_violation": "traffic_light_violation_likelihood",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--logs", type=Path, help="a `simgen logs` folder (default: made with --map/--scenes)")
    parser.add_argument("--map", default="berlin")
    parser.add_argument("--scenes", type=int, default=20)
    parser.add_argument("--rollouts", type=int, default=32)
    parser.add_argument("--kinds", default="log_copies,noisy,constant_velocity")
    parser.add_argument("--out", type=Path, default=Path("crosscheck.json"))
    args = parser.parse_args()
    python = wod_python()
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        log_dir = args.logs
        if log_dir is None:
            from simgen.traffic import generate_logs

            log_dir = generate_logs(args.map, work / "logs", scenes=args.scenes, seed=0, workers=2)
        logs = io.load_logs(log_dir)
        roadmap = logs.roadmap()
        ours, files = {}, []
        for i in range(min(args.scenes, len(logs))):
            log = logs.scene(i)
            for kind in args.kinds.split(","):
                sims = rollouts(log, kind, args.rollouts, seed=i)
                name = f"scene{i:03d}_{kind}"
                score = score_scene(roadmap, log, sims)
                ours[name] = {"metametric": score.meta_metric, **score.likelihoods}
                export_scene(work / f"{name}.npz", roadmap, log, sims)
                files.append(str(work / f"{name}.npz"))
        subprocess.run([str(python), str(Path(__file__).with_name("wosac_official.py")), *files,
                        "--out", str(work / "official.json")], check=True)
        official = json.loads((work / "official.json").read_text())
    table = {}
    for name, mine in ours.items():
        theirs = official[name]
        row = {"metametric": (mine["metametric"], theirs.get("metametric", 0.0))}
        row.update({f: (mine.get(f, float("nan")), theirs.get(o, 0.0)) for f, o in FEATURES.items()})
        table[name] = row
    worst = {key: max(abs(r[key][0] - r[key][1]) for r in table.values()) for key in next(iter(table.values()))}
    print(f"{'scene':28s} {'ours':>8s} {'official':>9s} {'|delta|':>8s}")
    for name, row in table.items():
        a, b = row["metametric"]
        print(f"{name:28s} {a:8.4f} {b:9.4f} {abs(a - b):8.4f}")
    print("max |delta| per feature over all scenes:")
    for key, value in worst.items():
        print(f"  {key:28s} {value:.4f}")
    args.out.write_text(json.dumps({"scenes": table, "max_abs_delta": worst}, indent=2))


if __name__ == "__main__":
    main()
