"""Run in a fresh process: how much memory glibc keeps after freeing large blocks.

    python -m tests.runtime.malloc_probe [--hold]
    python -m tests.runtime.malloc_probe --service BOOTSTRAP TOPIC COUNT [--release]

Prints the MiB still resident after 63 blocks of 512 KiB were freed. The first form
holds the thresholds itself when asked (``--hold``); the second consumes ``COUNT``
records with a real service first (``ServiceOptions(release_memory=...)``), so that
what it prints is what running a service left the allocator doing.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from typing import Any

BLOCK = 512 << 10

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]


def resident() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def touched(size: int) -> int:
    block: int = libc.malloc(size)
    ctypes.memset(block, 1, size)
    return block


def retained_mib() -> float:
    # Freeing a mmapped block of 4 MiB raises glibc's dynamic thresholds to it, as a
    # freed librdkafka fetch buffer does; unless they are held.
    libc.free(touched(4 << 20))
    before = resident()
    blocks = [touched(BLOCK) for _ in range(64)]
    for block in blocks[:-1]:  # the last one stays: below it the heap cannot shrink
        libc.free(block)
    kept = resident() - before
    libc.free(blocks[-1])
    return kept / (1 << 20)


def run_service(bootstrap: str, topic_name: str, count: int, release: bool) -> None:
    import streamguard as sg
    from streamguard.demo.contracts import OrderPlaced
    from tests.conftest import fast_group_config

    class Drain(sg.ConsumerService):
        topic = topic_name
        contract = OrderPlaced
        group_id = f"{topic_name}-{'release' if release else 'keep'}"
        options = sg.ServiceOptions(release_memory=release)

        def handle(self, event: Any, ctx: sg.MessageContext) -> None:
            seen.append(ctx.offset)
            if len(seen) == count:
                done.set()

    seen: list[int] = []
    done = threading.Event()
    service = Drain(bootstrap_servers=bootstrap, kafka_config=fast_group_config())
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    if not done.wait(30):
        raise SystemExit(f"consumed {len(seen)} of {count} records in 30 s")
    service.stop()
    thread.join(30)


def main(argv: list[str]) -> None:
    if argv[:1] == ["--service"]:
        bootstrap, topic, count = argv[1], argv[2], int(argv[3])
        run_service(bootstrap, topic, count, release="--release" in argv)
    elif "--hold" in argv:
        from streamguard.runtime.memory import hold_malloc_thresholds

        if not hold_malloc_thresholds():
            raise SystemExit("the thresholds were not held")
    print(f"{retained_mib():.1f}")


if __name__ == "__main__":
    main(sys.argv[1:])
