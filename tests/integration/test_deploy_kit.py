"""The deploy kit (deploy/, docs/deploy.md): the systemd units pass `systemd-analyze verify` and
start real entry points with options their programs take; the TLS nginx configuration is the
plain one with TLS, passes `nginx -t` with a certificate, and over TLS sends HSTS on the app's
answers and its own errors; docs/deploy.md's references lead somewhere."""

from __future__ import annotations

import http.client
import json
import os
import re
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask

from tests.integration.live_server import ROOT, STARTUP_SECONDS, free_port, live_server, stop
from tests.integration.nginx import check_config, nginx_in_front, serving, write_self_signed

DEPLOY = ROOT / "deploy"
UNITS = DEPLOY / "systemd"
PLAIN = DEPLOY / "nginx" / "creditapp.conf"
TLS = DEPLOY / "nginx" / "creditapp-tls.conf"
INSTALLED = "/opt/creditapp"
ENV_FILE = "/etc/creditapp/creditapp.env"
CERTIFICATE = "/etc/letsencrypt/live/creditapp.example.com/fullchain.pem"
CERTIFICATE_KEY = "/etc/letsencrypt/live/creditapp.example.com/privkey.pem"
SERVICES = {
    "creditapp-web.service": "wsgi:app",
    "creditapp-worker.service": "celery_worker:celery",
    "creditapp-beat.service": "celery_worker:celery",
    "creditapp-migrate.service": "wsgi",
}
# What production needs to start (creditapp.config.ProductionConfig), for the entry points.
PRODUCTION_ENV = {
    "CREDITAPP_ENV": "production",
    "JWT_SECRET_KEY": "a-production-signing-key-of-enough-length-0123",
    "CELERY_BROKER_URL": "memory://",
    # Nothing here connects to it: the entry points start, and /healthz asks nothing of it.
    "REDIS_URL": "redis://127.0.0.1:9/0",
    "METRICS_TOKEN": "a-scrapers-token-of-enough-length-0123",
    "PUBLIC_BASE_URL": "https://creditapp.example.com",
}


def _unit(name: str) -> dict[str, list[str]]:
    """A unit file's settings, each with every value it is given (sections merged)."""
    settings: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def _exec_start(name: str) -> list[str]:
    (command,) = _unit(name)["ExecStart"]
    # systemd's own specifiers (%H: the host name) are systemd's, not the program's.
    return [word.replace("%H", "host") for word in shlex.split(command)]


def _installed_here(text: str, env_file: Path) -> str:
    """A unit as installed from this checkout: its paths are this repository's."""
    venv_bin = Path(sys.executable).parent
    return (
        text.replace(f"{INSTALLED}/.venv/bin", str(venv_bin))
        .replace(INSTALLED, str(ROOT))
        .replace(ENV_FILE, str(env_file))
    )


def test_the_units_are_the_kit_and_every_long_running_one_is_always_restarted() -> None:
    assert {path.name for path in UNITS.glob("*.service")} == set(SERVICES)
    for name in SERVICES:
        settings = _unit(name)
        assert settings["WorkingDirectory"] == [INSTALLED], name
        assert settings["EnvironmentFile"] == [ENV_FILE], name
        assert "CREDITAPP_ENV=production" in settings["Environment"], name
        assert settings["User"] == ["creditapp"], name
        if name == "creditapp-migrate.service":
            assert settings["Type"] == ["oneshot"] and "Restart" not in settings
            continue
        assert (settings["Restart"], settings["StartLimitIntervalSec"]) == (["always"], ["0"])
        assert settings["WantedBy"] == ["multi-user.target"], name
    assert "TRUSTED_PROXY_HOPS=1" in _unit("creditapp-web.service")["Environment"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verifies_every_unit(tmp_path: Path) -> None:
    env_file = tmp_path / "creditapp.env"
    env_file.write_text((UNITS / "creditapp.env.example").read_text())
    for name in SERVICES:
        (tmp_path / name).write_text(_installed_here((UNITS / name).read_text(), env_file))
    verified = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *(str(tmp_path / name) for name in SERVICES)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Warnings about the machine's own units are not ours; none may name one of ours.
    ours = [line for line in verified.stderr.splitlines() if "creditapp" in line]
    assert (verified.returncode, ours) == (0, []), verified.stderr


def _entry_point_env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        **PRODUCTION_ENV,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'entry.db'}",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
    }


def _run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_web_unit_starts_gunicorn_on_wsgi_app_with_options_it_takes(tmp_path: Path) -> None:
    command = _exec_start("creditapp-web.service")
    assert command[0] == f"{INSTALLED}/.venv/bin/gunicorn" and command[-1] == "wsgi:app"
    local = [_installed_here(word, tmp_path) for word in command]
    assert Path(local[0]).is_file()
    # gunicorn reads the unit's whole command line and loads the app from it, then exits.
    checked = _run([*local[:1], "--check-config", *local[1:]], _entry_point_env(tmp_path))
    assert checked.returncode == 0, checked.stderr


def test_a_stopping_web_worker_finishes_its_streams_before_it_is_killed(tmp_path: Path) -> None:
    """A reload or a stop lets each worker finish what it serves, streams included, for as long
    as a hold lives (every provider call and stream ends within it): a worker killed sooner
    leaves its streams' words to the hold's expiry, which charges nothing."""
    local = [_installed_here(word, tmp_path) for word in _exec_start("creditapp-web.service")]
    printed = _run([*local[:1], "--print-config", *local[1:]], _entry_point_env(tmp_path))
    assert printed.returncode == 0, printed.stderr
    settings = {
        name.strip(): value.strip()
        for name, _, value in (line.partition("=") for line in printed.stdout.splitlines())
    }
    graceful = int(settings["graceful_timeout"])
    assert graceful == 600  # HOLD_TTL_SECONDS's default
    (stop_timeout,) = _unit("creditapp-web.service")["TimeoutStopSec"]
    assert int(stop_timeout) > graceful


@pytest.mark.real_clock
def test_the_web_unit_tells_systemd_when_it_is_ready(tmp_path: Path) -> None:
    """`Type=notify`: systemd waits for gunicorn's READY=1 on NOTIFY_SOCKET, which the unit's
    command line sends once it serves."""
    port = free_port()
    command = [
        _installed_here(word, tmp_path).replace("127.0.0.1:8000", f"127.0.0.1:{port}")
        for word in _exec_start("creditapp-web.service")
    ]
    command[command.index("--workers") + 1] = "1"
    notify = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(notify))
        listener.settimeout(STARTUP_SECONDS)
        env = {**_entry_point_env(tmp_path), "NOTIFY_SOCKET": str(notify)}
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            assert listener.recv(4096).decode().startswith("READY=1")
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as ok:
                assert ok.status == 200
        finally:
            stop(process)


@pytest.mark.parametrize("name", ["creditapp-worker.service", "creditapp-beat.service"])
def test_the_celery_units_start_celery_worker_celery_with_options_it_takes(
    name: str, tmp_path: Path
) -> None:
    command = _exec_start(name)
    assert command[:3] == [f"{INSTALLED}/.venv/bin/celery", "-A", "celery_worker:celery"]
    local = [_installed_here(word, tmp_path) for word in command]
    assert Path(local[0]).is_file()
    subcommand = command[3]
    helped = _run([*local[:4], "--help"], _entry_point_env(tmp_path))
    assert helped.returncode == 0, helped.stderr
    for option in (word for word in command[4:] if word.startswith("--")):
        assert option in helped.stdout, f"celery {subcommand} takes no {option}"
    # The app Celery is pointed at is the service's.
    found = _run(
        [
            sys.executable,
            "-c",
            "import celery_worker, celery; print(isinstance(celery_worker.celery, celery.Celery))",
        ],
        _entry_point_env(tmp_path),
    )
    assert found.stdout.strip() == "True", found.stderr


def test_the_migration_unit_upgrades_the_database_of_wsgi(tmp_path: Path) -> None:
    command = _exec_start("creditapp-migrate.service")
    assert command == [f"{INSTALLED}/.venv/bin/flask", "--app", "wsgi", "db", "upgrade"]
    local = [_installed_here(word, tmp_path) for word in command]
    migrated = _run(local, _entry_point_env(tmp_path))
    assert migrated.returncode == 0, migrated.stderr
    assert (tmp_path / "entry.db").stat().st_size > 0


# nginx with TLS


TLS_FIRST_LINE = "    # TLS terminated here: your certificate (with its chain) and key.\n"
TLS_LAST_LINE = "    ssl_session_tickets off;\n"
REDIRECT_START = "\n# Plain HTTP only redirects to HTTPS"


def test_the_tls_config_is_the_plain_one_with_tls_and_a_redirect() -> None:
    """Two files an operator picks from, kept the same but for TLS: what is fixed in one is
    fixed in the other."""
    plain, tls = PLAIN.read_text(), TLS.read_text()
    body = tls[tls.index("upstream creditapp {") : tls.index(REDIRECT_START)]
    tls_block = body[body.index(TLS_FIRST_LINE) : body.index(TLS_LAST_LINE) + len(TLS_LAST_LINE)]
    assert (
        body.replace(tls_block, "    listen 80;\n") == plain[plain.index("upstream creditapp {") :]
    )
    for directive in (
        f"ssl_certificate {CERTIFICATE};",
        f"ssl_certificate_key {CERTIFICATE_KEY};",
        "listen 443 ssl;",
        "ssl_protocols TLSv1.2 TLSv1.3;",
    ):
        assert directive in tls_block


def _tls_site(folder: Path, *, upstream: int, port: int, redirect_port: int) -> str:
    """The shipped TLS configuration on this machine's ports, with a self-signed certificate."""
    certificate, key = write_self_signed(folder)
    text = TLS.read_text()
    for shipped, ours in (
        ("server 127.0.0.1:8000;", f"server 127.0.0.1:{upstream};"),
        ("listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;"),
        ("listen [::]:443 ssl;\n", ""),
        ("listen 80;", f"listen 127.0.0.1:{redirect_port};"),
        ("listen [::]:80;\n", ""),
        (CERTIFICATE, str(certificate)),
        (CERTIFICATE_KEY, str(key)),
    ):
        assert shipped in text, f"{TLS} no longer says {shipped!r}"
        text = text.replace(shipped, ours)
    return text


def test_nginx_t_accepts_the_tls_config_with_a_certificate() -> None:
    with tempfile.TemporaryDirectory() as folder:
        prefix = Path(folder)
        checked = check_config(
            prefix,
            _tls_site(prefix, upstream=free_port(), port=free_port(), redirect_port=free_port()),
        )
    assert checked.returncode == 0, checked.stderr
    assert "test is successful" in checked.stderr


@pytest.fixture
def tls_edge(app: Flask) -> Iterator[tuple[int, int]]:
    """(TLS port, plain port) of the shipped TLS nginx in front of a real gunicorn."""
    port, redirect_port = free_port(), free_port()
    env = {"DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"], "TRUSTED_PROXY_HOPS": "1"}
    with live_server(env) as gunicorn, tempfile.TemporaryDirectory() as folder:
        prefix = Path(folder)
        upstream = int(gunicorn.rsplit(":", 1)[1])
        site = _tls_site(prefix, upstream=upstream, port=port, redirect_port=redirect_port)
        with serving(prefix, site, port):
            yield port, redirect_port


def _over_tls(port: int, method: str, path: str) -> http.client.HTTPResponse:
    self_signed = ssl.create_default_context()
    self_signed.check_hostname, self_signed.verify_mode = False, ssl.CERT_NONE
    connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=self_signed)
    connection.request(method, path, headers={"Host": "creditapp.example.com"})
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


@pytest.mark.real_clock
def test_over_tls_the_apps_answers_and_nginxs_errors_carry_hsts(
    tls_edge: tuple[int, int],
) -> None:
    port, redirect_port = tls_edge
    hsts = "max-age=63072000; includeSubDomains"
    served = _over_tls(port, "GET", "/healthz")
    assert served.status == 200
    # Once: the app sends it for a request nginx says came over TLS, nginx adds none to it.
    assert served.headers.get_all("Strict-Transport-Security") == [hsts]
    refused = _over_tls(port, "TRACE", "/api/me")
    assert refused.status == 405
    assert refused.headers.get_all("Strict-Transport-Security") == [hsts]
    # Plain HTTP is sent to HTTPS, method and body kept.
    with socket.create_connection(("127.0.0.1", redirect_port), timeout=10) as plain:
        plain.sendall(b"POST /api/auth/refresh HTTP/1.1\r\nHost: creditapp.example.com\r\n\r\n")
        response = http.client.HTTPResponse(plain)
        response.begin()
    assert response.status == 308
    assert response.headers["Location"] == "https://creditapp.example.com/api/auth/refresh"
    assert response.headers.get("Strict-Transport-Security") is None
    # To the configured name whatever Host a client sends (port 80's default server).
    with socket.create_connection(("127.0.0.1", redirect_port), timeout=10) as plain:
        plain.sendall(b"GET /api/me HTTP/1.1\r\nHost: elsewhere.example\r\n\r\n")
        response = http.client.HTTPResponse(plain)
        response.begin()
    assert response.status == 308
    assert response.headers["Location"] == "https://creditapp.example.com/api/me"


def test_plain_http_at_nginx_sends_no_hsts() -> None:
    """Browsers ignore HSTS over plain HTTP; the plain configuration sends none of its own."""
    with nginx_in_front(free_port()) as nginx:
        connection = http.client.HTTPConnection("127.0.0.1", int(nginx.rsplit(":", 1)[1]))
        connection.request("GET", "/api/me")
        response = connection.getresponse()
        assert json.loads(response.read())["error"]["code"] == "bad_gateway"
        assert response.headers.get("Strict-Transport-Security") is None
        connection.close()


# docs/deploy.md


def _anchors(markdown: str) -> set[str]:
    """GitHub's anchors of a document's headings."""
    return {
        re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        for heading in re.findall(r"^#{1,6} (.+)$", markdown, flags=re.MULTILINE)
    }


def _outside_code(markdown: str) -> str:
    return re.sub(r"^```.*?^```", "", markdown, flags=re.MULTILINE | re.DOTALL)


def test_every_reference_in_docs_deploy_md_leads_somewhere() -> None:
    """Links to files and headings, and the prose's "(README, "Heading")" references."""
    document = ROOT / "docs" / "deploy.md"
    text = _outside_code(document.read_text())
    readme_anchors = _anchors(_outside_code((ROOT / "README.md").read_text()))
    for cited in re.findall(r"README, \"([^\"]+)\"", text):
        assert cited.lower().replace(" ", "-") in readme_anchors, f"README has no {cited!r}"
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        linked = (document.parent / path).resolve() if path else document
        assert linked.exists(), f"{target}: no such file"
        if anchor:
            assert anchor in _anchors(_outside_code(linked.read_text())), f"{target}: no heading"
    # Every file of the kit the document names is in the repository.
    for named in set(re.findall(r"`(deploy/[\w./-]+)`", text)):
        assert (ROOT / named).exists(), named
