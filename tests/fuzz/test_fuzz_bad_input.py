"""Fuzzed bad input: every public handler of every pattern gets generated malformed bodies.

For each pattern the test starts its service once, registers it, and asks the admin API
for its handlers (so a new handler cannot be missed: one without an entry in `SPECS`
fails the test; handlers the admin API marks ingress-private are skipped). Each handler
then gets bodies that are invalid for it (wrong types, missing fields, unknown fields,
constraint violations, huge strings, non-JSON, empty, wrong JSON top-level types, deep
nesting); a handler whose bodies are encrypted (encryptedjournal, `Encrypted`) gets those
bodies encrypted with the service's key, plus bodies that are not ciphertext under its keys
(plain JSON, garbage, one byte changed, an unknown key). For each the test asserts:

- an answer within `ANSWER_BOUND` seconds (the client's timeout; a retry loop fails it);
- a 4xx status with a body `{"code": .., "message": ..}` whose message is not empty and,
  where the body breaks a named field, names that field;

and, after all bodies for the pattern, that nothing changed: the rows of the pattern's
services in the admin `state` table are the same as before, and no invocation of them is
left unfinished (running, backing off, suspended, scheduled...).

`SPECS` describes what each handler accepts, independently of the pattern's code, and the
generators produce only bodies outside that: a valid body could legitimately change state.
"""

import copy
import json
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from devkit import ROOT, patterns
from devkit.postgres import EmbeddedPostgres
from devkit.processes import RestateServer, register
from devkit.pytest_restate import StartServer, http
from encryptedjournal.codec import EncryptingCodec
from tests.harness import Admin, StartService

INPUTS_TRIED = "fuzz inputs tried"  # the property tests/conftest.py sums up: handler -> bodies
ANSWER_BOUND = 15.0  # seconds: the client's timeout for one request
EXAMPLES_PER_HANDLER = 25
JSON = "application/json"

# --- what each handler accepts -----------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """A field of a JSON object: kind "str", "int", "number" (any finite JSON number), "bool",
    "date" or a nested `Obj`."""

    kind: "str | Obj"
    required: bool = True
    nullable: bool = False
    constraint: str = ""  # "nonempty", "email", "positive"


@dataclass(frozen=True)
class Obj:
    """A JSON object body validated by a pydantic model."""

    fields: dict[str, Field]
    example: dict[str, Any]
    extra_allowed: bool = False  # unknown fields are ignored instead of refused


@dataclass(frozen=True)
class Scalar:
    """A body that is one JSON value; `valid` says which ones the handler accepts."""

    valid: Callable[[bytes], bool]
    any_json: bool = False  # every JSON value is valid: try only bodies that are not JSON


@dataclass(frozen=True)
class NoInput:
    """A handler without input: any body or content type is refused (by the ingress)."""


@dataclass(frozen=True)
class Signed:
    """A Stripe webhook: only bodies signed with the webhook secret are valid."""


@dataclass(frozen=True)
class Encrypted:
    """A body encrypted by the service's journal value codec (encryptedjournal): the bad
    bodies of `inner`, encrypted with the service's key, must be refused as `inner` says
    (naming the field); bodies that are not ciphertext under a key of the service (plain
    JSON, garbage, a changed byte, an unknown key) must be refused too."""

    inner: "Obj | Scalar"
    keys: str  # the service's JOURNAL_KEYS, newest first


Spec = Obj | Scalar | NoInput | Signed | Encrypted


def loads(body: bytes) -> tuple[bool, Any]:
    """(True, value) if the body is JSON (as Python's json module reads it)."""
    try:
        return True, json.loads(body)
    except (ValueError, RecursionError):
        return False, None


def email_string(body: bytes) -> bool:
    ok, value = loads(body)
    return ok and isinstance(value, str) and "@" in value


def awakeable_id(body: bytes) -> bool:
    """A JSON string in the form of an awakeable id: "sign_1" and 28 bytes in base64url."""
    ok, value = loads(body)
    return ok and isinstance(value, str) and bool(re.fullmatch(r"sign_1[\w-]{37}[AQgw]", value))


def json_value(body: bytes) -> bool:
    return loads(body)[0]


def json_value_or_none(body: bytes) -> bool:
    """promises/resolve: any JSON value, or no body (resolves with null, as the original's
    `resolve()` without a value)."""
    return body == b"" or loads(body)[0]


def ticket_or_none(body: bytes) -> bool:
    """queue/done: a ticket's awakeable id, or no body / null (the original's `done()`)."""
    ok, value = loads(body)
    return body == b"" or (ok and value is None) or awakeable_id(body)


def nonempty_string(body: bytes) -> bool:
    ok, value = loads(body)
    return ok and isinstance(value, str) and value != ""


def batch_size(body: bytes) -> bool:
    """ratelimit's expensiveMethodBatch: no body or null (the default), or a count."""
    ok, value = loads(body)
    return body == b"" or (ok and (value is None or (type(value) is int and 0 <= value < 2**53)))


def payload(body: bytes) -> bool:
    ok, value = loads(body)
    return body == b"" or (ok and (value is None or isinstance(value, str)))


def userid(body: bytes) -> bool:
    ok, value = loads(body)
    return ok and isinstance(value, str) and 0 < len(value) <= 255 and "\x00" not in value


def whole_number(body: bytes) -> bool:
    ok, value = loads(body)
    return ok and isinstance(value, int) and not isinstance(value, bool) and abs(value) <= 10**15


TEXT = Field("str")
NONEMPTY = Field("str", constraint="nonempty")
DATE = Field("date")
NUMBER = Field("number")
TASK = Obj({"description": TEXT}, {"description": "get out of bed,shower"})
JOB = Obj(
    {"cronExpression": TEXT, "service": TEXT, "method": TEXT,
     "key": Field("str", required=False, nullable=True),
     "payload": Field("str", required=False, nullable=True),
     "timezone": Field("str", required=False)},
    {"cronExpression": "* * * * *", "service": "TaskService", "method": "executeTask",
     "payload": "Hello new minute!"},
)  # fmt: skip
STRIPE_EVENT = Obj(
    {"type": TEXT, "created": Field("int"),
     "data": Field(Obj({"id": TEXT, "customer": TEXT},
                       {"id": "evt_1JH2Y4F2eZvKYlo2C8b9", "customer": "cus_J5K2Y4F2eZvKYlo2"},
                       extra_allowed=True))},
    {"type": "customer.subscription_created", "created": 1633025000,
     "data": {"id": "evt_1JH2Y4F2eZvKYlo2C8b9", "customer": "cus_J5K2Y4F2eZvKYlo2"}},
    extra_allowed=True,  # a Stripe event has many more fields (schedulingtasks/app.py)
)  # fmt: skip


def promise_request(more: dict[str, Field] | None = None, **example: Any) -> Obj:
    """promiseasaservice's envelope `{"request": {"promiseName": ..., ...}}`."""
    inner = Obj({"promiseName": NONEMPTY, **(more or {})}, {"promiseName": "fuzz", **example})
    return Obj({"request": Field(inner)}, {"request": inner.example})


STRIPE_WEBHOOK_EVENT = Obj(
    {"id": NONEMPTY, "type": TEXT, "created": Field("int"),
     "data": Field(Obj(
         {"object": Field(Obj({"id": NONEMPTY, "customer": TEXT},
                              {"id": "invoice123", "customer": "cus_1"}, extra_allowed=True))},
         {"object": {"id": "invoice123", "customer": "cus_1"}}, extra_allowed=True))},
    {"id": "evt_1", "type": "invoice.payment_failed", "created": 1633025000,
     "data": {"object": {"id": "invoice123", "customer": "cus_1"}}},
    extra_allowed=True,  # a Stripe event as the webhook delivers it (webhookcallbacks/app.py)
)  # fmt: skip

# encryptedjournal's key (the service gets it as JOURNAL_KEYS; the test encrypts with it)
ENCRYPTEDJOURNAL_KEYS = "fuzz:ZnV6ei10ZXN0LWtleS1mdXp6LXRlc3Qta2V5LWZ1eno="
INSURANCE_CLAIM = Obj(
    {"date": DATE, "amount": Field("number", constraint="positive"), "category": TEXT,
     "placeOfService": TEXT, "reason": TEXT},
    {"date": "2024-10-01", "amount": 3000, "category": "orthopedic",
     "placeOfService": "General Hospital", "reason": "hospital bill for a broken leg"},
)  # fmt: skip

# Keys are "Service/handler", or "pattern:Service/handler" where two patterns that are never
# registered together use the same name for different inputs.
# Ingress-private handlers have no entry: the test skips every handler that the admin API
# does not list as public (each pattern's README names its private ones).
SPECS: dict[str, Spec] = {
    "ProductService/reserve": NoInput(),
    "AsyncTaskWorker/runTask": Obj(
        {"key": TEXT, "taskName": TEXT, "payload": TEXT},
        {"key": "task-1", "taskName": "resize", "payload": "image-17.png"},
    ),
    "DataUploadService/run": NoInput(),
    "DataUploadService/resultAsEmail": Scalar(email_string),
    "Batcher/receive": Scalar(json_value, any_json=True),
    "BookingWorkflow/run": Obj(
        {
            "customerId": NONEMPTY,
            "flight": Field(
                Obj(
                    {"flightId": NONEMPTY, "passengerName": NONEMPTY},
                    {"flightId": "12345", "passengerName": "John Doe"},
                )
            ),
            "car": Field(
                Obj(
                    {"pickupLocation": NONEMPTY, "rentalDate": DATE},
                    {"pickupLocation": "Airport", "rentalDate": "2024-12-16"},
                )
            ),
            "hotel": Field(
                Obj(
                    {"arrivalDate": DATE, "departureDate": DATE},
                    {"arrivalDate": "2024-12-16", "departureDate": "2024-12-20"},
                )
            ),
        },
        {
            "customerId": "12345",
            "flight": {"flightId": "12345", "passengerName": "John Doe"},
            "car": {"pickupLocation": "Airport", "rentalDate": "2024-12-16"},
            "hotel": {"arrivalDate": "2024-12-16", "departureDate": "2024-12-20"},
        },
    ),
    "EmailVerification/verifyEmail": Obj(
        {"email": Field("str", constraint="email"), "userId": NONEMPTY},
        {"email": "someone@example.com", "userId": "someone"},
    ),
    "MachineOperator/setUp": NoInput(),
    "MachineOperator/tearDown": NoInput(),
    "PaymentProcessor/makePayment": Obj(
        {"accountId": NONEMPTY, "amountCents": Field("int", constraint="positive")},
        {"accountId": "abc", "amountCents": 100},
    ),
    "PaymentProcessor/cancelPayment": NoInput(),
    "CronJobInitiator/create": JOB,
    "CronJob/cancel": NoInput(),
    "CronJob/getInfo": NoInput(),
    "TaskService/executeTask": Scalar(payload),
    "TaskObject/executeTask": Scalar(payload),
    "PaymentTracker/onPaymentSuccess": STRIPE_EVENT,
    "PaymentTracker/onPaymentFailure": STRIPE_EVENT,
    "FanOutWorker/run": TASK,
    "PaymentService/processPayment": Obj(
        {
            "paymentMethodId": NONEMPTY,
            "amount": Field("int", constraint="positive"),
            "delayedStatus": Field("bool", required=False),
        },
        {"paymentMethodId": "pm_card_visa", "amount": 109, "delayedStatus": True},
    ),
    "PaymentService/processWebhook": Signed(),
    "WebhookCallbackRouter/onStripeEvent": STRIPE_WEBHOOK_EVENT,  # unsigned: no secret set
    "UserFeed/processPost": Obj(
        {"content": TEXT, "metadata": TEXT},
        {"content": "Hi! This is my first post!", "metadata": "public"},
    ),
    "PackageTracker/registerPackage": Obj(
        {"finalDestination": TEXT}, {"finalDestination": "Bridge 6, Amsterdam"}
    ),
    "PackageTracker/updateLocation": Obj(
        {"location": TEXT, "timestamp": TEXT},
        {"location": "Pinetree Road 5, Paris", "timestamp": "2024-10-10 13:00"},
    ),
    "PackageTracker/getPackageInfo": NoInput(),
    "promises/resolve": Scalar(json_value_or_none, any_json=True),
    "promises/reject": Scalar(nonempty_string),
    "promises/peek": NoInput(),
    "promises/dispose": NoInput(),
    # `value` takes any JSON value, so the fuzz leaves it as in the example
    "durablePromiseServer/resolve": promise_request(value={"name": "Barack"}),
    "durablePromiseServer/reject": promise_request(
        {"errorMessage": NONEMPTY}, errorMessage="help!"
    ),
    "durablePromiseServer/peek": promise_request(),
    "durablePromiseServer/await": promise_request(),
    "durablePromiseServer/dispose": promise_request(),
    "promise/resolve": Obj({"promiseId": NONEMPTY}, {"promiseId": "fuzz", "value": 1}),
    "promise/reject": Obj(
        {"promiseId": NONEMPTY, "errorMessage": NONEMPTY},
        {"promiseId": "fuzz", "errorMessage": "help!"},
    ),
    "promise/peek": Obj({"promiseId": NONEMPTY}, {"promiseId": "fuzz"}),
    "promise/await": Obj({"promiseId": NONEMPTY}, {"promiseId": "fuzz"}),
    "promise/dispose": Obj({"promiseId": NONEMPTY}, {"promiseId": "fuzz"}),
    "qna/ask": Scalar(nonempty_string),
    "qna/answer": Obj(
        {"questionId": NONEMPTY, "answer": TEXT}, {"questionId": "q1", "answer": "42"}
    ),
    "limiter/state": NoInput(),
    "limiter/tokens": NoInput(),
    "limiter/reserve": Obj(
        {
            "n": Field("int", required=False),
            "waitLimitMillis": Field("number", required=False, nullable=True),
        },
        {"n": 1, "waitLimitMillis": 1000},
    ),
    "limiter/setRate": Obj(
        {
            "newLimit": Field("number", required=False, nullable=True),
            "newBurst": Field("int", required=False, nullable=True),
        },
        {"newLimit": 1, "newBurst": 1},
    ),
    "limiter/cancelReservation": Obj(
        {
            "ok": Field("bool"),
            "tokens": Field("int"),
            "creationDate": Field("int"),
            "dateToAct": Field("int"),
            "limit": Field("number"),
        },
        {
            "ok": True,
            "tokens": 1,
            "creationDate": 1764547200000,
            "dateToAct": 1764547201000,
            "limit": 1,
        },
    ),
    "ratelimit:myService/expensiveMethod": NoInput(),
    "ratelimit:myService/expensiveMethodBatch": Scalar(batch_size),
    "priorityqueue:myService/expensiveMethod": Obj(
        {"left": NUMBER, "right": NUMBER, "priority": Field("number", required=False)},
        {"left": 1, "right": 2, "priority": 1},
    ),
    "queue/push": Obj(
        {"awakeable": TEXT, "priority": NUMBER},
        {"awakeable": "sign_1z0zSDCMOs5xFe_VNXZFE-AIxo2PAsUibAAAAEQ", "priority": 1},
    ),
    "queue/done": Scalar(ticket_or_none),
    "queue/drop": Scalar(awakeable_id),
    # database: a userid is a non-empty string of at most 255 characters (varchar(255));
    # credits are whole numbers
    "database:simple/read": Scalar(userid),
    "database:simple/durableRead": Scalar(userid),
    "database:simple/insert": Obj(
        {"userId": NONEMPTY, "name": TEXT, "address": TEXT, "credits": Field("int")},
        {
            "userId": "C",
            "name": "Emm",
            "address": "55, Rue du Faubourg Saint-Honoré",
            "credits": 1337,
        },
    ),
    "database:simple/update": Obj(
        {"userId": NONEMPTY, "newName": TEXT}, {"userId": "A", "newName": "Donald"}
    ),
    "database:keyed/update": Scalar(whole_number),
    "database:keyed/updateConditional": Scalar(whole_number),
    "database:keyed/read": NoInput(),
    "database:idempotency/update": Obj(
        {"userId": NONEMPTY, "addCredits": Field("int")}, {"userId": "A", "addCredits": 100}
    ),
    "Customer/register": Encrypted(
        Obj(
            {"name": NONEMPTY, "email": Field("str", constraint="email"), "cardNumber": TEXT},
            {"name": "Ada Lovelace", "email": "ada@example.com", "cardNumber": "4242424242424242"},
        ),
        ENCRYPTEDJOURNAL_KEYS,
    ),
    "Customer/charge": Encrypted(
        Obj(
            {"amountCents": Field("int", constraint="positive"), "description": NONEMPTY},
            {"amountCents": 1999, "description": "Blood test"},
        ),
        ENCRYPTEDJOURNAL_KEYS,
    ),
    "Customer/get": NoInput(),
    "database:twoPhaseCommit/update": Obj(
        {"userId": NONEMPTY, "addCredits": Field("int")}, {"userId": "A", "addCredits": 100}
    ),
    "Order/place": Obj({"item": NONEMPTY, "card": NONEMPTY}, {"item": "socks", "card": "tok_visa"}),
    "Onboarding/onboard": Obj(
        {"userId": NONEMPTY, "email": Field("str", constraint="email")},
        {"userId": "alice", "email": "alice@example.com"},
    ),
    # agent patterns (agents-core)
    "WeatherAgent/run": Obj({"message": NONEMPTY}, {"message": "What is the weather in Paris?"}),
    "Chat/message": Obj({"message": NONEMPTY}, {"message": "Hi! My name is Alice."}),
    "Chat/getHistory": NoInput(),
    # agent patterns (agents-more)
    "MultiAgentClaimApproval/run": INSURANCE_CLAIM,
    "ClaimPayout/receipt": NoInput(),
    "ClaimReimbursement/process": Obj(
        {"message": NONEMPTY},
        {"message": "Process my hospital bill of 2024-10-01 for 3000 EUR for a broken leg."},
    ),
    "ParallelAgentClaimApproval/run": INSURANCE_CLAIM,
    "ResearchReport/generate": Obj({"topic": NONEMPTY}, {"topic": "renewable energy"}),
    "CodeGenerator/generate": Obj({"task": NONEMPTY}, {"task": "a palindrome check"}),
    "RacingAgent/run": Obj({"message": NONEMPTY}, {"message": "How do I learn ML?"}),
    "CodingAgent/message": Obj({"content": NONEMPTY}, {"content": "Build a Flask app."}),
    "CodingAgent/getHistory": NoInput(),
    "HumanClaimApprovalAgent/run": Obj({"message": NONEMPTY}, {"message": "3000USD bill"}),
    "HumanClaimApprovalWithTimeoutsAgent/run": Obj({"message": NONEMPTY}, {"message": "3000USD"}),
    "ClaimReview/approve": NoInput(),
    "ClaimReview/reject": NoInput(),
    "CheckoutService/checkout": Obj(
        {
            "orderId": NONEMPTY,
            "customerId": NONEMPTY,
            "amount": Field("number", constraint="positive"),
        },
        {"orderId": "order-1", "customerId": "customer-7", "amount": 42.5},
    ),
    # versioning, as served by default (VERSION=v1; v2 takes the same bodies)
    "Subscription/renew": Obj(
        {"customer": NONEMPTY, "priceCents": Field("int", constraint="positive")},
        {"customer": "alice", "priceCents": 999},
    ),
    "Subscription/status": NoInput(),
}

# --- generators ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    body: bytes
    content_type: str | None = JSON
    names: str = ""  # the field the answer's message must name ("" for the body as a whole)
    what: str = ""  # for the failure report
    headers: dict[str, str] = field(default_factory=dict)


def huge(prefix: str = "") -> st.SearchStrategy[str]:
    """A string of 10 kB to 100 kB (built by repetition: generating it is cheap)."""
    return st.tuples(st.sampled_from("x€ {"), st.integers(10_000, 100_000)).map(
        lambda t: prefix + t[0] * t[1]
    )


scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)


def nested(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    # a named function: Hypothesis 6.170 cannot see that a multi-line lambda uses its argument
    return st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner)


json_values = st.recursive(scalars, nested, max_leaves=5)


def not_json(example: bytes) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=64).filter(lambda b: b != b"" and not loads(b)[0]),
        st.text(min_size=1, max_size=64).map(str.encode).filter(lambda b: not loads(b)[0]),
        st.integers(1, max(1, len(example) - 1)).map(lambda n: example[:n]),  # cut short
        huge("{").map(str.encode),
        huge("not json ").map(str.encode),
        st.integers(2_000, 20_000).map(lambda depth: b"[" * depth + b"]" * depth),
        st.just(b"\xff\xfe\x00garbage"),
    ).filter(lambda b: not loads(b)[0])


def raw_cases(example: bytes) -> st.SearchStrategy[Case]:
    """Non-JSON and empty bodies, with or without a content type."""
    content_type = st.sampled_from([JSON, JSON, "text/plain", None])
    return st.one_of(
        st.builds(Case, not_json(example), content_type, what=st.just("not JSON")),
        st.builds(Case, st.just(b""), content_type, what=st.just("empty")),
    )


def any_json_case(value: Any, what: str) -> Case:
    return Case(json.dumps(value).encode(), what=what)


def wrong_value(f: Field) -> st.SearchStrategy[Any]:
    """A JSON value of the wrong type for the field, also in pydantic's lax mode."""
    containers = st.lists(scalars, max_size=3) | st.dictionaries(st.text(max_size=5), scalars)
    not_numeric = st.text(max_size=20).map(lambda s: "x" + s) | huge("x")
    options: list[st.SearchStrategy[Any]] = [containers]
    if isinstance(f.kind, Obj):
        options += [scalars.filter(lambda v: v is not None), st.lists(st.just(f.kind.example))]
    elif f.kind == "str":
        options += [st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.booleans()]
    elif f.kind == "int":
        fractions = st.floats(allow_nan=False, allow_infinity=False).filter(
            lambda v: not v.is_integer()
        )
        options += [not_numeric, fractions]
    elif f.kind == "number":
        options += [not_numeric, st.booleans()]
    elif f.kind == "bool":
        options += [not_numeric, st.integers().filter(lambda v: v not in (0, 1))]
    elif f.kind == "date":
        options += [not_numeric]
    if not f.nullable:
        options.append(st.none())
    return st.one_of(options)


def bad_value(f: Field) -> st.SearchStrategy[Any]:
    """A value of the right type that breaks the field's constraint."""
    if f.constraint == "nonempty":
        return st.just("")
    if f.constraint == "email":
        return st.text(max_size=30).filter(lambda s: not re.fullmatch(r"[^@\s]+@[^@\s]+", s))
    return st.integers(max_value=0)


def snake(name: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), name)


@st.composite
def broken_object(draw: st.DrawFn, spec: Obj) -> Case:
    """The spec's example with one field missing, of a wrong type, breaking its constraint,
    or an unknown field added (at the top or in a nested object)."""
    body = copy.deepcopy(spec.example)
    obj, target, path = spec, body, []
    name = draw(st.sampled_from(sorted(obj.fields)))
    f = obj.fields[name]
    while isinstance(f.kind, Obj) and draw(st.booleans()):  # go into the nested object
        obj, target = f.kind, target[name]
        path.append(name)
        name = draw(st.sampled_from(sorted(obj.fields)))
        f = obj.fields[name]
    kinds = ["wrong type"]
    if f.required:
        kinds.append("missing")
    if f.constraint:
        kinds.append("constraint")
    if not obj.extra_allowed:
        kinds.append("unknown field")
    kind = draw(st.sampled_from(kinds))
    if kind == "missing":
        target.pop(name, None)
    elif kind == "wrong type":
        target[name] = draw(wrong_value(f))
    elif kind == "constraint":
        target[name] = draw(bad_value(f))
    else:
        known = set(obj.fields) | {snake(n) for n in obj.fields}
        name = draw((st.text(min_size=1, max_size=12) | huge("k")).filter(lambda k: k not in known))
        target[name] = draw(json_values | huge())
    return Case(
        json.dumps(body).encode(), names=name, what=f"{kind} {'.'.join([*path, name])[:40]}"
    )


OCTETS = "application/octet-stream"


def seal(spec: Encrypted, case: Case) -> Case:
    """The case's body encrypted with the service's key: refused as the inner spec says."""
    codec = EncryptingCodec.from_setting(spec.keys)
    return Case(codec.encode(case.body), OCTETS, case.names, f"encrypted {case.what}")


def unsealed(spec: Encrypted) -> list[Case]:
    """Bodies that are not ciphertext under the service's keys, though the JSON inside may be
    valid: plain, garbage, cut short, one byte changed (in the header, nonce, ciphertext or
    tag), or under a key the service does not have."""
    codec = EncryptingCodec.from_setting(spec.keys)
    stranger = EncryptingCodec.from_setting(f"unknown:{'A' * 43}=")
    example = json.dumps(spec.inner.example if isinstance(spec.inner, Obj) else None).encode()
    sealed = codec.encode(example)
    header = len(sealed) - len(example) - 12 - 16  # "aesgcm:<id>:"

    def flipped(position: int) -> Case:
        body = bytearray(sealed)
        body[position] ^= 0x01
        return Case(bytes(body), OCTETS, what=f"byte {position} changed")

    return [
        Case(example, JSON, what="plain JSON"),
        Case(example, OCTETS, what="plain JSON as bytes"),
        Case(b"", OCTETS, what="empty"),
        Case(b"", None, what="empty, no content type"),
        Case(b"\xff\xfe\x00garbage", OCTETS, what="garbage"),
        Case(sealed, "text/plain", what="ciphertext, wrong content type"),
        Case(sealed[: header + 12 + 15], OCTETS, what="cut short"),
        *(flipped(at) for at in (0, header - 2, header + 3, header + 12 + 1, len(sealed) - 1)),
        Case(stranger.encode(example), OCTETS, what="under an unknown key"),
    ]


def cases(spec: Spec) -> st.SearchStrategy[Case]:
    """Bodies that are invalid for a handler with this spec (Encrypted: see generate)."""
    if isinstance(spec, Encrypted):
        return cases(spec.inner).map(lambda case: seal(spec, case))
    if isinstance(spec, Obj):
        example = json.dumps(spec.example).encode()
        not_an_object = (json_values | huge()).filter(lambda v: not isinstance(v, dict))
        return st.one_of(
            broken_object(spec),
            broken_object(spec),  # twice: the field-level cases are the interesting ones
            raw_cases(example),
            not_an_object.map(lambda v: any_json_case(v, "not an object")),
        )
    if isinstance(spec, Scalar):
        if spec.any_json:
            return raw_cases(b"[1, 2]").filter(lambda case: not spec.valid(case.body))
        return st.one_of(
            raw_cases(b'"someone@example.com"'),
            (json_values | huge()).map(lambda v: any_json_case(v, "a JSON value")),
        ).filter(lambda case: not spec.valid(case.body))
    if isinstance(spec, NoInput):
        return st.one_of(
            raw_cases(b"{}"),
            json_values.map(lambda v: any_json_case(v, "a JSON value")),
        ).filter(lambda case: case.content_type is not None or case.body)
    forged = st.text(alphabet="0123456789abcdef", max_size=64)  # header values are ASCII
    signature = st.none() | forged.map(lambda s: f"t=1,v1={s}")
    return st.builds(
        lambda case, sig: Case(case.body, case.content_type, what=f"{case.what}, sig {sig!r}",
                               headers={"stripe-signature": sig} if sig else {}),
        raw_cases(b"{}") | json_values.map(lambda v: any_json_case(v, "unsigned JSON")),
        signature,
    )  # fmt: skip


# --- the test -----------------------------------------------------------------------------


def public_handlers(server: RestateServer, services: list[str]) -> list[tuple[str, str, str]]:
    """(service, handler, service type) of the handlers the ingress lets callers reach."""
    found = []
    for name in services:
        response = httpx.get(f"{server.admin_url}/services/{name}", timeout=30)
        assert response.status_code == 200, response.text
        description = response.json()
        for handler in description["handlers"]:
            if handler.get("public", True):
                found.append((name, handler["name"], description["ty"]))
    return found


STATE_COLUMNS = "service_name, service_key, key, value_utf8"
HEALTH_CHECKS_OFF = [HealthCheck.too_slow, HealthCheck.filter_too_much,
                     HealthCheck.data_too_large, HealthCheck.large_base_example]  # fmt: skip


def rows(admin: Admin, table: str, columns: str, services: list[str], where: str = "") -> list[Any]:
    names = ", ".join(f"'{name}'" for name in services)
    column = "service_name" if table == "state" else "target_service_name"
    result = admin.query(f"SELECT {columns} FROM {table} WHERE {column} IN ({names}) {where}")
    return sorted(tuple(row.values()) for row in result)


SETTINGS: dict[str, Callable[[pytest.FixtureRequest, RestateServer], dict[str, str]]] = {
    "cron": lambda request, server: {"RESTATE_ADMIN_URL": server.admin_url},
    "signalspayments": lambda request, server: request.getfixturevalue(
        "stripe_standin"
    ).service_settings(),
    "database": lambda request, server: database_settings(request),
    "encryptedjournal": lambda request, server: {"JOURNAL_KEYS": ENCRYPTEDJOURNAL_KEYS},
    # agent patterns: the model stand-in, so that a body let through by mistake never
    # reaches a real provider (with an OPENAI_API_KEY in the environment)
    **dict.fromkeys(
        [
            "durableagent",
            "chatagent",
            "approvalagent",
            "multiagent",
            "agentworkflows",
            "racingagents",
        ],
        lambda request, server: request.getfixturevalue("model_standin").service_settings(),
    ),
}


@pytest.fixture
def server(start_server: StartServer, tmp_path: Path) -> Iterator[RestateServer]:
    """A server of its own for each pattern: no timer or background invocation left by
    another test can change the state compared before and after, and patterns that give
    one handler name different inputs (myService) never meet."""
    own = start_server(tmp_path / "restate")
    yield own
    own.stop()


def database_settings(request: pytest.FixtureRequest) -> dict[str, str]:
    """A PostgreSQL of its own for the database pattern, stopped after the test (its data
    folder outside pytest's, which is private to root: PostgreSQL runs as another user)."""
    folder = Path(tempfile.mkdtemp(prefix="fuzz-database-"))
    database = EmbeddedPostgres(folder / "data", ROOT / "database" / "db")

    def stop() -> None:
        database.stop()
        shutil.rmtree(folder, ignore_errors=True)

    request.addfinalizer(stop)
    database.start()
    return {"DATABASE_URL": database.dsn}


@pytest.mark.parametrize("pattern", patterns.known())
def test_every_public_handler_refuses_malformed_bodies(
    pattern: str,
    server: RestateServer,
    start_service: StartService,
    admin: Admin,
    record_property: Callable[[str, object], None],
    request: pytest.FixtureRequest,
) -> None:
    settings_of = SETTINGS.get(pattern)
    service = start_service(pattern, settings_of(request, server) if settings_of else None)
    services = register(server.admin_url, service.url)
    handlers = public_handlers(server, services)
    assert handlers, f"{pattern}: the admin API lists no public handler"
    specs = {f"{s}/{h}": spec_of(pattern, f"{s}/{h}") for s, h, _ in handlers}
    missing = [target for target, spec in specs.items() if spec is None]
    assert not missing, f"no fuzz spec for {missing}: add what they accept to SPECS"

    generated = {target: generate(spec) for target, spec in specs.items() if spec is not None}
    state_before = rows(admin, "state", STATE_COLUMNS, services)
    # Under load an answer takes a while even when it is quick to compute: send in parallel,
    # each to a key of its own (one object key runs one call at a time).
    requests = [
        (target, ingress_path(target, kind, f"fuzz-{index}"), case)
        for (target, cases_of_target), (_, _, kind) in zip(generated.items(), handlers, strict=True)
        for index, case in enumerate(cases_of_target)
    ]
    # one client per thread (http()): a new client per request costs CPU (TLS setup), and
    # one shared by threads failed with EBADF when requests timed out
    with ThreadPoolExecutor(max_workers=16) as pool:
        problems = [
            p for p in pool.map(lambda r: refusal_problem(server.ingress_url, *r), requests) if p
        ]
    tried = {(f"{pattern}:{t}" if f"{pattern}:{t}" in SPECS else t): len(found)
             for t, found in generated.items()}  # fmt: skip
    record_property(INPUTS_TRIED, tried)
    assert not problems, f"{len(problems)} of {len(requests)} bodies:\n" + "\n".join(problems)

    unfinished = rows(
        admin, "sys_invocation", "target, status", services, "AND status != 'completed'"
    )
    assert not unfinished, f"invocations left unfinished: {unfinished}"
    state_after = rows(admin, "state", STATE_COLUMNS, services)
    assert state_after == state_before, "the bad bodies changed the state"


def spec_of(pattern: str, target: str) -> Spec | None:
    """The spec of "Service/handler"; "pattern:Service/handler" first, for a handler name
    that two patterns give different inputs (myService/expensiveMethod)."""
    return SPECS.get(f"{pattern}:{target}", SPECS.get(target))


def ingress_path(target: str, kind: str, key: str) -> str:
    service, handler = target.split("/")
    return f"/{target}" if kind == "Service" else f"/{service}/{key}/{handler}"


def generate(spec: Spec) -> list[Case]:
    """Bodies that are invalid for a handler with this spec, chosen by Hypothesis."""
    if isinstance(spec, Encrypted):
        return [seal(spec, case) for case in generate(spec.inner)] + unsealed(spec)
    found: list[Case] = []

    @settings(
        max_examples=EXAMPLES_PER_HANDLER,
        deadline=None,
        derandomize=True,  # the same bodies on every run
        database=None,
        phases=[Phase.generate],
        suppress_health_check=HEALTH_CHECKS_OFF,
    )
    @given(case=cases(spec))
    def collect(case: Case) -> None:
        found.append(case)

    collect()
    return found


def refusal_problem(ingress_url: str, target: str, path: str, case: Case) -> str:
    """What is wrong with the answer to this bad body ("" if it was refused as it should)."""
    headers = dict(case.headers)
    if case.content_type is not None:
        headers["content-type"] = case.content_type
    where = f"{target} <- {case.what} ({len(case.body)} bytes: {case.body[:80]!r})"
    try:
        response = http().post(
            ingress_url + path, content=case.body, headers=headers, timeout=ANSWER_BOUND
        )
    except httpx.TimeoutException:
        return f"no answer within {ANSWER_BOUND:g} s: {where}"
    status, text = response.status_code, response.text[:300]
    if not 400 <= status < 500:
        return f"{status} {text}: {where}"
    try:
        message = response.json().get("message")
    except ValueError:
        message = None
    if not isinstance(message, str) or not message.strip():
        return f"{status} without a message ({text}): {where}"
    if case.names not in message:
        return f"{message[:300]!r} does not name {case.names[:40]!r}: {where}"
    return ""
