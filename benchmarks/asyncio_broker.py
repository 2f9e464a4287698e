"""The baseline: a minimal asyncio line broker, what a Python user would write instead.

`python benchmarks/asyncio_broker.py [PORT] [--host HOST]` relays every line a client
sends, as `<NAME> LINE`, to every other client. It is deliberately plain and idiomatic
(``asyncio.start_server``, one ``readline`` per line, ``write`` to each other client, no
commands, no limits, no slow-reader policy): the benchmark compares the chat server with
it, so it must be neither crippled nor tuned. Like the chat server, its first line on
stdout is ``listening on HOST:PORT``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import resource
import sys

clients: dict[asyncio.StreamWriter, bytes] = {}
guest_numbers = itertools.count(1)


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    name = f"guest{next(guest_numbers)}"
    prefix = f"<{name}> ".encode()
    clients[writer] = prefix
    try:
        while True:
            try:
                line = await reader.readline()
            except (ValueError, ConnectionError):  # an overlong line or a reset
                break
            if not line:
                break
            if not line.endswith(b"\n"):
                line += b"\n"  # the last line before EOF
            message = prefix + line
            for other in clients:
                if other is not writer and not other.is_closing():
                    other.write(message)
    finally:
        del clients[writer]
        writer.close()


async def serve(host: str, port: int) -> None:
    server = await asyncio.start_server(handle, host, port, backlog=4096)
    address = server.sockets[0].getsockname()
    print(f"listening on {address[0]}:{address[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> int:
    parser = argparse.ArgumentParser(description="A minimal asyncio chat line broker.")
    parser.add_argument("port", nargs="?", type=int, default=4243)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    # Thousands of clients need thousands of descriptors: take what the hard limit allows.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        asyncio.run(serve(args.host, args.port))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"asyncio_broker: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
