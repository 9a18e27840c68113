"""`python -m vlmrl.analyze` over large logs: seconds and peak memory per 100 MB of log.

Records a tiny PPO run (or takes --log), then builds logs of the sizes asked for by
repeating its real event lines with update numbers and generation ids shifted, so every
repetition is a further stretch of training. Each size is analysed in a fresh child
process (figures included) that reports its own wall time and peak resident memory.
Peak memory that stays flat while the log grows is the streaming at work.

Prints a table, then (last line) one JSON object with `s_per_100mb`, `cpu_s_per_100mb` (the
process's CPU time: less sensitive to a shared machine's load) and `mb_per_s` (reading and
analysing the log), `figures_s` (drawing figures and page: independent of the log's
size), `peak_rss_mb` (at the largest size, figures included), `peak_rss_mb_smallest` and
`rss_growth` (peak at the largest ÷ peak at the smallest size; the goal is about 1).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The child: read the log, then draw; print both times and the peak resident memory. The
# peak is VmHWM, which exec resets; ru_maxrss would still hold the recording parent's peak.
CHILD = """
import os, sys, time
t0, c0 = time.perf_counter(), time.process_time()
from vlmrl.analyze.cli import analyze, write_outputs
report, analysis = analyze(sys.argv[1])
t1, c1 = time.perf_counter(), time.process_time()
os.makedirs(sys.argv[2])
write_outputs(report, analysis, sys.argv[2])
t2 = time.perf_counter()
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(t1 - t0, c1 - c0, t2 - t1, hwm / 1024)
"""


def record_tiny(path: str, steps: int) -> None:
    """Record a tiny run the way a user does: python -m vlmrl.core.train --record."""
    cmd = [sys.executable, "-m", "vlmrl.core.train", "--env", "count", "--steps", str(steps), "--batch", "2",
           "--group", "4", "--minibatches", "2", "--max_new_tokens", "6", "--quiet", "--record", path]
    res = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"recording the tiny run failed: {res.stderr.strip()[-500:]}")


def build(src: str, dst: str, target_bytes: int) -> int:
    """Write dst: src's header, then its event lines repeated with updates and generations shifted."""
    with open(src, "rb") as fh:
        header = fh.readline()
        body = [json.loads(line) for line in fh if line.strip()]
    body = [d for d in body if d.get("kind") not in ("run_info", "run_end")]
    updates = 1 + max((d["step"] for d in body if d["kind"] in ("training", "credit", "group")), default=0)
    gens = 1 + max((d["generation"] for d in body if d["kind"] == "decode"), default=0)
    written, rep = len(header), 0
    with open(dst, "wb") as out:
        out.write(header)
        while written < target_bytes:
            chunk = []
            for d in body:
                if d["kind"] in ("training", "credit", "group"):
                    d = {**d, "step": d["step"] + rep * updates}
                elif d["kind"] == "decode":
                    d = {**d, "generation": d["generation"] + rep * gens}
                chunk.append(json.dumps(d, separators=(",", ":")))
            data = ("\n".join(chunk) + "\n").encode("ascii")
            out.write(data)
            written += len(data)
            rep += 1
    return written


def measure(log: str, out: str) -> tuple:
    proc = subprocess.run([sys.executable, "-c", CHILD, log, out], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=ROOT), timeout=3600)
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    if proc.returncode != 0 or len(last.split()) != 4:
        raise SystemExit(f"analyze failed on {log}: {proc.stderr.strip()[-500:]}")
    return tuple(float(x) for x in last.split())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes-mb", default="25,100", help="log sizes to build and analyse, in MB (comma separated)")
    p.add_argument("--log", help="a recorded log to repeat (default: record a tiny run)")
    p.add_argument("--steps", type=int, default=4, help="updates of the tiny run recorded when --log is not given")
    args = p.parse_args()
    sizes = [float(s) for s in args.sizes_mb.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        src = args.log or os.path.join(tmp, "tiny.jsonl")
        if not args.log:
            record_tiny(src, args.steps)
        rows = []
        for mb in sizes:
            big = os.path.join(tmp, f"big_{mb:g}.jsonl")
            size = build(src, big, int(mb * 1e6))
            rows.append((size, *measure(big, os.path.join(tmp, f"out_{mb:g}"))))
            os.unlink(big)
    print(f"{'log MB':>8} {'read s':>8} {'s/100MB':>8} {'CPU s/100MB':>12} {'MB/s':>7} {'figures+page s':>15} "
          f"{'peak RSS MB':>12}")
    for size, secs, cpu, draw, rss in rows:
        print(f"{size / 1e6:8.1f} {secs:8.2f} {secs / (size / 1e8):8.2f} {cpu / (size / 1e8):12.2f} "
              f"{size / 1e6 / secs:7.2f} {draw:15.2f} {rss:12.1f}")
    size, secs, cpu, draw, rss = rows[-1]
    print(json.dumps({"log_mb": round(size / 1e6, 1), "s_per_100mb": round(secs / (size / 1e8), 2),
                      "cpu_s_per_100mb": round(cpu / (size / 1e8), 2),
                      "mb_per_s": round(size / 1e6 / secs, 2), "figures_s": round(draw, 2),
                      "peak_rss_mb": round(rss, 1), "peak_rss_mb_smallest": round(rows[0][4], 1),
                      "rss_growth": round(rss / rows[0][4], 3), "load_avg_1min": round(os.getloadavg()[0], 1),
                      "cpus": os.cpu_count()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
