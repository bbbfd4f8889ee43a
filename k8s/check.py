#!/usr/bin/env python3
"""Renders every kustomization under k8s/ and validates it offline.

- Built-in kinds: `kubernetes-validate --strict` against its bundled schemas (an unknown field
  fails; so does any kind or apiVersion it has no schema for, other than the two CRDs below).
- ServiceMonitor and PrometheusRule: the vendored prometheus-operator schemas (k8s/schemas/),
  made strict (an object schema that lists its properties refuses others).
- The PrometheusRule's rules: `promtool check rules`, and they equal dashboards/alerts.yaml.
- orderhub's own promises: every credential variable the default config names comes from the
  Secret, probes on /readyz and /healthz, terminationGracePeriodSeconds above shutdown_grace,
  resource requests and limits, pod anti-affinity, a PodDisruptionBudget, one replica with the
  SQLite journal on a PersistentVolumeClaim in single-node; in cluster, three engines with
  [cluster] naming every server of a three-server NATS JetStream StatefulSet (file storage on a
  PVC, routes to each peer, its own PodDisruptionBudget).

Exit 0 when everything holds, 1 naming every problem, 77 when a tool it needs is missing
(kubectl, kubernetes-validate, promtool, or the Python packages in k8s/requirements.txt).
Run: python3 k8s/check.py (from the repository root or anywhere).
"""
import json
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
KUBERNETES_VERSION = "1.37.0"
CUSTOM = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.schema.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule.schema.json",
}
SKIP = 77


def missing(what):
    print(f"SKIPPED: {what} not found (.ci/run installs it; see k8s/requirements.txt)")
    sys.exit(SKIP)


try:
    import jsonschema
    import yaml
except ImportError as e:
    missing(f"Python package {e.name}")
for tool in ("kubectl", "kubernetes-validate", "promtool"):
    if shutil.which(tool) is None:
        missing(tool)


def strict(schema):
    """Every object schema with `properties` and no say on extra keys refuses them; OpenAPI's
    `nullable` becomes JSON Schema's null type."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict(value) for key, value in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if out.get("nullable") is True and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


def duration_s(text):
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    match = re.fullmatch(r"(\d+)(ms|s|m|h)", text.strip())
    if not match:
        raise ValueError(f"duration {text!r}")
    return int(match.group(1)) * units[match.group(2)]


def credential_variables():
    """Every `*_env` variable the embedded default configuration names."""
    found = set()

    def walk(value):
        if isinstance(value, dict):
            for key, inner in value.items():
                if key.endswith("_env") and isinstance(inner, str):
                    found.add(inner)
                else:
                    walk(inner)
        elif isinstance(value, list):
            for inner in value:
                walk(inner)

    with open(ROOT / "engine/src/config/default.toml", "rb") as f:
        walk(tomllib.load(f))
    return found


def render(directory):
    out = subprocess.run(
        ["kubectl", "kustomize", str(directory)], capture_output=True, text=True
    )
    if out.returncode != 0:
        return None, out.stderr.strip()
    return out.stdout, None


def check_builtins(name, text, problems):
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        f.write(text)
        f.flush()
        out = subprocess.run(
            ["kubernetes-validate", "--strict", "-k", KUBERNETES_VERSION, f.name],
            capture_output=True,
            text=True,
        )
    for line in (out.stdout + out.stderr).splitlines():
        if line.startswith("ERROR") or line.startswith("FATAL"):
            problems.append(f"{name}: {line}")
        elif "Couldn't find schema for kind" in line:
            kind = re.search(r"kind (\S+) with api version (\S+)", line)
            if not kind or (kind.group(2), kind.group(1)) not in CUSTOM:
                problems.append(f"{name}: no schema to check it against: {line}")
    if out.returncode not in (0, 1):
        problems.append(f"{name}: kubernetes-validate failed: {out.stderr.strip()}")


def check_custom(name, docs, problems):
    for doc in docs:
        key = (doc.get("apiVersion"), doc.get("kind"))
        if key not in CUSTOM:
            continue
        schema = strict(json.loads((K8S / "schemas" / CUSTOM[key]).read_text()))
        for error in jsonschema.Draft7Validator(schema).iter_errors(doc):
            path = ".".join(map(str, error.path)) or "<root>"
            problems.append(f"{name}: {key[1]}/{doc['metadata']['name']}: {path}: {error.message}")


def check_rules(name, docs, problems):
    rules = [d for d in docs if d.get("kind") == "PrometheusRule"]
    if len(rules) != 1:
        problems.append(f"{name}: expected one PrometheusRule, found {len(rules)}")
        return
    spec = rules[0]["spec"]
    alerts = yaml.safe_load((ROOT / "dashboards/alerts.yaml").read_text())
    if spec != alerts:
        problems.append(f"{name}: the PrometheusRule's groups differ from dashboards/alerts.yaml")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump(spec, f)
        f.flush()
        out = subprocess.run(["promtool", "check", "rules", f.name], capture_output=True, text=True)
    if out.returncode != 0:
        problems.append(f"{name}: promtool check rules: {out.stdout}{out.stderr}".strip())


def check_orderhub(name, docs, problems, single_node):
    by_kind = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    sets = [s for s in by_kind.get("StatefulSet", []) if s["metadata"]["name"] == "orderhub"]
    if len(sets) != 1:
        problems.append(f"{name}: expected one StatefulSet named orderhub, found {len(sets)}")
        return
    sts = sets[0]
    pod = sts["spec"]["template"]["spec"]
    container = next((c for c in pod["containers"] if c["name"] == "orderhub"), None)
    if container is None:
        problems.append(f"{name}: no container named orderhub")
        return
    from_secret = {
        e["name"]
        for e in container.get("env", [])
        if e.get("valueFrom", {}).get("secretKeyRef", {}).get("key") == e["name"]
    }
    for variable in sorted(credential_variables() - from_secret):
        problems.append(f"{name}: credential {variable} is not read from a Secret")
    probes = {
        "readinessProbe": "/readyz",
        "livenessProbe": "/healthz",
        "startupProbe": "/healthz",
    }
    for probe, path in probes.items():
        if container.get(probe, {}).get("httpGet", {}).get("path") != path:
            problems.append(f"{name}: {probe} must be an HTTP GET of {path}")
    resources = container.get("resources", {})
    for part in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            if resource not in resources.get(part, {}):
                problems.append(f"{name}: resources.{part}.{resource} is not set")
    if "podAntiAffinity" not in pod.get("affinity", {}):
        problems.append(f"{name}: no pod anti-affinity")
    config_maps = [
        d for d in by_kind.get("ConfigMap", []) if "orderhub.toml" in d.get("data", {})
    ]
    if len(config_maps) != 1:
        problems.append(f"{name}: expected one ConfigMap carrying orderhub.toml")
    else:
        mounted = {v.get("configMap", {}).get("name") for v in pod.get("volumes", [])}
        if config_maps[0]["metadata"]["name"] not in mounted:
            problems.append(f"{name}: the orderhub.toml ConfigMap is not mounted")
        config = tomllib.loads(config_maps[0]["data"]["orderhub.toml"])
        cluster = config.get("cluster")
        if single_node and cluster is not None:
            problems.append(f"{name}: single-node must not configure [cluster]")
        if not single_node:
            check_cluster(name, by_kind, sts, cluster, problems)
        with open(ROOT / "engine/src/config/default.toml", "rb") as f:
            default_grace = tomllib.load(f)["server"]["shutdown_grace"]
        grace = duration_s(config.get("server", {}).get("shutdown_grace", default_grace))
        if pod.get("terminationGracePeriodSeconds", 30) <= grace:
            problems.append(
                f"{name}: terminationGracePeriodSeconds must be above server.shutdown_grace ({grace} s)"
            )
    if not by_kind.get("PodDisruptionBudget"):
        problems.append(f"{name}: no PodDisruptionBudget")
    if not by_kind.get("ServiceMonitor"):
        problems.append(f"{name}: no ServiceMonitor")
    services = by_kind.get("Service", [])
    if not any(s["spec"].get("clusterIP") == "None" for s in services):
        problems.append(f"{name}: no headless Service")
    if not any(s["spec"].get("clusterIP") != "None" for s in services):
        problems.append(f"{name}: no client Service")
    if single_node:
        if sts["spec"].get("replicas") != 1:
            problems.append(f"{name}: single-node runs exactly one replica (SQLite, one writer)")
        claims = [c["metadata"]["name"] for c in sts["spec"].get("volumeClaimTemplates", [])]
        mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
        if "data" not in claims or mounts.get("data") != "/data":
            problems.append(f"{name}: the journal (/data) is not on a PersistentVolumeClaim")
        if "--data-dir" not in container.get("args", []):
            problems.append(f"{name}: the engine is not told --data-dir")


def check_cluster(name, by_kind, sts, cluster, problems):
    """The cluster overlay: three engines on a three-server JetStream cluster with file storage."""
    if cluster is None:
        problems.append(f"{name}: the engines' orderhub.toml has no [cluster]")
        return
    if sts["spec"].get("replicas") != 3:
        problems.append(f"{name}: cluster runs three engines")
    nats = [s for s in by_kind.get("StatefulSet", []) if s["metadata"]["name"] == "nats"]
    if len(nats) != 1:
        problems.append(f"{name}: no NATS StatefulSet")
        return
    nats = nats[0]
    replicas = nats["spec"].get("replicas")
    if replicas != 3:
        problems.append(f"{name}: NATS runs three servers (a quorum survives one loss)")
    if cluster.get("replicas", 3) > (replicas or 0):
        problems.append(f"{name}: cluster.replicas is above the NATS servers")
    if not nats["spec"].get("volumeClaimTemplates"):
        problems.append(f"{name}: JetStream's file storage is not on a PersistentVolumeClaim")
    conf = next(
        (d["data"]["nats.conf"] for d in by_kind.get("ConfigMap", []) if "nats.conf" in d.get("data", {})),
        "",
    )
    if "jetstream" not in conf or "store_dir" not in conf:
        problems.append(f"{name}: nats.conf does not enable JetStream with file storage")
    service = nats["spec"]["serviceName"]
    namespace = nats["metadata"].get("namespace", "default")
    for i in range(replicas or 0):
        host = f"nats-{i}.{service}.{namespace}.svc.cluster.local"
        if f"nats://{host}:6222" not in conf:
            problems.append(f"{name}: nats.conf has no route to {host}")
        if f"nats://{host}:4222" not in cluster.get("nats", []):
            problems.append(f"{name}: cluster.nats does not list {host}")
    if not any(p["spec"]["selector"]["matchLabels"].get("app.kubernetes.io/name") == "nats"
               for p in by_kind.get("PodDisruptionBudget", [])):
        problems.append(f"{name}: no PodDisruptionBudget for NATS")


def main():
    problems = []
    targets = [K8S] + sorted(p for p in (K8S / "overlays").iterdir() if p.is_dir())
    for directory in targets:
        name = str(directory.relative_to(ROOT))
        text, error = render(directory)
        if text is None:
            problems.append(f"{name}: kubectl kustomize failed: {error}")
            continue
        docs = [d for d in yaml.safe_load_all(text) if d]
        check_builtins(name, text, problems)
        check_custom(name, docs, problems)
        check_rules(name, docs, problems)
        check_orderhub(name, docs, problems, single_node=directory.name in ("k8s", "single-node"))
        kinds = ", ".join(sorted({d["kind"] for d in docs}))
        print(f"rendered {name}: {len(docs)} objects ({kinds})")
    for problem in problems:
        print(f"PROBLEM {problem}")
    if not problems:
        print(f"k8s: {len(targets)} kustomizations render and validate")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
