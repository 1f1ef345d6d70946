"""Debian's nginx in front of a test's gunicorn, configured by the shipped
deploy/nginx/creditapp.conf (its upstream and port swapped for the test's)."""

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

from tests.integration.live_server import ROOT, free_port

SHIPPED = ROOT / "deploy" / "nginx" / "creditapp.conf"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def render(upstream_port: int, port: int) -> str:
    text = SHIPPED.read_text()
    for shipped, ours in (
        ("server 127.0.0.1:8000;", f"server 127.0.0.1:{upstream_port};"),
        ("listen 80;", f"listen 127.0.0.1:{port};"),
    ):
        assert shipped in text, f"{SHIPPED} no longer says {shipped!r}"
        text = text.replace(shipped, ours)
    return text


@contextmanager
def nginx_in_front(upstream_port: int) -> Iterator[str]:
    """nginx on a free port proxying to `upstream_port`; yields its base URL."""
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        prefix = Path(folder)
        (prefix / "creditapp.conf").write_text(render(upstream_port, port))
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
        process = subprocess.Popen(
            [NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"],
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 10
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
            yield f"http://127.0.0.1:{port}"
        finally:
            process.terminate()
            process.wait(timeout=10)
            process.stderr.close()  # type: ignore[union-attr]
