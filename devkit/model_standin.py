"""A local stand-in for the OpenAI model API, answering from scripts; a process of its own.

`python -m devkit.model_standin <port> [--default-script FILE]` serves, on 127.0.0.1 only,
the two endpoints the OpenAI Agents SDK calls: `POST /v1/responses` (the Responses API, the
SDK's default, which restate.ext.openai's DurableRunner uses) and `POST /v1/chat/completions`
(for a run with the chat completions API). Non-streaming only: the integration refuses
streaming. The agent patterns talk to it through `OPENAI_BASE_URL`, exactly as they would
talk to OpenAI or any compatible provider; nothing in a pattern knows it is a stand-in.

Why our own: of the stand-ins on PyPI (read and tried in a scratch venv, 2026-12), `stubllm`
0.1.5, `fakellm` 0.3.5 and `mockllm` 0.0.8 speak chat completions only, not the Responses
API the Agents SDK calls; `llm-mock-api` 0.1.2 speaks it, but is an alpha rewrite its
author calls a learning project, pulls in FastAPI and uvicorn, and takes its rules in its
own process (Python API or rule files): none lets concurrent tests each register a script
over HTTP and read back how many requests of *that* test were answered, which is what the
crash tests must assert. This is stdlib only, about 400 lines, deterministic.

## Scripts

A script is JSON (a dict): `{"steps": [STEP, ...], "rules": [RULE, ...]}`, both optional.

- `steps` answer the script's requests in order, one step per request (an error step too
  uses up its step: `[error(429), text("hi")]` answers 429 then "hi").
- `rules` answer what comes after the steps: the first rule whose `when` matches the
  request answers it, as often as it matches. A rule is a STEP plus
  `"when": {"user": REGEX, "history": REGEX, "last": "user"|"tool", "tool": NAME}` (all
  optional, all must hold): `user` is searched (case-insensitive) in the last user
  message, its named groups become template fields; `history` likewise in the earlier user
  messages of the conversation (the latest that matches: a chat's memory); `last` is the
  kind of the last input item (a user message, or a tool's output); `tool` is the name of
  the tool whose output came last.
- no step or rule left: 400 `{"error": {"type": "standin_script_exhausted", ...}}`.

A STEP is one of (each may add `"delay": SECONDS`, slept before answering):
- `{"text": "..."}`: the assistant's message;
- `{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}, ...]}`: calls
  of the agent's tools (with an optional `"text"` beside them);
- `{"status": 429, "message": "...", "retry_after": 1}`: an API error (429, 500, 503 ...);
  `retry_after` becomes the `retry-after` header.
Text and argument strings are templates: `{user}` (the last user message), `{turn}` (how
many user messages the conversation has), `{output}` (the last tool output), `{tool}` (the
tool it came from) and the named groups of the `user` and `history` regexes are filled in;
unknown `{names}` stay as they are.

Which script answers a request: a test registers its script under a token (any unique
string, e.g. `unique("t")`) and puts that token in the user's input; a request whose body
contains a registered token is answered by that token's script, so tests sharing one
stand-in never see each other's answers. (An agent sends the whole conversation every
time, so the token in the first message keys every later request of that conversation.)
A request without any token is answered by the default script, given at start with
`--default-script` (`./dev run <pattern>` passes `devkit/model_scripts/<pattern>.json`).
Token scripts usually have steps; the default scripts only rules, so the README's
walkthrough answers the same however often it is run.

## The control API (what the tests use, through `ModelStandin` below)

- `PUT /_scripts/<token>` (body: a script) registers or replaces it, counts reset.
- `GET /_scripts/<token>` -> `{"count": N, "answered": N, "requests": [REQUEST, ...]}`:
  every model request the token's script received, in order. REQUEST is `{"seq", "api",
  "status", "step", "digest", "last", "turn", "answered"}`: `status` what was answered,
  `step` the step index (or `"rule 0"`), `digest` a hash of the request's conversation
  (model, input items, tools), `last` the kind of its last input item, `turn` how many
  user messages it held (a chat's memory reaching the model), `answered` False if the
  connection was gone when the answer was written (e.g. the service was killed during a
  `delay`).
- `DELETE /_scripts/<token>`.
- `GET /_requests` -> `{"count": N, "byToken": {token or "": N}}`; `GET /_health`.

In Python (tests/conftest.py: the session fixture `model_standin`, one per test process;
the function fixture `model` is the same stand-in with its log attached to a failing
test's report):

    model.script(token, steps=[tool_call("get_weather", city="Paris"),
                               text("It is {output}.")])
    model.count(token)            # requests the token's script received (any status)
    model.count(token, 200)       # ... answered with 200
    model.answered_twice(token)   # digests answered 200 more than once: the journal
                                  # should make this [] across crashes and replays
    model.service_settings()      # OPENAI_BASE_URL, OPENAI_API_KEY and
                                  # OPENAI_AGENTS_DISABLE_TRACING for the pattern

`OPENAI_AGENTS_DISABLE_TRACING=true` matters: the Agents SDK otherwise exports traces to
api.openai.com, whatever OPENAI_BASE_URL says.

Notes for pattern authors: any model name is accepted. The OpenAI client retries 429 and
5xx answers on its own (`max_retries`, 2 by default) before the error reaches Restate's
`RunOptions`; each of those attempts is a request here, so a pattern that wants Restate to
own the retries builds its client with `max_retries=0`. `./dev run <pattern>` starts the
stand-in on port 8431 when `devkit/model_scripts/<pattern>.json` exists and OPENAI_API_KEY
is not set, and logs one line per model request (`model | #3 responses token=... -> 200`).
"""

import argparse
import hashlib
import json
import re
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from devkit import ROOT, DevError
from devkit.processes import Echo, ManagedProcess, http, http_ok

API_KEY = "sk-local-standin"  # any key: the stand-in does not check it
SCRIPTS_DIR = ROOT / "devkit" / "model_scripts"  # default scripts, one per pattern

Step = dict[str, Any]
Script = dict[str, Any]


# --- building scripts (tests) -----------------------------------------------------------


def text(content: str, delay: float = 0.0) -> Step:
    """A step: the assistant answers with this text (a template, see the module doc)."""
    return {"text": content, "delay": delay}


def tool_call(name: str, delay: float = 0.0, **arguments: Any) -> Step:
    """A step: the model calls one tool with these arguments."""
    return {"tool_calls": [{"name": name, "arguments": arguments}], "delay": delay}


def error(status: int, message: str = "", retry_after: float | None = None) -> Step:
    """A step: the API answers with this HTTP error (429 rate limit, 500 server error...)."""
    step: Step = {"status": status, "message": message or f"stand-in error {status}"}
    if retry_after is not None:
        step["retry_after"] = retry_after
    return step


def default_script(pattern: str) -> Script | None:
    """The script `./dev run <pattern>` answers untokened requests with, if it has one."""
    path = SCRIPTS_DIR / f"{pattern}.json"
    if not path.is_file():
        return None
    script: Script = json.loads(path.read_text(encoding="utf-8"))
    return script


def uses_model(pattern: str) -> bool:
    """A pattern calls a model if it has a default script here (`./dev run` starts the
    stand-in for it)."""
    return (SCRIPTS_DIR / f"{pattern}.json").is_file()


# --- the process, as the launcher and the tests see it -----------------------------------


class ModelStandin(ManagedProcess):
    def __init__(
        self,
        port: int,
        log_path: Path,
        default: Path | None = None,
        echo: Echo | None = None,
    ) -> None:
        argv = [sys.executable, "-m", "devkit.model_standin", str(port)]
        if default is not None:
            argv += ["--default-script", str(default)]
        super().__init__("model-standin", argv, log_path, cwd=ROOT, echo=echo)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def start(self, timeout: float = 30.0) -> None:
        super().start()
        self.wait_ready(
            lambda: http_ok(f"{self.url}/_health"), timeout, f"the model stand-in at {self.url}"
        )

    def service_settings(self) -> dict[str, str]:
        """The environment that points a pattern's OpenAI client at this stand-in."""
        return {
            "OPENAI_BASE_URL": f"{self.url}/v1",
            "OPENAI_API_KEY": API_KEY,
            "OPENAI_AGENTS_DISABLE_TRACING": "true",
        }

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        response = http().request(method, f"{self.url}{path}", json=body, timeout=10)
        if response.status_code >= 300:
            raise DevError(f"model stand-in: {method} {path}: {response.text}")
        return response.json()

    def script(
        self, token: str, steps: list[Step] | None = None, rules: list[Step] | None = None
    ) -> None:
        """Answer requests that contain `token` with these steps, then these rules."""
        self._call("PUT", f"/_scripts/{token}", {"steps": steps or [], "rules": rules or []})

    def requests(self, token: str) -> list[dict[str, Any]]:
        answer: dict[str, Any] = self._call("GET", f"/_scripts/{token}")
        return list(answer["requests"])

    def by_step(self, token: str) -> Counter[str]:
        """The token's requests, counted by the step or rule that answered them."""
        return Counter(request["step"] for request in self.requests(token))

    def count(self, token: str, status: int | None = None) -> int:
        """Requests the token's script received (with this status, if given)."""
        return sum(status in (None, r["status"]) for r in self.requests(token))

    def answered_twice(self, token: str) -> list[str]:
        """Digests of conversations answered with 200 more than once."""
        seen: dict[str, int] = {}
        for r in self.requests(token):
            if r["status"] == 200 and r["answered"]:
                seen[r["digest"]] = seen.get(r["digest"], 0) + 1
        return [digest for digest, n in seen.items() if n > 1]

    def forget(self, token: str) -> None:
        self._call("DELETE", f"/_scripts/{token}")


# --- the server ----------------------------------------------------------------------------


class Conversation:
    """What a request says, in either API: the last user message, the last tool output,
    the kind of the last input item."""

    def __init__(self, api: str, body: dict[str, Any]) -> None:
        self.api = api
        self.user = ""
        self.users: list[str] = []  # every user message, oldest first
        self.output = ""
        self.tool = ""
        self.last = ""
        names: dict[str, str] = {}  # call id -> tool name
        if api == "responses":
            items = body.get("input", [])
            if isinstance(items, str):
                items = [{"role": "user", "content": items}]
            for item in items:
                kind = item.get("type", "message")
                if kind == "function_call":
                    names[item.get("call_id", "")] = item.get("name", "")
                    self.last = "call"
                elif kind == "function_call_output":
                    self._tool_output(names.get(item.get("call_id", ""), ""), item.get("output"))
                elif kind == "message":
                    self._message(item.get("role", ""), item.get("content"))
        else:
            for message in body.get("messages", []):
                role = message.get("role", "")
                for call in message.get("tool_calls") or []:
                    names[call.get("id", "")] = call.get("function", {}).get("name", "")
                if role == "tool":
                    self._tool_output(names.get(message.get("tool_call_id", ""), ""),
                                      message.get("content"))  # fmt: skip
                else:
                    self._message(role, message.get("content"))
        canonical = {k: body.get(k) for k in ("model", "input", "messages", "tools")}
        self.digest = hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()[
            :16
        ]

    def _message(self, role: str, content: Any) -> None:
        if role == "user":
            self.user = _text_of(content)
            self.users.append(self.user)
            self.last = "user"
        elif role == "assistant":
            self.last = "assistant"

    def _tool_output(self, name: str, output: Any) -> None:
        self.output = _text_of(output)
        self.tool = name
        self.last = "tool"


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(_text_of(part.get("text", "")) for part in content if isinstance(part, dict))
    return "" if content is None else str(content)


def _fill(template: Any, fields: dict[str, str]) -> Any:
    """Fill `{name}` in every string of a template; unknown names stay."""
    if isinstance(template, str):
        return re.sub(r"\{(\w+)\}", lambda m: fields.get(m.group(1), m.group(0)), template)
    if isinstance(template, dict):
        return {key: _fill(value, fields) for key, value in template.items()}
    if isinstance(template, list):
        return [_fill(value, fields) for value in template]
    return template


def _matches(rule: Step, conversation: Conversation) -> dict[str, str] | None:
    """The template fields the rule adds if it matches the conversation, else None."""
    when = rule.get("when", {})
    if "last" in when and when["last"] != conversation.last:
        return None
    if "tool" in when and when["tool"] != conversation.tool:
        return None
    fields: dict[str, str] = {}
    if "user" in when:
        found = re.search(when["user"], conversation.user, re.I | re.S)
        if found is None:
            return None
        fields.update({k: v for k, v in found.groupdict().items() if v is not None})
    if "history" in when:
        earlier = conversation.users[:-1] if conversation.last == "user" else conversation.users
        matches = [re.search(when["history"], text, re.I | re.S) for text in earlier]
        latest = next((m for m in reversed(matches) if m is not None), None)
        if latest is None:
            return None
        fields.update({k: v for k, v in latest.groupdict().items() if v is not None})
    return fields


class ScriptState:
    def __init__(self, script: Script) -> None:
        self.steps: list[Step] = list(script.get("steps", []))
        self.rules: list[Step] = list(script.get("rules", []))
        self.next = 0
        self.requests: list[dict[str, Any]] = []


class Standin:
    """The scripts and counts; one lock, since requests come in on many threads."""

    def __init__(self, default: Script | None) -> None:
        self.lock = threading.Lock()
        self.scripts: dict[str, ScriptState] = {}
        self.default = ScriptState(default or {})
        self.seq = 0
        self.ids = 0

    def new_id(self, prefix: str) -> str:
        with self.lock:
            self.ids += 1
            return f"{prefix}_standin{self.ids:06d}"

    def choose(
        self, raw: str, conversation: Conversation
    ) -> tuple[str, Step | None, str, dict[str, Any]]:
        """(token, step, step label, request record) for a request; the record is kept."""
        with self.lock:
            token = next((t for t in self.scripts if t in raw), "")
            state = self.scripts[token] if token else self.default
            step: Step | None = None
            label = "none"
            fields: dict[str, str] = {}
            if state.next < len(state.steps):
                step, label = state.steps[state.next], str(state.next)
                state.next += 1
            else:
                for i, rule in enumerate(state.rules):
                    found = _matches(rule, conversation)
                    if found is not None:
                        step, label, fields = rule, f"rule {i}", found
                        break
            self.seq += 1
            record: dict[str, Any] = {
                "seq": self.seq, "api": conversation.api, "status": 0, "step": label,
                "digest": conversation.digest, "last": conversation.last,
                "turn": len(conversation.users), "answered": False,
            }  # fmt: skip
            state.requests.append(record)
        if step is not None:
            step = _fill(step, {"user": conversation.user, "output": conversation.output,
                                "tool": conversation.tool, "turn": str(len(conversation.users)),
                                **fields})  # fmt: skip
        return token, step, label, record


def _usage(api: str, conversation: Conversation) -> dict[str, Any]:
    prompt = max(1, len(conversation.user) // 4)
    if api == "responses":
        return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": 10, "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": prompt + 10}  # fmt: skip
    return {"prompt_tokens": prompt, "completion_tokens": 10, "total_tokens": prompt + 10}


def _responses_body(standin: Standin, step: Step, body: dict[str, Any], c: Conversation) -> Any:
    output: list[dict[str, Any]] = []
    if step.get("text"):
        output.append({
            "type": "message", "id": standin.new_id("msg"), "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": step["text"], "annotations": []}],
        })  # fmt: skip
    for call in step.get("tool_calls", []):
        output.append({
            "type": "function_call", "id": standin.new_id("fc"),
            "call_id": standin.new_id("call"), "name": call["name"],
            "arguments": json.dumps(call.get("arguments", {})), "status": "completed",
        })  # fmt: skip
    return {
        "id": standin.new_id("resp"), "object": "response", "created_at": int(time.time()),
        "status": "completed", "model": body.get("model", "standin"), "output": output,
        "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "error": None,
        "incomplete_details": None, "instructions": None, "metadata": {},
        "text": {"format": {"type": "text"}}, "usage": _usage("responses", c),
    }  # fmt: skip


def _chat_body(standin: Standin, step: Step, body: dict[str, Any], c: Conversation) -> Any:
    calls = [
        {"id": standin.new_id("call"), "type": "function",
         "function": {"name": call["name"], "arguments": json.dumps(call.get("arguments", {}))}}
        for call in step.get("tool_calls", [])
    ]  # fmt: skip
    message: dict[str, Any] = {"role": "assistant", "content": step.get("text") or None}
    if calls:
        message["tool_calls"] = calls
    return {
        "id": standin.new_id("chatcmpl"), "object": "chat.completion",
        "created": int(time.time()), "model": body.get("model", "standin"),
        "choices": [{"index": 0, "message": message,
                     "finish_reason": "tool_calls" if calls else "stop"}],
        "usage": _usage("chat", c),
    }  # fmt: skip


ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
               429: "rate_limit_error"}  # fmt: skip


def make_handler(standin: Standin) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the OpenAI client expects
        # headers and body in one write: else Nagle and delayed ACKs add ~40 ms a request
        wbufsize = 1 << 16
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            pass  # one line per model request instead, below

        def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> bool:
            data = json.dumps(body).encode()
            try:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()
                return True
            except OSError:  # the caller is gone (killed while we waited)
                return False

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("content-length") or 0))

        def do_GET(self) -> None:
            if self.path == "/_health":
                self._json(200, {"ok": True})
            elif self.path == "/_requests":
                with standin.lock:
                    by_token = {t: len(s.requests) for t, s in standin.scripts.items()}
                    by_token[""] = len(standin.default.requests)
                    self._json(200, {"count": standin.seq, "byToken": by_token})
            elif self.path.startswith("/_scripts/"):
                with standin.lock:
                    state = standin.scripts.get(self.path[len("/_scripts/") :])
                    if state is None:
                        self._json(404, {"error": "no such script"})
                        return
                    requests = [dict(r) for r in state.requests]
                answered = sum(r["answered"] for r in requests)
                self._json(200, {"count": len(requests), "answered": answered,
                                 "requests": requests})  # fmt: skip
            else:
                self._json(404, {"error": {"message": f"no route {self.path}"}})

        def do_PUT(self) -> None:
            token = self.path[len("/_scripts/") :] if self.path.startswith("/_scripts/") else ""
            try:
                script = json.loads(self._body())
            except ValueError:
                script = None
            if not isinstance(script, dict) or not token:
                self._json(400, {"error": "PUT /_scripts/<token> with a JSON object"})
                return
            with standin.lock:
                standin.scripts[token] = ScriptState(script)
            self._json(200, {"token": token})

        def do_DELETE(self) -> None:
            with standin.lock:
                standin.scripts.pop(self.path[len("/_scripts/") :], None)
            self._json(200, {})

        def do_POST(self) -> None:
            routes = {"/v1/responses": "responses", "/v1/chat/completions": "chat"}
            api = routes.get(self.path.split("?")[0])
            raw = self._body()
            if api is None:
                self._json(404, {"error": {"message": f"no route {self.path}"}})
                return
            try:
                body = json.loads(raw)
            except ValueError:
                self._json(400, {"error": {"message": "body is not JSON"}})
                return
            if body.get("stream"):
                self._json(400, {"error": {"message": "the stand-in does not stream"}})
                return
            conversation = Conversation(api, body)
            token, step, label, record = standin.choose(raw.decode(errors="replace"), conversation)
            who = f"token={token or '(default)'} step={label} last={conversation.last or '-'}"
            if step is None:
                status: int = 400
                answer: Any = {"error": {
                    "type": "standin_script_exhausted", "param": None, "code": None,
                    "message": f"model stand-in: no step or rule left for {who}"}}  # fmt: skip
                headers: dict[str, str] = {}
            elif "status" in step:
                status = int(step["status"])
                answer = {"error": {"message": step.get("message", ""), "param": None,
                                    "type": ERROR_TYPES.get(status, "server_error"),
                                    "code": None}}  # fmt: skip
                headers = {"retry-after": str(step["retry_after"])} if "retry_after" in step else {}
            else:
                status = 200
                make = _responses_body if api == "responses" else _chat_body
                answer, headers = make(standin, step, body, conversation), {}
            if step is not None and step.get("delay"):
                time.sleep(float(step["delay"]))
            record["status"] = status
            what = ""
            if status == 200 and step is not None:
                calls = [c["name"] for c in step.get("tool_calls", [])]
                what = f" tool_calls={','.join(calls)}" if calls else f" text={step['text']!r:.60}"
            ok = self._json(status, answer, headers)
            with standin.lock:
                record["answered"] = ok
            print(f"#{record['seq']} {api} {who} -> {status}{what}"
                  f"{'' if ok else ' (caller gone)'}", flush=True)  # fmt: skip

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m devkit.model_standin")
    parser.add_argument("port", type=int)
    parser.add_argument("--default-script", type=Path)
    args = parser.parse_args()
    default = None
    if args.default_script is not None:
        default = json.loads(args.default_script.read_text(encoding="utf-8"))
    httpd = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(Standin(default)))
    httpd.daemon_threads = True
    print(f"model stand-in listening on http://127.0.0.1:{args.port}/v1", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()


if __name__ == "__main__":
    main()
