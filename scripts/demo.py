#!/usr/bin/env python3
"""The main job, end to end: a guest survives a restart-mode live update.

Starts `vmm` with the counter test guest and memfd guest RAM, lets it count, then does what
an operator does in the seed's example (cpr-save FILE restart; cpr-exec NEW-VMM -S ...;
cpr-load FILE) over the HMP monitor, then the same update in one command (cpr-exec NEW-VMM
... -incoming FILE), and prints the serial lines around each update and the guest's pause
time with its breakdown (`info cpr`).

Usage: scripts/demo.py [--vmm PATH] [--mem MIB]   (default: target/release/vmm, 256)
Only the Python standard library is used.
"""
import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATIENCE = 60  # seconds; a hang fails the demo instead of blocking forever


def fail(msg):
    print(f"demo: {msg}", file=sys.stderr)
    sys.exit(1)


def connect_unix(path, what):
    """Connects to a UNIX socket the vmm is about to create (it may not exist yet)."""
    deadline = time.monotonic() + PATIENCE
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            sock.settimeout(PATIENCE)
            return sock
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                fail(f"no {what} at {path}")
            time.sleep(0.05)


class Hmp:
    """A line-oriented HMP client on the monitor's UNIX socket."""

    def __init__(self, path):
        self.sock = connect_unix(path, "monitor")
        self.buf = b""
        self._until_prompt()  # banner

    def _until_prompt(self):
        deadline = time.monotonic() + PATIENCE
        while b"(vmm) " not in self.buf:
            if time.monotonic() > deadline:
                fail("monitor stopped answering")
            chunk = self.sock.recv(4096)
            if not chunk:
                fail("monitor closed the connection")
            self.buf += chunk
        out, _, self.buf = self.buf.partition(b"(vmm) ")
        return out.decode(errors="replace")

    def cmd(self, line):
        self.sock.sendall(line.encode() + b"\n")
        out = self._until_prompt()
        if out.startswith("Error"):
            fail(f"'{line.split()[0]}' failed: {out.strip()}")
        return out


class Serial:
    """The guest's COM1, on a UNIX socket chardev."""

    def __init__(self, path):
        self.sock = connect_unix(path, "serial socket")
        self.seen = ""

    def wait_for_lines(self, n):
        """Reads until n more complete lines arrived; returns them."""
        start = self.seen.count("\n")
        while self.seen.count("\n") < start + n:
            chunk = self.sock.recv(4096)
            if not chunk:
                fail("serial socket closed")
            self.seen += chunk.decode(errors="replace")
        return self.seen.splitlines()[start : start + n]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vmm", default=os.path.join(ROOT, "target", "release", "vmm"))
    ap.add_argument("--mem", type=int, default=256, help="guest RAM in MiB")
    args = ap.parse_args()
    if not os.access(args.vmm, os.X_OK):
        fail(f"{args.vmm} not found: run 'cargo build --release -p vmm' first")

    # The image lives in tmpfs when there is one: restart mode never needs it on disk, and
    # fsync on tmpfs costs nothing, so the pause shows the VMM rather than the disk.
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    tmp = tempfile.mkdtemp(prefix="vmm-demo-", dir=shm)
    mon, ser, img = (os.path.join(tmp, n) for n in ("mon.sock", "serial.sock", "vm.cpr"))
    vm_args = [
        "-m", str(args.mem), "-machine", "memfd-alloc=on",
        "-kernel", os.path.join(ROOT, "fixtures", "guests", "counter"),
        "-chardev", f"socket,id=ser0,path={ser},server=on,wait=off", "-serial", "chardev:ser0",
        "-chardev", f"socket,id=mon0,path={mon},server=on,wait=off", "-monitor", "chardev:mon0",
    ]
    vmm = subprocess.Popen([args.vmm, *vm_args], stdin=subprocess.DEVNULL)
    try:
        serial = Serial(ser)
        hmp = Hmp(mon)
        print(f"$ vmm {' '.join(vm_args)}")
        print("(vmm) info status\n" + hmp.cmd("info status").rstrip())
        for line in serial.wait_for_lines(3):
            print(f"  guest: {line}")
        pid = vmm.pid
        print(f"(vmm) cpr-save {img} restart")
        hmp.cmd(f"cpr-save {img} restart")
        new = [args.vmm, "-S", *vm_args]
        print(f"(vmm) cpr-exec {' '.join(new)}")
        hmp.cmd("cpr-exec " + " ".join(new))
        print("(vmm) info status\n" + hmp.cmd("info status").rstrip())
        print(f"(vmm) cpr-load {img}")
        hmp.cmd(f"cpr-load {img}")
        print("(vmm) info status\n" + hmp.cmd("info status").rstrip())
        for line in serial.wait_for_lines(3):
            print(f"  guest: {line}")
        if vmm.poll() is not None or pid != vmm.pid:
            fail("the vmm process did not survive")
        print(f"same process (pid {pid}), same guest RAM, serial client still connected")
        print("(vmm) info cpr\n" + hmp.cmd("info cpr").rstrip())
        # The same update in one command: cpr-exec saves to the -incoming FILE, and the new
        # program loads it at once (no client round trip inside the pause).
        one = [args.vmm, *vm_args, "-incoming", img]
        print(f"\n(vmm) cpr-exec {' '.join(one)}")
        hmp.cmd("cpr-exec " + " ".join(one))
        print("(vmm) info status\n" + hmp.cmd("info status").rstrip())
        for line in serial.wait_for_lines(3):
            print(f"  guest: {line}")
        if vmm.poll() is not None or pid != vmm.pid:
            fail("the vmm process did not survive the second update")
        print("(vmm) info cpr\n" + hmp.cmd("info cpr").rstrip())
        hmp.sock.sendall(b"quit\n")
        vmm.wait(timeout=PATIENCE)
    finally:
        if vmm.poll() is None:
            vmm.kill()
        for n in (mon, ser, img):
            if os.path.exists(n):
                os.unlink(n)
        os.rmdir(tmp)


if __name__ == "__main__":
    main()
