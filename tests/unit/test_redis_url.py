"""VCM_REDIS_URL's query options (workers/redis_url.py): the ones every client of Redis honours
are read alike by redis-py (from the URL) and by Celery's broker and result backend (given as
their settings); anything else stops start-up naming the variable and the option, and never
repeats the password. Pure parsing: the clients are built, none connects."""

from __future__ import annotations

import ssl
from urllib.parse import quote

import kombu
import pytest
from celery import Celery
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs
from redis.connection import parse_url as redis_py_parse

from workers.redis_url import OPTIONS, RESULT_BACKEND_DEFAULTS, celery_settings, check
from workers.settings import InvalidSetting, Settings

PASSWORD = "s3cr3t-pw"
BASE = f"redis://:{PASSWORD}@127.0.0.1:6379/0"
SOCKET_OPTIONS = [k for k, o in OPTIONS.items() if not o.tls]
BACKEND_SETTING = {"socket_timeout": "redis_socket_timeout",
                   "socket_connect_timeout": "redis_socket_connect_timeout",
                   "health_check_interval": "redis_backend_health_check_interval",
                   "socket_keepalive": "redis_socket_keepalive",
                   "retry_on_timeout": "redis_retry_on_timeout"}


def refused(url: str) -> str:
    """The start-up message for VCM_REDIS_URL=url (which must be refused)."""
    with pytest.raises(InvalidSetting) as stopped:
        Settings.from_env({"VCM_REDIS_URL": url})
    message = str(stopped.value.code)
    assert message.startswith("invalid setting VCM_REDIS_URL: "), message
    assert PASSWORD not in message, message
    return message


def _decimal(lo: float, hi: float) -> hs.SearchStrategy[str]:
    whole = hs.integers(int(lo), int(hi)).map(str)
    fraction = hs.tuples(hs.integers(int(lo), int(hi) - 1),
                         hs.integers(0, 999_999)).map(lambda t: f"{t[0]}.{t[1]:06d}")
    return hs.one_of(whole, fraction).filter(lambda s: lo <= float(s) <= hi)


SWITCH_TEXT = hs.sampled_from(["true", "false", "yes", "no", "on", "off", "1", "0", "TRUE",
                               "False", "Yes", "OFF"])
VALID_TEXT = {
    "socket_timeout": _decimal(1, 3600),
    "socket_connect_timeout": _decimal(0.1, 3600),
    "health_check_interval": hs.integers(0, 3600).map(str),
    "socket_keepalive": SWITCH_TEXT,
    "retry_on_timeout": SWITCH_TEXT,
}


@hs.composite
def valid_queries(draw: hs.DrawFn) -> dict[str, str]:
    keys = draw(hs.lists(hs.sampled_from(SOCKET_OPTIONS), unique=True, max_size=5))
    return {k: draw(VALID_TEXT[k]) for k in keys}


@settings(max_examples=150, deadline=None)
@given(valid_queries())
def test_the_options_every_client_honours_are_read_alike_by_each(query):
    """redis-py reads the URL itself; kombu and Celery's result backend are given the URL
    without its query and the same values as their settings."""
    url = BASE + ("?" + "&".join(f"{k}={quote(v)}" for k, v in query.items()) if query else "")
    assert Settings.from_env({"VCM_REDIS_URL": url}).redis_url == url
    parsed = check(url, "VCM_REDIS_URL")
    from_redis_py = redis_py_parse(url)
    assert parsed.options == {k: from_redis_py[k] for k in query}
    conf = celery_settings(url, {"visibility_timeout": 600})
    assert conf["broker_url"] == conf["result_backend"] == BASE
    assert conf["broker_transport_options"] == {"visibility_timeout": 600, **parsed.options}
    for key, setting in BACKEND_SETTING.items():
        assert conf[setting] == parsed.options.get(key, RESULT_BACKEND_DEFAULTS[key])
    assert conf["broker_use_ssl"] is False and conf["redis_backend_use_ssl"] is None
    # the clients take them (kombu took the query's items as its own arguments: TypeError)
    app = Celery("unit", set_as_current=False)
    app.conf.update(conf)
    with app.connection_for_write() as conn:
        assert conn.transport_options == conf["broker_transport_options"]
    params = app.backend.connparams
    unset = {"health_check_interval": 0, "socket_keepalive": False}  # Celery leaves these out
    for key in query:
        assert params.get(key, unset.get(key)) == parsed.options[key]


def test_a_query_option_in_the_url_is_what_kombu_refused():
    """The defect: kombu makes each query item an argument of kombu.Connection."""
    with pytest.raises(TypeError, match="unexpected keyword argument 'socket_timeout'"):
        kombu.Connection(BASE + "?socket_timeout=3")
    conf = celery_settings(BASE + "?socket_timeout=3", {})
    kombu.Connection(conf["broker_url"], transport_options=conf["broker_transport_options"])


def test_another_url_s_options_are_not_kept():
    """A client given --redis-url starts from the settings VCM_REDIS_URL made: options the
    new URL does not set are back to vcm's own."""
    first = celery_settings(BASE + "?socket_timeout=3&health_check_interval=5",
                            {"visibility_timeout": 600})
    second = celery_settings(BASE, first["broker_transport_options"],
                             broker_defaults={"socket_connect_timeout": 1.0})
    assert second["broker_transport_options"] == {"visibility_timeout": 600,
                                                  "socket_connect_timeout": 1.0}
    assert second["redis_socket_timeout"] == RESULT_BACKEND_DEFAULTS["socket_timeout"]
    assert second["redis_backend_health_check_interval"] == 30


@pytest.mark.parametrize(("query", "says"), [
    # wrong types and ranges: the option named, its value shown escaped
    ("socket_timeout=abc", "query option socket_timeout: 'abc' is not seconds"),
    ("socket_timeout=0", "query option socket_timeout: 0s is not within 1s..3600s"),
    ("socket_timeout=0.5", "query option socket_timeout: 0.5s is not within 1s..3600s"),
    ("socket_timeout=3601", "query option socket_timeout: 3601s is not within 1s..3600s"),
    ("socket_timeout=nan", "query option socket_timeout: 'nan' is not seconds"),
    ("socket_timeout=inf", "query option socket_timeout: 'inf' is not seconds"),
    ("socket_timeout=1e3", "query option socket_timeout: '1e3' is not seconds"),
    ("socket_timeout=-3", "query option socket_timeout: '-3' is not seconds"),
    ("socket_timeout=+3", "query option socket_timeout: ' 3' is not seconds"),
    ("socket_timeout=%EF%BC%93", "query option socket_timeout: '３' is not seconds"),
    ("socket_timeout=" + "9" * 5000, "query option socket_timeout: '" + "9" * 80 + "…'"),
    ("socket_connect_timeout=0.05", "socket_connect_timeout: 0.05s is not within 0.1s"),
    ("health_check_interval=2.5", "health_check_interval: '2.5' is not a whole number"),
    ("health_check_interval=86400", "health_check_interval: 86400s is more than 3600s"),
    ("socket_keepalive=maybe", "socket_keepalive: 'maybe' is not true or false"),
    ("retry_on_timeout=", "query option 'retry_on_timeout' has no value"),
    ("socket_timeout", "query option 'socket_timeout' has no value"),
    # decoded control characters and invalid UTF-8: escaped, never raw in the message
    ("socket_timeout=%00", r"query option socket_timeout: '\x00' is not seconds"),
    ("socket_timeout=3%0a", r"query option socket_timeout: '3\n' is not seconds"),
    ("socket_timeout=%ED%A0%80", "query option socket_timeout: '\ufffd\ufffd\ufffd' is not"),
    # repeated: redis-py would take the first, the broker the last
    ("socket_timeout=3&socket_timeout=4", "query option 'socket_timeout' is given more than"),
    ("socket_timeout=3&socket%5Ftimeout=3", "query option 'socket_timeout' is given more than"),
    # options vcm does not take
    ("decode_responses=true", "query option 'decode_responses' is not one vcm takes (vcm "
                              "takes socket_timeout, socket_connect_timeout"),
    ("max_connections=5", "query option 'max_connections' is not one vcm takes"),
    ("Socket_Timeout=3", "query option 'Socket_Timeout' is not one vcm takes"),
    ("db=3", "query option 'db' is not one vcm takes (the database goes in the path"),
    (f"password={PASSWORD}", "query option 'password' is not one vcm takes (the password goes"),
    (f"{PASSWORD}", "query option (not an option name) is not one vcm takes"),
    ("%00=3", "query option (not an option name) is not one vcm takes"),
    ("=3", "query option (not an option name) is not one vcm takes"),
    ("x" * 100 + "=1", "query option (not an option name) is not one vcm takes"),
    ("ssl_cert_reqs=required", "query option 'ssl_cert_reqs' is for rediss:// URLs"),
    ("ssl_ca_certs=/etc/hostname", "query option 'ssl_ca_certs' is for rediss:// URLs"),
])
def test_a_query_option_no_client_can_honour_stops_start_up_naming_it(query, says):
    message = refused(f"{BASE}?{query}")
    assert says in message, message


@pytest.mark.parametrize(("text", "says"), [
    ("\x00", r"must not contain control characters (found '\x00')"),
    ("\x1b[31m", r"must not contain control characters (found '\x1b')"),
    ("\ud800", r"is not valid Unicode text (lone surrogate '\ud800')"),
    ("\u202e", r"must not contain bidirectional control characters"),
])
def test_a_raw_control_character_or_lone_surrogate_in_the_query_is_refused(text, says):
    message = refused(f"{BASE}?socket_timeout=3{text}")
    assert says in message, message


def test_a_url_too_long_is_refused_without_being_repeated():
    message = refused(f"{BASE}?socket_timeout=" + "1" * 70_000)
    assert message == "invalid setting VCM_REDIS_URL: is longer than 65536 characters"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hs.one_of(
    hs.text(max_size=60),
    hs.lists(hs.tuples(hs.sampled_from([*OPTIONS, "db", "password", "x", "", "socket%5Ftimeout"]),
                       hs.one_of(hs.text(max_size=12), hs.integers().map(str),
                                 hs.floats().map(str), SWITCH_TEXT)),
             max_size=4).map(lambda items: "&".join(f"{k}={quote(v, safe='')}" if i % 2
                                                    else f"{k}={v}"
                                                    for i, (k, v) in enumerate(items)))))
def test_any_query_is_taken_as_every_client_reads_it_or_refused_naming_the_variable(query):
    """Whatever the query holds, start-up either takes it, as redis-py and Celery read it,
    or stops with one message naming VCM_REDIS_URL that never repeats the password."""
    url = f"{BASE}?{query}"
    try:
        settings_ = Settings.from_env({"VCM_REDIS_URL": url})
    except InvalidSetting as exc:
        message = str(exc.code)
        assert message.startswith("invalid setting VCM_REDIS_URL: "), message
        assert PASSWORD not in message, message
        assert "\n" not in message and "\x00" not in message, message
        return
    parsed = check(settings_.redis_url, "VCM_REDIS_URL")
    assert set(parsed.options) <= set(SOCKET_OPTIONS)
    from_redis_py = redis_py_parse(settings_.redis_url)
    assert {k: from_redis_py[k] for k in parsed.options} == parsed.options
    conf = celery_settings(settings_.redis_url, {})
    assert "?" not in conf["broker_url"] and conf["broker_transport_options"] == parsed.options


def test_rediss_takes_its_certificate_options_and_verifies_by_default(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    tls = f"rediss://:{PASSWORD}@127.0.0.1:6380/0"
    # no option: verified, as redis-py does (kombu alone would not verify)
    conf = celery_settings(tls, {})
    assert conf["broker_use_ssl"] == conf["redis_backend_use_ssl"] == {
        "ssl_cert_reqs": ssl.CERT_REQUIRED}
    url = f"{tls}?ssl_cert_reqs=optional&ssl_ca_certs={quote(str(ca))}&socket_timeout=3"
    conf = celery_settings(url, {})
    assert conf["broker_url"] == tls
    assert conf["broker_use_ssl"] == conf["redis_backend_use_ssl"] == {
        "ssl_cert_reqs": ssl.CERT_OPTIONAL, "ssl_ca_certs": str(ca)}
    assert conf["broker_transport_options"] == {"socket_timeout": 3.0}
    from_redis_py = redis_py_parse(url)
    assert (from_redis_py["ssl_cert_reqs"], from_redis_py["ssl_ca_certs"]) == ("optional",
                                                                               str(ca))
    message = refused(f"{tls}?ssl_cert_reqs=CERT_REQUIRED")
    assert "query option ssl_cert_reqs: 'CERT_REQUIRED': use required, optional or none" in \
        message
    message = refused(f"{tls}?ssl_ca_certs={quote(str(tmp_path / 'none.pem'))}")
    assert f"query option ssl_ca_certs: no file at '{tmp_path / 'none.pem'}'" in message


def test_the_password_is_never_in_a_message_about_the_url():
    for url in (f"redis://:{PASSWORD}@127.0.0.1:6379/0?socket_timeout=abc",
                f"redis://user:{PASSWORD}@127.0.0.1:99999/0",
                f"redis://:{PASSWORD}@127.0.0.1:6379/zero",
                f"http://:{PASSWORD}@127.0.0.1:6379/0"):
        refused(url)
