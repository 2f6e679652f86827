"""The container deployment, checked without a Docker engine (none runs on the build machines): the `Dockerfile`
runs one process chosen by its command, as a non-root user, with a health check and a graceful stop;
`docker-compose.yml` (and its RabbitMQ variant) run each command the CLI has, `migrate` once before the rest,
exactly one beat, a health check and a stop grace period for every long-running service, secrets only from files,
and Prometheus scraping the services with the shipped rules. Plain file reads (PyYAML, the CLI's own parsers);
`promtool` and `docker compose config` check the files too where they are installed."""

from __future__ import annotations

import argparse
import configparser
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from agent_service import health
from agent_service.cli import _parser
from agent_service.config import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
RABBITMQ = ROOT / "deploy" / "compose.rabbitmq.yml"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
IMAGE_COMMANDS = {"worker", "beat", "flower", "api", "migrate"}  # what the image runs, one per container
# What a password, key or login looks like when written out: a URL's user:password@, a provider key, or a value
# given to a setting whose name says it is secret.
URL_PASSWORD = re.compile(r"://[^/\s:@]+:[^/\s@]+@")
PROVIDER_KEY = re.compile(r"\bsk-[A-Za-z0-9]")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY|BASIC_AUTH", re.IGNORECASE)


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def services(path: Path = COMPOSE) -> dict[str, dict]:
    return load(path)["services"]


def image_services() -> dict[str, dict]:
    """The services that run this project's image."""
    return {name: service for name, service in services().items() if service.get("build") == "."}


def long_running(path: Path = COMPOSE) -> dict[str, dict]:
    return {name: service for name, service in services(path).items() if service.get("restart", "always") != "no"}


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions, (KEYWORD, arguments), continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def instruction(keyword: str) -> str:
    """The last `keyword` instruction's arguments (the one that counts)."""
    return [arguments for name, arguments in dockerfile() if name == keyword][-1]


def seconds(duration: str) -> float:
    """A Compose duration (`100s`, `1m30s`) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1}
    return sum(float(value) * units[unit] for value, unit in re.findall(r"([\d.]+)(h|m|s)", duration))


def strings(value) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from strings(key)
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)
    elif isinstance(value, str):
        yield value


def parsed(command: list[str]) -> argparse.Namespace:
    """`command` as the image's entry point (`agent-service`) parses it: the CLI's own parser."""
    args, _ = _parser().parse_known_args(command)
    return args


def probe_of(service: dict) -> argparse.Namespace:
    """A service's health check, parsed by the probe's own parser."""
    test = service["healthcheck"]["test"]
    assert test[:4] == ["CMD", "python", "-m", "agent_service.health"], test
    parser = argparse.ArgumentParser()
    health.add_arguments(parser)
    return parser.parse_args(test[4:])


def test_the_image_runs_one_process_chosen_by_its_command_as_a_non_root_user():
    # The entry point is the console script, and the default command is one the CLI has: the worker
    assert json.loads(instruction("ENTRYPOINT")) == ["agent-service"]
    assert 'agent-service = "agent_service.cli:main"' in (ROOT / "pyproject.toml").read_text()
    assert json.loads(instruction("CMD")) == ["worker"]
    assert parsed(["worker"]).handler.__name__ == "cmd_worker"
    assert "supervisord" not in instruction("CMD") + instruction("ENTRYPOINT")
    # Not root, by name or id
    assert instruction("USER") not in ("root", "0") and not instruction("USER").startswith("0:")
    # A graceful stop: SIGTERM is Celery's warm shutdown
    assert instruction("STOPSIGNAL") == "SIGTERM"


def test_the_images_health_check_is_the_worker_probe_with_time_to_answer():
    options, _, command = instruction("HEALTHCHECK").partition(" CMD ")
    assert json.loads(command) == ["python", "-m", "agent_service.health", "worker"]
    timeout = seconds(re.search(r"--timeout=(\S+)", options).group(1))
    assert timeout > health.DEFAULT_TIMEOUT_SECONDS  # the probe gives up (and says why) before Docker kills it


def test_every_service_of_the_image_runs_a_command_the_cli_has():
    commands = {name: service["command"] for name, service in image_services().items()}
    assert set(commands) == IMAGE_COMMANDS
    for name, command in commands.items():
        assert command == [name], f"{name}: {command}"
        handler = parsed(command).handler.__name__
        assert handler == {"migrate": "cmd_init_db"}.get(name, f"cmd_{name}")


def test_migrate_runs_once_before_every_other_service_of_the_image():
    migrate = services()["migrate"]
    assert migrate["restart"] == "no" and migrate["healthcheck"] == {"disable": True}
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name, service in image_services().items():
        if name != "migrate":
            assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name


def test_exactly_one_beat_runs_and_no_worker_embeds_one():
    beats = [name for name, service in services().items() if "beat" in service.get("command", [])]
    assert beats == ["beat"]
    assert services()["beat"]["deploy"]["replicas"] == 1
    for name, service in services().items():
        assert not {"-B", "--beat"} & set(service.get("command", [])), name
    # and several workers
    assert services()["worker"]["deploy"]["replicas"] > 1


@pytest.mark.parametrize("path", [COMPOSE, RABBITMQ], ids=["compose", "rabbitmq"])
def test_every_long_running_service_has_a_health_check_and_a_stop_grace_period(path):
    for name, service in long_running(path).items():
        if path == RABBITMQ and name != "rabbitmq":
            continue  # the others are docker-compose.yml's, extended
        assert service["healthcheck"]["test"][0] == "CMD", name
        assert seconds(service["stop_grace_period"]) >= 30, name


def test_each_service_of_the_image_probes_its_own_process():
    for name, service in image_services().items():
        if name != "migrate":
            assert probe_of(service).probe == name


def test_the_workers_stop_grace_outlasts_a_batchs_llm_calls_and_supervisords_wait():
    worker = services()["worker"]
    supervisord = configparser.RawConfigParser()
    supervisord.read(ROOT / "supervisord.conf")
    grace = seconds(worker["stop_grace_period"])
    assert worker["stop_signal"] == "SIGTERM"
    assert grace > Settings.model_fields["llm_timeout_seconds"].default + 20
    assert grace >= int(supervisord["program:worker"]["stopwaitsecs"])


@pytest.mark.parametrize("path", [COMPOSE, RABBITMQ], ids=["compose", "rabbitmq"])
def test_no_secret_is_written_in_the_deployment_files(path):
    document = load(path)
    for text in strings(document):
        assert not URL_PASSWORD.search(text) and not PROVIDER_KEY.search(text), text
    # A variable named for a secret only names the file that holds it (POSTGRES_PASSWORD_FILE)
    for name, service in document["services"].items():
        for variable, value in service.get("environment", {}).items():
            if SECRET_NAME.search(variable):
                assert str(value).startswith("/run/secrets/"), f"{name}: {variable}"
    # Every secret comes from a file under deploy/secrets/, which git and the image build both leave out
    for secret in document.get("secrets", {}).values():
        assert secret["file"].startswith("./deploy/secrets/")
    assert "deploy/secrets/" in (ROOT / ".gitignore").read_text().splitlines()
    assert "deploy/secrets" in (ROOT / ".dockerignore").read_text().splitlines()


@pytest.mark.parametrize("path", [COMPOSE, RABBITMQ], ids=["compose", "rabbitmq"])
def test_the_secrets_given_to_the_image_are_settings_it_reads_from_run_secrets(path):
    document = load(path)
    settings = set(Settings.model_fields)
    for name, service in document["services"].items():
        if name in image_services():
            assert set(service.get("secrets", [])) <= settings, name
            assert set(service.get("secrets", [])) <= set(load(COMPOSE)["secrets"]) | set(document["secrets"])
    postgres = services()["postgres"]
    assert postgres["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"
    assert services()["flower"]["secrets"] == [*load(COMPOSE)["x-agent-service"]["secrets"], "flower_basic_auth"]


def test_a_secret_file_named_for_a_setting_gives_the_setting_and_the_environment_wins(tmp_path, monkeypatch):
    # Given the secrets the deployment mounts, as files (the settings read /run/secrets in a container)
    values = {
        "database_url": "postgresql://agent:from-a-file@postgres:5432/agent_service",
        "openai_api_key": "key-from-a-file",
        "flower_basic_auth": "admin:from-a-file",
        "celery_broker_url": "amqp://agent:from-a-file@rabbitmq:5672//",
    }
    for name, value in values.items():
        (tmp_path / name).write_text(value + "\n")
        monkeypatch.delenv(name.upper(), raising=False)
    settings = Settings(_env_file=None, _secrets_dir=tmp_path)
    assert settings.database_url == "postgresql+psycopg2://agent:from-a-file@postgres:5432/agent_service"
    assert settings.openai_api_key.get_secret_value() == "key-from-a-file"
    assert settings.flower_basic_auth.get_secret_value() == "admin:from-a-file"
    assert settings.broker_url == values["celery_broker_url"]
    # And a variable set in the environment wins over the file
    monkeypatch.setenv("OPENAI_API_KEY", "key-from-the-environment")
    assert Settings(_env_file=None, _secrets_dir=tmp_path).openai_api_key.get_secret_value() == (
        "key-from-the-environment"
    )


def test_prometheus_scrapes_the_services_and_loads_the_shipped_rules():
    config = load(PROMETHEUS)
    assert config["rule_files"] == ["alerts.yml"] and (PROMETHEUS.parent / "alerts.yml").is_file()
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    [workers] = jobs["agent_service"]["dns_sd_configs"]
    image_env = dict(pair.split("=", 1) for pair in instruction("ENV").split() if "=" in pair)
    assert workers["names"] == ["worker"] and str(workers["port"]) == image_env["METRICS_PORT"]
    assert jobs["flower"]["static_configs"] == [{"targets": [f"flower:{Settings.model_fields['flower_port'].default}"]}]
    prometheus = services()["prometheus"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]


def test_the_rabbitmq_variant_makes_the_image_wait_for_rabbitmq_and_read_its_broker_url():
    extended = services(RABBITMQ)
    for name in ("worker", "beat", "flower", "api"):
        assert extended[name]["depends_on"]["rabbitmq"]["condition"] == "service_healthy"
        assert "celery_broker_url" in extended[name]["secrets"]
        assert set(services()[name]["secrets"]) <= set(extended[name]["secrets"])


@pytest.mark.skipif(not shutil.which("promtool"), reason="promtool not installed (Debian's prometheus package)")
def test_promtool_accepts_the_prometheus_config_and_its_rules():
    checked = subprocess.run(["promtool", "check", "config", str(PROMETHEUS)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def _compose_available() -> bool:
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _compose_available(), reason="the docker compose plugin is not installed")
@pytest.mark.parametrize("files", [[COMPOSE], [COMPOSE, RABBITMQ]], ids=["compose", "rabbitmq"])
def test_docker_compose_accepts_the_files(files):
    # `config` only parses and merges: no engine is needed
    command = ["docker", "compose", *[arg for path in files for arg in ("-f", str(path))], "config", "--quiet"]
    checked = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert checked.returncode == 0, checked.stderr
