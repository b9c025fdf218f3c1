# Sourced by scripts/bench and scripts/bench-features: reading the files scripts/rusage.c
# writes (one "maxrss_KiB wall_s user_s sys_s" line per run). Needs wait_for
# (scripts/local-env.bash).
# shellcheck shell=bash

# Statistics of the numbers on stdin: "median min max" ("- - -" when there are none).
stats() {
    sort -g | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "- - -"; exit }
        m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
        print m, v[1], v[NR] }'
}

# Waits until rusage has written $2 lines to $1 (ssh does not wait for its ProxyCommand).
wait_lines() {
    has_lines() { [[ -f $1 && $(wc -l <"$1") -ge $2 ]]; }
    wait_for 30 has_lines "$1" "$2" || {
        echo "ssm-proxy under rusage did not finish ($1)" >&2
        exit 1
    }
}

# col FILE FIELD SCALE: "median min max" of field FIELD (1-based) times SCALE over FILE's lines.
col() {
    [[ -s $1 ]] || {
        echo "- - -"
        return
    }
    awk -v f="$2" -v s="$3" '{ print $f * s }' "$1" | stats
}
