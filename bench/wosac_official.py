"""Waymo's official WOSAC-2025 metrics on scenes exported by bench/wosac_crosscheck.py.

Runs ONLY inside the separate official venv (waymo-open-dataset-tf-2-12-0==1.6.7, TF 2.13), never in
simgen's: it imports numpy and the Waymo package, nothing from simgen.

    WOD_PYTHON bench/wosac_official.py SCENE.npz [SCENE.npz ...] --out results.json

Each input file holds one scene in plain arrays (written by ``export_scene`` in wosac_crosscheck.py):
    log_{x,y,z,heading,vel_x,vel_y,length,width,height} [A, 91] float, log_valid [A, 91] bool,
    object_type [A] (1 vehicle, 2 pedestrian, 3 cyclist), object_id [A], av_row [], evaluated [A] bool,
    edge_xy [E, 2] + edge_start [R+1] (closed road-edge rings, road on the left, concatenated),
    light_lane_xy [L, 2] + light_lane_start [S+1] (approach + junction lane of each light slot),
    light_state [S, 91] (0 unknown, 1 stop, 2 caution, 3 go), light_valid [S, 91], stop_xy [S, 2],
    sim_xyzh [R, A, 80, 4] (x, y, z, heading of every simulated agent, future steps).
Writes, per scene, every field of the official SimAgentMetrics message.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
from google.protobuf import json_format, text_format
from waymo_open_dataset.protos import map_pb2, scenario_pb2, sim_agents_metrics_pb2, sim_agents_submission_pb2
from waymo_open_dataset.wdl_limited.sim_agents_metrics import metrics

# our LightState -> the official lane signal state (STOP, CAUTION, GO; unknown stays unknown)
LANE_STATE = {0: map_pb2.TrafficSignalLaneState.LANE_STATE_UNKNOWN, 1: map_pb2.TrafficSignalLaneState.LANE_STATE_STOP,
              2: map_pb2.TrafficSignalLaneState.LANE_STATE_CAUTION, 3: map_pb2.TrafficSignalLaneState.LANE_STATE_GO}
LIGHT_LANE_ID0 = 100_000  # map feature ids: road edges count from 0, light lanes from here


def load_config() -> sim_agents_metrics_pb2.SimAgentMetricsConfig:
    path = os.path.join(os.path.dirname(metrics.__file__), "challenge_2025_sim_agents_config.textproto")
    config = sim_agents_metrics_pb2.SimAgentMetricsConfig()
    with open(path) as f:
        text_format.Parse(f.read(), config)
    return config


def polylines(xy: np.ndarray, start: np.ndarray) -> list[np.ndarray]:
    return [xy[start[k]:start[k + 1]] for k in range(len(start) - 1)]


def build_scenario(d: dict[str, np.ndarray], scenario_id: str) -> scenario_pb2.Scenario:
    sc = scenario_pb2.Scenario(scenario_id=scenario_id, current_time_index=10, sdc_track_index=int(d["av_row"]))
    num_steps = d["log_x"].shape[1]
    sc.timestamps_seconds.extend([0.1 * t for t in range(num_steps)])
    for a in range(d["log_x"].shape[0]):
        track = sc.tracks.add(id=int(d["object_id"][a]), object_type=int(d["object_type"][a]))
        for t in range(num_steps):
            track.states.add(
                center_x=float(d["log_x"][a, t]), center_y=float(d["log_y"][a, t]), center_z=float(d["log_z"][a, t]),
                length=float(d["log_length"][a, t]), width=float(d["log_width"][a, t]),
                height=float(d["log_height"][a, t]), heading=float(d["log_heading"][a, t]),
                velocity_x=float(d["log_vel_x"][a, t]), velocity_y=float(d["log_vel_y"][a, t]),
                valid=bool(d["log_valid"][a, t]))
        if d["evaluated"][a] and a != int(d["av_row"]):
            sc.tracks_to_predict.add(track_index=a)
    for k, ring in enumerate(polylines(d["edge_xy"], d["edge_start"])):
        feature = sc.map_features.add(id=k)
        feature.road_edge.type = map_pb2.RoadEdge.TYPE_ROAD_EDGE_BOUNDARY
        feature.road_edge.polyline.extend([map_pb2.MapPoint(x=float(x), y=float(y), z=0.0) for x, y in ring])
    lanes = polylines(d["light_lane_xy"], d["light_lane_start"])
    for s, lane in enumerate(lanes):
        feature = sc.map_features.add(id=LIGHT_LANE_ID0 + s)
        feature.lane.type = map_pb2.LaneCenter.TYPE_SURFACE_STREET
        feature.lane.polyline.extend([map_pb2.MapPoint(x=float(x), y=float(y), z=0.0) for x, y in lane])
    for t in range(num_steps):
        states = sc.dynamic_map_states.add()
        for s in range(len(lanes)):
            if d["light_valid"][s, t]:
                states.lane_states.add(
                    lane=LIGHT_LANE_ID0 + s, state=LANE_STATE[int(d["light_state"][s, t])],
                    stop_point=map_pb2.MapPoint(x=float(d["stop_xy"][s, 0]), y=float(d["stop_xy"][s, 1]), z=0.0))
    return sc


def build_rollouts(d: dict[str, np.ndarray], scenario_id: str) -> sim_agents_submission_pb2.ScenarioRollouts:
    rollouts = sim_agents_submission_pb2.ScenarioRollouts(scenario_id=scenario_id)
    simulated = np.nonzero(d["log_valid"][:, 10])[0]
    for r in range(d["sim_xyzh"].shape[0]):
        joint = rollouts.joint_scenes.add()
        for a in simulated:
            x, y, z, h = (d["sim_xyzh"][r, a, :, k].astype(float) for k in range(4))
            joint.simulated_trajectories.add(object_id=int(d["object_id"][a]), center_x=x, center_y=y, center_z=z,
                                             heading=h)
    return rollouts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenes", nargs="+")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    config = load_config()
    results = {}
    for path in args.scenes:
        with np.load(path) as data:
            d = {k: data[k] for k in data.files}
        scenario_id = os.path.splitext(os.path.basename(path))[0]
        tic = time.perf_counter()
        m = metrics.compute_scenario_metrics_for_bundle(config, build_scenario(d, scenario_id),
                                                        build_rollouts(d, scenario_id))
        result = json_format.MessageToDict(m, preserving_proto_field_name=True)
        result["seconds"] = time.perf_counter() - tic
        results[scenario_id] = result
        print(f"{scenario_id}: metametric {result.get('metametric', 0.0):.4f} ({result['seconds']:.1f} s)", flush=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2, sort_keys=True)


if __name__ == "__main__":
    main()
