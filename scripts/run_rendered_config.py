"""Runs every ferry container of rendered manifests through the real binary; run by
scripts/check-manifests.

    run_rendered_config.py FERRY_BIN FILE...

For each container of a Deployment, StatefulSet, Job or Pod whose image is ferry's, it takes the
container's exact command, args and env and runs `ferry <role> ... --check-config`: clap parses
every flag and variable, the role checks its settings as at start-up, refuses FERRY_* variables
no flag reads, and connects to NATS. What only a cluster supplies is filled in: Secrets and
ConfigMaps from the same rendered output when they are there, else a placeholder; field
references with the pod's namespace and a name; files mounted from volumes with placeholder
content (real ones from `ferry nats-auth` for the keys of its Secret: each role's .creds,
account-signing.nk). NATS is a nats-server started here on 127.0.0.1 — one open, and one with
the `ferry nats-auth` server.conf for containers given a .creds file, so their credentials must
be accepted — and listen addresses are moved to 127.0.0.1. That server is one node, so it holds
one replica of each stream: a replica count the chart renders is checked to be one the flag
takes (1 to 5), then given as 1. Every FILE must hold at least one
ferry container.
"""

import base64
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
# Values a cluster would supply from a Secret the rendered output does not hold.
SECRET_PLACEHOLDERS = {"FERRY_API_KEYS": "placeholder-key-0123456789abcdef=team-a"}
# The volume of the key ring (operator, gateway, dispatcher) and a file of one random key.
SEAL_KEY_VOLUME = "seal-key"
SEAL_KEY_FILE = base64.b64encode(os.urandom(32)) + b"\n"
NATS_URL_VARIABLE = "FERRY_NATS_URL"
NATS_CREDS_VARIABLE = "FERRY_NATS_CREDS_FILE"
NATS_REPLICAS_VARIABLE = "FERRY_NATS_REPLICAS"


def load_documents(path):
    with open(path) as file:
        return [doc for doc in yaml.safe_load_all(file) if doc]


def pod_spec(doc):
    if doc.get("kind") == "Pod":
        return doc.get("spec", {})
    if doc.get("kind") in POD_KINDS:
        return doc.get("spec", {}).get("template", {}).get("spec", {})
    return None


def is_ferry_image(image):
    name = image.split("@", 1)[0].rsplit("/", 1)[-1].split(":", 1)[0]
    return name == "ferry"


def stored_values(docs):
    """Secret and ConfigMap keys of the rendered output: {(kind, namespace, name): {key: value}}."""
    stored = {}
    for doc in docs:
        kind, meta = doc.get("kind"), doc.get("metadata", {})
        key = (kind, meta.get("namespace", "default"), meta.get("name"))
        if kind == "Secret":
            values = {k: base64.b64decode(v).decode() for k, v in (doc.get("data") or {}).items()}
            values.update(doc.get("stringData") or {})
            stored[key] = values
        elif kind == "ConfigMap":
            stored[key] = dict(doc.get("data") or {})
    return stored


class Resolver:
    def __init__(self, stored, namespace, pod_name, files):
        self.stored, self.namespace, self.pod_name, self.files = stored, namespace, pod_name, files

    def value(self, name, source):
        if "secretKeyRef" in source or "configMapKeyRef" in source:
            kind = "Secret" if "secretKeyRef" in source else "ConfigMap"
            ref = source.get("secretKeyRef") or source.get("configMapKeyRef")
            values = self.stored.get((kind, self.namespace, ref["name"]))
            if values is not None and ref["key"] in values:
                return values[ref["key"]]
            return SECRET_PLACEHOLDERS.get(name, "placeholder")
        if "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            return {"metadata.namespace": self.namespace, "metadata.name": self.pod_name}.get(
                path, "placeholder"
            )
        if "resourceFieldRef" in source:
            return "1"
        raise ValueError(f"{name}: unknown valueFrom {source}")


def local_address(value):
    """host:port → 127.0.0.1:port, for listen addresses."""
    _, _, port = value.rpartition(":")
    return f"127.0.0.1:{port}"


def container_env(container, resolver, nats_url):
    env = {}
    for var in container.get("env") or []:
        name = var["name"]
        if "value" in var:
            env[name] = str(var["value"])
        elif "valueFrom" in var:
            env[name] = resolver.value(name, var["valueFrom"])
        else:
            env[name] = ""
    for name, value in env.items():
        if name == NATS_URL_VARIABLE:
            env[name] = nats_url
        elif name == NATS_REPLICAS_VARIABLE:
            if value not in {"1", "2", "3", "4", "5"}:
                raise SystemExit(f"{name}={value!r}: not a replica count from 1 to 5")
            env[name] = "1"
        elif name.endswith("_LISTEN"):
            env[name] = local_address(value)
        else:
            env[name] = resolver.files.local_path(value)
    return env


def container_argv(container, nats_url):
    """The role and flags: the container's command after `ferry`, then its args."""
    command = list(container.get("command") or [])
    if command and Path(command[0]).name == "ferry":
        command = command[1:]
    argv = command + [str(arg) for arg in container.get("args") or []]
    rewritten = []
    for index, arg in enumerate(argv):
        previous = argv[index - 1] if index else ""
        if previous == "--nats-url":
            arg = nats_url
        elif previous.endswith("-listen"):
            arg = local_address(arg)
        elif arg.startswith("--nats-url="):
            arg = f"--nats-url={nats_url}"
        rewritten.append(arg)
    return rewritten


class MountedFiles:
    """Volume mounts of one container, backed by a temporary directory with placeholder files."""

    def __init__(self, root, container, volumes, placeholders):
        self.mounts = {}
        by_name = {volume["name"]: volume for volume in volumes}
        for mount in container.get("volumeMounts") or []:
            local = Path(root) / mount["name"]
            local.mkdir(parents=True, exist_ok=True)
            volume = by_name.get(mount["name"], {})
            source = volume.get("secret") or volume.get("configMap") or {}
            for item in source.get("items") or []:
                # The key ring's volume gets a random key; other keys their placeholders.
                content = SEAL_KEY_FILE if mount["name"] == SEAL_KEY_VOLUME else placeholders.content(item["key"])
                (local / item["path"]).write_bytes(content)
            self.mounts[mount["mountPath"].rstrip("/")] = local

    def local_path(self, value):
        for mount_path, local in self.mounts.items():
            if value == mount_path or value.startswith(mount_path + "/"):
                return str(local) + value[len(mount_path) :]
        return value


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_nats(store, config=None):
    port = free_port()
    server = subprocess.Popen(
        ["nats-server", "--jetstream", "--addr", "127.0.0.1", "--port", str(port), "--store_dir", store]
        + (["--config", config] if config else []),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server, f"nats://127.0.0.1:{port}"
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("nats-server did not start")
            time.sleep(0.1)


class Placeholders:
    """What stands in for a mounted Secret key: `ferry nats-auth` output for its keys, a
    throwaway private key for *.key, a throwaway PEM certificate for anything else."""

    def __init__(self, ferry, directory):
        self.nats_auth = Path(directory) / "nats-auth"
        self.nats_auth.mkdir()
        subprocess.run([ferry, "nats-auth", "--out", str(self.nats_auth)], check=True, capture_output=True)
        cert, key = Path(directory) / "cert.pem", Path(directory) / "key.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-subj", "/CN=placeholder", "-days", "1", "-keyout", str(key), "-out", str(cert)],
            check=True,
            capture_output=True,
        )
        self.cert, self.key = cert.read_bytes(), key.read_bytes()

    def server_config(self):
        return str(self.nats_auth / "server.conf")

    def content(self, key):
        generated = self.nats_auth / key
        if generated.is_file():
            return generated.read_bytes()
        return self.key if key.endswith(".key") else self.cert


def check_file(ferry, path, nats_urls, placeholders, work):
    docs = load_documents(path)
    stored = stored_values(docs)
    failures, checked = 0, 0
    for doc in docs:
        spec = pod_spec(doc)
        if spec is None:
            continue
        meta = doc.get("metadata", {})
        namespace = meta.get("namespace", "default")
        for container in (spec.get("initContainers") or []) + (spec.get("containers") or []):
            if not is_ferry_image(container.get("image", "")):
                continue
            where = f"{Path(path).name}: {doc['kind']}/{meta.get('name')} container {container['name']}"
            files = MountedFiles(tempfile.mkdtemp(dir=work), container, spec.get("volumes") or [], placeholders)
            resolver = Resolver(stored, namespace, f"{meta.get('name')}-0", files)
            with_creds = any(var["name"] == NATS_CREDS_VARIABLE for var in container.get("env") or [])
            nats_url = nats_urls["auth" if with_creds else "open"]
            env = container_env(container, resolver, nats_url)
            argv = container_argv(container, nats_url) + ["--check-config"]
            result = subprocess.run([ferry, *argv], env=env, capture_output=True, text=True, timeout=120)
            checked += 1
            if result.returncode == 0:
                print(f"ok   {where}: ferry {' '.join(argv)}")
            else:
                failures += 1
                print(f"FAIL {where}: ferry {' '.join(argv)} exited {result.returncode}")
                print("     env: " + " ".join(f"{k}={v}" for k, v in sorted(env.items())))
                print("     " + result.stderr.strip().replace("\n", "\n     "))
    if checked == 0:
        print(f"FAIL {path}: no ferry container found")
        failures += 1
    return failures


def main():
    ferry, files = sys.argv[1], sys.argv[2:]
    work = tempfile.mkdtemp()
    servers, nats_urls = [], {}
    try:
        placeholders = Placeholders(ferry, work)
        for kind, config in [("open", None), ("auth", placeholders.server_config())]:
            server, nats_urls[kind] = start_nats(os.path.join(work, f"jetstream-{kind}"), config)
            servers.append(server)
        failures = sum(check_file(ferry, path, nats_urls, placeholders, work) for path in files)
    finally:
        for server in servers:
            server.terminate()
            server.wait()
        shutil.rmtree(work, ignore_errors=True)
    if failures:
        sys.exit(f"{failures} ferry container(s) would not start on their rendered config")


if __name__ == "__main__":
    main()
