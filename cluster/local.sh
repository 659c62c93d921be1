#!/usr/bin/env bash
# Start / stop / inspect a local Ray cluster for running the skinray jobs
# (prepare, train, score, evaluate) with `ray job submit`.
#
# Run `cluster/local.sh --help` for usage.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${SCRIPT_DIR}/.." && pwd)"
PROG="cluster/local.sh"

usage() {
    cat <<EOF
Usage:
  ${PROG} start [--num-cpus N] [--num-gpus N] [--port P] [--dashboard-port P]
                [--workers K] [--worker-cpus N] [--agent-port P]
                [--auth token|disabled] [-- EXTRA_RAY_START_ARGS...]
  ${PROG} stop [--port P]
  ${PROG} status [--port P]
  ${PROG} --help

Commands:
  start    Start a Ray head node with the dashboard enabled on 127.0.0.1 (the
           dashboard is the HTTP endpoint that 'ray job submit' talks to), then
           optionally K extra worker nodes on the same machine. Each node is a
           'ray start --block' process in the background whose PID is recorded
           in \$SKINRAY_LOCAL_STATE/skinray-local-PORT/ (default: \$TMPDIR or
           /tmp), with its log beside it. The dashboard only listens on
           127.0.0.1, but Ray's GCS/raylet ports listen on all interfaces (Ray
           uses the host's IP even for a local cluster): keep them firewalled
           on a shared network.
  stop     Stop the nodes this script started for --port P (default 6379), by
           their recorded PIDs: SIGTERM, which ends each node and its
           processes, then SIGKILL after 30 s. Never 'ray stop', which would end
           every Ray process of this user on the machine -- other people's
           clusters and training runs included.
  status   'ray status' for the cluster at 127.0.0.1:PORT (in token mode when
           a token is available).

Options for start:
  --num-cpus N        CPUs the head node offers (default: Ray counts the cores).
  --num-gpus N        GPUs the head node offers (default: Ray counts the GPUs).
  --port P            GCS port (default: 6379). Use the same --port for status.
  --dashboard-port P  Dashboard / job-submission port (default: 8265).
  --workers K         Extra worker nodes to start on this machine (default: 0).
  --worker-cpus N     CPUs each extra worker node offers (default: 1).
  --start-timeout S   Seconds to wait for each node to say it started
                      (default: \$SKINRAY_START_WAIT_S, else 300; a loaded host
                      can take minutes).
  --agent-port P      First port for the nodes' dashboard agents (default: the
                      first free port from 52365). Job submission goes through
                      the head's agent, and every Ray instance on a machine
                      (another cluster, an extra worker node, a plain
                      ray.init()) wants 52365: on a clash the agent dies and
                      'ray job submit' fails with "No available agent".
  --auth MODE         token or disabled (default: \$RAY_AUTH_MODE, else token
                      if a token exists (~/.ray/auth_token, \$RAY_AUTH_TOKEN,
                      \$RAY_AUTH_TOKEN_PATH), else disabled -- what 'ray start'
                      itself would pick). With token, clients need
                      RAY_AUTH_MODE=token as well; 'ray start' does not say so.
  -- ARGS...          Passed as is to the head's 'ray start'.

  Extra worker nodes share this machine's cores, memory and disk with the
  head: they only split its resources into several Ray nodes, which is useful
  to exercise multi-node scheduling (Ray Train workers, Ray Data actors on
  different nodes), not to add capacity. They start with --num-gpus 0 so a
  GPU is only counted once, on the head.

Which 'ray': \$RAY_BIN if set, else ${REPO_ROOT}/.venv/bin/ray, else 'ray'
on PATH. That ray's bin folder is put first on PATH, so the 'python' of job
entrypoints ('ray job submit -- python jobs/score.py ...') is that venv's
python (the entrypoint runs through a shell with the PATH of 'ray start').

After start, submit jobs from the repository root:
  export RAY_ADDRESS=http://127.0.0.1:8265
  ray job submit --working-dir . -- python jobs/score.py --help
EOF
}

die() {
    echo "${PROG}: $*" >&2
    echo "Run '${PROG} --help' for usage." >&2
    exit 2
}

find_ray() {
    if [[ -n "${RAY_BIN:-}" ]]; then
        [[ -x "${RAY_BIN}" ]] || die "RAY_BIN=${RAY_BIN} is not an executable file"
        echo "${RAY_BIN}"
    elif [[ -x "${REPO_ROOT}/.venv/bin/ray" ]]; then
        echo "${REPO_ROOT}/.venv/bin/ray"
    elif command -v ray >/dev/null 2>&1; then
        command -v ray
    else
        die "no 'ray' found: set RAY_BIN, create ${REPO_ROOT}/.venv, or put ray on PATH"
    fi
}

need_value() {
    # need_value OPTION NUMBER_OF_REMAINING_ARGS
    [[ "$2" -ge 2 ]] || die "option $1 needs a value"
}

is_uint() {
    [[ "$1" =~ ^[0-9]+$ ]]
}

free_port() {
    # First port >= $1 that nothing accepts connections on at 127.0.0.1.
    local p="$1"
    while (exec 3<>"/dev/tcp/127.0.0.1/${p}") 2>/dev/null; do
        p=$((p + 1))
    done
    echo "${p}"
}

state_dir() {
    # state_dir PORT: where the nodes started for this GCS port record their PIDs and logs
    echo "${SKINRAY_LOCAL_STATE:-${TMPDIR:-/tmp}}/skinray-local-$1"
}

launch_node() {
    # launch_node STATE_DIR NAME TIMEOUT RAY_START_ARGS...: a 'ray start --block' in the background,
    # its PID recorded, waited for until it says it started (or dies, or the timeout passes).
    local dir="$1" name="$2" timeout="$3"
    shift 3
    local log="${dir}/${name}.log"
    echo "+ $* --block   # ${name}, log: ${log}"
    nohup "$@" --block >"${log}" 2>&1 </dev/null &
    local pid=$!
    echo "${pid} ${name}" >>"${dir}/pids"
    local waited=0
    until grep -q "Ray runtime started" "${log}" 2>/dev/null; do
        if ! kill -0 "${pid}" 2>/dev/null; then
            echo "${PROG}: ${name} exited before it started; its log:" >&2
            tail -n 20 "${log}" >&2
            return 1
        fi
        if ((waited >= timeout)); then
            echo "${PROG}: ${name} did not start within ${timeout}s (see ${log})" >&2
            return 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
}

stop_pids() {
    # stop_pids STATE_DIR: SIGTERM every recorded node (workers first), SIGKILL what is left after 30 s
    local dir="$1" pid name waited
    [[ -f "${dir}/pids" ]] || return 0
    local -a pids=()
    while read -r pid name; do
        pids=("${pid}" ${pids[@]+"${pids[@]}"})
    done <"${dir}/pids"
    for pid in "${pids[@]}"; do
        kill -TERM "${pid}" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        waited=0
        while kill -0 "${pid}" 2>/dev/null && ((waited < ${SKINRAY_STOP_WAIT_S:-30})); do
            sleep 1
            waited=$((waited + 1))
        done
        kill -KILL "${pid}" 2>/dev/null || true
    done
}

wait_for_dashboard() {
    # Poll the dashboard port: 'ray start' can return before the dashboard
    # accepts connections, and 'ray job submit' fails until it does.
    local port="$1" waited=0 limit="${SKINRAY_DASHBOARD_WAIT_S:-60}"
    while ! (exec 3<>"/dev/tcp/127.0.0.1/${port}") 2>/dev/null; do
        if ((waited >= limit)); then
            echo "warning: dashboard not reachable on 127.0.0.1:${port} after ${limit}s;" \
                "'ray job submit' needs it (check /tmp/ray/session_latest/logs/dashboard.log)" >&2
            return 0
        fi
        sleep 1
        waited=$((waited + 1))
    done
}

cmd_start() {
    local num_cpus="" num_gpus="" port=6379 dash_port=8265 workers=0 worker_cpus=1
    local agent_port="" auth="${RAY_AUTH_MODE:-}" timeout="${SKINRAY_START_WAIT_S:-300}"
    local -a extra=()
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --num-cpus) need_value "$1" $#; num_cpus="$2"; shift 2 ;;
            --num-gpus) need_value "$1" $#; num_gpus="$2"; shift 2 ;;
            --port) need_value "$1" $#; port="$2"; shift 2 ;;
            --dashboard-port) need_value "$1" $#; dash_port="$2"; shift 2 ;;
            --workers) need_value "$1" $#; workers="$2"; shift 2 ;;
            --worker-cpus) need_value "$1" $#; worker_cpus="$2"; shift 2 ;;
            --agent-port) need_value "$1" $#; agent_port="$2"; shift 2 ;;
            --auth) need_value "$1" $#; auth="$2"; shift 2 ;;
            --start-timeout) need_value "$1" $#; timeout="$2"; shift 2 ;;
            -h | --help) usage; exit 0 ;;
            --) shift; extra=("$@"); break ;;
            *) die "start: unknown option '$1'" ;;
        esac
    done
    local v
    for v in "$port" "$dash_port" "$workers" "$worker_cpus" "$timeout" ${num_cpus:+"$num_cpus"} \
        ${num_gpus:+"$num_gpus"} ${agent_port:+"$agent_port"}; do
        is_uint "$v" || die "start: '$v' is not a non-negative integer"
    done
    if [[ -z "${auth}" ]]; then
        if [[ -n "${RAY_AUTH_TOKEN:-}" || -n "${RAY_AUTH_TOKEN_PATH:-}" || -f "${HOME}/.ray/auth_token" ]]; then
            auth=token
        else
            auth=disabled
        fi
    fi
    case "${auth}" in
        token | disabled) ;;
        *) die "start: --auth must be token or disabled, not '${auth}'" ;;
    esac

    local ray
    ray="$(find_ray)"
    PATH="$(dirname "${ray}"):${PATH}"
    export PATH
    # Explicit, so every node started here and every job driver (they inherit
    # the raylet's environment) agree on the mode.
    export RAY_AUTH_MODE="${auth}"
    if [[ "${auth}" == token && -z "${RAY_AUTH_TOKEN:-}" && -z "${RAY_AUTH_TOKEN_PATH:-}" ]]; then
        "${ray}" get-auth-token --generate >/dev/null # creates ~/.ray/auth_token if missing
    fi

    local dir
    dir="$(state_dir "${port}")"
    if [[ -f "${dir}/pids" ]]; then
        die "start: nodes started earlier for port ${port} are recorded in ${dir}: '${PROG} stop --port ${port}' first"
    fi
    mkdir -p "${dir}"
    # A loaded host can miss Ray's default agent-registration timeout ("node timed out during startup").
    export RAY_agent_register_timeout_ms="${RAY_agent_register_timeout_ms:-300000}"

    local next_agent="${agent_port:-52365}"
    [[ -n "${agent_port}" ]] || next_agent="$(free_port "${next_agent}")"

    local -a head=(
        "${ray}" start --head
        --port "${port}"
        --include-dashboard=true
        --dashboard-host 127.0.0.1
        --dashboard-port "${dash_port}"
        --dashboard-agent-listen-port "${next_agent}"
        --disable-usage-stats
    )
    [[ -n "${num_cpus}" ]] && head+=(--num-cpus "${num_cpus}")
    [[ -n "${num_gpus}" ]] && head+=(--num-gpus "${num_gpus}")
    head+=(${extra[@]+"${extra[@]}"})

    if ! launch_node "${dir}" head "${timeout}" "${head[@]}"; then
        stop_pids "${dir}"
        rm -rf "${dir}"
        exit 1
    fi

    local i
    for ((i = 1; i <= workers; i++)); do
        next_agent="$(free_port $((next_agent + 1)))"
        local -a worker=(
            "${ray}" start
            --address "127.0.0.1:${port}"
            --num-cpus "${worker_cpus}"
            --num-gpus 0
            --dashboard-agent-listen-port "${next_agent}"
            --disable-usage-stats
        )
        if ! launch_node "${dir}" "worker-${i}" "${timeout}" "${worker[@]}"; then
            stop_pids "${dir}"
            rm -rf "${dir}"
            exit 1
        fi
    done

    wait_for_dashboard "${dash_port}"

    local auth_line=""
    if [[ "${auth}" == token ]]; then
        auth_line="
  Token authentication is ON: clients need   export RAY_AUTH_MODE=token
  (the token is read from ~/.ray/auth_token, \$RAY_AUTH_TOKEN or \$RAY_AUTH_TOKEN_PATH)."
    fi
    cat <<EOF

Local Ray cluster is up (head + ${workers} extra worker node(s) on this machine).
${auth_line}
  Job submission (dashboard API):   export RAY_ADDRESS=http://127.0.0.1:${dash_port}
  ray.init() from a Python process: ray.init(address="127.0.0.1:${port}")
  Dashboard in a browser:           http://127.0.0.1:${dash_port}

  Submit from the repository root, e.g.:
    RAY_ADDRESS=http://127.0.0.1:${dash_port} ${ray} job submit --working-dir . -- python jobs/score.py --help

  Note: don't keep RAY_ADDRESS=http://... exported in a shell where you run
  plain 'python script.py' that calls ray.init(): ray.init() would read it as
  a Ray Client address and fail. RAY_API_SERVER_ADDRESS=http://127.0.0.1:${dash_port}
  is read only by the job CLI/SDK, and RAY_ADDRESS=127.0.0.1:${port} works for both.

  Stop with: ${PROG} stop --port ${port}   (only these nodes; never 'ray stop')
EOF
}

cmd_stop() {
    local port=6379
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --port) need_value "$1" $#; port="$2"; shift 2 ;;
            -h | --help) usage; exit 0 ;;
            *) die "stop: unknown option '$1'" ;;
        esac
    done
    is_uint "${port}" || die "stop: '${port}' is not a port number"
    local dir
    dir="$(state_dir "${port}")"
    if [[ ! -f "${dir}/pids" ]]; then
        echo "nothing to stop: no nodes started by ${PROG} for port ${port} (${dir}/pids)"
        return 0
    fi
    echo "stopping the nodes started for port ${port}: $(awk '{print $2 " (pid " $1 ")"}' "${dir}/pids" | paste -sd, -)"
    stop_pids "${dir}"
    rm -rf "${dir}"
}

cmd_status() {
    local port=6379
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --port) need_value "$1" $#; port="$2"; shift 2 ;;
            -h | --help) usage; exit 0 ;;
            *) die "status: unknown option '$1'" ;;
        esac
    done
    is_uint "${port}" || die "status: '${port}' is not a port number"
    local ray
    ray="$(find_ray)"
    # A client in token mode also works against a cluster without auth; a
    # client without it is rejected by a token cluster.
    if [[ -z "${RAY_AUTH_MODE:-}" ]] && [[ -n "${RAY_AUTH_TOKEN:-}" || -n "${RAY_AUTH_TOKEN_PATH:-}" || -f "${HOME}/.ray/auth_token" ]]; then
        export RAY_AUTH_MODE=token
    fi
    "${ray}" status --address "127.0.0.1:${port}"
}

main() {
    [[ $# -gt 0 ]] || { usage >&2; exit 2; }
    local cmd="$1"
    shift
    case "${cmd}" in
        start) cmd_start "$@" ;;
        stop) cmd_stop "$@" ;;
        status) cmd_status "$@" ;;
        -h | --help | help) usage ;;
        *) die "unknown command '${cmd}'" ;;
    esac
}

main "$@"
