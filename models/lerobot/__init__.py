"""The torch side of ``vla-edge import lerobot``: runs in the LeRobot environment (scripts/setup-lerobot.sh).

| module | job |
|---|---|
| ``checkpoint`` | read a ``pretrained_model`` folder (LeRobot 0.3.x or 0.4.x+ layout) into LeRobot's own policy + processors |
| ``fixtures`` | RANDOM-WEIGHT policies of the four types built from their config classes, saved in either layout |
| ``export_*`` | one module per policy type: torch wrappers around LeRobot's own modules at the graph boundaries |
| ``onnx_tools`` | export, graph fixes, external data, piece-by-piece int8/int4 quantization |
| ``parity`` | LeRobot's ``predict_action_chunk`` vs vla-edge's runner on the same weights, observations and noise |
| ``importer`` | the command: export → quantize → parity gate → signed schema-2 bundle |

``metrics`` is numpy only (the main environment's tests use it too).
"""
