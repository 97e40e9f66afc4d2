"""Ternary (1.58-bit, BitNet b1.58 style) variant of the reference policy; see models/ternary/build.py."""
