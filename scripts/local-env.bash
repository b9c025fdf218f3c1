# Sourced by scripts/demo and scripts/bench: start `ssm-proxy sim` and a throwaway OpenSSH sshd
# on loopback, and remember every process and file so that `local_env_cleanup` removes them all.
#
# The caller sets BIN (the ssm-proxy binary) and WORK (a fresh temp dir), and installs
#   trap local_env_cleanup EXIT
# before calling anything here. Every wait is a bounded poll, never a fixed sleep.
# shellcheck shell=bash
# shellcheck disable=SC2034  # the variables set here are for the scripts that source this file

TARGET=i-0123456789abcdef0
PIDS=()

# Kills what we started (sshd, simulator, stray ProxyCommands), then removes WORK.
local_env_cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
    [[ -n ${WORK:-} && -d $WORK ]] && rm -rf -- "$WORK"
    return 0
}

# Polls `cmd...` every 50 ms while it returns 1 ("not yet"); returns 0 once it succeeds, its
# status if it returns anything else ("never"), and 1 after $1 seconds.
wait_for() {
    local seconds=$1 rc
    shift
    local deadline=$((SECONDS + seconds))
    while true; do
        "$@" && return 0
        rc=$?
        ((rc == 1)) || return "$rc"
        ((SECONDS < deadline)) || return 1
        sleep 0.05
    done
}

# Starts `ssm-proxy sim EXTRA_ARGS...`, waits for its environment and exports it. Sets SIM_PID,
# SIM_PORT (its HTTP API port) and SIM_ENV (the file with the export lines).
start_sim() {
    launch_sim sim "$@"
    # shellcheck disable=SC1090
    source "$SIM_ENV"
    SIM_PORT=${AWS_ENDPOINT_URL_SSM##*:}
}

# Starts `ssm-proxy sim EXTRA_ARGS...` as simulator NAME and waits for its environment without
# exporting it, so that several can run side by side (source $WORK/NAME.env in a subshell to
# use one). Sets SIM_PID and SIM_ENV, and SIM_PIDS[NAME] for `stop_named_sim NAME`.
declare -A SIM_PIDS=()
launch_sim() {
    local name=$1
    shift
    SIM_ENV=$WORK/$name.env
    "$BIN" sim "$@" >"$SIM_ENV" 2>"$WORK/$name.log" &
    SIM_PID=$!
    SIM_PIDS[$name]=$SIM_PID
    PIDS+=("$SIM_PID")
    if ! wait_for 10 sim_ready; then
        echo "ssm-proxy sim $* did not print its environment:" >&2
        cat "$WORK/$name.log" >&2
        exit 1
    fi
}

# Whether the simulator has printed its environment (2: it died).
sim_ready() {
    grep -qs '^export AWS_SHARED_CREDENTIALS_FILE=' "$SIM_ENV" && return 0
    kill -0 "$SIM_PID" 2>/dev/null || return 2
    return 1
}

# Stops the simulator with SIGINT and prints its last words ("N sessions still active").
stop_sim() {
    stop_named_sim sim
}

# The same for simulator NAME of launch_sim. Called in $(…) too, where `wait` cannot wait
# (the simulator is not the subshell's child): the log's last line is awaited instead.
stop_named_sim() {
    kill -INT "${SIM_PIDS[$1]}" 2>/dev/null || true
    wait "${SIM_PIDS[$1]}" 2>/dev/null || true
    SIM_LOG=$WORK/$1.log
    wait_for 10 sim_stopped || true
    tail -n 1 "$SIM_LOG"
}

# Whether the simulator logging to $SIM_LOG has printed its closing line.
sim_stopped() {
    grep -qs '^ssm-proxy sim: stopping' "$SIM_LOG"
}

# Whether something on 127.0.0.1:$1 greets with an SSH banner.
answers_ssh() {
    local line
    (
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        IFS= read -r -t 1 line <&3 && [[ $line == SSH-2.0-* ]]
    ) 2>/dev/null
}

# Whether nothing accepts connections on 127.0.0.1:$1.
port_free() {
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Whether sshd (pid $1) answers on SSHD_PORT (2: it died).
sshd_up() {
    answers_ssh "$SSHD_PORT" && return 0
    kill -0 "$1" 2>/dev/null || return 2
    return 1
}

# Starts `sshd -D` on a free loopback port with fresh ed25519 host and user keys, for the
# current user, key authentication only. Sets SSHD_PORT, SSH_USER and SSH_OPTS (the options
# every ssh and scp run needs: no user config, the throwaway key, no prompts). Lines in
# SSHD_EXTRA_CONFIG are appended to its sshd_config (e.g. "MaxStartups 200").
start_sshd() {
    local sshd=$1 dir=$WORK/sshd attempt pid
    mkdir -p "$dir"
    ssh-keygen -q -t ed25519 -N '' -C ssm-proxy-demo -f "$dir/host_ed25519" </dev/null
    ssh-keygen -q -t ed25519 -N '' -C ssm-proxy-demo -f "$dir/id_ed25519" </dev/null
    cp "$dir/id_ed25519.pub" "$dir/authorized_keys"
    # Privilege separation needs this directory; only root can create it, only root needs it.
    if [[ $(id -u) == 0 ]]; then
        mkdir -p /run/sshd
    fi
    SSH_USER=$(id -un)
    SSH_OPTS=(-F /dev/null -i "$dir/id_ed25519"
        -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes
        -o LogLevel=ERROR -o IdentitiesOnly=yes -o IdentityAgent=none)
    for attempt in 1 2 3 4 5; do
        SSHD_PORT=$((20000 + RANDOM % 40000))
        port_free "$SSHD_PORT" || continue
        cat >"$dir/sshd_config" <<EOF
ListenAddress 127.0.0.1
Port $SSHD_PORT
HostKey $dir/host_ed25519
AuthorizedKeysFile $dir/authorized_keys
StrictModes no
UsePAM no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PidFile none
Subsystem sftp internal-sftp
LogLevel ERROR
${SSHD_EXTRA_CONFIG:-}
EOF
        "$sshd" -D -e -f "$dir/sshd_config" </dev/null >/dev/null 2>"$dir/sshd.log" &
        pid=$!
        PIDS+=("$pid")
        if wait_for 10 sshd_up "$pid"; then
            return 0
        fi
        echo "sshd on port $SSHD_PORT did not come up (attempt $attempt):" >&2
        cat "$dir/sshd.log" >&2
        kill "$pid" 2>/dev/null || true
    done
    echo "could not start $sshd" >&2
    exit 1
}
