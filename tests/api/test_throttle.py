"""Throttling shared by every process: client addresses behind trusted proxies, IPv6 per /64,
login lockouts per client and account, per client and per account, token buckets, and what
happens without Redis. Redis is the real one at 127.0.0.1:6379 (each test its own key prefix);
"two processes" are two throttle instances with their own Redis connections."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from pydantic import ValidationError

from api.settings import Settings
from api.throttle import (
    DEV_REDIS_URL,
    LocalThrottleState,
    LoginThrottle,
    RateLimiter,
    RedisThrottleState,
    ThrottleState,
    ThrottleUnavailable,
    client_address,
    client_key,
    open_throttle_state,
    parse_networks,
    redis_prefix,
)

SECRET = b"test-secret-of-at-least-thirty-two-bytes"
#: Nothing listens here (a reserved port), so a Redis client on it fails at once.
DEAD_REDIS_URL = "redis://127.0.0.1:1/0"


def _redis_up() -> bool:
    try:
        client = redis.Redis.from_url(DEV_REDIS_URL, socket_connect_timeout=0.5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except redis.RedisError:
        return False


REDIS_UP = _redis_up()
needs_redis = pytest.mark.skipif(
    not REDIS_UP, reason=f"Redis at {DEV_REDIS_URL} does not answer (start redis-server)"
)


@pytest.fixture
def prefix() -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    value = f"stadjerspas-test:{uuid.uuid4().hex}:"
    yield value
    if REDIS_UP:
        client = redis.Redis.from_url(DEV_REDIS_URL)
        keys = list(client.scan_iter(match=value + "*"))
        if keys:
            client.delete(*keys)
        client.close()


def _redis_state(prefix: str) -> RedisThrottleState:
    """A state with a connection of its own, as another process would have."""
    return RedisThrottleState(
        redis.Redis.from_url(DEV_REDIS_URL), prefix=prefix, key_secret=SECRET, url=DEV_REDIS_URL
    )


StateFactory = Callable[[], ThrottleState]


@pytest.fixture(params=["in-process", "redis"])
def new_state(request: pytest.FixtureRequest, prefix: str) -> StateFactory:
    """Makes states that share counters: Redis ones (same URL and prefix), or one in-process."""
    if request.param == "redis":
        if not REDIS_UP:
            pytest.skip(f"Redis at {DEV_REDIS_URL} does not answer (start redis-server)")
        return lambda: _redis_state(prefix)
    local = LocalThrottleState()
    return lambda: local


def _throttle(state: ThrottleState, **limits: float) -> LoginThrottle:
    values: dict[str, float] = {
        "max_failures": 5,
        "max_client_failures": 20,
        "max_account_failures": 50,
        "window_s": 60,
        "lockout_s": 60,
    }
    values.update(limits)
    return LoginThrottle(
        state=state,
        max_failures=int(values["max_failures"]),
        max_client_failures=int(values["max_client_failures"]),
        max_account_failures=int(values["max_account_failures"]),
        window_s=values["window_s"],
        lockout_s=values["lockout_s"],
    )


# -- who the client is --------------------------------------------------------------------------

PROXIES = parse_networks(["10.0.0.0/8", "2001:db8:ffff::1"])


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("203.0.113.9", None, "203.0.113.9"),
        # from an untrusted peer the header is ignored: a client cannot choose its address
        ("203.0.113.9", "198.51.100.1", "203.0.113.9"),
        ("10.1.2.3", "198.51.100.1", "198.51.100.1"),
        ("10.1.2.3", None, "10.1.2.3"),
        # the right-most address that is not a trusted proxy; what the client wrote before it
        # (a spoofed first entry) does not count
        ("10.1.2.3", "6.6.6.6, 198.51.100.1, 10.9.9.9", "198.51.100.1"),
        ("10.1.2.3", "10.0.0.7, 10.0.0.8", "10.0.0.7"),  # all trusted: the left-most
        ("10.1.2.3", "garbage, 198.51.100.1", "198.51.100.1"),
        ("10.1.2.3", "198.51.100.1, garbage", "10.1.2.3"),  # the hop that wrote garbage
        ("10.1.2.3", "198.51.100.1:4711", "198.51.100.1"),
        ("10.1.2.3", "[2001:db8:1:2::5]:443", "2001:db8:1:2::5"),
        ("2001:db8:ffff::1", "2001:db8:1:2::5", "2001:db8:1:2::5"),
        ("::ffff:10.1.2.3", "198.51.100.1", "198.51.100.1"),  # IPv4-mapped peer
        ("testclient", "198.51.100.1", "testclient"),  # no IP: as it is
    ],
)
def test_client_address(peer: str, forwarded: str | None, client: str) -> None:
    assert client_address(peer=peer, forwarded_for=forwarded, trusted=PROXIES) == client


def test_no_trusted_proxies_means_the_peer() -> None:
    assert client_address(peer="10.1.2.3", forwarded_for="1.2.3.4", trusted=()) == "10.1.2.3"
    assert client_address(peer=None, forwarded_for="1.2.3.4", trusted=()) == "unknown"


def test_ipv6_clients_count_per_64() -> None:
    assert client_key("2001:db8:1:2::5") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:2:ffff:ffff:ffff:ffff") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::5") == "2001:db8:1:3::/64"
    assert client_key("203.0.113.9") == "203.0.113.9"
    assert client_key("::ffff:203.0.113.9") == "203.0.113.9"
    assert client_key("testclient") == "testclient"


def test_trusted_proxies_setting_is_validated(tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path, trusted_proxies=[" 10.0.0.0/8", "2001:db8::1"])
    assert settings.trusted_proxies == ["10.0.0.0/8", "2001:db8::1"]
    with pytest.raises(ValidationError) as info:
        Settings(var_dir=tmp_path, trusted_proxies=["10.0.0.0/8", "10.0.0.300"])
    message = str(info.value)
    assert "STADJERSPAS_TRUSTED_PROXIES: '10.0.0.300' is not an IP address or CIDR" in message
    with pytest.raises(ValueError, match=r"'proxy\.example' is not an IP address"):
        parse_networks(["proxy.example"])
    with pytest.raises(ValidationError, match="must start with redis://"):
        Settings(var_dir=tmp_path, redis_url="http://127.0.0.1:6379")


# -- login lockouts -----------------------------------------------------------------------------


def test_one_account_hammered_locks_no_other_account(new_state: StateFactory) -> None:
    throttle = _throttle(new_state())
    for _ in range(20):
        if throttle.locked_for(client="198.51.100.1", account="staff:admin") == 0:
            throttle.failed(client="198.51.100.1", account="staff:admin")
    assert 59 < throttle.locked_for(client="198.51.100.1", account="staff:admin") <= 60
    # the same client, another account; and another client, the same account
    assert throttle.locked_for(client="198.51.100.1", account="staff:finance") == 0
    assert throttle.locked_for(client="198.51.100.2", account="staff:admin") == 0


def test_one_client_hammering_many_accounts_is_throttled_as_a_client(
    new_state: StateFactory,
) -> None:
    throttle = _throttle(new_state(), max_client_failures=20)
    for i in range(19):
        throttle.failed(client="198.51.100.1", account=f"holder:gr{i:07d}")
    assert throttle.locked_for(client="198.51.100.1", account="staff:admin") == 0
    throttle.failed(client="198.51.100.1", account="holder:gr0000099")
    assert throttle.locked_for(client="198.51.100.1", account="staff:admin") > 0
    assert throttle.locked_for(client="198.51.100.2", account="staff:admin") == 0


def test_one_account_guessed_from_many_clients_is_locked_for_all(
    new_state: StateFactory,
) -> None:
    throttle = _throttle(new_state(), max_failures=5, max_account_failures=12)
    for i in range(12):
        throttle.failed(client=f"198.51.100.{i}", account="holder:gr0000001")
    assert throttle.locked_for(client="203.0.113.77", account="holder:gr0000001") > 0
    assert throttle.locked_for(client="203.0.113.77", account="holder:gr0000002") == 0


def test_a_success_clears_that_clients_failures_for_that_account(new_state: StateFactory) -> None:
    throttle = _throttle(new_state(), max_failures=3)
    for _ in range(2):
        throttle.failed(client="198.51.100.1", account="staff:admin")
    throttle.succeeded(client="198.51.100.1", account="staff:admin")
    for _ in range(2):
        throttle.failed(client="198.51.100.1", account="staff:admin")
    assert throttle.locked_for(client="198.51.100.1", account="staff:admin") == 0
    throttle.failed(client="198.51.100.1", account="staff:admin")
    assert throttle.locked_for(client="198.51.100.1", account="staff:admin") > 0


def test_ipv6_addresses_of_one_64_are_one_client(new_state: StateFactory) -> None:
    throttle = _throttle(new_state(), max_failures=3)
    for host in ("::1", "::2", "::3"):  # three addresses of one /64
        throttle.failed(client=f"2001:db8:1:2{host}", account="staff:admin")
    assert throttle.locked_for(client="2001:db8:1:2::abcd", account="staff:admin") > 0
    assert throttle.locked_for(client="2001:db8:1:3::1", account="staff:admin") == 0


def test_a_lock_ends_after_the_lockout(new_state: StateFactory) -> None:
    throttle = _throttle(new_state(), max_failures=2, lockout_s=0.5)
    throttle.failed(client="198.51.100.1", account="staff:admin")
    throttle.failed(client="198.51.100.1", account="staff:admin")
    assert 0 < throttle.locked_for(client="198.51.100.1", account="staff:admin") <= 0.5
    time.sleep(0.6)
    assert throttle.locked_for(client="198.51.100.1", account="staff:admin") == 0


def test_failures_outside_the_window_do_not_count(new_state: StateFactory) -> None:
    throttle = _throttle(new_state(), max_failures=2, window_s=0.3)
    throttle.failed(client="198.51.100.1", account="staff:admin")
    time.sleep(0.4)
    throttle.failed(client="198.51.100.1", account="staff:admin")
    assert throttle.locked_for(client="198.51.100.1", account="staff:admin") == 0


@needs_redis
def test_two_processes_share_lockouts(prefix: str) -> None:
    first, second = _throttle(_redis_state(prefix)), _throttle(_redis_state(prefix))
    for throttle in (first, second, first, second):
        throttle.failed(client="198.51.100.1", account="staff:admin")
    assert first.locked_for(client="198.51.100.1", account="staff:admin") == 0
    second.failed(client="198.51.100.1", account="staff:admin")  # the fifth, in either
    assert first.locked_for(client="198.51.100.1", account="staff:admin") > 0
    assert second.locked_for(client="198.51.100.1", account="staff:admin") > 0
    # another deployment (another prefix) on the same Redis counts apart
    other = _throttle(_redis_state(prefix + "other:"))
    assert other.locked_for(client="198.51.100.1", account="staff:admin") == 0


@needs_redis
def test_redis_holds_no_account_names_or_addresses(prefix: str) -> None:
    throttle = _throttle(_redis_state(prefix), max_failures=1)
    throttle.failed(client="198.51.100.1", account="holder:gr0000042")
    RateLimiter(state=throttle.state, rate=1, burst=1).take("ip:198.51.100.1")
    client = redis.Redis.from_url(DEV_REDIS_URL)
    keys = [key.decode() for key in client.scan_iter(match=prefix + "*")]
    values = [str(client.zrange(key, 0, -1)) if client.type(key) == b"zset" else "" for key in keys]
    client.close()
    assert keys
    for text in keys + values:
        assert "gr0000042" not in text.lower()
        assert "198.51.100.1" not in text


@needs_redis
def test_reset_forgets_only_its_own_prefix(prefix: str) -> None:
    mine, other = (
        _throttle(_redis_state(prefix), max_failures=1),
        _throttle(_redis_state(prefix + "x:"), max_failures=1),
    )
    for throttle in (mine, other):
        throttle.failed(client="198.51.100.1", account="staff:admin")
    other.reset()
    assert mine.locked_for(client="198.51.100.1", account="staff:admin") > 0
    assert other.locked_for(client="198.51.100.1", account="staff:admin") == 0


# -- rate limits --------------------------------------------------------------------------------


def test_token_bucket(new_state: StateFactory) -> None:
    first, second = (RateLimiter(state=new_state(), rate=2.0, burst=3) for _ in range(2))
    assert [first.take("terminal:t1"), second.take("terminal:t1"), first.take("terminal:t1")] == [
        0.0,
        0.0,
        0.0,
    ]
    wait = second.take("terminal:t1")  # the bucket both share is empty
    assert 0.3 < wait <= 0.5
    assert first.take("terminal:t2") == 0.0
    time.sleep(wait + 0.05)
    assert second.take("terminal:t1") == 0.0
    assert RateLimiter(state=new_state(), rate=0, burst=1).take("x") == 0.0  # disabled


# -- without Redis ------------------------------------------------------------------------------


def test_redis_failing_at_run_time_falls_back_to_this_process(
    prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = redis.Redis.from_url(DEAD_REDIS_URL, socket_connect_timeout=0.2, socket_timeout=0.2)
    state = RedisThrottleState(client, prefix=prefix, key_secret=SECRET, url=DEAD_REDIS_URL)
    throttle = _throttle(state, max_failures=2)
    with caplog.at_level(logging.WARNING, logger="api.throttle"):
        throttle.failed(client="198.51.100.1", account="staff:admin")
        throttle.failed(client="198.51.100.1", account="staff:admin")
        assert throttle.locked_for(client="198.51.100.1", account="staff:admin") > 0
        assert RateLimiter(state=state, rate=1, burst=1).take("k") == 0.0
        assert RateLimiter(state=state, rate=1, burst=1).take("k") > 0
    warnings = [r.getMessage() for r in caplog.records if r.name == "api.throttle"]
    assert len(warnings) == 1  # once, not per call
    assert "count in this process only" in warnings[0]
    assert DEAD_REDIS_URL in warnings[0]


def _production(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "env": "production",
        "var_dir": tmp_path,
        "rpc_url": "http://127.0.0.1:1",
        "keystore_password": "partner keystore secret",
        "auth_secret": "p" * 40,
        "payout_debtor_name": "Gemeente Groningen",
        "payout_debtor_iban": "NL91ABNA0417164300",
    }
    for role in ("admin", "issuer", "pass_signer"):
        values[f"{role}_keystore"] = tmp_path / f"{role}.json"
        values[f"{role}_keystore_password"] = "pw"
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def test_production_refuses_to_start_without_redis(tmp_path: Path) -> None:
    with pytest.raises(ThrottleUnavailable) as info:
        open_throttle_state(_production(tmp_path))
    message = str(info.value)
    assert "STADJERSPAS_REDIS_URL" in message
    assert "STADJERSPAS_SINGLE_PROCESS=true" in message
    assert "\n" not in message
    with pytest.raises(ThrottleUnavailable, match=r"Redis at redis://:\*\*\*@127.0.0.1:1/0 "):
        open_throttle_state(_production(tmp_path, redis_url="redis://:hunter2@127.0.0.1:1/0"))
    single = open_throttle_state(_production(tmp_path, single_process=True))
    assert isinstance(single, LocalThrottleState)


@needs_redis
def test_production_with_redis(tmp_path: Path) -> None:
    settings = _production(tmp_path, redis_url=DEV_REDIS_URL, redis_prefix="stadjerspas-x:")
    state = open_throttle_state(settings)
    assert isinstance(state, RedisThrottleState)
    assert state.prefix == "stadjerspas-x:"
    assert redis_prefix(_production(tmp_path)) == "stadjerspas:"


def test_development_falls_back_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="api.throttle"):
        state = open_throttle_state(Settings(var_dir=tmp_path, redis_url=DEAD_REDIS_URL))
    assert isinstance(state, LocalThrottleState)
    assert any("count in this" in r.getMessage() for r in caplog.records)


@needs_redis
def test_development_uses_the_local_redis_when_it_answers(tmp_path: Path) -> None:
    state = open_throttle_state(Settings(var_dir=tmp_path))
    assert isinstance(state, RedisThrottleState)
    # one prefix per database: test runs and checkouts do not share counters
    assert state.prefix == redis_prefix(Settings(var_dir=tmp_path))
    assert state.prefix != redis_prefix(Settings(var_dir=tmp_path / "other"))
    assert state.prefix.startswith("stadjerspas:dev:")


@needs_redis
def test_busy_keys_lease_tokens_and_the_limit_over_processes_holds(prefix: str) -> None:
    states = [_redis_state(prefix), _redis_state(prefix)]
    first, second = (RateLimiter(state=s, rate=0.001, burst=100) for s in states)
    assert first.max_lease == 10
    for _ in range(30):  # a busy terminal in one process
        assert first.take("terminal:t1") == 0.0
    # leases of 1, 2, 4, 8, 10, 10 tokens: 6 round trips for 30 requests, 35 tokens taken
    bucket = states[0].client.hget(states[0]._key("b", "rate|terminal:t1"), "tokens")
    assert bucket is not None
    assert 64.9 < float(bucket) < 65.1
    allowed = 30
    while True:  # both processes until both are refused: never more than the bucket held
        taken = [limiter.take("terminal:t1") == 0.0 for limiter in (first, second)]
        allowed += sum(taken)
        if not any(taken):
            break
    assert allowed == 100
    assert first.take("terminal:t2") == 0.0  # other keys are not affected
