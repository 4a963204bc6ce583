// Herald's OpenAPI document as a TypeScript user's code meets it (tests/clients/run).
//
// What this proves: the types `openapi-typescript` generates from the document
// (generated/herald.d.ts) describe the request bodies and answers a user writes and reads
// (a notification, a batch with per-item idempotency keys, the 202 answer, the stats and a
// problem) closely enough to type-check under `tsc --strict`, and refuse wrong shapes: each
// `@ts-expect-error` below fails the build if its line ever type-checks.

import type { components, paths } from "./generated/herald";

type NotificationBody = paths["/v1/notifications"]["post"]["requestBody"]["content"]["application/json"];
type Accepted = paths["/v1/notifications"]["post"]["responses"][202]["content"]["application/json"];
type BatchBody = paths["/v1/notifications/batch"]["post"]["requestBody"]["content"]["application/json"];
type BatchAnswer = paths["/v1/notifications/batch"]["post"]["responses"][200]["content"]["application/json"];
type Stats = paths["/v1/stats"]["get"]["responses"][200]["content"]["application/json"];
type RateLimited = paths["/v1/notifications"]["post"]["responses"][429];
type Problem = components["schemas"]["Problem"];
type Status = components["schemas"]["Status"];

// Request bodies.

export const welcome: NotificationBody = {
  channel: "email",
  to: "alice@example.com",
  content: { subject: "Welcome", text: "Hi Alice", html: "<p>Hi <b>Alice</b></p>" },
  tags: ["welcome"],
  metadata: { user_id: 42 },
};

export const push: NotificationBody = {
  channel: "push",
  to: { fcm: "fcm-registration-token" },
  content: { title: "Hello", body: "Hi Alice", data: { screen: "inbox" } },
  priority: "high",
};

export const fromTemplate: NotificationBody = {
  channel: "sms",
  to: "+14155550100",
  template: { name: "welcome", data: { first_name: "Ana" } },
  locale: "pt-BR",
  send_at: "2026-12-01T10:00:00Z",
};

export const batch: BatchBody = {
  notifications: [
    { ...welcome, idempotency_key: "order-42/email" },
    { channel: "sms", to: "+14155550100", content: { text: "Your order shipped" }, idempotency_key: "order-42/sms" },
  ],
};

// Wrong shapes the types refuse.

export const typo: NotificationBody = {
  channel: "sms",
  to: "+14155550100",
  content: { text: "Hi" },
  // @ts-expect-error: `subject` belongs in `content`, and the body has no such field
  subject: "Hi",
};

// @ts-expect-error: a batch body needs `notifications`
export const emptyBatch: BatchBody = {};

export const fax: NotificationBody = {
  // @ts-expect-error: `fax` is no channel
  channel: "fax",
  to: "+14155550100",
};

// Answers.

export function describeAccepted(accepted: Accepted): string {
  const status: Status = accepted.status;
  const id: string = accepted.id;
  const firstEvent: string | undefined = accepted.events?.[0]?.type;
  const segments: number | undefined = accepted.sms?.segments;
  return `${id}: ${status} (${firstEvent ?? "no timeline"}, ${segments ?? 0} SMS segments)`;
}

export function subjectOf(accepted: Accepted): string | undefined {
  // The content is the request's: email, SMS or push, told apart by their fields.
  const content = accepted.content;
  return "subject" in content ? content.subject : undefined;
}

export function batchOutcome(answer: BatchAnswer): string[] {
  return answer.results.map((item) =>
    item.problem
      ? `#${item.index}: ${item.problem.status} ${item.problem.title}`
      : `#${item.index}: ${item.id} ${item.status}`,
  );
}

export function summarizeStats(stats: Stats): string {
  const window: string = stats.window;
  const total: number = stats.notifications.total;
  const queued: number | undefined = stats.notifications.by_status["queued"];
  const buckets: components["schemas"]["Bucket"][] = stats.throughput.buckets;
  const sent = buckets.reduce((sum, bucket) => sum + bucket.sent, 0);
  const p90: number | null | undefined = stats.latency_seconds.accepted_to_sent.p90;
  return [
    `${window}: ${total} created, ${queued ?? 0} queued`,
    `${sent} sent in ${buckets.length} buckets of ${stats.throughput.bucket_seconds} s`,
    `p90 accepted to sent ${p90 ?? "-"} s`,
  ].join("; ");
}

export function explainProblem(problem: Problem): string[] {
  const status: number = problem.status;
  // @ts-expect-error: `errors` may be absent or null (only validation problems have it)
  problem.errors.length;
  return (problem.errors ?? []).map((e) => `${status} ${e.pointer ?? e.header ?? e.parameter ?? ""}: ${e.detail}`);
}

export function retryAfterSeconds(answer: RateLimited): number {
  const seconds: number = answer.headers["Retry-After"];
  const problem: Problem = answer.content["application/problem+json"];
  return problem.status === 429 ? seconds : 0;
}

export const invalid: Problem = {
  type: "/problems/validation",
  title: "Invalid request",
  status: 422,
  detail: "/to: +1415555010 is not a number that can exist",
  errors: [{ pointer: "/to", detail: "+1415555010 is not a number that can exist" }],
  instance: "/v1/notifications",
};
