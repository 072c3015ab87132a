"""Soak test of the explorer: N sequential and K concurrent gradio_client runs against a live app.

    python benchmarks/soak.py [--runs 200] [--warmup 20] [--concurrent 4] [--per-client 10] [--model NAME_OR_PATH ...]

Starts `app.py` on 127.0.0.1 with its own Gradio cache folder, then
1. sequential: one client runs /run then /export (what the page does after a run) `--runs` times, after
   `--warmup` runs that are not counted;
2. concurrent: `--concurrent` clients at once, `--per-client` runs each (they queue for the one
   sampler slot).
Reports errors, p50 / max latency of a run, the server's RSS and the size of its Gradio cache before and
after each phase. The app's own cache bound (delete_cache) runs every 5 minutes, so a short soak shows
the files it would delete; the export folder keeps its newest 60 files.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.request import urlopen

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def folder_mb(path: Path) -> tuple[float, int]:
    files = [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 2**20, len(files)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--concurrent", type=int, default=4)
    p.add_argument("--per-client", type=int, default=10)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--port", type=int, default=7871)
    p.add_argument("--model", action="append", default=None)
    a = p.parse_args()
    from gradio_client import Client

    from app import controls

    cache = Path(tempfile.mkdtemp(prefix="emigm-soak-cache-"))
    cmd = [sys.executable, str(ROOT / "app.py"), "--port", str(a.port)]
    for m in a.model or []:
        cmd += ["--model", m]
    env = {**os.environ, "GRADIO_TEMP_DIR": str(cache), "OMP_NUM_THREADS": "1"}
    log = open(cache.parent / f"{cache.name}.log", "w")
    server = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{a.port}/"
    rows = []
    try:
        for _ in range(600):
            try:
                urlopen(url, timeout=2).read(1)
                break
            except OSError:
                time.sleep(0.3)
        client = Client(url, verbose=False)
        restore = client.predict(api_name="/restore")  # the page's opening settings: model, class, ...
        value = lambda x: x["value"] if isinstance(x, dict) else x  # noqa: E731 (an update or a value)
        values = {**controls.DEFAULTS, "model": value(restore[0]), "class_name": value(restore[1]), "num_steps": a.steps}

        def one(c: Client, seed: int) -> tuple[float, str]:
            t = time.perf_counter()
            try:
                c.predict(**{**values, "seed": seed}, api_name="/run")
                c.predict(api_name="/export")
                return time.perf_counter() - t, ""
            except Exception as e:  # counted, not raised: a soak reports errors
                return time.perf_counter() - t, str(e).splitlines()[0] if str(e) else type(e).__name__

        for i in range(a.warmup):
            one(client, 10_000 + i)

        def phase(name: str, fn) -> None:
            rss0, (mb0, n0) = rss_mb(server.pid), folder_mb(cache)
            results = fn()
            rss1, (mb1, n1) = rss_mb(server.pid), folder_mb(cache)
            lat = [r[0] for r in results]
            errors = [r[1] for r in results if r[1]]
            rows.append((name, len(results), len(errors), statistics.median(lat), max(lat), rss0, rss1, mb0, mb1, n0, n1,
                         errors[:3]))

        phase(f"sequential ({a.steps} steps + export)", lambda: [one(client, i) for i in range(a.runs)])

        def concurrent():
            out: list[tuple[float, str]] = []
            lock = threading.Lock()

            def worker(k: int) -> None:
                c = Client(url, verbose=False)
                for i in range(a.per_client):
                    r = one(c, 1000 * (k + 1) + i)
                    with lock:
                        out.append(r)

            threads = [threading.Thread(target=worker, args=(k,)) for k in range(a.concurrent)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return out

        phase(f"concurrent ({a.concurrent} clients x {a.per_client})", concurrent)
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    import shutil

    shutil.rmtree(cache, ignore_errors=True)
    print("| phase | runs | errors | p50 s | max s | RSS MB before -> after | Gradio cache MB (files) before -> after |")
    print("|---|---|---|---|---|---|---|")
    for name, n, err, p50, mx, r0, r1, m0, m1, f0, f1, samples in rows:
        print(f"| {name} | {n} | {err} | {p50:.2f} | {mx:.2f} | {r0:.1f} -> {r1:.1f} ({r1 - r0:+.1f}) | "
              f"{m0:.2f} ({f0}) -> {m1:.2f} ({f1}) |")
        for s in samples:
            print(f"  error: {s}")
    print(f"server log: {log.name}")


if __name__ == "__main__":
    main()
