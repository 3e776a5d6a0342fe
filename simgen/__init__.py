"""simgen: a generative driving simulator (SUMO reference world, learned world model, sensors, metrics)."""

__version__ = "0.1.0"
FORMAT_VERSION = 1  # on-disk layout of logs and rollouts, see docs/FORMATS.md
