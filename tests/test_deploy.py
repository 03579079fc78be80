"""Deployment files (issue 8): checked against the daemon's real interfaces and by the real tools.

* Every metric a Grafana panel or an alert queries exists on a live ``/metrics`` page.
* The Helm values / ConfigMap and docker-compose use real ``Settings`` fields, cover every field,
  and route the secrets through Secret references.
* promtool, helm, kubernetes-validate, docker-compose, hadolint and shellcheck validate the files
  (here only: ``deploy/check.sh`` installs them and runs this file).

The tool-driven tests skip when their tool is not installed; ``deploy/check.sh`` installs every
tool and sets ``STREAMGENRE_DEPLOY_REQUIRE_TOOLS=1``, which turns those skips into failures.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from streamgenre.config import MODEL_PROFILES, Settings
from streamgenre.stream.metrics import Health, Metrics, serve_http

yaml = pytest.importorskip("yaml", reason="PyYAML missing: install the test extra or run deploy/check.sh")

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "streamgenre"
FULL_VALUES = CHART / "ci" / "values-full.yaml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "streamgenre.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
COMPOSE = ROOT / "docker-compose.yml"
REQUIRE_TOOLS = os.environ.get("STREAMGENRE_DEPLOY_REQUIRE_TOOLS") == "1"

# Oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schema shipped
# in the kubernetes-validate wheel: the manifests must be valid for both.
KUBE_VERSIONS = ("1.25.0", "1.37.0")
# Custom resources: kubernetes-validate has no schemas for them (it would only warn), so they
# are skipped explicitly and checked structurally in test_helm_custom_resources instead.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "ScaledObject"}
# values.config entries that deliberately differ from the Settings defaults.
CHART_OVERRIDES = {
    "bootstrap_servers": "a loopback broker is meaningless in a cluster",
    "model_dir": "the image bakes the models at /app/model, not beside the source tree",
    "content_model_path": "the image bakes the model at /app/model, not beside the source tree",
}
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
                   "offset", "bool", "inf", "nan"}


# --- helpers -------------------------------------------------------------------------------------

def _missing(what: str) -> None:
    message = f"{what} not installed: deploy/check.sh installs it"
    if REQUIRE_TOOLS:
        pytest.fail(message)
    pytest.skip(message)


def find_tool(name: str, *candidates: Path) -> str:
    """A tool from .tools/ (helm), the venv (hadolint) or PATH; skip (or fail under check.sh)."""
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name, path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is None:
        _missing(name)
    return found


def run(*args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def promql_metric_names(expr: str) -> set[str]:
    """Metric names selected by a PromQL expression (functions, keywords and labels removed)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range / subquery durations (incl. $__rate_interval)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"(?<![\w:])\d+(\.\d+)?([eE][+-]?\d+)?", " ", expr)  # numbers (e.g. 1e3)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        token = match.group(0)
        if expr[match.end():].lstrip().startswith("(") or token.lower() in PROMQL_KEYWORDS:
            continue  # a function or aggregation call, or an operator keyword
        names.add(token)
    return names


def dashboard_exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) for every query of every panel, nested rows included."""
    found = []
    stack = list(dashboard["panels"])
    while stack:
        panel = stack.pop()
        stack.extend(panel.get("panels", []))
        found.extend((panel["title"], target["expr"]) for target in panel.get("targets", []))
    return found


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def secret_fields() -> set[str]:
    """Settings fields typed SecretStr (optional or not): they must never reach a ConfigMap."""
    secret = set()
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        if annotation is SecretStr or SecretStr in getattr(annotation, "__args__", ()):
            secret.add(name)
    return secret


def settings_from_env(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key in [k for k in os.environ if k.startswith("STREAMGENRE_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    return Settings()


# --- metrics used by the dashboard and the alerts exist on a live /metrics page ------------------

@pytest.fixture(scope="module")
def live_metric_names() -> set[str]:
    """Sample names the daemon's real /metrics page can expose, from its # TYPE lines.

    prometheus_client prints HELP/TYPE for every family even before its first sample (labelled
    families have none yet), so the TYPE lines, expanded per type, are the complete set.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = serve_http(Metrics(), lambda: Health(), "127.0.0.1", port)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            assert response.status == 200
            text = response.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            elif kind == "summary":
                names |= {name, f"{name}_sum", f"{name}_count"}
            elif kind == "counter" and not name.endswith("_total"):
                names.add(f"{name}_total")
            else:
                names.add(name)
        elif line and not line.startswith("#"):
            names.add(re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", line).group(0))
    assert "streamgenre_windows_total" in names, "the /metrics page does not look like the daemon's"
    return names


def test_promql_metric_name_extraction() -> None:
    expr = ('sum by (job, reason) (rate(streamgenre_dlq_messages_total{job=~"$job"}[$__rate_interval]))'
            ' / ignoring (reason) group_left sum(rate(streamgenre_chunks_total[5m])) > 1e-2'
            ' and histogram_quantile(0.99, sum by (le) (rate(streamgenre_e2e_latency_seconds_bucket[5m])))')
    assert promql_metric_names(expr) == {"streamgenre_dlq_messages_total", "streamgenre_chunks_total",
                                         "streamgenre_e2e_latency_seconds_bucket"}


def test_dashboard_is_valid_and_queries_live_metrics(live_metric_names: set[str]) -> None:
    dashboard = json.loads(DASHBOARD.read_text())  # valid JSON or this raises
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels), "panel ids must be unique"
    for panel in panels:
        assert {"x", "y", "w", "h"} <= panel["gridPos"].keys(), panel["title"]
        # The datasource is a variable so the dashboard works on any Grafana.
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(set(refs)) == len(refs), panel["title"]

    used: set[str] = set()
    for title, expr in dashboard_exprs(dashboard):
        names = promql_metric_names(expr)
        assert names, f"{title}: no metric found in {expr!r}"
        unknown = names - live_metric_names
        assert not unknown, f"panel {title!r} queries metrics the daemon does not expose: {sorted(unknown)}"
        used |= names
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            metric = re.match(r"label_values\((\w+)", variable["definition"]).group(1)
            assert metric in live_metric_names, f"variable {variable['name']} queries {metric}"

    required = {"streamgenre_window_latency_seconds_bucket", "streamgenre_e2e_latency_seconds_bucket",
                "streamgenre_windows_total", "streamgenre_consumer_lag", "streamgenre_active_streams",
                "streamgenre_dlq_messages_total", "streamgenre_predictions_total"}
    assert required <= used, f"dashboard lacks panels for {sorted(required - used)}"
    assert used & {"streamgenre_batch_size_bucket", "streamgenre_batch_size_sum"}, "no batch-size panel"


def test_alerts_query_live_metrics(live_metric_names: set[str]) -> None:
    rules = alert_rules()
    recorded = {rule["record"] for rule in rules if "record" in rule}
    # `up` is written by Prometheus itself for every scrape target.
    allowed = live_metric_names | recorded | {"up"}
    for rule in rules:
        names = promql_metric_names(rule["expr"])
        assert names, rule
        name = rule.get("alert") or rule["record"]
        assert names <= allowed, f"{name} uses metrics the daemon does not expose: {sorted(names - allowed)}"
    alerts = {rule["alert"] for rule in rules if "alert" in rule}
    assert {"StreamgenreHighWindowLatencyP99", "StreamgenreConsumerLagGrowing", "StreamgenreDLQRateHigh",
            "StreamgenreNotReady", "StreamgenreDown"} <= alerts


def test_every_alert_has_promtool_tests() -> None:
    tests = yaml.safe_load((DEPLOY / "prometheus" / "alerts_test.yml").read_text())["tests"]
    tested = {case["alertname"] for test in tests for case in test.get("alert_rule_test", [])
              if case.get("exp_alerts")}
    alerts = {rule["alert"] for rule in alert_rules() if "alert" in rule}
    assert alerts <= tested, f"alerts without a firing test case: {sorted(alerts - tested)}"


# --- promtool ------------------------------------------------------------------------------------

def test_promtool_config_rules_and_unit_tests() -> None:
    promtool = find_tool("promtool")
    run(promtool, "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml"))
    run(promtool, "check", "rules", str(ALERTS))
    run(promtool, "test", "rules", str(DEPLOY / "prometheus" / "alerts_test.yml"))


def test_dashboard_promql_parses(tmp_path: Path) -> None:
    """Prometheus' own parser (via promtool) on every panel query, Grafana variables filled in."""
    promtool = find_tool("promtool")
    rules = []
    for i, (_, expr) in enumerate(dashboard_exprs(json.loads(DASHBOARD.read_text()))):
        expr = expr.replace("$__rate_interval", "1m").replace("$job", ".*")
        assert "$" not in expr, f"unsubstituted Grafana variable in {expr!r}"
        rules.append({"record": f"dashboard:panel_query:{i}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run(promtool, "check", "rules", str(path))


# --- Helm ----------------------------------------------------------------------------------------

def helm() -> str:
    return find_tool("helm", ROOT / ".tools" / "helm" / "helm")


def helm_template(*values: Path) -> list[dict[str, Any]]:
    args = [helm(), "template", "release", str(CHART)]
    for path in values:
        args += ["-f", str(path)]
    return [doc for doc in yaml.safe_load_all(run(*args)) if doc]


def is_api(doc: dict[str, Any]) -> bool:
    return doc["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "api"


def by_kind(docs: list[dict[str, Any]], api: bool = False) -> dict[str, dict[str, Any]]:
    """The daemon's objects by kind (or, with ``api``, the HTTP API's: templates/api-*.yaml)."""
    kinds: dict[str, dict[str, Any]] = {}
    for doc in docs:
        if is_api(doc) != api:
            continue
        assert doc["kind"] not in kinds, f"two {doc['kind']} objects"
        kinds[doc["kind"]] = doc
    return kinds


def test_helm_values_cover_every_setting() -> None:
    config = yaml.safe_load((CHART / "values.yaml").read_text())["config"]
    fields = set(Settings.model_fields)
    secrets = secret_fields()
    assert secrets == {"redis_url", "sasl_password"}, "a new secret needs a Secret reference in the chart"
    assert not set(config) & secrets, "secrets must go through Secret references, not the ConfigMap"
    assert set(config) - fields == set(), f"values.config has unknown settings {sorted(set(config) - fields)}"
    missing = fields - secrets - set(config)
    assert not missing, f"values.config lacks settings {sorted(missing)} (add them with their defaults)"
    # The chart states the defaults explicitly, so a changed daemon default must be changed here too.
    for name, value in config.items():
        default = Settings.model_fields[name].default
        if value is None or name in CHART_OVERRIDES:
            continue
        assert value == default, f"values.config.{name}={value!r} but the Settings default is {default!r}"


def test_helm_lint_default_and_full() -> None:
    run(helm(), "lint", "--strict", str(CHART))
    run(helm(), "lint", "--strict", str(CHART), "-f", str(FULL_VALUES))


@pytest.mark.parametrize("values", [(), (FULL_VALUES,)], ids=["default", "full"])
def test_helm_manifests_match_kubernetes_schemas(values: tuple[Path, ...]) -> None:
    try:
        import kubernetes_validate
    except ImportError:
        _missing("kubernetes-validate")
    docs = helm_template(*values)
    validated = set()
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                pytest.fail(f"{doc['apiVersion']}/{doc['kind']} is not a Kubernetes {version} kind")
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} invalid for {version}: {error}")
        validated.add(doc["kind"])
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "ServiceAccount"} <= validated


def test_helm_default_render(monkeypatch: pytest.MonkeyPatch) -> None:
    kinds = by_kind(helm_template())
    assert "HorizontalPodAutoscaler" in kinds and not CRD_KINDS & kinds.keys()
    config = kinds["ConfigMap"]["data"]
    # Every rendered variable is a real setting, the whole ConfigMap parses into Settings, and
    # every non-null value of values.config made it in.
    values = yaml.safe_load((CHART / "values.yaml").read_text())["config"]
    assert set(config) == {f"STREAMGENRE_{k.upper()}" for k, v in values.items() if v is not None}
    settings = settings_from_env(config, monkeypatch)
    assert settings.max_message_bytes == 16 * 1024 * 1024  # not 1.6777216e+07
    assert settings.model_path == Path("/app/model") / MODEL_PROFILES[settings.model]

    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert set(env) == {"STREAMGENRE_REDIS_URL"}  # no SASL password configured by default
    secret = kinds["Secret"]
    assert env["STREAMGENRE_REDIS_URL"] == {"name": secret["metadata"]["name"], "key": "redis-url"}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["ports"][0]["containerPort"] == settings.metrics_port
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert {"requests", "limits"} <= container["resources"].keys()
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]  # numba cache, temp files
    assert "replicas" not in kinds["Deployment"]["spec"], "the HPA owns the replica count"


def test_helm_api_deployment_and_service(monkeypatch: pytest.MonkeyPatch) -> None:
    """The API runs `serve` on config.api_port, shares the ConfigMap and Secret, and its pods are
    selected by its own Service only (never by the daemon's Service, PDB or HPA)."""
    docs = helm_template()
    daemon, api = by_kind(docs), by_kind(docs, api=True)
    assert set(api) == {"Deployment", "Service"}
    settings = settings_from_env(daemon["ConfigMap"]["data"], monkeypatch)
    pod = api["Deployment"]["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["args"] == ["serve"]
    assert container["ports"] == [{"name": "http", "containerPort": settings.api_port, "protocol": "TCP"}]
    assert container["envFrom"] == [{"configMapRef": {"name": daemon["ConfigMap"]["metadata"]["name"]}}]
    assert {e["name"] for e in container["env"]} == {"STREAMGENRE_REDIS_URL"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    labels = pod["metadata"]["labels"]
    for selector in (daemon["Service"]["spec"]["selector"],
                     daemon["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
                     daemon["Deployment"]["spec"]["selector"]["matchLabels"]):
        assert not selector.items() <= labels.items(), "a daemon selector picks up the API's pods"
    assert api["Service"]["spec"]["selector"].items() <= labels.items()
    assert api["Service"]["spec"]["ports"][0]["port"] == settings.api_port
    assert by_kind(helm_template_set("api.enabled=false"), api=True) == {}


def helm_template_set(*assignments: str) -> list[dict[str, Any]]:
    args = [helm(), "template", "release", str(CHART)]
    for assignment in assignments:
        args += ["--set", assignment]
    return [doc for doc in yaml.safe_load_all(run(*args)) if doc]


def test_helm_full_render_uses_existing_secrets() -> None:
    kinds = by_kind(helm_template(FULL_VALUES))
    assert "Secret" not in kinds, "with existingSecret everywhere the chart must not create a Secret"
    assert "HorizontalPodAutoscaler" not in kinds, "KEDA owns the HPA"
    (container,) = kinds["Deployment"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert env == {"STREAMGENRE_REDIS_URL": {"name": "streamgenre-redis", "key": "url"},
                   "STREAMGENRE_SASL_PASSWORD": {"name": "streamgenre-kafka-user", "key": "password"}}
    config = kinds["ConfigMap"]["data"]
    assert config["STREAMGENRE_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert not {"STREAMGENRE_REDIS_URL", "STREAMGENRE_SASL_PASSWORD"} & config.keys()


def test_helm_custom_resources() -> None:
    """The CRD kinds have no schema in kubernetes-validate: check what they point at instead."""
    kinds = by_kind(helm_template(FULL_VALUES))
    assert kinds.keys() >= CRD_KINDS
    deployment, service = kinds["Deployment"], kinds["Service"]

    scaled = kinds["ScaledObject"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    kafka = next(t for t in scaled["spec"]["triggers"] if t["type"] == "kafka")
    config = kinds["ConfigMap"]["data"]
    assert kafka["metadata"]["consumerGroup"] == config["STREAMGENRE_GROUP_ID"]
    assert kafka["metadata"]["topic"] == config["STREAMGENRE_INPUT_TOPIC"]
    assert kafka["metadata"]["bootstrapServers"] == config["STREAMGENRE_BOOTSTRAP_SERVERS"]
    assert all(isinstance(v, str) for v in kafka["metadata"].values()), "KEDA metadata values are strings"

    monitor = kinds["ServiceMonitor"]
    labels = service["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}

    # The PrometheusRule is the promtool-tested alerts.yml, verbatim.
    assert kinds["PrometheusRule"]["spec"] == yaml.safe_load(ALERTS.read_text())


# --- docker-compose ------------------------------------------------------------------------------

def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_env_names_are_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose()["services"]
    fields = {f"STREAMGENRE_{name.upper()}" for name in Settings.model_fields}
    for name, service in services.items():
        env = service.get("environment", {})
        unknown = {key for key in env if key.startswith("STREAMGENRE_")} - fields
        assert not unknown, f"service {name} sets unknown settings {sorted(unknown)}"
    daemon = services["streamgenre"]
    assert daemon["deploy"]["replicas"] == 2
    # The HTTP API: `serve` on its port, published on the host, talking to the same Kafka and Redis.
    api = services["api"]
    api_settings = settings_from_env(api["environment"], monkeypatch)
    assert api["command"] == ["serve"]
    assert api["ports"] == [f"{api_settings.api_port}:{api_settings.api_port}"]
    assert str(api_settings.api_port) in " ".join(api["healthcheck"]["test"])
    settings = settings_from_env(daemon["environment"], monkeypatch)
    assert (api_settings.bootstrap_servers, api_settings.redis_url) == (settings.bootstrap_servers, settings.redis_url)
    # Prometheus scrapes the port the daemon listens on.
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in prometheus["scrape_configs"] if j["job_name"] == "streamgenre")
    assert job["dns_sd_configs"][0]["port"] == settings.metrics_port
    # The topic-init job creates exactly the topics the daemon uses (it keeps the defaults).
    created = set(re.findall(r"--topic\s+(\S+)", services["kafka-init"]["command"][0]))
    assert {settings.input_topic, settings.output_topic, settings.events_topic, settings.dlq_topic} <= created


def test_compose_config() -> None:
    # Debian's/PyPI's docker-compose (v1) or the Compose v2 plugin, whichever is installed.
    plugin = shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True)
    if shutil.which("docker-compose"):
        command = ["docker-compose"]
    elif plugin and plugin.returncode == 0:
        command = ["docker", "compose"]
    else:
        _missing("docker-compose")
    run(*command, "-f", str(COMPOSE), "config", "--quiet")
    # The partition count is a variable: it must interpolate.
    rendered = run(*command, "-f", str(COMPOSE), "config", env={**os.environ, "PARTITIONS": "12"})
    assert yaml.safe_load(rendered)["services"]["kafka-init"]["environment"]["PARTITIONS"] in ("12", 12)


# --- Dockerfile ----------------------------------------------------------------------------------

def test_dockerfile_shape() -> None:
    text = (ROOT / "Dockerfile").read_text()
    # One entry per instruction: comments dropped, backslash continuations joined.
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    lines = " ".join(line[:-1] if line.endswith("\\") else line + "\n" for line in lines).split("\n")
    lines = [" ".join(line.split()) for line in lines if line.strip()]
    stages = [i for i, line in enumerate(lines) if line.startswith("FROM ")]
    assert len(stages) >= 2, "multi-stage build expected"
    final = lines[stages[-1]:]
    assert "python:3.11-slim" in text
    assert not any("build-essential" in line or "gcc" in line for line in final), "build tools in final image"
    user = next(line.split()[1] for line in final if line.startswith("USER "))
    assert user.split(":")[0].isdigit() and user.split(":")[0] != "0", "numeric non-root USER expected"
    assert any(line.startswith("COPY model/") for line in final), "the model must be baked in"
    assert any(line.startswith("HEALTHCHECK") and "/healthz" in line for line in final)
    assert 'ENTRYPOINT ["streamgenre"]' in final and 'CMD ["run"]' in final


def test_hadolint() -> None:
    run(find_tool("hadolint"), str(ROOT / "Dockerfile"))


def test_shellcheck() -> None:
    run(find_tool("shellcheck"), str(DEPLOY / "check.sh"))
