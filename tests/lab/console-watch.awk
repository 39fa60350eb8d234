# Reads the L2 serial console (through the lab's L1 init) and drives the check:
#   1. optional milestones: the words of `marks`, in order, each timed from vmm start;
#   2. the shell prompt (`prompt` followed by '#'): prints the boot time, types a command
#      into the guest console (the FIFO `input`);
#   3. the shell's answer, which includes how many CPUs the guest runs: exits 0 if it is
#      `cpus`. End of input before that (vmm exited or was killed by the watchdog) exits 1.
# Records end at a newline or '#', so a prompt is seen the moment it is printed, without
# waiting for a newline.
# Variables: t0 (uptime at vmm start), marks, prompt, input, cpus.
BEGIN {
    RS = "[#\n]"
    n = split(marks, mark, " ")
    m = 1
    state = "boot"
}
function now(    u, f) {
    getline u < "/proc/uptime"
    close("/proc/uptime")
    split(u, f, " ")
    return f[1]
}
function since(t) { return sprintf("%.2f", t - t0) }
{
    while (m <= n && index($0, mark[m])) {
        print "lab: '" mark[m] "' after " since(now()) " s"
        m++
    }
    if (state == "boot" && substr($0, length($0) - length(prompt) + 1) == prompt) {
        print "lab: L2 boot time (vmm start to shell prompt): " since(now()) " s"
        print "echo lab-answer $((6 * 7)) cpus=$(grep -c ^processor /proc/cpuinfo)" > input
        close(input)
        state = "asked"
    } else if (state == "asked" && match($0, /lab-answer 42 cpus=[0-9]+/)) {
        answer = substr($0, RSTART, RLENGTH)
        print "lab: the L2 shell answered: " answer
        if (answer != "lab-answer 42 cpus=" cpus) {
            print "lab: expected " cpus " CPU(s) online in the guest"
            exit 1
        }
        state = "done"
        exit 0
    }
    fflush()
}
END {
    if (state != "done") {
        print "lab: L2 console ended in state '" state "' (vmm exited or timed out)"
        exit 1
    }
}
