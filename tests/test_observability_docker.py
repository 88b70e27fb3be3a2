"""docker/ without Docker: the compose file, the Dockerfile, prometheus.yml and Grafana's
provisioning are read and checked against each other, against the repository (every
mounted or copied file exists) and against the real CLI (the server's command line
parses with ``reflex serve``'s own options)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest
import typer.main
import yaml
from dockerfile_parse import DockerfileParser
from observability_helpers import DASHBOARD, DOCKER, REPO
from sqlalchemy.engine import make_url

from reflex_serve.cli import app as cli_app

COMPOSE = DOCKER / "compose.yaml"
PROMETHEUS = DOCKER / "prometheus" / "prometheus.yml"
GRAFANA = DOCKER / "grafana" / "provisioning"
_VAR = re.compile(r"\$\{(\w+)(?::([-?])([^}]*))?\}")


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}`` (error if unset)."""

    def sub(m: re.Match) -> str:
        name, op, arg = m.groups()
        if env.get(name):
            return env[name]
        if op == "?":
            raise KeyError(f"{name}: {arg}")
        return arg if op == "-" else ""

    return _VAR.sub(sub, value)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def bind_mounts(service: dict) -> list[tuple[Path, str]]:
    """(host path, container path) of each bind mount (named volumes left out)."""
    out = []
    for spec in service.get("volumes", []):
        source, target = spec.split(":")[:2]
        if source.startswith((".", "/")):
            out.append(((DOCKER / source).resolve(), target))
    return out


def serve_params(args: list[str]) -> dict:
    """``reflex serve ARGS`` parsed by the CLI itself (nothing is run)."""
    assert args[:2] == ["reflex", "serve"], args
    command = typer.main.get_command(cli_app).commands["serve"]
    return command.make_context("serve", list(args[2:])).params


def test_the_stack_has_its_four_services_and_every_mounted_file_exists(compose):
    services = compose["services"]
    assert set(services) == {"reflex", "postgres", "prometheus", "grafana"}
    build = services["reflex"]["build"]
    assert (DOCKER / build["context"]).resolve() == REPO
    assert (REPO / build["dockerfile"]) == DOCKER / "Dockerfile"
    for name, service in services.items():
        for host, _ in bind_mounts(service):
            assert host.exists(), f"{name} mounts {host}, which is not in the repository"
        for spec in service.get("volumes", []):
            source = spec.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in compose["volumes"], f"{name}: undeclared volume {source}"
        for dep in service.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
    assert services["reflex"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "healthcheck" in services["postgres"]


def test_the_server_command_parses_with_reflex_serve_and_reaches_the_postgres_service(compose):
    from reflex_serve.loop.schedule import parse_schedule

    server, postgres = compose["services"]["reflex"], compose["services"]["postgres"]
    with pytest.raises(KeyError, match="REFLEX_ADMIN_KEY"):
        interpolate(server["environment"]["REFLEX_ADMIN_KEY"], {})
    env = {"REFLEX_ADMIN_KEY": "k" * 32}
    params = serve_params([interpolate(a, env) for a in server["command"]])
    assert params["host"] == "0.0.0.0" and params["collect_data"] is True
    assert parse_schedule(params["distill_schedule"], params["distill_at"]).spec
    url = make_url(params["store"])
    assert url.drivername == "postgresql+psycopg" and url.host == "postgres"
    assert interpolate(server["environment"]["REFLEX_STORE"], env) == params["store"]
    pg_env = {k: interpolate(v, env) for k, v in postgres["environment"].items()}
    assert (url.username, url.password, url.database, url.port) == (
        pg_env["POSTGRES_USER"], pg_env["POSTGRES_PASSWORD"], pg_env["POSTGRES_DB"], 5432)
    assert params["port"] == 8000 and "8000:8000" in server["ports"]


def test_the_dockerfile_builds_the_cpu_image_that_serves_the_teacher_on_8000():
    parser = DockerfileParser(str(DOCKER / "Dockerfile"), env_replace=True)
    assert parser.baseimage == "python:3.11-slim"
    assert parser.args["TORCH_VERSION"] == "2.13.0" and parser.args["TORCH_INDEX_URL"].endswith(
        "/cpu")
    steps = [(i["instruction"], i["value"]) for i in parser.structure]
    runs = " ".join(v for k, v in steps if k == "RUN")
    assert "libegl-mesa0" in runs and 'torch==${TORCH_VERSION}' in runs
    assert runs.index("torch==") < runs.index("pip install .")
    for k, v in steps:
        if k == "COPY":
            *sources, _ = v.split()
            for src in sources:
                assert (REPO / src).exists(), f"COPY {src}: not in the build context"
                assert not _docker_ignored(src), f"COPY {src}: excluded by .dockerignore"
    assert ("EXPOSE", "8000") in steps
    params = serve_params(json.loads(dict(steps)["CMD"]))
    assert (params["host"], params["port"], params["collect_data"]) == ("0.0.0.0", 8000, True)
    assert params["export_dir"] is None  # the shipped teacher


def _docker_ignored(path: str) -> bool:
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    return any(PurePosixPath(path).match(p) or path == p for p in patterns)


def test_prometheus_scrapes_the_server_service_and_loads_the_mounted_rules(compose):
    config = yaml.safe_load(PROMETHEUS.read_text())
    services = compose["services"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = [t for sc in jobs["reflex"]["static_configs"] for t in sc["targets"]]
    assert targets == ["reflex:8000"]
    for job in jobs.values():
        for sc in job["static_configs"]:
            for target in sc["targets"]:
                host = target.split(":")[0]
                assert host in services or host == "localhost", f"unknown target {target}"
    mounts = dict(bind_mounts(services["prometheus"]))
    assert mounts[PROMETHEUS] == "/etc/prometheus/prometheus.yml"
    for rule_file in config["rule_files"]:
        inside = str(PurePosixPath("/etc/prometheus") / rule_file)
        assert inside in mounts.values(), f"{rule_file} is not mounted next to prometheus.yml"
        assert (PROMETHEUS.parent / rule_file).exists()
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_prometheus_yml_with_its_rules():
    r = subprocess.run(["promtool", "check", "config", str(PROMETHEUS)],
                       check=False, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 1 rule files found" in r.stdout


def test_grafana_provisions_the_datasource_and_the_dashboard_it_uses(compose):
    grafana = compose["services"]["grafana"]
    mounts = {target: host for host, target in bind_mounts(grafana)}
    assert mounts["/etc/grafana/provisioning/datasources"] == GRAFANA / "datasources"
    assert mounts["/etc/grafana/provisioning/dashboards"] == GRAFANA / "dashboards"
    (source,) = yaml.safe_load((GRAFANA / "datasources" / "prometheus.yml").read_text())[
        "datasources"]
    url = urlsplit(source["url"])
    assert source["type"] == "prometheus" and url.hostname in compose["services"]
    assert url.port == 9090 and "9090:9090" in compose["services"]["prometheus"]["ports"]
    (provider,) = yaml.safe_load((GRAFANA / "dashboards" / "reflex.yml").read_text())["providers"]
    assert mounts[provider["options"]["path"]] == DASHBOARD.parent
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"
    dash = json.loads(DASHBOARD.read_text())
    uids = {t["datasource"]["uid"] for p in dash["panels"] if p["type"] != "row"
            for t in [p, *p["targets"]]}
    assert uids == {source["uid"]}, "a panel uses a datasource that is not provisioned"
