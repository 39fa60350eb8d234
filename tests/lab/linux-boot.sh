#!/bin/bash
# Lab test: our vmm boots Linux to a shell prompt on real (nested) KVM.
#
# The build machines' /dev/kvm is too slow to boot Linux, so this boots a "lab host" (L1): a
# Debian cloud kernel under QEMU's software emulator (TCG) with an AMD CPU that has SVM and
# nested paging, whose own /dev/kvm runs guests at full speed. Inside it, l1-init runs our
# static vmm with an L2 guest: the same Debian kernel (bzImage) and a busybox initramfs whose
# init (l2-init) starts a shell on ttyS0. l1-init feeds the L2 console to console-watch.awk,
# which waits for the shell prompt, types a command and checks the answer (including the
# number of CPUs the guest brought up); l1-init then
# prints the L2 boot time (vmm start to prompt) and "RESULT: PASS".
# The lab's clocks are wall clocks of an emulated machine: on a busy host every time it
# reports stretches, so the host's load average is printed next to it.
#
# Usage: tests/lab/linux-boot.sh VMM
#   VMM: a statically linked vmm, e.g. built with
#     RUSTFLAGS='-C target-feature=+crt-static' cargo build --release \
#       --target x86_64-unknown-linux-gnu -p vmm --target-dir target/lab
# Needs the Debian packages in tests/lab/REQUIREMENTS, and apt's package lists (apt-get update)
# to fetch the kernel the first time.
# Env: LAB_WORK  work and cache dir (default ${TMPDIR:-/tmp}/cpr-lab; the kernel is kept there)
#      LAB_TIMEOUT  seconds for the whole lab run (default 300)
#      L2_APPEND  L2 kernel command line (default "console=ttyS0 panic=-1 quiet"; add
#                 earlyprintk=serial,ttyS0 and drop quiet to debug)
#      L2_CPUS  L2 vCPUs (2; the guest must bring them all up)
#      L2_MEM  L2 RAM in MiB (256)   L2_TIMEOUT  seconds to wait for the L2 prompt (120)
#      L2_ARGS  more vmm options for the L2 guest, e.g. "-smp 2"
#      L2_KERNEL  L2 kernel (bzImage or vmlinux; default: the Debian kernel the lab boots)
#      LAB_MARKS  words to time on the L2 console before the prompt (see l1-init)
#      LAB_UPDATE  1: instead, boot with memfd RAM, live-update the vmm (cpr-save restart,
#                  cpr-exec, cpr-load) at the prompt and check the guest goes on (update-l1-init)
# Exit status: 0 iff the lab printed "RESULT: PASS"; 1 on failure; 2 if something is missing.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lab-common.sh"
VMM=${1:?usage: linux-boot.sh VMM}
W=${LAB_WORK:-${TMPDIR:-/tmp}/cpr-lab}
L2_PROMPT='l2-shell'  # followed by '#': see l2-init and console-watch.awk

lab_need qemu-system-x86_64 cpio gzip apt-cache apt-get dpkg-deb timeout
lab_need_static "$VMM"

# 1. The kernel, downloaded once into $W/dl.
lab_debian_kernel

# 2. The L2 guest's initramfs: busybox and l2-init.
lab_l2_initrd "$W/rootfs-l2" "$W/initrd-l2.gz"

# 3. The lab host's initramfs: busybox, KVM modules, our vmm, the L2 kernel and initramfs.
R1=$W/rootfs-l1
lab_rootfs "$R1" lib/modules l2
lab_modules "$R1/lib/modules" kvm
cp "$VMM" "$R1/vmm"
cp "${L2_KERNEL:-$K/boot/vmlinuz-$KV}" "$R1/l2/vmlinuz"
cp "$W/initrd-l2.gz" "$R1/l2/initrd.gz"
# LAB_UPDATE=1: after the prompt, a restart-mode live update of the running guest.
if [ "${LAB_UPDATE:-0}" = 1 ]; then cp "$HERE/update-l1-init" "$R1/init"; else cp "$HERE/l1-init" "$R1/init"; fi
cp "$HERE/console-watch.awk" "$R1/"
{
    printf 'L2_APPEND=%q\n' "${L2_APPEND:-console=ttyS0 panic=-1 quiet}"
    printf 'L2_MEM=%q\n' "${L2_MEM:-256}"
    printf 'L2_CPUS=%q\n' "${L2_CPUS:-2}"
    printf 'L2_TIMEOUT=%q\n' "${L2_TIMEOUT:-120}"
    printf 'L2_PROMPT=%q\n' "$L2_PROMPT"
    printf 'LAB_MARKS=%q\n' "${LAB_MARKS:-}"
    printf 'L2_ARGS=%q\n' "${L2_ARGS:-}"
} > "$R1/lab.env"
mkcpio "$R1" "$W/initrd-l1.gz"

# 4. Boot the lab host.
echo "linux-boot.sh: booting the lab ($KV); host load average: $(lab_loadavg)"
lab_boot "${LAB_TIMEOUT:-300}" "$K/boot/vmlinuz-$KV" "$W/initrd-l1.gz" "$LAB_APPEND" "$W/last.log"
echo "linux-boot.sh: host load average after: $(lab_loadavg)"
lab_passed "$W/last.log"
