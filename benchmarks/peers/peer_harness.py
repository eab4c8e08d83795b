"""What the Python peers (mooncake_bench.py, nixl_bench.py) share: kvfabric's transfer pattern between an
initiator and a target it spawns, the fills and the final data check, the timed loop and the JSON result.

The target fills its pool with 0xA5 for READs (the initiator checks what came back) and with 0x00 for
WRITEs (the initiator's 0x5A must land there: the target checks when asked).
"""
import argparse
import ctypes
import json
import multiprocessing as mp
import sys
import time


def parse_args(add_options=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--op", choices=["write", "read"], default="write")
    ap.add_argument("--block", type=int, default=1 << 20)
    ap.add_argument("--pool", type=int, default=256 << 20)
    ap.add_argument("--duration", type=float, default=3.0)
    if add_options:
        add_options(ap)
    return ap.parse_args()


def alloc(size, fill):
    buf = (ctypes.c_ubyte * size)()
    ctypes.memset(buf, fill, size)  # touch every page before registering
    return buf, ctypes.addressof(buf)


def target_fill(op):
    return 0xA5 if op == "read" else 0x00


def initiator_fill(op):
    return 0x00 if op == "read" else 0x5A


def spawn_target(target, args, *extra):
    """Starts `target(conn, pool, fill, *extra)` in a spawned process; returns (pipe end, process)."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=target, args=(child, args.pool, target_fill(args.op), *extra), daemon=True)
    return parent, proc


def receive_hello(parent, proc):
    while not parent.poll(0.2):
        if not proc.is_alive():
            raise RuntimeError(f"target process exited with {proc.exitcode} before sending its address")
    return parent.recv()


def answer_verify(conn, buf):
    """Target side: once the initiator is done, check what its WRITEs left here if asked."""
    msg = conn.recv()
    ok = True
    if msg.get("verify") is not None:
        ok = bytes(buf[: msg["verify"]]) == bytes([0x5A]) * msg["verify"]
    conn.send({"ok": ok})


def verify(parent, proc, args, buf):
    """Initiator side: READs are checked here, WRITEs by the target; then the target is let go."""
    if args.op == "read":
        verified = bytes(buf) == bytes([0xA5]) * args.pool
        parent.send({"verify": None})
        parent.recv()
    else:
        parent.send({"verify": args.pool})
        verified = parent.recv()["ok"]
    proc.join(timeout=10)
    return verified


def timed_passes(run_once, duration):
    """Calls run_once() until `duration` seconds have passed; returns (passes, seconds)."""
    passes = 0
    t0 = time.perf_counter()
    while True:
        run_once()
        passes += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= duration:
            return passes, elapsed


def report(args, fields, batch, passes, elapsed, verified, label):
    """Prints the JSON line (stdout) and a human line (stderr); returns the exit code."""
    total = passes * batch * args.block
    out = {
        **fields,
        "op": args.op,
        "block": args.block,
        "pool": args.pool,
        "batch": batch,
        "passes": passes,
        "bytes": total,
        "seconds": round(elapsed, 6),
        "gbps": round(total / elapsed / 1e9, 4),
        "verified": verified,
    }
    print(json.dumps(out), flush=True)
    print(f"{label} {args.op.upper()} block={args.block}: {out['gbps']:.3f} GB/s ({passes} passes)", file=sys.stderr)
    return 0 if verified else 1
