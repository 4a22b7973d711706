"""Container and Kubernetes manifests: schema-valid, linted, and in step with the code."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.config import EXIT_MARGIN_S, Settings

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
K8S_VERSION = "1.37.0"
CRD_KINDS = {"ServiceMonitor", "HTTPRoute", "ScaledObject"}
# Served inside the cluster only: the kubelet's probes and Prometheus reach the pods directly.
PRIVATE_PATHS = {"/health", "/ready", "/metrics"}
# The gateway's request timeout is the service's longest deadline plus this, to send the answer.
REPLY_MARGIN_S = 10


def tool(name: str) -> str:
    path = BIN / name
    found = str(path) if path.exists() else shutil.which(name)
    assert found, f"{name} is not installed; `make test` installs it"
    return found


def render(overlay: str) -> list[dict]:
    out = subprocess.run(
        [tool("kubectl"), "kustomize", str(ROOT / "deploy" / "overlays" / overlay)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(docs: list[dict], kind: str) -> dict:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def configured(docs: list[dict]) -> Settings:
    """The service's settings as the rendered ConfigMap sets them."""
    data = by_kind(docs, "ConfigMap")["data"]
    return Settings(**{name.removeprefix("JUDGE_").lower(): value for name, value in data.items()})


def gateway_seconds(duration: str) -> float:
    """A Gateway API duration ("1h", "310s", "500ms") in seconds."""
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?", duration)
    assert parts and duration, duration
    hours, minutes, seconds, millis = (int(p or 0) for p in parts.groups())
    return hours * 3600 + minutes * 60 + seconds + millis / 1000


def healthcheck_start_period_s(target: str) -> int:
    """The ``--start-period`` of the HEALTHCHECK in the Dockerfile's ``target`` stage."""
    stages = re.split(r"^FROM ", (ROOT / "Dockerfile").read_text(), flags=re.M)
    (stage,) = [s for s in stages if re.match(rf"\S+ AS {target}$", s.splitlines()[0])]
    return int(re.search(r"HEALTHCHECK .*--start-period=(\d+)s", stage).group(1))


def routed(path: str, matches: list[dict]) -> bool:
    """Whether an HTTPRoute path match serves ``path`` (a template's parameters stand for
    any one element). PathPrefix matches whole path elements, as the Gateway API says."""
    concrete = re.sub(r"\{[^}]*\}", "x", path)
    for match in matches:
        value = match["value"]
        if match["type"] == "Exact" and concrete == value:
            return True
        if match["type"] == "PathPrefix" and (concrete == value or concrete.startswith(value.rstrip("/") + "/")):
            return True
    return False


OVERLAYS = ["cpu", "gpu", "cpu-keda", "cpu-postgres", "cpu-single"]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> list[dict]:
    return render(request.param)


def test_every_manifest_validates(rendered: list[dict]) -> None:
    kinds = {doc["kind"] for doc in rendered}
    assert kinds >= {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "NetworkPolicy"}
    assert kinds >= {"ServiceMonitor", "HTTPRoute"}
    assert len(kinds & {"HorizontalPodAutoscaler", "ScaledObject"}) == 1  # exactly one autoscaler
    for doc in rendered:
        if doc["kind"] in CRD_KINDS:
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_crds_are_structurally_sound(rendered: list[dict]) -> None:
    monitor = by_kind(rendered, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    service = by_kind(rendered, "Service")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    port_names = {p["name"] for p in service["spec"]["ports"]}
    assert all(e["port"] in port_names and e["path"] == "/metrics" for e in monitor["spec"]["endpoints"])
    route = by_kind(rendered, "HTTPRoute")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["spec"]["parentRefs"]
    for rule in route["spec"]["rules"]:
        for backend in rule["backendRefs"]:
            assert backend["name"] == service["metadata"]["name"]
            assert backend["port"] in {p["port"] for p in service["spec"]["ports"]}


def test_probes_ports_and_env_match_the_service(rendered: list[dict]) -> None:
    app = create_app(Settings())
    paths = set(app.openapi()["paths"])
    deployment = by_kind(rendered, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    port = container["ports"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        http = container[probe]["httpGet"]
        assert http["path"] in paths and http["port"] == port["name"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    config = by_kind(rendered, "ConfigMap")["data"]
    assert int(config["JUDGE_PORT"]) == port["containerPort"]
    settings = {f"JUDGE_{name.upper()}" for name in Settings.model_fields}
    named = set(config) | {e["name"] for e in container.get("env", [])}
    judge_vars = {name for name in named if name.startswith("JUDGE_")}
    assert judge_vars <= settings, judge_vars - settings
    # Values parse as the service's own settings.
    Settings(**{name.removeprefix("JUDGE_").lower(): value for name, value in config.items()})
    spec = deployment["spec"]["template"]["spec"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
    assert spec["securityContext"]["runAsNonRoot"]
    secret_volumes = [v for v in spec["volumes"] if "secret" in v]
    mounted = {m["mountPath"] for m in container["volumeMounts"]}
    assert secret_volumes and str(Path(config["JUDGE_API_KEYS_FILE"]).parent) in mounted


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_route_timeout_deadline_and_grace_agree(overlay: str) -> None:
    """The gateway waits for the service's longest deadline plus a reply margin, so a late
    request gets the service's own 504; the pod's grace period is exactly the preStop delay,
    the shutdown budget and the exit margin (shorter kills a draining pod, longer delays
    every rollout); and the drain never outlasts the longest deadline."""
    docs = render(overlay)
    settings = configured(docs)
    for rule in by_kind(docs, "HTTPRoute")["spec"]["rules"]:
        timeouts = rule["timeouts"]
        assert gateway_seconds(timeouts["request"]) == settings.max_request_timeout_s + REPLY_MARGIN_S
        assert "backendRequest" not in timeouts or gateway_seconds(timeouts["backendRequest"]) >= (
            settings.max_request_timeout_s
        )
    spec = by_kind(docs, "Deployment")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert spec["terminationGracePeriodSeconds"] == pre_stop + settings.shutdown_grace_s + EXIT_MARGIN_S
    assert settings.shutdown_grace_s <= settings.max_request_timeout_s


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_have_timeouts_and_startup_bounds_the_load(overlay: str) -> None:
    docs = render(overlay)
    (container,) = by_kind(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    for name in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container[name]
        assert 0 < probe["timeoutSeconds"] <= probe["periodSeconds"], name
    # Startup succeeds only once the model is loaded and warm, so its window bounds the load.
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/ready"
    window = startup.get("initialDelaySeconds", 0) + startup["periodSeconds"] * startup["failureThreshold"]
    # The image allows the same load at least as long before its HEALTHCHECK counts failures.
    assert healthcheck_start_period_s(container["image"].rsplit(":", 1)[1]) <= window <= 3600
    # The service's own load deadline, where it has one, fires first and says why in the log.
    load_timeout_s = getattr(configured(docs), "load_timeout_s", None)
    assert load_timeout_s is None or load_timeout_s < window


def test_every_served_path_is_routed_or_private(rendered: list[dict]) -> None:
    """Read from the app itself, so a new endpoint cannot be left out of the gateway."""
    app = create_app(Settings(playground=True))  # builds routes only: no model loads
    served = {route.path for route in app.routes}
    assert PRIVATE_PATHS <= served, "a private path the app no longer serves"
    assert {"/v1/score", "/v1/compare", "/v1/rank", "/playground", "/docs", "/openapi.json"} <= served
    rules = by_kind(rendered, "HTTPRoute")["spec"]["rules"]
    matches = [match["path"] for rule in rules for match in rule["matches"]]
    shared_jobs = jobs_shared(rendered)
    for path in sorted(served):
        if path.startswith(BATCH_PATHS):
            assert routed(path, matches) == shared_jobs, f"{path}: routed only where every replica sees the same jobs"
        elif path in PRIVATE_PATHS:
            assert not routed(path, matches), f"{path} is private but the HTTPRoute serves it"
        else:
            assert routed(path, matches), f"{path} is served but not routed: add it to httproute.yaml"


# The batch API: routed only where every replica sees the same jobs.
BATCH_PATHS = ("/v1/files", "/v1/batches")


def jobs_shared(docs: list[dict]) -> bool:
    """Whether every replica sees the same batch jobs: one PostgreSQL, or one replica."""
    (container,) = by_kind(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    if "JUDGE_JOBS_DATABASE_URL" in {e["name"] for e in container.get("env", [])}:
        return True
    autoscalers = [d for d in docs if d["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")]
    most = max(d["spec"].get("maxReplicas", d["spec"].get("maxReplicaCount", 100)) for d in autoscalers)
    return by_kind(docs, "Deployment")["spec"]["replicas"] == 1 and most == 1


def test_route_matching_follows_the_gateway_rules() -> None:
    matches = [{"type": "PathPrefix", "value": "/docs"}, {"type": "Exact", "value": "/openapi.json"}]
    assert routed("/docs", matches) and routed("/docs/assets/{name}", matches)
    assert not routed("/docsearch", matches)  # prefixes match whole path elements
    assert routed("/openapi.json", matches) and not routed("/openapi.json/x", matches)


def test_keda_overlay_replaces_the_hpa(client) -> None:
    docs = render("cpu-keda")
    kinds = {doc["kind"] for doc in docs}
    assert "ScaledObject" in kinds and "HorizontalPodAutoscaler" not in kinds
    scaled = by_kind(docs, "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    target = scaled["spec"]["scaleTargetRef"]
    assert target["kind"] == "Deployment" and target["name"] == by_kind(docs, "Deployment")["metadata"]["name"]
    assert scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    (prometheus,) = [t for t in scaled["spec"]["triggers"] if t["type"] == "prometheus"]
    assert float(prometheus["metadata"]["threshold"]) > 0
    service = by_kind(docs, "Service")["metadata"]["name"]
    assert f'service="{service}"' in prometheus["metadata"]["query"]
    exported = {s.name for f in text_string_to_metric_families(client.get("/metrics").text) for s in f.samples}
    for metric in re.findall(r"\b(judge_[a-z_]+)\b", prometheus["metadata"]["query"]):
        assert metric in exported, metric


def test_the_job_store_has_a_writable_volume(rendered: list[dict]) -> None:
    """The root filesystem is read-only: JUDGE_DATA_DIR is a mounted, writable volume."""
    spec = by_kind(rendered, "Deployment")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    data_dir = by_kind(rendered, "ConfigMap")["data"]["JUDGE_DATA_DIR"]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == data_dir]
    assert not mount.get("readOnly")
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    assert "emptyDir" in volume or "persistentVolumeClaim" in volume


def test_postgres_overlay_takes_the_database_url_from_a_secret() -> None:
    docs = render("cpu-postgres")
    deployment = by_kind(docs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    (env,) = [e for e in container["env"] if e["name"] == "JUDGE_JOBS_DATABASE_URL"]
    # Referenced, never inlined: no value in the env, the ConfigMap or a rendered Secret.
    assert "value" not in env and env["valueFrom"]["secretKeyRef"] == {"name": "judge-jobs-database", "key": "url"}
    assert "JUDGE_JOBS_DATABASE_URL" not in by_kind(docs, "ConfigMap")["data"]
    assert "Secret" not in {doc["kind"] for doc in docs}
    assert "postgresql://" not in json.dumps(docs)
    # Several replicas share the one database.
    assert deployment["spec"]["replicas"] > 1 and by_kind(docs, "HorizontalPodAutoscaler")["spec"]["minReplicas"] > 1
    # The overlays without the component keep their own SQLite store.
    for overlay in ("cpu", "gpu", "cpu-keda"):
        (other,) = by_kind(render(overlay), "Deployment")["spec"]["template"]["spec"]["containers"]
        assert "JUDGE_JOBS_DATABASE_URL" not in {e["name"] for e in other["env"]}


def test_gpu_overlay_requests_gpus_and_vllm() -> None:
    docs = render("gpu")
    (container,) = by_kind(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert by_kind(docs, "ConfigMap")["data"]["JUDGE_ENGINE"] == "vllm"
    spec = by_kind(docs, "Deployment")["spec"]["template"]["spec"]
    assert spec["tolerations"] and spec["nodeSelector"]
    assert any(v.get("emptyDir", {}).get("medium") == "Memory" for v in spec["volumes"])


def test_hpa_metric_is_exported_by_the_service(client) -> None:
    hpa = by_kind(render("cpu"), "HorizontalPodAutoscaler")
    (pods_metric,) = [m for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    name = pods_metric["pods"]["metric"]["name"]
    assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"])
    rule = yaml.safe_load((ROOT / "deploy" / "prometheus-adapter" / "rules.yaml").read_text())["rules"][0]
    assert rule["name"]["as"] == name
    series = re.match(r"(\w+)\{", rule["seriesQuery"]).group(1)
    exported = {s.name for f in text_string_to_metric_families(client.get("/metrics").text) for s in f.samples}
    assert series in exported


def test_dashboard_queries_name_exported_metrics(client) -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    exported = {s.name for f in text_string_to_metric_families(client.get("/metrics").text) for s in f.samples}
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            for metric in re.findall(r"\b(judge_[a-z_]+)\b", target["expr"]):
                assert metric in exported, (panel["title"], metric)


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run([tool("hadolint"), str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_the_readme_entry_point() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    commands = [json.loads(line.removeprefix("CMD ")) for line in dockerfile.splitlines() if line.startswith("CMD ")]
    assert commands and all(cmd == ["judge-service", "serve"] for cmd in commands)
    makefile = (ROOT / "Makefile").read_text()
    assert "$(BIN)/judge-service serve" in makefile
    assert re.search(r"^EXPOSE 8000$", dockerfile, flags=re.M)
    assert re.search(r"^USER 10001$", dockerfile, flags=re.M)
    stages = re.findall(r"^FROM (\S+) AS (\S+)$", dockerfile, flags=re.M)
    targets = [target for _, target in stages]
    # The CPU stages come before the CUDA ones (the legacy builder builds every stage up to
    # its target), and the last stage, the default target, is the CPU image.
    assert targets.index("cpu") < targets.index("gpu-build") < targets.index("gpu")
    assert stages[-1] == ("cpu", "default")
    assert not dockerfile.startswith("# syntax=")  # a frontend image an air-gapped build cannot pull
