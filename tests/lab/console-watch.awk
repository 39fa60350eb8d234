# Reads the L2 serial console (through the lab's L1 init) and drives the check:
#   1. optional milestones: the words of `marks`, in order, each timed from vmm start;
#   2. the shell prompt (`prompt` followed by '#'): prints the boot time, types a command
#      into the guest console (the FIFO `input`);
#   3. the shell's answer: exits 0. End of input before that (vmm exited or was killed by
#      the watchdog) exits 1.
# Records end at a newline or '#', so a prompt is seen the moment it is printed, without
# waiting for a newline.
# Variables: t0 (uptime at vmm start), marks, prompt, input.
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
        print "echo lab-answer $((6 * 7))" > input
        close(input)
        state = "asked"
    } else if (state == "asked" && index($0, "lab-answer 42")) {
        print "lab: the L2 shell answered the typed command"
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
