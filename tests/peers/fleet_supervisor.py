"""Ties the fake (kwok) pods of a dedup2d fleet to real local processes, the way a kubelet would:
one process per Deployment, (re)started whenever the Deployment's pod template changes.

  worker Deployment on --legacy-image  -> the Python legacy arq worker (legacy_worker.py)
  worker Deployment on any other image -> `dedup2d worker`
  API Deployment                       -> `dedup2d api` on a fresh loopback port

Each process gets the environment a container would: the ConfigMap's data as read at start
(envFrom), the --env pairs (the Secret and the shared upload volume), HOSTNAME and a loopback
listen address. A swap starts the new process first, then SIGTERMs the old one (a surge of one).
An API restart waits until the new process is ready, then points DIR/api.url at it (the
Service), then stops the old one, so clients that read the file never lose a request.

usage: fleet_supervisor.py --namespace NS --dedup2d BIN --legacy-image IMAGE --api DEPLOY
         --worker DEPLOY [--worker DEPLOY ...] --configmap NAME --dir DIR
         [--env K=V ...] [--kubectl PATH] [--python PY] [--die-with-parent]

DIR gets: api.url, events.jsonl (one line per process started/stopped/crashed), pids.json (the
running children), legacy-received.jsonl (what the legacy workers were handed), logs/<process>.log.
Human lines ("dedup2d-worker: legacy worker pid 1 -> dedup2d worker pid 2") go to stdout.
SIGTERM/SIGINT stop every child, then the supervisor.
"""
import argparse
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

PR_SET_PDEATHSIG = 1
HERE = os.path.dirname(os.path.abspath(__file__))
STOP_GRACE_S = 30


def die_with_parent(sig=signal.SIGTERM):
    """Linux: get `sig` when the thread that started this process ends."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_atomic(path, text):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


class Proc:
    def __init__(self, deployment, kind, popen, template_key, info):
        self.deployment, self.kind, self.popen = deployment, kind, popen
        self.template_key, self.info = template_key, info
        self.stopping = False

    @property
    def pid(self):
        return self.popen.pid


class Supervisor:
    def __init__(self, a):
        self.a = a
        self.lock = threading.RLock()
        self.procs = {}  # deployment -> Proc (the current one)
        self.stopping = []  # Procs being stopped
        self.seq = 0
        self.shutdown = False
        os.makedirs(os.path.join(a.dir, "logs"), exist_ok=True)
        self.extra_env = dict(kv.split("=", 1) for kv in a.env)

    # ---- reporting --------------------------------------------------------------------------
    def event(self, action, p, **more):
        rec = {"at": time.time(), "action": action, "deployment": p.deployment, "process": p.kind, "pid": p.pid}
        rec.update(p.info)
        rec.update(more)
        with open(os.path.join(self.a.dir, "events.jsonl"), "a") as f:
            f.write(json.dumps(rec) + "\n")

    def say(self, text):
        print(f"[fleet {time.strftime('%H:%M:%S')}] {text}", flush=True)

    def write_pids(self):
        pids = {p.deployment: p.pid for p in self.procs.values()}
        pids.update({f"{p.deployment} (stopping)": p.pid for p in self.stopping})
        write_atomic(os.path.join(self.a.dir, "pids.json"), json.dumps(pids))

    # ---- Kubernetes ---------------------------------------------------------------------------
    def kubectl(self, *args):
        return [self.a.kubectl, "--namespace", self.a.namespace, *args]

    def configmap(self):
        out = subprocess.run(self.kubectl("get", "configmap", self.a.configmap, "-o", "json"),
                             capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            raise RuntimeError(f"reading ConfigMap {self.a.configmap}: {out.stderr.strip()}")
        return json.loads(out.stdout).get("data") or {}

    # ---- processes ----------------------------------------------------------------------------
    def spawn(self, deployment, kind, template_key, image):
        cm = self.configmap()
        self.seq += 1
        name = f"{deployment}-{self.seq}"
        env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TZ") if k in os.environ}
        env.update(cm)
        env.update(self.extra_env)
        env.update({"HOSTNAME": name, "RUST_LOG": "info", "DEDUP2D_LOG_FORMAT": "text", "NO_COLOR": "1",
                    "PYTHONUNBUFFERED": "1"})
        info = {"image": image, "name": name}
        if kind == "legacy-worker":
            prefix = cm.get("DEDUP2D_REDIS_KEY_PREFIX", "").strip() or "dedup2d"
            queue = cm.get("DEDUP2D_ARQ_QUEUE_NAME", "").strip() or f"{prefix}:queue"
            cmd = [self.a.python, os.path.join(HERE, "legacy_worker.py"),
                   cm.get("DEDUP2D_REDIS_URL", "redis://127.0.0.1:6379/0"), queue, prefix,
                   "--received-log", os.path.join(self.a.dir, "legacy-received.jsonl"), "--completion-wait", "20"]
        elif kind == "dedup2d-worker":
            port = free_port()
            env["DEDUP2D_WORKER_METRICS_ADDR"] = f"127.0.0.1:{port}"
            env.setdefault("DEDUP2D_WORKER_POLL_INTERVAL_MS", "100")
            info["metrics"] = f"http://127.0.0.1:{port}/metrics"
            cmd = [self.a.dedup2d, "worker"]
        else:
            port = free_port()
            env["DEDUP2D_API_LISTEN"] = f"127.0.0.1:{port}"
            info["url"] = f"http://127.0.0.1:{port}"
            info["include_b64"] = cm.get("DEDUP2D_JOB_PAYLOAD_INCLUDE_BYTES_B64", "")
            info["b64_max_bytes"] = cm.get("DEDUP2D_JOB_PAYLOAD_BYTES_B64_MAX_BYTES", "")
            cmd = [self.a.dedup2d, "api"]
        log = open(os.path.join(self.a.dir, "logs", f"{name}.log"), "ab")
        popen = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                 preexec_fn=die_with_parent, cwd=self.a.dir)
        log.close()
        info["log"] = os.path.join(self.a.dir, "logs", f"{name}.log")
        p = Proc(deployment, kind, popen, template_key, info)
        self.event("started", p)
        return p

    def wait_ready(self, p, timeout=30):
        url = p.info.get("url")
        if not url:
            return True
        deadline = time.time() + timeout
        while time.time() < deadline:
            if p.popen.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{url}/readyz", timeout=2) as r:
                    if r.status == 200:
                        return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def stop(self, p, wait=False):
        p.stopping = True
        with self.lock:
            self.stopping.append(p)
            self.write_pids()

        def run():
            if p.popen.poll() is None:
                p.popen.send_signal(signal.SIGTERM)
                try:
                    p.popen.wait(STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    p.popen.kill()
                    p.popen.wait()
            self.event("stopped", p, returncode=p.popen.returncode)
            with self.lock:
                self.stopping.remove(p)
                self.write_pids()

        t = threading.Thread(target=run)
        t.start()
        if wait:
            t.join()
        return t

    def describe(self, p):
        what = {"legacy-worker": "legacy worker", "dedup2d-worker": "dedup2d worker", "api": "dedup2d api"}[p.kind]
        extra = ""
        if p.kind == "api":
            extra = f" at {p.info['url']}, DEDUP2D_JOB_PAYLOAD_INCLUDE_BYTES_B64={p.info['include_b64']}"
        return f"{what} pid {p.pid}{extra}"

    def reconcile(self, deployment, template):
        key = json.dumps(template, sort_keys=True)
        containers = (template.get("spec") or {}).get("containers") or [{}]
        image = containers[0].get("image", "")
        with self.lock:
            if self.shutdown:
                return
            old = self.procs.get(deployment)
            if old is not None and old.template_key == key:
                return
            if deployment == self.a.api:
                kind = "api"
            else:
                kind = "legacy-worker" if image == self.a.legacy_image else "dedup2d-worker"
            new = self.spawn(deployment, kind, key, image)
            if not self.wait_ready(new):
                self.say(f"{deployment}: {self.describe(new)} did not become ready; see {new.info['log']}")
            if kind == "api":
                write_atomic(os.path.join(self.a.dir, "api.url"), new.info["url"])
            self.procs[deployment] = new
            self.write_pids()
            if old is None:
                self.say(f"{deployment}: {self.describe(new)} ({image})")
            else:
                self.say(f"{deployment}: {self.describe(old)} -> {self.describe(new)} ({image})")
                self.stop(old)

    def forget(self, deployment):
        with self.lock:
            p = self.procs.pop(deployment, None)
            if p:
                self.say(f"{deployment}: Deployment deleted; stopping {self.describe(p)}")
                self.stop(p)

    def monitor(self):
        """Restarts a current process that exited on its own (a crash), like a kubelet."""
        while not self.shutdown:
            time.sleep(0.5)
            crashed = []
            with self.lock:
                for dep, p in list(self.procs.items()):
                    if self.shutdown or p.popen.poll() is None:
                        continue
                    self.event("crashed", p, returncode=p.popen.returncode)
                    self.say(f"{dep}: {self.describe(p)} exited with {p.popen.returncode}; restarting (log {p.info['log']})")
                    del self.procs[dep]
                    crashed.append((dep, json.loads(p.template_key)))
            if crashed:
                time.sleep(1)
            for dep, template in crashed:
                with self.lock:
                    if dep in self.procs:  # a template change started one meanwhile
                        continue
                try:
                    self.reconcile(dep, template)
                except Exception as e:
                    self.say(f"{dep}: cannot restart its process: {e}")

    # ---- the watch ----------------------------------------------------------------------------
    def watch(self):
        wanted = set(self.a.worker) | {self.a.api}
        decoder = json.JSONDecoder()
        while not self.shutdown:
            proc = subprocess.Popen(self.kubectl("get", "deployments", "-o", "json", "--watch", "--output-watch-events"),
                                    stdout=subprocess.PIPE, stderr=open(os.path.join(self.a.dir, "logs", "kubectl-watch.log"), "ab"),
                                    text=True, preexec_fn=die_with_parent)
            self.watcher = proc
            buf = ""
            for chunk in iter(lambda: proc.stdout.readline(), ""):
                buf += chunk
                while True:
                    buf = buf.lstrip()
                    try:
                        ev, end = decoder.raw_decode(buf)
                    except json.JSONDecodeError:
                        break
                    buf = buf[end:]
                    obj = ev.get("object") or {}
                    name = (obj.get("metadata") or {}).get("name")
                    if name not in wanted:
                        continue
                    if ev.get("type") == "DELETED":
                        self.forget(name)
                    else:
                        try:
                            self.reconcile(name, (obj.get("spec") or {}).get("template") or {})
                        except Exception as e:  # a ConfigMap read failing: the next event retries
                            self.say(f"{name}: cannot start its process: {e}")
            proc.wait()
            if not self.shutdown:
                time.sleep(1)  # the watch ended (timeout, API server restart): start it again

    def stop_all(self, *_):
        with self.lock:
            if self.shutdown:
                return
            self.shutdown = True
            procs = list(self.procs.values())
            self.procs.clear()
        w = getattr(self, "watcher", None)
        if w and w.poll() is None:
            w.terminate()
        for t in [self.stop(p) for p in procs]:
            t.join()
        self.say("every process stopped")
        os._exit(0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--namespace", required=True)
    ap.add_argument("--dedup2d", required=True)
    ap.add_argument("--legacy-image", required=True)
    ap.add_argument("--api", required=True)
    ap.add_argument("--worker", action="append", required=True)
    ap.add_argument("--configmap", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--env", action="append", default=[])
    ap.add_argument("--kubectl", default="kubectl")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--die-with-parent", action="store_true")
    a = ap.parse_args()
    a.dir = os.path.abspath(a.dir)
    if a.die_with_parent:
        die_with_parent()
    s = Supervisor(a)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=s.stop_all).start())
    signal.signal(signal.SIGINT, lambda *_: threading.Thread(target=s.stop_all).start())
    threading.Thread(target=s.monitor, daemon=True).start()
    s.watch()


if __name__ == "__main__":
    main()
