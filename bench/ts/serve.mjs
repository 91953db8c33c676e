// `node serve.mjs`: serve the twins over HTTP/2 cleartext on 127.0.0.1:$PORT (9080).
// restate.serve() would listen on all interfaces; this binds loopback only.
import http2 from "node:http2";
import * as restate from "@restatedev/restate-sdk";
import { tsNoop, tsProductService } from "./services.mjs";

const port = Number(process.env.PORT ?? "9080");
const host = process.env.HOST ?? "127.0.0.1";
const handler = restate.createEndpointHandler({ services: [tsNoop, tsProductService] });
const server = http2.createServer(handler);
server.listen(port, host, () => console.log(`Serving TsNoop, TsProductService on ${host}:${port}`));

// Ctrl-C or SIGTERM: stop at once (restate-server keeps its HTTP/2 connection open, so
// waiting for it to close would wait forever).
for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, () => process.exit(0));
}
