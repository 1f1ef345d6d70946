"""Configuration from the environment; production refuses insecure defaults."""

from __future__ import annotations

from datetime import timedelta

import pytest

from creditapp import create_app
from creditapp.config import load_config, sqlalchemy_url
from creditapp.errors import ConfigurationError

# What production needs to start, each test changing one of them.
PRODUCTION_NEEDS = {
    "DATABASE_URL": "postgresql://db/x",
    "JWT_SECRET_KEY": "k" * 40,
    "REDIS_URL": "redis://cache:6379/0",
    "METRICS_TOKEN": "a-scrapers-token-of-enough-length-0123",
    "PUBLIC_BASE_URL": "https://app.example",
}


def needs_met(monkeypatch: pytest.MonkeyPatch, **changed: str | None) -> None:
    """The environment production starts with, but for `changed` (None: unset)."""
    for name, value in {**PRODUCTION_NEEDS, **changed}.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)


def test_development_defaults_to_an_sqlite_file_and_memory_limits(monkeypatch) -> None:
    for name in (
        "DATABASE_URL",
        "REDIS_URL",
        "CELERY_BROKER_URL",
        "JWT_SECRET_KEY",
        "PROVIDER_TIMEOUT_SECONDS",
        "PROVIDER_MAX_RETRIES",
        "OPENAI_BASE_URL",
    ):
        monkeypatch.delenv(name, raising=False)
    config = load_config("development")
    assert config.SQLALCHEMY_DATABASE_URI.startswith("sqlite:///")
    assert config.SQLALCHEMY_DATABASE_URI.endswith("instance/creditapp.db")
    assert config.RATELIMIT_STORAGE_URI == "memory://"
    assert (config.HOLD_TTL_SECONDS, config.PROVIDER_TIMEOUT_SECONDS) == (600, 120)
    assert config.PROVIDER_MAX_RETRIES == 2
    assert config.PROVIDER_SETTINGS["openai"].base_url is None


def test_provider_settings_come_from_the_contracts_variables(monkeypatch) -> None:
    env = {
        "OPENAI_BASE_URL": "http://o/v1",
        "OPENAI_API_KEY": "ko",
        "ANTHROPIC_BASE_URL": "http://a",
        "ANTHROPIC_API_KEY": "ka",
        "GOOGLE_GEMINI_BASE_URL": "http://g",
        "GEMINI_API_KEY": "kg",
        "PROVIDER_MAX_RETRIES": "0",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = load_config("development")
    assert {name: (s.base_url, s.api_key) for name, s in config.PROVIDER_SETTINGS.items()} == {
        "openai": ("http://o/v1", "ko"),
        "anthropic": ("http://a", "ka"),
        "google": ("http://g", "kg"),
    }
    assert config.PROVIDER_MAX_RETRIES == 0
    monkeypatch.setenv("PROVIDER_MAX_RETRIES", "-1")
    with pytest.raises(ConfigurationError, match="PROVIDER_MAX_RETRIES must be at least 0"):
        load_config("development")


def test_postgres_urls_use_the_psycopg_driver() -> None:
    assert sqlalchemy_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert sqlalchemy_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert sqlalchemy_url("sqlite:///x.db") == "sqlite:///x.db"


@pytest.mark.parametrize(
    ("changed", "message"),
    [
        ({"JWT_SECRET_KEY": None}, "production needs JWT_SECRET_KEY"),
        ({"DATABASE_URL": None}, "production needs DATABASE_URL"),
        ({"JWT_SECRET_KEY": "short"}, "at least 32"),
        # Without Redis each process counts rate limits in its own memory and queues jobs in
        # its own machine's files.
        ({"REDIS_URL": None}, "production needs REDIS_URL"),
        ({"REDIS_URL": ""}, "production needs REDIS_URL"),
        # /metrics shows revenue and runs queries: not for anyone who asks.
        ({"METRICS_TOKEN": None}, "production needs METRICS_TOKEN"),
        ({"METRICS_TOKEN": "CHANGE-ME"}, "METRICS_TOKEN must be at least 32"),
        # Stripe sends buyers back to PUBLIC_BASE_URL, whose default is this machine.
        ({"STRIPE_SECRET_KEY": "sk_live_x", "PUBLIC_BASE_URL": None}, "needs PUBLIC_BASE_URL"),
    ],
)
def test_production_refuses_to_start_without_secure_settings(
    monkeypatch: pytest.MonkeyPatch, changed: dict[str, str | None], message: str
) -> None:
    needs_met(monkeypatch, **changed)
    monkeypatch.setenv("CREDITAPP_ENV", "production")
    with pytest.raises(ConfigurationError, match=message):
        create_app()


def test_bad_settings_are_named(monkeypatch) -> None:
    with pytest.raises(ConfigurationError, match="CREDITAPP_ENV"):
        load_config("staging")
    monkeypatch.setenv("HOLD_TTL_SECONDS", "ten")
    with pytest.raises(ConfigurationError, match="HOLD_TTL_SECONDS"):
        load_config("development")
    monkeypatch.setenv("HOLD_TTL_SECONDS", "0")
    with pytest.raises(ConfigurationError, match="HOLD_TTL_SECONDS"):
        load_config("development")


@pytest.mark.parametrize("environment", ["development", "testing", "production"])
def test_a_hold_must_outlive_the_longest_provider_call(monkeypatch, environment: str) -> None:
    needs_met(monkeypatch)
    # 20 s a try, 3 tries, 2 waits of up to 60 s between them, 30 s to spare: 210 s; a stream
    # ends at nine tenths of its hold's life, which must be longer.
    monkeypatch.setenv("PROVIDER_TIMEOUT_SECONDS", "20")
    monkeypatch.setenv("PROVIDER_MAX_RETRIES", "2")
    monkeypatch.setenv("HOLD_TTL_SECONDS", "233")
    with pytest.raises(ConfigurationError, match=r"HOLD_TTL_SECONDS \(233\) must be longer"):
        load_config(environment)
    monkeypatch.setenv("HOLD_TTL_SECONDS", "234")
    assert load_config(environment).STREAM_DEADLINE_SECONDS == 210.6
    # The defaults agree with each other: 120 s x 3 + 120 s + 30 s = 510 s < 540 s of 600 s.
    for name in ("HOLD_TTL_SECONDS", "PROVIDER_TIMEOUT_SECONDS", "PROVIDER_MAX_RETRIES"):
        monkeypatch.delenv(name)
    assert load_config(environment).HOLD_TTL_SECONDS == 600


def test_production_with_secure_settings_loads(monkeypatch) -> None:
    needs_met(monkeypatch, CELERY_BROKER_URL=None)
    config = load_config("production")
    needs_met(monkeypatch, STRIPE_SECRET_KEY="sk_live_x")
    assert load_config("production").PUBLIC_BASE_URL == "https://app.example"
    assert config.SQLALCHEMY_DATABASE_URI == "postgresql+psycopg://db/x"
    assert config.RATELIMIT_STORAGE_URI == "redis://cache:6379/0"
    assert config.CELERY_BROKER_URL == "redis://cache:6379/0"
    assert not config.DEMO_MODE


def test_the_factory_applies_overrides_on_top_of_the_environment(tmp_path) -> None:
    # In a process of its own: a second app would rebind this process's extensions.
    import json
    import os
    import subprocess
    import sys

    script = (
        "import json; from creditapp import create_app; "
        "app = create_app({'HOLD_TTL_SECONDS': 42}); "
        "print(json.dumps([app.config['HOLD_TTL_SECONDS'], app.config['ENV_NAME'], "
        "app.config['SQLALCHEMY_DATABASE_URI']]))"
    )
    env = {
        **os.environ,
        "CREDITAPP_ENV": "testing",
        "HOLD_TTL_SECONDS": "99",
        "PROVIDER_TIMEOUT_SECONDS": "1",
        "PROVIDER_MAX_RETRIES": "0",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
    }
    output = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(output.splitlines()[-1]) == [42, "testing", f"sqlite:///{tmp_path / 'x.db'}"]


def test_celery_uses_redis_in_production_and_a_serverless_broker_embedded(tmp_path) -> None:
    import os
    import subprocess
    import sys

    script = "import celery_worker; print(celery_worker.celery.conf.broker_url)"
    base = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}
    base.pop("REDIS_URL", None)
    base.pop("CELERY_BROKER_URL", None)

    def broker(**env: str) -> str:
        result = subprocess.run(
            [sys.executable, "-c", script],
            env={**base, **env},
            capture_output=True,
            text=True,
            check=True,
        )
        return result.stdout.splitlines()[-1]

    assert broker(CREDITAPP_ENV="development") == "filesystem://"
    assert (
        broker(
            **{
                **PRODUCTION_NEEDS,
                "CREDITAPP_ENV": "production",
                "DATABASE_URL": base["DATABASE_URL"],
            }
        )
        == "redis://cache:6379/0"
    )


def test_demo_mode_is_off_unless_set_and_refused_in_production(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("DEMO_MODE", raising=False)
    assert not load_config("development").DEMO_MODE
    monkeypatch.setenv("DEMO_MODE", "true")
    assert load_config("development").DEMO_MODE
    needs_met(monkeypatch)
    with pytest.raises(ConfigurationError, match="DEMO_MODE"):
        load_config("production")


def test_token_lifetimes_and_google_client_ids_come_from_the_environment(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("JWT_ACCESS_MINUTES", "5")
    monkeypatch.setenv("JWT_REFRESH_DAYS", "7")
    monkeypatch.setenv("GOOGLE_CLIENT_ID", " web.example , ios.example,")
    config = load_config("development")
    lifetimes = (config.JWT_ACCESS_TOKEN_EXPIRES, config.JWT_REFRESH_TOKEN_EXPIRES)
    assert lifetimes == (timedelta(minutes=5), timedelta(days=7))
    assert config.GOOGLE_CLIENT_IDS == ["web.example", "ios.example"]


def test_a_bad_demo_sign_in_limit_stops_the_start(monkeypatch) -> None:
    monkeypatch.setenv("DEMO_SIGN_IN_LIMIT", "often")
    with pytest.raises(ConfigurationError, match="DEMO_SIGN_IN_LIMIT must be a rate limit"):
        load_config("development")
    with pytest.raises(ConfigurationError, match="DEMO_SIGN_IN_LIMIT"):
        create_app()
    monkeypatch.setenv("DEMO_SIGN_IN_LIMIT", "50 per 5 minutes")
    assert load_config("development").DEMO_SIGN_IN_LIMIT == "50 per 5 minutes"


def test_beat_keeps_its_schedule_under_instance_whatever_the_broker(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Without REDIS_URL there is no redbeat: beat's schedule file is under instance/, also
    with a broker of its own (it was written into whatever directory beat started from)."""
    from creditapp.config import INSTANCE_DIR

    monkeypatch.delenv("REDIS_URL", raising=False)
    for broker in (None, "amqp://guest@127.0.0.1//"):
        if broker:
            monkeypatch.setenv("CELERY_BROKER_URL", broker)
        else:
            monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
        settings = load_config("development").CELERY
        assert settings["beat_schedule_filename"] == str(INSTANCE_DIR / "celery-beat-schedule")


@pytest.mark.parametrize(
    "bounds",
    [("490", "5000"), ("5000", "1000000000"), ("5000", "4000")],
    ids=["below Stripe's least", "above Stripe's most", "crossed"],
)
def test_purchase_bounds_are_what_stripe_charges(monkeypatch, bounds: tuple[str, str]) -> None:  # type: ignore[no-untyped-def]
    """Stripe refuses a charge under $0.50 or over $999,999.99: such a bound would make every
    purchase at it a 503 that reads as Stripe being down."""
    monkeypatch.setenv("PURCHASE_MIN_CREDITS", bounds[0])
    monkeypatch.setenv("PURCHASE_MAX_CREDITS", bounds[1])
    with pytest.raises(ConfigurationError, match=r"\$0\.50 to \$999,999\.99"):
        load_config("development")
    monkeypatch.setenv("PURCHASE_MIN_CREDITS", "500")
    monkeypatch.setenv("PURCHASE_MAX_CREDITS", "999999990")
    assert load_config("development").PURCHASE_MAX_CREDITS == 999_999_990
