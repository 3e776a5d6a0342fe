"""Policies (AV under test) and baseline worlds, behind one protocol (see base.py).

Importable as ``simgen.agents``. Registered names: AV policies ``log_replay``,
``constant_velocity``, ``idm_route``; worlds ``log_replay`` (also as
``log_copies``), ``constant_velocity``, ``idm``, ``sumo``, ``sumo_branch``.
"""

from simgen.agents.base import POLICIES, WORLDS, Policy, PolicyContext, make_policy
from simgen.agents import idm_route, simple, sumo_branch, sumo_world, world_model  # noqa: F401  (registers the built-in actors)

__all__ = ["POLICIES", "WORLDS", "Policy", "PolicyContext", "make_policy"]
