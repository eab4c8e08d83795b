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
import os
import sys
import time

from peer_harness import alloc, answer_verify, initiator_fill, parse_args, receive_hello, report, spawn_target, timed_passes, verify


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


def target(conn, pool, fill, backend):
    agent = make_agent("target", backend)
    buf, ptr = alloc(pool, fill)
    reg = agent.register_memory([(ptr, pool, 0, "")], "DRAM")
    conn.send({"meta": agent.get_agent_metadata(), "ptr": ptr})
    agent.add_remote_agent(conn.recv())
    answer_verify(conn, buf)
    agent.deregister_memory(reg)


def main():
    args = parse_args(lambda ap: ap.add_argument("--backend", default="UCX"))
    parent, proc = spawn_target(target, args, args.backend)
    # Our own agent first: a backend that cannot load fails here, with its message, before any child runs.
    agent = make_agent("initiator", args.backend)
    proc.start()
    info = receive_hello(parent, proc)

    buf, ptr = alloc(args.pool, initiator_fill(args.op))
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
    passes, elapsed = timed_passes(lambda: run_once(handle), args.duration)
    agent.release_xfer_handle(handle)
    verified = verify(parent, proc, args, buf)
    agent.remove_remote_agent(remote)
    agent.deregister_memory(reg)
    fields = {"tool": "nixl_bench", "backend": args.backend, "ucxTls": os.environ.get("UCX_TLS", "(default)")}
    return report(args, fields, n, passes, elapsed, verified, f"nixl {args.backend} (UCX_TLS={fields['ucxTls']})")


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # nixl-cu12 1.5.1 segfaults in interpreter teardown (agent destructors) after a clean run: leave
    # without running them, once the result is out.
    os._exit(code)
