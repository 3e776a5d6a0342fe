"""Maps: SUMO networks (generated, bundled, OSM / OpenDRIVE imports) -> ``RoadMap``.

    resolve_map("grid", seed=0, blocks=4)     # netgenerate, cached
    resolve_map("berlin")                     # a real city net bundled with SUMO
    resolve_map("town.osm")                   # netconvert import, cached
    export_map("berlin", Path("out/berlin"))  # map.npz, map.json, net.net.xml, preview.png

How a net becomes a RoadMap (lanes, lane graph, drivable area, light slots and
their static programs) is described in ``simgen/maps/netfile.py``.
"""

from simgen.maps.export import export_map
from simgen.maps.generators import GENERATORS, register_generator
from simgen.maps.netfile import MapError, roadmap_from_net
from simgen.maps.source import BUNDLED, MapSource, resolve_map

__all__ = ["BUNDLED", "GENERATORS", "MapError", "MapSource", "export_map", "register_generator", "resolve_map",
           "roadmap_from_net"]
