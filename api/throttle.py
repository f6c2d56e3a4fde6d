"""Login lockouts and request rate limits, shared by every API process through Redis.

Who the client is
    The socket peer, unless the peer is one of ``STADJERSPAS_TRUSTED_PROXIES`` (IP addresses or
    CIDR networks): then ``X-Forwarded-For`` is read from the right, skipping trusted proxies,
    and the first address that is not one is the client (:func:`client_address`). A header
    from anyone else is ignored, so a client cannot choose its own address. Limits count an
    IPv4 address as itself and an IPv6 address by its /64 network (:func:`client_key`): one
    household or phone gets a whole /64 and could otherwise rotate through it.

Login lockouts (:class:`LoginThrottle`), within ``auth_failure_window_s``:
    - one client, one account: ``auth_max_failures`` (5) failures lock that client out of that
      account;
    - one client, any account: failures on ``auth_max_client_failures`` (20) *different*
      accounts lock the client out of every account (one client trying many accounts);
    - one account, any client: ``auth_max_account_failures`` (50) failures lock the account
      for every client (guessing from many addresses).
    A lock lasts ``auth_lockout_s`` and refuses even the right password. Twenty failures on one
    account therefore lock no other account, and lock that account for other clients only
    when they pass the account limit. A successful login clears its client's failures for that
    account.

Request rate limits (:class:`RateLimiter`): a token bucket per bearer subject (staff user,
terminal or holder), or per client for requests without a valid token.

Where the counters live (:func:`open_throttle_state`)
    In Redis (``STADJERSPAS_REDIS_URL``), so every process and host of one deployment counts
    together; the scripts read Redis' clock, so hosts need not agree on the time. Keys start
    with ``STADJERSPAS_REDIS_PREFIX`` and name accounts and addresses only by a keyed BLAKE2b
    digest (no pass numbers or IP addresses in Redis).
    Without Redis: in development the service uses ``redis://127.0.0.1:6379/0`` when it
    answers, and otherwise counts in its own process (a logged warning). In production it
    refuses to start without ``STADJERSPAS_REDIS_URL``, or with a Redis that does not answer,
    unless ``STADJERSPAS_SINGLE_PROCESS=true`` says that exactly one process serves (then the
    in-process counters are the whole truth). When Redis stops answering while the service
    runs, each process falls back to its own counters (a warning at most once a minute) and
    tries Redis again after a few seconds: limits get looser, never off, and logins keep working.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol
from urllib.parse import urlsplit, urlunsplit

import redis

from api.runtime import StartupError
from api.settings import Settings

__all__ = [
    "DEV_REDIS_URL",
    "FailureCounter",
    "IPNetwork",
    "LocalThrottleState",
    "LoginThrottle",
    "RateLimiter",
    "RedisThrottleState",
    "ThrottleState",
    "ThrottleUnavailable",
    "TokenBuckets",
    "client_address",
    "client_key",
    "open_throttle_state",
    "parse_networks",
    "redis_prefix",
]

log = logging.getLogger("api.throttle")

#: Development tries this Redis when ``STADJERSPAS_REDIS_URL`` is unset.
DEV_REDIS_URL: Final = "redis://127.0.0.1:6379/0"
#: Seconds a Redis call may take before it counts as down (then the local counters serve).
REDIS_TIMEOUT_S: Final = 0.5
#: After a Redis failure, how long the local counters serve before Redis is tried again.
REDIS_RETRY_S: Final = 5.0
_WARN_EVERY_S: Final = 60.0
_MAX_LOCAL_KEYS: Final = 100_000

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class ThrottleUnavailable(StartupError):
    """Production without a shared throttle store (one line: what to set)."""


# -- who the client is ------------------------------------------------------------------------


def parse_networks(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    """IP addresses and CIDR networks (``10.0.0.5``, ``10.0.0.0/8``, ``2001:db8::/32``); raises
    ValueError quoting the first bad value."""
    networks: list[IPNetwork] = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(
                f"{value!r} is not an IP address or CIDR network (e.g. 10.0.0.5, 10.0.0.0/8, "
                "2001:db8::/32)"
            ) from None
    return tuple(networks)


def _ip(text: str) -> IPAddress | None:
    """An address from a peer or an ``X-Forwarded-For`` entry (``[v6]:port`` and ``v4:port``
    allowed), or None."""
    text = text.strip().strip('"')
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: IPAddress, trusted: Sequence[IPNetwork]) -> bool:
    return any(address.version == net.version and address in net for net in trusted)


def client_address(
    *, peer: str | None, forwarded_for: str | None, trusted: Sequence[IPNetwork]
) -> str:
    """The client's address: ``peer``, or, when ``peer`` is a trusted proxy, the right-most
    address of ``forwarded_for`` that is not a trusted proxy (a malformed entry stops the walk:
    the hop that added it is the client). A peer that is no IP address (a test client, a Unix
    socket) is returned as it is."""
    if peer is None:
        return "unknown"
    hop = _ip(peer)
    if hop is None:
        return peer
    if not forwarded_for or not _trusted(hop, trusted):
        return str(hop)
    for entry in reversed(forwarded_for.split(",")):
        address = _ip(entry)
        if address is None:
            break
        hop = address
        if not _trusted(hop, trusted):
            break
    return str(hop)


def client_key(address: str) -> str:
    """What limits count for ``address``: an IPv4 address itself, an IPv6 address's /64."""
    ip = _ip(address)
    if ip is None:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


# -- the state: where counters live -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FailureCounter:
    """Count ``member`` under ``key`` (distinct members within the window); at ``limit``,
    lock ``key``."""

    key: str
    member: str
    limit: int


class ThrottleState(Protocol):
    """Counters shared by whoever holds the same state (Redis: every process)."""

    @property
    def description(self) -> str: ...

    def fail(
        self, *, counters: Sequence[FailureCounter], window_s: float, lockout_s: float
    ) -> None:
        """Record a failure in each counter; lock the counters that reach their limit."""

    def lock_left(self, *, keys: Sequence[str]) -> float:
        """Seconds left of the longest lock among ``keys``, or 0."""

    def forget(self, *, keys: Sequence[str]) -> None:
        """Drop the failures (not the locks) counted under ``keys``."""

    @property
    def shared(self) -> bool:
        """Whether other processes count in this state (then a call costs a round trip)."""

    def take(self, *, key: str, rate: float, burst: float, count: int = 1) -> tuple[int, float]:
        """Take up to ``count`` tokens (at least one) from ``key``'s bucket: ``(taken, 0.0)``,
        or ``(0, seconds until one is available)``."""

    def reset(self) -> None:
        """Forget everything (tests)."""


class TokenBuckets:
    """In-process token buckets: ``rate`` tokens per second up to ``burst``, one per key."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str) -> float:
        """Take one token for ``key``: 0.0 if allowed, else seconds until one is available."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self._store(key, tokens - 1.0, now)
            return 0.0
        self._store(key, tokens, now)
        return (1.0 - tokens) / self.rate

    def _store(self, key: str, tokens: float, now: float) -> None:
        if key not in self._buckets and len(self._buckets) >= _MAX_LOCAL_KEYS:
            self._prune(now)
        self._buckets[key] = (tokens, now)

    def _prune(self, now: float) -> None:
        # a bucket idle long enough to be full again carries no state
        full_after = self.burst / self.rate
        for key in [k for k, (_, last) in self._buckets.items() if now - last >= full_after]:
            del self._buckets[key]
        if len(self._buckets) >= _MAX_LOCAL_KEYS:  # under a flood of distinct keys: start over
            self._buckets.clear()

    def reset(self) -> None:
        self._buckets.clear()


@dataclass(slots=True)
class _Failures:
    seen: dict[str, float] = field(default_factory=dict)  # member -> last failure time


class LocalThrottleState:
    """Counters in this process only (development without Redis, or one production process)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: dict[str, _Failures] = {}
        self._locks: dict[str, float] = {}
        self._buckets: dict[tuple[float, float], TokenBuckets] = {}

    @property
    def description(self) -> str:
        return "in this process"

    def fail(
        self, *, counters: Sequence[FailureCounter], window_s: float, lockout_s: float
    ) -> None:
        now = self._clock()
        with self._lock:
            for counter in counters:
                failures = self._failures.setdefault(counter.key, _Failures())
                failures.seen = {m: t for m, t in failures.seen.items() if t > now - window_s}
                failures.seen[counter.member] = now
                if len(failures.seen) >= counter.limit:
                    self._locks[counter.key] = now + lockout_s
                    del self._failures[counter.key]
            if len(self._failures) + len(self._locks) > _MAX_LOCAL_KEYS:
                self._prune(now, window_s)

    def _prune(self, now: float, window_s: float) -> None:
        self._locks = {k: until for k, until in self._locks.items() if until > now}
        self._failures = {
            k: f for k, f in self._failures.items() if max(f.seen.values()) > now - window_s
        }

    def lock_left(self, *, keys: Sequence[str]) -> float:
        now = self._clock()
        with self._lock:
            return max((self._locks.get(k, 0.0) - now for k in keys), default=0.0)

    def forget(self, *, keys: Sequence[str]) -> None:
        with self._lock:
            for key in keys:
                self._failures.pop(key, None)

    @property
    def shared(self) -> bool:
        return False

    def take(self, *, key: str, rate: float, burst: float, count: int = 1) -> tuple[int, float]:
        with self._lock:
            buckets = self._buckets.get((rate, burst))
            if buckets is None:
                buckets = self._buckets[(rate, burst)] = TokenBuckets(rate, int(burst), self._clock)
            wait = buckets.take(key)
            return (0, wait) if wait > 0 else (1, 0.0)

    def reset(self) -> None:
        with self._lock:
            self._failures.clear()
            self._locks.clear()
            self._buckets.clear()


# Failures per key in a sorted set (member -> time in ms); at the limit, a lock key with a TTL.
# KEYS: failure set 1, lock 1, failure set 2, lock 2, ...; ARGV: window ms, lockout ms, then
# member and limit per pair. The time is Redis' own, so processes on several hosts agree.
_FAIL_LUA: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local lockout = tonumber(ARGV[2])
for i = 1, #KEYS / 2 do
  local set, lock = KEYS[2 * i - 1], KEYS[2 * i]
  local member, limit = ARGV[2 * i + 1], tonumber(ARGV[2 * i + 2])
  redis.call('ZREMRANGEBYSCORE', set, '-inf', now - window)
  redis.call('ZADD', set, now, member)
  redis.call('PEXPIRE', set, window)
  if redis.call('ZCARD', set) >= limit then
    redis.call('SET', lock, '1', 'PX', lockout)
    redis.call('DEL', set)
  end
end
return 0
"""

# A token bucket in a hash (tokens, time in s); ARGV: rate per s, burst, tokens wanted. Takes up
# to that many (at least one, as many as there are); returns {taken, wait in s}.
_TAKE_LUA: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate, burst, want = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'time')
local tokens, last = tonumber(state[1]), tonumber(state[2])
if tokens == nil or last == nil then
  tokens, last = burst, now
end
tokens = math.min(burst, tokens + math.max(0, now - last) * rate)
local taken, wait = 0, 0
if tokens >= 1 then
  taken = math.min(want, math.floor(tokens))
  tokens = tokens - taken
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'time', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {taken, tostring(wait)}
"""


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


class RedisThrottleState:
    """Counters in Redis, shared by every process that uses the same URL and prefix. When Redis
    fails, the counters of this process serve for :data:`REDIS_RETRY_S` (see the module docs)."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str,
        key_secret: bytes,
        url: str = "",
        fallback: LocalThrottleState | None = None,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.url = _redacted(url)
        self._key_secret = hashlib.blake2b(key_secret, digest_size=32).digest()
        self._fail = client.register_script(_FAIL_LUA)
        self._take = client.register_script(_TAKE_LUA)
        self.local = fallback if fallback is not None else LocalThrottleState()
        self._down_until = 0.0
        self._warned_at = -_WARN_EVERY_S
        self._state_lock = threading.Lock()

    @property
    def description(self) -> str:
        return f"in Redis at {self.url} (prefix {self.prefix!r})"

    def _key(self, kind: str, name: str) -> str:
        digest = hashlib.blake2b(name.encode(), key=self._key_secret, digest_size=16)
        return f"{self.prefix}{kind}:{digest.hexdigest()}"

    def _member(self, member: str) -> str:
        return hashlib.blake2b(member.encode(), key=self._key_secret, digest_size=12).hexdigest()

    def _usable(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self, exc: Exception) -> None:
        now = time.monotonic()
        with self._state_lock:
            self._down_until = now + REDIS_RETRY_S
            warn = now - self._warned_at >= _WARN_EVERY_S
            if warn:
                self._warned_at = now
        if warn:
            log.warning(
                "Redis at %s failed (%s): login lockouts and rate limits count in this process "
                "only, retrying Redis in %.0f s",
                self.url,
                type(exc).__name__,
                REDIS_RETRY_S,
            )

    def fail(
        self, *, counters: Sequence[FailureCounter], window_s: float, lockout_s: float
    ) -> None:
        if self._usable():
            keys: list[str] = []
            args: list[str | int] = [max(1, int(window_s * 1000)), max(1, int(lockout_s * 1000))]
            for counter in counters:
                keys += [self._key("f", counter.key), self._key("l", counter.key)]
                args += [self._member(counter.member), counter.limit]
            try:
                self._fail(keys=keys, args=args)
                return
            except redis.RedisError as exc:
                self._failed(exc)
        self.local.fail(counters=counters, window_s=window_s, lockout_s=lockout_s)

    def lock_left(self, *, keys: Sequence[str]) -> float:
        local = self.local.lock_left(keys=keys)
        if not keys or not self._usable():
            return local
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.pttl(self._key("l", key))
                ttls = pipe.execute()
        except redis.RedisError as exc:
            self._failed(exc)
            return local
        return max([local, *(int(ttl) / 1000 for ttl in ttls if int(ttl) > 0)])

    def forget(self, *, keys: Sequence[str]) -> None:
        self.local.forget(keys=keys)
        if keys and self._usable():
            try:
                self.client.delete(*(self._key("f", key) for key in keys))
            except redis.RedisError as exc:
                self._failed(exc)

    @property
    def shared(self) -> bool:
        return True

    def take(self, *, key: str, rate: float, burst: float, count: int = 1) -> tuple[int, float]:
        if self._usable():
            try:
                taken, wait = self._take(
                    keys=[self._key("b", key)], args=[repr(rate), repr(burst), count]
                )
                return int(taken), float(wait)
            except (redis.RedisError, ValueError, TypeError) as exc:
                self._failed(exc)
        return self.local.take(key=key, rate=rate, burst=burst)

    def reset(self) -> None:
        self.local.reset()
        pattern = _glob_escape(self.prefix) + "*"
        keys = list(self.client.scan_iter(match=pattern, count=1000))
        for start in range(0, len(keys), 1000):
            self.client.delete(*keys[start : start + 1000])

    def close(self) -> None:
        self.client.close()


# -- what the service uses --------------------------------------------------------------------


class LoginThrottle:
    """Failed logins per client and account, per client and per account (module docs)."""

    def __init__(
        self,
        *,
        state: ThrottleState,
        max_failures: int,
        max_client_failures: int,
        max_account_failures: int,
        window_s: float,
        lockout_s: float,
    ) -> None:
        self.state = state
        self.max_failures = max_failures
        self.max_client_failures = max_client_failures
        self.max_account_failures = max_account_failures
        self.window_s = window_s
        self.lockout_s = lockout_s

    @staticmethod
    def _keys(client: str, account: str) -> tuple[str, str, str]:
        return f"login|ca|{client}|{account}", f"login|c|{client}", f"login|a|{account}"

    def locked_for(self, *, client: str, account: str) -> float:
        """Seconds left of a lock that refuses ``client`` logging in to ``account``, or 0."""
        return max(0.0, self.state.lock_left(keys=self._keys(client_key(client), account)))

    def failed(self, *, client: str, account: str) -> None:
        both, one_client, one_account = self._keys(client_key(client), account)
        self.state.fail(
            counters=[
                FailureCounter(both, uuid.uuid4().hex, self.max_failures),
                FailureCounter(one_client, account, self.max_client_failures),
                FailureCounter(one_account, uuid.uuid4().hex, self.max_account_failures),
            ],
            window_s=self.window_s,
            lockout_s=self.lockout_s,
        )

    def succeeded(self, *, client: str, account: str) -> None:
        self.state.forget(keys=[self._keys(client_key(client), account)[0]])

    def reset(self) -> None:
        self.state.reset()


@dataclass(slots=True)
class _Lease:
    remaining: int
    size: int
    fetched_at: float
    #: Refused until then (the shared bucket said when its next token comes).
    refused_until: float = 0.0


class RateLimiter:
    """Token buckets of ``rate`` requests per second up to ``burst``, one per subject/client.

    With a shared state, a busy key does not cost a Redis round trip per request: this process
    takes tokens from the shared bucket in leases, one at first, doubling (up to
    :attr:`max_lease`, a tenth of the burst, at most 20) while a key uses up its lease within
    :attr:`HOT_S`, and serves requests from a lease for at most :attr:`LEASE_S`. A key that
    goes quiet is back to one token per request. A process so holds at most ``max_lease``
    tokens of a key that another cannot use; the limit over all processes stays the bucket's.
    A refused key is refused here, without a round trip, until the bucket's next token is due,
    so a client flooding past its limit does not cost a Redis call per request.
    """

    HOT_S: Final = 0.25
    LEASE_S: Final = 1.0

    def __init__(
        self,
        *,
        state: ThrottleState,
        rate: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.state = state
        self.rate = rate
        self.burst = float(burst)
        self.max_lease = max(1, min(20, int(burst) // 10))
        self._clock = clock
        self._leases: dict[str, _Lease] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """0.0 if allowed, else seconds until the next request from ``key`` is."""
        if self.rate <= 0:
            return 0.0
        bucket = f"rate|{key}"
        if not self.state.shared or self.max_lease == 1:
            taken, wait = self.state.take(key=bucket, rate=self.rate, burst=self.burst)
            return 0.0 if taken else wait
        now = self._clock()
        with self._lock:
            lease = self._leases.get(key)
            if lease is not None and now < lease.refused_until:
                return lease.refused_until - now
            if lease is not None and lease.remaining > 0 and now - lease.fetched_at < self.LEASE_S:
                lease.remaining -= 1
                return 0.0
            hot = lease is not None and now - lease.fetched_at < self.HOT_S
            size = min(self.max_lease, lease.size * 2) if hot and lease is not None else 1
        taken, wait = self.state.take(key=bucket, rate=self.rate, burst=self.burst, count=size)
        with self._lock:
            if len(self._leases) >= _MAX_LOCAL_KEYS:
                self._leases.clear()
            if taken == 0:
                self._leases[key] = _Lease(0, 1, now - self.LEASE_S, refused_until=now + wait)
                return wait
            self._leases[key] = _Lease(remaining=taken - 1, size=size, fetched_at=now)
        return 0.0

    def reset(self) -> None:
        with self._lock:
            self._leases.clear()
        self.state.reset()


def redis_prefix(settings: Settings) -> str:
    """The key prefix: ``STADJERSPAS_REDIS_PREFIX``, else ``stadjerspas:`` in production and,
    in development, one per database (so test runs and checkouts do not share counters)."""
    if settings.redis_prefix is not None:
        return settings.redis_prefix
    if not settings.is_development:
        return "stadjerspas:"
    digest = hashlib.sha256(settings.sqlalchemy_url.encode()).hexdigest()[:12]
    return f"stadjerspas:dev:{digest}:"


def _connect(url: str) -> redis.Redis:
    client = redis.Redis.from_url(
        url,
        socket_timeout=REDIS_TIMEOUT_S,
        socket_connect_timeout=REDIS_TIMEOUT_S,
        health_check_interval=30,
    )
    try:
        client.ping()
    except BaseException:
        client.close()
        raise
    return client


def open_throttle_state(settings: Settings) -> ThrottleState:
    """Redis if configured (or, in development, if the default one answers), else counters in
    this process; raises :class:`ThrottleUnavailable` where production cannot do without."""
    url = settings.redis_url
    production = not settings.is_development
    if url is None and production and not settings.single_process:
        raise ThrottleUnavailable(
            "production needs STADJERSPAS_REDIS_URL (login lockouts and rate limits shared by "
            "every API process), or STADJERSPAS_SINGLE_PROCESS=true if exactly one process serves"
        )
    if url is None and production:
        log.info("login lockouts and rate limits count in this process (single process)")
        return LocalThrottleState()
    assert settings.auth_secret is not None  # settings validation guarantees it
    candidate = url if url is not None else DEV_REDIS_URL
    try:
        client = _connect(candidate)
    except (redis.RedisError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if production:
            raise ThrottleUnavailable(
                f"Redis at {_redacted(candidate)} (STADJERSPAS_REDIS_URL) does not answer: "
                f"{reason}; production shares login lockouts and rate limits through it"
            ) from None
        log.warning(
            "Redis at %s does not answer (%s): login lockouts and rate limits count in this "
            "process only (development)",
            _redacted(candidate),
            reason,
        )
        return LocalThrottleState()
    return RedisThrottleState(
        client,
        prefix=redis_prefix(settings),
        key_secret=settings.auth_secret.get_secret_value().encode(),
        url=candidate,
    )
