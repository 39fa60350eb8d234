#!/usr/bin/env python3
"""Drives the VMM's QMP socket with the QEMU project's own client, qemu.qmp (PyPI).

Usage: run_states.py SOCKET
Walks the run states prelaunch -> running -> paused -> running, checks the STOP and RESUME
events, then quits. Prints one line per step; exits non-zero on any mismatch.
"""
import asyncio
import sys

from qemu.qmp import ExecuteError, QMPClient


def check(what, got, want):
    if got != want:
        print(f"MISMATCH {what}: got {got!r}, want {want!r}")
        sys.exit(2)


async def status(qmp):
    s = await qmp.execute("query-status")
    print(f"status {s['status']} running={s['running']}")
    return s


async def next_event(qmp):
    # Bounded wait so a missing event fails the test instead of hanging it.
    ev = await asyncio.wait_for(qmp.events.get(), timeout=60)
    ts = ev["timestamp"]
    check("timestamp fields", sorted(ts), ["microseconds", "seconds"])
    print(f"event {ev['event']}")
    return ev


async def main(path):
    qmp = QMPClient("cpr-tests")
    await qmp.connect(path)  # reads the greeting and negotiates capabilities
    ver = qmp.greeting.QMP.version
    check("greeting version keys", sorted(ver["qemu"]), ["major", "micro", "minor"])
    print(f"greeting package={ver['package']} capabilities={list(qmp.greeting.QMP.capabilities)}")

    check("prelaunch", (await status(qmp))["status"], "prelaunch")
    await qmp.execute("cont")
    check("resume event", (await next_event(qmp))["event"], "RESUME")
    check("running", (await status(qmp))["status"], "running")
    await qmp.execute("stop")
    check("stop event", (await next_event(qmp))["event"], "STOP")
    check("paused", (await status(qmp))["status"], "paused")
    await qmp.execute("cont")
    check("resume event", (await next_event(qmp))["event"], "RESUME")
    check("running again", (await status(qmp))["status"], "running")

    try:
        await qmp.execute("no-such-command")
        print("no-such-command did not fail")
        sys.exit(2)
    except ExecuteError as err:
        print(f"error {err.error_class}: {err}")

    out = await qmp.execute("human-monitor-command", {"command-line": "info status"})
    print(f"hmp {out.strip()}")
    names = {c["name"] for c in await qmp.execute("query-commands")}
    check("query-commands has quit", "quit" in names, True)

    await qmp.execute("quit")
    ev = await next_event(qmp)
    print(f"shutdown guest={ev['data']['guest']} reason={ev['data']['reason']}")
    try:
        await qmp.disconnect()
    except EOFError:
        # The server hangs up after quit; QEMU's own machine.py expects the same.
        pass
    print("done")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
