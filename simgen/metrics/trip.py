"""Trip-level realism (SceneDiffuser++): Jensen–Shannon divergences between sim and log trips.

A trip follows one AV for a minute or more (docs/FORMATS.md: agents get a row
when they first come within the radius of the AV and are valid while they
stay within it; light slots are valid while known). SceneDiffuser++ judges
such long rollouts with per-window statistics over sliding 91-step windows:
each window gives one value per feature, the values of all windows of all sim
trips form one histogram and those of the log trips another, and the
Jensen–Shannon divergence (JSD) between them scores the feature. The sim and
the log follow the same AV for the same number of steps, but their rows need
not match: a world may spawn and remove agents.

Notation
--------

==========  ====================================================================
symbol      meaning
==========  ====================================================================
T           steps of a trip (10 Hz, ``DT_S`` = 0.1 s)
A, S        agent rows, light slots
w, δ        window length (default 91 steps) and stride (default 10 steps)
W           windows per trip, ⌊(T − w) / δ⌋ + 1
j, s_j      window index and its first step, s_j = j·δ
k           a transition k−1 → k; window j holds the w − 1 transitions with
            s_j < k < s_j + w
v[a, t]     row a is valid at step t
p[a, t]     box centre, world frame, m; ``av`` is the AV's row
B           bins of a feature's histogram
ε           smoothing weight, 1e-3
==========  ====================================================================

Steps
-----

1. **Windows.** Window j covers steps [s_j, s_j + w). Steps after the last
   full window are not scored. The history steps at the start of a trip are
   windowed like any other (a rollout copies them from its log).
2. **Per-window features.** Every quantity is computed once per step or per
   transition for the whole trip and summed per window with cumulative sums.
   A value of NaN means the window has nothing to say about that feature
   (e.g. no agent entered); it is left out of the histogram.

   ==  =======================  ================================================================
   #   feature (key)            value of window j
   ==  =======================  ================================================================
   1   ``valid_agents``         mean over the window's w steps of the number of valid rows,
                                the AV excluded
   2   ``entering_agents``      number of transitions where a row (not the AV) becomes valid:
                                v[a, k−1] = 0 and v[a, k] = 1. A row that leaves and comes
                                back enters twice
   3   ``exiting_agents``       number of transitions v[a, k−1] = 1, v[a, k] = 0
   4   ``entering_distance_m``  mean of |p[a, k] − p[av, k]| over the entries of feature 2,
                                measured at the entry step k (NaN without entries)
   5   ``exiting_distance_m``   mean of |p[a, k−1] − p[av, k−1]| over the exits of feature 3,
                                at the last valid step k − 1 (NaN without exits)
   6   ``offroad_rate``         fraction of valid vehicle-steps (``AgentType.VEHICLE``, the
                                AV included) with **any of the four box corners** outside the
                                drivable area (``RoadMap.is_drivable``). Corners, not the
                                centre, as in WOSAC; on 60 s grid trips 0–0.6% of logged
                                SUMO vehicle-steps have a corner off. NaN without vehicles
   7   ``collision_rate``       fraction of valid agent-steps (every type, the AV included)
                                whose oriented box overlaps the box of another valid agent at
                                the same step. Overlap means a positive-area intersection
                                (``boxes_overlap``, separating-axis theorem): touching boxes do
                                not collide. NaN without agents
   8   ``speed_mps``            mean speed of valid non-AV agents, |p[a, k] − p[a, k−1]| / DT_S
                                over transitions where the row is valid at both steps. Speeds
                                come from positions, not the stored velocities, so log and sim
                                are measured alike (a world's first step after a spawn stores
                                zero velocity). NaN without such transitions
   9   ``light_violation_rate`` fraction of the vehicles present in the window (valid at some
                                step of it) that violate a light at some transition of it;
                                see step 3. NaN without vehicles
   10  ``light_transitions``    4 × 4 counts of (state at k−1 → state at k) over
                                ``LightState`` for every light slot valid at both steps and
                                every transition of the window
   ==  =======================  ================================================================

3. **Light violations.** A vehicle's *front bumper* (centre + length/2 along
   its heading) is used, because SUMO stops vehicles with the front bumper at
   the stop point; with the centre, a vehicle that entered the junction on
   CAUTION and was half-way over the line when the light turned STOP would
   count. For a light slot g valid at step k−1 with stop point q_g and unit
   direction u_g of its approach lane's last segment (``TrafficLights.lane_id``
   into ``RoadMap.lane_xy``), let s = (f − q_g)·u_g be the along-lane and
   d = (f − q_g) × u_g the lateral offset of the front bumper f. The vehicle
   (valid at k−1 and k) *crosses* g at transition k when s < 0 at k−1,
   s ≥ 0 at k, and |d| ≤ 2 m at k−1 (a driving lane is about 3.2 m wide, so
   neighbouring lanes' stop points are not crossed). It *violates* when it
   crosses some slot and **every** slot it crosses is in STOP at k−1 (the
   light it faced before the line). Slots sharing an approach lane share a
   stop point; where their states differ (a protected left on STOP while
   straight-on is GO), one step does not tell which connection the vehicle
   takes, so the crossing is not counted. WOSAC uses the centre and the
   nearest lane instead; this metric compares sim with log under one rule.
4. **Histograms.** Features 1–9 are histogrammed over all windows of all
   trips of one side with the fixed bins of ``TRIP_BINS`` (values below the
   first edge or above the last are clipped into the end bins).
5. **Smoothing and JSD.** Each non-empty histogram is normalised to p and
   mixed with the uniform distribution, (1 − ε)·p + ε/B, so every bin has
   positive mass; this moves a JSD by less than 0.003 (disjoint histograms
   score 0.998 instead of 1). The JSD uses log base 2, so it lies in [0, 1].
   If only one side has values for a feature (say the log never saw an agent
   enter, but the sim did), the feature scores 1; if neither side has any, it
   scores 0.
6. **Light transitions.** The 4 × 4 counts of all windows are summed per side.
   Each row (from-state) is normalised and scored as in step 5, and the rows
   are averaged with weights equal to the log's row counts, so the states the
   log spends its time in dominate; a row without log counts weighs nothing
   (and a row with counts in neither side is thereby skipped). If the log has
   no light transitions at all, the sim's row counts weigh instead.
7. **Composite.** The mean of the ten JSDs (lower is better; SceneDiffuser++
   reports 0.187–0.480 for learned and IDM worlds).

``TRIP_BINS`` (edges in the feature's unit; B bins):

======================================  =====================================================
feature                                 edges
======================================  =====================================================
``valid_agents``                        0, 2, 4, …, 60 (30 bins)
``entering_agents``, ``exiting_agents`` 0, 1, 2, …, 20 (20 bins; bin i holds count i, the
                                        last holds 19 and more)
``entering/exiting_distance_m``         0, 5, 10, …, 80 m (16 bins; the edge at 60 m is the
                                        default radius, so rows kept valid beyond it land in
                                        their own bin)
``offroad/collision/violation rate``    0, 1e-6, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1
                                        (9 bins; the first holds exact zeros. Uniform bins
                                        over [0, 1] would put a 3% collision rate in the
                                        same bin as the log's 0–0.3%)
``speed_mps``                           0, 1, 2, …, 20 m/s (20 bins)
======================================  =====================================================

Sample size: one 60 s trip gives 53 windows. Two SUMO trips of different
AVs on the same grid map score a composite of about 0.16 against each other,
so compare worlds on windows pooled over many trips.

Cost: a 611-step trip with 60 rows and 80 light slots takes about 0.09 s on
one CPU thread. Three broad phases keep it there: the separating-axis test
runs only on pairs whose bounding circles meet, the stop-line test only where
a stop point is within one step's travel (plus 2 m) of a front bumper, and the
offroad test only against the road-edge segments spanning each chunk of points.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import torch
import torch.nn.functional as F

from simgen.types import DT_S, AgentType, LightState, RoadMap, SceneState, TrafficLights
from simgen.types.geometry import inside_even_odd

__all__ = ["TRIP_BINS", "TRIP_FEATURES", "TripScore", "boxes_overlap", "js_divergence", "trip_jsd",
           "trip_window_features"]

WINDOW_STEPS = 91  # SceneDiffuser++ window: 11 history + 80 future steps
STRIDE_STEPS = 10
SMOOTHING = 1e-3  # ε: weight of the uniform distribution mixed into every histogram
STOP_LINE_LATERAL_M = 2.0  # a front bumper this close (laterally) to a stop point can cross it
_POINT_CHUNK = 4096  # points per chunk of the offroad test

_RATE_EDGES = (0.0, 1e-6, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def _edges(values) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.float64)


TRIP_BINS: Mapping[str, torch.Tensor] = MappingProxyType({
    "valid_agents": _edges(range(0, 61, 2)),
    "entering_agents": _edges(range(21)),
    "exiting_agents": _edges(range(21)),
    "entering_distance_m": _edges(range(0, 81, 5)),
    "exiting_distance_m": _edges(range(0, 81, 5)),
    "offroad_rate": _edges(_RATE_EDGES),
    "collision_rate": _edges(_RATE_EDGES),
    "speed_mps": _edges(range(21)),
    "light_violation_rate": _edges(_RATE_EDGES),
})
TRIP_FEATURES: tuple[str, ...] = (*TRIP_BINS, "light_transitions")
NUM_LIGHT_STATES = len(LightState)


@dataclass(frozen=True)
class TripScore:
    """Trip-level JSDs of a sim against a log; each in [0, 1], lower is more realistic."""

    jsd: dict[str, float]  # one per name in TRIP_FEATURES
    composite: float  # mean of the ten
    num_windows_log: int  # windows pooled over all log trips
    num_windows_sim: int


# --- divergences -------------------------------------------------------------

def js_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen–Shannon divergence, log base 2, along the last axis: ``[..., B]`` x2 -> ``[...]`` in [0, 1].

    ``p`` and ``q`` are non-negative weights; each is normalised here and must
    have positive mass. Empty bins contribute 0 (0·log 0 = 0).
    """
    p, q = torch.broadcast_tensors(p.to(torch.float64), q.to(torch.float64))
    for name, d in (("p", p), ("q", q)):
        if (d < 0).any() or not torch.isfinite(d).all():
            raise ValueError(f"js_divergence: {name} must be finite and non-negative")
        if (d.sum(-1) <= 0).any():
            raise ValueError(f"js_divergence: {name} has a distribution with zero mass")
    p = p / p.sum(-1, keepdim=True)
    q = q / q.sum(-1, keepdim=True)
    m = (p + q) / 2

    def kl_to_m(d: torch.Tensor) -> torch.Tensor:
        return torch.where(d > 0, d * torch.log2(d / m), torch.zeros_like(d)).sum(-1)

    return (0.5 * (kl_to_m(p) + kl_to_m(q))).clamp(0.0, 1.0)


def _smoothed(counts: torch.Tensor) -> torch.Tensor:
    """``[..., B]`` counts -> (1 − ε)·normalised + ε/B; an empty histogram gives ε/B (uniform once normalised)."""
    total = counts.sum(-1, keepdim=True).clamp_min(1e-300)
    return (1 - SMOOTHING) * counts / total + SMOOTHING / counts.shape[-1]


def _count_jsd(log_counts: torch.Tensor, sim_counts: torch.Tensor) -> torch.Tensor:
    """Smoothed JSD of histograms ``[..., B]`` -> ``[...]``: 0 if both are empty, 1 if exactly one is."""
    log_has, sim_has = log_counts.sum(-1) > 0, sim_counts.sum(-1) > 0
    jsd = js_divergence(_smoothed(log_counts), _smoothed(sim_counts))
    return torch.where(log_has & sim_has, jsd, (log_has != sim_has).to(torch.float64))


def _histogram(values: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Counts ``[B]`` of the non-NaN ``values`` in bins ``edges`` ``[B + 1]``, clipped into the end bins."""
    values = values[~torch.isnan(values)]
    index = torch.bucketize(values, edges[1:-1], right=True)  # left-closed bins; out-of-range -> end bins
    return torch.bincount(index, minlength=len(edges) - 1).to(torch.float64)


def _transition_jsd(log_counts: torch.Tensor, sim_counts: torch.Tensor) -> float:
    """Row-wise JSD of 4 x 4 transition counts, weighted by the log's row counts (step 6 of the module doc)."""
    weight = log_counts.sum(-1) if log_counts.sum() > 0 else sim_counts.sum(-1)  # [4]
    if weight.sum() == 0:
        return 0.0
    rows = _count_jsd(log_counts, sim_counts)  # [4]
    return float((rows * weight).sum() / weight.sum())


# --- geometry ------------------------------------------------------------------

def _box_axes(heading: torch.Tensor) -> torch.Tensor:
    """``[...]`` rad -> ``[..., 2, 2]``: unit length axis and unit width axis of each box."""
    c, s = torch.cos(heading), torch.sin(heading)
    return torch.stack([torch.stack([c, s], -1), torch.stack([-s, c], -1)], -2)


def boxes_overlap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact oriented-box overlap by the separating-axis theorem, broadcast over leading axes.

    ``a``, ``b``: ``[..., 5]`` boxes (centre x, y in m, heading in rad, length,
    width in m). Returns bool ``[...]``: True where the intersection has
    positive area. Two rectangles are disjoint iff their projections onto one
    of the four edge normals are disjoint; touching boxes (projections that
    only meet) do not overlap.
    """
    a, b = torch.broadcast_tensors(a, b)
    axes_a, axes_b = _box_axes(a[..., 2]), _box_axes(b[..., 2])  # [..., 2, 2]
    axes = torch.cat([axes_a, axes_b], -2)  # [..., 4, 2] candidate separating axes
    gap = (axes @ (b[..., :2] - a[..., :2]).unsqueeze(-1)).squeeze(-1).abs()  # [..., 4] centre distance per axis
    reach_a = ((axes @ axes_a.transpose(-1, -2)).abs() * a[..., None, 3:5] / 2).sum(-1)  # [..., 4] half-extents
    reach_b = ((axes @ axes_b.transpose(-1, -2)).abs() * b[..., None, 3:5] / 2).sum(-1)
    return (gap < reach_a + reach_b).all(-1)


def _colliding(boxes: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``[A, T, 5]`` boxes, ``[A, T]`` valid -> bool ``[A, T]``: overlaps another valid box at the same step.

    Broad phase: pairs whose bounding circles (half diagonals) meet; narrow phase: ``boxes_overlap``.
    """
    centre = boxes[..., :2].transpose(0, 1)  # [T, A, 2]
    radius = torch.hypot(boxes[..., 3], boxes[..., 4]).T / 2  # [T, A]
    both = valid.T[:, :, None] & valid.T[:, None, :]  # [T, A, A]
    distance = torch.cdist(centre, centre, compute_mode="donot_use_mm_for_euclid_dist")  # [T, A, A]
    near = distance < radius[:, :, None] + radius[:, None, :]
    t, i, j = torch.nonzero(torch.triu(both & near, diagonal=1), as_tuple=True)
    hit = boxes_overlap(boxes[i, t], boxes[j, t])  # [P]
    out = torch.zeros_like(valid)
    out[i[hit], t[hit]] = True
    out[j[hit], t[hit]] = True
    return out


def _offroad(roadmap: RoadMap, xy: torch.Tensor) -> torch.Tensor:
    """``[N, 2]`` world frame, m -> bool ``[N]``: outside the drivable area (``not RoadMap.is_drivable``).

    The even-odd ray runs along +x, so only road-edge segments spanning a
    point's y can be crossed; points are sorted by y and tested in chunks
    against the segments overlapping the chunk's y range. Same answer, fewer pairs.
    """
    a, b = roadmap.road_edge_segments  # [M, 2] each
    seg_low, seg_high = torch.minimum(a[:, 1], b[:, 1]), torch.maximum(a[:, 1], b[:, 1])
    xy = xy.to(a.dtype)
    out = torch.empty(xy.shape[0], dtype=torch.bool)
    for chunk in torch.argsort(xy[:, 1]).split(_POINT_CHUNK):
        y = xy[chunk, 1]
        spans = (seg_high >= y.min()) & (seg_low <= y.max())
        out[chunk] = ~inside_even_odd(xy[chunk], a[spans], b[spans])
    return out


def _light_violations(roadmap: RoadMap, trip: SceneState, rows: torch.Tensor) -> torch.Tensor:
    """bool ``[V, T-1]``: vehicle ``rows[v]`` violates a light at transition k (index k − 1); step 3 of the doc.

    Broad phase: a crossing needs the stop point within one step's travel plus the lateral bound of the front
    bumper at k − 1; the exact test runs on those (vehicle, slot, transition) triples only.
    """
    traj, lights = trip.traj, trip.lights
    heading = traj.heading[rows].to(torch.float64)  # [V, T]
    front = traj.xy[rows].to(torch.float64) + (traj.length[rows].to(torch.float64) / 2)[..., None] * torch.stack(
        [torch.cos(heading), torch.sin(heading)], -1)  # [V, T, 2]
    stop = torch.stack([lights.stop_x, lights.stop_y], -1)[:, :-1].to(torch.float64)  # [S, T-1, 2] at k-1
    travel = torch.linalg.norm(front[:, 1:] - front[:, :-1], dim=-1)  # [V, T-1]
    gap = torch.cdist(front[:, :-1].transpose(0, 1), stop.transpose(0, 1),
                      compute_mode="donot_use_mm_for_euclid_dist")  # [T-1, V, S]
    moving = traj.valid[rows, :-1] & traj.valid[rows, 1:]  # [V, T-1]
    candidate = ((gap <= (travel.T + STOP_LINE_LATERAL_M)[:, :, None]) & moving.T[:, :, None]
                 & lights.valid[:, :-1].T[:, None, :])  # [T-1, V, S]
    k, v, g = torch.nonzero(candidate, as_tuple=True)  # [P] each
    u = roadmap.lane_end_direction[lights.lane_id[g, k].long()]  # [P, 2] approach direction
    before, after = front[v, k] - stop[g, k], front[v, k + 1] - stop[g, k]  # [P, 2]
    lateral = (before[:, 0] * u[:, 1] - before[:, 1] * u[:, 0]).abs()
    crossed = ((before * u).sum(-1) < 0) & ((after * u).sum(-1) >= 0) & (lateral <= STOP_LINE_LATERAL_M)
    v, k, g = v[crossed], k[crossed], g[crossed]
    crossings = torch.zeros(len(rows), trip.num_steps - 1)
    crossings.index_put_((v, k), torch.ones(len(v)), accumulate=True)
    not_stop = torch.zeros_like(crossings)
    not_stop.index_put_((v, k), (lights.state[g, k] != LightState.STOP).float(), accumulate=True)
    return (crossings > 0) & (not_stop == 0)


def _vehicle_offroad(roadmap: RoadMap, trip: SceneState, vehicle: torch.Tensor) -> torch.Tensor:
    """bool ``[A, T]``: a corner of the box is off the drivable area, at the steps where ``vehicle`` ``[A, T]``."""
    traj = trip.traj
    a, t = torch.nonzero(vehicle, as_tuple=True)  # [N] each
    centre = torch.stack([traj.x[a, t], traj.y[a, t]], -1).to(torch.float64)  # [N, 2]
    half = torch.stack([traj.length[a, t], traj.width[a, t]], -1).to(torch.float64) / 2  # [N, 2]
    axes = _box_axes(traj.heading[a, t].to(torch.float64))  # [N, 2, 2]
    signs = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    corners = centre[:, None] + (signs * half[:, None]) @ axes  # [N, 4, 2]
    offroad = torch.zeros_like(vehicle)
    offroad[a, t] = _offroad(roadmap, corners.reshape(-1, 2)).reshape(-1, 4).any(-1)
    return offroad


def _light_transition_counts(lights: TrafficLights) -> torch.Tensor:
    """``[16, T-1]`` counts of (state at k−1, state at k), flattened as from·4 + to, over slots valid at both."""
    num_transitions = lights.state.shape[-1] - 1
    cells = NUM_LIGHT_STATES ** 2
    both = lights.valid[:, :-1] & lights.valid[:, 1:]  # [S, T-1]
    code = lights.state[:, :-1].long() * NUM_LIGHT_STATES + lights.state[:, 1:].long()  # [S, T-1]
    k = torch.arange(num_transitions).expand_as(code)
    counts = torch.bincount((k * cells + code)[both], minlength=num_transitions * cells)
    return counts.reshape(num_transitions, cells).T


# --- windows ---------------------------------------------------------------------

def _window_sums(x: torch.Tensor, starts: torch.Tensor, length: int) -> torch.Tensor:
    """Sums of ``x[..., s : s + length]`` for each start ``s`` in ``starts`` ``[W]`` -> ``[..., W]`` (float64)."""
    cumulative = F.pad(x.to(torch.float64).cumsum(-1), (1, 0))
    return cumulative[..., starts + length] - cumulative[..., starts]


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """``numerator / denominator``, NaN where the denominator is 0 (the window has no value)."""
    return torch.where(denominator > 0, numerator / denominator.clamp_min(1e-300),
                       torch.full_like(numerator, math.nan))


def _check_window(window: int, stride: int) -> None:
    if window < 2:
        raise ValueError(f"window={window}: a window needs at least 2 steps (one transition)")
    if stride < 1:
        raise ValueError(f"stride={stride}: must be at least 1 step")


def _check_trip(roadmap: RoadMap, trip: SceneState, window: int, label: str) -> None:
    """Validate one trip at the boundary; errors name the trip and the fix."""
    if not isinstance(trip, SceneState):
        raise TypeError(f"{label}: expected a SceneState, got {type(trip).__name__}")
    if trip.traj.x.ndim != 2:
        raise ValueError(f"{label}: expected one unbatched trip with traj fields [A, T], got shape "
                         f"{list(trip.traj.x.shape)}")
    if trip.map_name and roadmap.name and trip.map_name != roadmap.name:
        raise ValueError(f"{label}: recorded on map {trip.map_name!r}, but the roadmap is {roadmap.name!r}")
    if trip.num_steps < window:
        raise ValueError(f"{label}: {trip.num_steps} steps, shorter than one window of {window} steps")
    if int(trip.meta.is_av.sum()) != 1:
        raise ValueError(f"{label}: expected exactly one AV row (meta.is_av), found {int(trip.meta.is_av.sum())}")
    if not trip.traj.valid[trip.av_index].all():
        raise ValueError(f"{label}: the AV (row {trip.av_index}) must be valid at every step of a trip")
    lights = trip.lights
    state = lights.state[lights.valid]
    if state.numel() and (state.min() < 0 or state.max() >= NUM_LIGHT_STATES):
        raise ValueError(f"{label}: light states must be LightState values 0..{NUM_LIGHT_STATES - 1}")
    lane = lights.lane_id[lights.valid]
    if lane.numel() and (lane.min() < 0 or lane.max() >= roadmap.num_lanes):
        raise ValueError(f"{label}: light lane ids outside the roadmap's {roadmap.num_lanes} lanes; "
                         "is the trip from another map?")


def trip_window_features(roadmap: RoadMap, trip: SceneState, *, window: int = WINDOW_STEPS,
                         stride: int = STRIDE_STEPS) -> dict[str, torch.Tensor]:
    """Per-window features of one trip (module doc, step 2).

    Returns float64 ``[W]`` per name in ``TRIP_BINS`` (NaN: the window has no
    value for that feature) and ``"light_transitions"``: int64 ``[W, 4, 4]``
    counts indexed (from ``LightState``, to ``LightState``).
    """
    _check_window(window, stride)
    return _window_features(roadmap, trip, window, stride, "trip")


def _window_features(roadmap: RoadMap, trip: SceneState, window: int, stride: int,
                     label: str) -> dict[str, torch.Tensor]:
    _check_trip(roadmap, trip, window, label)
    traj, lights = trip.traj, trip.lights
    num_steps = trip.num_steps
    starts = torch.arange(0, num_steps - window + 1, stride)  # [W]
    av = trip.av_index

    def steps_sum(x: torch.Tensor) -> torch.Tensor:  # [..., T] -> [..., W]
        return _window_sums(x, starts, window)

    def transitions_sum(x: torch.Tensor) -> torch.Tensor:  # [..., T-1] -> [..., W]
        return _window_sums(x, starts, window - 1)

    # features 1-5 and 8: rows other than the AV
    xy = traj.xy.to(torch.float64)  # [A, T, 2]
    others = traj.valid.clone()
    others[av] = False  # [A, T]
    distance_to_av = torch.linalg.norm(xy - xy[av], dim=-1)  # [A, T] m
    entering = ~others[:, :-1] & others[:, 1:]  # [A, T-1]
    exiting = others[:, :-1] & ~others[:, 1:]
    num_entering, num_exiting = transitions_sum(entering.sum(0)), transitions_sum(exiting.sum(0))  # [W]
    tracked = others[:, :-1] & others[:, 1:]  # [A, T-1]
    speed = torch.linalg.norm(xy[:, 1:] - xy[:, :-1], dim=-1) / DT_S  # [A, T-1] m/s

    # features 6 and 9: vehicles, the AV included
    vehicle = traj.valid & (trip.meta.agent_type == AgentType.VEHICLE)[:, None]  # [A, T]
    offroad = _vehicle_offroad(roadmap, trip, vehicle)  # [A, T]
    vehicle_rows = torch.nonzero(vehicle.any(-1)).flatten()  # [V]
    present = steps_sum(vehicle[vehicle_rows]) > 0  # [V, W]
    violators = transitions_sum(_light_violations(roadmap, trip, vehicle_rows)) > 0  # [V, W]

    # feature 7: every row
    used = torch.nonzero(traj.valid.any(-1)).flatten()  # [U] rows valid at some step
    boxes = torch.stack([traj.x, traj.y, traj.heading, traj.length, traj.width], -1)[used]  # [U, T, 5]
    colliding = _colliding(boxes.to(torch.float64), traj.valid[used])  # [U, T]

    transitions = transitions_sum(_light_transition_counts(lights))  # [16, W]
    return {
        "valid_agents": steps_sum(others.sum(0)) / window,
        "entering_agents": num_entering,
        "exiting_agents": num_exiting,
        "entering_distance_m": _ratio(transitions_sum((entering * distance_to_av[:, 1:]).sum(0)), num_entering),
        "exiting_distance_m": _ratio(transitions_sum((exiting * distance_to_av[:, :-1]).sum(0)), num_exiting),
        "offroad_rate": _ratio(steps_sum(offroad.sum(0)), steps_sum(vehicle.sum(0))),
        "collision_rate": _ratio(steps_sum(colliding.sum(0)), steps_sum(traj.valid.sum(0))),
        "speed_mps": _ratio(transitions_sum((tracked * speed).sum(0)), transitions_sum(tracked.sum(0))),
        "light_violation_rate": _ratio(violators.sum(0).to(torch.float64), present.sum(0).to(torch.float64)),
        "light_transitions": transitions.T.round().to(torch.int64).reshape(-1, NUM_LIGHT_STATES,
                                                                            NUM_LIGHT_STATES),
    }


def _pooled_features(roadmap: RoadMap, trips: Sequence[SceneState], label: str, window: int,
                     stride: int) -> dict[str, torch.Tensor]:
    """Window features of every trip, concatenated along the window axis."""
    if isinstance(trips, SceneState) or len(trips) == 0:
        raise ValueError(f"{label}: expected a non-empty list of trips (SceneState)")
    per_trip = [_window_features(roadmap, trip, window, stride, f"{label}[{i}]") for i, trip in enumerate(trips)]
    return {name: torch.cat([f[name] for f in per_trip]) for name in TRIP_FEATURES}


def trip_jsd(roadmap: RoadMap, log_trips: Sequence[SceneState], sim_trips: Sequence[SceneState], *,
             window: int = WINDOW_STEPS, stride: int = STRIDE_STEPS) -> TripScore:
    """Trip-level JSDs of ``sim_trips`` against ``log_trips`` on ``roadmap`` (module doc, steps 4–7).

    Windows are pooled over all trips of each side, so the sides may hold
    different numbers of trips (say 1 log, 8 rollouts of it).
    """
    _check_window(window, stride)
    log = _pooled_features(roadmap, log_trips, "log_trips", window, stride)
    sim = _pooled_features(roadmap, sim_trips, "sim_trips", window, stride)
    jsd = {name: float(_count_jsd(_histogram(log[name], edges), _histogram(sim[name], edges)))
           for name, edges in TRIP_BINS.items()}
    jsd["light_transitions"] = _transition_jsd(log["light_transitions"].sum(0).to(torch.float64),
                                               sim["light_transitions"].sum(0).to(torch.float64))
    return TripScore(jsd=jsd, composite=sum(jsd.values()) / len(jsd),
                     num_windows_log=len(log["valid_agents"]), num_windows_sim=len(sim["valid_agents"]))
