"""Training examples for the world model: clips of logged scenes and trips, tokenized around the AV.

An example is one *current step* c of a logged scene window or trip: the
context frames ``c + HISTORY_OFFSETS`` and the future window ``c + 1 ... c + W``
(``simgen.world.tokenizer``), clean. Noise and task masks are drawn later, per
batch, by ``simgen.world.train.corrupt``.

1. Agents: rows valid at any frame of the clip, the AV first, then by their
   nearest approach to the AV's position at c; at most ``max_agents``, plus
   ``SPARE_SLOTS`` empty slots (where the model learns to spawn, or not).
2. Lights: slots with a known state at any frame, nearest stop point first,
   at most ``max_lights``.
3. Map: the polylines nearest the AV at c.

``collate`` pads agents and lights to the largest example of the batch, with
masks, so padding costs nothing beyond the batch's own largest scene.
``SizedBatches`` groups examples of similar size into batches, which cuts the
padded tokens of a training batch by about 1.8x (scenes hold 6 to 28 agents).
"""

from __future__ import annotations

import itertools
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset, IterableDataset

from simgen.io import load_logs
from simgen.types import LightState, RoadMap, SceneState
from simgen.world.tokenizer import (
    AGENT_CHANNELS,
    AGENT_COND,
    HISTORY_OFFSETS,
    LIGHT_CHANNELS,
    LIGHT_COND,
    MapBank,
    agent_anchor,
    agent_condition,
    agent_velocity,
    approach_heading,
    encode_agents,
    encode_light_states,
    light_condition,
    map_bank,
    map_features,
    reference,
)

SPARE_SLOTS = 4
MAX_AGENTS = 24
MAX_LIGHTS = 12


def clip_frames(current: int, future: int) -> torch.Tensor:
    """Step indices of a clip: context ``current + HISTORY_OFFSETS``, then ``current + 1 ... current + future``."""
    return torch.tensor([current + o for o in HISTORY_OFFSETS] + list(range(current + 1, current + future + 1)))


@dataclass(frozen=True)
class MapContext:
    """Per-map tables the tokenizer needs, built once."""

    bank: MapBank
    approach_heading: torch.Tensor  # [G] rad per light slot

    @classmethod
    def of(cls, roadmap: RoadMap) -> MapContext:
        return cls(bank=map_bank(roadmap), approach_heading=approach_heading(roadmap))


def make_example(scene: SceneState, context: MapContext, current: int, future: int, *,
                 max_agents: int = MAX_AGENTS, max_lights: int = MAX_LIGHTS) -> dict[str, torch.Tensor]:
    """The clean example at step ``current`` of ``scene`` (module docstring); needs the AV valid at ``current``."""
    frames = clip_frames(current, future)
    traj = scene.traj.index_axis("T", frames)
    av = scene.av_index
    pose = torch.stack([scene.traj.x[av, current], scene.traj.y[av, current], scene.traj.heading[av, current]])
    pose = pose.double()

    valid = traj.valid
    distance = torch.hypot(traj.x.double() - pose[0], traj.y.double() - pose[1])
    nearest = torch.where(valid, distance, torch.inf).amin(-1)  # [A]
    nearest[av] = -1.0
    rows = torch.nonzero(valid.any(-1)).flatten()
    rows = rows[torch.argsort(nearest[rows], stable=True)][:max_agents]
    t = traj.index_axis("A", rows)
    size = torch.stack([t.length, t.width, t.height], dim=-1)
    now = len(HISTORY_OFFSETS) - 1
    anchor = agent_anchor(t.x.double(), t.y.double(), t.valid, pose, now)
    entry = torch.stack([t.vel_x[:, now], t.vel_y[:, now]], -1)  # the log's velocity of an agent entering now
    velocity = agent_velocity(t.x.double(), t.y.double(), t.valid, pose, now, entry)
    agents = encode_agents(t.x.double(), t.y.double(), t.heading.double(), size, scene.meta.agent_type[rows],
                           t.valid, pose, reference(anchor, velocity, frames - current))
    spare_anchor = torch.zeros(SPARE_SLOTS, 2, dtype=torch.float64)
    spare = encode_agents(*(torch.zeros(SPARE_SLOTS, len(frames), dtype=torch.float64) for _ in range(3)),
                          torch.zeros(SPARE_SLOTS, len(frames), 3), torch.zeros(SPARE_SLOTS, dtype=torch.int8),
                          torch.zeros(SPARE_SLOTS, len(frames), dtype=torch.bool), pose,
                          torch.zeros(SPARE_SLOTS, len(frames), 2, dtype=torch.float64))
    lights = scene.lights.index_axis("T", frames)
    known = lights.valid & (lights.state != LightState.UNKNOWN)
    slots = torch.nonzero(known.any(-1)).flatten()
    stop_distance = torch.hypot(lights.stop_x[slots, 0].double() - pose[0], lights.stop_y[slots, 0].double() - pose[1])
    slots = slots[torch.argsort(stop_distance, stable=True)][:max_lights]
    heading = context.approach_heading[lights.signal_id[slots, 0].long()].double()
    feats, map_valid = map_features(context.bank, pose[None])
    return {
        "agents": torch.cat([agents, spare]),
        "agent_cond": agent_condition(torch.cat([anchor, spare_anchor]), torch.cat([velocity, spare_anchor]),
                                      torch.cat([t.valid[:, now], torch.zeros(SPARE_SLOTS, dtype=torch.bool)])),
        "is_av": torch.arange(len(rows) + SPARE_SLOTS) == 0,
        "lights": encode_light_states(lights.state[slots]),
        "light_valid": known[slots],
        "light_cond": light_condition(lights.stop_x[slots, 0].double(), lights.stop_y[slots, 0].double(), heading,
                                      pose),
        "map_features": feats[0],
        "map_valid": map_valid[0],
    }


def collate(examples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack examples, padding agents and lights to the batch's largest (``agent_mask``, ``light_mask``)."""
    B = len(examples)
    A = max(len(e["agents"]) for e in examples)
    S = max(len(e["lights"]) for e in examples)
    T = examples[0]["agents"].shape[1]
    out = {
        "agents": torch.zeros(B, A, T, AGENT_CHANNELS), "agent_mask": torch.zeros(B, A, dtype=torch.bool),
        "is_av": torch.zeros(B, A, dtype=torch.bool), "agent_cond": torch.zeros(B, A, AGENT_COND),
        "lights": torch.zeros(B, S, T, LIGHT_CHANNELS), "light_valid": torch.zeros(B, S, T, dtype=torch.bool),
        "light_mask": torch.zeros(B, S, dtype=torch.bool), "light_cond": torch.zeros(B, S, LIGHT_COND),
        "map_features": torch.stack([e["map_features"] for e in examples]),
        "map_valid": torch.stack([e["map_valid"] for e in examples]),
    }
    out["agents"][..., 0] = -1.0  # padding reads as invalid
    for b, e in enumerate(examples):
        a, s = len(e["agents"]), len(e["lights"])
        out["agents"][b, :a] = e["agents"]
        out["agent_mask"][b, :a] = True
        out["is_av"][b, :a] = e["is_av"]
        out["agent_cond"][b, :a] = e["agent_cond"]
        out["lights"][b, :s] = e["lights"]
        out["light_valid"][b, :s] = e["light_valid"]
        out["light_mask"][b, :s] = True
        out["light_cond"][b, :s] = e["light_cond"]
    return out


class ClipDataset(Dataset):
    """Every (scene window or trip, current step) of the given LOG_DIRs whose AV is valid over the whole clip.

    ``split``: ``"train"`` or ``"val"``; items (windows, then trips) with
    ``index % VAL_EVERY == VAL_EVERY - 1`` of each LOG_DIR are validation (the
    last item where a LOG_DIR has fewer than ``VAL_EVERY``).
    """

    VAL_EVERY = 20

    def __init__(self, log_dirs: list[Path], future: int, split: str = "train"):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        self.future = future
        self.items: list[tuple[SceneState, MapContext, torch.Tensor]] = []  # scene, map, valid current steps
        self.starts: list[int] = []
        total = 0
        for log_dir in log_dirs:
            logs = load_logs(log_dir)
            context = MapContext.of(logs.roadmap())
            scenes = [logs.scene(i) for i in range(len(logs))]
            scenes += [logs.trip(i) for i in range(len(logs.trip_entries))]
            for k, scene in enumerate(scenes):
                is_val = k % self.VAL_EVERY == self.VAL_EVERY - 1 or (len(scenes) < self.VAL_EVERY
                                                                       and k == len(scenes) - 1)
                if is_val != (split == "val"):
                    continue
                currents = self.valid_currents(scene)
                if len(currents):
                    self.items.append((scene, context, currents))
                    self.starts.append(total)
                    total += len(currents)
        self.total = total
        if not total:
            raise ValueError(f"no {split} clips in {[str(d) for d in log_dirs]}: need logs with the AV valid "
                             f"over {-HISTORY_OFFSETS[0] + 1 + future} steps")

    def valid_currents(self, scene: SceneState) -> torch.Tensor:
        av = scene.traj.valid[scene.av_index]
        currents = torch.arange(-HISTORY_OFFSETS[0], scene.num_steps - self.future)
        ok = torch.stack([av[currents + o] for o in (*HISTORY_OFFSETS, self.future)]).all(0)
        return currents[ok]

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        k = bisect_right(self.starts, index) - 1
        scene, context, currents = self.items[k]
        return make_example(scene, context, int(currents[index - self.starts[k]]), self.future)


class SizedBatches(IterableDataset):
    """Endless training batches of similar-sized examples (use with ``DataLoader(..., batch_size=None)``).

    Each round draws ``pool × batch_size`` examples in a seeded random order, sorts
    them by element count (agents + lights), collates consecutive runs of
    ``batch_size`` and yields those batches in random order. Every example is
    drawn once per pass over ``dataset``; rounds are seeded by ``(seed, round)``.
    In a ``DataLoader`` with N workers, worker i makes rounds i, i + N, ...
    """

    def __init__(self, dataset: Dataset, batch_size: int, pool: int = 16, seed: int = 0):
        self.dataset, self.batch_size, self.pool, self.seed = dataset, batch_size, pool, seed

    def __iter__(self):
        size = self.batch_size * self.pool
        worker = torch.utils.data.get_worker_info()
        share, workers = (0, 1) if worker is None else (worker.id, worker.num_workers)
        rounds = itertools.count()
        for epoch in itertools.count():
            order = torch.randperm(len(self.dataset), generator=torch.Generator().manual_seed(self.seed * 7919 + epoch))
            for k, start in enumerate(range(0, len(order) - size + 1, size)):
                if next(rounds) % workers != share:
                    continue
                examples = [self.dataset[int(i)] for i in order[start:start + size]]
                examples.sort(key=lambda e: len(e["agents"]) + len(e["lights"]))
                batches = [examples[i:i + self.batch_size] for i in range(0, size, self.batch_size)]
                shuffle = torch.randperm(self.pool, generator=torch.Generator().manual_seed(epoch * 100003 + k))
                for j in shuffle.tolist():
                    yield collate(batches[j])
