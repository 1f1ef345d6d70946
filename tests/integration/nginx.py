"""Debian's nginx in front of a test's gunicorn, configured by the shipped
deploy/nginx/creditapp.conf (its upstream and port swapped for the test's; with `tls`, TLS
terminated there with a self-signed certificate, as the configuration allows)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.helpers import self_signed_certificate
from tests.integration.live_server import ROOT, STARTUP_SECONDS, free_port, stop

SHIPPED = ROOT / "deploy" / "nginx" / "creditapp.conf"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def render(upstream_port: int, port: int, tls: Path | None = None) -> str:
    """The shipped configuration for this test; `tls`: the folder of `tls.crt` and `tls.key`."""
    text = SHIPPED.read_text()
    listen = f"listen 127.0.0.1:{port};"
    if tls is not None:
        listen = (
            f"listen 127.0.0.1:{port} ssl;\n"
            f"    ssl_certificate {tls / 'tls.crt'};\n"
            f"    ssl_certificate_key {tls / 'tls.key'};"
        )
    for shipped, ours in (
        ("server 127.0.0.1:8000;", f"server 127.0.0.1:{upstream_port};"),
        ("listen 80;", listen),
    ):
        assert shipped in text, f"{SHIPPED} no longer says {shipped!r}"
        text = text.replace(shipped, ours)
    return text


def write_self_signed(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and its key, as `tls.crt` and `tls.key` in
    `folder`."""
    key = ec.generate_private_key(ec.SECP256R1())
    (folder / "tls.crt").write_bytes(self_signed_certificate(key, "localhost"))
    (folder / "tls.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return folder / "tls.crt", folder / "tls.key"


def _main_config(prefix: Path, site: str) -> Path:
    """nginx.conf in `prefix` running `site` (a file for the `http` block) with every path of
    nginx's own under `prefix`."""
    (prefix / "creditapp.conf").write_text(site)
    # Root's nginx would run its workers as nobody, who cannot enter a private test folder.
    user = "user root;" if os.geteuid() == 0 else ""
    (prefix / "nginx.conf").write_text(
        f"""{user}
worker_processes 1;
error_log {prefix}/error.log warn;
pid {prefix}/nginx.pid;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    include {prefix}/creditapp.conf;
}}
"""
    )
    return prefix / "nginx.conf"


def check_config(prefix: Path, site: str) -> subprocess.CompletedProcess[str]:
    """`nginx -t` of `site` (its certificates must exist)."""
    main = _main_config(prefix, site)
    return subprocess.run(
        [NGINX, "-t", "-p", str(prefix), "-c", str(main)],
        capture_output=True,
        text=True,
        timeout=30,
    )


@contextmanager
def serving(prefix: Path, site: str, port: int) -> Iterator[None]:
    """nginx running `site`, until it answers on `port`."""
    main = _main_config(prefix, site)
    process = subprocess.Popen(
        [NGINX, "-p", str(prefix), "-c", str(main), "-g", "daemon off;"],
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"nginx did not start: {process.stderr.read()!r}"  # type: ignore[union-attr]
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        stop(process)
        process.stderr.close()  # type: ignore[union-attr]


@contextmanager
def nginx_in_front(upstream_port: int, *, tls: bool = False) -> Iterator[str]:
    """nginx on a free port proxying to `upstream_port`; yields its base URL (`https://` with
    `tls`)."""
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        prefix = Path(folder)
        if tls:
            write_self_signed(prefix)
        with serving(prefix, render(upstream_port, port, prefix if tls else None), port):
            yield f"{'https' if tls else 'http'}://127.0.0.1:{port}"
