#!/usr/bin/env python3
"""The review's isolation scenarios (issue 21), reproduced against a release build of Herald,
each beside a control measured in the same run. Run by hand, never in CI:

    python3 bench/isolation.py            # every scenario, a few minutes
    python3 bench/isolation.py callbacks  # some of them: callbacks, paced, templates,
                                          # slowloris, circuits
    HERALD_BIN=/path/to/herald python3 bench/isolation.py   # another build, e.g. an earlier one

It builds `herald` (release), makes a fresh database per scenario on the PostgreSQL at
127.0.0.1:5432 (user postgres, as `herald dev` finds it), starts `herald serve` or `worker`
with a config of its own, and prints one markdown table. Standard library only.
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# HERALD_BIN: another build to measure (an earlier commit's, say); else this tree's, built here.
BIN = os.environ.get("HERALD_BIN") or os.path.join(ROOT, "target", "release", "herald")
ADMIN = "postgres://postgres@127.0.0.1:5432/postgres"
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # 24 bytes, base64


def psql(sql, db=ADMIN):
    return subprocess.run(["psql", db, "-tAqc", sql], check=True, capture_output=True, text=True).stdout.strip()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Herald:
    """Herald on a fresh database, with `config` (TOML) laid over the defaults: `start` runs
    `herald ROLE` on it (several roles may run side by side)."""

    def __init__(self, name, config):
        self.db = f"iso_{name}_{uuid.uuid4().hex[:6]}"
        psql(f"CREATE DATABASE {self.db}")
        self.url = f"postgres://postgres@127.0.0.1:5432/{self.db}"
        cfg = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
        cfg.write(config)
        cfg.close()
        self.env = dict(os.environ, DATABASE_URL=self.url, HERALD_CONFIG=cfg.name, HERALD__LOG__LEVEL="error")
        subprocess.run([BIN, "migrate"], env=self.env, check=True, capture_output=True)
        self.procs = []
        self.port = None
        self.base = None

    def start(self, role="serve", prlimit=None):
        env = dict(self.env)
        if role != "worker":
            self.port = free_port()
            self.base = f"http://127.0.0.1:{self.port}"
            env["HERALD__SERVER__LISTEN"] = f"127.0.0.1:{self.port}"
        cmd = [BIN, role]
        if prlimit:
            cmd = ["prlimit", f"--nofile={prlimit}"] + cmd
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        if role != "worker":
            deadline = time.time() + 30
            while time.time() < deadline:
                try:
                    if get(self.base + "/readyz", timeout=2)[0] == 200:
                        break
                except OSError:
                    pass
                time.sleep(0.1)
        return self

    def key(self, tenant):
        out = subprocess.run([BIN, "keys", "create", "--tenant", tenant, "--scopes", "send,read,admin"], env=self.env,
                             check=True, capture_output=True, text=True).stdout
        return out.strip().splitlines()[-1]

    def stop(self):
        for proc in self.procs:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        psql(f"DROP DATABASE IF EXISTS {self.db} WITH (FORCE)")


def request(method, url, key=None, body=None, timeout=60):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def get(url, key=None, timeout=60):
    return request("GET", url, key, timeout=timeout)


def sms(text, **extra):
    return dict({"channel": "sms", "to": "+14155550100", "content": {"text": text}}, **extra)


def wait_sent(h, key, ids, patience=120):
    """Accept → sent of each notification (from its own timestamps), once all are sent."""
    deadline = time.time() + patience
    out = {}
    while len(out) < len(ids) and time.time() < deadline:
        for i in ids:
            if i in out:
                continue
            _, n = get(f"{h.base}/v1/notifications/{i}", key)
            sent = [e for e in n.get("events", []) if e["type"] == "attempt" and e.get("status") == "sent"]
            if sent:
                out[i] = iso_seconds(sent[0]["at"]) - iso_seconds(n["created_at"])
        time.sleep(0.05)
    if len(out) < len(ids):
        raise RuntimeError(f"{len(ids) - len(out)} of {len(ids)} never sent")
    return sorted(out.values())


def iso_seconds(ts):
    from datetime import datetime
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def tarpit():
    """A callback receiver that takes connections and never answers."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4096)
    held = []

    def run():
        while True:
            try:
                c, _ = srv.accept()
                held.append(c)
            except OSError:
                return
    threading.Thread(target=run, daemon=True).start()
    return f"http://127.0.0.1:{srv.getsockname()[1]}/hook", held


LOG_SMS = """
[providers.console]
kind = "log"
[channels.sms]
providers = ["console"]
[callbacks]
allow_private_networks = true
signing_secret = "%s"
""" % SECRET


def callbacks():
    """Tenant A's 400 SMS call back to a receiver that never answers; tenant B's 20 SMS."""
    h = Herald("callbacks", LOG_SMS).start()
    try:
        a, b = h.key("a"), h.key("b")
        control = wait_sent(h, b, [request("POST", h.base + "/v1/notifications", b, sms(f"c{i}"))[1]["id"] for i in range(20)])
        url, held = tarpit()
        batch = [sms(f"a{i}", callback_url=url) for i in range(400)]
        request("POST", h.base + "/v1/notifications/batch", a, {"notifications": batch})
        time.sleep(3)
        ids = [request("POST", h.base + "/v1/notifications", b, sms(f"b{i}"))[1]["id"] for i in range(20)]
        loaded = wait_sent(h, b, ids)
        return ("another tenant's SMS, accept → sent, while one tenant's 400 callbacks hang",
                f"max {loaded[-1]:.2f} s ({len(held)} callback connections held by the receiver)",
                f"alone: max {control[-1]:.2f} s", "within 5 s of the control", loaded[-1] - control[-1] <= 5)
    finally:
        h.stop()


def paced():
    """Tenant A's 600 high-priority SMS on a provider paced to 60/s; tenant B's one-time code."""
    cfg = LOG_SMS.replace('kind = "log"', 'kind = "log"\nmax_per_second = 60')
    h = Herald("paced", cfg).start()
    try:
        a, b = h.key("a"), h.key("b")
        control = wait_sent(h, b, [request("POST", h.base + "/v1/notifications", b, sms("code 1"))[1]["id"]])
        batch = [sms(f"a{i}", priority="high") for i in range(600)]
        request("POST", h.base + "/v1/notifications/batch", a, {"notifications": batch})
        time.sleep(1)
        loaded = wait_sent(h, b, [request("POST", h.base + "/v1/notifications", b, sms("code 2"))[1]["id"]])
        return ("another tenant's one-time code behind 600 SMS paced at 60/s",
                f"{loaded[-1]:.2f} s", f"alone: {control[-1]:.2f} s", "within 5 s of the control",
                loaded[-1] - control[-1] <= 5)
    finally:
        h.stop()


def templates():
    """Two concurrent 1,000-item batches of a template whose every text spends its fuel."""
    h = Herald("templates", LOG_SMS.replace('providers = ["console"]', 'providers = ["console"]\n[channels.email]\nproviders = ["console"]')).start()
    try:
        k = h.key("a")
        heavy = "{% for i in range(12000) %}{% endfor %}x"
        request("PUT", h.base + "/v1/templates/heavy", k, {"email": {"subject": heavy, "text": heavy, "html": heavy}})

        def health():
            t0 = time.time()
            get(h.base + "/healthz", timeout=30)
            return time.time() - t0
        idle = max(health() for _ in range(20))
        item = {"channel": "email", "to": "a@example.com", "template": {"name": "heavy"}}
        done = []
        threads = [threading.Thread(target=lambda: done.append(
            request("POST", h.base + "/v1/notifications/batch", k, {"notifications": [item] * 1000}, timeout=300)))
            for _ in range(2)]
        for t in threads:
            t.start()
        worst = 0.0
        while len(done) < 2:
            worst = max(worst, health())
            time.sleep(0.02)
        for t in threads:
            t.join()
        return ("`/healthz` while two 1,000-item batches of fuel-spending templates are accepted",
                f"slowest {worst * 1000:.0f} ms", f"idle: slowest {idle * 1000:.0f} ms", "under 2 s", worst < 2)
    finally:
        h.stop()


def slowloris():
    """1,100 connections that send a header line every second, Herald started at a soft limit of
    1,024 open files (as systemd and many container runtimes start services; the hard limit is
    this machine's)."""
    import resource
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    h = Herald("slowloris", LOG_SMS).start(prlimit=f"1024:{hard}")
    try:
        idle = []
        for _ in range(10):
            t0 = time.time()
            get(h.base + "/healthz", timeout=30)
            idle.append(time.time() - t0)
        socks = []
        for i in range(1100):
            s = socket.create_connection(("127.0.0.1", h.port))
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            socks.append(s)
        worst = 0.0
        end = time.time() + 12
        while time.time() < end:
            for s in socks:
                try:
                    s.sendall(b"X-Slow: y\r\n")
                except OSError:
                    pass
            t0 = time.time()
            get(h.base + "/healthz", timeout=30)
            worst = max(worst, time.time() - t0)
            time.sleep(1)
        open_left = 0
        for s in socks:
            s.setblocking(False)
            try:
                open_left += 0 if s.recv(1) == b"" else 1
            except BlockingIOError:
                open_left += 1
            except OSError:
                pass
            s.close()
        return ("`/healthz` while 1,100 connections trickle header lines (soft RLIMIT_NOFILE 1,024)",
                f"slowest {worst * 1000:.0f} ms; {1100 - open_left} of 1,100 dropped by the header timeout",
                f"idle: slowest {max(idle) * 1000:.0f} ms", "under 2 s", worst < 2)
    finally:
        h.stop()


def circuits():
    """20,000 SMS queued for a provider that refuses connections: row writes per second once
    its circuit is open, over three cool-downs (each ends with a probe)."""
    cfg = f"""
[providers.down]
kind = "twilio"
base_url = "http://127.0.0.1:{free_port()}"
account_sid = "AC00000000000000000000000000000000"
auth_token = "t"
from = "+14155550100"
breaker_cooldown_ms = 10000
[channels.sms]
providers = ["down"]
"""
    h = Herald("circuits", cfg).start("api")
    try:
        k = h.key("a")
        for _ in range(20):
            request("POST", h.base + "/v1/notifications/batch", k, {"notifications": [sms("x")] * 1000})
        h.start("worker")
        # The breaker opens after 5 failures, for a cool-down of 10 s here: measure over three
        # cool-downs, from 12 s after the start (PostgreSQL reports an idle backend's row counts
        # up to 10 s late, so the first claim's writes are counted before the window opens).
        time.sleep(12)

        def writes():
            return int(psql("SELECT sum(n_tup_ins + n_tup_upd + n_tup_del) FROM pg_stat_user_tables", h.url) or 0)
        w0 = writes()
        time.sleep(30)
        rate = (writes() - w0) / 30
        attempts = int(psql("SELECT count(*) FROM notification_events WHERE type = 'attempt'", h.url))
        return ("row writes per second with every circuit open (cool-downs of 10 s), 20,000 SMS queued",
                f"{rate:.0f} rows/s ({attempts} attempts in all)", "—", "under 500 rows/s", rate < 500)
    finally:
        h.stop()


SCENARIOS = {"callbacks": callbacks, "paced": paced, "templates": templates, "slowloris": slowloris,
             "circuits": circuits}


def main():
    wanted = sys.argv[1:] or list(SCENARIOS)
    if not os.environ.get("HERALD_BIN"):
        subprocess.run(["cargo", "build", "--release", "--bin", "herald"], cwd=ROOT, check=True)
    print(f"Herald isolation scenarios: {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    print("| scenario | Herald | control, same run | goal | met |\n| --- | --- | --- | --- | --- |")
    for name in wanted:
        print(f"isolation: {name}", file=sys.stderr)
        try:
            what, got, control, goal, ok = SCENARIOS[name]()
            print(f"| {what} | {got} | {control} | {goal} | {'yes' if ok else 'no'} |", flush=True)
        except Exception as e:  # a failed scenario is a row, the others go on
            print(f"| {name} | failed: {e} | | | no |", flush=True)


if __name__ == "__main__":
    main()
