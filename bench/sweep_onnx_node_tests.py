"""Sweep every ONNX node test case through each recipe and count outcomes.

    python -m bench.sweep_onnx_node_tests [--pattern REGEX] [--recipes int8-dynamic,...]

Writes bench/results/sweep_onnx_node_tests.json with every non-clean outcome listed."""

from __future__ import annotations

import argparse
import collections
import logging
import time

from bench.common import markdown_table, write_results


def recipes_for(names: list[str]):
    from onnxq import recipes

    out = []
    for name in names:
        cls = recipes.recipe_class(name)
        kwargs = {}
        if name == "int8-dynamic":
            kwargs["min_weight_elements"] = 0
            kwargs["op_types"] = ("MatMul", "Gemm", "Gather", "Conv")
        if name == "int4-weight-only":
            kwargs["block_size"] = 16
        out.append((cls(**kwargs), name == "int8-static"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pattern", default=None)
    ap.add_argument("--recipes", default="int8-dynamic,int8-static,int4-weight-only")
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)  # ORT's own warnings about the test graphs
    from onnxq.sweep import OUTCOMES, frozen_weights_variant, node_test_cases, run_case

    recipes = recipes_for(args.recipes.split(","))
    counts: dict[str, collections.Counter] = {r.name: collections.Counter() for r, _ in recipes}
    problems = []
    n = 0
    t0 = time.perf_counter()
    for base in node_test_cases(args.pattern):
        n += 1
        for case in (base, frozen_weights_variant(base)):
            if case is None:
                continue
            for recipe, calibrate in recipes:
                o = run_case(case, recipe, calibrate=calibrate)
                counts[recipe.name][o.kind] += 1
                if o.kind in ("crash", "mismatch"):
                    problems.append(o.__dict__)
    rows = [{"recipe": r, **{k: c.get(k, 0) for k in OUTCOMES}} for r, c in counts.items()]
    print(f"{n} node test models (each also with inputs after the first frozen as weights), {time.perf_counter() - t0:.0f} s")
    print(markdown_table(rows, ["recipe", *OUTCOMES]))
    for p in problems[:50]:
        print(f"- {p['recipe']} {p['case']}: {p['kind']} {p['detail']}")
    write_results("sweep_onnx_node_tests", {"models": n, "counts": rows, "problems": problems})


if __name__ == "__main__":
    main()
