"""WOSAC 2025 realism metrics: per-feature likelihoods, the meta-metric, minADE and simulated rates.

``score_scene`` scores R rollouts of one logged scene window against the log,
the way Waymo's official sim-agent metrics do (2025 sim-agents
configuration); ``score_scene_reference`` is its slow, obvious twin (loops
over rollouts and agents, numpy and shapely), used as the test oracle. The
features themselves are defined in ``simgen.metrics.features``.

Notation
--------

| symbol | meaning |
|---|---|
| R | rollouts |
| A | agent rows of the scene |
| E | evaluated agents: rows valid at the log's last history step (the AV included) |
| T | steps of the window (91), H = ``log.step + 1`` history and F = T - H future |
| b | a histogram bin; ``n_b`` sim samples of an agent in bin b, ``n`` all of them |
| α | additive smoothing: 0.1 (histograms), 0.001 (Bernoulli) |
| w_f | meta-metric weight of feature f |

Scoring (``score_scene``)
-------------------------

1. Check the inputs (shapes, NaNs, units, the rollouts' history equals the
   log's) and find E; rows never valid anywhere are dropped (they touch
   nothing).
2. Features of the log (as one rollout) and of the R rollouts
   (``scene_features``), ``[., A, F]``.
3. Histogram features (speeds, accelerations, distances, time to collision):
   per evaluated agent, pool its values over all rollouts and the future
   steps where the *simulated* agent is valid into the feature's bins (values
   clipped to the range first; undefined values, which the official code
   produces at the end of the window for speeds and accelerations, count in
   the top bin as they do there). ``p_b = (n_b + α) / (n + α B)``. Each logged
   value scores ``log p_b`` of its bin.
4. Bernoulli features (collision, offroad, light violation): per agent,
   whether it happens at any future step where the *log* is valid; the log's
   outcome scores ``log((#rollouts agreeing + α) / (R + 2α))``.
5. A feature's likelihood is ``exp`` of the mean log-likelihood over the
   scored entries, pooled over agents: logged agent-steps for histograms (the
   masks below), evaluated agents for Bernoulli features.
6. ``meta_metric = Σ_f w_f likelihood_f``.
7. minADE: per rollout, the mean over evaluated agents of each agent's mean
   centre displacement (x, y, z) over the future steps where log and rollout
   are both valid; the minimum over rollouts. Rates: the fraction of
   (rollout, evaluated agent) with the event in step 4.

Scored logged steps (official masks), with ``v`` the log's validity over the
future steps only: speeds ``v[t-1] & v[t+1]``; accelerations that applied
twice; distances to objects and road edge ``v[t]``; time to collision
``v[t]`` for vehicles; light violations count vehicles only.

Matched official details: pooling over all rollouts x future steps per agent,
float histogram edges ``linspace(min, max, bins + 1)`` with the top bin
closed, clipping before binning, NaN into the top bin, Bernoulli through two
bins, the validity masks above (speeds lose the first and last future step,
accelerations two of each), Bernoulli indicators masked by the *log's*
validity, likelihoods averaged over all scored entries of the scene (not per
agent first), rates over all evaluated agents.

Deliberate differences: rollouts may leave agents invalid at some steps (the
official submission format cannot); those steps are not pooled. minADE
averages over future steps only (the official code also divides by the
history steps, where the error is zero) and skips steps where the rollout's
agent is invalid. Light violations are computed for vehicles only (the
official code computes them for every object and scores vehicles only, so
its reported violation rate may also count a pedestrian stepping over a stop
line). A feature with nothing to score (no evaluated vehicle for time to
collision) has likelihood NaN, as the official division by zero gives. See
also the feature-level differences in ``simgen.metrics.features``.

Agreement with the official code: ``bench/wosac_crosscheck.py`` scores the
same scenes and rollouts with Waymo's package (2025 config) in its own venv;
on 20 Berlin scenes (noisy rollouts) and on grid scenes (log copies, noisy
and constant-velocity rollouts) every likelihood and the meta-metric agreed
within 2e-7.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import shapely
import torch

from simgen.metrics.features import (
    CORNER_ROUNDING_FACTOR,
    FEATURE_NAMES,
    MAX_HEADING_DIFF_RAD,
    MAX_HEADING_DIFF_SMALL_OVERLAP_RAD,
    MAX_TIME_TO_COLLISION_S,
    SMALL_OVERLAP_THRESHOLD_M,
    scene_features,
)
from simgen.types import DT_S, AgentMeta, AgentTrajectory, AgentType, LightState, RoadMap, SceneState, TrafficLights


@dataclass(frozen=True)
class FeatureSpec:
    """One feature's estimator and meta-metric weight; histograms also have a range (feature units) and bins."""

    name: str
    estimator: Literal["histogram", "bernoulli"]
    weight: float
    value_range: tuple[float, float] | None = None
    bins: int | None = None

    def edges(self) -> torch.Tensor:
        """``[bins + 1]`` float64 bin edges."""
        return torch.linspace(*self.value_range, self.bins + 1, dtype=torch.float64)


@dataclass(frozen=True)
class WosacConfig:
    features: tuple[FeatureSpec, ...]
    histogram_smoothing: float = 0.1  # pseudo-count added to every histogram bin
    bernoulli_smoothing: float = 0.001  # pseudo-count of each Bernoulli outcome (official default)


WOSAC_2025 = WosacConfig(features=(
    FeatureSpec("linear_speed", "histogram", 0.05, (0.0, 25.0), 10),  # m/s
    FeatureSpec("linear_acceleration", "histogram", 0.05, (-12.0, 12.0), 11),  # m/s²
    FeatureSpec("angular_speed", "histogram", 0.05, (-0.628, 0.628), 11),  # rad/s
    FeatureSpec("angular_acceleration", "histogram", 0.05, (-3.14, 3.14), 11),  # rad/s²
    FeatureSpec("distance_to_nearest_object", "histogram", 0.10, (-5.0, 40.0), 10),  # m
    FeatureSpec("collision_indication", "bernoulli", 0.25),
    FeatureSpec("time_to_collision", "histogram", 0.10, (0.0, 5.0), 10),  # s
    FeatureSpec("distance_to_road_edge", "histogram", 0.05, (-20.0, 40.0), 10),  # m
    FeatureSpec("offroad_indication", "bernoulli", 0.25),
    FeatureSpec("traffic_light_violation", "bernoulli", 0.05),
))

RATE_FEATURES = {"collision": "collision_indication", "offroad": "offroad_indication",
                 "traffic_light_violation": "traffic_light_violation"}


@dataclass(frozen=True)
class SceneScore:
    likelihoods: dict[str, float]  # feature name -> exp(mean log-likelihood), in [0, 1]
    meta_metric: float  # Σ weight x likelihood
    min_ade: float  # m
    rates: dict[str, float]  # "collision", "offroad", "traffic_light_violation": fraction of (rollout, agent)
    num_agents: int  # evaluated agents
    num_rollouts: int


# --- fast path ---------------------------------------------------------------

def score_scene(roadmap: RoadMap, log: SceneState, sim_traj: AgentTrajectory, *,
                sim_lights: TrafficLights | None = None, config: WosacConfig = WOSAC_2025) -> SceneScore:
    """Score rollouts ``sim_traj`` ``[R, A, T]`` of the scene window ``log`` (``[A, T]``) (module docstring).

    ``sim_lights`` ``[R, S, T]``: the simulated light states the rollouts'
    violations are judged by (default: the log's).
    """
    _check_inputs(log, sim_traj, sim_lights)
    rows = _active_rows(log, sim_traj)
    log_traj, sim_traj = log.traj.index_axis("A", rows), sim_traj.index_axis("A", rows)
    meta = log.meta.index_axis("A", rows)
    history = log.step + 1
    evaluated = log_traj.valid[:, log.step].nonzero()[:, 0]  # [E] rows of the compacted scene
    log_f = _rows(scene_features(roadmap, _batched(log_traj), meta, log.lights, history_steps=history), evaluated)
    sim_f = _rows(scene_features(roadmap, sim_traj, meta, log.lights if sim_lights is None else sim_lights,
                                 history_steps=history), evaluated)
    log_valid = log_traj.valid[evaluated, history:]  # [E, F]
    sim_valid = sim_traj.valid[:, evaluated, history:]  # [R, E, F]
    is_vehicle = meta.agent_type[evaluated] == AgentType.VEHICLE  # [E]
    masks = scoring_masks(log_valid, is_vehicle)

    likelihoods, indicators = {}, {}
    for spec in config.features:
        if spec.estimator == "histogram":
            ll = _histogram_log_likelihood(spec, config.histogram_smoothing, log_f[spec.name][0], sim_f[spec.name],
                                           sim_valid)  # [E, F]
            mask = masks[spec.name]
        else:
            log_flag = (log_f[spec.name][0] & masks[spec.name]).any(-1)  # [E]
            sim_flag = (sim_f[spec.name] & masks[spec.name]).any(-1)  # [R, E]
            indicators[spec.name] = sim_flag
            ll, mask = _bernoulli_log_likelihood(config.bernoulli_smoothing, log_flag, sim_flag), None
        likelihoods[spec.name] = _mean_likelihood(ll, mask)
    return SceneScore(
        likelihoods=likelihoods,
        meta_metric=sum(spec.weight * likelihoods[spec.name] for spec in config.features),
        min_ade=_min_ade(log_traj.index_axis("A", evaluated), sim_traj.index_axis("A", evaluated), history),
        rates={rate: float(indicators[name].double().mean()) for rate, name in RATE_FEATURES.items()},
        num_agents=len(evaluated), num_rollouts=sim_traj.x.shape[0],
    )


def scoring_masks(log_valid: torch.Tensor, is_vehicle: torch.Tensor) -> dict[str, torch.Tensor]:
    """Which logged entries each feature scores (module docstring): name -> bool ``[E, F]``."""
    speed = _central_and(log_valid)
    vehicle = log_valid & is_vehicle[:, None]
    return {"linear_speed": speed, "angular_speed": speed,
            "linear_acceleration": _central_and(speed), "angular_acceleration": _central_and(speed),
            "distance_to_nearest_object": log_valid, "collision_indication": log_valid,
            "time_to_collision": vehicle, "distance_to_road_edge": log_valid, "offroad_indication": log_valid,
            "traffic_light_violation": vehicle}


def _central_and(valid: torch.Tensor) -> torch.Tensor:
    """``valid[t-1] & valid[t+1]``, False at both ends (the official ``central_logical_and``)."""
    false = torch.zeros_like(valid[..., :1])
    return torch.cat([false, valid[..., 2:] & valid[..., :-2], false], dim=-1)


def _histogram_bins(values: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Bin index of each value: clipped into range, top bin closed, NaN in the top bin. Same shape, int64."""
    top = len(edges) - 2
    clipped = values.double().clamp(float(edges[0]), float(edges[-1]))
    bins = (torch.bucketize(clipped, edges, right=True) - 1).clamp(0, top)
    return torch.where(values.isnan(), top, bins)


def _histogram_log_likelihood(spec: FeatureSpec, smoothing: float, log_values: torch.Tensor,
                              sim_values: torch.Tensor, sim_valid: torch.Tensor) -> torch.Tensor:
    """``log p_b`` of each logged value ``[E, F]`` under its agent's pooled sim histogram (step 3)."""
    edges = spec.edges()
    num_bins = len(edges) - 1
    E = log_values.shape[0]
    slots = (_histogram_bins(sim_values, edges) + torch.arange(0, E * num_bins, num_bins)[:, None])[sim_valid]
    counts = torch.bincount(slots, minlength=E * num_bins).reshape(E, num_bins).double()
    log_p = ((counts + smoothing) / (counts.sum(-1, keepdim=True) + smoothing * num_bins)).log()  # [E, bins]
    return log_p.gather(1, _histogram_bins(log_values, edges))


def _bernoulli_log_likelihood(smoothing: float, log_flag: torch.Tensor, sim_flag: torch.Tensor) -> torch.Tensor:
    """``[E]`` log-probability of each agent's logged outcome under its R simulated outcomes (step 4)."""
    R = sim_flag.shape[0]
    true = sim_flag.sum(0).double()
    agreeing = torch.where(log_flag, true, R - true)
    return ((agreeing + smoothing) / (R + 2 * smoothing)).log()


def _mean_likelihood(log_likelihood: torch.Tensor, mask: torch.Tensor | None) -> float:
    """``exp`` of the mean over the scored entries (all entries if ``mask`` is None); NaN if there are none."""
    values = log_likelihood if mask is None else log_likelihood[mask]
    return math.exp(values.mean()) if values.numel() else math.nan


def _min_ade(log: AgentTrajectory, sim: AgentTrajectory, history: int) -> float:
    """Step 7: min over rollouts of the mean over agents of per-agent mean displacement (m)."""
    fut = slice(history, None)
    both = log.valid[None, :, fut] & sim.valid[..., fut]  # [R, E, F]
    error = torch.linalg.vector_norm(
        torch.stack([sim.x - log.x, sim.y - log.y, sim.z - log.z], dim=-1)[..., fut, :].double(), dim=-1)
    steps = both.sum(-1)  # [R, E]
    per_agent = torch.where(both, error, 0.0).sum(-1) / steps.clamp_min(1)
    scored = steps > 0
    per_rollout = (per_agent * scored).sum(-1) / scored.sum(-1)  # [R], NaN where no agent is scored
    return float(per_rollout.nan_to_num(math.inf).min()) if scored.any() else math.nan


def _rows(features: dict[str, torch.Tensor], rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """``[., A, F]`` -> ``[., E, F]``."""
    return {name: value[:, rows] for name, value in features.items()}


def _batched(traj: AgentTrajectory) -> AgentTrajectory:
    """``[A, T]`` -> ``[1, A, T]``."""
    return traj.map_tensors(lambda t, axes: t[None])


def _active_rows(log: SceneState, sim_traj: AgentTrajectory) -> torch.Tensor:
    """Rows valid at some step of the log or of a rollout (the others are empty slots). ``[A']``."""
    return (log.traj.valid.any(-1) | sim_traj.valid.any(-1).any(0)).nonzero()[:, 0]


# --- input checks --------------------------------------------------------------

HISTORY_TOLERANCE_M = 1e-3  # rollouts must repeat the log's history up to this, m


def _check_inputs(log: SceneState, sim_traj: AgentTrajectory, sim_lights: TrafficLights | None) -> None:
    """Raise ValueError naming what is wrong with the log window or the rollouts."""
    for name, check in (("log", log.validate), ("sim_traj", sim_traj.validate)):
        try:
            check()
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from err
    A, T = log.num_agents, log.num_steps
    if log.traj.x.ndim != 2:
        raise ValueError(f"log: expected one scene window with fields [A, T], got {list(log.traj.x.shape)}")
    if sim_traj.x.ndim != 3:
        raise ValueError(f"sim_traj: expected fields [R, A, T] (rollouts, agents, steps), "
                         f"got {list(sim_traj.x.shape)}")
    R = sim_traj.x.shape[0]
    if R < 1 or tuple(sim_traj.x.shape[1:]) != (A, T):
        raise ValueError(f"sim_traj: shape {list(sim_traj.x.shape)} does not match the log: expected "
                         f"[R >= 1, {A} agents, {T} steps], the same rows and steps as the log window")
    if log.step + 1 >= T:
        raise ValueError(f"log.step={log.step}: no future steps after the history in a {T}-step window")
    for name, traj in (("log", log.traj), ("sim_traj", sim_traj)):
        _check_units(name, traj)
    if not log.traj.valid[:, log.step].any():
        raise ValueError(f"empty scene: no agent is valid at the last history step (log.step={log.step}), "
                         "so there is nothing to evaluate")
    history = slice(0, log.step + 1)
    log_valid = log.traj.valid[:, history]
    if not (sim_traj.valid[..., history] == log_valid).all():
        raise ValueError("sim_traj: validity over the history steps differs from the log's; rollouts must start "
                         "from the logged history (copy steps 0..log.step from the log)")
    for field in ("x", "y"):
        gap = torch.where(log_valid, getattr(sim_traj, field)[..., history] - getattr(log.traj, field)[:, history],
                          0.0).abs().amax()
        if gap > HISTORY_TOLERANCE_M:
            raise ValueError(f"sim_traj.{field}: history differs from the log's by up to {float(gap):.3g} m; "
                             "rollouts must start from the logged history")
    if sim_lights is not None:
        try:
            sim_lights.validate()
        except ValueError as err:
            raise ValueError(f"sim_lights: {err}") from err
        expected = (R, log.lights.num_slots, T)
        if tuple(sim_lights.state.shape) != expected:
            raise ValueError(f"sim_lights: shape {list(sim_lights.state.shape)}, expected {list(expected)} "
                             "(rollouts, the log's light slots, steps)")


def _check_units(name: str, traj: AgentTrajectory) -> None:
    """Headings in radians, wrapped; box sizes positive at valid steps."""
    valid = traj.valid
    heading = traj.heading[valid]
    if heading.numel() and heading.abs().max() > math.pi + 1e-3:
        raise ValueError(f"{name}.heading: values up to {float(heading.abs().max()):.3g}; headings must be "
                         "radians wrapped to (-pi, pi] (degrees?)")
    for field in ("length", "width"):
        size = getattr(traj, field)[valid]
        if size.numel() and size.min() <= 0:
            raise ValueError(f"{name}.{field}: box sizes must be positive (m) at every valid step, "
                             f"found {float(size.min()):.3g}")


# --- slow twin -------------------------------------------------------------------

def score_scene_reference(roadmap: RoadMap, log: SceneState, sim_traj: AgentTrajectory, *,
                          sim_lights: TrafficLights | None = None, config: WosacConfig = WOSAC_2025) -> SceneScore:
    """``score_scene`` written obviously: loops over rollouts and agents, numpy and shapely geometry.

    The test oracle for the fast path; same arguments and result.
    """
    _check_inputs(log, sim_traj, sim_lights)
    history = log.step + 1
    A = log.num_agents
    evaluated = [a for a in range(A) if bool(log.traj.valid[a, log.step])]
    lights = log.lights if sim_lights is None else sim_lights
    ref = _ReferenceMap(roadmap)
    log_f = _reference_features(ref, _to_numpy(log.traj, 1), log.meta, _lights_numpy(log.lights, 1), history)
    sim_f = _reference_features(ref, _to_numpy(sim_traj, sim_traj.x.shape[0]), log.meta,
                                _lights_numpy(lights, sim_traj.x.shape[0]), history)
    R = sim_traj.x.shape[0]
    log_valid = log.traj.valid[:, history:].numpy()  # [A, F]
    sim_valid = sim_traj.valid[:, :, history:].numpy()  # [R, A, F]
    is_vehicle = (log.meta.agent_type == AgentType.VEHICLE).numpy()
    masks = {k: v.numpy() for k, v in scoring_masks(torch.from_numpy(log_valid),
                                                     torch.from_numpy(is_vehicle)).items()}

    likelihoods, rates = {}, {}
    for spec in config.features:
        total, count = 0.0, 0
        events = []
        for a in evaluated:
            if spec.estimator == "histogram":
                samples = sim_f[spec.name][:, a][sim_valid[:, a]]
                edges = spec.edges().numpy()
                counts = np.zeros(len(edges) - 1)
                for value in samples:
                    counts[_reference_bin(value, edges)] += 1
                probability = (counts + config.histogram_smoothing) / (
                    counts.sum() + config.histogram_smoothing * len(counts))
                for t in np.nonzero(masks[spec.name][a])[0]:
                    total += math.log(probability[_reference_bin(log_f[spec.name][0, a, t], edges)])
                    count += 1
            else:
                scored = masks[spec.name][a]
                logged = bool(np.any(log_f[spec.name][0, a] & scored))
                simulated = [bool(np.any(sim_f[spec.name][r, a] & scored)) for r in range(R)]
                agreeing = sum(s == logged for s in simulated)
                total += math.log((agreeing + config.bernoulli_smoothing) / (R + 2 * config.bernoulli_smoothing))
                count += 1
                events.extend(simulated)
        likelihoods[spec.name] = math.exp(total / count) if count else math.nan
        for rate, name in RATE_FEATURES.items():
            if name == spec.name:
                rates[rate] = sum(events) / len(events)
    return SceneScore(
        likelihoods=likelihoods,
        meta_metric=sum(spec.weight * likelihoods[spec.name] for spec in config.features),
        min_ade=_reference_min_ade(log.traj, sim_traj, evaluated, history),
        rates=rates, num_agents=len(evaluated), num_rollouts=R,
    )


def _reference_bin(value: float, edges: np.ndarray) -> int:
    """Histogram bin of one value: clipped into range, top bin closed; NaN goes to the top bin."""
    top = len(edges) - 2
    if math.isnan(value):
        return top
    value = min(max(value, edges[0]), edges[-1])
    for b in range(top):
        if value < edges[b + 1]:
            return b
    return top


def _reference_min_ade(log: AgentTrajectory, sim: AgentTrajectory, evaluated: list[int], history: int) -> float:
    best = math.inf
    for r in range(sim.x.shape[0]):
        per_agent = []
        for a in evaluated:
            errors = [math.dist((float(sim.x[r, a, t]), float(sim.y[r, a, t]), float(sim.z[r, a, t])),
                                (float(log.x[a, t]), float(log.y[a, t]), float(log.z[a, t])))
                      for t in range(history, log.x.shape[-1]) if log.valid[a, t] and sim.valid[r, a, t]]
            if errors:
                per_agent.append(sum(errors) / len(errors))
        if per_agent:
            best = min(best, sum(per_agent) / len(per_agent))
    return best if best < math.inf else math.nan


def _to_numpy(traj: AgentTrajectory, rollouts: int) -> dict[str, np.ndarray]:
    """Fields as float64 / bool numpy ``[R, A, T]``."""
    out = {}
    for field in AgentTrajectory.tensor_fields():
        value = getattr(traj, field).expand(rollouts, *getattr(traj, field).shape[-2:]).numpy()
        out[field] = value if field == "valid" else value.astype(np.float64)
    return out


def _lights_numpy(lights: TrafficLights, rollouts: int) -> dict[str, np.ndarray]:
    """Fields as numpy ``[R, S, T]``."""
    return {field: getattr(lights, field).expand(rollouts, *getattr(lights, field).shape[-2:]).numpy()
            for field in TrafficLights.tensor_fields()}


class _ReferenceMap:
    """Shapely views of the map: road-edge rings (distance and even-odd inside) and vehicle lanes."""

    def __init__(self, roadmap: RoadMap):
        rings = []
        for xy, valid in zip(roadmap.road_edge_xy.double().numpy(), roadmap.road_edge_valid.numpy()):
            points = xy[valid]
            if len(points) >= 2:
                rings.append(points)
        self.edges = shapely.STRtree([shapely.LineString(p) for p in rings])
        self.ring_areas = [shapely.Polygon(p) for p in rings if len(p) >= 4]
        self.roadmap = roadmap
        lanes = np.nonzero(roadmap.vehicle_lanes.numpy())[0]
        self.lane_index = lanes
        self.lanes = np.array([shapely.LineString(roadmap.lane_xy[k][roadmap.lane_point_valid[k]].double().numpy())
                               for k in lanes])

    def signed_distance(self, points: np.ndarray) -> np.ndarray:
        """``[N, 2]`` world points -> distance to the nearest ring, negative inside an odd number of rings."""
        geoms = shapely.points(points)
        _, distance = self.edges.query_nearest(geoms, return_distance=True, all_matches=False)
        inside_count = sum(shapely.contains_xy(area, points[:, 0], points[:, 1]).astype(int)
                           for area in self.ring_areas)
        return np.where(inside_count % 2 == 1, -distance, distance)

    def nearest_vehicle_lane(self, point: np.ndarray) -> int:
        distances = shapely.distance(shapely.Point(point), self.lanes)
        return int(self.lane_index[int(np.argmin(distances))])


def _reference_features(ref: _ReferenceMap, traj: dict[str, np.ndarray], meta: AgentMeta,
                        lights: dict[str, np.ndarray], history: int) -> dict[str, np.ndarray]:
    """Features ``[R, A, F]`` of every agent, one rollout and one agent at a time (features module, 1-7)."""
    R, A, T = traj["x"].shape
    F = T - history
    out = {name: np.full((R, A, F), np.nan) for name in FEATURE_NAMES}
    for name in ("collision_indication", "offroad_indication", "traffic_light_violation"):
        out[name] = np.zeros((R, A, F), dtype=bool)
    is_vehicle = (meta.agent_type == AgentType.VEHICLE).numpy()
    for r in range(R):
        boxes = {k: v[r] for k, v in traj.items()}  # [A, T]
        for a in range(A):
            kinematics = _reference_kinematics(boxes, a)
            for name, series in zip(FEATURE_NAMES[:4], kinematics):
                out[name][r, a] = series[history:]
            for k, t in enumerate(range(history, T)):
                if not boxes["valid"][a, t]:
                    continue
                distance = _reference_nearest_object(boxes, a, t)
                out["distance_to_nearest_object"][r, a, k] = distance
                out["collision_indication"][r, a, k] = distance < 0
                if is_vehicle[a]:
                    out["time_to_collision"][r, a, k] = _reference_time_to_collision(boxes, a, t)
                    if boxes["valid"][a, t - 1]:
                        out["traffic_light_violation"][r, a, k] = _reference_violation(
                            ref, boxes, {f: v[r] for f, v in lights.items()}, a, t)
            steps = [t for t in range(history, T) if boxes["valid"][a, t]]
            if steps:
                corners = np.concatenate([_reference_corners(boxes, a, t) for t in steps])  # [4 n, 2]
                worst = ref.signed_distance(corners).reshape(-1, 4).max(-1)
                out["distance_to_road_edge"][r, a, np.array(steps) - history] = worst
                out["offroad_indication"][r, a, np.array(steps) - history] = worst > 0
    return out


def _reference_kinematics(boxes: dict[str, np.ndarray], a: int) -> list[np.ndarray]:
    """Speed, acceleration, angular speed, angular acceleration ``[T]`` of agent a (NaN where undefined)."""
    T = boxes["x"].shape[-1]
    speed, dh = np.full(T, np.nan), np.full(T, np.nan)
    for t in range(1, T - 1):
        if boxes["valid"][a, t - 1] and boxes["valid"][a, t + 1]:
            step = [(boxes[c][a, t + 1] - boxes[c][a, t - 1]) / 2 for c in ("x", "y", "z")]
            speed[t] = math.sqrt(sum(s * s for s in step)) / DT_S
            dh[t] = _reference_wrap(boxes["heading"][a, t + 1] - boxes["heading"][a, t - 1]) / 2  # rad per step
    accel, d2h = np.full(T, np.nan), np.full(T, np.nan)
    for t in range(1, T - 1):
        accel[t] = (speed[t + 1] - speed[t - 1]) / 2 / DT_S
        d2h[t] = _reference_wrap(dh[t + 1] - dh[t - 1]) / 2 / DT_S ** 2
    return [speed, accel, dh / DT_S, d2h]


def _reference_wrap(angle: float) -> float:
    return (angle + math.pi) % (2 * math.pi) - math.pi


def _reference_corners(boxes: dict[str, np.ndarray], a: int, t: int, shrink: float = 0.0) -> np.ndarray:
    """``[4, 2]`` corners of agent a's box at step t, each side moved in by ``shrink`` m."""
    c, s = math.cos(boxes["heading"][a, t]), math.sin(boxes["heading"][a, t])
    hl, hw = boxes["length"][a, t] / 2 - shrink, boxes["width"][a, t] / 2 - shrink
    return np.array([[boxes["x"][a, t] + u * hl * c - v * hw * s, boxes["y"][a, t] + u * hl * s + v * hw * c]
                     for u, v in ((1, 1), (-1, 1), (-1, -1), (1, -1))])


def _reference_nearest_object(boxes: dict[str, np.ndarray], a: int, t: int) -> float:
    """Signed distance to the nearest rounded box (shapely Minkowski difference), +inf alone."""
    def shrink(k):
        return CORNER_ROUNDING_FACTOR * min(boxes["length"][k, t], boxes["width"][k, t]) / 2

    def radius(k):
        return math.hypot(boxes["length"][k, t], boxes["width"][k, t]) / 2

    def centre_distance(k):
        return math.hypot(boxes["x"][k, t] - boxes["x"][a, t], boxes["y"][k, t] - boxes["y"][a, t])

    partners = sorted((k for k in range(boxes["x"].shape[0]) if k != a and boxes["valid"][k, t]),
                      key=centre_distance)
    best = math.inf
    core_a = _reference_corners(boxes, a, t, shrink(a))
    for k in partners:
        if centre_distance(k) - radius(a) - radius(k) > best:
            continue  # boxes lie within their half diagonals: this partner cannot be nearer
        core_k = _reference_corners(boxes, k, t, shrink(k))
        difference = shapely.MultiPoint([p - q for p in core_a for q in core_k]).convex_hull
        origin = shapely.Point(0.0, 0.0)
        gap = difference.exterior.distance(origin)
        core_distance = -gap if difference.contains(origin) else gap
        best = min(best, core_distance - shrink(a) - shrink(k))
    return best


def _reference_speed_xy(boxes: dict[str, np.ndarray], k: int, t: int) -> float:
    T = boxes["x"].shape[-1]
    if t < 1 or t > T - 2 or not (boxes["valid"][k, t - 1] and boxes["valid"][k, t + 1]):
        return math.nan
    return math.hypot(boxes["x"][k, t + 1] - boxes["x"][k, t - 1], boxes["y"][k, t + 1] - boxes["y"][k, t - 1]) \
        / 2 / DT_S


def _reference_time_to_collision(boxes: dict[str, np.ndarray], a: int, t: int) -> float:
    """Official time to collision of vehicle a at step t, s."""
    heading = boxes["heading"][a, t]
    c, s = math.cos(heading), math.sin(heading)
    best_gap, leader = math.inf, None
    for k in range(boxes["x"].shape[0]):
        if k == a or not boxes["valid"][k, t]:
            continue
        yaw_diff = abs(boxes["heading"][k, t] - heading)
        long_offset = (boxes["length"][k, t] / 2 * abs(math.cos(yaw_diff))
                       + boxes["width"][k, t] / 2 * abs(math.sin(yaw_diff)))
        lat_offset = (boxes["length"][k, t] / 2 * abs(math.sin(yaw_diff))
                      + boxes["width"][k, t] / 2 * abs(math.cos(yaw_diff)))
        dx, dy = boxes["x"][k, t] - boxes["x"][a, t], boxes["y"][k, t] - boxes["y"][a, t]
        gap = dx * c + dy * s - boxes["length"][a, t] / 2 - long_offset
        lateral = abs(-dx * s + dy * c) - boxes["width"][a, t] / 2 - lat_offset
        followed = (gap > 0 and yaw_diff <= MAX_HEADING_DIFF_RAD and lateral < 0
                    and (lateral < -SMALL_OVERLAP_THRESHOLD_M or yaw_diff <= MAX_HEADING_DIFF_SMALL_OVERLAP_RAD))
        if followed and gap < best_gap:
            best_gap, leader = gap, k
    if leader is None:
        return MAX_TIME_TO_COLLISION_S
    closing = _reference_speed_xy(boxes, a, t) - _reference_speed_xy(boxes, leader, t)
    if not closing > 0:
        return MAX_TIME_TO_COLLISION_S
    return min(best_gap / closing, MAX_TIME_TO_COLLISION_S)


def _reference_violation(ref: _ReferenceMap, boxes: dict[str, np.ndarray], lights: dict[str, np.ndarray],
                         a: int, t: int) -> bool:
    """Does vehicle a cross a red stop line of a slot on its nearest lane between t - 1 and t?"""
    roadmap = ref.roadmap
    before = np.array([boxes["x"][a, t - 1], boxes["y"][a, t - 1]])
    now = np.array([boxes["x"][a, t], boxes["y"][a, t]])
    nearest = None
    for s in range(lights["state"].shape[0]):
        if not (lights["valid"][s, t] and lights["state"][s, t] == LightState.STOP):
            continue
        approach = int(lights["lane_id"][s, t])
        via = int(roadmap.signal_via_lane[int(lights["signal_id"][s, t])])
        lane = roadmap.lane_xy[approach][roadmap.lane_point_valid[approach]].double().numpy()
        direction = (lane[-1] - lane[-2]) / np.linalg.norm(lane[-1] - lane[-2])
        stop = np.array([lights["stop_x"][s, t], lights["stop_y"][s, t]], dtype=np.float64)
        if not (np.dot(before - stop, direction) < 0 < np.dot(now - stop, direction)):
            continue
        if nearest is None:
            nearest = ref.nearest_vehicle_lane(now)
        if nearest in (approach, via):
            return True
    return False
