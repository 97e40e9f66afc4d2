"""Delay, jitter and reorder for packets sent to an NFQUEUE: the kernel has no ``netem`` here, so this does it.

    ip netns exec NS python -m hil.netdelay --queue 7 --delay-ms 200 [--jitter-ms 50] [--seed 0]
    ip netns exec NS iptables -A INPUT -s PEER -j NFQUEUE --queue-num 7 --queue-bypass

Each queued packet gets a release time ``now + delay ± jitter`` (uniform) and is accepted when that time comes,
earliest first, so a jitter larger than the gap between packets reorders them as a real network can. Prints
``ready`` once the queue is bound. On SIGTERM every held packet is released and the queue unbound. Used by
`hil.netns`.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import random
import select
import signal
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hil.netdelay", description=__doc__.splitlines()[0])
    parser.add_argument("--queue", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        from netfilterqueue import COPY_META, NetfilterQueue
    except ImportError:
        print("error: the NetfilterQueue package is not installed (pip install NetfilterQueue)", flush=True)
        return 2
    rng = random.Random(args.seed)
    order = itertools.count()
    held: list[tuple[float, int, object]] = []
    stopping = False

    def on_packet(packet: object) -> None:
        delay_s = max(0.0, args.delay_ms + rng.uniform(-args.jitter_ms, args.jitter_ms)) / 1e3
        heapq.heappush(held, (time.monotonic() + delay_s, next(order), packet))

    def on_term(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    queue = NetfilterQueue()
    try:
        # The verdict is given later, from the loop below (the library allows it while the queue stays bound).
        queue.bind(args.queue, on_packet, max_len=65536, mode=COPY_META)
    except OSError as exc:
        print(f"error: cannot bind NFQUEUE {args.queue}: {exc}", flush=True)
        return 2
    fd = queue.get_fd()
    print("ready", flush=True)
    try:
        while not stopping:
            timeout = 0.05 if not held else max(0.0, min(0.05, held[0][0] - time.monotonic()))
            try:
                readable, _, _ = select.select([fd], [], [], timeout)
            except InterruptedError:
                continue
            if readable:
                queue.run(block=False)
            now = time.monotonic()
            while held and held[0][0] <= now:
                heapq.heappop(held)[2].accept()  # type: ignore[attr-defined]
    finally:
        while held:
            heapq.heappop(held)[2].accept()  # type: ignore[attr-defined]
        queue.unbind()
    return 0


if __name__ == "__main__":
    sys.exit(main())
