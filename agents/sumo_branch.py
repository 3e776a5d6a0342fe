"""The ``sumo_branch`` world: SUMO continuing a logged scene from its saved state, drivers re-drawn.

This is the realism metrics' oracle (``simgen.metrics.evaluate``): samples of
what an observer of the 1.1 s history cannot know. A log window's traffic is
continued by SUMO itself, so the dynamics are SUMO's, but each branch gets

1. a new SUMO seed (``ctx.seed``): SUMO's driver imperfection, lane-change
   and insertion draws differ. On their own these move vehicles by
   centimetres over 8 s (docs/FORMATS.md, REFERENCES §8), so
2. every vehicle's **speed factor** (its multiplier on the lane speed limit,
   the hidden parameter that decides how fast it wants to go) is re-drawn the
   way SUMO draws it at insertion, ``normc(1, speed_factor_dev, 0.2, 2)``
   (``simgen.traffic.Demand.speed_factor``): a normal draw, drawn again while
   outside [0.2, 2], from ``numpy.random.default_rng(ctx.seed)``, in sorted
   SUMO-id order, for every vehicle (cyclists included) on the map at the
   branch point. Persons keep theirs. Routes are kept: each driver still
   heads for its logged destination.

Rows are the log's (``BranchPoint.sumo_ids``): each step reports every row
whose SUMO agent is on the map (box centre, heading; sizes from SUMO), and a
row whose agent has left the map, is teleporting, or is unknown to the
reloaded state is invalid. Agents that were not in the log get no row. Light
states are SUMO's.

Roles:

- ``all`` (the WOSAC protocol): SUMO drives every row, the AV's included.
- ``world``: SUMO drives every row but the AV's. Before each step the AV's
  SUMO vehicle is placed where the AV under test is going (``moveToXY``, as
  the ``sumo`` world does through ``simgen.traffic.SumoCoSim``), so traffic
  reacts to it; rows beyond ``radius_m`` of the AV are invalid (the rules of
  role ``world``).

With ``redraw_speed_factors=False`` a branch changes only the seed: the SUMO
co-simulation from the saved state (``simgen.metrics.evaluate`` runs its
``sumo`` world this way on scene windows).

Every agent present at the branch point must be in the saved state: persons
are saved only with SUMO's ``--save-state.transportables``, and ``reset``
refuses a scene whose people the state lacks (their rows would vanish, which
the metrics would score as the oracle's failure).

The policy state is the live SUMO run (libsumo holds one simulation per
process, so one branch runs at a time per process); ``close`` ends it.
SUMO is imported on first use, so importing the actors stays light.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from simgen.agents.base import WORLDS, PolicyContext, controlled_rows, within_radius
from simgen.types import DT_S, Action, SceneState

SPEED_FACTOR_RANGE = (0.2, 2.0)  # SUMO's normc cut-offs of the speed factor (simgen.traffic.Demand)


@dataclass(frozen=True)
class BranchPoint:
    """Where SUMO continues a logged scene: ``PolicyContext.reference`` of the ``sumo_branch`` world."""

    net_file: Path  # the SUMO network the log was recorded on (LOG_DIR/net.net.xml)
    state_file: Path  # SUMO state saved at the scene's last history step (LOG_DIR/states/...)
    sumo_ids: tuple[str, ...]  # SUMO id per scene row, "" for an empty row (``agent/sumo_id``)
    speed_factor_dev: float = 0.1  # std of SUMO's speed-factor draw (logs.json demand.speed_factor_dev)


def draw_speed_factors(rng: np.random.Generator, dev: float) -> None:
    """Give every vehicle in the open SUMO run a new speed factor ~ ``normc(1, dev, 0.2, 2)``."""
    import libsumo

    vehicles = sorted(libsumo.vehicle.getIDList())
    factor = rng.normal(1.0, dev, len(vehicles))
    low, high = SPEED_FACTOR_RANGE
    outside = (factor < low) | (factor > high)
    while outside.any():
        factor[outside] = rng.normal(1.0, dev, int(outside.sum()))
        outside = (factor < low) | (factor > high)
    for vehicle, value in zip(vehicles, factor.tolist()):
        libsumo.vehicle.setSpeedFactor(vehicle, value)


@dataclass
class _Branch:
    """The live SUMO run of one branch (the policy state)."""

    recorder: object  # simgen.traffic.SumoRecorder
    row_of: dict[str, int]  # SUMO id -> scene row
    slots: np.ndarray  # [S] RoadMap light slot of each scene light slot


@WORLDS.register("sumo_branch")
class SumoBranch:
    """SUMO continuing the scene from its saved state (module docstring); ``redraw_speed_factors=False``
    changes only the seed."""

    def __init__(self, ctx: PolicyContext, redraw_speed_factors: bool = True):
        if ctx.role == "av":
            raise ValueError("sumo_branch can only drive the world (role 'world' or 'all'), not the AV")
        if not isinstance(ctx.reference, BranchPoint):
            raise ValueError("sumo_branch needs the scene's saved SUMO state (a BranchPoint as ctx.reference)")
        self.ctx = ctx
        self.redraw = redraw_speed_factors

    def reset(self, scene: SceneState, generator: torch.Generator) -> _Branch:
        from simgen.traffic import SumoRecorder, load_branch
        from simgen.traffic.sumo import current_step

        point = self.ctx.reference
        begin = scene.start_step + scene.step
        load_branch(point.net_file, point.state_file, self.ctx.seed, begin)
        if current_step() != begin:
            raise ValueError(f"{point.state_file}: saved at step {current_step()}, the scene's last history step "
                             f"is {begin}")
        self._check_restored(scene)
        if self.redraw:
            draw_speed_factors(np.random.default_rng(self.ctx.seed), point.speed_factor_dev)
        rows = controlled_rows(scene, self.ctx.role).tolist()
        row_of = {sumo_id: row for row, sumo_id in enumerate(point.sumo_ids) if sumo_id and rows[row]}
        return _Branch(SumoRecorder(self.ctx.roadmap), row_of, scene.lights.signal_id[:, scene.step].numpy())

    def _check_restored(self, scene: SceneState) -> None:
        """Every row present at the branch point must be in the reloaded SUMO run."""
        import libsumo

        point = self.ctx.reference
        present = scene.traj.valid[:, scene.step].tolist()
        known = {*libsumo.vehicle.getIDList(), *libsumo.person.getIDList()}
        missing = [sumo_id for sumo_id, here in zip(point.sumo_ids, present) if here and sumo_id not in known]
        if missing:
            shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
            raise ValueError(
                f"{point.state_file}: the saved state lacks {len(missing)} agents of the scene ({shown}); persons "
                "are saved only with SUMO's --save-state.transportables, so logs recorded without it cannot be "
                "branched where people walk")

    def act(self, scene: SceneState, branch: _Branch, generator: torch.Generator) -> tuple[Action, _Branch]:
        if self.ctx.role == "world":
            self._place_av(scene)
        frame = branch.recorder.step()
        registry = branch.recorder.registry
        rows = np.array([branch.row_of.get(registry.sumo_ids[o], -1) for o in frame.object_id.tolist()],
                        dtype=np.int64)
        hit = rows >= 0
        num_rows = scene.num_agents
        pose = np.zeros((num_rows, 3))  # box centre x, y (m), heading (rad)
        size = np.zeros((num_rows, 3))  # length, width, height (m)
        valid = np.zeros(num_rows, dtype=bool)
        pose[rows[hit]] = frame.pose[hit][:, [0, 1, 3]]
        size[rows[hit]] = registry.size[frame.object_id[hit]]
        valid[rows[hit]] = True
        pose_t, size_t = torch.from_numpy(pose).float(), torch.from_numpy(size).float()
        controlled = controlled_rows(scene, self.ctx.role)
        valid_t = torch.from_numpy(valid) & controlled
        if self.ctx.role == "world":
            valid_t &= within_radius(scene, pose_t[:, 0], pose_t[:, 1], self.ctx.radius_m)
        action = Action(x=pose_t[:, 0], y=pose_t[:, 1], heading=pose_t[:, 2], valid=valid_t, controlled=controlled,
                        length=size_t[:, 0], width=size_t[:, 1], height=size_t[:, 2],
                        agent_type=scene.meta.agent_type, object_id=scene.meta.object_id,
                        light_state=torch.from_numpy(frame.light_state[branch.slots].copy()))
        return action, branch

    def _place_av(self, scene: SceneState) -> None:
        """Place the AV's SUMO vehicle for the coming step (co-simulation) where the AV will nearly be: its
        executed pose advanced one step at constant velocity (the AV acts at the same time as the world), as
        the ``sumo`` world does."""
        import libsumo

        from simgen.traffic.sumo import front_from_centre, sumo_angle_from_heading

        i, t = scene.av_index, scene.step
        av_id = self.ctx.reference.sumo_ids[i]
        if av_id not in libsumo.vehicle.getIDList():
            return
        traj = scene.traj
        heading = float(traj.heading[i, t])
        centre = np.array([[float(traj.x[i, t] + traj.vel_x[i, t] * DT_S),
                            float(traj.y[i, t] + traj.vel_y[i, t] * DT_S)]])
        front = front_from_centre(centre, np.array([heading]), np.array([libsumo.vehicle.getLength(av_id)]))[0]
        libsumo.vehicle.moveToXY(av_id, "", -1, float(front[0]), float(front[1]), sumo_angle_from_heading(heading),
                                 keepRoute=2)

    def close(self, branch: _Branch) -> None:
        from simgen.traffic.sumo import close_run

        close_run()
