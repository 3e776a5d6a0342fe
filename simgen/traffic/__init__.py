"""Reference traffic: SUMO (through libsumo) runs on a map, recorded at 10 Hz.

    demand = Demand(vehicles_per_hour_per_km=250)
    generate_logs("grid", Path("logs/grid"), scenes=64, seed=0, workers=2)   # LOG_DIR of docs/FORMATS.md
    trip = reference_trip(source, seed=0, steps=600, av_route=None, demand=demand, workdir=Path("work"))
    world = SumoCoSim(trip, source, seed=0)        # SUMO drives everyone but the AV
    out = world.step(x, y, heading); world.close()
    load_branch(net_file, state_file, seed, begin_step)   # continue a saved scene in SUMO

Modules: ``demand`` (randomTrips.py demand), ``sumo`` (runs, conventions,
recording), ``scenes`` (windows and trips), ``logs`` (``generate_logs``),
``reference`` (``reference_trip``), ``cosim`` (``SumoCoSim``).
"""

from simgen.traffic.cosim import CoSimStep, SumoCoSim
from simgen.traffic.demand import Demand, write_demand
from simgen.traffic.logs import generate_logs
from simgen.traffic.reference import ReferenceTrip, reference_trip
from simgen.traffic.sumo import SumoRecorder, load_branch

__all__ = ["CoSimStep", "Demand", "ReferenceTrip", "SumoCoSim", "SumoRecorder", "generate_logs", "load_branch",
           "reference_trip", "write_demand"]
