#!/usr/bin/env python3
"""Mooncake Transfer Engine over its TCP protocol: kvfabric's transfer pattern, two processes on loopback.

The initiator spawns a target; each opens a TransferEngine on 127.0.0.1 with the P2PHANDSHAKE metadata
mode (no etcd), registers a pool (default 256 MiB) and the target hands back its RPC port and pool
address through a pipe. The initiator then moves the whole pool in `--block` pieces with
batch_transfer_sync_write / _read, again and again for `--duration` seconds, and prints one JSON line.

Install (its own venv, never part of npm install/test):
    python3 -m venv /tmp/peers-venv
    /tmp/peers-venv/bin/pip install mooncake-transfer-engine-non-cuda
Run:
    /tmp/peers-venv/bin/python benchmarks/peers/mooncake_bench.py --op write --block 1048576
"""
import sys

from peer_harness import alloc, answer_verify, initiator_fill, parse_args, receive_hello, report, spawn_target, timed_passes, verify


def open_engine():
    from mooncake.engine import TransferEngine

    engine = TransferEngine()
    rc = engine.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "")
    if rc != 0:
        raise RuntimeError(f"TransferEngine.initialize(127.0.0.1, P2PHANDSHAKE, tcp) returned {rc}")
    return engine


def target(conn, pool, fill):
    engine = open_engine()
    buf, ptr = alloc(pool, fill)
    rc = engine.register_memory(ptr, pool)
    if rc != 0:
        raise RuntimeError(f"target register_memory returned {rc}")
    conn.send({"port": engine.get_rpc_port(), "ptr": ptr})
    answer_verify(conn, buf)
    engine.unregister_memory(ptr)


def main():
    args = parse_args()
    parent, proc = spawn_target(target, args)
    proc.start()
    info = receive_hello(parent, proc)

    engine = open_engine()
    buf, ptr = alloc(args.pool, initiator_fill(args.op))
    rc = engine.register_memory(ptr, args.pool)
    if rc != 0:
        raise RuntimeError(f"initiator register_memory returned {rc}")
    session = f"127.0.0.1:{info['port']}"
    n = args.pool // args.block
    src = [ptr + i * args.block for i in range(n)]
    dst = [info["ptr"] + i * args.block for i in range(n)]
    lengths = [args.block] * n
    move = engine.batch_transfer_sync_read if args.op == "read" else engine.batch_transfer_sync_write

    def run(count):
        rc = move(session, src[:count], dst[:count], lengths[:count])
        if rc != 0:
            raise RuntimeError(f"{move.__name__} returned {rc}")

    run(4)  # warm-up: the first transfer opens the connection
    passes, elapsed = timed_passes(lambda: run(n), args.duration)
    verified = verify(parent, proc, args, buf)
    engine.unregister_memory(ptr)
    return report(args, {"tool": "mooncake_bench", "transport": "mooncake-te tcp"}, n, passes, elapsed, verified, "mooncake tcp")


if __name__ == "__main__":
    sys.exit(main())
