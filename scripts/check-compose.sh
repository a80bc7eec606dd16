#!/usr/bin/env bash
# Checks the container files (Dockerfile, .dockerignore, compose/) against the code, without a
# Docker engine (CI has none; neither does a developer machine, necessarily):
#
#   1. Every YAML file under compose/ parses (duplicate keys are errors, as in Compose), and so
#      does every dashboard JSON.
#   2. The Dockerfile: every COPY source exists and is not excluded by .dockerignore; its BINS are
#      exactly the workspace's bin targets (`cargo metadata`); the Rust image is at least the
#      workspace's rust-version; the final stage runs as a non-root user under tini; and its
#      `cargo build` line runs as a plain command. It runs in the dev profile (`--release`
#      dropped): the point is that the command line, --locked included, is right, and the dev
#      build is the one scripts/test.sh has already made, so this step takes seconds instead
#      of a second full release build on a 2-core machine.
#   3. The compose file: every binary a service runs is a workspace bin target that the image
#      carries; every `cls <subcommand>` exists (`cls <subcommand> --help`); every CLS_* variable
#      it sets is one the code reads; every service binary gets the secrets Settings requires
#      and no other (least privilege), and binds its listeners on 0.0.0.0 (a 127.0.0.1 bind is unreachable from other
#      containers); healthchecks probe the ops port the service listens on; replicas are
#      variables; every bind-mounted file exists; every ${VAR} it uses is listed in .env.example
#      (and every entry there is used), with the secrets left empty.
#   4. Prometheus scrapes every CLS service by DNS service discovery on its ops port; HAProxy
#      targets the gateway's ports.
#   5. The Grafana dashboard: every metric it queries is registered in the Rust code (the name
#      without `cls_` and `_total`/`_bucket`/`_sum`/`_count`), every label it groups or filters by
#      is one the code sets, every job it filters on is a Prometheus job, and every datasource
#      uid is the provisioned one.
#
# Usage: bash scripts/check-compose.sh [-v]   (-v lists every check, not only failures; exit 1 on
# any failure)
# Needs python3 with PyYAML; without it, PyYAML is installed into a venv at target/py.
set -euo pipefail
cd "$(dirname "$0")/.."

python=python3
if ! python3 -c 'import yaml' 2>/dev/null; then
  python=target/py/bin/python
  if ! "$python" -c 'import yaml' 2>/dev/null; then
    echo "PyYAML is missing: installing it into a venv at target/py"
    if ! { python3 -m venv target/py && target/py/bin/pip install --quiet pyyaml; } </dev/null; then
      echo "error: cannot install PyYAML into target/py (on Debian: apt-get install python3-venv, or python3-yaml)" >&2
      exit 1
    fi
  fi
fi

exec "$python" - "$@" <<'PY'
import fnmatch
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import time

import yaml

ROOT = pathlib.Path.cwd()
COMPOSE_DIR = ROOT / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
ENV_EXAMPLE = COMPOSE_DIR / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PROMETHEUS = COMPOSE_DIR / "prometheus" / "prometheus.yml"
HAPROXY = COMPOSE_DIR / "haproxy" / "haproxy.cfg"
DATASOURCES = COMPOSE_DIR / "grafana" / "provisioning" / "datasources"
DASHBOARDS = COMPOSE_DIR / "grafana" / "dashboards"
# The port every CLS container serves its ops listener on (CLS_OPS_ADDR in the compose file).
# The secrets each binary's Settings requires (ServiceKind::seals_outcomes / speaks_to_query);
# least privilege: no service gets one it does not use.
SECRETS = ("CLS_SECRET_KEY", "CLS_SECRET_KEY_PREVIOUS", "CLS_INTERNAL_TOKEN")
SECRETS_REQUIRED_BY_SETTINGS = {
    "cls-gateway": ("CLS_INTERNAL_TOKEN",),
    "cls-query": ("CLS_SECRET_KEY", "CLS_INTERNAL_TOKEN"),
    "cls-brands-worker": ("CLS_SECRET_KEY",),
    "cls-licenses-worker": ("CLS_SECRET_KEY",),
    "cls-activations-worker": ("CLS_SECRET_KEY",),
}
# Which variable holds a service binary's listening addresses (their defaults are 127.0.0.1).
LISTEN_VARS = {"cls-gateway": ("CLS_HTTP_ADDR",), "cls-query": ("CLS_QUERY_ADDR",)}

failures = []
passed = 0
started = time.monotonic()
verbose = "-v" in sys.argv[1:]


def ok(what):
    global passed
    passed += 1
    if verbose:
        print(f"ok   {what}")


def fail(what):
    failures.append(what)
    print(f"FAIL {what}")


def expect(condition, what, why=""):
    if condition:
        ok(what)
    else:
        fail(f"{what}: {why}" if why else what)
    return condition


def rel(path):
    return str(pathlib.Path(path).relative_to(ROOT))


def run(cmd, **kw):
    return subprocess.run(cmd, stdin=subprocess.DEVNULL, text=True, **kw)


# --- YAML with Compose's strictness about duplicate keys -------------------------------------
class StrictLoader(yaml.SafeLoader):
    pass


def construct_mapping(loader, node, deep=False):
    # Keys written twice in one mapping are errors; keys a `<<` merge brings in may be overridden.
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    loader.flatten_mapping(node)
    return loader.construct_mapping(node, deep=deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)

print("== parse")
docs = {}
for path in sorted(p for p in COMPOSE_DIR.rglob("*") if p.suffix in (".yml", ".yaml")):
    try:
        docs[path] = yaml.load(path.read_text(), Loader=StrictLoader)
        ok(f"{rel(path)} parses")
    except yaml.YAMLError as error:
        fail(f"{rel(path)} does not parse: {error}")
dashboards = {}
for path in sorted(DASHBOARDS.glob("*.json")):
    try:
        dashboards[path] = json.loads(path.read_text())
        ok(f"{rel(path)} parses")
    except json.JSONDecodeError as error:
        fail(f"{rel(path)} does not parse: {error}")
expect(bool(dashboards), f"{rel(DASHBOARDS)} holds a dashboard")
compose = docs.get(COMPOSE_FILE)
if not isinstance(compose, dict) or not isinstance(compose.get("services"), dict):
    fail(f"{rel(COMPOSE_FILE)} has no services; stopping here")
    sys.exit(1)
services = compose["services"]

# --- The code: Rust sources, bin targets ------------------------------------------------------
rust_files = {p: p.read_text() for d in ("shared", "services") for p in (ROOT / d).rglob("*.rs")}
rust_text = "\n".join(rust_files.values())
metadata = json.loads(run(["cargo", "metadata", "--no-deps", "--format-version", "1"], check=True, capture_output=True).stdout)
workspace_bins = sorted(t["name"] for p in metadata["packages"] for t in p["targets"] if "bin" in t["kind"])
rust_version = next((p.get("rust_version") for p in metadata["packages"] if p.get("rust_version")), None)
# The dev-profile `cls` the build below makes (or scripts/test.sh made), for `cls <sub> --help`.
cls_binary = pathlib.Path(metadata["target_directory"]) / "debug" / "cls"


def code_reads(var):
    return f'"{var}"' in rust_text


# --- Dockerfile --------------------------------------------------------------------------------
print("== Dockerfile")


def instructions(text):
    """(instruction, arguments) pairs, continuation lines joined, comments dropped."""
    out, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue
        current += " " + stripped.rstrip("\\").strip() if current else stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            word, _, rest = current.partition(" ")
            out.append((word.upper(), rest.strip()))
            current = ""
    return out


def dockerignored(path, patterns):
    excluded = False
    parts = pathlib.PurePosixPath(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").strip("/")
        if any(fnmatch.fnmatchcase(prefix, pat) for prefix in prefixes):
            excluded = not negate
    return excluded


docker = instructions(DOCKERFILE.read_text())
ignore = [l.strip() for l in DOCKERIGNORE.read_text().splitlines() if l.strip() and not l.strip().startswith("#")]
args = {}
for word, rest in docker:
    if word == "ARG" and "=" in rest:
        name, _, value = rest.partition("=")
        args[name.strip()] = value.strip().strip('"')

for word, rest in docker:
    if word not in ("COPY", "ADD"):
        continue
    tokens = shlex.split(rest)
    if any(t.startswith("--from") for t in tokens):
        continue
    sources = [t for t in tokens if not t.startswith("--")][:-1]
    for source in sources:
        exists = (ROOT / source).exists()
        expect(exists, f"COPY source {source} exists")
        if exists:
            expect(not dockerignored(source.rstrip("/"), ignore), f"COPY source {source} is in the build context", "excluded by .dockerignore")
for secret_path in ("compose/.env", "target"):
    expect(dockerignored(secret_path, ignore), f".dockerignore excludes {secret_path}")

image_bins = sorted(args.get("BINS", "").split())
expect(image_bins == workspace_bins, "BINS in the Dockerfile = the workspace's bin targets",
       f"BINS {image_bins}, workspace {workspace_bins}")

rust_image = args.get("RUST_IMAGE", "")
m = re.match(r"rust:(\d+)\.(\d+)", rust_image)
if m and rust_version:
    want = tuple(int(x) for x in rust_version.split(".")[:2])
    expect((int(m[1]), int(m[2])) >= want, f"{rust_image} >= rust-version {rust_version}")
else:
    fail(f"cannot read the Rust image version ({rust_image!r}) or the workspace rust-version ({rust_version!r})")

last_stage = max(i for i, (w, _) in enumerate(docker) if w == "FROM")
final = docker[last_stage:]
users = [rest for w, rest in final if w == "USER"]
expect(bool(users) and users[-1].split(":")[0] not in ("root", "0"), "the runtime stage runs as a non-root user", f"USER {users}")
entrypoints = [rest for w, rest in final if w == "ENTRYPOINT"]
expect(bool(entrypoints) and "tini" in entrypoints[-1], "the runtime stage's entrypoint is tini", f"ENTRYPOINT {entrypoints}")

builds = [re.search(r"cargo build[^&;|]*", rest) for w, rest in docker if w == "RUN" and "cargo build" in rest]
builds = [b.group(0).split() for b in builds if b]
if expect(len(builds) == 1, "the Dockerfile has one `cargo build`", f"found {len(builds)}"):
    build = builds[0]
    expect("--locked" in build, "`cargo build` is --locked")
    expect("--release" in build, "`cargo build` is --release")
    plain = [t for t in build if t != "--release"]
    t0 = time.monotonic()
    result = run(plain, capture_output=True)
    expect(result.returncode == 0, f"`{' '.join(plain)}` runs ({time.monotonic() - t0:.1f}s)",
           result.stderr[-3000:])

# --- Compose -----------------------------------------------------------------------------------
print("== compose")


def env_of(service):
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, None) for e in env)
    return env


def programs(service):
    """(binary, arguments) for each program the service's command runs."""
    command = service.get("command")
    if command is None:
        return []
    if isinstance(command, str):
        command = shlex.split(command)
    if command[:2] in (["sh", "-c"], ["bash", "-c"]):
        words = [shlex.split(part) for part in re.split(r"&&|;|\|\|", command[2])]
        return [(w[0], w[1:]) for w in words if w]
    return [(command[0], command[1:])]


cls_services = {name: s for name, s in services.items() if "build" in s}
expect(bool(cls_services), "some services build the CLS image")
long_running = {}
for name, service in cls_services.items():
    build = service["build"]
    context = COMPOSE_DIR / (build.get("context", ".") if isinstance(build, dict) else build)
    dockerfile = context / (build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile")
    expect(dockerfile.resolve() == DOCKERFILE.resolve(), f"{name}: builds {rel(DOCKERFILE)}", f"builds {dockerfile}")
    env = env_of(service)
    runs = programs(service)
    expect(bool(runs), f"{name}: has a command")
    for binary, argv in runs:
        if not expect(binary in workspace_bins, f"{name}: runs {binary}, a workspace binary", f"bins: {workspace_bins}"):
            continue
        expect(binary in image_bins, f"{name}: {binary} is in the image (BINS)")
        if binary == "cls":
            sub = [a for a in argv if not a.startswith("-")][:1]
            if not cls_binary.is_file():
                fail(f"{name}: cannot check `cls {' '.join(sub)}`: {cls_binary} is not built")
                continue
            result = run([str(cls_binary), *sub, "--help"], capture_output=True)
            expect(result.returncode == 0, f"{name}: `cls {' '.join(sub)}` is a cls subcommand", result.stderr.strip()[-500:])
        else:
            long_running[name] = (binary, service, env)
    for var in env:
        if var.startswith("CLS_"):
            expect(code_reads(var), f"{name}: {var} is read by the code", 'no "' + var + '" in shared/ or services/')

for name, (binary, service, env) in long_running.items():
    required = SECRETS_REQUIRED_BY_SETTINGS.get(binary, ())
    for var in required:
        expect(var in env, f"{name}: sets {var} (Settings refuses to start without it)")
    # CLS_SECRET_KEY_PREVIOUS goes with CLS_SECRET_KEY.
    allowed = set(required) | ({"CLS_SECRET_KEY_PREVIOUS"} if "CLS_SECRET_KEY" in required else set())
    for var in SECRETS:
        if var not in allowed:
            expect(var not in env, f"{name}: does not get {var} (it does not use it)")
    ops = str(env.get("CLS_OPS_ADDR", ""))
    expect(ops.startswith("0.0.0.0:"), f"{name}: CLS_OPS_ADDR binds 0.0.0.0 (Prometheus and HAProxy reach it)", f"CLS_OPS_ADDR={ops!r}")
    for var in LISTEN_VARS.get(binary, ()):
        value = str(env.get(var, ""))
        expect(value.startswith("0.0.0.0:"), f"{name}: {var} binds 0.0.0.0", f"{var}={value!r} (the default is 127.0.0.1)")
    ops_port = ops.rpartition(":")[2]
    test = (service.get("healthcheck") or {}).get("test") or []
    expect("cls-probe" in test and ops_port in test and "/ready" in test, f"{name}: healthcheck probes /ready on the ops port {ops_port}", f"test {test}")
    replicas = str((service.get("deploy") or {}).get("replicas", ""))
    expect(re.fullmatch(r"\$\{[A-Z_]+_REPLICAS:-\d+\}", replicas) is not None, f"{name}: deploy.replicas is a variable", f"replicas {replicas!r}")
    for dep, spec in (service.get("depends_on") or {}).items():
        expect(dep in services, f"{name}: depends on {dep}, a service")

gateway_env = next((env for binary, _, env in long_running.values() if binary == "cls-gateway"), {})
query_name = next((n for n, (binary, _, _) in long_running.items() if binary == "cls-query"), None)
query_env = long_running[query_name][2] if query_name else {}
query_url = str(gateway_env.get("CLS_QUERY_URL", ""))
query_port = str(query_env.get("CLS_QUERY_ADDR", "")).rpartition(":")[2]
expect(query_url == f"http://{query_name}:{query_port}", "the gateway's CLS_QUERY_URL names the query service and its port",
       f"CLS_QUERY_URL={query_url!r}, query service {query_name!r} on port {query_port!r}")

for name, service in services.items():
    for volume in service.get("volumes") or []:
        source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source", "")
        if source.startswith("."):
            expect((COMPOSE_DIR / source).exists(), f"{name}: bind mount {source} exists")

raw = COMPOSE_FILE.read_text()
used = set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)", raw))
example = {}
for line in ENV_EXAMPLE.read_text().splitlines():
    if line.strip() and not line.lstrip().startswith("#") and "=" in line:
        key, _, value = line.partition("=")
        example[key.strip()] = value.strip()
missing = sorted(used - example.keys())
unused = sorted(example.keys() - used)
expect(not missing, "every ${VAR} of the compose file is in .env.example", f"missing: {missing}")
expect(not unused, "every variable in .env.example is used by the compose file", f"unused: {unused}")
filled = sorted(k for k, v in example.items() if re.search(r"PASSWORD|TOKEN|SECRET", k) and v)
expect(not filled, ".env.example holds no secret values", f"set: {filled}")

# --- Prometheus and HAProxy -------------------------------------------------------------------
print("== prometheus, haproxy")
prometheus = docs.get(PROMETHEUS) or {}
jobs = {}
for job in prometheus.get("scrape_configs") or []:
    for sd in job.get("dns_sd_configs") or []:
        for dns_name in sd.get("names") or []:
            jobs[dns_name] = (job["job_name"], str(sd.get("port")))
job_names = {job["job_name"] for job in prometheus.get("scrape_configs") or []}
for name, (_, _, env) in long_running.items():
    ops_port = str(env.get("CLS_OPS_ADDR", "")).rpartition(":")[2]
    expect(jobs.get(name, (None, None))[1] == ops_port, f"prometheus: scrapes every {name} replica (dns_sd_configs) on port {ops_port}",
           f"found {jobs.get(name)}")
haproxy = HAPROXY.read_text()
gateway_name = next((n for n, (binary, _, _) in long_running.items() if binary == "cls-gateway"), "gateway")
http_port = str(gateway_env.get("CLS_HTTP_ADDR", "")).rpartition(":")[2]
gw_ops_port = str(gateway_env.get("CLS_OPS_ADDR", "")).rpartition(":")[2]
expect(re.search(rf"^\s*server-template\s+\S+\s+\S+\s+{re.escape(gateway_name)}:{http_port}\b", haproxy, re.M) is not None,
       f"haproxy: server-template targets {gateway_name}:{http_port}")
expect(re.search(rf"\bcheck port {gw_ops_port}\b", haproxy) is not None and "GET /ready" in haproxy,
       f"haproxy: checks /ready on the gateway's ops port {gw_ops_port}")

# --- Grafana -----------------------------------------------------------------------------------
print("== grafana")
datasource_uids = {ds.get("uid") for path, doc in docs.items() if path.is_relative_to(DATASOURCES) for ds in (doc or {}).get("datasources") or []}
IGNORED_LABELS = {"le", "job", "instance", "__name__", "quantile"}
label_struct_files = [text for text in rust_files.values() if "EncodeLabelSet" in text]


def walk(panels):
    for panel in panels:
        yield panel
        yield from walk(panel.get("panels") or [])


def registered(base):
    if re.search(rf'register(?:_with_unit)?\(\s*"{re.escape(base)}"', rust_text):
        return True
    unitless = base[: -len("_seconds")] if base.endswith("_seconds") else None
    return bool(unitless) and re.search(rf'register_with_unit\(\s*"{re.escape(unitless)}"[^;]*Unit::Seconds', rust_text) is not None


def label_set_by_code(label):
    return f'"{label}"' in rust_text or any(re.search(rf"\b{re.escape(label)}\s*:", text) for text in label_struct_files)


for path, dashboard in dashboards.items():
    name = rel(path)
    metrics, labels, job_filters, uids = set(), set(), set(), set()
    for panel in walk(dashboard.get("panels") or []):
        for source in [panel.get("datasource")] + [t.get("datasource") for t in panel.get("targets") or []]:
            if isinstance(source, dict) and source.get("uid"):
                uids.add(source["uid"])
        for target in panel.get("targets") or []:
            expr = target.get("expr", "")
            metrics.update(re.findall(r"\bcls_[a-z0-9_]+", expr))
            for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
                labels.update(l.strip() for l in group.split(",") if l.strip())
            for selector in re.findall(r"\{([^}]*)\}", expr):
                for label, op, value in re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', selector):
                    labels.add(label)
                    if label == "job":
                        job_filters.add((op, value))
    expect(bool(metrics), f"{name}: queries cls_* metrics")
    for metric in sorted(metrics):
        base = re.sub(r"_(bucket|sum|count|total|created)$", "", metric)
        base = base[len("cls_"):]
        expect(registered(base), f"{name}: {metric} is registered in the code", f'no register("{base}", …) in shared/ or services/')
    for label in sorted(labels - IGNORED_LABELS):
        expect(label_set_by_code(label), f"{name}: label {label} is set by the code")
    for op, value in sorted(job_filters):
        matched = {j for j in job_names if (re.fullmatch(value, j) if op in ("=~", "!~") else j == value)}
        expect(bool(matched), f'{name}: job{op}"{value}" matches a Prometheus job', f"jobs: {sorted(job_names)}")
    for uid in sorted(uids):
        expect(uid in datasource_uids or uid.startswith("$"), f"{name}: datasource uid {uid} is provisioned", f"provisioned: {sorted(datasource_uids)}")

print(f"{passed} passed, {len(failures)} failed ({time.monotonic() - started:.1f}s)")
sys.exit(1 if failures else 0)
PY
