"""The webhook benchmark's own parts: the receiver counts each webhook once and checks every
signature, and the driver's options reach the load it borrows from bench/relay_bench.py."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from bench import webhooks
from bench.webhook_receiver import Counter, listen
from relay.webhooks import keys


async def test_receiver_counts_once_and_checks_signatures() -> None:
    counter = Counter()
    counter.reset("SECRETKEY")
    server, port = await listen(counter)
    body = b'{"type":"delivered","data":{}}'
    ts = int(time.time())
    good = keys.signature(b"SECRETKEY", "msg_1", ts, body)
    try:
        async with aiohttp.ClientSession() as http:
            for webhook_id, signature in (("msg_1", good), ("msg_1", good), ("msg_2", good)):
                headers = {
                    "webhook-id": webhook_id,
                    "webhook-timestamp": str(ts),
                    "webhook-signature": signature,
                }
                async with http.post(
                    f"http://127.0.0.1:{port}/h", data=body, headers=headers
                ) as resp:
                    assert resp.status == 204
            # A request that is not HTTP is answered 400 and the connection closed.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"NOT HTTP AT ALL\r\n\r\n")
            assert (await reader.read()).startswith(b"HTTP/1.1 400 ")
            writer.close()
    finally:
        server.close()
        await server.wait_closed()
    tally = counter.tally
    assert (tally.posts, tally.distinct, tally.duplicates) == (3, 2, 1)
    # msg_2 carries msg_1's signature: refused.
    assert tally.bad_signatures == 1 and tally.types == {"delivered": 2}


def test_driver_options_reach_the_load() -> None:
    args = webhooks.parse_args(["--duration", "3", "--repeat", "2", "--webhooks", "4"])
    assert (args.duration, args.repeat, args.webhooks) == (3.0, 2, 4)
    assert args.targets == ["relay"] and args.database == ["sqlite"]
