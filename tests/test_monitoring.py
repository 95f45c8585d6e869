"""The monitoring stack as rendered: what runs where (local and hosts), that nothing listens
beyond 127.0.0.1 or the site's network, that no secret is in a rendered file, and the CLI's
refusals. The running stack is tested in tests/e2e/test_monitoring.py."""
from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kit import config, monitoring, render, sizing

HOSTS = {"target": "hosts", "name": "h", "hosts": {"machines": [
    {"name": "front", "address": "10.0.0.10", "roles": ["edge"]},
    {"name": "app1", "address": "10.0.0.11", "roles": ["web", "cron", "worker"]},
    {"name": "app2", "address": "10.0.0.12", "roles": ["web", "worker"]},
    {"name": "data", "address": "10.0.0.20", "roles": ["db", "redis"]}]}}


def _kit(folder: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kit.cli", *args], cwd=folder, input=stdin, capture_output=True,
                          text=True, timeout=60)


def _site(tmp_path: Path, **data: object) -> config.Site:
    return config.parse_site({"name": "t", **data}, site_dir=tmp_path)


def _rendered(site: config.Site) -> dict[str, str]:
    return render.render_files(site, sizing.plan(site))


def test_local_publishes_prometheus_and_alertmanager_on_loopback_only(tmp_path: Path) -> None:
    site = _site(tmp_path)
    tuning = sizing.plan(site)
    mv = render.monitoring_vars(site, tuning)
    assert mv["prometheus_publish"] == ["127.0.0.1:9090:9090"]
    assert mv["alertmanager_publish"] == ["127.0.0.1:9093:9093"]
    assert mv["exporter_publish"] == {"localhost": []} and mv["procs_publish"] == {"localhost": []}
    # The status servers listen on the site's network; the edge publishes only its own ports.
    files = _rendered(site)
    assert "listen 8081;" in files["edge.conf"] and "listen 8081;" in files["nginx.conf"]
    assert "stub_status" not in files["edge.conf"].split("listen 80 default_server")[1]
    scraped = yaml.safe_load(files["prometheus.yml"])
    jobs = {j["job_name"]: j for j in scraped["scrape_configs"]}
    assert set(jobs) == {"prometheus", "alertmanager", "node", "postgres", "redis", "mtail", "process", "nginx",
                         "fpm", "login"}
    replicas = [c["labels"]["instance"] for c in jobs["fpm"]["static_configs"]]
    assert replicas == render.names_for(site, tuning).web


def test_hosts_runs_exporters_on_every_machine_and_prometheus_on_the_edge(tmp_path: Path) -> None:
    site = config.parse_site(HOSTS, site_dir=tmp_path)
    tuning = sizing.plan(site)
    lay = monitoring.layout(site, tuning)
    kinds = {host: sorted(e.kind for e in found) for host, found in lay.exporters.items()}
    assert set(kinds) == {"front", "app1", "app2", "data"}
    assert "postgres" in kinds["front"] and "mtail" in kinds["front"] and "blackbox" in kinds["front"]
    assert kinds["data"] == ["node"] and kinds["app1"] == ["nginx", "node"]
    assert {v["target"] for v in lay.volumes["data"]} == {"/mnt/kit/pgdata"}
    mv = render.monitoring_vars(site, tuning)
    assert mv["exporter_publish"]["app1"] == ["10.0.0.11:9100:9100", "10.0.0.11:9114:9114"]
    assert mv["prometheus_publish"] == ["127.0.0.1:9090:9090"]   # on the edge machine's loopback
    targets = {t for job in lay.jobs for c in job["static_configs"] for t in c["targets"]}
    assert {"10.0.0.11:8082", "10.0.0.12:8082", "10.0.0.20:9100", "10.0.0.10:9187"} <= targets
    topo = render.topology_for(site, tuning)
    assert all(f"{m}:8082:8081" in " ".join(r["publish"]) for m, r in
               ((topo.addresses[r["host"]], r) for r in topo.replicas.values()))
    assert mv["redis_uri"].startswith("rediss://10.0.0.20:6379")


def test_no_secret_is_in_a_rendered_monitoring_file(tmp_path: Path) -> None:
    site = _site(tmp_path, monitoring={"webhook": True, "email": {"to": "ops@example.edu", "sender": "m@example.edu",
                                                                  "smarthost": "smtp.example.edu:587",
                                                                  "username": "moodle"}})
    files = _rendered(site)
    am = yaml.safe_load(files["alertmanager.yml"])
    receiver = am["receivers"][0]
    assert receiver["webhook_configs"][0]["url"] == monitoring.WEBHOOK_PLACEHOLDER
    assert receiver["email_configs"][0]["auth_password_file"] == f"{monitoring.SECRETS_DIR}/smtp_password"
    assert "auth_password:" not in files["alertmanager.yml"]
    assert site.monitoring.secret_keys() == ("smtp_password", "alert_webhook_url")
    secrets = {"smtp_password": "Smtp-Secret-9", "alert_webhook_url": "https://chat.example.edu/hook/T0K3N"}
    for name in render.MONITORING_FILES:
        assert not any(value in files[name] for value in secrets.values()), name
        assert "auth_password:" not in files[name] and "password:" not in files[name].replace("#", ""), name


def test_monitoring_off_renders_no_status_servers_and_needs_no_image(tmp_path: Path) -> None:
    site = _site(tmp_path, monitoring={"enabled": False})
    files = _rendered(site)
    assert "8081" not in files["nginx.conf"] and "edge-metrics.log" not in files["edge.conf"]
    assert render.monitoring_vars(site, sizing.plan(site)) == {"enabled": False}
    from kit.images import image_set

    assert image_set(config.parse_site({"name": "t", "images": {"tag": "x"}, "monitoring": {"enabled": False}},
                                       site_dir=tmp_path)).monitor == "-"


def test_kit_init_gives_a_second_site_free_monitoring_ports(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            held.bind(("127.0.0.1", 9090))
            held.listen()
        except OSError:
            pass    # something holds it already: the same situation
        first, second = monitoring.free_ports()
        assert first != 9090 and second == first + 3


@pytest.mark.parametrize("args, message", [
    (["alerts", "webhook"], "--url-stdin is required"),
    (["alerts", "email", "--to", "a@b.c", "--sender", "x@b.c", "--smarthost", "smtp:25", "--username", "u"],
     "--username needs --password-stdin"),
])
def test_alert_delivery_refuses_secrets_on_the_command_line(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "site.yaml").write_text("name: t\n")
    before = (tmp_path / "site.yaml").read_text()
    result = _kit(tmp_path, *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert (tmp_path / "site.yaml").read_text() == before


def test_a_webhook_url_that_is_not_http_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    (tmp_path / "site.yaml").write_text("name: t\n")
    result = _kit(tmp_path, "alerts", "webhook", "--url-stdin", stdin="ftp://chat.example.edu/hook\n")
    assert result.returncode == 2 and "must start with http" in result.stderr
    assert (tmp_path / "site.yaml").read_text() == "name: t\n"


def test_monitoring_ports_must_differ(tmp_path: Path) -> None:
    with pytest.raises(config.KitError, match="must differ"):
        _site(tmp_path, monitoring={"prometheus_port": 9500, "alertmanager_port": 9500})
