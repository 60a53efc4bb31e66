"""Holds many streaming chat completions open at once and samples a process's memory.

Usage: python3 hold.py URL BODY_FILE KEY PID [STREAMS]

Opens STREAMS (default 1000) connections to URL at once, POSTs BODY_FILE on each (a streaming
request that the canned upstream trickles for a few seconds), and reads every stream to its
`data: [DONE]`. Meanwhile it samples VmRSS of PID every 50 ms and notes the RSS and the number
of open file descriptors at the moment the most streams were open (response head received,
stream not finished). Ends with one machine-readable line:
HOLD streams=… max_open=… rss_kb=… fds=… ok=… finished=… non200=… errors=… seconds=…
Standard library only.
"""

import asyncio
import os
import sys
import time
from urllib.parse import urlsplit


def vm_rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class State:
    def __init__(self):
        self.open = 0
        self.max_open = 0
        self.ok = self.done = self.non200 = self.errors = 0


async def one_stream(url, body, key, state):
    parts = urlsplit(url)
    head = (
        f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    writer = None
    opened = False
    try:
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        writer.write(head + body)
        await writer.drain()
        status = int((await reader.readline()).split()[1])
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        if status != 200:
            state.non200 += 1
            return
        state.ok += 1
        state.open += 1
        opened = True
        state.max_open = max(state.max_open, state.open)
        seen = b""
        while True:
            data = await reader.read(65536)
            if not data:
                break
            seen = seen[-64:] + data
            if b"data: [DONE]" in seen:
                state.done += 1
                break
    except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
        state.errors += 1
    finally:
        if opened:
            state.open -= 1
        if writer is not None:
            writer.close()


async def main():
    url, body_file, key, pid = sys.argv[1:5]
    streams = int(sys.argv[5]) if len(sys.argv) > 5 else 1000
    with open(body_file, "rb") as f:
        body = f.read()
    state = State()
    best = {"open": -1, "rss_kb": 0, "fds": 0}
    started = time.monotonic()
    tasks = [asyncio.create_task(one_stream(url, body, key, state)) for _ in range(streams)]
    pending = set(tasks)
    while pending:
        _, pending = await asyncio.wait(pending, timeout=0.05)
        # At the highest number of open streams, keep the highest RSS seen.
        if state.open > best["open"] or (state.open == best["open"] and state.open > 0):
            rss = vm_rss_kb(pid)
            if state.open > best["open"] or rss > best["rss_kb"]:
                best = {"open": state.open, "rss_kb": rss, "fds": len(os.listdir(f"/proc/{pid}/fd"))}
        if time.monotonic() - started > 120:
            for task in pending:
                task.cancel()
            await asyncio.wait(pending)
            break
    print(
        f"HOLD streams={streams} max_open={best['open']} rss_kb={best['rss_kb']} fds={best['fds']} "
        f"ok={state.ok} finished={state.done} non200={state.non200} errors={state.errors} "
        f"seconds={time.monotonic() - started:.1f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
