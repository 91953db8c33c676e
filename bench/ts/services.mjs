// The TypeScript twins of two Python handlers of `./dev bench`, written with the
// TypeScript SDK as its users write them. Their names differ from the Python ones
// (Noop, ProductService) so that both run on one restate-server in the same run.
import * as restate from "@restatedev/restate-sdk";

// bench/noop/app.py: a handler that does nothing.
export const tsNoop = restate.service({
  name: "TsNoop",
  handlers: {
    call: async (_ctx) => {},
  },
});

// durablerpc/app.py, ProductService/reserve: reserve the product (the object key);
// true if this call reserved it, false if it was reserved already.
export const tsProductService = restate.object({
  name: "TsProductService",
  handlers: {
    reserve: async (ctx) => {
      if (await ctx.get("reserved")) {
        ctx.console.info(`Product ${ctx.key} was already reserved`);
        return false;
      }
      ctx.set("reserved", true);
      ctx.console.info(`Product ${ctx.key} reserved`);
      return true;
    },
  },
});
