"""A TCP relay that delays every byte by a fixed time in each direction: added network latency without
``tc netem`` (this machine's kernel is built without ``CONFIG_NET_SCH_NETEM``).

Run: python benchmarks/delay_proxy.py --rtt-ms 20 LISTEN_PORT:TARGET_PORT [...]

Each pair relays 127.0.0.1:LISTEN_PORT to 127.0.0.1:TARGET_PORT; data read on either side is written to
the other ``rtt / 2`` after it arrived (order kept), so a request and its answer through one relay take
``rtt`` longer. Used by ``benchmarks/multihost.py --rtt-ms``: each served player listens on its target port
and the cluster file names its relay. The relay copies every byte in Python: it adds CPU time per byte, so
figures with it show the cost of rounds, not of bandwidth. Prints ``relaying`` once listening; runs until
killed.
"""

from __future__ import annotations

import argparse
import asyncio


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    async def read():
        while data := await reader.read(1 << 16):
            queue.put_nowait((loop.time() + delay, data))
        queue.put_nowait((None, b""))

    async def write():
        while True:
            due, data = await queue.get()
            if due is None:
                break
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        writer.close()

    try:
        await asyncio.gather(read(), write())
    except (ConnectionError, OSError):
        writer.close()


async def _serve(pairs: list[tuple[int, int]], delay: float) -> None:
    async def handler(target: int):
        async def connect(client_reader, client_writer):
            try:
                server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target)
            except OSError:
                client_writer.close()
                return
            await asyncio.gather(_pump(client_reader, server_writer, delay), _pump(server_reader, client_writer, delay))
        return connect

    servers = [await asyncio.start_server(await handler(target), "127.0.0.1", listen) for listen, target in pairs]
    print("relaying", flush=True)
    await asyncio.gather(*(server.serve_forever() for server in servers))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rtt-ms", type=float, required=True, help="added round-trip time, milliseconds")
    parser.add_argument("pairs", nargs="+", help="LISTEN_PORT:TARGET_PORT")
    args = parser.parse_args(argv)
    pairs = [tuple(int(p) for p in pair.split(":")) for pair in args.pairs]
    asyncio.run(_serve(pairs, args.rtt_ms / 2000.0))


if __name__ == "__main__":
    main()
