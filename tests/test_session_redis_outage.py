"""The Redis session store across an outage: a restart, a lost reply, a server that is loading
its data or has become a replica, and one that stays away longer than ``retry_for_s``.

Every write a call retries must land exactly once: the tests count what the server holds.
Faults on one connection come from :class:`FaultyProxy`, an in-process TCP proxy the test
drives (lose the next reply, refuse connections, answer every command with an error).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from runner_core.errors import ConfigurationError, FencedError, SessionBackendError
from runner_core.session import Session
from session_backends import RedisSessionService, from_url
from tests.services import LOOPBACK, RedisServer
from tests.test_session_conformance import assistant_event, summary_of, user_event

pytestmark = pytest.mark.redis

APP = "support-bot"
USER = "alice"

#: Guards against a hang only; never a speed check.
HANG_GUARD_S = 60


class FaultyProxy:
    """Forwards ``127.0.0.1:<port>`` to a Redis server, with faults the test switches on.

    - :meth:`lose_next_reply`: the reply to the next script call (``EVALSHA``) is dropped and
      its connection closed: the script ran, its caller never hears so (and with
      ``then_refuse``, the proxy refuses connections from then on).
    - :meth:`refuse`: every connection is closed and new ones are closed on arrival, until
      :meth:`forward` (a server that is down, seen through the proxy).
    - :meth:`answer`: every command is answered with ``error`` (a RESP error line) without
      reaching the server, until :meth:`forward` (``LOADING``, ``READONLY``).
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.reply_lost = asyncio.Event()
        #: Connections refused and commands answered with the error so far.
        self.faults = 0
        self._fault_seen = asyncio.Event()
        self._lose_reply = False
        self._then_refuse = False
        self._mode = "forward"
        self._error = b""
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> FaultyProxy:
        self._server = await asyncio.start_server(self._serve, LOOPBACK, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._close_all()
        assert self._server is not None
        self._server.close()

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def lose_next_reply(self, *, then_refuse: bool = False) -> None:
        self.reply_lost.clear()
        self._lose_reply = True
        self._then_refuse = then_refuse

    def refuse(self) -> None:
        self._mode = "refuse"
        self._close_all()

    def answer(self, error: str) -> None:
        self._mode = "answer"
        self._error = f"-{error}\r\n".encode()

    def forward(self) -> None:
        self._mode = "forward"

    async def faulted(self, times: int = 3) -> None:
        """Wait until ``times`` more faults: the caller has retried meanwhile."""
        target = self.faults + times
        async with asyncio.timeout(HANG_GUARD_S):
            while self.faults < target:
                self._fault_seen.clear()
                await self._fault_seen.wait()

    def _close_all(self) -> None:
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._mode == "refuse":
            self.faults += 1
            self._fault_seen.set()
            writer.close()
            return
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(LOOPBACK, self.target_port)
        except OSError:
            writer.close()
            return
        self._writers.add(up_writer)
        lose = asyncio.Event()  # set: the next reply on this connection is lost
        await asyncio.gather(
            self._requests(reader, up_writer, writer, lose),
            self._replies(up_reader, writer, up_writer, lose),
            return_exceptions=True,
        )
        for each in (writer, up_writer):
            each.close()
            self._writers.discard(each)

    async def _requests(
        self, reader: asyncio.StreamReader, upstream: asyncio.StreamWriter,
        client: asyncio.StreamWriter, lose: asyncio.Event,
    ) -> None:  # fmt: skip
        while data := await reader.read(65536):
            if self._mode == "answer":
                # one error per command: a command is a RESP array, a line starting with '*'
                commands = sum(1 for line in data.split(b"\r\n") if line.startswith(b"*"))
                client.write(self._error * commands)
                self.faults += commands
                self._fault_seen.set()
                continue
            if self._lose_reply and b"EVALSHA" in data:
                self._lose_reply = False
                lose.set()
            upstream.write(data)
            await upstream.drain()
        upstream.close()

    async def _replies(
        self, upstream: asyncio.StreamReader, client: asyncio.StreamWriter,
        upstream_writer: asyncio.StreamWriter, lose: asyncio.Event,
    ) -> None:  # fmt: skip
        while data := await upstream.read(65536):
            if lose.is_set():
                self.reply_lost.set()
                if self._then_refuse:
                    self.refuse()
                client.close()
                upstream_writer.close()
                return
            client.write(data)
            await client.drain()
        client.close()


@pytest.fixture
async def proxy(redis_server: RedisServer, redis_url: str) -> AsyncIterator[FaultyProxy]:
    async with FaultyProxy(redis_server.port) as faulty:
        yield faulty


@pytest.fixture
async def service(proxy: FaultyProxy) -> AsyncIterator[RedisSessionService]:
    svc = RedisSessionService(proxy.url, retry_for_s=20, socket_timeout=5)
    yield svc
    await svc.close()


@pytest.fixture
async def direct(redis_url: str) -> AsyncIterator[RedisSessionService]:
    """A store that reaches the server without the proxy, to look at what it holds."""
    svc = RedisSessionService(redis_url, retry_for_s=0)
    yield svc
    await svc.close()


async def stored(svc: RedisSessionService, session_id: str) -> Session:
    loaded = await svc.get_session(APP, USER, session_id)
    assert loaded is not None
    return loaded


def ids(session: Session) -> list[str]:
    return [event.id for event in session.events]


# --- a restart ---------------------------------------------------------------------------


async def test_a_restart_during_a_burst_loses_and_duplicates_nothing(
    aof_redis_server: RedisServer,
) -> None:
    """Given writers and a reader busy on an append-only Redis, when the server restarts and
    stays down for a while, then every call succeeds and every append is stored exactly once."""
    svc = RedisSessionService(aof_redis_server.url, retry_for_s=20)
    writers = 4
    sessions = [await svc.create_session(APP, USER, f"s{n}") for n in range(writers)]
    restarted = asyncio.Event()
    appended: dict[str, list[str]] = {s.id: [] for s in sessions}
    reads = 0

    async def write(session: Session) -> None:
        after = 0
        while after < 5:  # keep appending through the outage, then a few more
            event = (user_event if len(appended[session.id]) % 2 == 0 else assistant_event)(
                session, f"turn {len(appended[session.id])}", state_delta={"turns": 1}
            )
            assert await svc.append_event(session, event) is True
            appended[session.id].append(event.id)
            after += restarted.is_set()
            await asyncio.sleep(0.02)

    async def read() -> None:
        nonlocal reads
        while not restarted.is_set() or reads < 3:
            for session in sessions:
                assert await svc.get_session(APP, USER, session.id) is not None
            reads += 1
            await asyncio.sleep(0.02)

    async def restart() -> None:
        await asyncio.sleep(0.3)
        await asyncio.to_thread(aof_redis_server.restart, 1.5)
        restarted.set()

    try:
        await asyncio.wait_for(
            asyncio.gather(*(write(s) for s in sessions), read(), restart()), HANG_GUARD_S
        )
        for session in sessions:
            loaded = await stored(svc, session.id)
            assert ids(loaded) == appended[session.id]  # none lost, none twice, in order
            assert loaded.event_count == len(appended[session.id])
            assert ids(session) == appended[session.id]  # the caller's copy agrees
    finally:
        await svc.close()


# --- a lost reply ------------------------------------------------------------------------


async def test_writes_whose_reply_was_lost_are_retried_and_stored_once(
    proxy: FaultyProxy, service: RedisSessionService, direct: RedisSessionService
) -> None:
    """Given a create, an append and a summary whose replies never come back, when the store
    retries them, then each reports its own success and the server holds each write once."""
    # (the server loads each script on its first call; the faults below hit scripts that ran)
    warm = await service.create_session(APP, USER, "warm-up")
    await service.append_event(warm, user_event(warm, "warm-up"))
    await service.put_summary(APP, USER, "warm-up", summary_of(warm, 1))

    proxy.lose_next_reply()
    session = await service.create_session(APP, USER, "s1", state={"k": 1})
    assert proxy.reply_lost.is_set()  # the create ran; its reply was lost

    first = user_event(session, "hello", state_delta={"user:visits": 1, "turns": 1})
    proxy.lose_next_reply()
    assert await service.append_event(session, first) is True
    assert proxy.reply_lost.is_set()

    proxy.lose_next_reply()
    assert await service.put_summary(APP, USER, "s1", summary_of(session, 1)) is True
    assert proxy.reply_lost.is_set()

    loaded = await stored(direct, "s1")
    assert ids(loaded) == [first.id]
    assert loaded.event_count == 1
    assert loaded.state == {"k": 1, "turns": 1, "user:visits": 1}
    assert ids(session) == [first.id] and session.event_count == 1
    # A real duplicate is still one: appending the same event again changes nothing.
    assert await service.append_event(session, first) is False
    assert await service.put_summary(APP, USER, "s1", summary_of(session, 1)) is False
    assert (await stored(direct, "s1")).event_count == 1


async def test_a_retried_append_of_a_stale_owner_is_refused(
    proxy: FaultyProxy, service: RedisSessionService, direct: RedisSessionService
) -> None:
    """Given an owner whose append keeps failing because its server is out of reach, when a
    newer owner takes the session's fence meanwhile, then the retry is refused and writes
    nothing, whether or not the first try had landed."""
    session = await service.create_session(APP, USER, "s1")
    await service.take_fence(APP, USER, "s1", 1)
    landed = user_event(session, "landed, reply lost")
    await service.append_event(session, user_event(session, "warm-up"), fence=1)

    # The first try lands, its reply is lost, and the server is out of reach for the retries.
    proxy.lose_next_reply(then_refuse=True)
    append = asyncio.create_task(service.append_event(session, landed, fence=1))
    await proxy.faulted()
    assert proxy.reply_lost.is_set()
    await direct.take_fence(APP, USER, "s1", 2)
    proxy.forward()
    with pytest.raises(FencedError, match="fenced by token 2"):
        await asyncio.wait_for(append, HANG_GUARD_S)

    # Never sent before the fence moved: refused too.
    proxy.refuse()
    never = assistant_event(session, "never stored")
    append = asyncio.create_task(service.append_event(session, never, fence=1))
    await proxy.faulted()
    await direct.take_fence(APP, USER, "s1", 3)
    proxy.forward()
    with pytest.raises(FencedError, match="fenced by token 3"):
        await asyncio.wait_for(append, HANG_GUARD_S)

    texts = [e.message.text for e in (await stored(direct, "s1")).events if e.type == "message"]
    assert texts == ["warm-up", "landed, reply lost"]


# --- a server loading its data, or demoted ---------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        "LOADING Redis is loading the dataset in memory",
        "READONLY You can't write against a read only replica.",
    ],
)
async def test_loading_and_readonly_are_waited_out(
    proxy: FaultyProxy, service: RedisSessionService, direct: RedisSessionService, error: str
) -> None:
    session = await service.create_session(APP, USER, "s1")
    proxy.answer(error)
    event = user_event(session, "while the server could not take it")
    append = asyncio.create_task(service.append_event(session, event))
    await proxy.faulted()
    proxy.forward()
    assert await asyncio.wait_for(append, HANG_GUARD_S) is True
    assert ids(await stored(direct, "s1")) == [event.id]


# --- an outage longer than retry_for_s, a cancel -----------------------------------------------


async def test_an_outage_longer_than_retry_for_s_fails_clearly_then_recovers() -> None:
    with RedisServer() as server:
        svc = RedisSessionService(server.url, retry_for_s=1, socket_connect_timeout=1)
        try:
            session = await svc.create_session(APP, USER, "s1")
            server.stop()
            with pytest.raises(SessionBackendError) as info:
                await asyncio.wait_for(
                    svc.append_event(session, user_event(session, "lost")), HANG_GUARD_S
                )
            message = str(info.value)
            assert f"127.0.0.1:{server.port}" in message  # which server
            assert "appending an event" in message  # what failed
            assert "retry_for_s=1" in message and "redis-server running" in message  # the fix
            assert info.value.__cause__ is not None

            server.start()  # empty dataset (no persistence): the store works again
            again = await svc.create_session(APP, USER, "s1")
            assert await svc.append_event(again, user_event(again, "after")) is True
        finally:
            await svc.close()


async def test_a_cancel_stops_the_retries(proxy: FaultyProxy, service: RedisSessionService) -> None:
    session = await service.create_session(APP, USER, "s1")
    proxy.refuse()
    call = asyncio.create_task(service.get_session(APP, USER, session.id))
    await proxy.faulted()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(call, HANG_GUARD_S)  # well before retry_for_s (20 s) is over


# --- the option --------------------------------------------------------------------------


async def test_retry_for_s_comes_from_the_url_or_the_options(redis_url: str) -> None:
    svc = from_url(redis_url + "?retry_for_s=3")
    assert isinstance(svc, RedisSessionService) and svc.retry_for_s == 3
    try:
        await svc.create_session(APP, USER, "s1")  # the parameter is not passed to redis-py
    finally:
        await svc.close()
    svc = from_url(redis_url, retry_for_s=7)
    assert isinstance(svc, RedisSessionService) and svc.retry_for_s == 7
    assert RedisSessionService(redis_url).retry_for_s == 20
    for bad in (-1, "soon", float("inf"), True):
        with pytest.raises(ConfigurationError, match="retry_for_s"):
            RedisSessionService(redis_url, retry_for_s=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="retry_for_s"):
        from_url(redis_url + "?retry_for_s=soon")
