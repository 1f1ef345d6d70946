"""The URL rules' check of a URL as it is given (`urls.checked`): the URL it keeps, a host of
non-ASCII letters in its IDNA form, and what a refusal says."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from creditapp.errors import WebhookUrlRefused
from creditapp.signals import urls


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("https://8.8.8.8/hooks?a=1", "https://8.8.8.8/hooks?a=1"),
        ("https://[2001:4860:4860::8888]:8443/hooks", "https://[2001:4860:4860::8888]:8443/hooks"),
        ("http://127.0.0.1:8000/hooks", "http://127.0.0.1:8000/hooks"),
        ("http://xn--bcher-kva.example/h", "http://xn--bcher-kva.example/h"),
        ("http://b\u00fccher.example/h", "http://xn--bcher-kva.example/h"),
        (
            "http://B\u00dcCHER.example:8080/h\u00fc?q=\u00fc",
            "http://xn--bcher-kva.example:8080/h\u00fc?q=\u00fc",
        ),
        # Any of the four full stops IDNA knows separates labels.
        ("http://\u00e9x\u00e4mple\u3002com/", "http://xn--xmple-gra7a.com/"),
    ],
)
def test_a_url_is_kept_with_its_host_in_ascii(given: str, kept: str) -> None:
    assert urls.checked(given, allow_private=True) == urls.CheckedUrl(kept)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("http://" + "\u00e9" * 64 + ".example/", "its host is not a valid domain name."),
        ("http://\u00e9..example/", "its host is not a valid domain name."),
        ("http://\u3002/", "its host is not a valid domain name."),
        ("ftp://b\u00fccher.example/", "its scheme must be http or https."),
    ],
)
def test_a_host_with_no_ascii_spelling_is_refused(given: str, message: str) -> None:
    with pytest.raises(WebhookUrlRefused) as refused:
        urls.checked(given, allow_private=True)
    assert refused.value.message == f"The webhook URL is refused: {message}"
    assert refused.value.details == {"url": given}


@pytest.mark.parametrize(
    "url",
    ["https://localhost/hooks", "https://10.0.0.5:6379/", "https://[::ffff:169.254.169.254]/"],
)
def test_a_refusal_does_not_say_where_the_host_is(url: str) -> None:
    with pytest.raises(WebhookUrlRefused) as refused:
        urls.checked(url, allow_private=False)
    assert refused.value.message == urls.NOT_PUBLIC
    assert refused.value.details == {"url": url}


def test_a_name_that_does_not_resolve_is_refused_as_a_private_one_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Else the refusals would tell which internal names exist. The system's resolver is the
    boundary here: one that knows one private name is stood in for."""

    def resolver(host: str, port: Any, *_args: Any, **_kwargs: Any) -> Any:
        if host == "db.internal":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.7", port))]
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(urls.socket, "getaddrinfo", resolver)
    refusals = []
    for url in ("https://db.internal/hook", "https://nope.internal/hook"):
        with pytest.raises(WebhookUrlRefused) as refused:
            urls.checked(url, allow_private=False)
        refusals.append((refused.value.message, refused.value.details))
    assert refusals == [
        (urls.NOT_PUBLIC, {"url": "https://db.internal/hook"}),
        (urls.NOT_PUBLIC, {"url": "https://nope.internal/hook"}),
    ]


def test_port_zero_is_refused_even_where_private_addresses_are_allowed() -> None:
    with pytest.raises(WebhookUrlRefused) as refused:
        urls.checked("http://127.0.0.1:0/hooks", allow_private=True)
    assert refused.value.message == "The webhook URL is refused: port 0 is no port to post to."
