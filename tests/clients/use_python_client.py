#!/usr/bin/env python3
"""Herald as a user's Python code sees it, through a client generated from its OpenAPI document.

What this proves: a client that `openapi-python-client` generates from Herald's document
(`--meta none`, imported as `herald_client`) can send, batch, read, list, cancel, template,
suppress and count against a live Herald using only its generated functions and models, and
that every answer, errors (422) and rate limiting (429) included, parses into the model the
document names for its status code: a required field missing, a status, date or id the model
cannot read, or a field the server sends that the document does not declare fails here.

Run with the generated package's parent directory on PYTHONPATH, and (set by tests/clients/run):
  HERALD_URL          the server's base URL
  HERALD_KEY          a send+read key of tenant "sdk"
  HERALD_ADMIN_KEY    an admin key
  HERALD_LIMITED_KEY  a key of tenant "slow", which may make 1 request a second

Prints one "ok: ..." line per check; exits non-zero if any check fails.
"""

from __future__ import annotations

import datetime
import os
import sys
import time
import traceback
import uuid
from typing import Any, Callable

import attrs  # the generated models are attrs classes; used only to walk them
import httpx  # only for the generated client's `timeout` setting: every request goes through it

from herald_client import AuthenticatedClient
from herald_client.api.notifications import (
    cancel_notification,
    create_notification,
    create_notification_batch,
    get_notification,
    list_notifications,
)
from herald_client.api.operators import get_stats
from herald_client.api.suppressions import (
    create_suppression,
    delete_suppression,
    list_suppressions,
)
from herald_client.api.templates import preview_template, put_template
from herald_client.models import (
    BatchItem,
    BatchNotification,
    BatchRequest,
    BatchResponse,
    Bucket,
    GetStatsWindow,
    Channel,
    EmailContent,
    EventView,
    NotificationRequest,
    NotificationView,
    Page,
    PreviewRequest,
    PreviewRequestDataType0,
    PreviewView,
    Problem,
    PushContent,
    SmsContent,
    StatsView,
    Status,
    SuppressionPage,
    SuppressionRequest,
    SuppressionView,
    TemplateBody,
    TemplateRef,
    TemplateRefDataType0,
    TemplateUse,
    TemplateView,
    ToType1,
)
from herald_client.types import UNSET, Response

# One run's own names, so that a rerun against the same database sees only its own rows.
RUN = uuid.uuid4().hex[:8]
PHONE = "+14155550100"
IMPOSSIBLE_PHONE = "+1415555010"  # one digit short: no such number can exist


class CheckFailed(Exception):
    pass


def check(condition: bool, what: str) -> None:
    """Like `assert`, but not stripped by `python -O`."""
    if not condition:
        raise CheckFailed(what)


def undeclared(value: Any, path: str = "$") -> list[str]:
    """Fields of a parsed answer that its model does not declare (kept in `additional_properties`).

    A model whose only field is `additional_properties` is a map (`by_status`, a bare object):
    its keys are its content, not undeclared fields.
    """
    if isinstance(value, list):
        return [u for i, item in enumerate(value) for u in undeclared(item, f"{path}[{i}]")]
    if not attrs.has(type(value)):
        return []
    names = [f.name for f in attrs.fields(type(value)) if f.name != "additional_properties"]
    found = [f"{path}.{key}" for key in getattr(value, "additional_properties", {})] if names else []
    return found + [u for name in names for u in undeclared(getattr(value, name), f"{path}.{name}")]


def expect(response: Response[Any], status: int, model: type) -> Any:
    """The parsed answer, after checking its status code, that it parsed as `model`, and that
    the server sent no field the document leaves out."""
    check(
        response.status_code == status,
        f"expected HTTP {status}, got {response.status_code}: {response.content[:500]!r}",
    )
    check(
        isinstance(response.parsed, model),
        f"expected a {model.__name__}, got {type(response.parsed).__name__}: {response.parsed!r}",
    )
    extra = undeclared(response.parsed)
    check(not extra, f"{model.__name__}: fields the document does not declare: {extra}")
    return response.parsed


def client_for(key_variable: str) -> AuthenticatedClient:
    return AuthenticatedClient(
        base_url=os.environ["HERALD_URL"],
        token=os.environ[key_variable],
        raise_on_unexpected_status=True,
        timeout=httpx.Timeout(30.0),
    )


def send(client: AuthenticatedClient, body: NotificationRequest) -> NotificationView:
    """Creates a notification, expecting `202` and a NotificationView."""
    view = expect(create_notification.sync_detailed(client=client, body=body), 202, NotificationView)
    check(view.channel == body.channel, f"channel {view.channel} != {body.channel}")
    return view


def sms(text: str, to: str = PHONE, **fields: Any) -> NotificationRequest:
    return NotificationRequest(channel=Channel.SMS, to=to, content=SmsContent(text=text), **fields)


def in_an_hour() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)


# The checks, one function each; each returns what its "ok:" line says.


def check_each_channel(client: AuthenticatedClient) -> str:
    email = send(
        client,
        NotificationRequest(
            channel=Channel.EMAIL,
            to=f"alice+{RUN}@example.com",
            content=EmailContent(subject="Hello", text="Hi Alice", html="<p>Hi <b>Alice</b></p>"),
            tags=["sdk"],
        ),
    )
    text = send(client, sms("Your code is 123456"))
    push = send(
        client,
        NotificationRequest(
            channel=Channel.PUSH,
            to=ToType1(fcm=f"fcm-token-{RUN}"),
            content=PushContent(title="Hello", body="Hi Alice"),
        ),
    )
    for view in (email, text, push):
        check(view.status == Status.QUEUED, f"{view.channel} answered status {view.status}, not queued")
    check(isinstance(email.id, uuid.UUID), f"id {email.id!r} is not a UUID")
    return "email (text+html), sms and push: 202, NotificationView, queued"


def check_batch(client: AuthenticatedClient) -> str:
    body = BatchRequest(
        notifications=[
            BatchNotification(
                channel=Channel.SMS,
                to=PHONE,
                content=SmsContent(text="batch 0"),
                idempotency_key=f"batch-{RUN}-0",
            ),
            BatchNotification(channel=Channel.SMS, to=IMPOSSIBLE_PHONE, content=SmsContent(text="batch 1")),
            BatchNotification(
                channel=Channel.EMAIL,
                to=f"bob+{RUN}@example.com",
                content=EmailContent(subject="batch 2", text="Hi Bob"),
            ),
        ]
    )
    answer = expect(create_notification_batch.sync_detailed(client=client, body=body), 200, BatchResponse)
    results = sorted(answer.results, key=lambda r: r.index)
    check([r.index for r in results] == [0, 1, 2], f"indexes {[r.index for r in results]}")
    check(all(isinstance(r, BatchItem) for r in results), "results are not BatchItems")
    for good in (results[0], results[2]):
        check(good.status == Status.QUEUED, f"item {good.index}: status {good.status!r}")
        check(isinstance(good.id, uuid.UUID), f"item {good.index}: id {good.id!r}")
    bad = results[1]
    check(isinstance(bad.problem, Problem), f"item 1: problem {bad.problem!r} is not a Problem")
    check(bad.problem.status == 422, f"item 1: problem status {bad.problem.status}")
    pointers = [e.pointer for e in bad.problem.errors or []]
    check("/notifications/1/to" in pointers, f"item 1: error pointers {pointers}")
    check(bad.id in (None, UNSET), f"item 1 has an id: {bad.id!r}")
    return "batch of 2 good + 1 bad: 200, BatchResponse, two queued, item 1 a 422 Problem at /notifications/1/to"


def check_timeline(client: AuthenticatedClient) -> str:
    created = send(client, sms("timeline"))
    deadline = time.monotonic() + 30
    while True:
        view = expect(get_notification.sync_detailed(str(created.id), client=client), 200, NotificationView)
        if view.status == Status.SENT or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    check(view.status == Status.SENT, f"still {view.status} after 30 s")
    check(isinstance(view.events, list) and view.events, f"no events: {view.events!r}")
    check(all(isinstance(e, EventView) for e in view.events), "events are not EventViews")
    kinds = [e.type_ for e in view.events]
    check(kinds[0] == "accepted", f"timeline starts with {kinds[0]!r}")
    attempts = [e for e in view.events if e.type_ == "attempt"]
    check(any(e.status == Status.SENT for e in attempts), f"no sent attempt in {kinds}")
    check(view.provider == "texts", f"provider {view.provider!r}")
    return f"get_notification: sent, timeline {kinds}"


def check_list_pages(client: AuthenticatedClient) -> str:
    # Scheduled an hour ahead, so that their status stays put while they are listed.
    tag = f"page-{RUN}"
    ids = {str(send(client, sms(f"page {i}", tags=[tag], send_at=in_an_hour())).id) for i in range(3)}
    send(
        client,
        NotificationRequest(
            channel=Channel.EMAIL,
            to=f"carol+{RUN}@example.com",
            content=EmailContent(subject="not an sms", text="filtered out by channel"),
            tags=[tag],
            send_at=in_an_hour(),
        ),
    )
    filters = dict(client=client, channel=Channel.SMS, status=Status.SCHEDULED, tag=tag, limit=2)
    first = expect(list_notifications.sync_detailed(**filters), 200, Page)
    check(len(first.items) == 2, f"first page has {len(first.items)} items")
    check(isinstance(first.next_cursor, str), f"first page's next_cursor {first.next_cursor!r}")
    second = expect(list_notifications.sync_detailed(**filters, cursor=first.next_cursor), 200, Page)
    check(len(second.items) == 1, f"second page has {len(second.items)} items")
    check(second.next_cursor in (None, UNSET), f"last page's next_cursor {second.next_cursor!r}")
    first_ids = {str(v.id) for v in first.items}
    second_ids = {str(v.id) for v in second.items}
    check(not first_ids & second_ids, f"pages overlap: {first_ids & second_ids}")
    check(first_ids | second_ids == ids, f"pages {first_ids | second_ids} != sent {ids}")
    for view in first.items + second.items:
        check(view.channel == Channel.SMS and view.status == Status.SCHEDULED, f"{view.id} escaped the filters")
        check(tag in view.tags, f"{view.id} lacks tag {tag}")
    return "list_notifications (channel, status, tag, limit=2): pages of 2 and 1 by cursor, no overlap"


def check_cancel(client: AuthenticatedClient) -> str:
    scheduled = send(client, sms("later", send_at=in_an_hour()))
    check(scheduled.status == Status.SCHEDULED, f"status {scheduled.status}, not scheduled")
    check(isinstance(scheduled.send_at, datetime.datetime), f"send_at {scheduled.send_at!r}")
    cancelled = expect(cancel_notification.sync_detailed(str(scheduled.id), client=client), 200, NotificationView)
    check(cancelled.status == Status.CANCELLED, f"status {cancelled.status}, not cancelled")
    return "send_at an hour ahead: scheduled; cancel_notification: cancelled"


def check_template(client: AuthenticatedClient) -> str:
    name = f"welcome-{RUN}"
    body = TemplateBody(
        email=EmailContent(subject="Welcome, {{ first_name }}", text="Hi {{ first_name }}"),
        sms=SmsContent(text="Hi {{ first_name }}, welcome"),
    )
    stored = expect(put_template.sync_detailed(name, client=client, body=body), 201, TemplateView)
    check(stored.name == name and stored.version == 1, f"stored {stored.name} v{stored.version}")
    check(set(stored.channels) == {Channel.EMAIL, Channel.SMS}, f"channels {stored.channels}")

    preview = expect(
        preview_template.sync_detailed(
            name,
            client=client,
            body=PreviewRequest(data=PreviewRequestDataType0.from_dict({"first_name": "Ana"})),
        ),
        200,
        PreviewView,
    )
    email, sms = preview.email, preview.sms
    check(isinstance(email.content, EmailContent), f"preview's email content {email.content!r}")
    check(email.content.subject == "Welcome, Ana", f"preview's email subject {email.content.subject!r}")
    check(isinstance(sms.content, SmsContent), f"preview's sms content {sms.content!r}")
    check(sms.content.text == "Hi Ana, welcome", f"preview's sms {sms.content!r}")
    check(sms.sms.segments == 1, f"preview's sms segments {sms.sms!r}")

    view = send(
        client,
        NotificationRequest(
            channel=Channel.EMAIL,
            to=f"ana+{RUN}@example.com",
            template=TemplateRef(name=name, data=TemplateRefDataType0.from_dict({"first_name": "Ana"})),
        ),
    )
    check(isinstance(view.template, TemplateUse), f"template {view.template!r} is not a TemplateUse")
    check(view.template.name == name and view.template.version == 1, f"template use {view.template!r}")
    check(isinstance(view.content, EmailContent), f"content {view.content!r} is not an EmailContent")
    check(view.content.subject == "Welcome, Ana", f"content {view.content!r}")
    check(view.content.text == "Hi Ana", f"content {view.content!r}")
    return "put_template: 201 v1; preview_template and a send render 'Welcome, Ana'"


def suppressed_recipients(client: AuthenticatedClient, channel: Channel) -> set[str]:
    found: set[str] = set()
    cursor: Any = UNSET
    while True:
        page = expect(
            list_suppressions.sync_detailed(client=client, channel=channel, limit=1000, cursor=cursor),
            200,
            SuppressionPage,
        )
        check(all(isinstance(s, SuppressionView) for s in page.items), "items are not SuppressionViews")
        found |= {s.recipient for s in page.items}
        if not isinstance(page.next_cursor, str):
            return found
        cursor = page.next_cursor


def check_suppressions(client: AuthenticatedClient) -> str:
    recipient = f"stop+{RUN}@example.com"
    created = expect(
        create_suppression.sync_detailed(
            client=client,
            body=SuppressionRequest(channel=Channel.EMAIL, recipient=recipient, reason="asked to stop"),
        ),
        201,
        SuppressionView,
    )
    check(created.recipient == recipient and created.channel == Channel.EMAIL, f"created {created!r}")
    check(recipient in suppressed_recipients(client, Channel.EMAIL), f"{recipient} not listed")
    deleted = delete_suppression.sync_detailed(Channel.EMAIL, recipient, client=client)
    check(deleted.status_code == 204, f"delete answered {deleted.status_code}: {deleted.content!r}")
    check(recipient not in suppressed_recipients(client, Channel.EMAIL), f"{recipient} still listed")
    return "create_suppression 201, list_suppressions finds it, delete_suppression 204"


def check_stats(client: AuthenticatedClient, admin: AuthenticatedClient) -> str:
    # The checks before this one sent notifications, one of them to the end, inside the window.
    stats = expect(get_stats.sync_detailed(client=client, window=GetStatsWindow("1h")), 200, StatsView)
    check(stats.window == "1h", f"window {stats.window!r}")
    check(stats.tenant == "sdk", f"tenant {stats.tenant!r}")
    total = stats.notifications.total
    check(isinstance(total, int) and total > 0, f"notifications.total {total!r}")
    check(isinstance(stats.latency_seconds.accepted_to_sent.count, int), "accepted_to_sent.count")
    check(stats.latency_seconds.accepted_to_sent.count > 0, "nothing sent in the window")
    check(isinstance(stats.throughput.bucket_seconds, int) and stats.throughput.bucket_seconds > 0, "bucket_seconds")
    check(stats.throughput.buckets and all(isinstance(b, Bucket) for b in stats.throughput.buckets), "buckets")
    check(sum(b.accepted for b in stats.throughput.buckets) > 0, "no bucket counts an acceptance")

    everyone = expect(get_stats.sync_detailed(client=admin, window=GetStatsWindow("1h")), 200, StatsView)
    check(everyone.tenant in (None, UNSET), f"admin stats' tenant {everyone.tenant!r}")
    check(everyone.notifications.total >= total, f"all tenants {everyone.notifications.total} < sdk {total}")
    return (
        f"get_stats 1h: StatsView, total {total}, accepted_to_sent.count "
        f"{stats.latency_seconds.accepted_to_sent.count}, {len(stats.throughput.buckets)} buckets of "
        f"{stats.throughput.bucket_seconds} s; admin sees every tenant"
    )


def check_invalid(client: AuthenticatedClient) -> str:
    response = create_notification.sync_detailed(client=client, body=sms("hi", to=IMPOSSIBLE_PHONE))
    problem = expect(response, 422, Problem)
    check(problem.status == 422, f"problem status {problem.status}")
    pointers = [e.pointer for e in problem.errors or []]
    check("/to" in pointers, f"error pointers {pointers}")
    check(response.headers.get("content-type") == "application/problem+json", "not application/problem+json")
    return f"impossible number: 422 Problem at /to ({problem.title})"


def check_rate_limited(limited: AuthenticatedClient) -> str:
    for attempt in range(1, 21):
        response = create_notification.sync_detailed(client=limited, body=sms(f"burst {attempt}"))
        if response.status_code == 429:
            break
        expect(response, 202, NotificationView)
    problem = expect(response, 429, Problem)
    check(problem.status == 429, f"problem status {problem.status}")
    retry_after = response.headers.get("retry-after")
    check(retry_after is not None and retry_after.isdigit(), f"Retry-After {retry_after!r}")
    return f"request {attempt} of a burst: 429 Problem, Retry-After {retry_after}"


def main() -> int:
    client = client_for("HERALD_KEY")
    admin = client_for("HERALD_ADMIN_KEY")
    limited = client_for("HERALD_LIMITED_KEY")
    checks: list[tuple[str, Callable[[], str]]] = [
        ("each channel", lambda: check_each_channel(client)),
        ("batch", lambda: check_batch(client)),
        ("timeline", lambda: check_timeline(client)),
        ("list pages", lambda: check_list_pages(client)),
        ("cancel", lambda: check_cancel(client)),
        ("template", lambda: check_template(client)),
        ("suppressions", lambda: check_suppressions(client)),
        ("stats", lambda: check_stats(client, admin)),
        ("422", lambda: check_invalid(client)),
        ("429", lambda: check_rate_limited(limited)),
    ]
    failed = 0
    for name, run in checks:
        try:
            print(f"ok: {run()}", flush=True)
        except CheckFailed as e:
            failed += 1
            print(f"FAIL: {name}: {e}", flush=True)
        except Exception:  # a generated model that cannot parse an answer lands here
            failed += 1
            print(f"FAIL: {name}: raised\n{traceback.format_exc()}", flush=True)
    if failed:
        print(f"{failed} of {len(checks)} checks failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
