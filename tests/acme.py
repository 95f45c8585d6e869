"""A real ACME server for tests, with no internet: Debian's `pebble` (Let's Encrypt's test
CA server) and `dnsmasq` as the resolver pebble asks, so the site's name resolves to this
machine and pebble's HTTP-01 check reaches the site's edge on its published port.

    with LocalAcme(host="lms.kit.test", http_port=18080) as acme:
        acme.directory     # https://172.17.0.1:14000/dir (reachable from containers)
        acme.ca_file       # the CA of pebble's own HTTPS (give it to certbot)
        acme.roots_pem()   # the root pebble signs site certificates with (give it to clients)
"""
from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType

import trustme


def available() -> str | None:
    for tool in ("pebble", "dnsmasq"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install pebble dnsmasq-base; scripts/test.sh does)"
    return None


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def _wait_port(address: str, port: int, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex((address, port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {address}:{port}")


class LocalAcme:
    def __init__(self, host: str, http_port: int, listen: str) -> None:
        self.host, self.http_port, self.listen = host, http_port, listen
        self.folder = Path(tempfile.mkdtemp(prefix="kit-test-acme-"))
        self.dns_port = free_port()
        self.port, self.management_port = free_port(listen), free_port(listen)
        self.ca_file = self.folder / "pebble-api-ca.pem"
        self._procs: list[subprocess.Popen[bytes]] = []

    @property
    def directory(self) -> str:
        return f"https://{self.listen}:{self.port}/dir"

    def __enter__(self) -> "LocalAcme":
        ca = trustme.CA()
        ca.cert_pem.write_to_path(str(self.ca_file))
        api = ca.issue_cert(self.listen, "localhost", "127.0.0.1")
        api.cert_chain_pems[0].write_to_path(str(self.folder / "api-cert.pem"))
        api.private_key_pem.write_to_path(str(self.folder / "api-key.pem"))
        config = {"pebble": {"listenAddress": f"{self.listen}:{self.port}",
                             "managementListenAddress": f"{self.listen}:{self.management_port}",
                             "certificate": str(self.folder / "api-cert.pem"),
                             "privateKey": str(self.folder / "api-key.pem"),
                             "httpPort": self.http_port, "tlsPort": free_port(), "ocspResponderURL": "",
                             "externalAccountBindingRequired": False}}
        (self.folder / "pebble.json").write_text(json.dumps(config))
        dns = subprocess.Popen(["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--bind-interfaces",
                                "--listen-address=127.0.0.1", f"--port={self.dns_port}", "--user=root",
                                f"--address=/{self.host}/127.0.0.1", f"--pid-file={self.folder}/dnsmasq.pid",
                                "--log-facility=-"],
                               stdout=(self.folder / "dnsmasq.log").open("wb"), stderr=subprocess.STDOUT)
        self._procs.append(dns)
        env = {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0",
               "PATH": "/usr/bin:/bin"}
        pebble = subprocess.Popen(["pebble", "-config", str(self.folder / "pebble.json"), "-strict=false",
                                   "-dnsserver", f"127.0.0.1:{self.dns_port}"], env=env,
                                  stdout=(self.folder / "pebble.log").open("wb"), stderr=subprocess.STDOUT)
        self._procs.append(pebble)
        _wait_port(self.listen, self.port)
        _wait_port(self.listen, self.management_port)
        return self

    def roots_pem(self) -> bytes:
        """The root pebble signs certificates with (made at its start)."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        url = f"https://{self.listen}:{self.management_port}/roots/0"
        with urllib.request.urlopen(url, context=context, timeout=10) as response:
            return bytes(response.read())

    def log(self) -> str:
        return (self.folder / "pebble.log").read_text(errors="replace")[-4000:]

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for proc in self._procs:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(self.folder, ignore_errors=True)
