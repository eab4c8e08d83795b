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
import argparse
import ctypes
import json
import multiprocessing as mp
import sys
import time


def open_engine():
    from mooncake.engine import TransferEngine

    engine = TransferEngine()
    rc = engine.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "")
    if rc != 0:
        raise RuntimeError(f"TransferEngine.initialize(127.0.0.1, P2PHANDSHAKE, tcp) returned {rc}")
    return engine


def alloc(size, fill):
    buf = (ctypes.c_ubyte * size)()
    ctypes.memset(buf, fill, size)  # touch every page before registering
    return buf, ctypes.addressof(buf)


def target(conn, pool, fill):
    engine = open_engine()
    buf, ptr = alloc(pool, fill)
    rc = engine.register_memory(ptr, pool)
    if rc != 0:
        raise RuntimeError(f"target register_memory returned {rc}")
    conn.send({"port": engine.get_rpc_port(), "ptr": ptr})
    msg = conn.recv()  # the initiator is done: check what its WRITEs left here
    ok = True
    if msg.get("verify") is not None:
        ok = bytes(buf[: msg["verify"]]) == bytes([0x5A]) * msg["verify"]
    conn.send({"ok": ok})
    engine.unregister_memory(ptr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--op", choices=["write", "read"], default="write")
    ap.add_argument("--block", type=int, default=1 << 20)
    ap.add_argument("--pool", type=int, default=256 << 20)
    ap.add_argument("--duration", type=float, default=3.0)
    args = ap.parse_args()

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=target, args=(child, args.pool, 0xA5 if args.op == "read" else 0x00), daemon=True)
    proc.start()
    while not parent.poll(0.2):
        if not proc.is_alive():
            raise RuntimeError(f"target process exited with {proc.exitcode} before sending its address")
    info = parent.recv()

    engine = open_engine()
    buf, ptr = alloc(args.pool, 0x00 if args.op == "read" else 0x5A)
    rc = engine.register_memory(ptr, args.pool)
    if rc != 0:
        raise RuntimeError(f"initiator register_memory returned {rc}")
    session = f"127.0.0.1:{info['port']}"
    n = args.pool // args.block
    src = [ptr + i * args.block for i in range(n)]
    dst = [info["ptr"] + i * args.block for i in range(n)]
    lengths = [args.block] * n
    move = engine.batch_transfer_sync_read if args.op == "read" else engine.batch_transfer_sync_write

    # Warm-up: the first transfer opens the connection.
    rc = move(session, src[:4], dst[:4], lengths[:4])
    if rc != 0:
        raise RuntimeError(f"warm-up {move.__name__} returned {rc}")

    passes = 0
    t0 = time.perf_counter()
    while True:
        rc = move(session, src, dst, lengths)
        if rc != 0:
            raise RuntimeError(f"{move.__name__} returned {rc}")
        passes += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= args.duration:
            break

    if args.op == "read":
        verified = bytes(buf) == bytes([0xA5]) * args.pool
        parent.send({"verify": None})
        parent.recv()
    else:
        parent.send({"verify": args.pool})
        verified = parent.recv()["ok"]
    proc.join(timeout=10)
    engine.unregister_memory(ptr)

    total = passes * n * args.block
    out = {
        "tool": "mooncake_bench",
        "transport": "mooncake-te tcp",
        "op": args.op,
        "block": args.block,
        "pool": args.pool,
        "batch": n,
        "passes": passes,
        "bytes": total,
        "seconds": round(elapsed, 6),
        "gbps": round(total / elapsed / 1e9, 4),
        "verified": verified,
    }
    print(json.dumps(out), flush=True)
    print(f"mooncake tcp {args.op.upper()} block={args.block}: {out['gbps']:.3f} GB/s ({passes} passes)", file=sys.stderr)
    return 0 if verified else 1


if __name__ == "__main__":
    sys.exit(main())
