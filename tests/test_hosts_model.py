"""The `hosts` target's model and rendering: which machine runs what, how they reach each
other, and the inventory Ansible gets (no machine needed; the e2e test uses real ones)."""
from __future__ import annotations

from pathlib import Path

import pytest

from kit import render, sizing
from kit.config import parse_site
from kit.errors import KitError
from kit.images import ImageSet
from kit.targets.hosts import HostsTarget
from tests.conftest import HOST_2x24

MACHINES = [
    {"name": "data", "address": "10.0.0.10", "roles": ["edge", "db", "redis", "cron"]},
    {"name": "app1", "address": "10.0.0.11", "roles": ["web", "worker"]},
    {"name": "app2", "address": "10.0.0.12", "roles": ["web", "worker"]},
]


def hosts_site(tmp_path: Path, **extra):
    data = {"name": "hs", "target": "hosts", "hosts": {"machines": MACHINES, "ssh_config": "ssh.cfg", **extra}}
    return parse_site(data, site_dir=tmp_path)


@pytest.mark.parametrize("machines, message", [
    ([], "target hosts needs hosts.machines"),
    (MACHINES[1:], "exactly one machine must have role 'edge' (found 0)"),
    ([MACHINES[0]], "at least one machine must have role 'web'"),
    ([MACHINES[0], MACHINES[1], {**MACHINES[1], "address": "10.0.0.13"}], "machine names must be unique"),
    ([{**MACHINES[0], "roles": ["edge", "db", "redis", "cron", "mail"]}], "roles.4"),
])
def test_bad_machine_lists_are_refused_in_one_line(tmp_path, machines, message):
    with pytest.raises(KitError) as err:
        parse_site({"target": "hosts", "hosts": {"machines": machines}}, site_dir=tmp_path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_one_replica_per_web_machine_and_the_edge_proxies_to_their_addresses(tmp_path):
    site = hosts_site(tmp_path)
    tuning = sizing.plan(site, HOST_2x24)
    topo = render.topology_for(site, tuning)
    assert tuning.web_replicas == 2
    assert {n: r["upstream"] for n, r in topo.replicas.items()} == {"kit-hs-web-1": "10.0.0.11:8081",
                                                                    "kit-hs-web-2": "10.0.0.12:8081"}
    # its web port for the edge, and the status port (nginx, php-fpm) for the edge machine's Prometheus
    assert topo.replicas["kit-hs-web-2"]["publish"] == ["10.0.0.12:8081:80", "10.0.0.12:8082:8081"]
    assert set(topo.workers.values()) <= {"app1", "app2"}
    # Moodle reaches Redis through its local TLS tunnel to the Redis machine.
    assert (topo.db_endpoint, topo.redis_endpoint, topo.redis_tunnel) == ("10.0.0.10", "127.0.0.1", "10.0.0.10:6379")
    assert topo.moodledata == {"type": "bind", "source": "/srv/moodledata"}
    files = render.render_files(site, tuning)
    assert "$CFG->dbhost    = '10.0.0.10';" in files["config.php"]
    assert site.url == "http://10.0.0.10:8080"


def test_local_keeps_container_names_and_a_volume(tmp_path):
    site = parse_site({"name": "lc"}, site_dir=tmp_path)
    topo = render.topology_for(site, sizing.plan(site, HOST_2x24))
    # PostgreSQL is published on a loopback port Docker picks, for the kit's own probes only.
    assert topo.db_endpoint == "kit-lc-db" and topo.publish == {"db": ["127.0.0.1::5432"], "redis": []}
    assert topo.replicas["kit-lc-web-1"] == {"host": "localhost", "upstream": "kit-lc-web-1-nginx:80", "publish": []}
    assert topo.moodledata["type"] == "volume"


def test_inventory_groups_machines_by_role_and_uses_the_ssh_config(tmp_path):
    site = hosts_site(tmp_path)
    text = render.inventory(site, sizing.plan(site, HOST_2x24))
    groups: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("["):
            current = line.strip("[]")
            groups[current] = []
        elif line and not line.startswith("#") and current:
            groups[current].append(line)
    assert groups["web"] == ["app1", "app2"] and groups["db"] == ["data"] and groups["edge"] == ["data"]
    assert "app1 ansible_host=10.0.0.11" in groups["all"]
    assert f"ansible_ssh_common_args=-F {tmp_path / 'ssh.cfg'}" in groups["all:vars"]
    assert "ansible_python_interpreter=/usr/bin/python3" in groups["all:vars"]


def test_each_container_lives_on_its_machine_reached_with_the_sites_ssh_config(tmp_path):
    target = HostsTarget(hosts_site(tmp_path))
    app2 = target.machine_of("kit-hs-web-2-nginx")
    assert app2.name == "app2"
    assert target.ssh(app2) == ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-F",
                                str(tmp_path / "ssh.cfg"), "root@10.0.0.12"]
    assert target.machine_of("kit-hs-db").name == "data"
    with pytest.raises(KitError, match="not a container of site"):
        target.machine_of("kit-hs-mail")


def test_each_machine_gets_only_the_images_its_roles_run():
    images = ImageSet(php="kit/php:1", moodle="kit/moodle:1", web="kit/moodle-web:1", postgres="kit/postgres:1",
                      redis="kit/redis:1", edge="kit/edge:1")
    from kit.config import Machine

    web_only = Machine(name="a", address="10.0.0.2", roles=["web"])
    data = Machine(name="d", address="10.0.0.3", roles=["db", "redis", "edge"])
    target = HostsTarget(parse_site({"name": "hs", "target": "hosts", "hosts": {"machines": MACHINES}},
                                    site_dir=Path(".")))
    assert target.images_needed(web_only, images) == ["kit/moodle:1", "kit/moodle-web:1"]
    assert sorted(target.images_needed(data, images)) == ["kit/edge:1", "kit/postgres:1", "kit/redis:1"]


def _kit(cwd: Path, *args: str):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "kit.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60)


def test_init_writes_machines_and_refuses_a_malformed_one(tmp_path):
    ok = _kit(tmp_path, "init", "--target", "hosts", "--machine", "data=10.0.0.10:edge,db,redis,cron",
              "--machine", "app1=10.0.0.11:web,worker")
    assert ok.returncode == 0, ok.stderr
    site = parse_site(__import__("yaml").safe_load((tmp_path / "site.yaml").read_text()), site_dir=tmp_path)
    assert [m.name for m in site.hosts.with_role("web")] == ["app1"]
    bad = _kit(tmp_path, "init", "--force", "--target", "hosts", "--machine", "data=10.0.0.10")
    assert bad.returncode != 0 and bad.stderr.strip().count("\n") == 0
    assert "NAME=ADDRESS:ROLE" in bad.stderr


def test_web_count_and_data_commands_say_what_to_do_on_hosts(tmp_path):
    assert _kit(tmp_path, "init", "--target", "hosts", "--machine", "data=10.0.0.10:edge,db,redis,cron",
                "--machine", "app1=10.0.0.11:web").returncode == 0
    before = (tmp_path / "site.yaml").read_text()
    scale = _kit(tmp_path, "scale", "web=3")
    assert scale.returncode != 0 and "add or remove machines" in scale.stderr
    assert (tmp_path / "site.yaml").read_text() == before
    backup = _kit(tmp_path, "backup")
    assert backup.returncode == 3 and "`kit backup` is not available on target hosts: dump PostgreSQL" in backup.stderr


def test_a_site_claims_only_its_own_object_names():
    names = render.Names(prefix="kit-e2e", replicas=2, workers=1)
    for mine in ("kit-e2e", "kit-e2e-db", "kit-e2e-web-7-nginx", "kit-e2e-worker-12", "kit-e2e-pgdata"):
        assert names.claims(mine), mine
    for theirs in ("kit-e2e-ext", "kit-e2e-ext-db", "kit-e2e-ext-web-1", "kit-e2ex-db", "kit-e2e-dbx"):
        assert not names.claims(theirs), theirs


@pytest.mark.parametrize("machines", [
    MACHINES,
    [{"name": "solo", "address": "10.0.0.20", "roles": ["edge", "db", "redis", "web", "cron", "worker"]}],
])
def test_postgresql_offers_tls_wherever_it_refuses_plain_connections(tmp_path, machines):
    """pg_hba refuses plain TCP on hosts: the server must then serve TLS, even when every Moodle
    role shares the database's machine (its port is published on the machine's address)."""
    site = parse_site({"name": "hs", "target": "hosts", "hosts": {"machines": machines}}, site_dir=tmp_path)
    tuning = sizing.plan(site, HOST_2x24)
    files = render.render_files(site, tuning)
    assert "hostnossl all all 0.0.0.0/0       reject" in files["pg_hba.conf"]
    assert "ssl = 'on'" in files["postgresql.conf"] and "ssl_cert_file" in files["postgresql.conf"]
    assert tuning.db_sslmode == "verify-full"


def test_a_renewed_server_certificate_changes_the_servers_checksum(tmp_path):
    """PostgreSQL and Redis read their certificate at start: a new one must restart them."""
    site = hosts_site(tmp_path)
    tuning = sizing.plan(site, HOST_2x24)
    files = render.render_files(site, tuning)
    folder = site.state_dir / "tls" / "site"
    folder.mkdir(parents=True)
    (folder / "db.crt").write_text("first\n")
    before = render.driver_vars(site, tuning, ImageSet.placeholder(), files)["kit_checksums"]
    (folder / "db.crt").write_text("renewed\n")
    after = render.driver_vars(site, tuning, ImageSet.placeholder(), files)["kit_checksums"]
    assert after["db"] != before["db"]
    assert {k: v for k, v in after.items() if k != "db"} == {k: v for k, v in before.items() if k != "db"}
