"""Fuzzing com.onnxq.MatMulBlockInt4 (CPU) inside ONNX Runtime.

Seeded random models with the op: valid ones (random K, N, block size, ranks, dtypes, zero
points, bias, flat/2-D scales, constant or graph-input weights) must run and match the numpy
reference; mutated ones (bad attributes, every input dimension off by one, wrong dtypes,
missing/extra inputs, huge attributes) must fail with an ONNX Runtime error that says why.
Nothing may crash the process: the cases run in child processes (this file's ``__main__``),
a few chunks of cases per child, and a child that dies by a signal (or by an
AddressSanitizer report, see test_fuzz_asan_build.py) fails the test, naming the last case
it started.

Run one case by hand: ``python -m tests.ops.test_fuzz_matmul_block_int4 LIB SEED``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
N_CASES = 800  # seeds 0..N_CASES-1; seed % 4 == 0 is a valid model, the others a mutation
CHUNKS = 2
BLOCK_SIZES = (16, 32, 64, 128, 256)

# ---- case generation (pure python/numpy, deterministic in the seed) -------------------------

MUTATIONS = [
    "attr_block_size", "attr_bits", "attr_K", "attr_N", "attr_accuracy_level", "attr_missing", "attr_wrong_type",
    "attr_huge_consistent_B",
    "B_dim", "B_rank", "B_dtype", "B_empty",
    "S_dim", "S_rank", "S_dtype", "S_flat_off",
    "Z_dim", "Z_dtype", "Zf_dim",
    "bias_dim", "bias_rank", "bias_dtype",
    "A_last_dim", "A_rank0", "A_dtype",
    "missing_required", "extra_input",
]


def make_case(seed: int) -> dict:
    """A case: model arrays + attributes + feeds, and whether it is consistent."""
    from onnxq.formats import BlockInt4Format, PackedBlockInt4

    rng = np.random.default_rng(seed)
    bs = int(rng.choice(BLOCK_SIZES))
    k = int(rng.integers(1, 4 * bs + 2)) if rng.random() < 0.8 else int(rng.integers(1, 1200))
    n = int(rng.integers(1, 40))
    half = bool(rng.random() < 0.3)
    ft = np.float16 if half else np.float32
    fmt = BlockInt4Format(bs, symmetric=True)
    nb = fmt.n_blocks(k)
    packed = rng.integers(0, 256, size=fmt.packed_shape(k, n), dtype=np.uint8)
    scales = (rng.uniform(0.01, 0.2, size=(n, nb)) * rng.choice([-1, 1], size=(n, nb))).astype(ft)
    zkind = rng.choice(["none", "uint8", "float"])
    if zkind == "uint8":
        zp = rng.integers(0, 256, size=fmt.zero_points_shape(k, n), dtype=np.uint8)
        if nb % 2:  # a trailing odd block leaves the high nibble 0
            zp[:, -1] &= 0x0F
    elif zkind == "float":
        zp = rng.uniform(0, 15, size=(n, nb)).astype(ft)
    else:
        zp = None
    bias = rng.standard_normal(n).astype(ft) if rng.random() < 0.5 else None
    rank = int(rng.integers(1, 4))
    lead = [int(rng.choice([0, 1, 2, 3, 5, 17])) if rng.random() < 0.15 else int(rng.integers(1, 9)) for _ in range(rank - 1)]
    a = rng.standard_normal((*lead, k)).astype(ft)
    attrs = {"K": k, "N": n, "bits": 4, "block_size": bs}
    level = int(rng.choice([-1, 0, 1, 4, 4]))
    if level >= 0:
        attrs["accuracy_level"] = level
    case = {
        "seed": seed, "ft": ft, "A": a, "B": packed, "S": scales, "Z": zp, "bias": bias, "attrs": attrs,
        "const": bool(rng.random() < 0.75),  # weights as initializers (else graph inputs, fed)
        "inputs": ["A", "B", "S", "Z" if zp is not None else "", "bias" if bias is not None else ""],
        "threads": int(rng.choice([1, 2])), "mutation": None,
        # how the graph declares A: symbolic leading dims, fully static, or no shape at all
        "a_decl": str(rng.choice(["symbolic", "static", "unknown"])),
    }
    # flat [N * n_blocks] scales / zero points are accepted too (as MatMulNBits does)
    if rng.random() < 0.15:
        case["S"] = scales.reshape(-1)
    if zp is not None and rng.random() < 0.15:
        case["Z"] = zp.reshape(-1)
    case["ref"] = PackedBlockInt4(fmt, k, n, packed, scales.astype(np.float32),
                                  zp if zp is None or zp.dtype == np.uint8 else zp.astype(np.float32))
    if seed % 4:
        _mutate(case, MUTATIONS[int(rng.integers(len(MUTATIONS)))], rng)
    return case


def _off(shape, rng) -> tuple:
    """`shape` with one dimension off by one (never below 0)."""
    shape = list(shape)
    i = int(rng.integers(len(shape)))
    shape[i] = shape[i] + 1 if shape[i] == 0 or rng.random() < 0.5 else shape[i] - 1
    return tuple(shape)


def _resize(x: np.ndarray, shape, rng) -> np.ndarray:
    return rng.integers(0, 16, size=shape).astype(x.dtype)


def _mutate(case: dict, m: str, rng) -> None:
    case["mutation"] = m
    at = case["attrs"]
    k, n, bs = at["K"], at["N"], at["block_size"]
    huge = [2**40, 2**62, 2**63 - 1, -(2**63), 2**31, 2**32 + 1]
    if m == "attr_block_size":
        at["block_size"] = int(rng.choice([0, 7, 8, 48, 512, -16, -1, 2**40, 2**62, 1024, 24]))
    elif m == "attr_bits":
        at["bits"] = int(rng.choice([0, 1, 2, 3, 5, 8, -4, 2**40]))
    elif m == "attr_K":
        at["K"] = int(rng.choice([0, -1, k - 1 if k > 1 else k + 1, k + 1, k + bs, *huge]))
    elif m == "attr_N":
        at["N"] = int(rng.choice([0, -1, n + 1, n - 1 if n > 1 else n + 1, *huge]))
    elif m == "attr_accuracy_level":
        at["accuracy_level"] = int(rng.choice([-1, 5, 2**40, -(2**63)]))
    elif m == "attr_missing":
        del at[str(rng.choice(["K", "N", "bits", "block_size"]))]
    elif m == "attr_wrong_type":
        name = str(rng.choice(["K", "N", "bits", "block_size"]))
        at[name] = float(at[name]) if rng.random() < 0.5 else str(at[name])
    elif m == "attr_huge_consistent_B":
        # huge K/N with the tensors as small as allowed: products that overflow int64
        at["K"], at["N"] = int(rng.choice(huge[:3])), int(rng.choice([1, 2**28, 2**40, 2**62]))
    elif m == "B_dim":
        case["B"] = _resize(case["B"], _off(case["B"].shape, rng), rng)
    elif m == "B_rank":
        b = case["B"]
        case["B"] = b.reshape(b.shape[0], -1) if rng.random() < 0.5 else b[..., None]
    elif m == "B_dtype":
        case["B"] = case["B"].astype(rng.choice([np.int8, np.float32, np.int32]))
    elif m == "B_empty":
        case["B"] = np.zeros((0, *case["B"].shape[1:]), np.uint8)
    elif m == "S_dim":
        s = case["S"].reshape(n, -1)
        case["S"] = rng.uniform(0, 1, size=_off(s.shape, rng)).astype(s.dtype)
    elif m == "S_rank":
        case["S"] = case["S"].reshape(n, -1)[None]
    elif m == "S_dtype":
        case["S"] = case["S"].astype(np.float64 if rng.random() < 0.5 else (np.float32 if case["ft"] == np.float16 else np.float16))
    elif m == "S_flat_off":
        case["S"] = np.ones(case["S"].size + int(rng.choice([-1, 1])), case["S"].dtype)
    elif m == "Z_dim":
        z = case["ref"].fmt.zero_points_shape(k, n)
        case["Z"] = np.zeros(_off(z, rng), np.uint8)
        case["inputs"][3] = "Z"
    elif m == "Z_dtype":
        case["Z"] = np.zeros(case["S"].reshape(n, -1).shape, rng.choice([np.int8, np.float64, np.int32]))
        case["inputs"][3] = "Z"
    elif m == "Zf_dim":
        s = case["S"].reshape(n, -1)
        case["Z"] = np.full(_off(s.shape, rng), 8, s.dtype)
        case["inputs"][3] = "Z"
    elif m == "bias_dim":
        case["bias"] = np.zeros(_off((n,), rng), case["ft"])
        case["inputs"][4] = "bias"
    elif m == "bias_rank":
        case["bias"] = np.zeros((1, n), case["ft"])
        case["inputs"][4] = "bias"
    elif m == "bias_dtype":
        case["bias"] = np.zeros((n,), np.float64)
        case["inputs"][4] = "bias"
    elif m == "A_last_dim":
        a = case["A"]
        case["A"] = rng.standard_normal((*a.shape[:-1], k + int(rng.choice([-1, 1])))).astype(a.dtype)
    elif m == "A_rank0":
        case["A"] = np.array(1.0, case["ft"])
    elif m == "A_dtype":
        case["A"] = case["A"].astype(np.float64 if rng.random() < 0.5 else (np.float32 if case["ft"] == np.float16 else np.float16))
    elif m == "missing_required":
        i = int(rng.integers(3))
        case["inputs"][i] = ""
        if rng.random() < 0.5:  # also drop the trailing optional inputs
            case["inputs"] = case["inputs"][:3]
    elif m == "extra_input":
        case["inputs"] = [*case["inputs"], "B"]
    else:  # pragma: no cover
        raise AssertionError(m)


def _consistent(case: dict) -> bool:
    return case["mutation"] is None


def build_model(case: dict) -> tuple[bytes, dict]:
    from onnx import TensorProto, helper, numpy_helper

    elem = {np.float32: TensorProto.FLOAT, np.float16: TensorProto.FLOAT16}
    to_elem = lambda x: helper.np_dtype_to_tensor_dtype(x.dtype)  # noqa: E731
    inputs = list(case["inputs"])
    while inputs and inputs[-1] == "":
        inputs.pop()
    a = case["A"]
    a_shape = {"symbolic": ["d%d" % i for i in range(a.ndim - 1)] + list(a.shape[-1:]), "static": list(a.shape), "unknown": None}
    graph_inputs = [helper.make_tensor_value_info("A", to_elem(a), a_shape[case["a_decl"]])]
    inits, feeds = [], {"A": a}
    for name in dict.fromkeys(x for x in inputs if x and x != "A"):
        arr = case[name]
        if case["const"]:
            inits.append(numpy_helper.from_array(arr, name))
        else:
            graph_inputs.append(helper.make_tensor_value_info(name, to_elem(arr), list(arr.shape)))
            feeds[name] = arr
    if "" in inputs[:1]:
        feeds.pop("A")
        graph_inputs = graph_inputs[1:]
    node = helper.make_node("MatMulBlockInt4", inputs, ["Y"], domain="com.onnxq", **case["attrs"])
    graph = helper.make_graph([node], "fuzz", graph_inputs, [helper.make_tensor_value_info("Y", elem[case["ft"]], None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.onnxq", 1)], ir_version=10)
    return model.SerializeToString(), feeds


def check_case(case: dict, lib: str) -> str | None:
    """Runs one case; returns None when it behaved, else what went wrong."""
    import onnxruntime as ort

    from tests.ops.opmodels import int8_reference, reference, rel_err

    model, feeds = build_model(case)
    so = ort.SessionOptions()
    so.intra_op_num_threads = case["threads"]
    so.inter_op_num_threads = 1
    so.log_severity_level = 4
    so.register_custom_ops_library(lib)
    try:
        sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        y = sess.run(None, feeds)[0]
    except Exception as e:  # ORT's Fail / InvalidArgument / InvalidGraph / NotImplemented ...
        msg = str(e)
        if _consistent(case):
            return f"valid case failed: {type(e).__name__}: {msg}"
        if type(e).__module__.split(".")[0] != "onnxruntime" or not msg.strip():
            return f"not an ORT error with a message: {type(e).__name__}: {msg!r}"
        return None
    if not _consistent(case):
        return f"inconsistent case ran and returned shape {y.shape}"
    a = case["A"]
    k, n = case["attrs"]["K"], case["attrs"]["N"]
    if y.shape != (*a.shape[:-1], n) or y.dtype != case["ft"]:
        return f"output {y.shape} {y.dtype}, expected {(*a.shape[:-1], n)} {case['ft']}"
    if y.size == 0:
        return None
    a32 = a.astype(np.float32).reshape(-1, k)
    p = case["ref"]
    bias = None if case["bias"] is None else case["bias"].astype(np.float64)
    int8 = case["attrs"].get("accuracy_level") == 4
    ref = int8_reference(a32, p) + (0 if bias is None else bias) if int8 else reference(a32, p, bias)
    tol = (3e-3 if int8 else 2e-3) if case["ft"] == np.float16 else 1e-5
    err = rel_err(y.reshape(-1, n), ref)
    if not np.isfinite(y).all() or err > tol:
        return f"mismatch: rel_err {err:.3g} > {tol}"
    return None


def describe(case: dict) -> str:
    shapes = {x: (None if case[x] is None else (case[x].shape, str(case[x].dtype))) for x in ("A", "B", "S", "Z", "bias")}
    return (f"seed={case['seed']} mutation={case['mutation']} attrs={case['attrs']} inputs={case['inputs']} "
            f"const={case['const']} {shapes}")


def _worker(lib: str, seeds: list[int]) -> int:
    """Child process: one JSON line per case, 'start' flushed before each so a crash names it."""
    for seed in seeds:
        print(json.dumps({"start": seed}), flush=True)
        case = make_case(seed)
        problem = check_case(case, lib)
        print(json.dumps({"seed": seed, "problem": problem, "case": None if problem is None else describe(case)}), flush=True)
    return 0


def run_children(lib: str, seeds: list[int], chunks: int = CHUNKS, env: dict | None = None, timeout: float = 120) -> list[str]:
    """Runs the seeds in `chunks` child processes in parallel; returns the failures."""
    parts = [seeds[i::chunks] for i in range(chunks)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.ops.test_fuzz_matmul_block_int4", lib, ",".join(map(str, part))],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env or os.environ.copy(),
        )
        for part in parts if part
    ]
    failures = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        last, done = None, set()
        for line in out.splitlines():
            rec = json.loads(line)
            if "start" in rec:
                last = rec["start"]
            else:
                done.add(rec["seed"])
                if rec["problem"]:
                    failures.append(f"{rec['problem']}\n    {rec['case']}")
        if proc.returncode != 0 or "AddressSanitizer" in err or "runtime error:" in err:
            crashed = "" if last is None or last in done else f"; crashed in case {describe(make_case(last))}"
            failures.append(f"child exited with {proc.returncode}{crashed}\n{err[-6000:]}")
    return failures


# ---- tests ------------------------------------------------------------------------------------

def test_fuzz_cases_cover_every_mutation():
    seen = {make_case(s)["mutation"] for s in range(N_CASES)}
    assert seen >= set(MUTATIONS) | {None}


def test_fuzz_matmul_block_int4(ops_lib):
    failures = run_children(ops_lib, list(range(N_CASES)))
    assert not failures, f"{len(failures)} fuzz failures:\n" + "\n".join(failures[:20])


@pytest.mark.parametrize("attrs", [{"K": 2**40}, {"N": 2**62}, {"K": 2**31}, {"N": 2**63 - 1}])
def test_huge_k_or_n_is_rejected_at_init(ops_lib, attrs):
    """Found by the fuzzing: K or N >= 2^31 made the size products (N * n_blocks, ...) overflow
    int64 before the shape checks; now refused when the kernel is created."""
    if b"must be <= " not in Path(ops_lib).read_bytes():
        pytest.skip("the installed libonnxq_ops.so predates the K/N bound: reinstall (pip install -e .)")
    case = make_case(0)
    case["attrs"].update(attrs)
    case["mutation"] = "attr_huge"
    import onnxruntime as ort

    model, feeds = build_model(case)
    so = ort.SessionOptions()
    so.register_custom_ops_library(ops_lib)
    with pytest.raises(Exception, match=r"attributes K and N must be <= 2147483647"):
        ort.InferenceSession(model, so, providers=["CPUExecutionProvider"]).run(None, feeds)


def test_worker_crash_is_reported(tmp_path):
    """A child that dies by a signal fails the fuzz run (not pytest itself)."""
    lib = tmp_path / "unused.so"  # the ONNXQ_FUZZ_CRASH_AT hook kills the child first
    env = os.environ.copy()
    env["ONNXQ_FUZZ_CRASH_AT"] = "1"
    failures = run_children(str(lib), [0, 1], chunks=1, env=env)
    assert any("child exited with" in f and "crashed in case seed=1" in f for f in failures), failures


if __name__ == "__main__":
    crash_at = os.environ.get("ONNXQ_FUZZ_CRASH_AT")
    if crash_at is not None:  # test hook: die by SIGSEGV when this seed starts
        import signal

        _seeds = [int(s) for s in sys.argv[2].split(",")]
        for s in _seeds:
            print(json.dumps({"start": s}), flush=True)
            if s == int(crash_at):
                os.kill(os.getpid(), signal.SIGSEGV)
            print(json.dumps({"seed": s, "problem": None, "case": None}), flush=True)
        sys.exit(0)
    sys.exit(_worker(sys.argv[1], [int(s) for s in sys.argv[2].split(",") if s]))
