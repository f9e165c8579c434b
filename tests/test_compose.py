"""The container deployment (``compose/``) and the Prometheus configurations, checked without Docker.

No server is needed: the Compose file is validated against the Compose Specification's JSON schema
(the copy vendored by check-jsonschema), every command it and the Dockerfile name is parsed by the
service's own command line, every health-check port is compared with the service's settings, and
the alert rules may only use metric names the code defines.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml
from emeterai_shared.config import ServiceSettings
from emeterai_shared.runtime import ServiceDefinition, _parser
from payment_service.config import PaymentSettings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_DIR = ROOT / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
DOCKERFILE = COMPOSE_DIR / "Dockerfile"
ALERTS = COMPOSE_DIR / "prometheus" / "alerts.yml"
PROMETHEUS_CONFIGS = {
    "compose": COMPOSE_DIR / "prometheus" / "prometheus.yml",
    "ops": ROOT / "ops" / "prometheus" / "prometheus.yml",
}
SERVICES = ("order", "payment", "minting", "stamping")
TIERS = ("api", "worker", "relay")
SECRETS_MOUNT = "/srv/emeterai"
RABBITMQ_PROMETHEUS_PORT = 15692


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = _yaml(COMPOSE_FILE)
    assert isinstance(data, dict)
    return data


def _tiers() -> Iterator[tuple[str, str]]:
    for svc in SERVICES:
        for tier in TIERS:
            yield svc, tier


TIER_IDS = [f"{svc}-{tier}" for svc, tier in _tiers()]


def _definition(svc: str) -> ServiceDefinition:
    definition = importlib.import_module(f"{svc}_service.bootstrap").SERVICE
    assert isinstance(definition, ServiceDefinition)
    return definition


def _parses(svc: str, argv: list[str]) -> None:
    """``python -m <svc>_service <argv>`` is a valid command line of that service."""
    try:
        _parser(_definition(svc)).parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"`python -m {svc}_service {shlex.join(argv)}` is not a command of the service ({exc})")


_INTERPOLATION = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def _interpolate(value: str, variables: Mapping[str, str] | None = None) -> str:
    """Compose's variable interpolation (``${X:-default}``, ``${X}``, ``$X``, ``$$``)."""
    variables = variables or {}

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(3)
        return variables.get(name) or match.group(2) or ""

    return _INTERPOLATION.sub(replace, value)


def _environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: _interpolate(str(value)) for key, value in env.items()}


def _settings(svc: str, env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch) -> ServiceSettings:
    """The service's settings as its container sees them (the compose environment, defaults
    for the rest: whatever this machine's environment sets is left out)."""
    for key in list(os.environ):
        if key.startswith(("EMETERAI_", f"{svc.upper()}_")):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return _definition(svc).settings()


# --- the Compose file ---------------------------------------------------------------------


def test_the_compose_specification_schema_ships_with_check_jsonschema() -> None:
    schema = resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
    assert json.loads(schema.read_text())["title"] == "Compose Specification"


def _check_compose(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True, text=True, timeout=120, check=False,
    )


def test_compose_file_follows_the_compose_specification() -> None:
    result = _check_compose(COMPOSE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_check_rejects_a_broken_compose_file(tmp_path: Path) -> None:
    broken = tmp_path / "compose.yaml"
    broken.write_text("services:\n  order-api:\n    image: x\n    depends_on: {setup: {condition: sometime}}\n")
    assert _check_compose(broken).returncode != 0


def test_every_service_has_an_api_a_worker_and_a_relay(compose: dict[str, Any]) -> None:
    services = compose["services"]
    missing = [name for name in TIER_IDS if name not in services]
    assert not missing, f"compose.yaml lacks {missing}"
    for name in ("postgres", "rabbitmq", "setup", "prometheus"):
        assert name in services


@pytest.mark.parametrize(("svc", "tier"), list(_tiers()), ids=TIER_IDS)
def test_tier_runs_its_own_process_and_scales(compose: dict[str, Any], svc: str, tier: str) -> None:
    service = compose["services"][f"{svc}-{tier}"]
    assert service["build"]["args"]["SERVICE"] == svc
    assert (COMPOSE_DIR / service["build"]["context"] / service["build"]["dockerfile"]).resolve() == DOCKERFILE
    assert service["command"] == [tier]
    _parses(svc, service["command"])
    assert "container_name" not in service, "a fixed container name prevents --scale"
    assert service["depends_on"]["setup"]["condition"] == "service_completed_successfully"
    assert "healthcheck" in service
    if tier != "api":
        assert "ports" not in service, "a fixed host port prevents --scale"


def test_setup_runs_the_steps_of_make_setup(compose: dict[str, Any]) -> None:
    setup = compose["services"]["setup"]
    assert setup["entrypoint"][0] == "/bin/sh"
    assert "SERVICE" not in (setup["build"].get("args") or {}), "setup needs the image with every service"
    for dependency in ("postgres", "rabbitmq"):
        assert setup["depends_on"][dependency]["condition"] == "service_healthy"
    script = _interpolate("\n".join(setup["command"]))
    steps: list[tuple[str, list[str]]] = []
    for line in filter(None, (raw.strip() for raw in script.splitlines())):
        match = re.fullmatch(r"python -m (\w+)_service (.+)", line)
        assert match, f"unexpected set-up step {line!r}"
        svc, argv = match.group(1), shlex.split(match.group(2))
        assert svc in SERVICES
        _parses(svc, argv)
        steps.append((svc, argv))
    assert steps == _make_setup_steps(), "compose's setup and `make setup` have drifted apart"


def _make_setup_steps() -> list[tuple[str, list[str]]]:
    """The service commands the Makefile's ``setup`` target runs, in order."""
    makefile = (ROOT / "Makefile").read_text()
    services = re.search(r"^SERVICES\s*:?=\s*(.+)$", makefile, re.M)
    recipe = re.search(r"^setup:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert services and recipe
    steps: list[tuple[str, list[str]]] = []
    for line in recipe.group(1).splitlines():
        loop = re.search(r"for s in \$\(SERVICES\); do \$\(PY\) -m \$\$\{s\}_service (.+?) \|\|", line)
        if loop:
            steps += [(svc, shlex.split(loop.group(1))) for svc in services.group(1).split()]
        elif match := re.search(r"\$\(PY\) -m (\w+)_service (.+)$", line):
            steps.append((match.group(1), shlex.split(match.group(2))))
    return steps


def test_order_setup_runs_before_the_services_that_read_its_token_key(compose: dict[str, Any]) -> None:
    script = "\n".join(compose["services"]["setup"]["command"])
    assert script.index("order_service setup") < script.index("stamping_service setup")
    assert script.index("payment_service dev-bank") < script.index("payment_service setup")


@pytest.mark.parametrize(("svc", "tier"), list(_tiers()), ids=TIER_IDS)
def test_healthcheck_and_ports_match_the_settings(compose: dict[str, Any], svc: str, tier: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    service = compose["services"][f"{svc}-{tier}"]
    settings = _settings(svc, _environment(service), monkeypatch)
    assert settings.http_host == "0.0.0.0", "inside a container the process must listen on every interface"
    probe = " ".join(service["healthcheck"]["test"])
    found = re.search(r"http://127\.0\.0\.1:(\d+)(/\w+)", probe)
    assert found, f"no HTTP probe in {probe!r}"
    port, path = int(found.group(1)), found.group(2)
    expected = {"api": (settings.http_port, "/readyz"), "worker": (settings.worker_metrics_port, "/healthz"),
                "relay": (settings.relay_metrics_port, "/healthz")}[tier]
    assert (port, path) == expected
    if tier == "api":
        (mapping,) = service["ports"]
        assert int(_interpolate(mapping).rsplit(":", 1)[1]) == settings.http_port


@pytest.mark.parametrize(("svc", "tier"), list(_tiers()), ids=TIER_IDS)
def test_secrets_reach_every_process_read_only(compose: dict[str, Any], svc: str, tier: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    service = compose["services"][f"{svc}-{tier}"]
    (mount,) = [v for v in service["volumes"] if v.split(":")[1] == SECRETS_MOUNT]
    assert mount.split(":")[0] in compose["volumes"]
    assert mount.endswith(":ro"), "only setup writes the keys"
    settings = _settings(svc, _environment(service), monkeypatch)
    assert Path(settings.secrets_dir).is_relative_to(SECRETS_MOUNT)
    assert Path(settings.auth_public_key_file).is_relative_to(SECRETS_MOUNT)
    setup = compose["services"]["setup"]
    assert f"{mount.split(':')[0]}:{SECRETS_MOUNT}" in setup["volumes"], "setup writes the keys"
    assert _environment(setup) == _environment(service), "setup and the services share one configuration"


def test_payment_reads_the_bank_that_setup_creates(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings("payment", _environment(compose["services"]["payment-api"]), monkeypatch)
    assert isinstance(settings, PaymentSettings)
    assert Path(settings.partners_file).is_relative_to(SECRETS_MOUNT)


def test_infrastructure_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["postgres"]["image"].startswith("postgres:15")
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    rabbitmq = services["rabbitmq"]
    assert rabbitmq["image"].startswith("rabbitmq:3.13-management")
    assert rabbitmq["healthcheck"]["test"][1:] == ["rabbitmq-diagnostics", "-q", "ping"]
    plugins = next(v for v in rabbitmq["volumes"] if v.split(":")[1] == "/etc/rabbitmq/enabled_plugins")
    enabled = (COMPOSE_DIR / plugins.split(":")[0]).read_text()
    assert "rabbitmq_prometheus" in enabled and "rabbitmq_management" in enabled
    assert services["prometheus"]["image"].startswith("prom/prometheus")


def test_every_file_the_compose_file_mounts_exists(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE_DIR / source).exists(), f"{name} mounts {source}, which does not exist"


# --- the Dockerfile -----------------------------------------------------------------------


def _dockerfile() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_dockerfile_runs_the_service_module_as_a_non_root_user() -> None:
    lines = _dockerfile()
    entrypoint = json.loads(next(line for line in lines if line.startswith("ENTRYPOINT")).split(None, 1)[1])
    assert 'exec python -m "${SERVICE}_service" "$@"' in " ".join(entrypoint)
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert any(re.fullmatch(r"ARG PYTHON_IMAGE=python:3\.11-slim", line) for line in lines)
    for svc in SERVICES:  # the module `python -m ${SERVICE}_service` runs exists for every service
        assert importlib.util.find_spec(f"{svc}_service.__main__") is not None


def test_dockerfile_installs_the_pinned_uv_and_the_locked_workspace() -> None:
    lines = _dockerfile()
    make_uv = re.search(r"^UV_VERSION\s*:=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M)
    docker_uv = next(re.fullmatch(r"ARG UV_VERSION=(\S+)", line) for line in lines if line.startswith("ARG UV_VERSION"))
    assert make_uv and docker_uv and docker_uv.group(1) == make_uv.group(1)
    syncs = [line for line in lines if "uv sync" in line]
    assert syncs and all("--frozen" in line and "--no-dev" in line for line in syncs)
    assert all('--package "${SERVICE}-service"' in line for line in syncs)
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())
    copied = " ".join(line for line in lines if line.startswith("COPY"))
    for member in root["tool"]["uv"]["workspace"]["members"]:
        assert f"{member}/pyproject.toml" in copied, f"the Dockerfile does not copy {member}'s manifest"
        project = tomllib.loads((ROOT / member / "pyproject.toml").read_text())["project"]["name"]
        assert project in root["tool"]["uv"]["sources"]
    for svc in SERVICES:  # `--package <svc>-service` names a workspace project
        assert (ROOT / "services" / svc / "pyproject.toml").read_text().count(f'name = "{svc}-service"') == 1


def test_the_image_holds_no_test_kit() -> None:
    """What `uv sync --no-dev` installs (the image's two syncs) leaves out the test kit and pytest,
    and no COPY brings the test kit's code in."""
    copies = [line for line in _dockerfile() if line.startswith("COPY")]
    assert not [line for line in copies if line.split()[1].startswith("testkit") and
                not line.split()[1].endswith("pyproject.toml")]
    assert not [line for line in copies if line.split()[1] in {".", "./"}]
    uv = ROOT / ".tools" / "bin" / "uv"
    for package in [None, *(f"{svc}-service" for svc in SERVICES)]:
        args = [str(uv), "export", "--frozen", "--no-dev", "--no-hashes", "--no-header"]
        if package:
            args += ["--package", package]
        listed = subprocess.run(args, cwd=ROOT, check=True, capture_output=True, text=True).stdout
        names = {re.split(r"[=\s;@]", line.strip())[0].lower() for line in listed.splitlines()
                 if line.strip() and not line.lstrip().startswith("#")}
        assert "pytest" not in names and "emeterai-testkit" not in names, (package, sorted(names))
        assert not any("testkit" in line for line in listed.splitlines()), package


def test_build_context_keeps_local_state_out() -> None:
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*") + 1:][:4] == ["!pyproject.toml", "!uv.lock", "!shared/", "!services/"]


# --- Prometheus ---------------------------------------------------------------------------


def _scrape_jobs(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {job["job_name"]: job for job in config["scrape_configs"]}


def _job_targets(job: Mapping[str, Any]) -> list[tuple[str, int]]:
    targets = []
    for static in job.get("static_configs", []):
        for target in static["targets"]:
            host, port = target.rsplit(":", 1)
            targets.append((host, int(port)))
    for dns in job.get("dns_sd_configs", []):
        assert dns.get("type") == "A", "type A: one target per replica"
        targets += [(name, int(dns["port"])) for name in dns["names"]]
    return targets


def _tier_port(settings: ServiceSettings, tier: str) -> int:
    ports: dict[str, int] = {"api": settings.http_port, "worker": settings.worker_metrics_port,
                             "relay": settings.relay_metrics_port}
    return ports[tier]


@pytest.mark.parametrize("which", list(PROMETHEUS_CONFIGS))
def test_prometheus_scrapes_every_process_and_rabbitmq(which: str, compose: dict[str, Any],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    path = PROMETHEUS_CONFIGS[which]
    jobs = _scrape_jobs(_yaml(path))
    for svc, tier in _tiers():
        name = f"{svc}-{tier}"
        assert name in jobs, f"{path} does not scrape {name}"
        env = _environment(compose["services"][name]) if which == "compose" else {}
        port = _tier_port(_settings(svc, env, monkeypatch), tier)
        host = name if which == "compose" else "127.0.0.1"
        assert _job_targets(jobs[name]) == [(host, port)]
        if which == "compose":
            assert "dns_sd_configs" in jobs[name], "every replica of a scaled tier must be scraped"
    rabbitmq_host = "rabbitmq" if which == "compose" else "127.0.0.1"
    assert _job_targets(jobs["rabbitmq"]) == [(rabbitmq_host, RABBITMQ_PROMETHEUS_PORT)]


def test_both_prometheus_configs_load_the_one_rules_file(compose: dict[str, Any]) -> None:
    ops = PROMETHEUS_CONFIGS["ops"]
    assert [(ops.parent / rule).resolve() for rule in _yaml(ops)["rule_files"]] == [ALERTS]
    prometheus = compose["services"]["prometheus"]
    mounts = dict(reversed(v.split(":")[:2]) for v in prometheus["volumes"])
    config_in_container = Path("/etc/prometheus/prometheus.yml")
    assert (COMPOSE_DIR / mounts[str(config_in_container)]).resolve() == PROMETHEUS_CONFIGS["compose"]
    for rule in _yaml(PROMETHEUS_CONFIGS["compose"])["rule_files"]:
        assert (COMPOSE_DIR / mounts[str(config_in_container.parent / rule)]).resolve() == ALERTS
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]


def test_make_prometheus_uses_the_ops_config() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^prometheus:", makefile, re.M)
    assert "--config.file=ops/prometheus/prometheus.yml --storage.tsdb.path=var/prometheus" in makefile


_METRIC = re.compile(r"\b(Counter|Gauge|Histogram|Summary)\(\s*[\"'](emeterai_\w+)[\"']")
_SUFFIXES = {"Counter": ("_total", "_created"), "Gauge": ("",), "Histogram": ("_bucket", "_count", "_sum", "_created"),
             "Summary": ("", "_count", "_sum", "_created")}


def _defined_metrics() -> set[str]:
    """Every series name the code's Prometheus metrics expose."""
    names: set[str] = set()
    for source in [*(ROOT / "shared").rglob("*.py"), *(ROOT / "services").rglob("*.py")]:
        if "tests" in source.relative_to(ROOT).parts:
            continue
        for kind, name in _METRIC.findall(source.read_text()):
            base = name.removesuffix("_total") if kind == "Counter" else name
            names.update(base + suffix for suffix in _SUFFIXES[kind])
    return names


def _rules() -> list[dict[str, Any]]:
    return [rule for group in _yaml(ALERTS)["groups"] for rule in group["rules"]]


def test_alert_rules_use_only_metrics_the_code_defines() -> None:
    defined = _defined_metrics()
    assert "emeterai_outbox_backlog" in defined and "emeterai_http_requests_total" in defined
    for rule in _rules():
        for name in re.findall(r"\bemeterai_\w+", rule["expr"]):
            assert name in defined, f"alert {rule['alert']} uses {name}, which no code defines"


def test_alert_rules_cover_the_platform_risks() -> None:
    rules = _rules()
    expressions = " ".join(rule["expr"] for rule in rules)
    for needed in ("emeterai_parked_messages", "emeterai_outbox_oldest_pending_seconds",
                   "emeterai_stock_available", "emeterai_queue_depth", "up == 0"):
        assert needed in expressions, f"no alert rule on {needed}"
    for rule in rules:
        assert rule["alert"] and rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]
    jobs = {name for config in PROMETHEUS_CONFIGS.values() for name in _scrape_jobs(_yaml(config))}
    for job in re.findall(r'job="([^"]+)"', expressions):
        assert job in jobs, f"alert rules name the job {job}, which no configuration scrapes"


def test_an_outbox_that_stops_publishing_pages_someone() -> None:
    """Back-pressure never parks an outbox row, so a row that waits is seen by its age alone."""
    stalled = [rule for rule in _rules() if "emeterai_outbox_oldest_pending_seconds" in rule["expr"]
               and rule["labels"]["severity"] == "critical"]
    assert [rule["alert"] for rule in stalled] == ["OutboxStalled"]


def test_promtool_accepts_the_configs_and_rules() -> None:
    # `make test` puts it in .tools/bin (scripts/ensure-promtool); a missing one fails, never skips
    local = ROOT / ".tools" / "bin" / "promtool"
    promtool = str(local) if local.exists() else shutil.which("promtool")
    assert promtool is not None, "promtool is missing: run `make packages` (scripts/ensure-promtool)"
    for args in (["check", "rules", str(ALERTS)],
                 *(["check", "config", str(path)] for path in PROMETHEUS_CONFIGS.values())):
        result = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}{result.stderr}"
