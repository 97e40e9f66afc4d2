"""A real Triton server (PyTriton) for the remote-tier tests: the bundle's policy, plus models that misbehave.

Runs under the Triton venv (.venv-triton/bin/python), started by conftest.py:

* ``vla_remote``: the real policy (`vla_edge.remote_server.bind_policy`), as ``vla-edge remote serve`` binds it;
* ``vla_slow``: the real policy, answering only after ``SLOW_S`` (a congested network or an overloaded server);
* ``vla_wrong_shape``: answers with one action too few per chunk;
* ``vla_nan``: answers with NaN actions.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from pytriton.model_config import ModelConfig
from pytriton.triton import Triton

from vla_edge.bundle import load_bundle
from vla_edge.remote import REMOTE_INPUTS, REMOTE_OUTPUTS
from vla_edge.remote_server import RemoteSampler, bind_policy, tensors, triton_config, triton_infer_function

SLOW_S = 0.6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    args = parser.parse_args()
    bundle = load_bundle(args.bundle)
    real = triton_infer_function(RemoteSampler(bundle))

    def slow(requests):
        time.sleep(SLOW_S)
        return real(requests)

    def wrong_shape(requests):
        return [{"actions": answer["actions"][:, :-1], "embedding_whitened": answer["embedding_whitened"]}
                for answer in real(requests)]

    def nan(requests):
        answers = real(requests)
        for answer in answers:
            answer["actions"][0, 0, 0] = np.nan
        return answers

    with Triton(config=triton_config("127.0.0.1", args.port, args.http_port)) as triton:
        bind_policy(triton, "vla_remote", bundle)
        for name, function in (("vla_slow", slow), ("vla_wrong_shape", wrong_shape), ("vla_nan", nan)):
            triton.bind(model_name=name, infer_func=function, inputs=tensors(REMOTE_INPUTS),
                        outputs=tensors(REMOTE_OUTPUTS), config=ModelConfig(batching=False))
        triton.serve()


if __name__ == "__main__":
    main()
