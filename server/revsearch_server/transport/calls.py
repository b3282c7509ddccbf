"""One error path for every RPC kind (unary, client-streaming, bidirectional) and the service's
registration with tolerant request decoding.

Every call of the service goes through the CallGuard: the concurrency cap, the API key check
(security/auth.py: every RPC kind, and every streamed message's collection), the idle limit of
streams, the same status mapping (transport/status.py), trailing metadata (the retry hint of an
overload), request metrics by RPC and code (and by key), and the same handling of cancellation.

Malformed request bytes: grpc decodes a request before any handler runs, and a decode error there
became UNKNOWN ("Unexpected DecodeError") for unary calls and INTERNAL with a logged traceback
for streams. Here the request deserializer never raises: it returns a `Malformed` marker, which
the guard turns into INVALID_ARGUMENT naming the message type, counts
(`revsearch_malformed_messages_total`) and logs as one line, at most once per `LOG_EVERY_S` per RPC
with the number of lines suppressed, so a flood cannot fill the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message

from ..errors import DeadlineExceeded, InvalidArgument, Overloaded
from ..observability import Metrics, or_null
from ..security.auth import ANONYMOUS, Authenticator, Caller
from .status import to_status, trailing_metadata

log = logging.getLogger(__name__)

LOG_EVERY_S = 10.0


@dataclass(frozen=True)
class Malformed:
    """What the deserializer returns for bytes that are not a valid message of its type."""
    type_name: str
    reason: str


class MalformedMessage(InvalidArgument):
    pass


def tolerant_deserializer(message_class: type[Message]) -> Callable[[bytes], Message | Malformed]:
    type_name = message_class.DESCRIPTOR.full_name

    def deserialize(data: bytes):
        try:
            return message_class.FromString(data)
        except Exception as exc:  # DecodeError, and whatever else a hostile byte string provokes
            return Malformed(type_name, str(exc)[:200] or type(exc).__name__)

    return deserialize


class RateLimitedLog:
    """One log line per key at most every `every_s` seconds; the lines in between are counted."""

    def __init__(self, every_s: float = LOG_EVERY_S, clock=time.monotonic):
        self._every_s = every_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, message: str, *args) -> bool:
        """Logs unless a line of this key was logged within every_s; True when logged."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._every_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        suffix = f" ({suppressed} similar lines suppressed)" if suppressed else ""
        log.warning(message + suffix, *args)
        return True


# The caller of the RPC being handled (set by the guard before the handler runs).
CALLER: contextvars.ContextVar[Caller] = contextvars.ContextVar("revsearch_caller", default=ANONYMOUS)


def collection_of(message) -> str:
    """The collection a request names: `collection`, a header's `collection`, or the collection
    RPCs' `name`; "" when it names none."""
    fields = message.DESCRIPTOR.fields_by_name
    if "header" in fields:  # a header in a oneof (uploads) or a field of its own (ImportVectors)
        return message.header.collection if message.HasField("header") else ""
    if "collection" in fields:
        return message.collection
    if "name" in fields:
        return message.name
    return ""


@dataclass(frozen=True)
class GuardLimits:
    """Transport limits enforced per call (the connection-level ones are grpc options: wiring.py)."""
    # A stream that sends nothing for this long ends with DEADLINE_EXCEEDED (0: no limit).
    stream_idle_timeout_s: float = 30.0
    # Calls handled at once; beyond it RESOURCE_EXHAUSTED with a retry hint, never an unbounded queue.
    max_concurrent_rpcs: int = 512


class CallGuard:
    """Wraps handlers: authentication and authorization, the concurrency cap, status mapping,
    metrics and cancellation, in one place for every RPC kind."""

    def __init__(self, metrics: Metrics | None = None, auth: Authenticator | None = None,
                 limits: GuardLimits = GuardLimits(), log_every_s: float = LOG_EVERY_S):
        self._metrics = or_null(metrics)
        self._auth = auth
        self._limits = limits
        self._active = 0
        self._malformed_log = RateLimitedLog(log_every_s)

    def check(self, rpc: str, request, caller: Caller = ANONYMOUS):
        """The request, or MalformedMessage (INVALID_ARGUMENT) when it did not decode, or
        PERMISSION_DENIED when it names a collection outside the caller's scope."""
        if isinstance(request, Malformed):
            self._metrics.malformed(rpc)
            self._malformed_log.warning(rpc, "%s: malformed %s rejected: %s", rpc, request.type_name, request.reason)
            raise MalformedMessage(f"the request is not a valid {request.type_name} message "
                                   f"(protobuf decoding failed: {request.reason}); send a serialized "
                                   f"{request.type_name}")
        if self._auth is not None:
            self._auth.authorize(caller, rpc, collection_of(request))
        return request

    async def checked(self, rpc: str, requests: AsyncIterator, caller: Caller = ANONYMOUS) -> AsyncIterator:
        """Each request checked; a stream idle for longer than the limit ends with DEADLINE_EXCEEDED."""
        idle_s = self._limits.stream_idle_timeout_s
        iterator = aiter(requests)
        while True:
            try:
                request = await (asyncio.wait_for(anext(iterator), idle_s) if idle_s > 0 else anext(iterator))
            except StopAsyncIteration:
                return
            except asyncio.TimeoutError:
                raise DeadlineExceeded(f"the {rpc} stream sent nothing for {idle_s:g} s "
                                       "(--stream-idle-timeout); send the next message sooner or end the stream"
                                       ) from None
            yield self.check(rpc, request, caller)

    def _enter(self, rpc: str, context) -> Caller:
        """Admits the call: the concurrency cap, then the caller's key (when keys are on)."""
        if self._active >= self._limits.max_concurrent_rpcs:
            self._metrics.rejected(rpc)
            raise Overloaded(f"the server is handling {self._active} calls, its limit (--max-concurrent-rpcs); "
                             "retry after the hinted delay", retry_after_ms=100)
        caller = ANONYMOUS if self._auth is None else self._auth.admit(rpc, context.invocation_metadata())
        CALLER.set(caller)
        return caller

    @contextlib.asynccontextmanager
    async def _call(self, rpc: str, context):
        """One call's admission, outcome and metrics: what every handler kind shares."""
        outcome = _Outcome(self._metrics, rpc, context)
        try:
            outcome.caller = self._enter(rpc, context)
            self._active += 1
            outcome.counted_active = True
            yield outcome.caller
        except BaseException as exc:  # noqa: B902 - every kind is mapped, then re-raised or aborted
            await outcome.failed(exc)
        finally:
            self._leave(outcome)

    def unary(self, rpc: str, handler):
        async def call(request, context):
            async with self._call(rpc, context) as caller:
                return await handler(self.check(rpc, request, caller), context)

        return call

    def stream_unary(self, rpc: str, handler):
        async def call(requests, context):
            async with self._call(rpc, context) as caller:
                return await handler(self.checked(rpc, requests, caller), context)

        return call

    def stream_stream(self, rpc: str, handler):
        async def call(requests, context):
            async with self._call(rpc, context) as caller:
                async for response in handler(self.checked(rpc, requests, caller), context):
                    yield response

        return call

    def _leave(self, outcome: "_Outcome") -> None:
        if outcome.counted_active:
            self._active -= 1
        outcome.count()


class _Outcome:
    """The code one call ended with, counted once (by RPC, and by RPC and key)."""

    def __init__(self, metrics: Metrics, rpc: str, context):
        self._metrics, self._rpc, self._context = metrics, rpc, context
        self._started = time.perf_counter()
        self._code: grpc.StatusCode | None = grpc.StatusCode.OK
        self.caller: Caller = ANONYMOUS
        self.counted_active = False

    async def failed(self, exc: BaseException) -> None:
        """Maps exc: cancellation and aborts are re-raised, anything else aborts the call with
        its status (which raises grpc's AbortError)."""
        if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):  # client gone or deadline passed
            self._code = _cancelled_code(self._context)
            raise exc
        if isinstance(exc, grpc.aio.AbortError):
            self._code = self._context.code() or grpc.StatusCode.UNKNOWN
            raise exc
        if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit
            raise exc
        status, message = to_status(exc)
        # Counted before abort, which sends the status to the client at once.
        self._record(status.name)
        self._code = None
        await self._context.abort(status, message, trailing_metadata(exc))

    def _record(self, code: str) -> None:
        self._metrics.request(self._rpc, code, time.perf_counter() - self._started)
        self._metrics.key_request(self.caller.id, self._rpc, code)

    def count(self) -> None:
        if self._code is not None:
            self._record(self._code.name if isinstance(self._code, grpc.StatusCode) else str(self._code))


def _cancelled_code(context) -> grpc.StatusCode:
    """A handler is cancelled when its client cancels or its deadline passes."""
    try:
        remaining = context.time_remaining()
    except Exception:  # no deadline information
        remaining = None
    return grpc.StatusCode.DEADLINE_EXCEEDED if remaining is not None and remaining <= 0 else \
        grpc.StatusCode.CANCELLED


def service_handler(service: ServiceDescriptor, messages, servicer, guard: CallGuard) -> grpc.GenericRpcHandler:
    """The service's RPCs, each bound to the servicer's method of its name through the guard.

    messages: the generated module holding the request and response classes."""
    handlers = {}
    for method in service.methods:
        request_class = getattr(messages, method.input_type.name)
        response_class = getattr(messages, method.output_type.name)
        impl = getattr(servicer, method.name)
        kwargs = dict(request_deserializer=tolerant_deserializer(request_class),
                      response_serializer=response_class.SerializeToString)
        if method.client_streaming and method.server_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                guard.stream_stream(method.name, impl), **kwargs)
        elif method.client_streaming:
            handlers[method.name] = grpc.stream_unary_rpc_method_handler(
                guard.stream_unary(method.name, impl), **kwargs)
        elif method.server_streaming:
            raise NotImplementedError(f"{method.name}: server-streaming RPCs have no guard yet")
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(guard.unary(method.name, impl), **kwargs)
    return grpc.method_handlers_generic_handler(service.full_name, handlers)
