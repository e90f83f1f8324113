"""The shared state store: one Redis database behind many router instances.

Keys live under a prefix (default ``router:``; ``?prefix=...`` in the URL or ``prefix=`` here):

    <prefix>state          hash: ``version`` and ``document`` (JSON)
    <prefix>events         stream of audit events, entry id ``<event id>-0``
    <prefix>event_id       counter the event ids come from
    <prefix>releases       hash: release id -> release record (JSON)
    <prefix>release_order  sorted set of release ids by start time
    <prefix>disagreements:<pair>:counts   hash: metrics.disagreement field -> rows, expiring
    <prefix>disagreements:<pair>:samples  capped list of disagreeing rows (JSON), newest first
    <prefix>disagreement_pairs  sorted set of pairs (JSON ``[stable, candidate]``) by last write
    <prefix>lease:<name>   the holder of a lease, expiring with the lease's TTL
    <prefix>counts:<name>  the counts router instance <name> published (JSON), expiring with them
    <prefix>counts         set of the instances that published counts (the expired are pruned)
    <prefix>changes        pub/sub channel: the new config_version after every commit
    <prefix>pred:<id>      hash: a request's remembered ``served``/``shadow`` answers (JSON) and
                           its ``feedback`` fingerprint, expiring with the feedback retention
    <prefix>preds          sorted set of remembered request ids by time (oldest dropped first)
    <prefix>quality:<t>    hash: the quality counts of requests served in the minute starting
                           at <t>, expiring some time after it
    <prefix>quality        sorted set of the quality buckets by start time

Writes are Lua scripts, so a commit or a restore (version check, new state, audit event,
notification) is one atomic step on the server. Socket timeouts are short and nothing is retried, so an outage
reaches the caller as ``StoreUnavailable`` within about a second instead of hanging it; the
connection pool reconnects on the next call once the server is back.

Example::

    store = RedisStateStore("redis://127.0.0.1:6379/0", prefix="router-eu:")
    state = store.read() or store.initialize({"strategy": "release-in-place"})
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.client import PubSub
from redis.retry import Retry

from metrics.quality import flatten, unflatten
from router.state.base import (
    PREDICTION_PARTS,
    QUALITY_BUCKET_S,
    PairDisagreements,
    StaleState,
    StateStoreError,
    StoredState,
    StoreUnavailable,
    check_lease_ttl,
    check_restore_version,
    quality_bucket,
    stamp_event,
)

DEFAULT_PREFIX = "router:"

_INITIALIZE = """
if redis.call('HSETNX', KEYS[1], 'version', 1) == 1 then
    redis.call('HSET', KEYS[1], 'document', ARGV[1])
    redis.call('PUBLISH', ARGV[2], 1)
end
return redis.call('HMGET', KEYS[1], 'version', 'document')
"""

# KEYS: state, events, event_id. ARGV: expected version, document, event, channel.
# The event is appended before the state changes: if appending failed, nothing changed.
_COMMIT = """
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if current ~= tonumber(ARGV[1]) then
    return {0, current}
end
local new_version = current + 1
local event_id = redis.call('INCR', KEYS[3])
redis.call('XADD', KEYS[2], event_id .. '-0', 'event', ARGV[3])
redis.call('HSET', KEYS[1], 'version', new_version, 'document', ARGV[2])
redis.call('PUBLISH', ARGV[4], new_version)
return {1, new_version}
"""

# KEYS: state, events, event_id. ARGV: config_version, document, event, channel.
# Writes only over a state older than ARGV[1] (or none); the event id continues at least from
# ARGV[1] - 1, where the ids of the store that was lost had got to.
_RESTORE = """
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
local version = tonumber(ARGV[1])
if current >= version then
    return {0, current}
end
local event_id = redis.call('INCR', KEYS[3])
if event_id < version - 1 then
    event_id = version - 1
    redis.call('SET', KEYS[3], event_id)
end
redis.call('XADD', KEYS[2], event_id .. '-0', 'event', ARGV[3])
redis.call('HSET', KEYS[1], 'version', version, 'document', ARGV[2])
redis.call('PUBLISH', ARGV[4], version)
return {1, version}
"""

_ACQUIRE_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    return 1
end
return 0
"""

# KEYS: the counts index, then one counts key per instance. ARGV: the instances.
# Forgets the instances whose counts expired, unless one published again meanwhile.
_PRUNE_COUNTS = """
for i, instance in ipairs(ARGV) do
    if redis.call('EXISTS', KEYS[i + 1]) == 0 then
        redis.call('SREM', KEYS[1], instance)
    end
end
return 0
"""

# KEYS: the remembered-ids index. ARGV: now (ms), ttl (ms), max requests, key prefix, then
# (id, part, answer) triples. A request's first part sets its time and expiry. The keys of the
# requests dropped for size are derived here from the index, so this script (like the other
# pruning) needs every key on one server.
_REMEMBER = """
local now, ttl, cap, prefix = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
for i = 5, #ARGV, 3 do
    local key = prefix .. ARGV[i]
    if redis.call('HSETNX', key, 'at', now) == 1 then
        redis.call('PEXPIRE', key, ttl)
        redis.call('ZADD', KEYS[1], now, ARGV[i])
    end
    redis.call('HSET', key, ARGV[i + 1], ARGV[i + 2])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
local over = redis.call('ZCARD', KEYS[1]) - cap
if over > 0 then
    for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, over - 1)) do
        redis.call('DEL', prefix .. id)
    end
    redis.call('ZREMRANGEBYRANK', KEYS[1], 0, over - 1)
end
return 0
"""

# KEYS: the request's hash, the bucket's hash, the buckets index. ARGV: fingerprint, bucket,
# bucket expiry (ms, absolute), then (field, increment) pairs.
_RECORD_FEEDBACK = """
if redis.call('HEXISTS', KEYS[1], 'served') == 0 then
    return 'unknown'
end
local earlier = redis.call('HGET', KEYS[1], 'feedback')
if earlier then
    if earlier == ARGV[1] then return 'duplicate' end
    return 'conflict'
end
redis.call('HSET', KEYS[1], 'feedback', ARGV[1])
for i = 4, #ARGV, 2 do
    redis.call('HINCRBYFLOAT', KEYS[2], ARGV[i], ARGV[i + 1])
end
redis.call('PEXPIREAT', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[2])
return 'recorded'
"""

_RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisStateStore:
    """State store in Redis, shared by every router instance pointed at the same URL and prefix."""

    def __init__(self, url: str, *, prefix: str | None = None, timeout_s: float = 0.5) -> None:
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        url_prefix = query.pop("prefix", None)
        self.prefix = prefix if prefix is not None else url_prefix or DEFAULT_PREFIX
        # Shown in messages and logs, so it never carries credentials.
        self.url = f"{parts.scheme}://{parts.hostname or 'localhost'}:{parts.port or 6379}"
        self.url += parts.path or "/0"
        self._client = redis.Redis.from_url(
            urlunsplit(parts._replace(query=urlencode(query))),
            decode_responses=True,
            socket_connect_timeout=timeout_s,
            socket_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        self._state_key = f"{self.prefix}state"
        self._events_key = f"{self.prefix}events"
        self._event_id_key = f"{self.prefix}event_id"
        self._releases_key = f"{self.prefix}releases"
        self._release_order_key = f"{self.prefix}release_order"
        self._disagreement_pairs_key = f"{self.prefix}disagreement_pairs"
        self._counts_key = f"{self.prefix}counts"
        self.changes_channel = f"{self.prefix}changes"
        self._initialize = self._client.register_script(_INITIALIZE)
        self._commit = self._client.register_script(_COMMIT)
        self._restore = self._client.register_script(_RESTORE)
        self._acquire_lease = self._client.register_script(_ACQUIRE_LEASE)
        self._release_lease = self._client.register_script(_RELEASE_LEASE)
        self._prune_counts = self._client.register_script(_PRUNE_COUNTS)
        self._remember = self._client.register_script(_REMEMBER)
        self._record_feedback = self._client.register_script(_RECORD_FEEDBACK)
        self._preds_key = f"{self.prefix}preds"
        self._quality_key = f"{self.prefix}quality"

    def __repr__(self) -> str:
        return f"RedisStateStore({self.url!r}, prefix={self.prefix!r})"

    def read(self) -> StoredState | None:
        with self._translate():
            version, document = self._client.hmget(self._state_key, ["version", "document"])
        if version is None or document is None:
            return None
        return StoredState(int(version), json.loads(document))

    def initialize(self, document: dict[str, Any]) -> StoredState:
        with self._translate():
            version, stored = self._initialize(
                keys=[self._state_key], args=[json.dumps(document), self.changes_channel]
            )
        return StoredState(int(version), json.loads(stored))

    def commit(
        self, expected_version: int, document: dict[str, Any], event: dict[str, Any]
    ) -> StoredState:
        encoded = json.dumps(document)
        encoded_event = json.dumps(stamp_event(event, expected_version + 1))
        with self._translate():
            committed, version = self._commit(
                keys=[self._state_key, self._events_key, self._event_id_key],
                args=[expected_version, encoded, encoded_event, self.changes_channel],
            )
        if not committed:
            raise StaleState(int(version), expected_version)
        return StoredState(int(version), json.loads(encoded))

    def restore(
        self, document: dict[str, Any], config_version: int, event: dict[str, Any]
    ) -> StoredState:
        version = check_restore_version(config_version)
        encoded = json.dumps(document)
        encoded_event = json.dumps(stamp_event(event, version))
        with self._translate():
            restored, current = self._restore(
                keys=[self._state_key, self._events_key, self._event_id_key],
                args=[version, encoded, encoded_event, self.changes_channel],
            )
        if not restored:
            raise StaleState(int(current))
        return StoredState(version, json.loads(encoded))

    def events(self, limit: int = 100, after: int = 0) -> list[dict[str, Any]]:
        if limit <= 0:
            return []
        with self._translate():
            entries = cast(
                "list[tuple[str, dict[str, str]]]",
                self._client.xrevrange(
                    self._events_key, max="+", min=f"{max(after, 0) + 1}-0", count=limit
                ),
            )
        return [
            {"id": int(entry_id.split("-", 1)[0]), **json.loads(fields["event"])}
            for entry_id, fields in reversed(entries)
        ]

    def save_release(self, record: dict[str, Any]) -> None:
        key = str(record["id"])
        with self._translate():
            pipe = self._client.pipeline(transaction=True)
            pipe.hset(self._releases_key, key, json.dumps(record))
            pipe.zadd(self._release_order_key, {key: float(record.get("started_at") or 0)})
            pipe.execute()

    def releases(self, limit: int = 100) -> list[dict[str, Any]]:
        if limit <= 0:
            return []
        with self._translate():
            ids = cast("list[str]", self._client.zrevrange(self._release_order_key, 0, limit - 1))
            bodies = cast("list[str | None]",
                          self._client.hmget(self._releases_key, ids)) if ids else []
        return [json.loads(body) for body in reversed(bodies) if body is not None]

    def record_disagreements(self, stable: str, candidate: str, counts: dict[str, int],
                             samples: list[dict[str, Any]], keep: int, ttl_s: float) -> None:
        ttl_ms = check_lease_ttl(ttl_s, "disagreement retention")
        counts_key, samples_key = self._disagreement_keys(stable, candidate)
        now = time.time()
        with self._translate():
            pipe = self._client.pipeline(transaction=True)
            for key, n in counts.items():
                if n:
                    pipe.hincrby(counts_key, key, int(n))
            pipe.pexpire(counts_key, ttl_ms)
            if samples and keep > 0:
                pipe.lpush(samples_key, *(json.dumps(sample) for sample in samples[-keep:]))
            pipe.ltrim(samples_key, 0, max(keep, 0) - 1)
            pipe.pexpire(samples_key, ttl_ms)
            pipe.zadd(self._disagreement_pairs_key, {json.dumps([stable, candidate]): now})
            pipe.zremrangebyscore(self._disagreement_pairs_key, "-inf", now - ttl_ms / 1000)
            pipe.execute()

    def disagreements(self, stable: str, candidate: str, limit: int = 100) -> PairDisagreements:
        counts_key, samples_key = self._disagreement_keys(stable, candidate)
        with self._translate():
            counts = cast("dict[str, str]", self._client.hgetall(counts_key))
            samples = cast("list[str]", self._client.lrange(samples_key, 0, limit - 1)) \
                if limit > 0 else []
        return PairDisagreements({key: int(n) for key, n in counts.items()},
                                 [json.loads(body) for body in samples])

    def disagreement_pairs(self) -> list[dict[str, Any]]:
        with self._translate():
            members = cast("list[tuple[str, float]]", self._client.zrevrange(
                self._disagreement_pairs_key, 0, -1, withscores=True))
            pairs = [json.loads(member) for member, _ in members]
            pipe = self._client.pipeline(transaction=False)
            for pair in pairs:
                pipe.exists(self._disagreement_keys(*pair)[0])
            alive = pipe.execute() if pairs else []
        return [{"stable": pair[0], "candidate": pair[1], "updated_at": at}
                for pair, (_, at), ok in zip(pairs, members, alive, strict=True) if ok]

    def acquire_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        ttl_ms = check_lease_ttl(ttl_s)
        with self._translate():
            taken = self._acquire_lease(keys=[self._lease_key(name)], args=[holder, ttl_ms])
        return bool(taken)

    def release_lease(self, name: str, holder: str) -> None:
        with self._translate():
            self._release_lease(keys=[self._lease_key(name)], args=[holder])

    def publish_counts(self, instance: str, document: dict[str, Any], ttl_s: float) -> None:
        ttl_ms = check_lease_ttl(ttl_s, "published counts")
        with self._translate():
            pipe = self._client.pipeline(transaction=True)
            pipe.set(self._instance_counts_key(instance), json.dumps(document), px=ttl_ms)
            pipe.sadd(self._counts_key, instance)
            pipe.execute()

    def published_counts(self) -> dict[str, dict[str, Any]]:
        with self._translate():
            instances = sorted(cast("set[str]", self._client.smembers(self._counts_key)))
            keys = [self._instance_counts_key(instance) for instance in instances]
            bodies = cast("list[str | None]", self._client.mget(keys)) if keys else []
            expired = [instance for instance, body in zip(instances, bodies, strict=True)
                       if body is None]
            if expired:
                self._prune_counts(
                    keys=[self._counts_key, *map(self._instance_counts_key, expired)],
                    args=expired,
                )
        return {instance: json.loads(body)
                for instance, body in zip(instances, bodies, strict=True) if body is not None}

    def remember_predictions(self, entries: Sequence[tuple[str, str, dict[str, Any]]],
                             ttl_s: float, max_requests: int) -> None:
        ttl_ms = check_lease_ttl(ttl_s, "remembered predictions")
        args: list[Any] = [int(time.time() * 1000), ttl_ms, max(0, max_requests),
                           f"{self.prefix}pred:"]
        for request_id, part, answer in entries:
            if part not in PREDICTION_PARTS:
                raise ValueError(f"prediction part must be one of {PREDICTION_PARTS}")
            args += [request_id, part, json.dumps(answer)]
        if len(args) == 4:
            return
        with self._translate():
            self._remember(keys=[self._preds_key], args=args)

    def recall_predictions(self, request_id: str) -> dict[str, Any] | None:
        with self._translate():
            served, shadow, feedback = cast("list[str | None]", self._client.hmget(
                f"{self.prefix}pred:{request_id}", ["served", "shadow", "feedback"]))
        if served is None:
            return None
        found: dict[str, Any] = {"served": json.loads(served)}
        if shadow is not None:
            found["shadow"] = json.loads(shadow)
        if feedback is not None:
            found["feedback"] = feedback
        return found

    def record_feedback(self, request_id: str, fingerprint: str, counts: dict[str, Any],
                        at: float, keep_s: float) -> str:
        bucket = quality_bucket(at)
        expires_ms = int((bucket + QUALITY_BUCKET_S + keep_s) * 1000)
        args: list[Any] = [fingerprint, repr(bucket), expires_ms]
        for key, value in flatten(counts).items():
            args += [key, repr(value)]
        with self._translate():
            outcome = self._record_feedback(
                keys=[f"{self.prefix}pred:{request_id}", f"{self._quality_key}:{bucket:.0f}",
                      self._quality_key], args=args)
        return str(outcome)

    def quality_counts(self, since: float = 0.0, until: float = math.inf) -> dict[str, Any]:
        with self._translate():
            buckets = cast("list[str]", self._client.zrangebyscore(
                self._quality_key, since, f"({until}" if math.isfinite(until) else "+inf"))
            pipe = self._client.pipeline(transaction=False)
            for bucket in buckets:
                pipe.hgetall(f"{self._quality_key}:{float(bucket):.0f}")
            found = cast("list[dict[str, str]]", pipe.execute()) if buckets else []
            gone = [b for b, fields in zip(buckets, found, strict=True) if not fields]
            if gone:
                self._client.zrem(self._quality_key, *gone)
        total: dict[str, float] = {}
        for fields in found:
            for key, value in fields.items():
                total[key] = total.get(key, 0.0) + float(value)
        return unflatten(total)

    def subscribe_changes(self) -> PubSub:
        """Return a pub/sub handle that receives each new config_version (poll ``get_message``).

        Notifications can be missed (while disconnected, say): a listener uses them only to
        re-read sooner, never instead of reading.
        """
        pubsub: PubSub = self._client.pubsub(  # type: ignore[no-untyped-call]
            ignore_subscribe_messages=True
        )
        with self._translate():
            pubsub.subscribe(self.changes_channel)
        return pubsub

    def close(self) -> None:
        self._client.close()

    def _disagreement_keys(self, stable: str, candidate: str) -> tuple[str, str]:
        pair = json.dumps([stable, candidate], separators=(",", ":"))
        base = f"{self.prefix}disagreements:{pair}"
        return f"{base}:counts", f"{base}:samples"

    def _lease_key(self, name: str) -> str:
        return f"{self.prefix}lease:{name}"

    def _instance_counts_key(self, instance: str) -> str:
        return f"{self._counts_key}:{instance}"

    @contextmanager
    def _translate(self) -> Iterator[None]:
        """Turn redis-py errors into the store's errors."""
        try:
            yield
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
            raise StoreUnavailable(
                f"state store {self.url} is unreachable ({exc}): check ROUTER_STATE_URL "
                "and that the server is running"
            ) from exc
        except redis.exceptions.InvalidResponse as exc:
            raise StoreUnavailable(
                f"state store {self.url} does not answer like a Redis server ({exc}): "
                "check ROUTER_STATE_URL"
            ) from exc
        except redis.exceptions.RedisError as exc:
            raise StateStoreError(f"state store {self.url} failed: {exc}") from exc
