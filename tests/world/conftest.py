"""World-model fixtures: a few busy grid windows with a trip, and a tiny seeded model trained for a few steps."""

import pytest
import torch

from simgen.traffic import Demand, generate_logs

TINY = {"width": 32, "layers": 1, "heads": 2, "mlp_ratio": 2, "map_queries": 8}
FUTURE = 8


@pytest.fixture(scope="session")
def world_logs(tmp_path_factory):
    return generate_logs("grid", tmp_path_factory.mktemp("world") / "logs", scenes=4, seed=3, workers=1,
                         trip_seconds=12.0, demand=Demand(vehicles_per_hour_per_km=200.0), warmup_s=60.0,
                         progress=False)


@pytest.fixture(scope="session")
def tiny_checkpoint(world_logs, tmp_path_factory):
    """``world.pt`` of a tiny model after 4 seeded training steps (random-ish, but real weights and format)."""
    from simgen.world.denoiser import DenoiserConfig
    from simgen.world.train import export_checkpoint, train_world

    out = tmp_path_factory.mktemp("tiny-run")
    best = train_world([world_logs], out, steps=4, batch_size=4, future=FUTURE, config=DenoiserConfig(**TINY),
                       val_every=2, progress=False)
    export_checkpoint(best, out / "world.pt")
    return out / "world.pt"


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(0)
