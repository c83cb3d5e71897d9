"""Structure of docker-compose.yml and its Prometheus/Grafana configuration (no Docker needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from router.rules.load import load_rules

REPO = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES: dict[str, dict] = COMPOSE["services"]
PROMETHEUS = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
RULES = load_rules(REPO / "rules")
TARGET = "millennium"


def samex_services() -> dict[str, dict]:
    """Services that run the samex image (built from the Dockerfile)."""
    return {name: s for name, s in SERVICES.items() if s.get("build") == "."}


def command(name: str) -> list[str]:
    cmd = SERVICES[name]["command"]
    assert isinstance(cmd, list), f"{name}: command must be an exec-form list"
    return [str(c) for c in cmd]


def scrape_targets() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for job in PROMETHEUS["scrape_configs"]:
        for sc in job.get("static_configs", []):
            out.setdefault(job["job_name"], set()).update(sc["targets"])
    return out


def legacy_systems() -> set[str]:
    return {s.id for s in RULES.systems.systems} - {TARGET}


def test_kafka_is_the_official_image_in_kraft_mode() -> None:
    kafka = SERVICES["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller" and "CONTROLLER" in env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert "ZOOKEEPER" not in json.dumps(env).upper()
    assert kafka["healthcheck"]["test"]
    for name, s in samex_services().items():
        assert s["environment"]["SAMEX_KAFKA_BOOTSTRAP"] == "kafka:9092", name
        if s["labels"]["org.samex.role"] != "simulator":
            assert s["depends_on"]["kafka"]["condition"] == "service_healthy", name


def test_dockerfile_builds_the_samex_image() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert text.startswith("#") and "FROM python:3.11" in text
    assert 'ENTRYPOINT ["samex"]' in text
    for d in ("router", "connectors", "schemas", "rules"):
        assert f"COPY {d} ./{d}" in text, d


def test_the_stack_has_every_samex_process() -> None:
    cmds = {name: command(name) for name in samex_services()}
    workers = [n for n, c in cmds.items() if c[0] == "worker"]
    assert len(workers) == 2
    assert {c[c.index("--worker-id") + 1] for n, c in cmds.items() if n in workers} == set(workers)
    connectors = {(c[1], c[c.index("--system") + 1] if "--system" in c else None)
                  for c in cmds.values() if c[0] == "connector"}
    assert ("mllp-in", None) in connectors and ("fhir-in", None) in connectors
    assert ("fhir-out", TARGET) in connectors
    # every system over MLLP; Millennium also over FHIR, each connector with its own format and group
    assert {s for kind, s in connectors if kind == "mllp-out"} == legacy_systems() | {TARGET}
    for name in (f"mllp-out-{TARGET}", f"fhir-out-{TARGET}"):
        c = cmds[name]
        assert "--only-format" in c and c[c.index("--group") + 1] == f"samex-out-{TARGET}-{name.split('-')[0]}"
    sims = {c[1] for c in cmds.values() if c[0] == "simulate"}
    assert sims == {"systems", "senders", "fhir-sender", "millennium-fhir"}
    assert {"prometheus", "grafana"} <= set(SERVICES)


def test_every_samex_service_is_scraped_and_every_target_is_a_service() -> None:
    targets = scrape_targets()
    roles = {"worker": "samex-worker", "connector": "samex-connector"}
    expected: dict[str, set[str]] = {job: set() for job in roles.values()}
    for name, s in samex_services().items():
        labels = s["labels"]
        role, port = labels["org.samex.role"], labels["org.samex.metrics-port"]
        if role == "simulator":
            assert port == "none" and command(name)[0] == "simulate", name
            continue
        assert role in roles, name
        assert port.isdigit(), name
        # the process really serves metrics on that port
        cmd = command(name)
        assert port in cmd, f"{name}: metrics port {port} is not in its command {cmd}"
        expected[roles[role]].add(f"{name}:{port}")
    for job, want in expected.items():
        assert targets.get(job, set()) == want, f"{job}: scraped {targets.get(job)} but compose has {want}"
    scraped_hosts = {t.split(":")[0] for job, ts in targets.items() if job.startswith("samex-") for t in ts}
    assert scraped_hosts <= set(SERVICES)


def test_rules_and_alerts_are_mounted_into_prometheus() -> None:
    prom = SERVICES["prometheus"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in prom["volumes"] if v.startswith("./")}
    assert mounts["/etc/prometheus/prometheus.yml"] == "./deploy/prometheus/prometheus.yml"
    assert mounts["/etc/prometheus/alerts.yml"] == "./deploy/prometheus/alerts.yml"
    assert PROMETHEUS["rule_files"] == ["/etc/prometheus/alerts.yml"]
    assert "9090:9090" in prom["ports"]


def test_grafana_has_the_datasource_and_the_dashboard_provisioned() -> None:
    graf = SERVICES["grafana"]
    assert "3000:3000" in graf["ports"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in graf["volumes"] if v.startswith("./")}
    prov = REPO / mounts["/etc/grafana/provisioning"].removeprefix("./")
    datasources = [d for f in sorted((prov / "datasources").glob("*.yml"))
                   for d in yaml.safe_load(f.read_text())["datasources"]]
    prom_ds = next(d for d in datasources if d["type"] == "prometheus")
    assert prom_ds["url"] == "http://prometheus:9090"
    providers = [p for f in sorted((prov / "dashboards").glob("*.yml"))
                 for p in yaml.safe_load(f.read_text())["providers"]]
    folder = providers[0]["options"]["path"]
    dash_mount = next(k for k in mounts if k.startswith(folder))
    dashboard = json.loads((REPO / mounts[dash_mount].removeprefix("./")).read_text())
    # every panel queries the provisioned data source
    for p in dashboard["panels"]:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == prom_ds["uid"], p["title"]


def test_host_ports_are_unique_and_the_web_pages_are_reachable() -> None:
    host_ports = [p.split(":")[0] for s in SERVICES.values() for p in s.get("ports", [])]
    assert len(host_ports) == len(set(host_ports))
    for w in ("worker-1", "worker-2"):
        assert SERVICES[w]["environment"]["SAMEX_WEB_HOST"] == "0.0.0.0"
        assert any(p.endswith(":6066") for p in SERVICES[w]["ports"])


@pytest.mark.parametrize("name", ["mllp-out-melior", "fhir-out-millennium"])
def test_outbound_connectors_keep_their_dedup_state_in_a_volume(name: str) -> None:
    vols = SERVICES[name]["volumes"]
    assert any(v.split(":")[1] == SERVICES[name]["environment"]["SAMEX_STATE_DIR"] for v in vols)
    assert vols[0].split(":")[0] in COMPOSE["volumes"]


def parse_cli(args: list[str]) -> dict:
    """Parse a compose command with the real `samex` CLI (without running it): the options exist, have
    the right types and the required ones are given."""
    import click

    from router.cli import cli

    cmd: click.Command = cli
    parent = None
    rest = list(args)
    path = ["samex"]
    while isinstance(cmd, click.Group):
        name, *rest = rest
        parent = click.Context(cmd, info_name=path[-1], parent=parent)
        sub = cmd.get_command(parent, name)
        assert sub is not None, f"no command {' '.join([*path, name])}"
        cmd = sub
        path.append(name)
    return cmd.make_context(path[-1], rest, parent=parent).params


def test_every_samex_command_is_accepted_by_the_cli() -> None:
    params = {name: parse_cli(command(name)) for name in samex_services()}
    # the MLLP simulator gives the systems of systems.yaml consecutive ports from --base-port, in file order
    base = params["sim-systems"]["base_port"]
    order = [s.id for s in RULES.systems.systems]
    for name, p in params.items():
        if command(name)[:2] == ["connector", "mllp-out"]:
            host, port = p["endpoint"].split(":")
            assert host == "sim-systems" and int(port) == base + order.index(p["system"]), name
        if SERVICES[name]["labels"]["org.samex.role"] != "simulator":
            metrics_port = int(SERVICES[name]["labels"]["org.samex.metrics-port"])
            assert metrics_port in (p.get("metrics_port"), p.get("web_port"), p.get("port")), name
    assert params["sim-senders"]["host"] == "mllp-in" and params["sim-senders"]["port"] == params["mllp-in"]["port"]
    assert params["fhir-out-millennium"]["base_url"].startswith(
        f"http://sim-millennium-fhir:{params['sim-millennium-fhir']['port']}/")
