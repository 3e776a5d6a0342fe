"""IDM car-following along lane-graph paths: the ``idm_route`` AV and the ``idm`` world.

Each driven agent follows a path of lanes (see ``lanes.py``). Per step, for
all agents at once:

1. Obstacles on the path: every other agent whose centre (now, or 1 s ahead at
   constant velocity) lies within half the two widths + 0.3 m of the path,
   ahead of us; stop points of STOP lights (and CAUTION lights we can still
   stop for) on the path; for the AV, the end of its route.
2. Desired speed: the lane speed limit (times a per-agent speed factor) and a
   curvature limit (lateral acceleration <= 2.5 m/s^2), both looked ahead so
   the agent brakes before a curve or a slower lane.
3. IDM acceleration (Treiber et al. 2000) against the nearest obstacle,
   clamped to [-9, accel] m/s^2, integrated with the trapezoid rule.
4. Pose = path point at the new arc length, plus a lateral offset (from the
   initial localization) that decays with a 1 s time constant.

The world version (``idm``) picks each agent's continuation at a junction at
random from the lane graph (uniform over successors, under the generator); it
never reads the logged route. Pedestrians, and agents that are not on a lane,
move at constant velocity. In role ``world``, agents are valid while within
``radius_m`` of the AV and until they drive off the end of the map; agents 50 m
beyond the radius are forgotten. So that traffic does not vanish on a long
trip, the world inserts vehicles (passenger-car boxes, 0.8x the lane speed
limit) at lane points just inside the radius whose lanes head towards the AV,
while the scene holds fewer vehicles than it did at reset; each takes an empty
row and a fresh id.
In role ``all`` (WOSAC evaluation) the world drives the AV's row like any
other, keeps every agent until it drives off the map, and inserts nobody.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cached_property

import torch

from simgen.agents.base import POLICIES, WORLDS, Plan, PolicyContext, as_world, coast_action, controlled_rows
from simgen.agents.lanes import PATH_SPACING_M, PathBatch, interpolate, lane_polyline, locate, path_polyline
from simgen.types import DT_S, Action, AgentType, LaneKind, LightState, SceneState


FORGET_BEYOND_M = 50.0  # world agents this far beyond the scene radius leave the simulation
SPAWN_PROB = 0.2  # per-step chance of inserting a vehicle while the scene is below its vehicle count
SPAWN_CLEARANCE_M = 12.0  # a spawn point needs this much free space around it, m
SPAWN_SPACING_M = 5.0  # spacing of candidate spawn points along road lanes, m


@dataclass(frozen=True)
class IDMParams:
    time_headway_s: float = 1.2
    accel_mps2: float = 2.0
    comfort_decel_mps2: float = 3.0
    max_brake_mps2: float = 9.0
    min_gap_m: float = 2.0
    delta: float = 4.0
    lateral_accel_mps2: float = 2.5
    lookahead_m: float = 150.0  # world agents' paths are extended to reach this far ahead
    speed_factor_std: float = 0.1  # world agents' desired-speed factor ~ N(1, std), clipped to [0.8, 1.2]


@dataclass(frozen=True)
class IDMState:
    rows: torch.Tensor  # [N] scene rows driven along paths
    lanes: tuple[tuple[int, ...], ...]  # lane path per driven agent
    lane_end_s: tuple[tuple[float, ...], ...]  # arc length where each path lane ends
    paths: PathBatch
    stop_s: torch.Tensor  # [N, K] arc length of signal stop points on the path (inf = none)
    stop_signal: torch.Tensor  # [N, K] signal index, -1 = none
    vmax: torch.Tensor  # [N, P] allowed speed at each path point, m/s
    s: torch.Tensor  # [N] arc length of the box centre along the path, m
    v: torch.Tensor  # [N] speed, m/s
    lat: torch.Tensor  # [N] lateral offset from the path, m (positive left)
    speed_factor: torch.Tensor  # [N]
    box: torch.Tensor  # [N, 3] length, width, height, m
    alive: torch.Tensor  # [N] False once driven off the map or far from the AV
    target: int = 0  # world: vehicles to keep in the scene (its count at reset); spawning refills up to it

    def pose(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Current box centres ``[N, 2]`` (path point + lateral offset) and headings ``[N]``."""
        pos, hdg = self.paths.pose_at(self.s)
        normal = torch.stack([-torch.sin(hdg), torch.cos(hdg)], -1)
        return pos + self.lat.unsqueeze(-1) * normal, hdg


class IDMDriver:
    """Shared machinery; subclasses choose paths (fixed route or random continuation)."""

    fixed_route = False

    def __init__(self, ctx: PolicyContext, **params: float):
        self.ctx = ctx
        self.params = IDMParams(**params)
        rm = ctx.roadmap
        self._signal_of: dict[tuple[int, int], int] = {}
        for g, (a, via, to) in enumerate(zip(rm.signal_lane.tolist(), rm.signal_via_lane.tolist(),
                                             rm.signal_to_lane.tolist())):
            self._signal_of[(a, via if via >= 0 else to)] = g
        self._succ: dict[int, list[int]] = {}
        for a, b in rm.lane_succ.tolist():
            if rm.lane_kind[b] == LaneKind.DRIVING:
                self._succ.setdefault(a, []).append(b)

    # --- paths -----------------------------------------------------------
    def _build(self, lanes_per_agent: list[list[int]], entry_s: list[float]):
        rm = self.ctx.roadmap
        polys, ends, stops = [], [], []
        for lanes, s0 in zip(lanes_per_agent, entry_s):
            poly, lane_end = path_polyline(rm, lanes, s0)
            polys.append(poly)
            ends.append(tuple(lane_end))
            stops.append([(lane_end[k], self._signal_of[(a, b)])
                          for k, (a, b) in enumerate(zip(lanes[:-1], lanes[1:])) if (a, b) in self._signal_of])
        paths = PathBatch.stack(polys)
        K = max([len(s) for s in stops] + [1])
        stop_s = torch.full((len(polys), K), math.inf, dtype=torch.float64)
        stop_signal = torch.full((len(polys), K), -1, dtype=torch.int64)
        for n, items in enumerate(stops):
            for k, (s, g) in enumerate(items):
                stop_s[n, k], stop_signal[n, k] = s, g
        vmax = self._speed_limits(paths, lanes_per_agent, ends)
        return paths, tuple(ends), stop_s, stop_signal, vmax

    def _speed_limits(self, paths: PathBatch, lanes_per_agent, ends) -> torch.Tensor:
        """``[N, P]`` allowed speed: lane limit at each point, capped by the curvature limit."""
        rm = self.ctx.roadmap
        limit = torch.empty_like(paths.s)
        for n, (lanes, lane_end) in enumerate(zip(lanes_per_agent, ends)):
            idx = torch.searchsorted(torch.tensor(lane_end, dtype=torch.float64), paths.s[n]).clamp(max=len(lanes) - 1)
            limit[n] = rm.lane_speed_limit_mps[torch.tensor(lanes)[idx]].to(torch.float64)
        ahead = torch.stack([paths.s + 2.5, paths.s - 2.5], -1).reshape(paths.s.shape[0], 2 * paths.s.shape[1])
        pts = interpolate(paths.xy, paths.s, ahead).reshape(*paths.s.shape, 2, 2)
        mid = paths.xy
        h1 = torch.atan2(pts[..., 0, 1] - mid[..., 1], pts[..., 0, 0] - mid[..., 0])
        h0 = torch.atan2(mid[..., 1] - pts[..., 1, 1], mid[..., 0] - pts[..., 1, 0])
        curvature = (torch.remainder(h1 - h0 + math.pi, 2 * math.pi) - math.pi).abs() / 2.5
        v_curve = torch.sqrt(self.params.lateral_accel_mps2 / curvature.clamp_min(1e-4))
        return torch.minimum(limit, v_curve)

    def _new_paths(self, scene: SceneState, rows: list[int], generator: torch.Generator):
        raise NotImplementedError

    def _extend(self, lanes: list[int], reach_m: float, generator: torch.Generator) -> list[int]:
        rm = self.ctx.roadmap
        total = sum(float(rm.lane_length_m[lane]) for lane in lanes)
        while total < reach_m:
            options = self._succ.get(lanes[-1], [])
            if not options:
                break
            nxt = options[int(torch.randint(len(options), (1,), generator=generator))]
            lanes = lanes + [nxt]
            total += float(rm.lane_length_m[nxt])
        return lanes

    # --- protocol --------------------------------------------------------
    def reset(self, scene: SceneState, generator: torch.Generator) -> IDMState:
        rm = self.ctx.roadmap
        t = scene.step
        traj = scene.traj
        controlled = controlled_rows(scene, self.ctx.role) & traj.valid[:, t]
        drivable = rm.lane_kind == LaneKind.DRIVING
        rows, lanes, entry, s0, lat0 = [], [], [], [], []
        for row in torch.nonzero(controlled).flatten().tolist():
            kind = int(scene.meta.agent_type[row])
            if kind == AgentType.PEDESTRIAN:
                continue
            candidates = self._route_start() if self.fixed_route else torch.nonzero(
                drivable | ((rm.lane_kind == LaneKind.BIKE) & (kind == AgentType.CYCLIST))).flatten()
            hit = locate(rm, float(traj.x[row, t]), float(traj.y[row, t]), float(traj.heading[row, t]), candidates)
            if hit is None:
                if self.fixed_route:
                    raise ValueError("idm_route: the AV is not on the first lane of its route")
                continue
            lane, s, offset = hit
            rows.append(row)
            lanes.append(self._path_from(lane, s, generator))
            entry.append(s)
            s0.append(s)
            lat0.append(offset)
        rows_t = torch.tensor(rows, dtype=torch.long)
        n = len(rows)
        if self.fixed_route:
            factor = torch.ones(n, dtype=torch.float64)
        else:
            factor = self._speed_factors(n, generator)
        box = torch.stack([traj.length[rows_t, t], traj.width[rows_t, t], traj.height[rows_t, t]], -1)
        vehicles = controlled & (scene.meta.agent_type == AgentType.VEHICLE)
        return self._assemble(rows_t, lanes, entry, torch.tensor(s0, dtype=torch.float64),
                              traj.speed_mps[rows_t, t].to(torch.float64), torch.tensor(lat0, dtype=torch.float64),
                              factor, box.to(torch.float64), torch.ones(n, dtype=torch.bool),
                              target=int(vehicles.sum()) if self.ctx.role == "world" else 0)

    def _speed_factors(self, n: int, generator: torch.Generator) -> torch.Tensor:
        factor = 1 + self.params.speed_factor_std * torch.randn(n, generator=generator, dtype=torch.float64)
        return factor.clamp(0.8, 1.2)

    def _assemble(self, rows, lanes, entry, s, v, lat, factor, box, alive, target) -> IDMState:
        paths, ends, stop_s, stop_signal, vmax = self._build(lanes, entry)
        return IDMState(rows, tuple(tuple(p) for p in lanes), ends, paths, stop_s, stop_signal, vmax, s, v, lat,
                        factor, box.reshape(-1, 3), alive, target)

    def _route_start(self) -> torch.Tensor:
        return self.ctx.route_lanes[:1].long()

    def _path_from(self, lane: int, s: float, generator: torch.Generator) -> list[int]:
        return self._extend([lane], s + self.params.lookahead_m, generator)

    def _light_table(self, scene: SceneState) -> torch.Tensor:
        """``[G]`` light state per map signal as this actor sees it now (unknown -> GO)."""
        table = torch.full((self.ctx.roadmap.num_signals,), int(LightState.GO), dtype=torch.int64)
        lights = scene.lights
        if lights.num_slots:
            t = scene.step
            seen = lights.valid[:, t]
            table[lights.signal_id[seen, t].long()] = lights.state[seen, t].long()
        return table

    def act(self, scene: SceneState, state: IDMState, generator: torch.Generator) -> tuple[Action, IDMState]:
        state = self._refresh(state, generator)
        action = coast_action(scene, self.ctx.role)  # rows not on a path (pedestrians, off-lane agents)
        if state.rows.numel():
            s_new, v_new, lat_new = self._advance(scene, state)
            state = replace(state, s=s_new, v=v_new, lat=lat_new, alive=state.alive & (s_new < state.paths.length))
            pos, hdg = state.pose()
            if self.ctx.role == "world":  # far agents leave for good
                av = scene.traj.xy[scene.av_index, scene.step].double()
                near = torch.linalg.norm(pos - av, dim=-1) < self.ctx.radius_m + FORGET_BEYOND_M
                state = replace(state, alive=state.alive & near)
            action = _place(action, state.rows, pos, hdg, state.box, state.alive)
        action = as_world(self.ctx, scene, action)
        if state.target:
            action, state = self._spawn(scene, state, action, generator)
        return action, state

    def _spawn(self, scene: SceneState, st: IDMState, action: Action,
               generator: torch.Generator) -> tuple[Action, IDMState]:
        """Keep the scene's vehicle count near its count at reset: with probability SPAWN_PROB per step while
        below it, insert one vehicle at a lane point 2-10 m inside the scene radius whose lane heads towards
        the AV and where nothing stands within SPAWN_CLEARANCE_M."""
        vehicles = action.valid & action.controlled & (action.agent_type == AgentType.VEHICLE)
        draw = torch.rand(1, generator=generator, dtype=torch.float64)
        free_rows = torch.nonzero((scene.meta.object_id < 0) & ~scene.traj.valid.any(-1)).flatten()
        if int(vehicles.sum()) >= st.target or draw.item() > SPAWN_PROB or free_rows.numel() == 0:
            return action, st
        xy, heading, lane, lane_s = self._lane_samples
        i, t = scene.av_index, scene.step
        av = scene.traj.xy[i, t].double()
        to_av = av - xy
        dist = torch.linalg.norm(to_av, dim=-1)
        inward = torch.cos(heading) * to_av[:, 0] + torch.sin(heading) * to_av[:, 1] > 0
        ok = inward & (dist > self.ctx.radius_m - 10.0) & (dist < self.ctx.radius_m - 2.0)
        present = torch.stack([action.x, action.y], -1)[action.valid | scene.meta.is_av].double()
        present = torch.cat([present, av[None]])
        if present.numel():
            ok &= torch.cdist(xy, present).min(-1).values > SPAWN_CLEARANCE_M
        candidates = torch.nonzero(ok).flatten()
        if candidates.numel() == 0:
            return action, st
        k = int(candidates[torch.randint(candidates.numel(), (1,), generator=generator)])
        row = int(free_rows[0])
        new_lane, s0 = int(lane[k]), float(lane_s[k])
        speed = 0.8 * float(self.ctx.roadmap.lane_speed_limit_mps[new_lane])
        box = torch.tensor([[4.5, 1.9, 1.5]], dtype=torch.float64)  # a passenger car, m
        object_id = int(torch.maximum(scene.meta.object_id.max(), action.object_id.max())) + 1
        st = self._assemble(
            torch.cat([st.rows, torch.tensor([row])]), [list(l) for l in st.lanes] + [
                self._extend([new_lane], s0 + self.params.lookahead_m, generator)],
            [0.0] * (len(st.lanes) + 1), torch.cat([st.s, torch.tensor([s0], dtype=torch.float64)]),
            torch.cat([st.v, torch.tensor([speed], dtype=torch.float64)]),
            torch.cat([st.lat, torch.zeros(1, dtype=torch.float64)]),
            torch.cat([st.speed_factor, self._speed_factors(1, generator)]), torch.cat([st.box, box]),
            torch.cat([st.alive, torch.ones(1, dtype=torch.bool)]), st.target)
        pos, hdg = st.pose()
        action = _place(action, st.rows[-1:], pos[-1:], hdg[-1:], box, torch.ones(1, dtype=torch.bool))
        agent_type, ids = action.agent_type.clone(), action.object_id.clone()
        agent_type[row], ids[row] = int(AgentType.VEHICLE), object_id
        return action.replace(agent_type=agent_type, object_id=ids), st

    @cached_property
    def _lane_samples(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Spawn points every SPAWN_SPACING_M along road lanes: xy ``[K, 2]``, heading ``[K]``, lane ``[K]``,
        arc length ``[K]``."""
        rm = self.ctx.roadmap
        road = torch.nonzero((rm.lane_kind == LaneKind.DRIVING) & ~rm.lane_is_junction).flatten().tolist()
        polys = [lane_polyline(rm, lane) for lane in road]
        paths = PathBatch.stack(polys)
        s = torch.arange(2.5, float(paths.length.max()) + 1e-9, SPAWN_SPACING_M, dtype=torch.float64)
        s = s[None].expand(len(road), -1)
        keep = s < paths.length[:, None] - 2.5
        pos, heading = paths.pose_at(s)
        lane = torch.tensor(road)[:, None].expand_as(s)
        return pos[keep], heading[keep], lane[keep], s[keep]

    def _obstacles(self, scene: SceneState, st: IDMState):
        """Everything an agent may have to stop for: scene agents now, with this actor's own agents at their
        internal poses (they keep driving while outside the scene radius). Returns per-obstacle row,
        x, y, vel_x, vel_y, length, width."""
        t = scene.step
        traj = scene.traj
        present = traj.valid[:, t].clone()
        fields = [traj.x[:, t], traj.y[:, t], traj.vel_x[:, t], traj.vel_y[:, t], traj.length[:, t], traj.width[:, t]]
        x, y, vx, vy, length, width = (f.to(torch.float64).clone() for f in fields)
        pos, hdg = st.pose()
        rows = st.rows
        x[rows], y[rows] = pos[:, 0], pos[:, 1]
        vx[rows], vy[rows] = st.v * torch.cos(hdg), st.v * torch.sin(hdg)
        length[rows], width[rows] = st.box[:, 0], st.box[:, 1]
        present[rows] = st.alive
        idx = torch.nonzero(present).flatten()
        return idx, x[idx], y[idx], vx[idx], vy[idx], length[idx], width[idx]

    def _advance(self, scene: SceneState, st: IDMState):
        p = self.params
        t = scene.step
        rows = st.rows
        length, width = st.box[:, 0], st.box[:, 1]
        # 1. obstacles: other agents near the path ahead, now and 1 s ahead
        others, ox, oy, ovx, ovy, o_len, o_wid = self._obstacles(scene, st)
        gap = torch.full_like(st.s, math.inf)
        v_lead = torch.zeros_like(st.s)
        _, tangent = st.paths.pose_at(st.s)
        speed_along = ovx[None] * torch.cos(tangent)[:, None] + ovy[None] * torch.sin(tangent)[:, None]
        for horizon_s in (0.0, 1.0):
            pts = torch.stack([ox + ovx * horizon_s, oy + ovy * horizon_s], -1)
            s_o, off = st.paths.project(pts)  # [N, M]
            ahead = s_o - st.s[:, None]
            near = off < 0.5 * (width[:, None] + o_wid[None]) + 0.3
            on_path = near & (rows[:, None] != others[None]) & (ahead > 0.0) & (ahead < 120.0)
            g = ahead - 0.5 * (length[:, None] + o_len[None])
            g = torch.where(on_path, g, torch.full_like(g, math.inf))
            best = g.min(-1)
            closer = best.values < gap
            lead_speed = speed_along.gather(1, best.indices.unsqueeze(1)).squeeze(1).clamp_min(0)
            gap = torch.where(closer, best.values, gap)
            v_lead = torch.where(closer, lead_speed, v_lead)
        # stop points of lights that say stop
        front = st.s + 0.5 * length
        table = self._light_table(scene) if self.ctx.role == "av" else \
            self.ctx.roadmap.signal_state_at(scene.start_step + t).long()
        sig = st.stop_signal.clamp_min(0)
        state = torch.where(st.stop_signal >= 0, table[sig], torch.full_like(sig, int(LightState.GO)))
        stop_gap = st.stop_s - front[:, None]
        can_stop = stop_gap > st.v[:, None] ** 2 / (2 * p.comfort_decel_mps2)
        must_stop = (state == LightState.STOP) | ((state == LightState.CAUTION) & can_stop)
        stop_gap = torch.where(must_stop & (stop_gap > -0.5), stop_gap.clamp_min(0), torch.full_like(stop_gap, math.inf))
        light_gap = stop_gap.min(-1).values
        use_light = light_gap < gap
        gap = torch.where(use_light, light_gap, gap)
        v_lead = torch.where(use_light, torch.zeros_like(v_lead), v_lead)
        if self.fixed_route:  # the AV stops at the end of its route
            end_gap = st.paths.length - front - 1.0
            use_end = end_gap < gap
            gap = torch.where(use_end, end_gap.clamp_min(0), gap)
            v_lead = torch.where(use_end, torch.zeros_like(v_lead), v_lead)
        # 2. desired speed, looked ahead along the path
        rel = st.paths.s - st.s[:, None]
        reach = torch.sqrt(st.vmax ** 2 + 2 * p.comfort_decel_mps2 * rel.clamp_min(0))
        reach = torch.where((rel > -PATH_SPACING_M) & (rel < 80.0), reach, torch.full_like(reach, math.inf))
        v0 = (reach.min(-1).values * st.speed_factor).clamp(0.5, 40.0)
        # 3. IDM
        v = st.v
        dv = v - v_lead
        s_star = p.min_gap_m + v * p.time_headway_s + v * dv / (2 * math.sqrt(p.accel_mps2 * p.comfort_decel_mps2))
        interaction = (s_star.clamp_min(0) / gap.clamp_min(0.1)) ** 2
        interaction = torch.where(torch.isinf(gap), torch.zeros_like(interaction), interaction)
        accel = p.accel_mps2 * (1 - (v / v0) ** p.delta - interaction)
        accel = accel.clamp(-p.max_brake_mps2, p.accel_mps2)
        v_new = (v + accel * DT_S).clamp_min(0)
        s_new = st.s + 0.5 * (v + v_new) * DT_S
        # 4. lateral offset decays
        lat_new = st.lat * math.exp(-DT_S / 1.0)
        return s_new, v_new, lat_new

    def _refresh(self, st: IDMState, generator: torch.Generator) -> IDMState:
        """World agents: forget the dead, drop passed lanes and extend paths that run short (rare; rebuilds)."""
        if self.fixed_route or not st.rows.numel():
            return st
        remaining = st.paths.length - st.s
        extendable = torch.tensor([bool(self._succ.get(lanes[-1])) for lanes in st.lanes])
        stale = ((remaining < 0.5 * self.params.lookahead_m) & extendable) | (st.s > 200.0)
        if not (stale & st.alive).any() and st.alive.all():
            return st
        lanes = [list(l) for l in st.lanes]
        s = st.s.clone()
        for n in torch.nonzero(stale & st.alive).flatten().tolist():
            k = int(torch.searchsorted(torch.tensor(st.lane_end_s[n], dtype=torch.float64), s[n]))
            k = min(k, len(lanes[n]) - 1)
            passed = st.lane_end_s[n][k - 1] if k > 0 else 0.0
            lanes[n] = self._extend(lanes[n][k:], float(s[n] - passed) + self.params.lookahead_m, generator)
            s[n] -= passed
        keep = st.alive
        kept = torch.nonzero(keep).flatten().tolist()
        return self._assemble(st.rows[keep], [lanes[n] for n in kept], [0.0] * len(kept), s[keep], st.v[keep],
                              st.lat[keep], st.speed_factor[keep], st.box[keep], st.alive[keep], st.target)


def _place(action: Action, rows: torch.Tensor, pos: torch.Tensor, heading: torch.Tensor, box: torch.Tensor,
           valid: torch.Tensor) -> Action:
    """Write poses ``[N, 2]``, headings ``[N]``, boxes ``[N, 3]`` and validity ``[N]`` into ``rows`` of an action."""
    fields = {f: getattr(action, f).clone() for f in ("x", "y", "heading", "valid", "length", "width", "height")}
    fields["x"][rows], fields["y"][rows], fields["heading"][rows] = pos[:, 0].float(), pos[:, 1].float(), heading.float()
    fields["length"][rows], fields["width"][rows], fields["height"][rows] = box.float().unbind(-1)
    fields["valid"][rows] = valid
    return action.replace(**fields)


@WORLDS.register("idm")
class IDMWorld(IDMDriver):
    """Everyone but the AV follows lanes with IDM; random continuation at junctions."""


@POLICIES.register("idm_route")
class IDMRoute(IDMDriver):
    """The AV drives its A->B route (``ctx.route_lanes``) with IDM, obeying lights and leaders."""

    fixed_route = True

    def __init__(self, ctx: PolicyContext, **params: float):
        if ctx.route_lanes is None or ctx.route_lanes.numel() == 0:
            raise ValueError("idm_route needs a route (route_lanes)")
        super().__init__(ctx, **params)
        self._advanced: tuple | None = None  # (scene, state, their IDM step): ``plan`` and the next ``act`` share it

    def _path_from(self, lane: int, s: float, generator: torch.Generator) -> list[int]:
        return [int(v) for v in self.ctx.route_lanes.tolist()]

    def _advance(self, scene: SceneState, st: IDMState):
        """The IDM step, computed once for the ``plan`` and the ``act`` of the same scene and state (a fixed route
        is never refreshed, so they are the same objects)."""
        if self._advanced is None or self._advanced[0] is not scene or self._advanced[1] is not st:
            self._advanced = (scene, st, super()._advance(scene, st))
        return self._advanced[2]

    def plan(self, scene: SceneState, state: IDMState, horizon: int) -> Plan:
        """The next ``horizon`` poses: the next ``act`` exactly (one IDM step), then that speed held along the
        route while the lateral offset keeps decaying."""
        s, v, lat = self._advance(scene, state)
        k = torch.arange(horizon, dtype=torch.float64)
        arc = s[:, None] + v[:, None] * DT_S * k  # [1, K]; the AV is the only row
        pos, heading = state.paths.pose_at(arc)
        offset = lat[:, None] * torch.exp(-DT_S * k)  # the 1 s time constant of ``_advance``
        normal = torch.stack([-torch.sin(heading), torch.cos(heading)], -1)
        pos = pos + offset[..., None] * normal
        return Plan(x=pos[0, :, 0].float(), y=pos[0, :, 1].float(), heading=heading[0].float())
