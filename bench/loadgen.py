"""A closed-loop HTTP load generator: C concurrent clients POST the same body for D seconds.

    python bench/loadgen.py URL BODY.json --concurrency 32 --seconds 5 [--engine wrk]

Runs in its own process so that its CPU is spent apart from the server under test, and prints
JSON: requests, errors, seconds, req/s and latency percentiles. Two engines: ``aiohttp`` (one
Python event loop; ~300-450 µs of CPU per request on this machine's 2 cores, more than some of
the servers it measures) and ``wrk`` (C, one thread, bench/wrk_post.lua; Debian's ``wrk``
package), which leaves the cores to the servers. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse


async def _client(session, url: str, body: bytes, until: float, latencies: list[float],
                  errors: list[int], headers: dict[str, str]) -> None:
    while time.perf_counter() < until:
        started = time.perf_counter()
        try:
            async with session.post(url, data=body, headers=headers) as reply:
                await reply.read()
                ok = reply.status == 200
        except Exception:  # counted, not raised: a load test reports failures
            ok = False
        if ok:
            latencies.append(time.perf_counter() - started)
        else:
            errors.append(1)


async def run(url: str, body: bytes, concurrency: int, seconds: float, warmup: float,
              headers: dict[str, str]) -> dict:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=60)) as session:
        warm: list[float] = []
        await asyncio.gather(*(_client(session, url, body, time.perf_counter() + warmup, warm,
                                       [], headers) for _ in range(concurrency)))
        latencies: list[float] = []
        errors: list[int] = []
        started = time.perf_counter()
        until = started + seconds
        await asyncio.gather(*(_client(session, url, body, until, latencies, errors, headers)
                               for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000.0 \
            if latencies else float("nan")

    return {"requests": len(latencies), "errors": len(errors), "seconds": elapsed,
            "req_per_s": len(latencies) / elapsed, "p50_ms": pct(0.50), "p99_ms": pct(0.99)}


def _wrk(url: str, body: Path, concurrency: int, seconds: float, headers: dict[str, str]
         ) -> dict:
    env = os.environ | {"MAAS_BODY": str(body),
                        "MAAS_HEADERS": "\n".join(f"{k}: {v}" for k, v in headers.items())}
    done = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s",
                           "-s", str(Path(__file__).with_name("wrk_post.lua")), url],
                          env=env, capture_output=True, text=True, check=True,
                          timeout=seconds + 60)
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_wrk(url: str, body: Path, concurrency: int, seconds: float, warmup: float,
            headers: dict[str, str]) -> dict:
    """The same closed loop driven by wrk: a warm-up run, then the measured one."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk (or --engine aiohttp)")
    if warmup > 0:
        _wrk(url, body, concurrency, warmup, headers)
    result = _wrk(url, body, concurrency, seconds, headers)
    return result | {"req_per_s": result["requests"] / result["seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("body", help="file with the JSON request body")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--header", action="append", default=[], metavar="NAME:VALUE",
                        help="an extra request header, e.g. 'Authorization: Bearer KEY'")
    parser.add_argument("--engine", choices=("aiohttp", "wrk"), default="aiohttp")
    args = parser.parse_args()
    headers = {"Content-Type": "application/json"}
    for header in args.header:
        name, _, value = header.partition(":")
        headers[name.strip()] = value.strip()
    if urlparse(args.url).hostname not in ("127.0.0.1", "localhost"):
        raise SystemExit("loadgen sends traffic to 127.0.0.1 only")
    if args.engine == "wrk":
        result = run_wrk(args.url, Path(args.body), args.concurrency, args.seconds, args.warmup,
                         headers)
    else:
        result = asyncio.run(run(args.url, Path(args.body).read_bytes(), args.concurrency,
                                 args.seconds, args.warmup, headers))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
