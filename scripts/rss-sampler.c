/* rss-sampler BIN FILE: every 10 ms, sums VmRSS and RssAnon over the processes whose argv[0] is
 * BIN (except `BIN sim`) and remembers each one's last VmHWM, and every 100 ms sums their Pss
 * (shared pages divided among the processes that map them); on SIGTERM writes "peak_sum_rss_KiB
 * sum_vmhwm_KiB peak_sum_anon_KiB max_processes processes_seen peak_sum_pss_KiB" to FILE.
 * Compiled and run by scripts/bench and scripts/bench-fleet. */
#define _GNU_SOURCE
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAXP 65536
static volatile sig_atomic_t stop;
static void on_term(int sig) { (void)sig; stop = 1; }
static int seen_pid[MAXP];
static long seen_hwm[MAXP];
static int nseen;

static int matches(const char *pid, const char *bin) {
    char path[64], buf[4096];
    snprintf(path, sizeof path, "/proc/%s/cmdline", pid);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    if (strcmp(buf, bin) != 0) return 0;
    size_t first = strlen(buf) + 1;
    return !(first < n && strcmp(buf + first, "sim") == 0);
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    signal(SIGTERM, on_term);
    signal(SIGINT, on_term);
    long peak_rss = 0, peak_anon = 0, peak_pss = 0;
    int max_procs = 0;
    struct timespec tick = {0, 10 * 1000 * 1000};
    for (unsigned n = 0; !stop; n++) {
        long rss = 0, anon = 0, pss = 0;
        int procs = 0;
        DIR *d = opendir("/proc");
        struct dirent *e;
        while (d && (e = readdir(d))) {
            if (e->d_name[0] < '1' || e->d_name[0] > '9' || !matches(e->d_name, argv[1]))
                continue;
            char path[64], line[256];
            snprintf(path, sizeof path, "/proc/%s/status", e->d_name);
            FILE *f = fopen(path, "r");
            if (!f) continue;
            long hwm = -1, vmrss = 0, rssanon = 0;
            while (fgets(line, sizeof line, f)) {
                sscanf(line, "VmHWM: %ld", &hwm);
                sscanf(line, "VmRSS: %ld", &vmrss);
                sscanf(line, "RssAnon: %ld", &rssanon);
            }
            fclose(f);
            if (hwm < 0) continue;
            snprintf(path, sizeof path, "/proc/%s/smaps_rollup", e->d_name);
            if (n % 10 == 0 && (f = fopen(path, "r"))) {
                long kib;
                while (fgets(line, sizeof line, f))
                    if (sscanf(line, "Pss: %ld", &kib) == 1) pss += kib;
                fclose(f);
            }
            procs++;
            rss += vmrss;
            anon += rssanon;
            int pid = atoi(e->d_name), i;
            for (i = 0; i < nseen && seen_pid[i] != pid; i++) {}
            if (i == nseen && nseen < MAXP) seen_pid[nseen++] = pid;
            if (i < MAXP && hwm > seen_hwm[i]) seen_hwm[i] = hwm;
        }
        if (d) closedir(d);
        if (rss > peak_rss) peak_rss = rss;
        if (anon > peak_anon) peak_anon = anon;
        if (pss > peak_pss) peak_pss = pss;
        if (procs > max_procs) max_procs = procs;
        nanosleep(&tick, NULL);
    }
    long sum_hwm = 0;
    for (int i = 0; i < nseen; i++) sum_hwm += seen_hwm[i];
    FILE *f = fopen(argv[2], "w");
    if (!f) return 1;
    fprintf(f, "%ld %ld %ld %d %d %ld\n", peak_rss, sum_hwm, peak_anon, max_procs, nseen, peak_pss);
    return fclose(f) != 0;
}
