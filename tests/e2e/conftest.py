"""One real site (kit init + kit up, real Moodle) shared by every end-to-end test module."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kit.config import load_site
from kit.images import OFFLINE_BASE_TAG
from tests.conftest import MEASURED, moodle_src

SRC = moodle_src()
KIT = [sys.executable, "-m", "kit.cli"]
SITE = "e2e"
TIMINGS: dict[str, float] = {}


def pytest_collection_modifyitems(config, items):
    if SRC is None:
        skip = pytest.mark.skip(reason="end-to-end tests need a real Moodle 4.5 tree: set MOODLE_SRC "
                                       "(e.g. ~/moodle-src/4.5.6)")
        for item in items:
            if "/e2e/" in str(item.fspath):
                item.add_marker(skip)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def kit(*args: str, cwd: Path, timeout: float = 3600, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run kit, streaming nothing but keeping the output for assertions (shown on failure)."""
    result = subprocess.run([*KIT, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, input=stdin)
    if result.returncode != 0:
        print(result.stdout[-6000:], result.stderr[-3000:])
    return result


def sh(*cmd: str, stdin: str | None = None, timeout: float = 120) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True, input=stdin, timeout=timeout)
    assert result.returncode == 0, f"{cmd}: {result.stdout[-2000:]} {result.stderr[-2000:]}"
    return result.stdout


def psql(sql: str) -> str:
    return sh("docker", "exec", "-u", "postgres", f"kit-{SITE}-db", "psql", "-d", "moodle", "-tAX", "-c", sql).strip()


def moodle_php(code: str) -> str:
    """Run PHP through Moodle's API inside a web replica, as www-data (secrets from its env)."""
    script = "<?php define('CLI_SCRIPT', true); require '/var/www/moodle/config.php';\n" + code
    return sh("docker", "exec", "-i", "-u", "www-data", f"kit-{SITE}-web-1", "php", stdin=script)


#: Every site name the end-to-end tests use (the shared site and the ones a module makes).
TEST_SITES = (SITE, "e2e-ext")


def purge_leftovers() -> None:
    """An interrupted earlier run may have left the e2e sites behind: start from nothing."""
    def names(*cmd: str) -> list[str]:
        return subprocess.run(cmd, capture_output=True, text=True).stdout.split()

    for name in TEST_SITES:
        containers = names("docker", "ps", "-aq", "--filter", f"label=kit.site={name}")
        if containers:
            subprocess.run(["docker", "rm", "-f", *containers], capture_output=True)
        volumes = set(names("docker", "volume", "ls", "-q", "--filter", f"label=kit.site={name}"))
        # By name too: a killed run's volumes keep an old database whose passwords are gone.
        volumes |= {v for v in names("docker", "volume", "ls", "-q") if v.startswith(f"kit-{name}-")
                    and not any(v.startswith(f"kit-{other}-") for other in TEST_SITES if other.startswith(name + "-"))}
        if volumes:
            subprocess.run(["docker", "volume", "rm", "-f", *sorted(volumes)], capture_output=True)
        subprocess.run(["docker", "network", "rm", f"kit-{name}"], capture_output=True)
        shutil.rmtree(f"/etc/kit/{name}", ignore_errors=True)
    purge_test_tags()


_purged_tags = False


def purge_test_tags() -> None:
    """Images the tests build under fixed tags (`kit upgrade --image-tag e2e-2`, hs-2, ...):
    a tag left by a run of older code would be taken as built, and its code run instead.
    Once per session, before any test builds one."""
    global _purged_tags
    if _purged_tags:
        return
    _purged_tags = True
    out = subprocess.run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"], capture_output=True,
                         text=True).stdout.split()
    stale = [tag for tag in out if re.fullmatch(r"kit/(moodle|moodle-web):(e2e|hs)-[a-z0-9-]+", tag)]
    if stale:
        subprocess.run(["docker", "rmi", "-f", *stale], capture_output=True)


#: The shared site's name: pebble issues its certificate, dnsmasq tells pebble where it is,
#: and this test process resolves it to 127.0.0.1 (resolve_site_host).
SITE_HOST = "lms.kit.test"


def bridge_address() -> str:
    """This host's address on Docker's default bridge: containers reach a server there."""
    import re

    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "docker0"], capture_output=True, text=True).stdout
    match = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", out)
    assert match, f"no docker0 address: {out!r}"
    return match.group(1)


def resolve_site_host() -> None:
    """The site's name means 127.0.0.1 in this process (the tests reach it like a browser)."""
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        return real("127.0.0.1" if host == SITE_HOST else host, *args, **kwargs)
    socket.getaddrinfo = getaddrinfo  # type: ignore[assignment]


@pytest.fixture(scope="session")
def acme():
    """A real ACME server (pebble) and its resolver (dnsmasq), for the shared site's HTTPS."""
    from tests.acme import LocalAcme, available

    reason = available()
    assert reason is None, f"the end-to-end site gets its certificate from pebble: {reason}"
    http_port, tls_port = free_port(), free_port()
    with LocalAcme(SITE_HOST, http_port, listen=bridge_address()) as server:
        yield server, http_port, tls_port


class Webhook:
    """An HTTP server on Docker's bridge that keeps what Alertmanager's webhook receiver posts."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.posts: list[dict] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                hook.posts.append(json.loads(body or b"{}"))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((bridge_address(), 0), Handler)
        self.url = f"http://{bridge_address()}:{self.server.server_address[1]}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alerts(self, name: str, status: str = "firing", since: int = 0) -> list[dict]:
        """Alerts of that name the receiver was sent with that status (in posts from `since` on)."""
        return [a for post in list(self.posts)[since:] for a in post.get("alerts", [])
                if a["labels"].get("alertname") == name and a.get("status") == status]

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture(scope="session")
def webhook():
    hook = Webhook()
    yield hook
    hook.close()


#: The shared site's monitoring, with test durations (site.yaml's monitoring section): alerts
#: fire after 10 s instead of minutes, and its SLO is the one the alerts and `kit loadtest` share.
E2E_MONITORING = {"scrape_interval_s": 5, "alert_for_s": 10, "cron_stale_minutes": 1, "queue_age_minutes": 1}
E2E_SLO = {"p95_ms": 300}


@pytest.fixture(scope="session")
def site_dir(tmp_path_factory, acme, webhook):
    reuse = os.environ.get("KIT_E2E_REUSE")
    if reuse:       # debugging: a site an earlier KIT_E2E_KEEP run left up, pointed at this pebble
        import yaml

        folder = Path(reuse)
        data = yaml.safe_load((folder / "site.yaml").read_text())
        data["tls"].update({"acme_directory": acme[0].directory, "acme_ca_bundle": str(acme[0].ca_file)})
        (folder / "site.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        assert kit("alerts", "webhook", "--url-stdin", cwd=folder, stdin=webhook.url + "\n").returncode == 0
        assert kit("up", cwd=folder).returncode == 0
        bundle = folder / "pebble-roots.pem"
        bundle.write_bytes(bundle.read_bytes() + acme[0].roots_pem())
        os.environ["REQUESTS_CA_BUNDLE"] = str(bundle)
        resolve_site_host()
        yield folder
        return
    purge_leftovers()
    server, http_port, tls_port = acme
    folder = tmp_path_factory.mktemp("site")
    if subprocess.run(["docker", "image", "inspect", OFFLINE_BASE_TAG], capture_output=True).returncode != 0:
        started = time.monotonic()
        assert kit("images", "base", cwd=folder).returncode == 0
        TIMINGS["base image (debootstrap)"] = time.monotonic() - started
    result = kit("init", "--name", SITE, "--users", "50", "--moodle-source", str(SRC), "--bind", "127.0.0.1",
                 "--port", str(http_port), "--url", f"https://{SITE_HOST}:{tls_port}", "--tls", "acme",
                 "--https-port", str(tls_port), "--acme-email", "ops@kit.test", "--acme-directory", server.directory,
                 "--acme-ca-bundle", str(server.ca_file), "--base-image", OFFLINE_BASE_TAG, cwd=folder)
    assert result.returncode == 0, result.stderr
    import yaml

    data = yaml.safe_load((folder / "site.yaml").read_text())
    # Ports of its own: the unit tests' sites (run in the same session) keep the defaults free.
    data["monitoring"] = {**data.get("monitoring", {}), **E2E_MONITORING,
                          "prometheus_port": free_port(), "alertmanager_port": free_port()}
    data["slo"] = E2E_SLO
    (folder / "site.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    assert kit("alerts", "webhook", "--url-stdin", cwd=folder, stdin=webhook.url + "\n").returncode == 0
    cold = not any(subprocess.run(["docker", "image", "ls", "-q", "kit/php"], capture_output=True,
                                  text=True).stdout.split())
    started = time.monotonic()
    result = kit("up", cwd=folder)
    TIMINGS["first kit up, with its ACME certificate" + (" (cold: images from scratch)" if cold else
                                                         " (images cached)")] = time.monotonic() - started
    if result.returncode != 0:
        print(server.log())
    assert result.returncode == 0, "kit up failed"
    assert "Site is up" in result.stdout
    # Clients here trust pebble's root, as browsers trust Let's Encrypt's.
    bundle = folder / "pebble-roots.pem"
    bundle.write_bytes(server.roots_pem())
    os.environ["REQUESTS_CA_BUNDLE"] = str(bundle)
    resolve_site_host()
    yield folder
    if os.environ.get("KIT_E2E_KEEP"):      # debugging: leave the site up (the next session purges it)
        print(f"KIT_E2E_KEEP: site left up in {folder}")
    else:
        kit("down", "--destroy-data", "--yes", cwd=folder)
    MEASURED.update({k: f"{v:.0f}s" for k, v in TIMINGS.items()})


@pytest.fixture(scope="session")
def site(site_dir):
    return load_site(site_dir / "site.yaml")




class Load:
    """A `kit loadtest run` of 20 users in the background for the length of a rollout: it
    starts LEAD_S before the rollout and ends (Ctrl-C, as an operator would) 5 s after it,
    or at `seconds` if that comes first."""

    LEAD_S = 6      # 20 users spawn in 1 s and log in within 2-3 s (locust's log)
    TAIL_S = 5

    def __init__(self, site_dir: Path, seconds: int, *extra: str, site: str = SITE):
        self.site_dir, self.seconds, self.extra, self.site = site_dir, seconds, extra, site
        self.proc: subprocess.Popen | None = None
        self.output = ""

    def __enter__(self) -> "Load":
        self.proc = subprocess.Popen(
            [*KIT, "loadtest", "run", "--users", "20", "--spawn-rate", "20", "--duration", f"{self.seconds}s",
             "--think", "0.5,1.5", "--slo", "errors=0%", *self.extra], cwd=self.site_dir,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        time.sleep(self.LEAD_S)  # users logged in and walking before the rollout starts
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        self.output = self.proc.stdout.read()

    def __exit__(self, *exc) -> None:
        assert self.proc is not None
        try:
            self.proc.wait(timeout=self.TAIL_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout=self.seconds + 300)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            self.reader.join(timeout=30)
        if self.proc.returncode != 0:
            print(self.output[-6000:])

    def summary(self) -> dict:
        report = sorted((self.site_dir / "reports" / self.site).iterdir())[-1]
        return json.loads((report / "summary.json").read_text())
