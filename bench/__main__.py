"""Run the whole benchmark suite and write one JSON + Markdown summary.

    python -m bench [--only NAME,...] [--skip NAME,...] [--readme] [--no-run]

Each case is a script in bench/ run in its own process (so peak RSS and imports do not
leak between cases); each writes bench/results/<name>.json with ``title``, ``columns`` and
``rows``. This collects them into bench/results/summary.json and summary.md, and with
``--readme`` replaces the table between the README's benchmark markers; ``--no-run`` only
rebuilds the summary (and README tables) from the result files already there.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from bench.common import REPO, RESULTS, markdown_table

# (result name, module, arguments): the order is the order of the summary
CASES: list[tuple[str, str, list[str]]] = [
    ("static_mobilenet", "bench.bench_static_mobilenet", ["--json", "bench/results/static_mobilenet.json"]),
    ("static_mobilenet_spread", "bench.bench_static_mobilenet_spread", []),
    ("dynamic_minilm", "bench.bench_dynamic_minilm", ["--sentences", "512"]),
    ("dynamic_lstm_ocr", "bench.bench_dynamic_lstm_ocr", []),
    ("static_minilm", "bench.bench_static_minilm", ["--calib", "128", "--sentences", "512"]),
    ("dynamic_smollm2", "bench.bench_dynamic_smollm2", ["--tokens", "1024"]),
    ("calib_memory", "bench.bench_calib_memory", ["--json", "bench/results/calib_memory.json"]),
    ("int4_smollm2", "bench.bench_int4_smollm2", ["--ort-timeout", "300"]),
    ("int4_big", "bench.bench_int4_big", []),
    ("int4_formats", "bench.bench_int4_formats", []),
    ("edge_targets", "bench.bench_edge_targets", []),
    ("static_exported", "bench.bench_static_exported", []),
]

README_BEGIN = "<!-- bench:begin -->"
README_END = "<!-- bench:end -->"


def _run(module: str, args: list[str]) -> tuple[int, float]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO)
    return proc.returncode, time.perf_counter() - t0


def _all_keys(rows: list[dict]) -> list[str]:
    keys: list[str] = []
    for r in rows:
        keys.extend(k for k in r if k not in keys)
    return keys


def summarize(names: list[str]) -> str:
    parts = []
    for name in names:
        path = RESULTS / f"{name}.json"
        if not path.exists():
            parts.append(f"### {name}\n\n(no result)\n")
            continue
        data = json.loads(path.read_text())
        if isinstance(data, list):  # a bare list of rows
            data = {"rows": data}
        rows = data.get("rows", [])
        columns = data.get("columns") or _all_keys(rows)
        title = data.get("title", name)
        command = data.get("command") or f"python -m {dict((n, m) for n, m, _ in CASES).get(name, name)}"
        parts.append(f"### {title}\n\n`{command}`\n\n{markdown_table(rows, columns)}\n")
        notes = data.get("notes", [])
        if isinstance(notes, dict):  # per-row notes: {row: [line, ...]}
            notes = [f"{row}: {line}" for row, lines in notes.items() for line in lines]
        for note in notes:
            parts.append(f"- {note}\n")
    return "\n".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="")
    ap.add_argument("--skip", default="")
    ap.add_argument("--readme", action="store_true", help="update the README's benchmark section")
    ap.add_argument("--no-run", action="store_true", help="summarize the existing bench/results only")
    args = ap.parse_args()
    only = {s for s in args.only.split(",") if s}
    skip = {s for s in args.skip.split(",") if s}
    ran = []
    status = {}
    for name, module, margs in CASES:
        if (only and name not in only) or name in skip or args.no_run:
            continue
        print(f"== {name}: python -m {module} {' '.join(margs)}", flush=True)
        rc, seconds = _run(module, margs)
        status[name] = {"returncode": rc, "seconds": round(seconds, 1)}
        ran.append(name)
    names = [n for n, _, _ in CASES if not only or n in only]
    text = summarize(names)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "summary.md").write_text(text)
    if not args.no_run:
        (RESULTS / "summary.json").write_text(json.dumps({"status": status}, indent=2))
    print(text)
    if args.readme:
        readme = REPO / "README.md"
        content = readme.read_text()
        if README_BEGIN in content and README_END in content:
            head, rest = content.split(README_BEGIN, 1)
            _, tail = rest.split(README_END, 1)
            readme.write_text(f"{head}{README_BEGIN}\n{text}\n{README_END}{tail}")
    failed = [n for n, s in status.items() if s["returncode"] != 0]
    if failed:
        print(f"failed cases: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
