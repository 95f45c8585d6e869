"""Is the site serving? The real check: Moodle's login page, rendered through the edge,
nginx and php-fpm, with its login form (a maintenance or error page is not healthy)."""
from __future__ import annotations

from urllib.parse import urlparse

import requests

from kit.config import Site

LOGIN_MARKUP = 'name="logintoken"'


def local_base_url(site: Site) -> str:
    """Where this host reaches a local site's edge proxy (the public URL may point at a proxy)."""
    host = "127.0.0.1" if site.http.bind in ("0.0.0.0", "::") else site.http.bind
    return f"http://{host}:{site.http.port}"


def http_check(site: Site, base_url: str, timeout: float = 10) -> tuple[bool, str]:
    url = base_url + "/login/index.php"
    headers = {"Host": urlparse(site.url).netloc}
    if site.tls_at_proxy:
        headers["X-Forwarded-Proto"] = "https"
    try:
        resp = requests.get(url, headers=headers, timeout=timeout, allow_redirects=False)
    except requests.RequestException as exc:
        return False, f"login page unreachable at {url}: {type(exc).__name__}"
    if resp.status_code != 200:
        return False, f"login page answered HTTP {resp.status_code} (expected 200)"
    if LOGIN_MARKUP not in resp.text:
        return False, "login page has no Moodle login form (maintenance mode, or an error page)"
    return True, f"login page 200 in {resp.elapsed.total_seconds() * 1000:.0f} ms"
