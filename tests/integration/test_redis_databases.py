"""One setting, TEST_REDIS_URL, decides every Redis database `make test` touches (issue 25, item
11): each xdist process's (its database, then counting down) and the chaos step's (its own
database again, after the suite), never a number written elsewhere."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import worker_redis_url
from tests.integration.live_server import ROOT


def test_each_test_process_counts_down_from_test_redis_url() -> None:
    assert worker_redis_url("redis://127.0.0.1:6379/15", 0) == "redis://127.0.0.1:6379/15"
    assert worker_redis_url("redis://127.0.0.1:6379/15", 1) == "redis://127.0.0.1:6379/14"
    assert worker_redis_url("redis://cache:6380/7", 1) == "redis://cache:6380/6"
    with pytest.raises(ValueError, match="leaves none for xdist worker gw1"):
        worker_redis_url("redis://127.0.0.1:6379/0", 1)
    with pytest.raises(ValueError, match="must end in a database number"):
        worker_redis_url("redis://127.0.0.1:6379", 0)


def _planned(target: str) -> str:
    planned = subprocess.run(
        ["make", "-n", target, "TEST_REDIS_URL=redis://127.0.0.1:6379/9"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return planned.stdout


@pytest.mark.parametrize("target", ["test-postgres", "test-chaos", "chaos", "test-clock"])
def test_every_redis_step_of_the_makefile_is_given_test_redis_url(target: str) -> None:
    redis_urls = re.findall(r"\S*redis://\S*", _planned(target))
    assert redis_urls and set(redis_urls) == {"TEST_REDIS_URL=redis://127.0.0.1:6379/9"}


def test_the_chaos_run_uses_test_redis_urls_database(tmp_path: Path) -> None:
    """Its services' REDIS_URL is TEST_REDIS_URL's database, through the proxy it cuts."""
    shown = subprocess.run(
        [
            sys.executable,
            "-c",
            "import argparse, pathlib, sys; from bench.chaos import Deployment\n"
            "deployment = Deployment(argparse.Namespace(web_workers=1, web_threads=1),"
            " pathlib.Path(sys.argv[1]))\n"
            "print(deployment.env['REDIS_URL'], deployment.redis_proxy.port)\n"
            "deployment.provider.close(); deployment.pg_proxy.close();"
            " deployment.redis_proxy.close()",
            str(tmp_path),
        ],
        cwd=ROOT,
        env={"TEST_REDIS_URL": "redis://127.0.0.1:6379/9", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    url, port = shown.stdout.split()
    assert url == f"redis://127.0.0.1:{port}/9"
