"""Where webhooks may be posted: URL rules that keep the service from aiming at its own network.

A webhook URL is chosen by a user, and the service posts to it from inside its network: without
these rules, an endpoint naming `http://169.254.169.254/` or `http://10.0.0.5:6379/` would make
the service probe what only it can reach (server-side request forgery). So a URL must be https
and name a public host; a name is resolved, and every address it resolves to must be public.
The rules run when an endpoint's URL is given (`checked`, before the request's write transaction
opens: resolving a name may take seconds, which no lock may wait on) and again at every delivery
(`destination`), whose checked address is the one connected to: a name that resolved to a
public address when checked cannot resolve elsewhere when connected (DNS rebinding).
`WEBHOOK_ALLOW_PRIVATE` (tests and development) keeps only the scheme and host rules.

A host is kept in its ASCII (IDNA) form: the Host header and TLS name it so, and a refusal never
says what a name resolved to, nor whether it resolved at all (that would map the service's own
network, or its internal names, for whoever asks): one message for both.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import SplitResult, urlsplit

from creditapp.errors import DependencyUnavailable, WebhookUrlRefused

MAX_URL_LENGTH = 2048
NOT_PUBLIC = "The webhook URL's host is not a public address (or does not resolve)."
RESOLVE_TIMEOUT_SECONDS = 3
# Lookups under way in this process at most, each in a thread of its own: a lookup that hangs
# keeps its thread until the system's resolver gives up (tens of seconds), and lookups that
# queued behind a few such (a shared pool's) would time out while waiting, whatever host they
# were for. Past the bound a lookup is refused at once (503) rather than queued.
MAX_LOOKUPS_IN_FLIGHT = 64
_in_flight = threading.BoundedSemaphore(MAX_LOOKUPS_IN_FLIGHT)
DEFAULT_PORTS = {"http": 80, "https": 443}
# The well-known NAT64 prefix: its addresses reach the IPv4 address in their last 32 bits.
NAT64 = ipaddress.ip_network("64:ff9b::/96")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class Destination(NamedTuple):
    """Where a delivery connects: `host` (the URL's, for the Host header and TLS) at `address`
    (the checked IP; None when private addresses are allowed and the name is connected to as is)."""

    url: str
    scheme: str
    host: str
    port: int
    address: str | None


@dataclass(frozen=True)
class CheckedUrl:
    """A webhook URL that passed the URL rules when it was given (see `checked`): what an
    endpoint saves and shows."""

    url: str


def checked(url: str, *, allow_private: bool) -> CheckedUrl:
    """`url` with its host in IDNA form, if webhooks may be posted to it now; else raise
    WebhookUrlRefused (or DependencyUnavailable, when the resolver does not answer in time)."""
    normalized = _ascii_host(url, _parse(url, allow_private=allow_private))
    destination(normalized, allow_private=allow_private)
    return CheckedUrl(normalized)


def destination(url: str, *, allow_private: bool) -> Destination:
    """Check `url` as `checked` does, resolving its host now, and say where to connect."""
    parts = _parse(url, allow_private=allow_private)
    host = parts.hostname or ""
    port = parts.port or DEFAULT_PORTS[parts.scheme]
    if allow_private:
        return Destination(url, parts.scheme, host, port, None)
    literal = _ip_literal(host)
    addresses = [literal] if literal is not None else _resolve(url, host, port)
    for address in addresses:
        if not is_public(address):
            raise WebhookUrlRefused(NOT_PUBLIC, details={"url": url})
    return Destination(url, parts.scheme, host, port, str(addresses[0]))


def is_public(address: Address) -> bool:
    """Whether `address` is on the public internet: not loopback, private, shared (100.64/10),
    link-local (where cloud metadata answers, 169.254.169.254), multicast, reserved or
    unspecified; IPv6 addresses that carry an IPv4 address are judged by it."""
    if isinstance(address, ipaddress.IPv6Address):
        carried = address.ipv4_mapped or address.sixtofour
        if carried is None and address in NAT64:
            carried = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if carried is not None:
            return is_public(carried)
        if address.is_site_local:
            return False
    return address.is_global and not (address.is_multicast or address.is_reserved)


def _refused(url: str, why: str) -> WebhookUrlRefused:
    return WebhookUrlRefused(f"The webhook URL is refused: {why}", details={"url": url})


def _ascii_host(url: str, parts: SplitResult) -> str:
    """`url` with a host of non-ASCII letters spelled in IDNA (`xn--`), as it is sent in the
    Host header (latin-1) and named to TLS; a host with no such spelling is refused."""
    if parts.netloc.isascii():
        return url
    # No user name can be in it (`_parse`): the network location is the host, and a port.
    host, colon, port = parts.netloc.partition(":")
    try:
        spelled = host.encode("idna").decode("ascii")
    except UnicodeError:
        raise _refused(url, "its host is not a valid domain name.") from None
    return parts._replace(netloc=spelled + colon + port).geturl()


def _parse(url: str, *, allow_private: bool) -> SplitResult:
    if len(url) > MAX_URL_LENGTH:
        raise _refused(url, f"it is longer than {MAX_URL_LENGTH} characters.")
    if any(character.isspace() or not character.isprintable() for character in url):
        raise _refused(url, "it contains spaces or control characters.")
    try:
        parts = urlsplit(url)
        port = parts.port  # parsing it raises on one out of range or not a number
    except ValueError as error:
        raise _refused(url, f"it does not parse ({error}).") from None
    if port == 0:
        raise _refused(url, "port 0 is no port to post to.")
    allowed = ("http", "https") if allow_private else ("https",)
    if parts.scheme not in allowed:
        raise _refused(url, f"its scheme must be {' or '.join(allowed)}.")
    if not parts.hostname:
        raise _refused(url, "it names no host.")
    if "@" in parts.netloc:
        raise _refused(url, "it contains a user name or password.")
    return parts


def _ip_literal(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _resolve(url: str, host: str, port: int) -> list[Address]:
    """The host's addresses, asked of the system's resolver for at most RESOLVE_TIMEOUT_SECONDS:
    a resolver that hangs must not hold a request (or a delivery run) with it. The lookup
    itself cannot be cancelled; it ends in its thread (see MAX_LOOKUPS_IN_FLIGHT)."""
    unresolved = DependencyUnavailable(
        f"The webhook URL's host {host} could not be resolved in time: try again.",
        details={"dns": "unavailable"},
    )
    gate = _in_flight  # released by the lookup's thread, whenever it ends
    if not gate.acquire(blocking=False):
        raise unresolved
    lookup: Future[list[Any]] = Future()

    def resolve() -> None:
        try:
            lookup.set_result(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except BaseException as error:  # handed to the waiting caller, if it still waits
            lookup.set_exception(error)
        finally:
            gate.release()

    try:
        threading.Thread(target=resolve, name="webhook-dns", daemon=True).start()
    except BaseException:
        gate.release()
        raise
    try:
        found = lookup.result(timeout=RESOLVE_TIMEOUT_SECONDS)
    except TimeoutError:
        raise unresolved from None
    except (OSError, UnicodeError):
        raise WebhookUrlRefused(NOT_PUBLIC, details={"url": url}) from None
    # A scope (`fe80::1%eth0`) is no part of the address judged.
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in found]
    if not addresses:
        raise WebhookUrlRefused(NOT_PUBLIC, details={"url": url})
    return addresses
