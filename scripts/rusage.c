// rusage FILE COMMAND ARGS...: runs COMMAND, passes SIGHUP/SIGINT/SIGTERM on to it (ssh signals
// only its direct child), and appends "maxrss_KiB wall_s user_s sys_s" of COMMAND alone to FILE.
// A C fork+exec, so that the wrapper's own pages do not count in the child's max RSS (the kernel
// carries the pre-exec high-water mark over) and the CPU times have microsecond resolution.
// Used by scripts/bench and scripts/bench-features.
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t child;
static void pass_on(int sig) { if (child > 0) kill(child, sig); }
static double secs(struct timeval t) { return t.tv_sec + t.tv_usec / 1e6; }

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    struct sigaction sa = {0};
    sa.sa_handler = pass_on;
    sigaction(SIGHUP, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    pid_t pid = fork();
    if (pid < 0) return 1;
    if (pid == 0) {
        execv(argv[2], argv + 2);
        _exit(127);
    }
    child = pid;
    int status;
    struct rusage ru;
    while (wait4(pid, &status, 0, &ru) < 0)
        if (errno != EINTR) return 1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    FILE *f = fopen(argv[1], "a");
    if (f) {
        fprintf(f, "%ld %.6f %.6f %.6f\n", ru.ru_maxrss,
                (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9,
                secs(ru.ru_utime), secs(ru.ru_stime));
        fclose(f);
    }
    return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
}
