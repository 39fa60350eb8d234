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
VMM=${1:?usage: vfio.sh VMM}
W=${LAB_WORK:-${TMPDIR:-/tmp}/cpr-lab}

missing() { echo "vfio.sh: $*" >&2; exit 2; }
for tool in qemu-system-x86_64 cpio gzip apt-cache apt-get dpkg-deb timeout; do
    command -v "$tool" >/dev/null || missing "$tool not found: install the packages in $HERE/REQUIREMENTS"
done
BUSYBOX=/bin/busybox
[ -x "$BUSYBOX" ] && ! LC_ALL=C ldd "$BUSYBOX" 2>/dev/null | grep -q '=>' ||
    missing "$BUSYBOX missing or not static: install busybox-static ($HERE/REQUIREMENTS)"
[ -x "$VMM" ] || missing "vmm binary $VMM not found"
LC_ALL=C ldd "$VMM" 2>/dev/null | grep -q '=>' && missing "$VMM is dynamically linked: build it with +crt-static"
GUEST=$ROOT/fixtures/guests/vfio
[ -f "$GUEST" ] || missing "$GUEST not found (make -C fixtures/guests)"
mkdir -p "$W/dl"

# The kernel (kvm and vfio modules): as linux-boot.sh, resolved through the metapackage.
PKG=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$PKG" ] || missing "apt knows no linux-image-cloud-amd64: run 'apt-get update' first"
KV=${PKG#linux-image-}
if [ ! -f "$W/kernel-$KV/boot/vmlinuz-$KV" ]; then
    ls "$W/dl/${PKG}_"*.deb >/dev/null 2>&1 || (cd "$W/dl" && apt-get download "$PKG" >/dev/null) ||
        missing "apt-get download $PKG failed"
    rm -rf "$W/kernel-$KV.tmp"
    dpkg-deb -x "$W/dl/${PKG}_"*.deb "$W/kernel-$KV.tmp"
    mv "$W/kernel-$KV.tmp" "$W/kernel-$KV"
fi
K=$W/kernel-$KV
MODS=$K/lib/modules/$KV/kernel

R1=$W/rootfs-vfio
rm -rf "$R1" && mkdir -p "$R1"/{bin,proc,sys,dev,tmp,lib/modules}
cp "$BUSYBOX" "$R1/bin/busybox"
cp "$MODS"/virt/lib/irqbypass.ko "$MODS"/arch/x86/kvm/kvm.ko "$MODS"/arch/x86/kvm/kvm-amd.ko \
   "$MODS"/drivers/vfio/vfio.ko "$MODS"/drivers/vfio/vfio_iommu_type1.ko "$MODS"/drivers/vfio/vfio_virqfd.ko \
   "$MODS"/drivers/vfio/pci/vfio-pci-core.ko "$MODS"/drivers/vfio/pci/vfio-pci.ko "$R1/lib/modules/"
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
(cd "$R1" && find . | cpio -o -H newc --quiet | gzip -1) > "$W/initrd-vfio.gz"

# intel-iommu under TCG turns on interrupt remapping (VFIO_SET_IOMMU needs it).
echo "vfio.sh: booting the lab ($KV) with edu and e1000e behind an emulated IOMMU"
set +e
timeout --foreground -k 5 "${LAB_TIMEOUT:-300}" qemu-system-x86_64 \
    -M q35 -accel tcg -cpu max -smp 1 -m 1024 \
    -nodefaults -no-user-config -nographic -serial stdio -monitor none -no-reboot \
    -device intel-iommu,intremap=on -device edu -device e1000e,romfile= \
    -kernel "$K/boot/vmlinuz-$KV" -initrd "$W/initrd-vfio.gz" \
    -append "console=ttyS0 intel_iommu=on panic=-1 quiet loglevel=3" </dev/null | tee "$W/vfio-last.log"
set -e
grep -q '^RESULT: PASS' "$W/vfio-last.log"
