"""A ~2B-parameter VLA-shaped scale model with RANDOM WEIGHTS, for speed and memory benchmarks only.

It has the shape of a pi0-style VLA (a decoder backbone over image + instruction tokens, and an action expert
that attends to the backbone's per-layer keys/values at every denoising step), generated with random weights
straight into int4 ONNX graphs. It cannot do anything useful: its outputs are noise. See models/scale/build.py.
"""
