#!/usr/bin/env bash
# Run Apache Kafka (KRaft, broker and controller in one JVM) from Maven Central jars, on loopback only.
#
#   run-kafka.sh DATA_DIR PORT [KEY=VALUE ...]   start a node; prints the broker JVM's PID as the last line
#   run-kafka.sh --stop DATA_DIR                 stop it (SIGTERM, SIGKILL after $KAFKA_STOP_TIMEOUT s)
#
# Start fetches the jars when missing (mvn, into ${VIGIL_KAFKA_LIBS:-~/.cache/vigil/kafka-libs}/VERSION),
# creates DATA_DIR and formats it only when it holds no Kafka storage yet, so running it again on the same
# DATA_DIR (say after a kill -9) restarts on the same data. It exits 0 only once the broker accepts clients.
# PORT 0 picks a free port (printed). KEY=VALUE arguments are extra server properties (they win).
#
# A cluster: start every node at once, each with its own DATA_DIR and PORT and the same environment
#   KAFKA_CLUSTER_ID      the cluster id (22 characters base64url; any node's default is a random one)
#   KAFKA_QUORUM_VOTERS   id@127.0.0.1:controller-port,... for every node
# and per node KAFKA_NODE_ID (default 1) and KAFKA_CONTROLLER_PORT (its port in the voters list).
# A single node picks its controller port itself. Internal topics are replicated to every voter (at most 3).
#
# Other settings: KAFKA_HEAP_OPTS (default -Xmx512m -Xms128m), KAFKA_START_TIMEOUT (s, default 120),
# KAFKA_STOP_TIMEOUT (s, default 30). Logs: DATA_DIR/logs/kafka.out (the previous run's in kafka.out.1).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
pom="$here/pom.xml"
version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$pom")"
libs="${VIGIL_KAFKA_LIBS:-$HOME/.cache/vigil/kafka-libs}/$version"

die() { echo "run-kafka.sh: $*" >&2; exit 1; }

usage() {
    sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# The PID in DATA_DIR/kafka.pid if that process is alive and is this DATA_DIR's broker, else nothing.
running_pid() {
    local pidfile="$1/kafka.pid" pid
    [[ -f "$pidfile" ]] || return 0
    pid="$(cat "$pidfile" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 0
    if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "kafka.Kafka $1/server.properties"; then
        echo "$pid"
    fi
}

stop() {
    local dir pid deadline
    dir="$(cd "$1" 2>/dev/null && pwd)" || return 0  # no such directory: nothing runs there
    pid="$(running_pid "$dir")"
    if [[ -n "$pid" ]]; then
        kill -TERM "$pid" 2>/dev/null || true
        deadline=$((SECONDS + ${KAFKA_STOP_TIMEOUT:-30}))
        while [[ -e "/proc/$pid" ]] && ((SECONDS < deadline)); do
            [[ "$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null)" == Z ]] && break
            sleep 0.2
        done
        if [[ -e "/proc/$pid" ]] && [[ "$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null)" != Z ]]; then
            echo "run-kafka.sh: broker $pid did not stop in ${KAFKA_STOP_TIMEOUT:-30}s: SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$dir/kafka.pid"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

fetch_jars() {
    [[ -f "$libs/.complete" ]] && return 0
    command -v mvn >/dev/null || die "mvn not found: install Maven (apt-get install maven) to fetch Kafka"
    mkdir -p "$(dirname "$libs")"
    (
        flock 9  # several nodes may start at once
        [[ -f "$libs/.complete" ]] && exit 0
        echo "run-kafka.sh: fetching Apache Kafka $version from Maven Central into $libs" >&2
        rm -rf "$libs.tmp"
        mvn -q -B -f "$pom" dependency:copy-dependencies -DincludeScope=runtime \
            -DoutputDirectory="$libs.tmp" >&2 || die "mvn could not fetch Kafka $version (Maven Central?)"
        rm -rf "$libs"
        mv "$libs.tmp" "$libs"
        touch "$libs/.complete"
    ) 9>"$libs.lock"
}

start() {
    local dir="$1" port="$2"
    shift 2
    [[ "$port" =~ ^[0-9]+$ ]] || die "PORT must be a number, not '$port'"
    command -v java >/dev/null || die "java not found: install a JRE 17+ (apt-get install default-jre-headless)"
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    local pid
    pid="$(running_pid "$dir")"
    [[ -z "$pid" ]] || die "a broker already runs on $dir (pid $pid); stop it with --stop $dir"
    rm -f "$dir/kafka.pid"  # stale, from a broker that was killed
    fetch_jars

    # What a restart must reuse: the cluster id and this node's controller port.
    local state="$dir/node.env" cluster_id="" controller_port=""
    # shellcheck disable=SC1090
    [[ -f "$state" ]] && source "$state"
    # A random id in Kafka's base64url form, never starting with '-' (the storage tool would read it as an
    # option; Kafka's own Uuid.randomUuid() avoids those too).
    cluster_id="${KAFKA_CLUSTER_ID:-${cluster_id:-$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=' | sed 's/^-/A/')}}"
    controller_port="${KAFKA_CONTROLLER_PORT:-${controller_port:-$(free_port)}}"
    ((port != 0)) || port="$(free_port)"
    local node_id="${KAFKA_NODE_ID:-1}"
    local voters="${KAFKA_QUORUM_VOTERS:-$node_id@127.0.0.1:$controller_port}"
    local nodes replicas min_isr
    nodes="$(tr ',' '\n' <<<"$voters" | grep -c .)"
    replicas=$((nodes < 3 ? nodes : 3))
    min_isr=$((replicas < 2 ? 1 : 2))
    printf 'cluster_id=%s\ncontroller_port=%s\n' "$cluster_id" "$controller_port" >"$state"

    mkdir -p "$dir/data" "$dir/logs"
    cat >"$dir/server.properties" <<EOF
# Written by run-kafka.sh at every start (edit the script, not this file).
process.roles=broker,controller
node.id=$node_id
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
log.dirs=$dir/data
auto.create.topics.enable=false
offsets.topic.replication.factor=$replicas
transaction.state.log.replication.factor=$replicas
transaction.state.log.min.isr=$min_isr
share.coordinator.state.topic.replication.factor=$replicas
share.coordinator.state.topic.min.isr=$min_isr
group.initial.rebalance.delay.ms=0
# A broker restarted after kill -9 registers again once its old session expires (default 9 s).
broker.session.timeout.ms=6000
broker.heartbeat.interval.ms=1000
EOF
    local kv
    for kv in "$@"; do
        [[ "$kv" == *=* ]] || die "extra arguments are server properties KEY=VALUE, not '$kv'"
        echo "$kv" >>"$dir/server.properties"
    done
    cat >"$dir/log4j2.properties" <<EOF
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.out.ref = out
logger.state.name = state.change.logger
logger.state.level = warn
EOF

    local cp="$libs/*"
    local log4j="-Dlog4j2.configurationFile=$dir/log4j2.properties"
    if [[ ! -f "$dir/data/meta.properties" ]]; then
        java -Xmx256m "$log4j" -cp "$cp" kafka.tools.StorageTool format --cluster-id="$cluster_id" \
            -c "$dir/server.properties" >"$dir/logs/format.out" 2>&1 \
            || die "formatting $dir failed: $(tail -5 "$dir/logs/format.out")"
    fi

    local out="$dir/logs/kafka.out"
    [[ -f "$out" ]] && mv -f "$out" "$out.1"
    # A session of its own: a terminal's Ctrl-C for the caller does not reach the broker. Without job
    # control the background child is no group leader, so setsid execs java in place and $! is the JVM.
    # shellcheck disable=SC2086
    setsid java ${KAFKA_HEAP_OPTS:--Xmx512m -Xms128m} -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
        -Djava.awt.headless=true "$log4j" -Dkafka.logs.dir="$dir/logs" \
        -cp "$cp" kafka.Kafka "$dir/server.properties" </dev/null >"$out" 2>&1 &
    pid=$!
    echo "$pid" >"$dir/kafka.pid"

    local deadline=$((SECONDS + ${KAFKA_START_TIMEOUT:-120}))
    until grep -q "Kafka Server started" "$out" 2>/dev/null \
        && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        if [[ ! -e "/proc/$pid" ]] || [[ "$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null)" == Z ]]; then
            rm -f "$dir/kafka.pid"
            die "broker exited during start-up; the end of $out:
$(tail -20 "$out")"
        fi
        if ((SECONDS >= deadline)); then
            stop "$dir"
            die "broker not ready after ${KAFKA_START_TIMEOUT:-120}s; see $out"
        fi
        sleep 0.2
    done
    echo "Apache Kafka $version node $node_id on 127.0.0.1:$port (controller 127.0.0.1:$controller_port), data $dir"
    echo "$pid"
}

case "${1:-}" in
    --stop) [[ $# -eq 2 ]] || usage; stop "$2" ;;
    -h | --help | "") usage ;;
    *) [[ $# -ge 2 ]] || usage; start "$@" ;;
esac
