"""The `hosts` target on test machines this suite starts on this machine (each: sshd and its
own Docker engine, see tests/hosts/): `kit up` over SSH across three machines, a rolling
upgrade under a 20-user load with no failed request, and a broken release undone by itself
(block/rescue on the failing machine, then the previous release everywhere).
"""
from __future__ import annotations

import json
import shlex
import subprocess
import time

import pytest
import yaml

from kit.images import OFFLINE_BASE_TAG
from tests.conftest import MEASURED
from tests.e2e.conftest import SRC, TIMINGS, Load, kit, purge_test_tags
from tests.hosts.testhosts import TestHosts, build_image, docker_available, image_exists

pytestmark = pytest.mark.e2e

SITE = "hs"
# Every Moodle container on the two web machines: they need the same images, which the
# first `kit up` saves once and loads on each; the data machine needs no Moodle image.
MACHINES = {"data": ["edge", "db", "redis"], "app1": ["web", "worker", "cron"], "app2": ["web"]}
PORT = 8080


def on(th: TestHosts, machine: str, *cmd: str, input_text: str | None = None) -> str:
    result = th.run(machine, *cmd, check=False, timeout=600, input_text=input_text)
    assert result.returncode == 0, f"{machine}: {shlex.join(cmd)}: {result.stdout[-1500:]} {result.stderr[-1500:]}"
    return result.stdout


def replica_images(th: TestHosts) -> dict[str, str]:
    """web replica -> image, read on each web machine."""
    found = {}
    for machine, roles in MACHINES.items():
        if "web" in roles:
            out = on(th, machine, "docker", "ps", "--filter", f"label=kit.site={SITE}", "--filter",
                     "label=kit.role=web", "--format", "{{.Names}} {{.Image}}")
            found.update(line.split() for line in out.splitlines() if line.strip())
    return found


def psql(th: TestHosts, sql: str) -> str:
    return on(th, "data", "docker", "exec", "-u", "postgres", f"kit-{SITE}-db", "psql", "-d", "moodle", "-tAX",
              "-c", sql).strip()


@pytest.fixture(scope="module")
def hosts_site(tmp_path_factory):
    reason = docker_available()
    if reason:
        pytest.skip(f"test machines need a Docker engine: {reason}")
    if not image_exists(OFFLINE_BASE_TAG):  # a fresh machine: the test machines' image builds on it
        assert kit("images", "base", cwd=tmp_path_factory.mktemp("base")).returncode == 0
    build_image()
    purge_test_tags()
    with TestHosts(list(MACHINES), tmp_path_factory.mktemp("machines")) as th:
        folder = tmp_path_factory.mktemp("hosts-site")
        machines = [f"--machine={m}={th.address(m)}:{','.join(roles)}" for m, roles in MACHINES.items()]
        result = kit("init", "--name", SITE, "--target", "hosts", "--users", "50", "--port", str(PORT),
                     "--moodle-source", str(SRC), "--base-image", OFFLINE_BASE_TAG, "--ssh-config", str(th.ssh_config),
                     *machines, cwd=folder)
        assert result.returncode == 0, result.stderr
        site = yaml.safe_load((folder / "site.yaml").read_text())
        site["hosts"]["moodledata"] = "/srv/moodledata"
        # The monitoring stack on hosts is checked as rendered (tests/test_monitoring.py); here
        # it stays off to keep this suite inside CI's time (it runs on the shared local site).
        site["monitoring"] = {"enabled": False}
        (folder / "site.yaml").write_text(yaml.safe_dump(site, sort_keys=False))
        started = time.monotonic()
        result = kit("up", "--yes", cwd=folder)
        TIMINGS["hosts: first kit up on 3 machines (images shipped over ssh, Moodle installed)"] = \
            time.monotonic() - started
        assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
        assert "Site is up" in result.stdout
        # One archive per set of images: the web machines' set is saved once, for both.
        assert result.stdout.count("saved once") == 2, result.stdout[-5000:]
        yield folder, th
    MEASURED.update({k: f"{v:.0f}s" for k, v in TIMINGS.items() if k.startswith("hosts:")})


def test_up_spreads_the_site_over_the_machines(hosts_site):
    folder, th = hosts_site
    assert set(replica_images(th)) == {f"kit-{SITE}-web-1", f"kit-{SITE}-web-2"}
    assert f"kit-{SITE}-db" in on(th, "data", "docker", "ps", "--format", "{{.Names}}")
    assert f"kit-{SITE}-worker-1" in on(th, "app1", "docker", "ps", "--format", "{{.Names}}")
    upstream = on(th, "data", "cat", f"/etc/kit/{SITE}/edge/upstream.conf")
    for machine in ("app1", "app2"):
        assert f"server {th.address(machine)}:8081" in upstream
    status = json.loads(kit("status", "--json", cwd=folder).stdout)
    assert status["ready"] is True, status["reason"]
    again = kit("up", "--yes", cwd=folder)
    assert again.returncode == 0 and "No changes" in again.stdout, again.stdout[-3000:]


def test_sessions_and_application_cache_are_in_redis_across_machines(hosts_site):
    """Web machines share no disk, so the tuned plan keeps sessions and the application cache
    in Redis there (on one host they stay in files), through the kit's store plugin, whose
    configuration (shown on Moodle's cache pages) holds no password."""
    _, th = hosts_site
    machine = next(m for m, roles in MACHINES.items() if "web" in roles)
    replica = on(th, machine, "docker", "ps", "--filter", f"label=kit.site={SITE}", "--filter", "label=kit.role=web",
                 "--format", "{{.Names}}").split()[0]
    script = ("<?php define('CLI_SCRIPT', true); require '/var/www/moodle/config.php';\n"
              "$w = cache_config_writer::instance(); $s = $w->get_all_stores()['kit_redis'] ?? [];\n"
              "echo $CFG->session_handler_class ?? 'files', ' ', $s['plugin'] ?? '-', ' ',"
              " json_encode($s['configuration'] ?? []), \"\\n\";\n"
              "foreach ($w->get_mode_mappings() as $m) { echo $m['mode'], '=', $m['store'], \"\\n\"; }\n")
    out = th.run(machine, "docker", "exec", "-i", "-u", "www-data", replica, "php", input_text=script).stdout
    first, *mappings = out.splitlines()
    handler, plugin, configuration = first.split(" ", 2)
    assert handler == "\\core\\session\\redis" and plugin == "kitredis", out
    assert "password" not in configuration and "1=kit_redis" in mappings, out


def test_postgresql_and_redis_across_machines_take_tls_only(hosts_site):
    """From this machine (not the data machine): TLS with the site CA's certificates is
    accepted, a plain-text client is refused. The site itself serving pages proves the Moodle
    machines reach both through TLS."""
    import socket

    import psycopg

    folder, th = hosts_site
    data = th.address("data")
    ca = folder / ".kit" / SITE / "tls" / "site" / "ca.crt"
    pg = subprocess.run(["openssl", "s_client", "-starttls", "postgres", "-connect", f"{data}:5432", "-CAfile",
                         str(ca), "-verify_return_error", "-verify_ip", data], input="", capture_output=True,
                        text=True, timeout=30)
    assert "Verify return code: 0 (ok)" in pg.stdout, pg.stdout[-1500:] + pg.stderr[-500:]
    redis = subprocess.run(["openssl", "s_client", "-connect", f"{data}:6379", "-CAfile", str(ca),
                            "-verify_return_error", "-verify_ip", data], input="", capture_output=True,
                           text=True, timeout=30)
    assert "Verify return code: 0 (ok)" in redis.stdout, redis.stdout[-1500:] + redis.stderr[-500:]
    secrets = yaml.safe_load((folder / ".kit" / SITE / "secrets.yaml").read_text())
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        psycopg.connect(host=data, port=5432, dbname="moodle", user=secrets.get("db_user", "moodle"),
                        password=secrets["db_password"], sslmode="disable", connect_timeout=10)
    with socket.create_connection((data, 6379), timeout=10) as plain:
        plain.sendall(f"AUTH {secrets['redis_password']}\r\nPING\r\n".encode())
        plain.settimeout(5)
        try:
            answer = plain.recv(100)
        except (TimeoutError, ConnectionResetError):
            answer = b""
    assert b"PONG" not in answer and b"+OK" not in answer, answer
    status = json.loads(kit("status", "--json", cwd=folder).stdout)
    assert status["ready"] is True, status["reason"]


def test_rolling_upgrade_across_machines_drops_no_request(hosts_site):
    folder, th = hosts_site
    # The smallest data the journey walks (a rollout that drops no request is what is under
    # test; the S data's page costs are measured on the shared site and in benchmarks/).
    assert kit("loadtest", "seed", "--size", "XS", cwd=folder).returncode == 0
    kept = psql(th, "select count(*) from mdl_course")
    started = time.monotonic()
    with Load(folder, 300, "--yes", site=SITE) as load:
        result = kit("upgrade", "--image-tag", "hs-2", cwd=folder)
    TIMINGS["hosts: rolling upgrade, 2 web machines (whole run)"] = time.monotonic() - started - Load.LEAD_S
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    summary = load.summary()
    assert summary["total"]["failures"] == 0, summary["failures"]
    assert summary["total"]["requests"] > 100
    assert set(replica_images(th).values()) == {"kit/moodle:hs-2"}
    assert psql(th, "select count(*) from mdl_course") == kept


def test_broken_release_is_undone_on_every_machine(hosts_site):
    folder, th = hosts_site
    good = replica_images(th)
    base = good[f"kit-{SITE}-web-1"]
    dockerfile = f"FROM {base}\nRUN echo 'pm.max_children = not-a-number' >> /etc/php/8.2/fpm/php-fpm.conf\n"
    # The broken release is built here (kit upgrade finds it) and, to keep CI inside its time,
    # on each machine from the image it already has, so `kit upgrade` ships nothing: shipping
    # is what the first `kit up` tests (785 MB per machine).
    subprocess.run(["docker", "build", "-q", "-t", "kit/moodle:hs-broken", "-"], input=dockerfile, text=True,
                   check=True, capture_output=True, timeout=600)
    subprocess.run(["docker", "tag", base.replace("/moodle:", "/moodle-web:"), "kit/moodle-web:hs-broken"],
                   check=True)
    for machine, roles in MACHINES.items():
        if {"web", "cron", "worker"} & set(roles):
            on(th, machine, "docker build -q -t kit/moodle:hs-broken - >/dev/null", input_text=dockerfile)
        if "web" in roles:
            on(th, machine, "docker", "tag", base.replace("/moodle:", "/moodle-web:"), "kit/moodle-web:hs-broken")
    with Load(folder, 300, "--yes", site=SITE) as load:
        result = kit("upgrade", "--image-tag", "hs-broken", cwd=folder)
    assert result.returncode != 0
    assert "did not become healthy" in result.stderr and "rolled back to release" in result.stderr
    summary = load.summary()
    assert summary["total"]["failures"] == 0, summary["failures"]
    assert replica_images(th) == good
    assert json.loads(kit("releases", "--json", cwd=folder).stdout)[-1]["outcome"] == "rolled back"


def test_secrets_rotate_across_machines_drops_no_request(hosts_site):
    folder, th = hosts_site
    secrets_file = folder / ".kit" / SITE / "secrets.yaml"
    before = yaml.safe_load(secrets_file.read_text())
    with Load(folder, 300, "--yes", site=SITE) as load:
        result = kit("secrets", "rotate", "--yes", cwd=folder)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    summary = load.summary()
    assert summary["total"]["failures"] == 0, summary["failures"]
    after = yaml.safe_load(secrets_file.read_text())
    assert after["db_password"] != before["db_password"] and after["redis_password"] != before["redis_password"]
    # The web machines' php-fpm now log in with the new role; the old one has no password left.
    assert psql(th, f"select rolpassword is null from pg_authid where rolname = '{before.get('db_user', 'moodle')}'") == "t"
    acl = on(th, "data", "cat", f"/etc/kit/{SITE}/redis-users.acl")
    assert acl.count("#") == 1
    # A rotation restarts containers but keeps the release: still the upgrade's --image-tag.
    assert set(replica_images(th).values()) == {"kit/moodle:hs-2"}


def test_down_stops_every_machine_and_keeps_the_data(hosts_site):
    folder, th = hosts_site
    result = kit("down", cwd=folder)
    assert result.returncode == 0, result.stdout[-3000:]
    for machine in MACHINES:
        assert f"kit-{SITE}-" not in on(th, machine, "docker", "ps", "-a", "--format", "{{.Names}}")
    assert f"kit-{SITE}-pgdata" in on(th, "data", "docker", "volume", "ls", "--format", "{{.Name}}")

