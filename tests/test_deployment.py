"""deploy/: the systemd unit and docker-compose.yml run the command this test runs, on the config they ship."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from test_metrics import get

from botkit.settings import load_settings
from botkit.testing import eventually

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
CONFIG_IN_SERVER = "/etc/botkit/config.toml"
# What the unit and the compose file run, after the path of the `botkit` executable.
COMMAND = ["run", "--config", CONFIG_IN_SERVER]
SECRET = re.compile(r"PASSWORD|TOKEN|SECRET|API_KEY")


def unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A systemd unit file: each section's keys, each with every value it was given."""
    sections: dict[str, dict[str, list[str]]] = {}
    section: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        section.setdefault(key.strip(), []).append(value.strip())
    return sections


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text(encoding="utf-8"))


def shipped_config() -> dict:
    return tomllib.loads((DEPLOY / "config.toml").read_text(encoding="utf-8"))


def test_the_unit_and_the_compose_file_run_the_same_botkit_command():
    service = unit(DEPLOY / "systemd" / "botkit.service")["Service"]
    start = shlex.split(service["ExecStart"][0])
    assert Path(start[0]).name == "botkit" and Path(start[0]).is_absolute() and start[1:] == COMMAND
    command = compose()["services"]["botkit"]["command"]
    assert command == ["botkit", *COMMAND]
    dockerfile = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    assert f"CMD {json_list(command)}" in dockerfile


def json_list(values: list[str]) -> str:
    return "[" + ", ".join(f'"{value}"' for value in values) + "]"


def test_the_unit_restarts_on_failure_reloads_on_hangup_and_may_write_only_its_data():
    service = unit(DEPLOY / "systemd" / "botkit.service")["Service"]
    config = shipped_config()
    assert service["User"] == ["botkit"]
    assert service["EnvironmentFile"] == ["/etc/botkit/botkit.env"]
    assert service["Restart"] == ["on-failure"]
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]  # `botkit run` reloads on SIGHUP
    assert service["NoNewPrivileges"] == ["yes"] and service["PrivateTmp"] == ["yes"]
    assert service["ProtectSystem"] == ["strict"]
    # ProtectSystem=strict: the data folder and the control socket's folder are the writable ones.
    data_dir = config["storage"]["data_dir"]
    assert service["ReadWritePaths"] == [data_dir]
    assert service["StateDirectory"] == [Path(data_dir).relative_to("/var/lib").as_posix()]
    socket_dir = Path(config["bot"]["control_socket"]).parent
    assert service["RuntimeDirectory"] == [socket_dir.relative_to("/run").as_posix()]


def test_the_compose_file_gives_the_bot_postgresql_and_secrets_only_from_the_environment(monkeypatch):
    services = compose()["services"]
    bot = services["botkit"]
    assert f"./config.toml:{CONFIG_IN_SERVER}:ro" in bot["volumes"]
    assert bot["depends_on"]["postgres"]["condition"] == "service_healthy"
    postgres = services["postgres"]["environment"]
    for service in services.values():
        for name, value in (service.get("environment") or {}).items():
            if SECRET.search(name):
                assert re.fullmatch(r"\$\{\w+:\?[^}]*\}", value), f"{name} must come from deploy/.env"
    # The bot's settings, as the container sees them (the .env values made up).
    for name in [n for n in os.environ if n.startswith("BOTKIT_")]:
        monkeypatch.delenv(name)
    for name, value in bot["environment"].items():
        monkeypatch.setenv(name, re.sub(r"\$\{\w+:\?[^}]*\}", "made-up", value))
    settings = load_settings(DEPLOY / "config.toml")
    url = settings.storage.url
    assert url == f"postgresql+asyncpg://{postgres['POSTGRES_USER']}@postgres:5432/{postgres['POSTGRES_DB']}"
    assert settings.storage.password is not None
    assert settings.metrics.enabled and settings.metrics.listen.startswith("0.0.0.0:")
    # Prometheus scrapes the port the bot listens on, and Grafana loads the dashboard.
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    targets = prometheus["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == [f"botkit:{settings.metrics.listen.rsplit(':', 1)[1]}"]
    provider = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "dashboards" / "botkit.yml").read_text(encoding="utf-8")
    )
    folder = provider["providers"][0]["options"]["path"]
    assert f"./grafana/botkit.json:{folder}/botkit.json:ro" in services["grafana"]["volumes"]


def replicas_compose() -> dict:
    """docker-compose.yml with docker-compose.replicas.yml over it, merged as Compose does for these keys:
    mappings key by key, ``volumes`` by their target path."""
    merged = compose()
    override = yaml.safe_load((DEPLOY / "docker-compose.replicas.yml").read_text(encoding="utf-8"))
    for name, service in override["services"].items():
        base = merged["services"].setdefault(name, {})
        for key, value in service.items():
            if isinstance(value, dict):
                base[key] = {**(base.get(key) or {}), **value}
            elif key == "volumes":
                targets = {v.split(":")[1]: v for v in [*base.get(key, []), *value]}
                base[key] = list(targets.values())
            else:
                base[key] = value
    merged["volumes"] = {**merged["volumes"], **override.get("volumes", {})}
    return merged


def test_the_replicas_compose_file_runs_the_same_command_as_replicas_of_one_bot(monkeypatch):
    from botkit.bot import Bot

    services = replicas_compose()["services"]
    replicas = [services["botkit"], services["botkit-2"]]
    shards, data = [], []
    for replica in replicas:
        assert replica["command"] == ["botkit", *COMMAND]
        assert f"./config.toml:{CONFIG_IN_SERVER}:ro" in replica["volumes"]
        assert replica["depends_on"]["redis"]["condition"] == "service_healthy"
        data += [v.split(":")[0] for v in replica["volumes"] if v.split(":")[1] == "/var/lib/botkit"]
        for name in [n for n in os.environ if n.startswith("BOTKIT_")]:
            monkeypatch.delenv(name)
        monkeypatch.setenv("BOTKIT_ADAPTERS__DISCORD__TOKEN", "made-up")  # from deploy/.env
        for name, value in replica["environment"].items():
            assert not SECRET.search(name) or re.fullmatch(r"\$\{\w+:\?[^}]*\}", value), name
            monkeypatch.setenv(name, re.sub(r"\$\{\w+:\?[^}]*\}", "made-up", value))
        settings = load_settings(DEPLOY / "config.toml")
        assert settings.cluster.enabled and settings.cluster.redis_url == "redis://redis:6379/0"
        assert settings.storage.url is not None and settings.storage.url.startswith("postgresql+asyncpg://")
        discord = Bot.load(settings).adapter_settings("discord")
        shards.append((discord.shard_count, tuple(discord.shard_ids or ())))
    # Every shard run by exactly one replica, and each replica keeps its spool in a volume of its own.
    assert sorted(shards) == [(2, (0,)), (2, (1,))]
    assert len(set(data)) == len(data) == 2
    prometheus = services["prometheus"]["volumes"]
    scraped = [v.split(":")[0] for v in prometheus if v.split(":")[1] == "/etc/prometheus/prometheus.yml"]
    assert scraped == ["./prometheus/prometheus-replicas.yml"]
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus-replicas.yml").read_text(encoding="utf-8"))
    assert config["scrape_configs"][0]["static_configs"][0]["targets"] == ["botkit:9464", "botkit-2:9464"]


def botkit_executable() -> str:
    """The `botkit` console script of the Python running the tests (as the unit's /opt/botkit/bin/botkit)."""
    path = Path(sys.executable).with_name("botkit")
    assert path.exists(), f"no botkit command beside {sys.executable}: install botkit into this environment"
    return str(path)


async def test_the_deployed_command_starts_is_ready_and_stops_cleanly_on_sigterm(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text((DEPLOY / "config.toml").read_text(encoding="utf-8"), encoding="utf-8")
    command = [botkit_executable(), *(str(config) if arg == CONFIG_IN_SERVER else arg for arg in COMMAND)]
    env = {name: value for name, value in os.environ.items() if not name.startswith("BOTKIT_")}
    env.update(
        # What this machine lacks: /var/lib/botkit, /run/botkit, a Discord token, a fixed free port,
        # and time to load a model. Everything else is the shipped config.
        BOTKIT_STORAGE__DATA_DIR=str(tmp_path / "data"),
        BOTKIT_BOT__CONTROL_SOCKET=str(tmp_path / "c.sock"),
        BOTKIT_ADAPTERS__DISCORD__ENABLED="false",
        BOTKIT_ADAPTERS__CONSOLE__ENABLED="true",
        BOTKIT_METRICS__LISTEN="127.0.0.1:0",
        BOTKIT_BACKEND__TYPE="scripted",
    )

    def status_when_ready() -> str | None:
        """What `botkit status` prints once it exits 0 (the bot answers and is ready)."""
        shown = subprocess.run(
            [botkit_executable(), "status", "--config", str(config)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        return shown.stdout if shown.returncode == 0 else None

    bot = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        shown = await eventually(
            lambda: asyncio.to_thread(status_when_ready),
            timeout=60,
            what="botkit status says the deployed bot is ready",
        )
        url = next(line.split("metrics: ", 1)[1] for line in shown.splitlines() if "metrics: http" in line)
        ready, _, body = await get(url.removesuffix("/metrics") + "/readyz")
        assert ready == 200, body
        bot.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(bot.wait, 60)
    finally:
        if bot.poll() is None:
            bot.kill()
            bot.wait()
    stderr = bot.stderr.read() if bot.stderr else ""
    assert code == 0, stderr
    assert "Traceback" not in stderr


def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    """systemd's own check: every key known, every value valid (ExecStart pointed at this machine's botkit)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: the unit's keys were not checked by systemd")
    text = (DEPLOY / "systemd" / "botkit.service").read_text(encoding="utf-8")
    copy = tmp_path / "botkit.service"
    copy.write_text(text.replace("/opt/botkit/bin/botkit", botkit_executable()), encoding="utf-8")
    result = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (0, "")
