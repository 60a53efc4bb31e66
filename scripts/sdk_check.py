#!/usr/bin/env python3
"""The official OpenAI Python SDK against the gateway, as a real client.

Usage: scripts/sdk_check.py [path/to/quantized]   (default: target/debug/quantized)
1. `quantized demo` on a free port in a temporary directory, as a new user would run it.
2. `quantized serve` in front of a fake OpenRouter and a fake Anthropic (scripts/fake_upstream.py),
   set up through the admin API: chat with and without streaming through both providers.
Each process is stopped by its own PID. Prints "sdk: N passed, M failed".
"""
import os
import signal
import subprocess
import sys
import tempfile
import threading
import traceback

import json
import re
import urllib.request

import openai
from openai import OpenAI

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fake_upstream  # noqa: E402

BIN = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "target/debug/quantized")


def start_demo(workdir):
    proc = subprocess.Popen([BIN, "demo", "--port", "0"], cwd=workdir, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env={**os.environ, "RUST_LOG": "warn"})
    port = key = None
    for line in proc.stdout:
        if "running on http://127.0.0.1:" in line:
            port = int(line.split("http://127.0.0.1:")[1].split()[0])
        if line.strip().startswith("API key:"):
            key = line.split(":", 1)[1].strip()
        if port and key:
            return proc, port, key
    raise RuntimeError("the demo exited before printing its key")


def start_serve(workdir, upstream_url):
    config = os.path.join(workdir, "quantized.toml")
    with open(config, "w") as f:
        f.write(f"""listen = "127.0.0.1:0"
database = "{workdir}/gateway.db"
admin_token = "sdk-check-admin-token"
[providers.openrouter]
base_url = "{upstream_url}/openrouter"
api_key = "sk-or-fake"
[providers.anthropic]
base_url = "{upstream_url}/anthropic"
api_key = "sk-ant-fake"
""")
    proc = subprocess.Popen([BIN, "serve", "--config", config], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "RUST_LOG": "info"})
    for line in proc.stderr:
        found = re.search(r"listening on .* \(port (\d+)\)", line)
        if found:
            # Keep reading the log so the gateway never blocks on a full pipe.
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, int(found.group(1))
    raise RuntimeError("the gateway exited before listening")


def admin(port, method, path, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/admin/v1{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": "Bearer sdk-check-admin-token",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req) as res:
        return json.loads(res.read() or b"null")


def provider_checks(check):
    with tempfile.TemporaryDirectory() as workdir:
        server, upstream_url = fake_upstream.start()
        proc, port = start_serve(workdir, upstream_url)
        try:
            admin(port, "POST", "/institutions", {"alias": "uni", "name": "Uni"})
            admin(port, "POST", "/license-types", {"alias": "student", "name": "Student", "institution": "uni",
                                                   "default_micro_credits": 1_000_000})
            lic = admin(port, "POST", "/licenses", {"institution": "uni", "license_type": "student"})
            key = admin(port, "POST", f"/licenses/{lic['license_id']}/keys", {})["key"]
            client = OpenAI(api_key=key, base_url=f"http://127.0.0.1:{port}/v1", max_retries=0)
            for label, model, headers in [
                ("openrouter", "openai/gpt-4.1-mini", {}),
                ("anthropic", "anthropic/claude-sonnet-4-20250514", {}),
                ("anthropic native id", "claude-sonnet-4-20250514", {"X-Quantized-Provider": "anthropic"}),
            ]:
                def plain(model=model, headers=headers):
                    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}],
                                                       extra_headers=headers)
                    assert r.choices[0].message.content == fake_upstream.TEXT, r
                    assert r.usage.prompt_tokens == 11 and r.usage.completion_tokens == 7, r.usage
                    assert r.usage.model_extra["credits_used"] > 0, r.usage

                def streamed(model=model, headers=headers):
                    text, usage = "", None
                    for chunk in client.chat.completions.create(
                            model=model, messages=[{"role": "user", "content": "Hi"}], stream=True,
                            extra_headers=headers):
                        if chunk.choices:
                            text += chunk.choices[0].delta.content or ""
                        if chunk.usage:
                            usage = chunk.usage
                    assert text == fake_upstream.TEXT, text
                    assert usage is not None and usage.completion_tokens == 7, usage

                check(f"{label}: chat completion", plain)
                check(f"{label}: streaming chat completion", streamed)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
            server.shutdown()


def main():
    passed, failed = 0, 0
    with tempfile.TemporaryDirectory() as workdir:
        proc, port, key = start_demo(workdir)
        client = OpenAI(api_key=key, base_url=f"http://127.0.0.1:{port}/v1", max_retries=0)

        def check(name, fn):
            nonlocal passed, failed
            try:
                fn()
                passed += 1
                print(f"ok   {name}")
            except Exception:  # noqa: BLE001 - report every failure and go on
                failed += 1
                print(f"FAIL {name}")
                traceback.print_exc()

        def chat():
            r = client.chat.completions.create(model="demo/echo", messages=[{"role": "user", "content": "Hi SDK"}])
            assert r.choices[0].message.content == "Hello from the Quantized demo model! You said: Hi SDK", r
            assert r.usage.prompt_tokens == 3 and r.usage.completion_tokens == 10, r.usage
            extra = r.usage.model_extra
            assert extra["credits_used"] > 0 and extra["credits_remaining"] < 5_000_000, extra

        def stream():
            text, usage = "", None
            for chunk in client.chat.completions.create(
                    model="demo/echo", messages=[{"role": "user", "content": "Hi stream"}], stream=True):
                if chunk.choices:
                    text += chunk.choices[0].delta.content or ""
                if chunk.usage:
                    usage = chunk.usage
            assert text == "Hello from the Quantized demo model! You said: Hi stream", text
            assert usage is not None and usage.model_extra["credits_used"] > 0, usage

        def models():
            ids = [m.id for m in client.models.list()]
            assert "demo/echo" in ids and "openai/gpt-4.1-mini" in ids, ids

        def not_found():
            try:
                client.chat.completions.create(model="nonexistent-model", messages=[{"role": "user", "content": "x"}])
            except openai.NotFoundError as e:
                assert e.body == {"message": "Model 'nonexistent-model' not found"}, e.body
            else:
                raise AssertionError("no 404")

        def bad_request():
            try:
                client.chat.completions.create(model="demo/echo", messages=[{"role": "user", "content": "x"}], n=2)
            except openai.BadRequestError as e:
                assert e.body == {"message": "unknown field: 'n'"}, e.body
            else:
                raise AssertionError("no 400")

        def bad_key():
            bad = OpenAI(api_key="sk-quantized-wrong", base_url=f"http://127.0.0.1:{port}/v1", max_retries=0)
            try:
                bad.chat.completions.create(model="demo/echo", messages=[{"role": "user", "content": "x"}])
            except openai.AuthenticationError as e:
                assert e.body == {"message": "Invalid API key"}, e.body
            else:
                raise AssertionError("no 401")

        def embeddings():
            # The SDK asks for base64 by default and decodes it itself.
            r = client.embeddings.create(model="demo/embed", input=["one two", "three"])
            assert [d.index for d in r.data] == [0, 1] and len(r.data[0].embedding) == 16, r
            assert r.usage.prompt_tokens == 3 and r.usage.total_tokens == 3, r.usage
            assert r.usage.model_extra["credits_used"] == 2, r.usage
            floats = client.embeddings.create(model="demo/embed", input="one two", encoding_format="float")
            assert all(abs(a - b) < 1e-6 for a, b in zip(floats.data[0].embedding, r.data[0].embedding))

        def responses():
            r = client.responses.create(model="demo/echo", input="Hi responses")
            assert r.output_text == "Hello from the Quantized demo model! You said: Hi responses", r
            assert r.usage.input_tokens == 3 and r.usage.output_tokens == 10, r.usage
            assert r.usage.model_extra["credits_used"] > 0, r.usage

        def responses_stream():
            text, final = "", None
            for event in client.responses.create(model="demo/echo", input="Hi stream", stream=True):
                if event.type == "response.output_text.delta":
                    text += event.delta
                if event.type == "response.completed":
                    final = event.response
            assert text == "Hello from the Quantized demo model! You said: Hi stream", text
            assert final is not None and final.usage.model_extra["credits_used"] > 0, final

        for name, fn in [("chat completion", chat), ("streaming chat completion", stream), ("models.list", models),
                         ("embeddings", embeddings), ("responses", responses),
                         ("streaming responses", responses_stream),
                         ("404 unknown model", not_found), ("400 unknown field", bad_request),
                         ("401 bad key", bad_key)]:
            check(name, fn)

        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
        if code == 0:
            passed += 1
            print("ok   demo stops cleanly on Ctrl-C")
        else:
            failed += 1
            print(f"FAIL demo exit code {code} after Ctrl-C")

        provider_checks(check)
    print(f"sdk: {passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
