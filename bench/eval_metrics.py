"""Retrieval quality by metric: cosine, L2 and Hamming at 64, 256 and 1024 bits (ITQ and LSH) on both data sets.

Runs the CLI exactly as a user would, in each data set's PLANKTON_HOME (ingested with --labels-from-folders and
embedded with the default model):
    plankton eval --metric cosine|l2 --json
    plankton hash build --bits B --method itq|lsh          (skipped when those codes exist)
    plankton eval --metric hamming --bits B --hash-method M --json
Writes bench/out/eval_hamming.json; bench/retrieval_report.py renders it into the "retrieval" section.
Usage: python bench/eval_metrics.py [--homes /tmp/ann-uvp6_uvpec /tmp/ann-pwssc_spc] [--bits 64 256 1024]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out" / "eval_hamming.json"
PLANKTON = [str(Path(sys.executable).parent / "plankton")]  # the console script of this venv


def _run(home: Path, *args: str) -> str:
    env = {**os.environ, "PLANKTON_HOME": str(home)}
    env.pop("PLANKTON_DATABASE_URL", None)
    done = subprocess.run([*PLANKTON, *args], env=env, capture_output=True, text=True, cwd=REPO, check=False)
    if done.returncode:
        raise SystemExit(f"plankton {' '.join(args)} failed in {home}:\n{done.stdout}{done.stderr}")
    return done.stdout


def _codes(home: Path) -> set[tuple[str, int]]:
    return {(r["method"], int(r["bits"])) for r in json.loads(_run(home, "hash", "list", "--json"))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--homes", nargs="+", type=Path,
                   default=[Path("/tmp/ann-uvp6_uvpec"), Path("/tmp/ann-pwssc_spc")])
    p.add_argument("--bits", nargs="+", type=int, default=[64, 256, 1024])
    p.add_argument("--methods", nargs="+", default=["itq", "lsh"])
    a = p.parse_args()
    runs = []
    for home in a.homes:
        dataset = home.name.removeprefix("ann-")
        for metric in ("cosine", "l2"):
            t = time.perf_counter()
            result = json.loads(_run(home, "eval", "--metric", metric, "--json"))
            runs.append({"dataset": dataset, "run": metric, "result": result,
                         "seconds": round(time.perf_counter() - t, 1)})
            print(dataset, metric, result["top1"], flush=True)
        have = _codes(home)
        for method in a.methods:
            for bits in a.bits:
                if (method, bits) not in have:
                    _run(home, "hash", "build", "--bits", str(bits), "--method", method)
                t = time.perf_counter()
                result = json.loads(_run(home, "eval", "--metric", "hamming", "--bits", str(bits),
                                         "--hash-method", method, "--json"))
                runs.append({"dataset": dataset, "run": f"hamming-{method}-{bits}", "result": result,
                             "seconds": round(time.perf_counter() - t, 1)})
                print(dataset, method, bits, result["top1"], flush=True)
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(runs, indent=1))
    sys.path.insert(0, str(REPO / "bench"))
    from retrieval_report import write_report

    write_report()


if __name__ == "__main__":
    main()
