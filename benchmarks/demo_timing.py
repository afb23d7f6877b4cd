"""How long `spillover demo` takes: cold (empty cache, shipped organisms), warm (everything cached), --quick cold.

    .venv/bin/python benchmarks/demo_timing.py --work /tmp/demo-timing [--threads 2] [--skip-full]

Each run is the real CLI in a subprocess with its own empty ``SPILLOVER_HOME`` (cold) or the cold
run's (warm). Cold installs the shipped organisms and their SAEs and runs every other stage; the quick
preset's tiny organism is not shipped and trains. Prints wall times against the budgets (cold <= 240 s,
warm <= 30 s, quick cold <= 90 s on 2 CPU cores), the CPU seconds used (user + system, a contention-independent measure: on two
idle cores the wall time is roughly CPU / 1.5 with 2 threads), the per-stage times from summary.json, and
the machine's load average, since other processes on a shared machine slow every wall time here.
Writes timing.json into --work.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

BUDGETS = {"full_cold": 240.0, "full_warm": 30.0, "quick_cold": 90.0}


def run(name: str, args: list[str], home: Path, out: Path, threads: int) -> dict[str, object]:
    env = dict(os.environ, SPILLOVER_HOME=str(home), SPILLOVER_QUIET="1", OMP_NUM_THREADS=str(threads))
    cmd = [
        str(Path(sys.executable).with_name("spillover")),
        "demo",
        *args,
        "--out",
        str(out),
        "--threads",
        str(threads),
    ]
    load_before = os.getloadavg()
    usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (usage.ru_utime - usage_before.ru_utime) + (usage.ru_stime - usage_before.ru_stime)
    load_after = os.getloadavg()
    (out.parent / f"{name}.log").write_text(proc.stdout + "\n" + proc.stderr)
    if proc.returncode != 0:
        print(proc.stderr[-3000:])
        raise SystemExit(f"{name} failed with exit code {proc.returncode}")
    summary = json.loads((out / "summary.json").read_text())
    result = {
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "cpu_per_wall": round(cpu / wall, 2),
        "budget_s": BUDGETS[name],
        "ratio_to_budget": round(wall / BUDGETS[name], 2),
        "stages_s": summary["timings"],
        "worker_s": summary.get("worker_time_s", {}),
        "load_avg_1m_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
    }
    print(
        f"{name}: {wall:.0f} s wall, {cpu:.0f} s CPU (budget {BUDGETS[name]:.0f} s wall, ratio "
        f"{wall / BUDGETS[name]:.2f}); load {load_before[0]:.1f} -> {load_after[0]:.1f}"
    )
    print(
        "   stages: " + ", ".join(f"{k.removesuffix('_s')} {v:.0f}s" for k, v in summary["timings"].items())
    )
    if result["worker_s"]:
        print("   in the workers: " + ", ".join(f"{k} {v:.0f}s" for k, v in result["worker_s"].items()))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/spillover-demo-timing"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-full", action="store_true", help="only time --quick")
    parser.add_argument("--keep", action="store_true", help="keep the caches (default: delete the quick one)")
    args = parser.parse_args()
    work: Path = args.work
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    results: dict[str, object] = {"threads": args.threads, "cpus": os.cpu_count()}
    results["quick_cold"] = run(
        "quick_cold", ["--quick"], work / "home-quick", work / "out-quick", args.threads
    )
    if not args.skip_full:
        results["full_cold"] = run("full_cold", [], work / "home-full", work / "out-full", args.threads)
        results["full_warm"] = run("full_warm", [], work / "home-full", work / "out-full-warm", args.threads)
    (work / "timing.json").write_text(json.dumps(results, indent=2))
    if not args.keep:
        shutil.rmtree(work / "home-quick", ignore_errors=True)
    print(f"wrote {work / 'timing.json'}")


if __name__ == "__main__":
    main()
