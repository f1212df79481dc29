"""Static checks of collector-config/: collector configs, compose stack, Prometheus, Tempo, Grafana.

No collector or container runs here (there is no Docker engine in CI): the files are parsed and
cross-checked, and the alert rules go through ``promtool`` (Debian package ``prometheus``).
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def _load_attributes() -> Any:
    """Load otel_progress/_attributes.py by path, without importing the package (and Celery)."""
    spec = importlib.util.spec_from_file_location(
        "_otel_progress_attributes", ROOT / "otel_progress" / "_attributes.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


attrs = _load_attributes()
CONFIG_DIR = ROOT / "collector-config"
COMPOSE_FILE = CONFIG_DIR / "docker-compose.yaml"
RULES_FILE = CONFIG_DIR / "alerts.rules.yaml"
RULES_TEST_FILE = CONFIG_DIR / "alerts.test.yaml"
PROMETHEUS_FILE = CONFIG_DIR / "prometheus.yml"
TEMPO_FILE = CONFIG_DIR / "tempo.yaml"
DATASOURCES_FILE = CONFIG_DIR / "grafana" / "provisioning" / "datasources" / "datasources.yaml"
README_FILE = CONFIG_DIR / "README.md"
OBSERVABILITY_DOC = ROOT / "docs" / "observability.md"

PINNED_COLLECTOR_VERSION = "0.115.1"
COLLECTOR_IMAGE = f"otel/opentelemetry-collector-contrib:{PINNED_COLLECTOR_VERSION}"
COLLECTOR_CONFIGS = ("gateway.yaml", "debug.yaml")
COMPONENT_KINDS = ("receivers", "processors", "exporters", "connectors", "extensions")
SIGNALS = ("traces", "metrics", "logs")

# Component types these configs may use, all present in otelcol-contrib 0.115.1 (a subset of that
# build's manifest: opentelemetry-collector-releases, distributions/otelcol-contrib/manifest.yaml).
# Deliberately absent because 0.115.1 no longer has them: the "jaeger" exporter (removed in
# v0.85.0, contrib PR #26546; Jaeger takes OTLP), the "logging" exporter (removed in v0.111.0,
# collector PR #11037; use "debug") and the "spanmetrics" processor (replaced by the connector).
KNOWN_COMPONENT_TYPES: dict[str, frozenset[str]] = {
    "receivers": frozenset(
        {"otlp", "prometheus", "hostmetrics", "filelog", "zipkin", "jaeger", "kafka", "nop"}
    ),
    "processors": frozenset(
        {
            "batch",
            "memory_limiter",
            "attributes",
            "resource",
            "resourcedetection",
            "filter",
            "transform",
            "span",
            "tail_sampling",
            "probabilistic_sampler",
            "k8sattributes",
            "groupbytrace",
            "cumulativetodelta",
            "deltatocumulative",
        }
    ),
    "exporters": frozenset(
        {
            "otlp",
            "otlphttp",
            "debug",
            "prometheus",
            "prometheusremotewrite",
            "file",
            "kafka",
            "loadbalancing",
            "zipkin",
            "nop",
        }
    ),
    "connectors": frozenset(
        {"spanmetrics", "servicegraph", "count", "exceptions", "forward", "routing"}
    ),
    "extensions": frozenset(
        {"health_check", "pprof", "zpages", "file_storage", "basicauth", "bearertokenauth"}
    ),
}

# Connector type -> (signal it consumes as an exporter, signals it produces as a receiver).
CONNECTOR_SIGNALS: dict[str, tuple[str, frozenset[str]]] = {
    "spanmetrics": ("traces", frozenset({"metrics"})),
    "servicegraph": ("traces", frozenset({"metrics"})),
    "exceptions": ("traces", frozenset({"metrics", "logs"})),
}

# Ports the files must agree on.
OTLP_GRPC_PORT = 4317
OTLP_HTTP_PORT = 4318
PROMETHEUS_EXPORTER_PORT = 8889
JAEGER_UI_PORT = 16686
TEMPO_API_PORT = 3200
PROMETHEUS_PORT = 9090
GRAFANA_PORT = 3000
HEALTH_CHECK_PORT = 13133

ALERT_TASK_ERROR_RATE = "OtelProgressTaskErrorRateHigh"
ALERT_SECTION_FAILED = "OtelProgressSectionFailed"
ALERT_TASK_STALLED = "OtelProgressTaskStalled"

PROMTOOL_MISSING = "promtool not found on PATH: apt-get install -y prometheus"


# --- helpers -------------------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def collector_config(name: str) -> dict[str, Any]:
    config = load_yaml(CONFIG_DIR / name)
    assert isinstance(config, dict), f"{name} is not a mapping"
    return config


def compose() -> dict[str, Any]:
    config = load_yaml(COMPOSE_FILE)
    assert isinstance(config, dict)
    return config


def compose_services() -> dict[str, dict[str, Any]]:
    services = compose()["services"]
    assert isinstance(services, dict)
    return services


def pipelines(config: dict[str, Any]) -> dict[str, dict[str, list[str]]]:
    return config["service"]["pipelines"]


def signal_of(pipeline_id: str) -> str:
    """``traces/foo`` -> ``traces``."""
    return pipeline_id.split("/", 1)[0]


def component_type(component_id: str) -> str:
    """``otlp/jaeger`` -> ``otlp``."""
    return component_id.split("/", 1)[0]


def host_port(endpoint: str) -> tuple[str, int]:
    """``0.0.0.0:4317``, ``jaeger:4317`` or ``http://tempo:3200`` -> (host, port)."""
    match = re.fullmatch(r"(?:[a-z]+://)?([^:/]+):(\d+)/?", endpoint)
    assert match, f"no host:port in {endpoint!r}"
    return match.group(1), int(match.group(2))


def published_ports(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """Compose short-syntax ``ip:host:container`` entries -> (ip, host port, container port)."""
    result = []
    for entry in service.get("ports", []):
        parts = str(entry).split(":")
        assert len(parts) == 3, f"port {entry!r} does not name the host address"
        result.append((parts[0], int(parts[1]), int(parts[2])))
    return result


def container_ports(service: dict[str, Any]) -> set[int]:
    """Ports a service offers to the other containers: published and ``expose``d ones."""
    exposed = {int(port) for port in service.get("expose", [])}
    return exposed | {container for _, _, container in published_ports(service)}


def bind_mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path (relative to the compose file) of ``./src:/dst[:ro]``."""
    mounts = {}
    for entry in service.get("volumes", []):
        source, target, *_ = str(entry).split(":")
        mounts[target] = source
    return mounts


def go_duration_seconds(text: str) -> float:
    """Go ``time.Duration`` strings as the collector parses them: ``100ms``, ``1m30s``, ``1h``."""
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"bad duration {text!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


def prometheus_name(otel_name: str, unit_suffix: str = "", *, counter: bool = False) -> str:
    """The collector prometheus exporter's name for an OTel metric (add_metric_suffixes: true)."""
    name = otel_name.replace(".", "_")
    if unit_suffix:
        name += f"_{unit_suffix}"
    return name + ("_total" if counter else "")


def alert_rules() -> dict[str, dict[str, Any]]:
    groups = load_yaml(RULES_FILE)["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}


def iter_alert_rule_tests() -> Iterator[dict[str, Any]]:
    for test in load_yaml(RULES_TEST_FILE)["tests"]:
        yield from test.get("alert_rule_test", [])


def gateway_port(receiver_protocol: str) -> int:
    endpoint = collector_config("gateway.yaml")["receivers"]["otlp"]["protocols"][receiver_protocol]
    return host_port(endpoint["endpoint"])[1]


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """Run promtool; a missing promtool fails the calling test (never skips it)."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(PROMTOOL_MISSING)
    return subprocess.run(
        [path, *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )


# --- every file ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    sorted([*CONFIG_DIR.rglob("*.yaml"), *CONFIG_DIR.rglob("*.yml")]),
    ids=lambda p: str(p.relative_to(CONFIG_DIR)),
)
def test_yaml_file_parses_to_a_mapping(path: Path) -> None:
    """Every YAML file under collector-config/ parses and holds a non-empty mapping."""
    content = load_yaml(path)
    assert isinstance(content, dict) and content


def test_expected_files_exist() -> None:
    """collector-config/ ships every file the README and the compose stack refer to."""
    for name in (
        *COLLECTOR_CONFIGS,
        "docker-compose.yaml",
        "alerts.rules.yaml",
        "alerts.test.yaml",
        "prometheus.yml",
        "tempo.yaml",
        "README.md",
    ):
        assert (CONFIG_DIR / name).is_file(), name
    assert DATASOURCES_FILE.is_file()


# --- collector configs ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", COLLECTOR_CONFIGS)
def test_pipeline_components_are_defined(name: str) -> None:
    """Every receiver, processor and exporter a pipeline names is defined in its section."""
    config = collector_config(name)
    connectors = set(config.get("connectors") or {})
    for pipeline_id, pipeline in pipelines(config).items():
        assert signal_of(pipeline_id) in SIGNALS, pipeline_id
        assert pipeline.get("receivers") and pipeline.get("exporters"), pipeline_id
        for kind in ("receivers", "processors", "exporters"):
            defined = set(config.get(kind) or {})
            if kind != "processors":
                defined |= connectors  # a connector is the exporter of one, receiver of another
            for component_id in pipeline.get(kind, []):
                assert component_id in defined, (
                    f"{name}: {pipeline_id} uses undefined {kind} {component_id}"
                )


@pytest.mark.parametrize("name", COLLECTOR_CONFIGS)
def test_service_extensions_are_defined(name: str) -> None:
    """Every extension the service enables is defined under extensions:."""
    config = collector_config(name)
    for extension_id in config["service"].get("extensions", []):
        assert extension_id in (config.get("extensions") or {}), extension_id


@pytest.mark.parametrize("name", COLLECTOR_CONFIGS)
def test_component_types_exist_in_pinned_collector(name: str) -> None:
    """Every defined component's type (before any '/') is a component of contrib 0.115.1."""
    config = collector_config(name)
    for kind in COMPONENT_KINDS:
        for component_id in config.get(kind) or {}:
            assert component_type(component_id) in KNOWN_COMPONENT_TYPES[kind], (
                f"{name}: {kind} {component_id!r} is not a {PINNED_COLLECTOR_VERSION} component"
            )


@pytest.mark.parametrize("name", COLLECTOR_CONFIGS)
def test_defined_components_are_used(name: str) -> None:
    """No component is defined without a pipeline (or the service) using it."""
    config = collector_config(name)
    used = {
        component_id
        for pipeline in pipelines(config).values()
        for kind in ("receivers", "processors", "exporters")
        for component_id in pipeline.get(kind, [])
    } | set(config["service"].get("extensions", []))
    for kind in COMPONENT_KINDS:
        for component_id in config.get(kind) or {}:
            assert component_id in used, f"{name}: {kind} {component_id} is never used"


@pytest.mark.parametrize("name", COLLECTOR_CONFIGS)
def test_connectors_export_in_one_pipeline_and_receive_in_another(name: str) -> None:
    """A connector is an exporter of a pipeline of its input signal, a receiver of its output."""
    config = collector_config(name)
    for connector_id in config.get("connectors") or {}:
        kind = component_type(connector_id)
        assert kind in CONNECTOR_SIGNALS, f"add the signals of connector {kind!r} to the table"
        consumed, produced = CONNECTOR_SIGNALS[kind]
        exporting = [p for p, v in pipelines(config).items() if connector_id in v["exporters"]]
        receiving = [p for p, v in pipelines(config).items() if connector_id in v["receivers"]]
        assert exporting and receiving, connector_id
        assert {signal_of(p) for p in exporting} == {consumed}, exporting
        assert {signal_of(p) for p in receiving} <= produced, receiving


@pytest.mark.parametrize("name", COLLECTOR_CONFIGS)
def test_otlp_receiver_listens_on_standard_ports(name: str) -> None:
    """Both configs take OTLP on gRPC 4317 and HTTP 4318, on an explicit all-interfaces host."""
    protocols = collector_config(name)["receivers"]["otlp"]["protocols"]
    assert host_port(protocols["grpc"]["endpoint"]) == ("0.0.0.0", OTLP_GRPC_PORT)
    assert host_port(protocols["http"]["endpoint"]) == ("0.0.0.0", OTLP_HTTP_PORT)


def test_gateway_traces_pipeline_limits_batches_and_fans_out() -> None:
    """Traces: otlp -> memory_limiter (first) -> batch (last) -> Jaeger, Tempo and spanmetrics."""
    traces = pipelines(collector_config("gateway.yaml"))
    exporters: set[str] = set()
    for pipeline_id, pipeline in traces.items():
        if signal_of(pipeline_id) == "traces":
            assert ["otlp"] == pipeline["receivers"]
            assert "memory_limiter" == pipeline["processors"][0]
            assert "batch" == pipeline["processors"][-1]
            exporters |= set(pipeline["exporters"])
    assert {"otlp/jaeger", "otlp/tempo", "spanmetrics"} == exporters


def test_gateway_filters_live_placeholders_before_the_span_metrics() -> None:
    """The traces pipeline feeding spanmetrics drops otel_progress.placeholder spans first."""
    config = collector_config("gateway.yaml")
    feeding = [v for p, v in pipelines(config).items() if "spanmetrics" in v["exporters"]]
    assert 1 == len(feeding)
    filters = [f for f in feeding[0]["processors"] if component_type(f) == "filter"]
    assert 1 == len(filters)
    conditions = config["processors"][filters[0]]["traces"]["span"]
    assert [f'attributes["{attrs.PLACEHOLDER}"] == true'] == conditions
    assert feeding[0]["processors"].index(filters[0]) < feeding[0]["processors"].index("batch")


def test_gateway_sends_placeholders_to_jaeger_and_tempo() -> None:
    """The pipelines that export to Jaeger and Tempo filter nothing (placeholders show live)."""
    config = collector_config("gateway.yaml")
    for pipeline in pipelines(config).values():
        if {"otlp/jaeger", "otlp/tempo"} & set(pipeline["exporters"]):
            assert [] == [f for f in pipeline["processors"] if component_type(f) == "filter"]


def test_gateway_exports_sdk_and_span_metrics_to_prometheus() -> None:
    """The SDK's OTLP metrics and the spanmetrics output both reach the prometheus exporter."""
    config = collector_config("gateway.yaml")
    into_prometheus = [p for p in pipelines(config).values() if "prometheus" in p["exporters"]]
    sources = {receiver for p in into_prometheus for receiver in p["receivers"]}
    assert {"otlp", "spanmetrics"} <= sources
    assert all(
        signal_of(p) == "metrics"
        for p, v in pipelines(config).items()
        if "prometheus" in v["exporters"]
    )
    sdk_metrics = next(p for p in into_prometheus if "otlp" in p["receivers"])
    assert sdk_metrics["processors"][0] == "memory_limiter"


def test_gateway_prometheus_exporter_port_and_suffixes() -> None:
    """The prometheus exporter serves on 8889 with metric suffixes (_total, _seconds) on."""
    exporter = collector_config("gateway.yaml")["exporters"]["prometheus"]
    assert host_port(exporter["endpoint"]) == ("0.0.0.0", PROMETHEUS_EXPORTER_PORT)
    assert exporter.get("add_metric_suffixes", True) is True


def test_gateway_backend_exporters_send_otlp_to_jaeger_and_tempo() -> None:
    """otlp/jaeger goes to jaeger:4317 and otlp/tempo to tempo:4317, plaintext inside compose."""
    exporters = collector_config("gateway.yaml")["exporters"]
    assert host_port(exporters["otlp/jaeger"]["endpoint"]) == ("jaeger", OTLP_GRPC_PORT)
    assert host_port(exporters["otlp/tempo"]["endpoint"]) == ("tempo", OTLP_GRPC_PORT)
    assert exporters["otlp/jaeger"]["tls"]["insecure"] is True
    assert exporters["otlp/tempo"]["tls"]["insecure"] is True


def test_spanmetrics_uses_library_attributes_as_dimensions() -> None:
    """spanmetrics adds the span attributes otel_progress.section and .task_name as labels."""
    connector = collector_config("gateway.yaml")["connectors"]["spanmetrics"]
    names = [dimension["name"] for dimension in connector["dimensions"]]
    assert names == ["otel_progress.section", "otel_progress.task_name"]
    assert names == [attrs.SECTION_NAME, attrs.TASK_NAME]


def test_span_metric_labels_in_docs_and_tests_are_the_dimensions() -> None:
    """Every span-metrics label the alert tests, README and docs use is a gateway dimension."""
    connector = collector_config("gateway.yaml")["connectors"]["spanmetrics"]
    labels = {dimension["name"].replace(".", "_") for dimension in connector["dimensions"]}
    texts = {
        path.name: path.read_text(encoding="utf-8")
        for path in (RULES_FILE, RULES_TEST_FILE, README_FILE, OBSERVABILITY_DOC)
    }
    for name, text in texts.items():
        used = set(re.findall(r"\b(?:otel_)?progress_(?:task_name|section)\b", text))
        assert used <= labels, f"{name} uses {sorted(used - labels)}"
    series = "".join(
        s["series"]
        for test in load_yaml(RULES_TEST_FILE)["tests"]
        for s in test.get("input_series", [])
        if s["series"].startswith("traces_span_metrics_calls_total{")
    )
    assert labels <= set(re.findall(r"(\w+)=", series))


def test_traceql_and_jaeger_queries_use_the_library_attributes() -> None:
    """TraceQL (span.<attr>) and Jaeger tag queries name only otel_progress.* attributes."""
    for path in (RULES_FILE, RULES_TEST_FILE, DATASOURCES_FILE, OBSERVABILITY_DOC):
        text = path.read_text(encoding="utf-8")
        assert not re.findall(r"(?<!\w)progress\.(?!age\b)\w+", text), path.name
        assert "span.otel_progress.section" in text, path.name


def test_spanmetrics_histogram_fits_long_tasks_in_seconds() -> None:
    """spanmetrics histograms are in seconds with the library's 100 ms .. 1 h buckets."""
    histogram = collector_config("gateway.yaml")["connectors"]["spanmetrics"]["histogram"]
    assert histogram["unit"] == "s"
    buckets = tuple(go_duration_seconds(b) for b in histogram["explicit"]["buckets"])
    assert buckets == pytest.approx(attrs.SECTION_DURATION_BUCKETS)
    assert buckets[0] == pytest.approx(0.1) and buckets[-1] == pytest.approx(3600.0)


def test_spanmetrics_namespace_is_the_v0_109_default() -> None:
    """The spanmetrics namespace is traces.span.metrics, the default since contrib v0.109.0."""
    connector = collector_config("gateway.yaml")["connectors"]["spanmetrics"]
    assert connector["namespace"] == "traces.span.metrics"


def test_debug_config_prints_every_signal_in_detail() -> None:
    """debug.yaml sends every signal from otlp to the debug exporter with detailed verbosity."""
    config = collector_config("debug.yaml")
    assert config["exporters"]["debug"]["verbosity"] == "detailed"
    assert set(pipelines(config)) == set(SIGNALS)
    for pipeline in pipelines(config).values():
        assert pipeline["receivers"] == ["otlp"] and pipeline["exporters"] == ["debug"]


# --- compose -------------------------------------------------------------------------------------


def test_compose_has_the_whole_stack() -> None:
    """The compose file runs the collector, Jaeger, Tempo, Prometheus and Grafana."""
    assert set(compose_services()) == {"collector", "jaeger", "tempo", "prometheus", "grafana"}


def test_compose_images_are_pinned() -> None:
    """Every compose image has an explicit tag that is not 'latest'."""
    for name, service in compose_services().items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{name}: {image} has no tag"
        assert tag and tag != "latest", f"{name}: {image} is not pinned"
        assert re.search(r"\d+\.\d+", tag), f"{name}: {image} tag is not a version"


def test_compose_collector_runs_pinned_contrib_with_gateway_config() -> None:
    """The collector service runs contrib 0.115.1 with gateway.yaml mounted at its --config."""
    service = compose_services()["collector"]
    assert service["image"] == COLLECTOR_IMAGE
    config_args = [arg for arg in service["command"] if arg.startswith("--config=")]
    assert len(config_args) == 1
    config_path = config_args[0].removeprefix("--config=")
    assert bind_mounts(service)[config_path] == "./gateway.yaml"


def test_compose_bind_mount_sources_exist() -> None:
    """Every ./ bind-mount source in the compose file exists next to it."""
    for name, service in compose_services().items():
        for source in bind_mounts(service).values():
            assert source.startswith("./"), f"{name}: {source} is not relative to the compose file"
            assert (CONFIG_DIR / source).exists(), f"{name}: {source} missing"


def test_compose_publishes_ports_on_loopback_only() -> None:
    """Every published port binds 127.0.0.1 on the host, never all interfaces."""
    for name, service in compose_services().items():
        for address, _, _ in published_ports(service):
            assert address == "127.0.0.1", f"{name} publishes on {address}"


def test_compose_publishes_collector_ports_of_gateway_config() -> None:
    """Compose publishes the gateway's OTLP, prometheus exporter and health ports unchanged."""
    config = collector_config("gateway.yaml")
    wanted = {
        gateway_port("grpc"),
        gateway_port("http"),
        host_port(config["exporters"]["prometheus"]["endpoint"])[1],
        host_port(config["extensions"]["health_check"]["endpoint"])[1],
    }
    assert wanted == {OTLP_GRPC_PORT, OTLP_HTTP_PORT, PROMETHEUS_EXPORTER_PORT, HEALTH_CHECK_PORT}
    published = {(host, ctr) for _, host, ctr in published_ports(compose_services()["collector"])}
    assert {(port, port) for port in wanted} <= published


def test_collector_exporter_targets_are_compose_services_on_their_ports() -> None:
    """Each exporter endpoint host is a compose service offering that port to the network."""
    services = compose_services()
    for exporter_id in ("otlp/jaeger", "otlp/tempo"):
        endpoint = collector_config("gateway.yaml")["exporters"][exporter_id]["endpoint"]
        host, port = host_port(endpoint)
        assert host in services, exporter_id
        assert port in container_ports(services[host]), f"{host} does not offer {port}"


def test_tempo_receives_otlp_on_the_port_the_collector_sends_to() -> None:
    """tempo.yaml's OTLP gRPC receiver port is the one otlp/tempo sends to."""
    tempo = load_yaml(TEMPO_FILE)
    grpc = tempo["distributor"]["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    exporter = collector_config("gateway.yaml")["exporters"]["otlp/tempo"]["endpoint"]
    assert host_port(grpc) == ("0.0.0.0", host_port(exporter)[1])


def test_tempo_api_port_agrees_with_compose_and_grafana() -> None:
    """Tempo's API port 3200 is the one compose publishes and Grafana's datasource uses."""
    tempo_port = load_yaml(TEMPO_FILE)["server"]["http_listen_port"]
    assert tempo_port == TEMPO_API_PORT
    published = {(host, ctr) for _, host, ctr in published_ports(compose_services()["tempo"])}
    assert (tempo_port, tempo_port) in published
    assert host_port(datasource("tempo")["url"]) == ("tempo", tempo_port)


def test_jaeger_ui_port_agrees_with_compose_and_grafana() -> None:
    """Jaeger's UI 16686 is published by compose and used by Grafana's Jaeger datasource."""
    published = {(host, ctr) for _, host, ctr in published_ports(compose_services()["jaeger"])}
    assert (JAEGER_UI_PORT, JAEGER_UI_PORT) in published
    assert host_port(datasource("jaeger")["url"]) == ("jaeger", JAEGER_UI_PORT)


def test_prometheus_and_grafana_ports_agree_with_compose() -> None:
    """Prometheus 9090 and Grafana 3000 are published; Grafana reaches prometheus:9090."""
    services = compose_services()
    assert (PROMETHEUS_PORT, PROMETHEUS_PORT) in {
        (h, c) for _, h, c in published_ports(services["prometheus"])
    }
    assert (GRAFANA_PORT, GRAFANA_PORT) in {
        (h, c) for _, h, c in published_ports(services["grafana"])
    }
    assert host_port(datasource("prometheus")["url"]) == ("prometheus", PROMETHEUS_PORT)


# --- Prometheus, Grafana -------------------------------------------------------------------------


def datasource(kind: str) -> dict[str, Any]:
    matches = [d for d in load_yaml(DATASOURCES_FILE)["datasources"] if d["type"] == kind]
    assert len(matches) == 1, f"expected one {kind} datasource"
    return matches[0]


def test_prometheus_scrapes_the_collector_exporter_port() -> None:
    """prometheus.yml scrapes collector:8889, the gateway's prometheus exporter, honoring labels."""
    scrape_configs = load_yaml(PROMETHEUS_FILE)["scrape_configs"]
    targets = {
        target: job
        for job in scrape_configs
        for static in job["static_configs"]
        for target in static["targets"]
    }
    exporter_port = host_port(
        collector_config("gateway.yaml")["exporters"]["prometheus"]["endpoint"]
    )[1]
    target = f"collector:{exporter_port}"
    assert target in targets
    assert targets[target].get("honor_labels") is True
    assert "collector" in compose_services()


def test_prometheus_rule_files_are_mounted_next_to_its_config() -> None:
    """Each rule file prometheus.yml loads is mounted into the container beside prometheus.yml."""
    rule_files = load_yaml(PROMETHEUS_FILE)["rule_files"]
    mounts = bind_mounts(compose_services()["prometheus"])
    config_target = next(t for t, s in mounts.items() if s == "./prometheus.yml")
    config_dir = PurePosixPath(config_target).parent
    assert rule_files
    for rule_file in rule_files:
        assert not PurePosixPath(rule_file).is_absolute()
        assert (CONFIG_DIR / rule_file).is_file()
        assert mounts[str(config_dir / rule_file)] == f"./{rule_file}"


def test_grafana_provisions_tempo_as_default_plus_prometheus_and_jaeger() -> None:
    """Grafana gets Tempo (the only default), Prometheus and Jaeger datasources."""
    datasources = load_yaml(DATASOURCES_FILE)["datasources"]
    assert {d["type"] for d in datasources} == {"tempo", "prometheus", "jaeger"}
    assert [d["type"] for d in datasources if d.get("isDefault")] == ["tempo"]
    mounts = bind_mounts(compose_services()["grafana"])
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"


# --- alert rules ---------------------------------------------------------------------------------


def test_promtool_check_rules_passes() -> None:
    """promtool check rules accepts alerts.rules.yaml."""
    result = run_promtool("check", "rules", str(RULES_FILE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules_passes() -> None:
    """promtool test rules runs alerts.test.yaml green."""
    result = run_promtool("test", "rules", str(RULES_TEST_FILE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_config_passes() -> None:
    """promtool check config accepts prometheus.yml and the rule files it loads."""
    result = run_promtool("check", "config", str(PROMETHEUS_FILE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_each_alert_has_firing_and_not_firing_tests() -> None:
    """alerts.test.yaml has, for every alert, a case expecting it and one expecting silence."""
    cases = list(iter_alert_rule_tests())
    for name in alert_rules():
        mine = [case for case in cases if case["alertname"] == name]
        assert any(case.get("exp_alerts") for case in mine), f"{name}: no firing case"
        assert any(not case.get("exp_alerts") for case in mine), f"{name}: no silent case"


def test_alert_rules_are_the_three_expected() -> None:
    """The rules define the error-rate, failed-section and stalled-task alerts."""
    assert set(alert_rules()) == {ALERT_TASK_ERROR_RATE, ALERT_SECTION_FAILED, ALERT_TASK_STALLED}


def test_alerts_have_severity_and_annotations_naming_the_task() -> None:
    """Each alert has a severity label and summary/description that name the task."""
    for name, rule in alert_rules().items():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        for annotation in ("summary", "description"):
            assert "$labels.task_name" in rule["annotations"][annotation], f"{name} {annotation}"


def test_failed_section_alert_names_the_section() -> None:
    """The failed-section alert groups by, and tells, the section name."""
    rule = alert_rules()[ALERT_SECTION_FAILED]
    assert "section_name" in rule["expr"]
    for annotation in ("summary", "description"):
        assert "$labels.section_name" in rule["annotations"][annotation]


def test_error_rate_alert_uses_span_metrics_of_failed_run_spans() -> None:
    """The error-rate alert divides ERROR by all calls of CONSUMER run/<task> span metrics."""
    namespace = collector_config("gateway.yaml")["connectors"]["spanmetrics"]["namespace"]
    expr = alert_rules()[ALERT_TASK_ERROR_RATE]["expr"]
    assert prometheus_name(f"{namespace}.calls", counter=True) in expr
    assert expr.count('span_kind="SPAN_KIND_CONSUMER"') == 2
    assert expr.count('span_name=~"run/.+"') == 2
    assert expr.count('status_code="STATUS_CODE_ERROR"') == 1
    assert "/" in expr


def test_library_metric_alerts_use_exported_metric_names() -> None:
    """The section and stall alerts query the Prometheus names of the library's instruments."""
    rules = alert_rules()
    sections = prometheus_name(attrs.METRIC_SECTIONS, counter=True)
    age = prometheus_name(attrs.METRIC_PROGRESS_AGE, "seconds")
    assert sections == "otel_progress_sections_total"
    assert age == "otel_progress_progress_age_seconds"
    assert f'{sections}{{{attrs.LABEL_STATUS}="failed"}}' in rules[ALERT_SECTION_FAILED]["expr"]
    assert re.search(rf"\b{age}\b\)?\s*>\s*600\b", rules[ALERT_TASK_STALLED]["expr"])
    assert rules[ALERT_TASK_STALLED]["for"] == "5m"


# --- README --------------------------------------------------------------------------------------


def test_readme_names_the_pinned_version_and_the_metric_names() -> None:
    """The README pins the collector image and gives current and pre-v0.109 span metric names."""
    readme = README_FILE.read_text(encoding="utf-8")
    assert COLLECTOR_IMAGE in readme
    for name in (
        "traces_span_metrics_calls_total",
        "traces_span_metrics_duration_seconds_bucket",
        "`calls_total`",
        "add_metric_suffixes",
    ):
        assert name in readme, name


def test_readme_gives_a_command_for_each_config() -> None:
    """The README has a run command for debug.yaml, gateway.yaml and the compose stack."""
    readme = README_FILE.read_text(encoding="utf-8")
    assert "--config=/etc/otelcol-contrib/debug.yaml" in readme
    assert "--config=/etc/otelcol-contrib/gateway.yaml" in readme
    assert "docker compose -f collector-config/docker-compose.yaml up -d" in readme
    assert "promtool test rules   collector-config/alerts.test.yaml" in readme
    for service in compose_services().values():
        assert service["image"] in readme, service["image"]


# --- the Grafana dashboard -----------------------------------------------------------------------

DASHBOARD_FILE = CONFIG_DIR / "grafana" / "dashboards" / "otel-progress.json"
DASHBOARD_PROVIDERS_FILE = CONFIG_DIR / "grafana" / "provisioning" / "dashboards" / "dashboards.yml"
PROMQL_WORDS = frozenset({
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or",
    "unless", "le", "inf", "nan",
})


def produced_metric_names() -> set[str]:
    """Every Prometheus series name the gateway's span metrics and the SDK's metrics produce."""
    namespace = collector_config("gateway.yaml")["connectors"]["spanmetrics"]["namespace"]
    duration = prometheus_name(f"{namespace}.duration", "seconds")
    section_duration = prometheus_name(attrs.METRIC_SECTION_DURATION, "seconds")
    return {
        prometheus_name(f"{namespace}.calls", counter=True),
        *(f"{histogram}_{part}" for histogram in (duration, section_duration)
          for part in ("bucket", "sum", "count")),
        prometheus_name(attrs.METRIC_SECTIONS, counter=True),
        prometheus_name(attrs.METRIC_PROGRESS_AGE, "seconds"),
        prometheus_name(attrs.METRIC_SPANS_DROPPED, counter=True),
        prometheus_name(attrs.METRIC_RUNS_RUNNING),
    }


def promql_metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects (labels, functions and keywords left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values, regexes)
    text = re.sub(r"\{[^{}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\[\]]*\]", "", text)  # range selectors
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", "", text)
    text = re.sub(r"\$\{?\w+\}?", "", text)  # Grafana variables ($__rate_interval, ...)
    label_values = re.findall(r"\blabel_values\(\s*(\w+)", text)
    text = re.sub(r"\blabel_values\([^()]*\)", "", text)
    names = {
        name for name in re.findall(r"(?<![\w.])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()", text)
        if name.lower() not in PROMQL_WORDS and not re.fullmatch(r"\d+", name)
    }
    return names | set(label_values)


def dashboard() -> dict[str, Any]:
    value = json.loads(DASHBOARD_FILE.read_text(encoding="utf-8"))
    assert isinstance(value, dict)
    return value


def dashboard_panels() -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard()["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def dashboard_queries() -> list[tuple[str, dict[str, Any], str]]:
    """(panel or variable title, datasource reference, query text) of every query."""
    found = []
    for panel in dashboard_panels():
        for target in panel.get("targets", []):
            query = target.get("expr", target.get("query"))
            found.append((panel["title"], target.get("datasource") or panel["datasource"], query))
    for variable in dashboard()["templating"]["list"]:
        query = variable["query"]
        found.append((variable["name"], variable["datasource"],
                      query["query"] if isinstance(query, dict) else query))
    return found


def provisioned_datasource_uids() -> dict[str, str]:
    return {d["uid"]: d["type"] for d in load_yaml(DATASOURCES_FILE)["datasources"]}


def test_dashboard_json_parses_with_an_uid_and_panels() -> None:
    """otel-progress.json parses into a dashboard with a fixed uid, a title and panels."""
    board = dashboard()
    assert "otel-progress" == board["uid"]
    assert board["title"] and board["panels"]
    ids = [panel["id"] for panel in dashboard_panels()]
    assert sorted(set(ids)) == sorted(ids)


def test_dashboard_is_provisioned_in_the_compose_stack() -> None:
    """Grafana's dashboard provider reads the folder compose mounts the dashboard JSON into."""
    providers = load_yaml(DASHBOARD_PROVIDERS_FILE)["providers"]
    assert ["file"] == [provider["type"] for provider in providers]
    mounts = bind_mounts(compose_services()["grafana"])
    path = providers[0]["options"]["path"]
    assert "./grafana/dashboards" == mounts[path]
    assert (CONFIG_DIR / mounts[path] / DASHBOARD_FILE.name).is_file()
    assert "./grafana/provisioning" == mounts["/etc/grafana/provisioning"]
    assert DASHBOARD_PROVIDERS_FILE.is_relative_to(CONFIG_DIR / "grafana" / "provisioning")


def test_dashboard_datasources_are_provisioned_uids() -> None:
    """Every panel, query and variable names its datasource by a uid the provisioning defines."""
    uids = provisioned_datasource_uids()
    refs = [panel["datasource"] for panel in dashboard_panels() if "datasource" in panel]
    refs += [ref for _, ref, _ in dashboard_queries()]
    assert refs
    for ref in refs:
        assert isinstance(ref, dict), f"datasource {ref!r} is not referenced by uid"
        assert ref["uid"] in uids, ref
        assert uids[ref["uid"]] == ref["type"], ref


def test_dashboard_queries_name_only_metrics_that_are_produced() -> None:
    """Every PromQL query selects only span-metrics or SDK metric names the stack produces."""
    produced = produced_metric_names()
    uids = provisioned_datasource_uids()
    promql = [(t, q) for t, ref, q in dashboard_queries() if uids[ref["uid"]] == "prometheus"]
    assert len(promql) >= 6
    for title, query in promql:
        names = promql_metric_names(query)
        assert names, f"{title}: no metric in {query!r}"
        assert set() == names - produced, title


def test_alert_rules_name_the_same_metrics_as_the_dashboard() -> None:
    """The alert rules select only metric names the dashboard's checker accepts too."""
    produced = produced_metric_names()
    for name, rule in alert_rules().items():
        assert set() == promql_metric_names(rule["expr"]) - produced, name


def test_metric_name_checker_catches_a_wrong_name() -> None:
    """The checker reports a series name that nothing produces (e.g. the pre-v0.109 one)."""
    query = 'sum by (span_name) (rate(calls_total{status_code="STATUS_CODE_ERROR"}[5m]))'
    assert {"calls_total"} == promql_metric_names(query) - produced_metric_names()


def test_dashboard_has_the_panels_sres_need() -> None:
    """Failed sections, p50/p95 duration, running tasks, age gauge, dropped spans, Tempo."""
    by_metric: dict[str, list[str]] = {}
    for title, _, query in dashboard_queries():
        for name in promql_metric_names(query) if "{" in query or "(" in query else ():
            by_metric.setdefault(name, []).append(title)
    namespace = "traces_span_metrics"
    assert any('status_code="STATUS_CODE_ERROR"' in q and "otel_progress_section" in q
               and f"{namespace}_calls_total" in q for _, _, q in dashboard_queries())
    quantiles = {q.split(",")[0] for _, _, q in dashboard_queries()
                 if q.startswith("histogram_quantile(")}
    assert {"histogram_quantile(0.5", "histogram_quantile(0.95"} == quantiles
    for metric in ("otel_progress_runs_running", "otel_progress_progress_age_seconds",
                   "otel_progress_spans_dropped_total"):
        assert metric in by_metric, metric
    gauges = [p for p in dashboard_panels() if p["type"] == "gauge"]
    assert any("otel_progress_progress_age_seconds" in t["expr"] for p in gauges
               for t in p["targets"])


def test_dashboard_tempo_panel_lists_failed_traces_without_placeholders() -> None:
    """A Tempo TraceQL panel lists the latest failed traces and leaves placeholders out."""
    tempo = [(t, q) for t, ref, q in dashboard_queries() if ref["type"] == "tempo"]
    assert 1 == len(tempo)
    query = tempo[0][1]
    assert "status = error" in query
    assert f"span.{attrs.PLACEHOLDER} != true" in query


def test_dashboard_section_panels_link_to_their_traces_in_tempo() -> None:
    """Section panels carry data links opening Tempo (by uid) with the section's TraceQL."""
    from urllib.parse import parse_qs, urlsplit

    uids = provisioned_datasource_uids()
    linked = 0
    for panel in dashboard_panels():
        links = list(panel.get("fieldConfig", {}).get("defaults", {}).get("links", []))
        if not links:
            continue
        linked += 1
        for link in links:
            query = parse_qs(urlsplit(link["url"]).query)
            panes = json.loads(query["panes"][0])
            pane = next(iter(panes.values()))
            assert "tempo" == uids[pane["datasource"]]
            traceql = pane["queries"][0]["query"]
            assert f"span.{attrs.SECTION_NAME} = " in traceql
            assert "${__field.labels.otel_progress_section}" in traceql
    assert linked >= 3


def test_dashboard_promql_parses_with_promtool(tmp_path: Path) -> None:
    """promtool accepts every PromQL query of the dashboard (Grafana variables filled in)."""
    uids = provisioned_datasource_uids()
    rules = []
    for index, (_, ref, query) in enumerate(dashboard_queries()):
        if uids[ref["uid"]] != "prometheus" or query.startswith("label_values("):
            continue
        expr = query.replace("$__rate_interval", "5m").replace("$__range", "6h")
        rules.append({"record": f"dashboard:query:{index}", "expr": expr.replace("$task", ".*")})
    path = tmp_path / "dashboard.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_promtool("check", "rules", str(path))
    assert 0 == result.returncode, result.stdout + result.stderr
