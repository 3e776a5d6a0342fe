"""Sensor-rig YAML: the default rig loads; impossible intrinsics and bad beam tables name the file, key and fix."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from simgen.renderers.rig import RIG_DIR, RigError, load_rig


def test_default_rig():
    rig = load_rig("default")
    assert [c.name for c in rig.cameras] == ["front", "front_left", "front_right", "side_left", "side_right",
                                             "rear_left", "rear_right", "rear"]
    top = rig.lidars[0]
    assert (top.beams, top.columns, top.max_range_m) == (64, 2650, 75.0)
    assert top.inclinations_deg[0] == 2.4 and top.inclinations_deg[-1] == -17.6
    spacing = -np.diff(top.inclinations_deg)
    assert spacing[0] < spacing[-1], "beams are denser near the horizon"


def write_rig(tmp_path, edit) -> str:
    data = yaml.safe_load((RIG_DIR / "default.yaml").read_text())
    edit(data)
    path = tmp_path / "rig.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.mark.parametrize("edit, key, fix", [
    (lambda d: d["lidars"][0]["inclinations_deg"].pop(), "lidars.0.inclinations_deg", "one elevation per beam"),
    (lambda d: d["lidars"][0]["inclinations_deg"].reverse(), "lidars.0.inclinations_deg", "highest to the lowest"),
    (lambda d: d["cameras"][2].update(fx=-300.0), "cameras.2.fx", "greater than 0"),
    (lambda d: d["cameras"][0].update(cx=900.0), "cameras.0.cx", "near the image centre"),
    (lambda d: d["cameras"][1].update(height=0), "cameras.1.height", "greater than or equal to 8"),
    (lambda d: d["cameras"][0].update(focal=3), "cameras.0.focal", "allowed here: cx, cy, fx, fy"),
    (lambda d: d["cameras"][3].update(name="front"), "unique", "rename"),
])
def test_bad_rig_names_file_key_and_fix(tmp_path, edit, key, fix):
    path = write_rig(tmp_path, edit)
    with pytest.raises(RigError) as err:
        load_rig(path)
    message = str(err.value)
    assert message.startswith(path) and key in message and fix in message, message
    assert "\n" not in message


def test_unknown_rig_name_lists_bundled():
    with pytest.raises(RigError, match=r"bundled rigs: dashcam, default"):
        load_rig("nonesuch")
