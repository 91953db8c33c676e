// A TypeScript service of our own that calls the Python wave-2 objects through the
// TypeScript SDK's typed clients, making the calls the TypeScript collection's own clients
// make (its limiter_client.ts, queue_client.ts, and the durable promise client used inside a
// handler): same handlers, same bodies (absent fields, a `done()` without a body), same
// one-way or request-response choice. Node 24 runs it as is (its type stripping).
//
// `node service.ts` serves it over HTTP/2 cleartext on 127.0.0.1:$PORT.
import http2 from "node:http2";
import * as restate from "@restatedev/restate-sdk";
import type { Context, ObjectContext, VirtualObjectDefinition } from "@restatedev/restate-sdk";

// --- the Python objects, as the TypeScript SDK sees them (names and shapes on the wire) ---

type Reservation = {
  ok: boolean;
  tokens: number;
  creationDate: number;
  dateToAct: number;
  limit: number;
};
type Bucket = { limit: number; burst: number; tokens: number; last: number; lastEvent: number };
type LimiterApi = {
  state: (ctx: ObjectContext) => Promise<Bucket>;
  tokens: (ctx: ObjectContext) => Promise<number>;
  reserve: (ctx: ObjectContext, r: { n?: number; waitLimitMillis?: number }) => Promise<Reservation>;
  setRate: (ctx: ObjectContext, r: { newLimit?: number; newBurst?: number }) => Promise<void>;
  cancelReservation: (ctx: ObjectContext, r: Reservation) => Promise<void>;
};
const Limiter: VirtualObjectDefinition<"limiter", LimiterApi> = { name: "limiter" };

type QueueApi = {
  push: (ctx: ObjectContext, item: { awakeable: string; priority: number }) => Promise<void>;
  done: (ctx: ObjectContext) => Promise<void>;
  drop: (ctx: ObjectContext, awakeable: string) => Promise<void>;
};
const Queue: VirtualObjectDefinition<"queue", QueueApi> = { name: "queue" };

type Outcome = { value?: unknown; error?: string };
type PromisesApi = {
  resolve: (ctx: ObjectContext, value?: unknown) => Promise<Outcome>;
  reject: (ctx: ObjectContext, message: string) => Promise<Outcome>;
  peek: (ctx: ObjectContext) => Promise<Outcome | null>;
  await: (ctx: ObjectContext, awakeableId: string) => Promise<Outcome | null>;
};
const Promises: VirtualObjectDefinition<"promises", PromisesApi> = { name: "promises" };

// --- the limiter: every method of the original's client --------------------------------

async function wait(ctx: Context, limiterId: string, n = 1, waitLimitMillis?: number) {
  const limiter = ctx.objectClient(Limiter, limiterId);
  const r = await limiter.reserve({ n, waitLimitMillis });
  if (!r.ok) {
    throw new restate.TerminalError(`rate: Wait(n=${n}) would exceed the limiter's burst`, {
      errorCode: 429,
    });
  }
  const delay = Math.max(0, Math.floor(r.dateToAct - r.creationDate));
  if (delay > 0) {
    try {
      await ctx.sleep(delay);
    } catch (e) {
      ctx.objectSendClient(Limiter, limiterId).cancelReservation(r); // cancelled: give back
      throw e;
    }
  }
  return r;
}

// --- the queue: the original's client, `done()` without a body ---------------------------

async function inQueue<T>(ctx: Context, queue: string, priority: number, op: () => Promise<T>) {
  const client = ctx.objectSendClient(Queue, queue);
  const turn = ctx.awakeable();
  client.push({ awakeable: turn.id, priority });
  try {
    await turn.promise;
  } catch (e) {
    if (e instanceof restate.TerminalError) client.drop(turn.id);
    throw e;
  }
  try {
    const result = await op();
    client.done();
    return result;
  } catch (e) {
    if (e instanceof restate.TerminalError) client.done();
    throw e;
  }
}

// A gate the test opens: admitted callers hold their slot until then, so that the test sees
// the queue full before any caller leaves it (no timing involved).
const gate = restate.object({
  name: "PolyglotGate",
  handlers: {
    pass: async (ctx: ObjectContext, awakeableId: string) => {
      if (await ctx.get<boolean>("open")) ctx.resolveAwakeable(awakeableId);
      else ctx.set("waiting", [...((await ctx.get<string[]>("waiting")) ?? []), awakeableId]);
    },
    open: async (ctx: ObjectContext) => {
      for (const id of (await ctx.get<string[]>("waiting")) ?? []) ctx.resolveAwakeable(id);
      ctx.clear("waiting");
      ctx.set("open", true);
    },
  },
});

const caller = restate.service({
  name: "PolyglotCaller",
  handlers: {
    // take tokens from the Python limiter as the original's `wait(n)` does
    takeTokens: async (ctx: Context, req: { limiterId: string; n?: number }) =>
      wait(ctx, req.limiterId, req.n),

    // the other methods of the original's limiter client, in order; what each answered
    limiterTour: async (ctx: Context, req: { limiterId: string }) => {
      const limiter = ctx.objectClient(Limiter, req.limiterId);
      await limiter.setRate({ newLimit: 2, newBurst: 4 }); // setRate(limit, burst)
      await limiter.setRate({ newLimit: 5 }); // setLimit
      await limiter.setRate({ newBurst: 3 }); // setBurst
      const limit = (await limiter.state()).limit; // limit()
      const burst = (await limiter.state()).burst; // burst()
      const tokens = await limiter.tokens(); // tokens()
      const allowTooMany = (await limiter.reserve({ n: 4, waitLimitMillis: 0 })).ok; // allow(4)
      const reserved = await limiter.reserve({}); // reserve(): n and waitLimitMillis absent
      ctx.objectSendClient(Limiter, req.limiterId).cancelReservation(reserved); // r.cancel()
      let waitTooMany = "";
      try {
        await wait(ctx, req.limiterId, 4);
      } catch (e) {
        waitTooMany = e instanceof restate.TerminalError ? `${e.code} ${e.message}` : String(e);
      }
      return { limit, burst, tokens, allowTooMany, reserved, waitTooMany };
    },

    // run an operation once the Python queue lets this caller in
    queued: async (ctx: Context, req: { queue: string; gate: string; left: number; right: number; priority?: number }) =>
      inQueue(ctx, req.queue, req.priority ?? 1, async () => {
        const pass = ctx.awakeable();
        ctx.objectSendClient<typeof gate>({ name: "PolyglotGate" }, req.gate).pass(pass.id);
        await pass.promise;
        return ctx.run("expensive operation", async () => req.left + req.right);
      }),

    // the durable promise client inside a handler: peek, resolve(), await, reject
    promiseTour: async (ctx: Context, req: { promiseId: string }) => {
      const promise = ctx.objectClient(Promises, req.promiseId);
      const before = await promise.peek();
      const resolved = await promise.resolve(); // resolve() with no value
      const awk = ctx.awakeable<Outcome>();
      await promise.await(awk.id);
      const awaited = await awk.promise;
      const rejected = await promise.reject("too late");
      return { before, resolved, awaited, rejected };
    },
  },
});

const port = Number(process.env.PORT ?? "9080");
const handler = restate.createEndpointHandler({ services: [caller, gate] });
http2.createServer(handler).listen(port, "127.0.0.1", () => console.log(`listening on ${port}`));
for (const signal of ["SIGINT", "SIGTERM"]) process.on(signal, () => process.exit(0));
