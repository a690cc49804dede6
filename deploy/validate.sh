#!/usr/bin/env bash
# Validates the deployment files in deploy/ without a container runtime or a cluster.
# Run from anywhere (it works from the repository root):  deploy/validate.sh
#
#   a. installs its tools, idempotently: Debian's docker-compose (apt, only when missing)
#      and a venv at target/deploy-venv with deploy/requirements-validate.txt (exact pins;
#      rebuilt only when that file or python3's version changes)
#   b. docker-compose config -q on deploy/docker-compose.yml (parses and interpolates
#      without a Docker daemon), then checks the resolved file: distinct node ids, media
#      port published 1:1 and equal to HEARTH_MEDIA_PORT, public URL on the published HTTP
#      port, required secrets refused when unset
#   c. kubernetes-validate --strict on deploy/k8s/*.yaml against Kubernetes 1.29.0 (the
#      oldest supported) and 1.37.0, with the schemas bundled in the package (offline),
#      plus a few semantic checks of the hearth StatefulSet
#   d. the Grafana dashboard: valid JSON, uid/schemaVersion, every panel on the provisioned
#      datasource with non-empty expressions, every metric one the Rust code exports
#   e. prometheus.yml: the hearth job scrapes exactly the compose nodes' probe ports;
#      nginx.conf balances over the same nodes
#   f. promtool check config, when promtool is installed
# Prints one `ok: ...` line per check; exits non-zero at the first failure.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
DEPLOY=$ROOT/deploy
VENV=$ROOT/target/deploy-venv
REQ=$DEPLOY/requirements-validate.txt
K8S_VERSIONS=(1.29.0 1.37.0)

ok() { printf 'ok: %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# ---------------------------------------------------------------- a. tools
if ! command -v docker-compose >/dev/null 2>&1; then
  echo "installing docker-compose (Debian package)..."
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get install -y -qq docker-compose >/dev/null 2>&1 \
    || { as_root apt-get update -qq && as_root apt-get install -y -qq docker-compose >/dev/null; }
fi
ok "docker-compose $(docker-compose version --short 2>/dev/null || echo '?')"

stamp="$( { python3 --version; cat "$REQ"; } | sha256sum | cut -d' ' -f1)"
if [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.requirements.sha256" 2>/dev/null)" = "$stamp" ]; then
  ok "venv target/deploy-venv reused"
else
  echo "creating target/deploy-venv..."
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-input -r "$REQ"
  echo "$stamp" > "$VENV/.requirements.sha256"
  ok "venv target/deploy-venv created from deploy/requirements-validate.txt"
fi
PY=$VENV/bin/python

# -------------------------------------------------------- b. docker-compose
COMPOSE=$DEPLOY/docker-compose.yml
export HEARTH_API_KEY=APIvalidate HEARTH_API_SECRET=validate-secret-0123456789
docker-compose -f "$COMPOSE" config -q
ok "docker-compose config -q: deploy/docker-compose.yml parses"

if env -u HEARTH_API_KEY -u HEARTH_API_SECRET docker-compose -f "$COMPOSE" config -q >/dev/null 2>&1; then
  fail "docker-compose config accepted the file without HEARTH_API_KEY/HEARTH_API_SECRET"
fi
ok "docker-compose refuses to run without HEARTH_API_KEY/HEARTH_API_SECRET"

resolved=$(mktemp)
trap 'rm -f "$resolved"' EXIT
docker-compose -f "$COMPOSE" config > "$resolved"
"$PY" - "$resolved" <<'EOF'
import sys, yaml
c = yaml.safe_load(open(sys.argv[1]))
svcs = c["services"]
nodes = sorted(n for n in svcs if n.startswith("hearth-"))
assert nodes == ["hearth-1", "hearth-2", "hearth-3"], nodes
for s in ("lb", "redis", "postgres", "prometheus", "grafana"):
    assert s in svcs, f"service {s} missing"
ids, media, http = set(), set(), set()
for n in nodes:
    s = svcs[n]
    env = s["environment"]
    assert s.get("image") == "hearth:local" and s.get("build"), f"{n}: image/build"
    ids.add(env["HEARTH_NODE_ID"])
    mp = int(env["HEARTH_MEDIA_PORT"])
    pubs = s["ports"]
    def published(p):  # docker-compose 1.x prints "H:C/proto" strings or dicts
        if isinstance(p, dict):
            return int(p["published"]), int(p["target"]), p.get("protocol", "tcp")
        hp, rest = str(p).split(":", 1)
        cp, _, proto = rest.partition("/")
        return int(hp), int(cp), proto or "tcp"
    pubs = [published(p) for p in pubs]
    assert (mp, mp, "udp") in pubs, f"{n}: media port {mp}/udp not published 1:1: {pubs}"
    tcp = [hp for hp, cp, proto in pubs if proto == "tcp" and cp == 7880]
    assert len(tcp) == 1, f"{n}: HTTP port 7880 not published once: {pubs}"
    assert env["HEARTH_PUBLIC_URL"].endswith(f":{tcp[0]}"), f"{n}: HEARTH_PUBLIC_URL {env['HEARTH_PUBLIC_URL']} is not on host port {tcp[0]}"
    assert env["HEARTH_PROBE_HTTP"].endswith(":7881"), f"{n}: probe port"
    assert env["HEARTH_TURN_PORT"] == "0", f"{n}: TURN should be off in compose"
    assert env["HEARTH_REDIS_URL"].startswith("redis://redis:"), f"{n}: redis url"
    assert env["HEARTH_DATABASE_URL"].startswith("postgres://"), f"{n}: database url"
    assert len(env["HEARTH_API_SECRET"]) >= 16
    for dep in ("redis", "postgres"):
        assert s["depends_on"][dep]["condition"] == "service_healthy", f"{n}: depends_on {dep}"
    media.add(mp); http.add(tcp[0])
assert len(ids) == 3 and len(media) == 3 and len(http) == 3, "node ids/ports must differ"
for dep in ("redis", "postgres"):
    assert svcs[dep].get("healthcheck"), f"{dep}: healthcheck"
print(f"ok: compose nodes {', '.join(nodes)}: distinct ids, media UDP {sorted(media)} 1:1, HTTP {sorted(http)} = public URLs")
EOF

# ------------------------------------------------------------- c. Kubernetes
for v in "${K8S_VERSIONS[@]}"; do
  "$VENV/bin/kubernetes-validate" --strict --quiet -k "$v" "$DEPLOY"/k8s/*.yaml
  ok "kubernetes-validate --strict -k $v: $(ls "$DEPLOY"/k8s/*.yaml | wc -l) files in deploy/k8s"
done
"$PY" - "$DEPLOY"/k8s/*.yaml <<'EOF'
import sys, yaml
docs = [d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f)) if d]
by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
for d in docs:
    if d["kind"] != "Namespace":
        assert d["metadata"].get("namespace") == "hearth", f"{d['kind']}/{d['metadata']['name']}: namespace"
sts = by[("StatefulSet", "hearth")]
spec = sts["spec"]; pod = spec["template"]["spec"]; c = pod["containers"][0]
assert spec["replicas"] == 3 and spec["podManagementPolicy"] == "Parallel"
assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
aff = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
assert aff[0]["topologyKey"] == "kubernetes.io/hostname", "hostNetwork needs one pod per host"
env = [e["name"] for e in c["env"]]
assert env.index("HEARTH_PUBLIC_IP") < env.index("HEARTH_PUBLIC_URL"), "$(HEARTH_PUBLIC_IP) must be defined first"
for ref in c["envFrom"]:
    kind = "ConfigMap" if "configMapRef" in ref else "Secret"
    name = (ref.get("configMapRef") or ref.get("secretRef"))["name"]
    assert (kind, name) in by, f"{kind}/{name} referenced but not defined"
cmd = c["lifecycle"]["preStop"]["exec"]["command"]
assert cmd[0] == "hearthctl" and "drain" in cmd and "--wait" in cmd
deadline = cmd[cmd.index("--deadline") + 1]
secs = int(deadline.rstrip("s"))
assert pod["terminationGracePeriodSeconds"] > secs, "grace period must exceed the drain deadline"
ports = {p["name"]: p["containerPort"] for p in c["ports"]}
for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
    assert c[probe]["httpGet"]["port"] in ports, f"{probe} port"
assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
ann = spec["template"]["metadata"]["annotations"]
assert ann["prometheus.io/scrape"] == "true" and int(ann["prometheus.io/port"]) == ports["probes"]
sc = c["securityContext"]
assert sc["readOnlyRootFilesystem"] and pod["securityContext"]["runAsNonRoot"]
mounts = {m["mountPath"] for m in c["volumeMounts"]}
assert "/var/lib/hearth" in mounts
assert ("PodDisruptionBudget", "hearth") in by and ("Service", "hearth-http") in by
assert by[("Service", "hearth")]["spec"]["clusterIP"] == "None" and spec["serviceName"] == "hearth"
print(f"ok: k8s StatefulSet hearth: hostNetwork + required anti-affinity, env order, refs, "
      f"grace {pod['terminationGracePeriodSeconds']}s > drain deadline {secs}s, probes on port {ports['probes']}")
EOF

# ---------------------------------------------------------------- d. Grafana
DASH=$DEPLOY/grafana/dashboards/hearth.json
python3 -m json.tool "$DASH" >/dev/null
ok "python3 -m json.tool: deploy/grafana/dashboards/hearth.json is valid JSON"
"$PY" - "$DASH" "$DEPLOY/grafana/provisioning/datasources/prometheus.yml" "$ROOT" <<'EOF'
import json, os, re, sys, yaml
dash = json.load(open(sys.argv[1]))
ds = yaml.safe_load(open(sys.argv[2]))["datasources"][0]
root = sys.argv[3]
assert dash["uid"] == "hearth" and dash["schemaVersion"] == 39, "uid/schemaVersion"
exported = set()
for top in ("api", "actors", "engine"):
    for d, _, fs in os.walk(os.path.join(root, top)):
        for f in fs:
            if f.endswith(".rs"):
                exported |= set(re.findall(r'"(hearth_[a-z0-9_]+)"', open(os.path.join(d, f), errors="replace").read()))
def panels(ps):
    for p in ps:
        yield p
        yield from panels(p.get("panels", []))
n, used, ids = 0, set(), set()
for p in panels(dash["panels"]):
    assert p["id"] not in ids, f"duplicate panel id {p['id']}"; ids.add(p["id"])
    assert "gridPos" in p, f"panel {p['title']}: gridPos"
    if p["type"] == "row":
        continue
    n += 1
    assert p.get("datasource", {}).get("uid") == ds["uid"], f"panel {p['title']!r}: datasource is not uid {ds['uid']!r}"
    assert p.get("targets"), f"panel {p['title']!r}: no targets"
    for t in p["targets"]:
        expr = t.get("expr", "").strip()
        assert expr, f"panel {p['title']!r}: empty expr"
        assert t.get("datasource", p["datasource"]).get("uid") == ds["uid"]
        for m in re.findall(r"\b(hearth_[a-z0-9_]+)", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", m)
            assert m in exported or base in exported, f"panel {p['title']!r}: metric {m} is not exported by the Rust code"
            used.add(base)
for v in dash["templating"]["list"]:
    if v.get("datasource"):
        assert v["datasource"]["uid"] == ds["uid"]
print(f"ok: dashboard: {n} panels, each on datasource uid {ds['uid']!r} with non-empty exprs; "
      f"{len(used)} metrics, all found in the Rust sources")
EOF

# ------------------------------------------------------ e. Prometheus, nginx
"$PY" - "$DEPLOY/prometheus/prometheus.yml" "$resolved" "$DEPLOY/nginx/nginx.conf" <<'EOF'
import re, sys, yaml
prom = yaml.safe_load(open(sys.argv[1]))
compose = yaml.safe_load(open(sys.argv[2]))
nodes = sorted(n for n in compose["services"] if n.startswith("hearth-"))
want = sorted(f"{n}:{compose['services'][n]['environment']['HEARTH_PROBE_HTTP'].rsplit(':', 1)[1]}" for n in nodes)
jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
assert "hearth" in jobs, "no hearth job"
targets = sorted(t for sc in jobs["hearth"]["static_configs"] for t in sc["targets"])
assert targets == want, f"hearth job targets {targets} != compose probe ports {want}"
assert prom["global"]["scrape_interval"] == "5s"
upstream = sorted(re.findall(r"^\s*server\s+([\w.-]+:\d+)", open(sys.argv[3]).read(), re.M))
assert upstream == sorted(f"{n}:7880" for n in nodes), f"nginx upstream {upstream}"
assert "proxy_set_header Upgrade $http_upgrade" in open(sys.argv[3]).read()
print(f"ok: prometheus.yml job hearth scrapes {', '.join(targets)} every 5s; nginx balances {', '.join(upstream)}")
EOF

# ------------------------------------------------------ Dockerfile (static)
"$PY" - "$DEPLOY/Dockerfile" "$ROOT" <<'EOF'
import os, re, sys
df = open(sys.argv[1]).read(); root = sys.argv[2]
bins = set()
for d, dirs, fs in os.walk(root):
    dirs[:] = [x for x in dirs if x not in ("target", ".git", "node_modules", "data")]
    if "Cargo.toml" not in fs:
        continue
    for block in re.findall(r"\[\[bin\]\][^\[]*", open(os.path.join(d, "Cargo.toml")).read()):
        bins |= set(re.findall(r'name\s*=\s*"([^"]+)"', block))
wanted = re.findall(r"--bin ([\w-]+)", df)
missing = [b for b in wanted if b not in bins]
assert wanted and not missing, f"Dockerfile builds unknown bins {missing} (known: {sorted(bins)})"
for src in re.findall(r"^COPY (deploy/\S+)", df, re.M):
    assert os.path.exists(f"{root}/{src}"), f"COPY source {src} missing"
print(f"ok: Dockerfile builds bins {', '.join(wanted)}, each a [[bin]] of the workspace")
EOF
bash -n "$DEPLOY/healthcheck.sh"
ok "healthcheck.sh parses (bash -n)"

# ---------------------------------------------------------------- f. promtool
if command -v promtool >/dev/null 2>&1; then
  promtool check config "$DEPLOY/prometheus/prometheus.yml"
  ok "promtool check config"
else
  echo "skip: promtool not installed (prometheus.yml checked structurally above)"
fi

ok "deploy/ validated"
