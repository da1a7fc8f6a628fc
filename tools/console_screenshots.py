"""``make console-screenshots``: the console's pages as PNG files in
docs/images/, for docs/console.md.

Starts a throwaway PostgreSQL (or uses CHRONICLE_TEST_DATABASE_URL's
server, as the test suite does), three replicas in this process sharing
it, the console on the first with authentication on, a little load from
a few clients (accounts opened, deposits, withdrawals some of which are
refused), two subscription groups (one consumed by two workers that park
one account's deposits, each connected to another replica; one nobody
consumes), then Debian's headless
chromium to log in and photograph each page.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank  # noqa: E402
from domain_plugins.box.protos.box.v1 import box_pb2 as box  # noqa: E402
from service.app import Application, start  # noqa: E402
from service.client import ChronicleClient, Delivery  # noqa: E402
from tests.support.browser import Browser, start_chromium  # noqa: E402
from tests.support.cluster import settled  # noqa: E402
from tests.support.grpc_client import TEST_SETTINGS, Client, command, connect  # noqa: E402
from tests.support.postgres import start_cluster  # noqa: E402
from tests.support.security import POLICY, api_key_file, bearer, write  # noqa: E402

KEY = "screenshot-operator-key-0123456789"
IMAGES = ROOT / "docs" / "images"
OWNERS = ["ann", "bob", "cem", "dua", "eve", "fay"]


async def load(client: Client, stop: asyncio.Event) -> None:
    """Deposits and withdrawals on 24 accounts until ``stop``; one in five
    withdrawals asks for more than the balance and is refused."""
    rng = random.Random(7)
    while not stop.is_set():
        account = f"acc-{rng.randrange(24):02d}"
        if rng.random() < 0.7:
            message: bank.Deposit | bank.Withdraw = bank.Deposit(amount=rng.randrange(1, 200))
        else:
            message = bank.Withdraw(amount=rng.choice([5, 10, 5_000]))
        with contextlib.suppress(grpc.aio.AioRpcError):  # refusals are part of the picture
            await client.submit(command(account, message, user_id="root"))
        await asyncio.sleep(rng.uniform(0.005, 0.03))


async def consume(client: ChronicleClient, group: str, consumer: str) -> None:
    """Acknowledge everything but acc-03's deposits, which it cannot take:
    they are parked after their third delivery."""
    async with client.consume(group, consumer=consumer) as deliveries:
        async for delivery in deliveries:
            await handle(delivery)


async def handle(delivery: Delivery) -> None:
    if delivery.event.aggregate_id == "acc-03" and delivery.event.event_type == "bank.v1.MoneyDeposited":
        await delivery.nack("the ledger refuses deposits to a frozen account")
    else:
        await delivery.ack()


async def main() -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    cluster = start_cluster()
    url = cluster.create_database()
    folder = Path(tempfile.mkdtemp())
    base = replace(
        TEST_SETTINGS,
        database_url=url,
        auth=True,
        policy_file=write(folder / "policy.toml", POLICY),
        api_keys_file=api_key_file(folder / "keys.toml", [(KEY, "root", ["teller", "boxer"])]),
        lease_seconds=3.0,
        poll_seconds=0.2,
    )
    apps: list[Application] = [
        await start(replace(base, console_listen="127.0.0.1:0", console_sample_seconds=1.0)),
        await start(base),
        await start(base),
    ]
    driver = await asyncio.to_thread(start_chromium, width=1280, height=1000)
    stop = asyncio.Event()
    try:
        await settled(apps)
        async with (
            connect(apps[0].address, interceptors=bearer(KEY)) as client,
            ChronicleClient.connect(apps[0].address, token=KEY) as groups_client,
            ChronicleClient.connect(apps[1].address, token=KEY) as second_groups_client,
        ):
            for number in range(24):
                owner = OWNERS[number % len(OWNERS)]
                await client.submit(command(f"acc-{number:02d}", bank.OpenAccount(owner=owner), user_id="root"))
            await client.submit(
                command(
                    "acc-07",
                    bank.Deposit(
                        amount=250,
                    ),
                    user_id="root",
                    metadata={"note": "<script>alert('not run')</script>"},
                )
            )
            for number in range(5):
                await client.submit(command(f"box-{number}", box.CreateBox(name=f"box {number}"), user_id="root"))
            await groups_client.groups.create(
                "billing", aggregate_types=["Account"], segments=4, max_delivery_attempts=3, retry_backoff=0.05
            )
            await groups_client.groups.create("statements", aggregate_types=["Account"], segments=8)
            # One worker on the console's replica, one on another: the group's
            # page shows where each is connected.
            consumers = [
                asyncio.ensure_future(consume(groups_client, "billing", "worker-1")),
                asyncio.ensure_future(consume(second_groups_client, "billing", "worker-2")),
            ]
            loaders = [asyncio.ensure_future(load(client, stop)) for _ in range(4)]
            await asyncio.sleep(40)  # forty samples of the load
            assert apps[0].console is not None
            browser = Browser(driver, f"http://{apps[0].console.address}")

            async def shoot(name: str) -> None:
                await browser.run(lambda: driver.save_screenshot(str(IMAGES / f"console-{name}.png")))
                print(f"docs/images/console-{name}.png")

            await browser.get("/login")
            await shoot("login")
            await browser.log_in(KEY)
            await browser.get("/log?q=acc-0")
            await shoot("log")
            await browser.get("/aggregates/acc-07")
            await shoot("aggregate")
            await browser.get("/tail")
            await browser.wait_until(lambda d: len(d.find_elements("css selector", "#tail tr[data-position]")) > 20)
            await shoot("tail")
            await browser.get("/projections")
            await shoot("projections")
            await browser.get("/groups")
            await shoot("groups")
            await browser.get("/groups/billing")
            await shoot("group")
            await browser.get("/reactions/bank.transfers")
            await shoot("reaction")
            await browser.get("/audit")
            await shoot("audit")
            await browser.get("/load")
            await shoot("load")
            await browser.get("/cluster")
            await shoot("cluster")
            await browser.run(lambda: driver.get("about:blank"))
            stop.set()
            await asyncio.gather(*loaders)
            for consumer in consumers:
                consumer.cancel()
            await asyncio.gather(*consumers, return_exceptions=True)
    finally:
        driver.quit()
        for app in apps:
            await app.stop(grace=1.0, drain=0)
        cluster.drop_database(url)


if __name__ == "__main__":
    asyncio.run(main())
