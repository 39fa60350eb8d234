#!/usr/bin/env python3
"""A restart-mode live update driven over one QMP connection with qemu.qmp (PyPI).

Usage: cpr_restart.py SOCKET IMAGE ARGV_JSON
The connection that issues cpr-exec stays open: the new vmm answers cpr-exec on it and
takes cpr-load on it, without a new greeting or negotiation. Prints one line per step.
"""
import asyncio
import json
import sys

from qemu.qmp import QMPClient


def check(what, got, want):
    if got != want:
        print(f"MISMATCH {what}: got {got!r}, want {want!r}")
        sys.exit(2)


async def status(qmp):
    s = await qmp.execute("query-status")
    print(f"status {s['status']}")
    return s["status"]


async def next_event(qmp):
    return await asyncio.wait_for(qmp.events.get(), timeout=60)


async def main(path, image, argv):
    qmp = QMPClient("cpr-tests")
    await qmp.connect(path)
    check("running", await status(qmp), "running")
    await qmp.execute("cpr-save", {"filename": image, "mode": "restart"})
    ev = await next_event(qmp)
    print(f"event {ev['event']}")
    ev = await next_event(qmp)
    print(f"event {ev['event']} mode={ev['data']['mode']}")
    check("postmigrate", await status(qmp), "postmigrate")
    before = (await qmp.execute("query-ram-digest"))["digest"]
    await qmp.execute("cpr-exec", {"argv": argv})
    print("cpr-exec returned")
    check("prelaunch", await status(qmp), "prelaunch")
    after = (await qmp.execute("query-ram-digest"))["digest"]
    check("digest", after, before)
    print("digest unchanged")
    await qmp.execute("cpr-load", {"filename": image})
    ev = await next_event(qmp)
    check("load event", ev["event"], "CPR_LOAD")
    print(f"event {ev['event']} has pause-us" if "pause-us" in ev["data"]["timing"] else "no pause")
    ev = await next_event(qmp)
    print(f"event {ev['event']}")
    check("running", await status(qmp), "running")
    c = await qmp.execute("query-cpr")
    print(f"query-cpr state={c['state']} last has pause-us" if "pause-us" in c["last"] else f"bad {c}")
    await qmp.execute("quit")
    await qmp.disconnect()
    print("done")


asyncio.run(main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3])))
