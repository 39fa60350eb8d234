#!/bin/bash
# Lab test: our vmm assigns real VFIO devices (QEMU's edu and an e1000e, behind an emulated
# Intel IOMMU) to a test guest running on nested KVM, and the guest DMAs and takes MSI / MSI-X
# interrupts through them. With LAB_UPDATE=1 (default) a live update (cpr-save, cpr-exec,
# cpr-load in restart mode) happens in the middle of the DMA loop, when the vmm supports it.
#
# The lab host (L1) is a Debian cloud kernel under QEMU TCG (see linux-boot.sh); vfio-l1-init
# loads kvm and vfio, binds both devices to vfio-pci and runs /vmm with fixtures/guests/vfio.
#
# Usage: tests/lab/vfio.sh VMM
#   VMM: a statically linked vmm (RUSTFLAGS='-C target-feature=+crt-static' cargo build
#        --release --target x86_64-unknown-linux-gnu -p vmm --target-dir target/lab)
# Env: LAB_WORK (default ${TMPDIR:-/tmp}/cpr-lab), LAB_TIMEOUT (300 s), VFIO_ITERS (iterations
#      the guest must reach, 40), LAB_UPDATE (number of live updates in the middle, 1),
#      LAB_EXEC_FAIL (1: also make one cpr-exec fail and check the guest carries on),
#      LAB_BASELINE (1: afterwards the same live update of a guest without devices, for the
#      pause without VFIO in the same lab), LAB_TRANSFER (number of chained cpr-transfers to
#      successors started with -incoming, after the restart-mode updates, 0),
#      LAB_TRANSFER_KILL (transfer steps, e.g. "ready restored", at each of which a successor
#      stops itself and is killed before "go": the guest must go on in the old process),
#      LAB_INTX (1: then fixtures/guests/vfio-intx, whose edu interrupts stay on INTx, through
#      a restart-mode update and, with LAB_TRANSFER, a transfer), LAB_MEMLOCK (1: then the vfio
#      guest in unprivileged vmms: a successor whose RLIMIT_MEMLOCK is below guest RAM must be
#      refused before the pause, one with room must take the guest).
# Exit status: 0 iff the lab printed "RESULT: PASS"; 1 on failure; 2 if something is missing.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
. "$HERE/lab-common.sh"
VMM=${1:?usage: vfio.sh VMM}
W=${LAB_WORK:-${TMPDIR:-/tmp}/cpr-lab}

lab_need qemu-system-x86_64 cpio gzip apt-cache apt-get dpkg-deb timeout
lab_need_static "$VMM"
GUEST=$ROOT/fixtures/guests/vfio
lab_need_file "$GUEST" "make -C fixtures/guests"

# The kernel (kvm and vfio modules): as linux-boot.sh.
lab_debian_kernel

R1=$W/rootfs-vfio
lab_rootfs "$R1" lib/modules
lab_modules "$R1/lib/modules" vfio
cp "$VMM" "$R1/vmm"
cp "$GUEST" "$R1/vfio-guest"
cp "$ROOT/fixtures/guests/vfio-intx" "$R1/vfio-intx-guest"
cp "$ROOT/fixtures/guests/counter" "$R1/counter-guest"
cp "$HERE/vfio-l1-init" "$R1/init"
{
    printf 'VFIO_ITERS=%q\n' "${VFIO_ITERS:-40}"
    printf 'LAB_UPDATE=%q\n' "${LAB_UPDATE:-1}"
    printf 'LAB_EXEC_FAIL=%q\n' "${LAB_EXEC_FAIL:-0}"
    printf 'LAB_BASELINE=%q\n' "${LAB_BASELINE:-0}"
    printf 'LAB_TRANSFER=%q\n' "${LAB_TRANSFER:-0}"
    printf 'LAB_TRANSFER_KILL=%q\n' "${LAB_TRANSFER_KILL:-}"
    printf 'LAB_INTX=%q\n' "${LAB_INTX:-0}"
    printf 'LAB_MEMLOCK=%q\n' "${LAB_MEMLOCK:-0}"
} > "$R1/lab.env"
mkcpio "$R1" "$W/initrd-vfio.gz"

echo "vfio.sh: booting the lab ($KV) with edu and e1000e behind an emulated IOMMU"
lab_boot "${LAB_TIMEOUT:-300}" "$K/boot/vmlinuz-$KV" "$W/initrd-vfio.gz" "$LAB_APPEND intel_iommu=on" \
    "$W/vfio-last.log" "${LAB_VFIO_DEVICES[@]}"
lab_passed "$W/vfio-last.log"
