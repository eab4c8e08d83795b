#!/usr/bin/env python3
"""NIXL (host memory, UCX backend by default): kvfabric's transfer pattern, two processes on one host.

The initiator spawns a target; each creates a nixl_agent with one backend, registers a DRAM pool
(default 256 MiB), and the target hands its agent metadata and pool address back through a pipe.
The initiator prepares one transfer of the whole pool in `--block` descriptors, then posts it again
and again for `--duration` seconds, polling check_xfer_state, and prints one JSON line.

Which transport UCX uses is UCX's choice: set UCX_TLS (e.g. UCX_TLS=tcp UCX_NET_DEVICES=lo for the
TCP comparison; leave it unset and UCX takes shared memory / CMA between two local processes).

Install (its own venv, never part of npm install/test; pulls torch and CUDA wheels, ~6 GB):
    python3 -m venv /tmp/peers-venv
    /tmp/peers-venv/bin/pip install nixl-cu12
Run:
    UCX_TLS=tcp UCX_NET_DEVICES=lo /tmp/peers-venv/bin/python benchmarks/peers/nixl_bench.py --op write
"""
import argparse
import ctypes
import json
import multiprocessing as mp
import os
import sys
import time


def import_nixl():
    try:
        from nixl_cu12 import nixl_agent, nixl_agent_config  # type: ignore
    except ImportError:
        from nixl_cu13 import nixl_agent, nixl_agent_config  # type: ignore
    return nixl_agent, nixl_agent_config


def make_agent(name, backend):
    nixl_agent, nixl_agent_config = import_nixl()
    cfg = nixl_agent_config(enable_prog_thread=True, backends=[])
    agent = nixl_agent(name, cfg)
    agent.create_backend(backend, {})
    return agent


def alloc(size, fill):
    buf = (ctypes.c_ubyte * size)()
    ctypes.memset(buf, fill, size)
    return buf, ctypes.addressof(buf)


def target(conn, pool, fill, backend):
    agent = make_agent("target", backend)
    buf, ptr = alloc(pool, fill)
    reg = agent.register_memory([(ptr, pool, 0, "")], "DRAM")
    conn.send({"meta": agent.get_agent_metadata(), "ptr": ptr})
    init_meta = conn.recv()
    agent.add_remote_agent(init_meta)
    msg = conn.recv()
    ok = True
    if msg.get("verify") is not None:
        ok = bytes(buf[: msg["verify"]]) == bytes([0x5A]) * msg["verify"]
    conn.send({"ok": ok})
    agent.deregister_memory(reg)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--op", choices=["write", "read"], default="write")
    ap.add_argument("--block", type=int, default=1 << 20)
    ap.add_argument("--pool", type=int, default=256 << 20)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--backend", default="UCX")
    args = ap.parse_args()

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=target, args=(child, args.pool, 0xA5 if args.op == "read" else 0x00, args.backend), daemon=True)
    # Our own agent first: a backend that cannot load fails here, with its message, before any child runs.
    agent = make_agent("initiator", args.backend)
    proc.start()
    while not parent.poll(0.2):
        if not proc.is_alive():
            raise RuntimeError(f"target process exited with {proc.exitcode} before sending its metadata")
    info = parent.recv()

    buf, ptr = alloc(args.pool, 0x00 if args.op == "read" else 0x5A)
    reg = agent.register_memory([(ptr, args.pool, 0, "")], "DRAM")
    remote = agent.add_remote_agent(info["meta"])
    parent.send(agent.get_agent_metadata())

    n = args.pool // args.block
    local = agent.get_xfer_descs([(ptr + i * args.block, args.block, 0) for i in range(n)], "DRAM")
    far = agent.get_xfer_descs([(info["ptr"] + i * args.block, args.block, 0) for i in range(n)], "DRAM")
    op = "READ" if args.op == "read" else "WRITE"

    def run_once(handle):
        state = agent.transfer(handle)
        while state == "PROC":
            state = agent.check_xfer_state(handle)
        if state != "DONE":
            raise RuntimeError(f"NIXL {op} transfer state {state}")

    # Warm-up: the first transfer connects.
    warm_local = agent.get_xfer_descs([(ptr, args.block, 0)], "DRAM")
    warm_far = agent.get_xfer_descs([(info["ptr"], args.block, 0)], "DRAM")
    for _ in range(100):
        try:
            warm = agent.initialize_xfer(op, warm_local, warm_far, remote)
            break
        except Exception:  # metadata may not be usable yet
            time.sleep(0.05)
    else:
        raise RuntimeError("initialize_xfer never succeeded")
    run_once(warm)
    agent.release_xfer_handle(warm)

    handle = agent.initialize_xfer(op, local, far, remote)
    passes = 0
    t0 = time.perf_counter()
    while True:
        run_once(handle)
        passes += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= args.duration:
            break
    agent.release_xfer_handle(handle)

    if args.op == "read":
        verified = bytes(buf) == bytes([0xA5]) * args.pool
        parent.send({"verify": None})
        parent.recv()
    else:
        parent.send({"verify": args.pool})
        verified = parent.recv()["ok"]
    proc.join(timeout=10)
    agent.remove_remote_agent(remote)
    agent.deregister_memory(reg)

    total = passes * n * args.block
    out = {
        "tool": "nixl_bench",
        "backend": args.backend,
        "ucxTls": os.environ.get("UCX_TLS", "(default)"),
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
    print(f"nixl {args.backend} (UCX_TLS={out['ucxTls']}) {op} block={args.block}: {out['gbps']:.3f} GB/s ({passes} passes)", file=sys.stderr)
    return 0 if verified else 1


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # nixl-cu12 1.5.1 segfaults in interpreter teardown (agent destructors) after a clean run: leave
    # without running them, once the result is out.
    os._exit(code)
