"""A minimal fake of OpenRouter (/openrouter/chat/completions) and Anthropic
(/anthropic/messages) for scripts/sdk_check.py: standard library only, 127.0.0.1 only."""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TEXT = "Hello from the fake upstream"
PROMPT_TOKENS, COMPLETION_TOKENS = 11, 7


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep the check's output readable
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        stream = bool(body.get("stream"))
        if self.path == "/openrouter/chat/completions":
            if self.headers.get("Authorization", "") != "Bearer sk-or-fake":
                return self.send_json(401, {"error": {"code": 401, "message": "bad key"}})
            return self.openrouter_stream(body) if stream else self.send_json(200, self.openrouter_completion(body))
        if self.path == "/anthropic/messages":
            if self.headers.get("x-api-key") != "sk-ant-fake" or not self.headers.get("anthropic-version"):
                return self.send_json(401, {"type": "error", "error": {"type": "authentication_error", "message": "bad key"}})
            return self.anthropic_stream(body) if stream else self.send_json(200, self.anthropic_message(body))
        self.send_json(404, {"error": {"message": "no such route"}})

    def send_json(self, status, value):
        data = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def start_sse(self):
        # Chunked, as the real upstreams send streams (awc reads no close-delimited bodies).
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def write_chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def end_sse(self):
        self.wfile.write(b"0\r\n\r\n")

    def openrouter_completion(self, body):
        return {"id": "gen-fake", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": TEXT}}],
                "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS,
                          "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS, "cost": 0.0001}}

    def openrouter_stream(self, body):
        self.start_sse()
        self.write_chunk(b": OPENROUTER PROCESSING\n\n")
        base = {"id": "gen-fake", "object": "chat.completion.chunk", "created": int(time.time()), "model": body["model"]}
        for i, word in enumerate(TEXT.split(" ")):
            delta = {"role": "assistant", "content": word if i == 0 else " " + word}
            self.write_chunk(b"data: " + json.dumps({**base, "choices": [{"index": 0, "delta": delta}]}).encode() + b"\n\n")
        self.write_chunk(b"data: " + json.dumps({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}).encode() + b"\n\n")
        usage = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS, "total_tokens": 18}
        self.write_chunk(b"data: " + json.dumps({**base, "choices": [], "usage": usage}).encode() + b"\n\ndata: [DONE]\n\n")
        self.end_sse()

    def anthropic_message(self, body):
        return {"id": "msg_fake", "type": "message", "role": "assistant", "model": body["model"],
                "content": [{"type": "text", "text": TEXT}], "stop_reason": "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": COMPLETION_TOKENS}}

    def anthropic_stream(self, body):
        self.start_sse()

        def event(name, data):
            self.write_chunk(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())

        event("message_start", {"type": "message_start", "message": {
            "id": "msg_fake", "type": "message", "role": "assistant", "model": body["model"], "content": [],
            "stop_reason": None, "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": 1}}})
        event("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
        event("ping", {"type": "ping"})
        for i, word in enumerate(TEXT.split(" ")):
            event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                          "delta": {"type": "text_delta", "text": word if i == 0 else " " + word}})
        event("content_block_stop", {"type": "content_block_stop", "index": 0})
        event("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                "usage": {"output_tokens": COMPLETION_TOKENS}})
        event("message_stop", {"type": "message_stop"})
        self.end_sse()


def start():
    """Starts the fake on a free port; returns (server, base URL)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"
