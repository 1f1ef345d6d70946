"""`make run` as a newcomer meets it (scripts/run_embedded.py): a busy port stops it at once,
otherwise the README's walk-through gives the numbers the README shows, Ctrl-C stops every
process of it every time, and `make run FRESH=1` starts again from a fresh database."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest

from tests.integration.live_server import ROOT, call, free_port

# real_clock also runs these one after another with the embedded worker's test, which shares
# the file-system broker under instance/.
pytestmark = pytest.mark.real_clock
RUN = [sys.executable, "scripts/run_embedded.py"]
STRIPE_SETTINGS = ("STRIPE_API_BASE", "STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET")


def _embedded_env(tmp_path: Path, port: int | str) -> dict[str, str]:
    env = {
        **os.environ,
        "CREDITAPP_ENV": "development",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'run.db'}",
        "PORT": str(port),
    }
    # Nor the Stripe of the tests: make run starts its own fake.
    for name in ("REDIS_URL", "CELERY_BROKER_URL", "PUBLIC_BASE_URL", *STRIPE_SETTINGS):
        env.pop(name, None)
    return env


def test_a_busy_port_stops_it_before_anything_is_done(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            RUN, cwd=ROOT, env=_embedded_env(tmp_path, port), capture_output=True, text=True
        )
    assert done.returncode == 1
    assert f"Port {port} on 127.0.0.1 is in use" in done.stderr
    assert f"PORT={port + 1} make run" in done.stderr
    assert not (tmp_path / "run.db").exists()


def test_a_port_that_is_not_a_number_is_refused(tmp_path: Path) -> None:
    done = subprocess.run(
        RUN,
        cwd=ROOT,
        env=_embedded_env(tmp_path, "\uff15\uff10\uff10\uff10"),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert "PORT must be a TCP port number" in done.stderr


def _answers(url: str) -> bool:
    try:
        return call("GET", url)[0] == 200
    except OSError:  # not listening yet
        return False


def _processes() -> dict[int, tuple[int, int, str]]:
    """Every process of the machine: its parent, its process group and its state."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # ended meanwhile
            continue
        state, parent, group = text[text.rindex(")") + 2 :].split()[:3]
        found[int(stat.parent.name)] = (int(parent), int(group), state)
    return found


def _descendants(pid: int) -> dict[int, int]:
    """The processes `pid` started, and theirs: each with its process group."""
    processes = _processes()
    tree, grown = {pid}, True
    while grown:
        more = {child for child, (parent, _, _) in processes.items() if parent in tree}
        grown = not more <= tree
        tree |= more
    return {member: processes[member][1] for member in tree - {pid} if member in processes}


def _left(pids_and_groups: dict[int, int]) -> list[int]:
    """Which of these processes, or of any process in their groups, still live (zombies of a
    reaper that is not theirs aside)."""
    groups = set(pids_and_groups.values())
    return sorted(
        pid
        for pid, (_parent, group, state) in _processes().items()
        if (pid in pids_and_groups or group in groups) and state != "Z"
    )


@contextmanager
def _running(
    tmp_path: Path, *args: str
) -> Iterator[tuple[str, dict[str, str], subprocess.Popen[bytes]]]:
    port = free_port()
    output = tmp_path / "run.log"
    with output.open("wb") as log:
        process = subprocess.Popen(
            [*RUN, *args],
            cwd=ROOT,
            env=_embedded_env(tmp_path, port),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    started: dict[int, int] = {}
    try:
        deadline = time.monotonic() + 120
        while not _answers(f"{base}/healthz"):
            assert process.poll() is None, output.read_text()
            assert time.monotonic() < deadline, output.read_text()
            time.sleep(0.2)
        started = _descendants(process.pid)
        exports = dict(
            line.removeprefix("export ").split("=", 1)
            for line in output.read_text().splitlines()
            if line.startswith("export ")
        )
        yield base, exports, process
    finally:
        if process.poll() is None:
            started |= _descendants(process.pid)
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        for pid in _left(started):  # whatever a failed stop left behind
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _ctrl_c(base: str, process: subprocess.Popen[bytes], log: Path) -> float:
    """Ctrl-C, as a terminal sends it: SIGINT to every process of the foreground job. Then
    everything `make run` started has ended by itself, and its port is free. The seconds it
    took."""
    started = _descendants(process.pid)
    assert started, "make run started nothing"
    sent = time.monotonic()
    os.killpg(process.pid, signal.SIGINT)
    assert process.wait(timeout=40) == 0, log.read_text()[-3000:]
    took = time.monotonic() - sent
    assert _left(started) == [], log.read_text()[-3000:]
    assert "did not stop" not in log.read_text()  # no service needed killing
    with socket.socket() as probe:  # gunicorn is gone with it
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", int(base.rsplit(":", 1)[1])))
    return took


def _json(method: str, url: str, token: str, body: dict[str, Any] | None = None, **headers: str):  # type: ignore[no-untyped-def]
    status, _headers, raw = call(
        method, url, token, None if body is None else json.dumps(body).encode(), headers
    )
    return status, json.loads(raw)


def _stream(base: str, token: str, path: str, content: str) -> list[tuple[str, Any, float]]:
    """A streamed message, as `curl -N` reads it: each event with the time it arrived."""
    connection = http.client.HTTPConnection(base.removeprefix("http://"), timeout=30)
    try:
        connection.request(
            "POST",
            path,
            body=json.dumps({"content": content, "stream": True}),
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/json",
                "Idempotency-Key": "stream-1",
            },
        )
        response = connection.getresponse()
        assert response.status == 200
        arrivals = []
        fields: dict[str, str] = {}
        while line := response.readline().decode():
            if line == "\n":
                arrivals.append((fields["event"], json.loads(fields["data"]), time.monotonic()))
                fields = {}
            else:
                key, value = line.rstrip("\n").split(": ", 1)
                fields[key] = value
        return arrivals
    finally:
        connection.close()


def test_the_readme_walk_through_adds_up_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    with _running(tmp_path) as (base, tokens, process):
        assert set(tokens) == {"ADMIN_TOKEN", "USER_TOKEN"}
        admin = tokens["ADMIN_TOKEN"]
        # A person signs in through the demo sign-in and uses its token from here on.
        status, _headers, raw = call("POST", f"{base}/api/auth/demo")
        assert status == 200, raw
        signed_in = json.loads(raw)
        assert signed_in["user"]["email"] == "user@demo.creditapp"
        user = signed_in["access_token"]
        assert _json("GET", f"{base}/api/credit/balance", user)[1]["balance"] == "1100"
        assert _json("GET", f"{base}/api/me", user)[1]["id"] == "2"
        # Clicking around, signing in and out, a person passes the limit of production's
        # sign-in (10 per 5 minutes); `make run` allows more.
        statuses = [call("POST", f"{base}/api/auth/demo")[0] for _ in range(14)]
        assert statuses == [200] * 14
        # Each request is logged once, as one JSON line.
        logged = [
            line for line in (tmp_path / "run.log").read_text().splitlines() if "/api/me" in line
        ]
        assert [json.loads(line)["path"] for line in logged] == ["/api/me"]
        status, granted = _json(
            "POST",
            f"{base}/api/admin/credit/grant",
            admin,
            {"user_id": "2", "amount": "250", "reason": "welcome", "source": "promo"},
            **{"Idempotency-Key": "first-grant"},
        )
        assert (status, granted["balance"]["balance"]) == (201, "1350")
        status, conversation = _json(
            "POST", f"{base}/api/conversations", user, {"character_id": "1"}
        )
        assert (status, conversation["id"]) == (201, "1")
        status, exchange = _json(
            "POST",
            f"{base}/api/conversations/1/messages",
            user,
            {"content": "Hello Ada!"},
            **{"Idempotency-Key": "hello-1"},
        )
        assert status == 201
        assert exchange["credits_charged"] == "0.156"
        assert exchange["balance"] == {
            "available": "1349.844",
            "balance": "1349.844",
            "reserved": "0",
        }
        assert (exchange["usage"]["input_tokens"], exchange["usage"]["output_tokens"]) == (26, 13)
        assert exchange["reply"]["content"] == "Tell me more. You said: Hello Ada!"
        assert _json("GET", f"{base}/api/credit/balance", user)[1]["balance"] == "1349.844"
        # Streamed, the demo reply arrives word by word, and the balance falls by its charge.
        arrivals = _stream(base, user, "/api/conversations/1/messages", "Tell me a story")
        words = [data["text"] for name, data, _at in arrivals if name == "delta"]
        assert "".join(words) == "Good question. You said: Tell me a story"
        delta_times = [at for name, _data, at in arrivals if name == "delta"]
        assert delta_times[-1] - delta_times[0] >= 0.04 * (len(words) - 1)
        name, done, _at = arrivals[-1]
        assert (name, done["credits_charged"]) == ("done", "0.206")
        assert _json("GET", f"{base}/api/credit/balance", user)[1]["balance"] == "1349.638"
        # What the README points operators and integrators to answers too.
        status, headers, metrics = call("GET", f"{base}/metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        charged = 'creditapp_messages_total{model="demo-chat",outcome="charged",provider="demo"}'
        assert f"{charged} 2.0" in metrics.decode()  # the message, and the streamed one
        status, headers, page = call("GET", f"{base}/api/docs")
        assert status == 200 and b'<div id="swagger-ui">' in page
        status, _headers, document = call("GET", f"{base}/api/openapi.json")
        assert (
            status == 200
            and "/api/conversations/{conversation_id}/messages" in json.loads(document)["paths"]
        )
        # Credits bought as the README shows, paid on the fake Stripe's page (its Pay button
        # posts the form; the browser is then sent back to the purchase's page).
        status, purchase = _json(
            "POST",
            f"{base}/api/credit/purchases",
            user,
            {"credits": "5000"},
            **{"Idempotency-Key": "buy-1"},
        )
        assert status == 201, purchase
        assert (purchase["id"], purchase["amount_cents"], purchase["status"]) == (
            "1",
            500,
            "pending",
        )
        assert purchase["checkout_url"].startswith("http://127.0.0.1:")
        assert not purchase["checkout_url"].startswith(base)
        request = urllib.request.Request(f"{purchase['checkout_url']}/pay", method="POST", data=b"")
        with urllib.request.urlopen(request, timeout=30) as paid:
            assert paid.url == f"{base}/purchases/1?checkout=success"
        status, purchase = _json("GET", f"{base}/api/credit/purchases/1", user)
        assert (status, purchase["status"]) == (200, "paid")
        assert _json("GET", f"{base}/api/credit/balance", user)[1]["balance"] == "6349.638"

        _ctrl_c(base, process, tmp_path / "run.log")


def _browser_leftovers(base: str) -> list[socket.socket | http.client.HTTPConnection]:
    """What a browser leaves open on a server: a connection it opened ahead and sent nothing
    on, one kept alive after an answer, and one whose request it had begun to send."""
    address = ("127.0.0.1", int(base.rsplit(":", 1)[1]))
    idle = socket.create_connection(address)
    kept = http.client.HTTPConnection(*address, timeout=10)
    kept.request("GET", "/healthz")
    assert kept.getresponse().read()
    begun = socket.create_connection(address)
    begun.sendall(b"GET /api/me HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    return [idle, kept, begun]


def _balance(base: str, token: str) -> str:
    return str(_json("GET", f"{base}/api/credit/balance", token)[1]["balance"])


def test_ctrl_c_stops_everything_every_time_and_fresh_starts_over(tmp_path: Path) -> None:
    """Three runs on one database, each stopped by Ctrl-C with connections a browser left
    open: every process ends by itself, promptly, and the port is free. The second run goes on
    from the first's numbers; `--fresh` (`make run FRESH=1`) starts from the README's again."""
    log = tmp_path / "run.log"
    balances = []
    for round_, args in enumerate([(), (), ("--fresh",)]):
        with _running(tmp_path, *args) as (base, tokens, process):
            if round_ == 0:
                status, _granted = _json(
                    "POST",
                    f"{base}/api/admin/credit/grant",
                    tokens["ADMIN_TOKEN"],
                    {"user_id": "2", "amount": "250", "reason": "welcome", "source": "promo"},
                    **{"Idempotency-Key": "first-grant"},
                )
                assert status == 201
            balances.append(_balance(base, tokens["USER_TOKEN"]))
            assert ("# Deleted" in log.read_text()) == (args == ("--fresh",))
            leftovers = _browser_leftovers(base)
            try:
                assert _ctrl_c(base, process, log) < 15
            finally:
                for connection in leftovers:
                    connection.close()
    assert balances == ["1350", "1350", "1100"]


def test_make_run_fresh_passes_fresh() -> None:
    planned = subprocess.run(
        ["make", "-n", "run", "FRESH=1"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert "scripts/run_embedded.py --fresh" in planned.stdout
    planned = subprocess.run(["make", "-n", "run"], cwd=ROOT, capture_output=True, text=True)
    assert "--fresh" not in planned.stdout
    # FRESH=0 keeps the database: only FRESH=1 deletes it.
    for kept in ("FRESH=0", "FRESH="):
        planned = subprocess.run(
            ["make", "-n", "run", kept], cwd=ROOT, capture_output=True, text=True, check=True
        )
        assert "scripts/run_embedded.py" in planned.stdout
        assert "--fresh" not in planned.stdout
