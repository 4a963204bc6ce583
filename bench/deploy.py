#!/usr/bin/env python3
"""Deployment figures for the README, measured on this machine (run by hand, never in CI):

    cargo build --profile dist --bin herald
    python3 bench/deploy.py [target/dist/herald]

- binary size (the dist profile strips symbols),
- process start -> first 200 from /readyz (median of 5 runs),
- RSS of `herald serve` at idle,
- Lambda `api` cold start: process start -> first event answered, against a fake Runtime API.
Uses the local PostgreSQL (a fresh database, dropped afterwards).
"""
import http.server
import json
import os
import random
import socket
import statistics
import string
import subprocess
import sys
import threading
import time
import urllib.request

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/dist/herald"
DB = "herald_deploy_" + "".join(random.choices(string.ascii_lowercase, k=6))
DB_URL = f"postgres:///{DB}?host=/var/run/postgresql&user=root"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def env(extra=None):
    e = dict(os.environ, DATABASE_URL=DB_URL, RUST_LOG="warn")
    e.pop("HERALD_CONFIG", None)
    e.update(extra or {})
    return e


def start_to_ready():
    port = free_port()
    t0 = time.perf_counter()
    p = subprocess.Popen([BIN, "serve"], env=env({"HERALD__SERVER__LISTEN": f"127.0.0.1:{port}"}),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    break
        except Exception:
            time.sleep(0.002)
    took = time.perf_counter() - t0
    return p, took


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Runtime(http.server.BaseHTTPRequestHandler):
    event = None
    answered = None

    def log_message(self, *a):
        pass

    def do_GET(self):  # /next
        cls = type(self)
        while cls.event is None:
            time.sleep(0.001)
        body, cls.event = cls.event, None
        self.send_response(200)
        self.send_header("Lambda-Runtime-Aws-Request-Id", "req-1")
        self.send_header("Lambda-Runtime-Deadline-Ms", str(int(time.time() * 1000) + 30000))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # /response or /error
        n = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(n)
        self.send_response(202)
        self.end_headers()
        type(self).answered = time.perf_counter()


def lambda_cold_start():
    # A handler class per run: a blocked /next of the previous process must not take this event.
    handler = type("RuntimeRun", (Runtime,), {"event": None, "answered": None})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    event = {"version": "2.0", "routeKey": "$default", "rawPath": "/healthz", "rawQueryString": "", "headers": {"host": "x"},
             "requestContext": {"http": {"method": "GET", "path": "/healthz", "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1", "userAgent": "b"},
                                "requestId": "r", "routeKey": "$default", "stage": "$default", "accountId": "a", "apiId": "x",
                                "domainName": "x", "domainPrefix": "x", "time": "01/Jan/2026:00:00:00 +0000", "timeEpoch": 0},
             "isBase64Encoded": False}
    handler.event = json.dumps(event).encode()
    t0 = time.perf_counter()
    p = subprocess.Popen([BIN], env=env({"AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{server.server_address[1]}",
                                          "AWS_LAMBDA_FUNCTION_NAME": "herald", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
                                          "AWS_LAMBDA_FUNCTION_VERSION": "1", "HERALD_LAMBDA_ROLE": "api"}),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while handler.answered is None:
        time.sleep(0.0005)
    took = handler.answered - t0
    p.kill()
    p.wait()
    server.shutdown()
    return took


def main():
    subprocess.run(["su", "postgres", "-c", f"createdb -O root {DB}"], check=True)
    try:
        subprocess.run([BIN, "migrate"], env=env(), check=True, stdout=subprocess.DEVNULL)
        size = os.path.getsize(BIN)
        ready = []
        for _ in range(5):
            p, took = start_to_ready()
            ready.append(took)
            if len(ready) < 5:
                p.kill()
                p.wait()
        time.sleep(2)
        rss = rss_kib(p.pid)
        p.kill()
        p.wait()
        cold = [lambda_cold_start() for _ in range(5)]
        print(f"binary ({BIN}): {size / 1e6:.1f} MB")
        print(f"start -> /readyz 200: median {statistics.median(ready) * 1000:.0f} ms (min {min(ready) * 1000:.0f}, max {max(ready) * 1000:.0f})")
        print(f"RSS of `herald serve` at idle: {rss / 1024:.1f} MiB")
        print(f"Lambda api cold start (spawn -> first event answered): median {statistics.median(cold) * 1000:.0f} ms (min {min(cold) * 1000:.0f}, max {max(cold) * 1000:.0f})")
    finally:
        subprocess.run(["su", "postgres", "-c", f"dropdb --force {DB}"])


main()
