"""`kdstore push` and `kdstore pull` of an ImageNet-sized store against a local S3 server, beside a
plain recursive copy through the same fsspec backend (what `aws s3 cp --recursive` does), CPU
(issue 36): MB/s of each, their ratio (target: kdstore >= 0.9 of the plain copy) and the peak
RSS of each process (the store is never held in memory).

The store is benchmarks/imagenet_scale.py's (1,281,167 + 50,000 samples, 1,000 classes, no views;
build it first with `--stages cache --stores no-views`). The S3 server is moto's, started here as
its own process on 127.0.0.1 (keeping objects in its memory: about twice the store in RAM).
Each transfer runs in its own child process, in the order plain / kdstore / kdstore / plain, on
an idle machine; kdstore's push includes its `verify` of the store (every sha256) and its pull
the sha256 of every file as it lands and the atomic publish.

    .venv/bin/python benchmarks/remote_transfer.py --store /tmp/kdi/store [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from common import machine_record

MB = 1e6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child(kind: str, store: str, url: str, out: str) -> None:
    """One transfer in this process; prints its seconds (imports before the clock starts: Python's
    start-up is not the transfer) and peak RSS as JSON."""
    import fsspec

    from kdstore.store.remote import PullConfig, PushConfig, pull, push

    t0 = time.perf_counter()
    if kind == "plain-push":
        fs, path = fsspec.core.url_to_fs(url)
        fs.makedirs(path, exist_ok=True)  # the bucket, as kdstore push makes it
        fs.put(store.rstrip("/") + "/", path, recursive=True)
    elif kind == "plain-pull":
        fs, path = fsspec.core.url_to_fs(url)
        fs.get(path.rstrip("/") + "/", out, recursive=True)
    elif kind == "rm":  # the server keeps objects in memory: a round's bucket goes once it is pulled
        fs, path = fsspec.core.url_to_fs(url)
        fs.rm(path.split("/")[0], recursive=True)
    elif kind == "kdstore-push":
        push(PushConfig(store=store, url=url, progress=False))
    else:
        pull(PullConfig(url=url, out=out, progress=False))
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def run(kind: str, store: Path, url: str, out: Path, env: dict) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    proc = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(store), url, str(out)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", type=Path, default=Path("/tmp/kdi/store"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/kd-transfer"))
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "remote_transfer.json"))
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(*args.child)
    if not (args.store / "MANIFEST.json").is_file():
        sys.exit(f"skipped: no store at {args.store} (build it: benchmarks/imagenet_scale.py --stages cache)")
    size = sum(f.stat().st_size for f in args.store.iterdir() if f.is_file())
    port = free_port()
    server = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    load_before = os.getloadavg()
    results: dict[str, list[dict]] = {}
    try:
        time.sleep(2)
        for i, who in enumerate(("plain", "kdstore", "kdstore", "plain")):
            url = f"s3://bench-{who}-{i}/store"
            for step in ("push", "pull"):
                r = run(f"{who}-{step}", args.store, url, args.work / f"{who}-{i}", env)
                r["mb_per_s"] = size / MB / r["seconds"]
                results.setdefault(f"{who}-{step}", []).append(r)
                print(
                    f"{who:8} {step}: {r['mb_per_s']:7.1f} MB/s, {r['seconds']:.1f} s, {r['peak_rss_mib']:,.0f} MiB RSS"
                )
            shutil.rmtree(args.work / f"{who}-{i}", ignore_errors=True)
            run("rm", args.store, url, args.work / "none", env)
    finally:
        server.terminate()
        server.wait()
    summary = {
        step: {
            "kdstore_mb_per_s": [r["mb_per_s"] for r in results[f"kdstore-{step}"]],
            "plain_mb_per_s": [r["mb_per_s"] for r in results[f"plain-{step}"]],
            "ratio": sum(r["mb_per_s"] for r in results[f"kdstore-{step}"])
            / sum(r["mb_per_s"] for r in results[f"plain-{step}"]),
            "kdstore_peak_rss_mib": max(r["peak_rss_mib"] for r in results[f"kdstore-{step}"]),
            "plain_peak_rss_mib": max(r["peak_rss_mib"] for r in results[f"plain-{step}"]),
        }
        for step in ("push", "pull")
    }
    for step, s in summary.items():
        print(f"{step}: kdstore / plain = {s['ratio']:.3f}; peak RSS {s['kdstore_peak_rss_mib']:,.0f} MiB")
    out = {"store": str(args.store), "bytes": size, "runs": results, "summary": summary, **machine_record(load_before)}
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
