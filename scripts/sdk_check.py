#!/usr/bin/env python3
"""The official OpenAI Python SDK against `quantized demo`, as a new user would use it.

Usage: scripts/sdk_check.py [path/to/quantized]   (default: target/debug/quantized)
Starts the demo on a free port in a temporary directory, runs the checks, stops the demo
with Ctrl-C (SIGINT), and prints "sdk: N passed, M failed".
"""
import os
import signal
import subprocess
import sys
import tempfile
import traceback

import openai
from openai import OpenAI

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

        for name, fn in [("chat completion", chat), ("streaming chat completion", stream), ("models.list", models),
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
    print(f"sdk: {passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
