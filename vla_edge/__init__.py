"""vla-edge: the reliability layer around a quantized VLA policy running on the robot's own board."""

__version__ = "0.1.0"
