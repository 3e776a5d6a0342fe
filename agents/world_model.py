"""The learned world: SceneDiffuser++ (``simgen.world``) as a world next to ``sumo``, ``idm`` and the baselines.

``WORLDS["world_model"]`` options: ``checkpoint`` (default: the shipped
``checkpoints/world/world.pt``), ``sampler`` (``amortized`` | ``full``),
``full_steps`` (K), ``replan_every`` (R, full sampler), ``lights``
(``model`` | ``sumo_program``) and ``device`` (``cpu`` | ``cuda``: where the
network runs; the constraints and the loop stay on the CPU).

- Role ``all`` (WOSAC protocol): the model drives every row of the window,
  the AV included; rows are fixed and kept valid.
- Role ``world``: the model drives every row but the AV's, spawns agents into
  free rows and removes them through validity. It sees the AV through its
  executed history and, when the AV policy offers one, its plan for the
  window (``observe_plan``), which is inpainted as the AV's future. As in
  every world of this role (and in logged trips, docs/FORMATS.md), agents
  beyond ``radius_m`` of the AV leave the scene, and new agents enter only
  at its edge, within ``ENTRY_BAND_M`` of ``radius_m``, moving at their
  plan's speed. Agents inside the window stay: they leave by crossing its
  edge, as in the logs (``simgen.world.sampler``, "Rows").

``rollouts(start, count, generator)`` runs ``count`` rollouts of one scene as
one batch (one denoiser call per step for all of them); ``simgen eval`` uses
it under the WOSAC protocol.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from simgen.agents.base import WORLDS, PolicyContext, leave_radius
from simgen.sim.env import step as env_step
from simgen.types import Action, SceneState
from simgen.world.sampler import ENTRY_BAND_M, SamplerOptions, WorldModel, WorldSampler, device_problem

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "world" / "world.pt"


@lru_cache(maxsize=4)
def _load(path: str) -> WorldModel:
    return WorldModel.load(path)


@WORLDS.register("world_model")
class WorldModelWorld:
    def __init__(self, ctx: PolicyContext, checkpoint: str | None = None, sampler: str = "amortized",
                 full_steps: int = 16, replan_every: int = 1, lights: str = "model", device: str = "cpu"):
        if problem := device_problem(device):
            raise ValueError(f"world_model: device {device!r}, but {problem}; "
                             "set world_model.device: cpu (or install a CUDA build of torch)")
        if lights not in ("model", "sumo_program"):
            raise ValueError(f"world_model: lights must be 'model' or 'sumo_program', got {lights!r}")
        if sampler not in ("amortized", "full"):
            raise ValueError(f"world_model: sampler must be 'amortized' or 'full', got {sampler!r}")
        self.ctx = ctx
        model = _load(str(Path(checkpoint) if checkpoint else DEFAULT_CHECKPOINT))
        protocol = ctx.role == "all"
        edge = max(ctx.radius_m - ENTRY_BAND_M, 0.0) if ctx.role == "world" else 0.0  # agents enter at the edge
        options = SamplerOptions(kind=sampler, full_steps=full_steps, replan_every=replan_every,
                                 spawn=not protocol, drive_av=protocol, model_lights=lights == "model",
                                 enter_beyond_m=edge, enter_within_m=ctx.radius_m if edge > 0 else math.inf,
                                 device=device)
        self.sampler = WorldSampler(model, ctx.roadmap, options, context=_map_context(ctx.roadmap))
        self.plan_horizon = 0 if protocol else model.future  # steps of the AV's plan to inpaint

    def observe_plan(self, state: Any, plan) -> Any:
        """Inpaint the AV policy's ``Plan`` (agents/base.py) as the AV's future in the next denoiser calls."""
        state.av_plan = tuple(v[None] for v in (plan.x, plan.y, plan.heading))
        return state

    def reset(self, scene: SceneState, generator: torch.Generator) -> Any:
        return self.sampler.start([scene], generator)

    def act(self, scene: SceneState, state: Any, generator: torch.Generator) -> tuple[Action, Any]:
        actions, state = self.sampler.step([scene], state, generator)
        return leave_radius(self.ctx, scene, actions[0]), state

    def rollouts(self, start: SceneState, count: int, steps: int, generator: torch.Generator) -> list[SceneState]:
        """``count`` rollouts of ``start`` for ``steps`` steps, batched; the model drives every row it controls
        (use with role ``all``)."""
        scenes = [start] * count
        carry = self.sampler.start(scenes, generator)
        for _ in range(steps):
            actions, carry = self.sampler.step(scenes, carry, generator)
            scenes = [env_step(s, [a]) for s, a in zip(scenes, actions)]
        return scenes


_CONTEXTS: dict[int, Any] = {}


def _map_context(roadmap):
    """One ``MapContext`` per map object (building it takes about a second on a city map)."""
    from simgen.world.data import MapContext

    key = id(roadmap)
    if key not in _CONTEXTS:
        _CONTEXTS.clear()
        _CONTEXTS[key] = (roadmap, MapContext.of(roadmap))
    return _CONTEXTS[key][1]
