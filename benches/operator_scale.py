"""Scale benchmark of `ferry operator`: creates N ModelEndpoints (default 1,000) against the
stand-in API server (tests/it/support/kube_apiserver.py, playing the Deployment controller too)
and a real nats-server, all on 127.0.0.1, and reports the time until every endpoint is READY, the
operator's peak RSS, and its reconcile counts and latencies from /metrics.

    cargo build --release
    python3 benches/operator_scale.py [--endpoints 1000] [--ferry target/release/ferry]

Needs nats-server and kmock (scripts/setup installs both) and aiohttp (a kmock dependency).
The stand-in API server is single-threaded Python: it is part of what the time measures.
"""

import argparse
import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import aiohttp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMESPACE = "bench"
BASE = f"/apis/ferry.dev/v1alpha1/namespaces/{NAMESPACE}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> tuple[int, int]:
    """(current RSS, peak RSS) of a process in KiB."""
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def start_nats(store: str) -> tuple[subprocess.Popen, str]:
    nats = shutil.which("nats-server")
    if nats is None:
        sys.exit("nats-server not found: run scripts/setup and add its output to PATH")
    port = free_port()
    process = subprocess.Popen(
        [nats, "--jetstream", "--addr", "127.0.0.1", "--port", str(port), "--store_dir", store],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return process, f"nats://127.0.0.1:{port}"


def start_api_server() -> tuple[subprocess.Popen, str]:
    script = os.path.join(ROOT, "tests", "it", "support", "kube_apiserver.py")
    process = subprocess.Popen(
        [sys.executable, script, "--ready-deployments"], stdout=subprocess.PIPE, text=True
    )
    line = process.stdout.readline()
    if not line.startswith("listening on "):
        sys.exit(f"the stand-in API server did not start: {line!r}")
    return process, line.removeprefix("listening on ").strip()


def endpoint(index: int) -> dict:
    return {
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "ModelEndpoint",
        "metadata": {"name": f"bench-{index:04d}", "namespace": NAMESPACE},
        "spec": {
            "bundle": "bench-model",
            "endpointType": "async",
            "minWorkers": 1,
            "maxWorkers": 2,
            "labels": {"team": "bench", "product": "scale"},
        },
    }


BUNDLE = {
    "apiVersion": "ferry.dev/v1alpha1",
    "kind": "ModelBundle",
    "metadata": {"name": "bench-model", "namespace": NAMESPACE},
    "spec": {"image": "registry.local/model:1", "command": ["python3", "serve.py"]},
}


async def create_all(session: aiohttp.ClientSession, api: str, count: int) -> None:
    async with session.post(f"{api}{BASE}/modelbundles", json=BUNDLE) as response:
        response.raise_for_status()
    limit = asyncio.Semaphore(16)

    async def create(index: int) -> None:
        async with limit:
            async with session.post(f"{api}{BASE}/modelendpoints", json=endpoint(index)) as r:
                r.raise_for_status()

    await asyncio.gather(*(create(i) for i in range(count)))


async def count_ready(session: aiohttp.ClientSession, api: str) -> tuple[int, int]:
    async with session.get(f"{api}{BASE}/modelendpoints") as response:
        items = (await response.json())["items"]
    ready = sum(
        1
        for item in items
        if item.get("status", {}).get("state") == "READY"
        and item["status"].get("observedGeneration") == item["metadata"].get("generation")
    )
    return ready, len(items)


def histogram_quantile(metrics: str, name: str, quantile: float) -> float | None:
    buckets = [
        (float("inf") if le == "+Inf" else float(le), float(count))
        for le, count in re.findall(rf'{name}_bucket\{{le="([^"]+)"\}} (\S+)', metrics)
    ]
    if not buckets:
        return None
    total = buckets[-1][1]
    for le, count in buckets:
        if count >= quantile * total:
            return le
    return None


async def run(args: argparse.Namespace) -> None:
    store = tempfile.mkdtemp(prefix="ferry-bench-nats-")
    nats, nats_url = start_nats(store)
    api_server, api = start_api_server()
    kubeconfig = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    kubeconfig.write(
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: bench\n  cluster: {{server: \"{api}\"}}\n"
        "users:\n- name: bench\n  user: {}\n"
        "contexts:\n- name: bench\n  context: {cluster: bench, user: bench, namespace: default}\n"
        "current-context: bench\n"
    )
    kubeconfig.close()
    admin = f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "KUBECONFIG": kubeconfig.name,
        "FERRY_NATS_URL": nats_url,
        "FERRY_FORWARDER_IMAGE": "registry.local/ferry:bench",
        "FERRY_ADMIN_LISTEN": admin,
        "FERRY_RECONCILE_CONCURRENCY": str(args.concurrency),
        "RUST_LOG": os.environ.get("RUST_LOG", "warn"),
    }
    operator = subprocess.Popen([args.ferry, "operator"], env=env)
    peak_sampled = 0
    try:
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 30
            while True:
                try:
                    async with session.get(f"http://{admin}/metrics") as response:
                        if "ferry_controller_leader 1" in await response.text():
                            break
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    sys.exit("the operator did not start leading within 30 s")
                await asyncio.sleep(0.1)
            idle_rss, _ = rss_kib(operator.pid)
            print("the operator leads; creating endpoints", flush=True)

            started = time.monotonic()
            await create_all(session, api, args.endpoints)
            created = time.monotonic() - started
            ready = total = 0
            print(f"created {args.endpoints} endpoints in {created:.2f} s", flush=True)
            last_report = time.monotonic()
            while True:
                current, _ = rss_kib(operator.pid)
                peak_sampled = max(peak_sampled, current)
                ready, total = await count_ready(session, api)
                if ready == args.endpoints:
                    break
                if time.monotonic() - started > args.timeout:
                    break
                if time.monotonic() - last_report > 5:
                    last_report = time.monotonic()
                    print(f"  {ready}/{total} READY after {last_report - started:.0f} s", flush=True)
                await asyncio.sleep(1)  # listing 1,000 objects loads the stand-in too
            steady = time.monotonic() - started
            await asyncio.sleep(2)  # let in-flight reconciles settle before reading metrics
            async with session.get(f"http://{admin}/metrics") as response:
                metrics = await response.text()
        _, peak = rss_kib(operator.pid)
        reconciles = re.search(r"ferry_controller_reconciles_total (\S+)", metrics)
        errors = re.findall(r'ferry_controller_reconcile_errors_total\{reason="([^"]+)"\} (\S+)', metrics)
        name = "ferry_controller_reconcile_duration_seconds"
        print(f"endpoints            {args.endpoints} (concurrency {args.concurrency})")
        print(f"created in           {created:.2f} s")
        print(f"READY                {ready}/{total}")
        print(f"time to steady state {steady:.2f} s (from the first create to all READY)")
        print(f"operator RSS         idle {idle_rss / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB (VmHWM)")
        print(f"reconciles           {reconciles.group(1) if reconciles else '?'}")
        print(f"reconcile errors     {errors or 'none'}")
        for q in (0.5, 0.99):
            print(f"reconcile p{int(q * 100):<2}        <= {histogram_quantile(metrics, name, q)} s (bucket bound, API and NATS calls included)")
        if ready != args.endpoints:
            sys.exit(1)
    finally:
        for process in (operator, api_server, nats):  # the operator first: it releases its Lease
            process.terminate()
            process.wait(timeout=30)
        os.unlink(kubeconfig.name)
        shutil.rmtree(store, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoints", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--ferry", default=os.path.join(ROOT, "target", "release", "ferry"))
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
