#!/usr/bin/env python3
"""Cross-checks native/engine's GGUF reader and dequantization against gguf-py, an independent oracle.

For each model (the real SmolLM2 model when fetched, the generated tiny model, and a "zoo" file written
here with gguf-py's own GGUFWriter holding random blocks of every type the engine reads), it picks
several tensors of each type and several rows of each, dequantizes them with `engine_dump rows` and
with gguf.quants.dequantize over the bytes gguf.GGUFReader located, and compares. It also checks the
engine's DotRow (`engine_dump dot`) against a float64 dot of the oracle's rows. Prints a table and,
with --json, writes the results.

Exit status 1 when any dequantized value differs (the comparison is bit-exact, NaN == NaN) or a dot
product is off by more than 1e-5 relative to sum(|a_i x_i|).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import zlib
from collections import defaultdict
from pathlib import Path

import numpy as np

try:
    import gguf
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import dequantize
except ImportError:  # pragma: no cover
    sys.exit("needs the gguf package: python3 -m venv /tmp/gguf-venv && /tmp/gguf-venv/bin/pip install gguf numpy")

ROOT = Path(__file__).resolve().parents[2]
REAL_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
ENGINE_TYPES = [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q4_K, Q.Q6_K]
DOT_RTOL = 1e-5


def default_real_model() -> Path | None:
    cache = os.environ.get("KVF_MODEL_CACHE") or os.path.join(Path.home(), ".cache", "kvfabric", "models")
    p = Path(cache) / REAL_NAME
    return p if p.is_file() else None


def random_halves(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random float16 bit patterns without inf/NaN, with some subnormals and zeros mixed in."""
    h = rng.integers(0, 1 << 16, size=n, dtype=np.uint32).astype(np.uint16)
    h = np.where((h & 0x7C00) == 0x7C00, h & 0xBFFF, h)  # exponent all ones -> clear its top bit
    sub = rng.random(n) < 0.1
    h = np.where(sub, h & 0x83FF, h)
    h = np.where(rng.random(n) < 0.03, 0, h)
    return h.astype(np.uint16)


def write_zoo(path: Path, seed: int = 1) -> None:
    """A GGUF written by gguf-py holding random blocks of each engine type (16 rows x 512 elements)."""
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), arch="zoo")
    rows, row_len = 16, 512
    # Byte offsets of the float16 fields inside each block, which must stay finite.
    half_fields = {Q.Q8_0: [0], Q.Q4_0: [0], Q.Q4_1: [0, 2], Q.Q4_K: [0, 2], Q.Q6_K: [208]}
    for qt in ENGINE_TYPES:
        block, type_size = gguf.GGML_QUANT_SIZES[qt]
        if qt == Q.F32:
            data = (rng.standard_normal((rows, row_len)) * 3).astype(np.float32)
            w.add_tensor("zoo.F32", data)
        elif qt == Q.F16:
            w.add_tensor("zoo.F16", random_halves(rng, rows * row_len).view(np.float16).reshape(rows, row_len))
        elif qt == Q.BF16:
            # Wide but finite magnitudes (products and sums must not overflow the dot check), truncated
            # float32 bit patterns, with some bfloat16 subnormals.
            f = (rng.standard_normal(rows * row_len) * np.exp2(rng.integers(-40, 40, rows * row_len))).astype(np.float32)
            f = np.where(rng.random(rows * row_len) < 0.05, np.float32(1e-39), f).astype(np.float32)
            bf = (f.view(np.uint32) >> 16).astype(np.uint16)
            w.add_tensor("zoo.BF16", bf.view(np.uint8).reshape(rows, row_len * 2), raw_dtype=Q.BF16)
        else:
            n_blocks = rows * row_len // block
            raw = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint16).astype(np.uint8)
            for off in half_fields[qt]:
                raw[:, off:off + 2] = random_halves(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
            w.add_tensor(f"zoo.{qt.name}", raw.reshape(rows, row_len // block * type_size), raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def engine_rows(dump: Path, model: Path, tensor: str, row: int, count: int, tmp: Path) -> np.ndarray:
    out = tmp / "rows.f32"
    subprocess.run([str(dump), "rows", str(model), tensor, str(row), str(count), str(out)], check=True)
    return np.fromfile(out, dtype=np.float32)


def engine_dot(dump: Path, model: Path, tensor: str, row: int, count: int, x: np.ndarray, tmp: Path) -> np.ndarray:
    xf, out = tmp / "x.f32", tmp / "dot.f32"
    x.astype(np.float32).tofile(xf)
    subprocess.run([str(dump), "dot", str(model), tensor, str(row), str(count), str(xf), str(out)], check=True)
    return np.fromfile(out, dtype=np.float32)


def pick_rows(n_rows: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """(first, count) runs: the start, a random middle run and the end of the tensor."""
    runs = [(0, min(3, n_rows))]
    if n_rows > 8:
        mid = int(rng.integers(3, n_rows - 5))
        runs.append((mid, 3))
        runs.append((n_rows - 2, 2))
    return runs


def check_model(label: str, model: Path, dump: Path, tensors_per_type: int, results: dict, tmp: Path) -> None:
    reader = gguf.GGUFReader(str(model))
    rng = np.random.default_rng(zlib.crc32(label.encode()))  # fixed picks, run to run
    by_type: dict[Q, list] = defaultdict(list)
    for t in reader.tensors:
        by_type[t.tensor_type].append(t)
    for qt, tensors in sorted(by_type.items(), key=lambda kv: kv[0].value):
        if qt not in ENGINE_TYPES:
            print(f"  {label}: skipping {len(tensors)} tensors of type {qt.name} (not an engine type)")
            continue
        # First, last and a few spread between.
        idx = sorted(set(np.linspace(0, len(tensors) - 1, num=min(tensors_per_type, len(tensors))).round().astype(int)))
        for i in idx:
            t = tensors[i]
            row_len = int(t.shape[0])
            n_rows = int(t.n_elements) // row_len
            raw_rows = np.ascontiguousarray(t.data).view(np.uint8).reshape(n_rows, -1)
            for first, count in pick_rows(n_rows, rng):
                want = dequantize(raw_rows[first:first + count], qt).astype(np.float32).reshape(-1)
                got = engine_rows(dump, model, t.name, first, count, tmp)
                assert got.shape == want.shape, (t.name, got.shape, want.shape)
                both_nan = np.isnan(got) & np.isnan(want)
                diff = np.where(both_nan, 0.0, np.abs(got.astype(np.float64) - want.astype(np.float64)))
                bit_mismatch = int(np.count_nonzero((got.view(np.uint32) != want.view(np.uint32)) & ~both_nan))
                x = rng.standard_normal(row_len).astype(np.float32)
                dots = engine_dot(dump, model, t.name, first, count, x, tmp)
                w = want.reshape(count, row_len).astype(np.float64)
                exact = w @ x.astype(np.float64)
                scale = np.abs(w) @ np.abs(x.astype(np.float64))
                rel = float(np.max(np.abs(dots - exact) / np.maximum(scale, 1e-30)))
                r = results.setdefault((label, qt.name), {"tensors": set(), "values": 0, "max_abs_diff": 0.0,
                                                           "bit_mismatches": 0, "dot_max_rel_err": 0.0})
                r["tensors"].add(t.name)
                r["values"] += int(want.size)
                r["max_abs_diff"] = max(r["max_abs_diff"], float(np.nanmax(diff)) if diff.size else 0.0)
                r["bit_mismatches"] += bit_mismatch
                r["dot_max_rel_err"] = max(r["dot_max_rel_err"], rel)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine-dump", type=Path, default=ROOT / "build-engine" / "engine_dump",
                    help="engine_dump binary (cmake -DKVF_BUILD_TESTS=ON; default build-engine/engine_dump)")
    ap.add_argument("--real", type=Path, default=default_real_model(), help="real model (default: fetch-model cache)")
    ap.add_argument("--tiny", type=Path, help="tiny model (default: generated into a temp dir)")
    ap.add_argument("--tensors-per-type", type=int, default=4)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    args.engine_dump = args.engine_dump.resolve()
    if not args.engine_dump.is_file():
        sys.exit(f"no engine_dump at {args.engine_dump}; build it (see benchmarks/crosscheck/README.md)")

    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="kvf-crosscheck-") as d:
        tmp = Path(d)
        tiny = args.tiny
        if tiny is None:
            tiny = tmp / "tiny-llama.gguf"
            subprocess.run(["node", str(ROOT / "scripts" / "make-tiny-model.mjs"), str(tiny)], check=True,
                           stdout=subprocess.DEVNULL)
        zoo = tmp / "zoo.gguf"
        write_zoo(zoo)
        models = [("tiny", tiny), ("zoo", zoo)]
        if args.real:
            models.insert(0, ("real", args.real))
        else:
            print("real model not found (npm run fetch-model); checking tiny and zoo only")
        for label, path in models:
            check_model(label, path, args.engine_dump, args.tensors_per_type, results, tmp)

    print(f"{'model':<6} {'type':<5} {'tensors':>7} {'values':>9} {'max|diff|':>10} {'bit diffs':>9} {'dot rel err':>12}")
    failed = False
    for (label, qt), r in results.items():
        print(f"{label:<6} {qt:<5} {len(r['tensors']):>7} {r['values']:>9} {r['max_abs_diff']:>10.3g} "
              f"{r['bit_mismatches']:>9} {r['dot_max_rel_err']:>12.2e}")
        failed |= r["bit_mismatches"] > 0 or r["dot_max_rel_err"] > DOT_RTOL
    if args.json:
        out = [{"model": m, "type": q, **{k: (sorted(v) if isinstance(v, set) else v) for k, v in r.items()}}
               for (m, q), r in results.items()]
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    print("FAIL" if failed else "OK: dequantized values bit-identical to gguf-py; dots within "
          f"{DOT_RTOL:g} relative")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
