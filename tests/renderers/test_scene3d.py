"""The 3D street: every class of the table is built, objects carry their own instance ids, buildings stay off
the road, agents get the mesh of their type inside their box, and signal heads show the lights' state."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from simgen.renderers.camera import Conditions, render_cameras
from simgen.renderers.rig import load_rig
from simgen.renderers.scene3d import (
    AGENT_INSTANCE_BASE,
    STATIC_INSTANCE_BASE,
    Emitter,
    SemanticClass,
    tracer_for,
)

from simgen.types import LightState
from simgen.types.sensors import Mount
from tests.renderers.conftest import make_scene

STUFF = {SemanticClass.ROAD, SemanticClass.LANE_MARKING, SemanticClass.CROSSWALK, SemanticClass.SIDEWALK,
         SemanticClass.CURB, SemanticClass.TERRAIN}
OBJECTS = {SemanticClass.BUILDING, SemanticClass.POLE, SemanticClass.VEGETATION, SemanticClass.TRAFFIC_LIGHT}


@pytest.fixture(scope="module")
def tracer(small_grid):
    return tracer_for(small_grid)


def test_static_street_has_every_class_and_object_ids(small_grid, tracer):
    mesh = tracer.static.mesh
    classes = {SemanticClass(c) for c in np.unique(mesh.semantic)}
    assert classes == STUFF | OBJECTS
    stuff = np.isin(mesh.semantic, list(STUFF))
    assert np.all(mesh.instance[stuff] == 0) and np.all(mesh.instance[~stuff] >= STATIC_INSTANCE_BASE)
    for cls in OBJECTS:  # an instance id belongs to one object of one class
        ids = np.unique(mesh.instance[mesh.semantic == cls])
        others = np.unique(mesh.instance[(mesh.semantic != cls) & ~stuff])
        assert len(ids) > 5 and not set(ids) & set(others), cls
    assert tracer.static.num_heads == len(np.unique(np.round(small_grid.signal_stop_xy.numpy(), 1), axis=0))
    building = mesh.vertices[mesh.faces[mesh.semantic == SemanticClass.BUILDING]].reshape(-1, 3)
    footprint = torch.from_numpy(building[:, :2].astype(np.float64) + tracer.static.origin_xy)
    assert not small_grid.is_drivable(footprint).any(), "buildings stand off the road"


def test_agents_get_their_type_mesh_inside_their_box(small_grid, tracer):
    state = make_scene(small_grid)
    frame = tracer.frame(state, 1)
    agents = frame.agents
    expected = {1: SemanticClass.CAR, 2: SemanticClass.TRUCK, 3: SemanticClass.PEDESTRIAN}
    assert set(np.unique(agents.instance)) == {AGENT_INSTANCE_BASE + s for s in expected}, "the AV is not drawn"
    for slot, cls in expected.items():
        faces = agents.instance == AGENT_INSTANCE_BASE + slot
        assert set(np.unique(agents.semantic[faces])) == {cls}
        points = agents.vertices[agents.faces[faces]].reshape(-1, 3).astype(np.float64)
        t = state.traj
        h = float(t.heading[slot, 1])
        offset = points[:, :2] + frame.origin_xy - [float(t.x[slot, 1]), float(t.y[slot, 1])]
        along = offset @ [math.cos(h), math.sin(h)]
        assert np.abs(along).max() <= float(t.length[slot, 1]) / 2 + 1e-3
        assert points[:, 2].max() <= float(t.height[slot, 1]) + 1e-3
    car = agents.instance == AGENT_INSTANCE_BASE + 1
    assert {Emitter.HEADLIGHT, Emitter.TAILLIGHT} <= set(agents.emitter[car])


@pytest.mark.parametrize("state, lamp", [(LightState.STOP, 0), (LightState.GO, 1)])
def test_signal_head_shows_the_light_state(small_grid, tracer, state, lamp):
    """A camera 20 m before a stop point, looking up at its signal head: red lamps lit on STOP, green on GO."""
    g = 0
    lane = small_grid.signal_lane[g]
    xy = small_grid.lane_xy[lane][small_grid.lane_point_valid[lane]].double().numpy()
    heading = math.atan2(*(xy[-1] - xy[-2])[::-1])
    stop = small_grid.signal_stop_xy[g].double().numpy()
    av_xy = stop - 20 * np.array([math.cos(heading), math.sin(heading)])
    scene = make_scene(small_grid, others=(), light_state=int(state), av=(av_xy, heading))
    camera = replace(load_rig("default").cameras[0], width=160, height=120, fx=300.0, fy=300.0, cx=80.0, cy=60.0,
                     mount=Mount((0.0, 0.0, 1.9), pitch_deg=-10.0))
    view = render_cameras(tracer.frame(scene, 1), (camera,), scene.av_pose()[1].numpy(),
                          Conditions("clear", "22:00"))["front"]
    head = view.semantic == SemanticClass.TRAFFIC_LIGHT
    assert head.sum() > 30, "the head is in view"
    rgb = view.rgb[head].astype(int)
    red = (rgb[:, 0] > 150) & (rgb[:, 1] < 100)
    green = (rgb[:, 1] > 150) & (rgb[:, 0] < 100)
    lit, dark = (red, green) if lamp == 0 else (green, red)
    assert lit.sum() >= 3 and dark.sum() == 0
