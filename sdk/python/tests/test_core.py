"""What needs no coved: the retry rule, errors from answers, request bodies."""

from __future__ import annotations

from datetime import timedelta

from cove import NetworkPolicy, errors
from cove._core import Call, argv, create_body, decode, should_retry, Exited, Output, Started


def test_only_safe_requests_are_retried() -> None:
    get = Call("GET", "/v1/sandboxes", idempotent=True)
    post = Call("POST", "/v1/sandboxes")
    # A refused connection never reached coved: anything may go again.
    assert should_retry(post, None, 1)
    # An answer: only an idempotent request, only for a passing condition.
    assert should_retry(get, 503, 1)
    assert should_retry(get, 429, 1, "rate_limited")
    assert not should_retry(get, 429, 1, "quota_exceeded")
    assert not should_retry(post, 503, 1)
    assert not should_retry(get, 404, 1)
    assert not should_retry(get, 503, 3)


def test_errors_follow_the_api_code_then_the_status() -> None:
    e = errors.api_error(429, b'{"code":"quota_exceeded","message":"at its quota of 1 sandboxes","request_id":"r1"}')
    assert isinstance(e, errors.QuotaExceeded)
    assert (e.status, e.code, e.message, e.request_id) == (429, "quota_exceeded", "at its quota of 1 sandboxes", "r1")
    assert isinstance(errors.api_error(422, b'{"code":"program_not_found","message":"x"}'), errors.ProgramNotFound)
    assert isinstance(errors.api_error(404, b"<html>proxy</html>"), errors.NotFound)
    assert errors.api_error(418, b"").message == "HTTP 418"
    assert type(errors.api_error(418, b"teapot")) is errors.ApiError


def test_create_body_names_the_api_fields() -> None:
    b = create_body(
        "python", None, "web", 2, 512, None, {"A": "1"}, timedelta(minutes=5), "hibernate",
        90, "pause", {"team": "x"}, NetworkPolicy(allow=("10.0.0.0/8",), deny=("pypi.org",)), None,
    )
    assert b == {
        "image": "python", "name": "web", "cpus": 2, "memory_mib": 512, "env": {"A": "1"},
        "ttl_secs": 300, "on_expire": "hibernate", "idle_timeout_secs": 90, "on_idle": "pause",
        "labels": {"team": "x"},
        "network": {"mode": "egress", "allow": ["10.0.0.0/8"], "deny": ["pypi.org"], "public_ports": False},
    }
    none = dict.fromkeys(
        ["name", "cpus", "memory_mib", "disk_mib", "env", "ttl", "on_expire", "idle_timeout",
         "on_idle", "labels", "network", "engine"]
    )
    assert create_body(None, "snap", **none) == {"snapshot": "snap"}
    limited = NetworkPolicy(egress_mbps=8)
    assert limited.to_json()["egress_mbps"] == 8
    assert NetworkPolicy.from_json(limited.to_json()) == limited


def test_exec_messages() -> None:
    assert argv("echo $HOME | wc") == ["/bin/sh", "-c", "echo $HOME | wc"]
    assert argv(["ls", "-l"]) == ["ls", "-l"]
    assert decode(b"\x01out") == Output("stdout", b"out")
    assert decode(b"\x02err") == Output("stderr", b"err")
    assert decode('{"type":"started","pid":7}') == Started(7)
    assert decode('{"type":"exit","exit_code":137,"timed_out":true}') == Exited(137, True)
    try:
        decode('{"type":"error","code":"program_not_found","message":"no /x"}')
    except errors.ProgramNotFound as e:
        assert e.message == "no /x"
    else:
        raise AssertionError("an error message raises")
