"""A process tree shaped like a fork-mode server, whose CPU use the test knows.

    python tests/cpu_tree.py WORKERS

The root (the "hub") says ``listening on 127.0.0.1:PORT`` and forks a "fork server",
which forks WORKERS workers and reaps each as it ends: the workers are the root's
grandchildren, as the server's are. One client connects to PORT and sends lines:

- ``burn MS``: every live worker burns MS milliseconds of its own CPU; the answer is
  ``burned NS``, the nanoseconds they measured burning, in all.
- ``end MS``: one worker burns MS milliseconds and exits (its fork server reaps it);
  the answer is ``ended NS PID``.

It ends with its client or a signal (the bench ends the whole process group).
"""

from __future__ import annotations

import os
import socket
import sys
import time


def burn(ms: float) -> int:
    """Spin until this process has used ``ms`` more milliseconds of CPU; how many ns."""
    start = time.process_time_ns()
    while time.process_time_ns() - start < ms * 1e6:
        pass
    return time.process_time_ns() - start


def worker(sock: socket.socket) -> None:
    with sock, sock.makefile("rwb", buffering=0) as stream:
        for line in stream:
            command, ms = line.split()
            stream.write(b"%d %d\n" % (burn(float(ms)), os.getpid()))
            if command == b"end":
                return


def fork_server(ends: list[socket.socket]) -> None:
    for end in ends:
        if os.fork() == 0:
            for other in ends:
                if other is not end:
                    other.close()
            worker(end)
            os._exit(0)
        end.close()
    while True:
        try:
            os.wait()
        except ChildProcessError:
            os._exit(0)


def main() -> None:
    count = int(sys.argv[1])
    pairs = [socket.socketpair() for _ in range(count)]
    listener = socket.create_server(("127.0.0.1", 0))
    if os.fork() == 0:
        listener.close()
        for mine, _ in pairs:
            mine.close()
        fork_server([theirs for _, theirs in pairs])
    for _, theirs in pairs:
        theirs.close()
    live = [(mine, mine.makefile("rwb", buffering=0)) for mine, _ in pairs]
    print(f"listening on 127.0.0.1:{listener.getsockname()[1]}", flush=True)
    client, _ = listener.accept()
    with client, client.makefile("rwb", buffering=0) as stream:
        for line in stream:
            command, ms = line.split()
            if command == b"burn":
                for _, worker_stream in live:
                    worker_stream.write(b"burn %s\n" % ms)
                total = sum(int(w.readline().split()[0]) for _, w in live)
                stream.write(b"burned %d\n" % total)
            elif command == b"end" and live:
                _, worker_stream = live.pop()
                worker_stream.write(b"end %s\n" % ms)
                stream.write(b"ended " + worker_stream.readline())


if __name__ == "__main__":
    main()
