"""Is the site serving? The real check: Moodle's login page, rendered through the edge,
nginx and php-fpm, with its login form (a maintenance or error page is not healthy)."""
from __future__ import annotations

import warnings
from urllib.parse import urlparse

import requests
import urllib3

from kit.config import Site

LOGIN_MARKUP = 'name="logintoken"'


def local_base_url(site: Site, address: str | None = None) -> str:
    """Where this machine reaches a site's edge proxy (the public URL may point at a proxy):
    its HTTPS port when the edge ends TLS, else its HTTP port."""
    host = address or ("127.0.0.1" if site.http.bind in ("0.0.0.0", "::") else site.http.bind)
    if site.tls.at_edge:
        return f"https://{host}:{site.tls.port}"
    return f"http://{host}:{site.http.port}"


def http_check(site: Site, base_url: str, timeout: float = 10) -> tuple[bool, str]:
    """The login page through the edge. Over HTTPS the certificate is not checked here (the
    page is; `kit certs` and doctor check the certificate)."""
    url = base_url + "/login/index.php"
    headers = {"Host": urlparse(site.url).netloc}
    if site.tls_at_proxy:
        headers["X-Forwarded-Proto"] = "https"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
            resp = requests.get(url, headers=headers, timeout=timeout, allow_redirects=False, verify=False)
    except requests.RequestException as exc:
        return False, f"login page unreachable at {url}: {type(exc).__name__}"
    if resp.status_code != 200:
        return False, f"login page answered HTTP {resp.status_code} (expected 200)"
    if LOGIN_MARKUP not in resp.text:
        return False, "login page has no Moodle login form (maintenance mode, or an error page)"
    return True, f"login page 200 in {resp.elapsed.total_seconds() * 1000:.0f} ms"
