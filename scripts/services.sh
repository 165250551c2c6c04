#!/usr/bin/env bash
# scripts/services.sh: the real services chatd's cluster mode needs, for
# development and CI, started on this machine without containers.
#
#   scripts/services.sh up            start Redis and Cassandra, wait until both answer
#   scripts/services.sh down [--wipe] stop what `up` started (--wipe also deletes their data)
#   scripts/services.sh status        say what answers where
#   scripts/services.sh env           print REDIS_ADDR=... and CQL_HOSTS=... for the tests
#
# Redis: Debian's redis-server (installed with apt-get when missing), our own
#   instance on 127.0.0.1:$REDIS_PORT, no persistence.
# Cassandra: Apache Cassandra 5.0 (the CQL server; ScyllaDB speaks the same
#   protocol), resolved from Maven Central by scripts/cassandra/pom.xml and
#   run from those jars as org.apache.cassandra.service.CassandraDaemon on
#   127.0.0.1:$CQL_PORT.
#
# `up` is idempotent: a service that already answers (ours or anyone's) is
# left alone. With REDIS_ADDR or CQL_HOSTS set, that service runs elsewhere:
# `up` only checks that it answers and starts nothing for it.
#
# Environment (defaults in brackets):
#   REDIS_PORT [6379]  CQL_PORT [9042]  CASSANDRA_STORAGE_PORT [7010]
#   CASSANDRA_HEAP [1g]  SERVICES_TIMEOUT [180] seconds to wait for each service
#   REDIS_ADDR (host:port)  CQL_HOSTS (host[:port],...)  external services
#   CHATD_SERVICES_DIR [<repo>/.services]  runtime data, logs, pid files
#   CHATD_CACHE_DIR [~/.cache/chatd]        resolved Cassandra jars (shared by clones)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SVC=${CHATD_SERVICES_DIR:-$ROOT/.services}
CACHE=${CHATD_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/chatd}
CASS_SRC=$ROOT/scripts/cassandra

REDIS_PORT=${REDIS_PORT:-6379}
CQL_PORT=${CQL_PORT:-9042}
CASSANDRA_STORAGE_PORT=${CASSANDRA_STORAGE_PORT:-7010}
CASSANDRA_HEAP=${CASSANDRA_HEAP:-1g}
TIMEOUT=${SERVICES_TIMEOUT:-180}

REDIS_DIR=$SVC/redis
CASS_DIR=$SVC/cassandra

log() { printf 'services: %s\n' "$*" >&2; }
die() {
	log "ERROR: $*"
	exit 1
}

# ---------------------------------------------------------------- probes

# redis_ping HOST PORT: true if a Redis server answers PING with +PONG.
redis_ping() {
	timeout 3 bash -c '
		exec 3<>"/dev/tcp/$1/$2" || exit 1
		printf "PING\r\n" >&3
		IFS= read -r -t 2 line <&3 || exit 1
		[[ $line == "+PONG"* ]]' _ "$1" "$2" 2>/dev/null
}

# cql_ping HOST PORT: true if a CQL native transport answers an OPTIONS
# request (protocol v4) with SUPPORTED. Cassandra only opens the native
# transport once the node has joined the ring and is ready for queries, so
# this is a real readiness check, not just a TCP connect.
cql_ping() {
	local hdr
	hdr=$(timeout 3 bash -c '
		exec 3<>"/dev/tcp/$1/$2" || exit 1
		# version 4 request, flags 0, stream 0, opcode OPTIONS (5), body length 0
		printf "\x04\x00\x00\x00\x05\x00\x00\x00\x00" >&3
		head -c 5 <&3 | od -An -tx1' _ "$1" "$2" 2>/dev/null) || return 1
	# response: version 0x84, flags, stream (2 bytes), opcode SUPPORTED (6)
	[[ $(echo $hdr) == "84 00 00 00 06" ]]
}

# tcp_open HOST PORT: true if something accepts a TCP connection.
tcp_open() {
	timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

# split_hostport ADDR DEFAULT_PORT: prints "host port".
split_hostport() {
	local a=$1 def=$2
	if [[ $a == \[*\]:* ]]; then # [::1]:9042
		local h=${a#[}
		echo "${h%%]*} ${a##*]:}"
		return
	fi
	if [[ $a == *:* && $a != *:*:* ]]; then
		echo "${a%:*} ${a##*:}"
	else
		echo "$a $def"
	fi
}

pid_alive() { # pid_alive PIDFILE PATTERN: prints the pid if it runs PATTERN
	local f=$1 pat=$2 pid
	[[ -s $f ]] || return 1
	pid=$(<"$f")
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	[[ -r /proc/$pid/cmdline ]] || return 1
	tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$pat" || return 1
	echo "$pid"
}

elapsed() { echo $((SECONDS - $1)); }

# ------------------------------------------------------------ installing

as_root() {
	if [[ $(id -u) == 0 ]]; then
		"$@"
	elif command -v sudo >/dev/null; then
		sudo "$@"
	else
		die "need root to run: $*"
	fi
}

apt_install() {
	log "installing $* with apt-get"
	export DEBIAN_FRONTEND=noninteractive
	if ! as_root apt-get install -y -q "$@" >/dev/null; then
		as_root apt-get update -q >/dev/null
		as_root apt-get install -y -q "$@" >/dev/null || die "apt-get install $* failed"
	fi
}

# java_major BIN: prints the Java feature version (11, 17, ...).
java_major() {
	"$1" -XshowSettings:properties -version 2>&1 |
		awk -F'= ' '/java.specification.version/ {print $2; exit}'
}

# find_java: prints a java binary Cassandra 5.0 runs on (Java 11 or 17).
find_java() {
	local c v
	for c in ${JAVA_HOME:+"$JAVA_HOME/bin/java"} "$(command -v java || true)" \
		/usr/lib/jvm/java-17-openjdk-*/bin/java /usr/lib/jvm/temurin-17-*/bin/java \
		/usr/lib/jvm/java-11-openjdk-*/bin/java; do
		[[ -n $c && -x $c ]] || continue
		v=$(java_major "$c")
		if [[ $v == 17 || $v == 11 ]]; then
			echo "$c"
			return
		fi
	done
	return 1
}

# --------------------------------------------------------------- Redis

redis_up() {
	local t0=$SECONDS host port
	if [[ -n ${REDIS_ADDR:-} ]]; then
		read -r host port < <(split_hostport "$REDIS_ADDR" 6379)
		redis_ping "$host" "$port" || die "REDIS_ADDR=$REDIS_ADDR does not answer PING (unset it to let this script start Redis)"
		log "redis: external, answering on $host:$port"
		return
	fi
	if redis_ping 127.0.0.1 "$REDIS_PORT"; then
		log "redis: already answering on 127.0.0.1:$REDIS_PORT"
		return
	fi
	if tcp_open 127.0.0.1 "$REDIS_PORT"; then
		die "port $REDIS_PORT is taken by something that is not Redis (set REDIS_PORT)"
	fi
	command -v redis-server >/dev/null || apt_install redis-server
	mkdir -p "$REDIS_DIR"
	log "redis: starting on 127.0.0.1:$REDIS_PORT"
	# No persistence: the router keeps only presence and routes, all of
	# which are rebuilt by the servers.
	redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --protected-mode yes \
		--daemonize yes --pidfile "$REDIS_DIR/redis-$REDIS_PORT.pid" \
		--logfile "$REDIS_DIR/redis-$REDIS_PORT.log" --dir "$REDIS_DIR" \
		--save '' --appendonly no >/dev/null ||
		die "redis-server failed to start; log: $REDIS_DIR/redis-$REDIS_PORT.log"
	until redis_ping 127.0.0.1 "$REDIS_PORT"; do
		if (($(elapsed "$t0") > TIMEOUT)); then
			tail -n 30 "$REDIS_DIR/redis-$REDIS_PORT.log" >&2 || true
			die "redis did not answer PING on 127.0.0.1:$REDIS_PORT within ${TIMEOUT}s"
		fi
		sleep 0.2
	done
	log "redis: ready on 127.0.0.1:$REDIS_PORT ($(elapsed "$t0")s)"
}

redis_down() {
	local f pid found=
	for f in "$REDIS_DIR"/redis-*.pid; do
		[[ -e $f ]] || continue
		if pid=$(pid_alive "$f" redis-server); then
			log "redis: stopping pid $pid ($(basename "$f" .pid))"
			stop_pid "$pid"
			found=1
		fi
		rm -f "$f"
	done
	[[ -n $found ]] || log "redis: not started by this script (no live pid file)"
}

# ----------------------------------------------------------- Cassandra

CASS_VERSION=$(sed -n 's:.*<cassandra.version>\(.*\)</cassandra.version>.*:\1:p' "$CASS_SRC/pom.xml")

# cassandra_lib: resolves the jars once per pom.xml content (cached under
# $CACHE, shared by every clone on this machine) and prints the directory.
cassandra_lib() {
	local key lib tmp t0=$SECONDS
	key=$(cat "$CASS_SRC/pom.xml" | sha256sum | cut -c1-12)
	lib=$CACHE/cassandra-$CASS_VERSION-$key
	if [[ ! -f $lib/.complete ]]; then
		command -v mvn >/dev/null || apt_install maven
		log "cassandra: resolving cassandra-all $CASS_VERSION from Maven Central"
		tmp=$lib.tmp.$$
		rm -rf "$tmp"
		mkdir -p "$tmp"
		mvn -q -B -Dstyle.color=never -f "$CASS_SRC/pom.xml" dependency:copy-dependencies \
			-DoutputDirectory="$tmp" >&2 || die "maven could not resolve cassandra-all $CASS_VERSION"
		rm -rf "$lib"
		mv "$tmp" "$lib"
		touch "$lib/.complete"
		log "cassandra: $(ls "$lib"/*.jar | wc -l) jars in $lib ($(elapsed "$t0")s)"
	fi
	echo "$lib"
}

cassandra_check_external() {
	local h host port ok=
	IFS=, read -r -a hs <<<"$CQL_HOSTS"
	for h in "${hs[@]}"; do
		read -r host port < <(split_hostport "$h" 9042)
		if cql_ping "$host" "$port"; then
			ok=1
			log "cassandra: external, CQL answering on $host:$port"
		fi
	done
	[[ -n $ok ]] || die "no host in CQL_HOSTS=$CQL_HOSTS answers CQL (unset it to let this script start Cassandra)"
}

cassandra_up() {
	local t0=$SECONDS pid java lib jamm
	if [[ -n ${CQL_HOSTS:-} ]]; then
		cassandra_check_external
		return
	fi
	if cql_ping 127.0.0.1 "$CQL_PORT"; then
		log "cassandra: already answering CQL on 127.0.0.1:$CQL_PORT"
		return
	fi
	if pid=$(pid_alive "$CASS_DIR/cassandra.pid" CassandraDaemon); then
		local port
		port=$(cat "$CASS_DIR/cql_port" 2>/dev/null || echo unknown)
		[[ $port == "$CQL_PORT" ]] ||
			die "cassandra pid $pid (from $CASS_DIR) serves CQL port $port, not $CQL_PORT: run 'scripts/services.sh down' first, or set CQL_PORT=$port"
		log "cassandra: pid $pid is starting; waiting for it"
	else
		tcp_open 127.0.0.1 "$CQL_PORT" &&
			die "port $CQL_PORT is taken by something that does not answer CQL (set CQL_PORT)"
		tcp_open 127.0.0.1 "$CASSANDRA_STORAGE_PORT" &&
			die "storage port $CASSANDRA_STORAGE_PORT is taken (set CASSANDRA_STORAGE_PORT)"
		java=$(find_java) || {
			apt_install openjdk-17-jre-headless
			java=$(find_java) || die "no Java 11 or 17 found (Cassandra 5.0 runs on neither 8 nor 21+)"
		}
		lib=$(cassandra_lib)
		jamm=$(ls "$lib"/jamm-*.jar 2>/dev/null | head -n1)
		[[ -n $jamm ]] || die "jamm jar missing in $lib"

		mkdir -p "$CASS_DIR"/{conf,logs,data,commitlog,saved_caches,hints,cdc_raw,system,triggers}
		sed -e "s|@DIR@|$CASS_DIR|g" -e "s|@CQL_PORT@|$CQL_PORT|g" \
			-e "s|@STORAGE_PORT@|$CASSANDRA_STORAGE_PORT|g" \
			"$CASS_SRC/cassandra.yaml.in" >"$CASS_DIR/conf/cassandra.yaml"
		cp "$CASS_SRC/logback.xml" "$CASS_DIR/conf/logback.xml"
		local -a opts
		mapfile -t opts < <(grep -E '^-' "$CASS_SRC/jvm17-server.options")

		log "cassandra: starting $CASS_VERSION on 127.0.0.1:$CQL_PORT (storage port $CASSANDRA_STORAGE_PORT, heap $CASSANDRA_HEAP, $java)"
		(
			cd "$CASS_DIR"
			exec setsid "$java" "${opts[@]}" \
				-Xms512m -Xmx"$CASSANDRA_HEAP" \
				-XX:HeapDumpPath="$CASS_DIR/logs" \
				-javaagent:"$jamm" \
				-Dcassandra-foreground=yes \
				-Dcassandra.config="file://$CASS_DIR/conf/cassandra.yaml" \
				-Dcassandra.storagedir="$CASS_DIR" \
				-Dcassandra.logdir="$CASS_DIR/logs" \
				-Dcassandra.triggers_dir="$CASS_DIR/triggers" \
				-Dlogback.configurationFile="$CASS_DIR/conf/logback.xml" \
				-cp "$CASS_DIR/conf:$lib/*" \
				org.apache.cassandra.service.CassandraDaemon \
				>"$CASS_DIR/logs/system.log" 2>&1 </dev/null
		) &
		pid=$!
		echo "$pid" >"$CASS_DIR/cassandra.pid"
		echo "$CQL_PORT" >"$CASS_DIR/cql_port"
		disown "$pid" 2>/dev/null || true
	fi
	until cql_ping 127.0.0.1 "$CQL_PORT"; do
		if ! pid_alive "$CASS_DIR/cassandra.pid" CassandraDaemon >/dev/null; then
			# setsid forks when it is already a process-group leader (a
			# shell with job control, set -m): the JVM is then its child.
			# Find it by its storage directory and record its pid.
			if pid=$(pgrep -f -- "-Dcassandra.storagedir=$CASS_DIR " | head -n 1) && [[ -n $pid ]]; then
				echo "$pid" >"$CASS_DIR/cassandra.pid"
				sleep 1
				continue
			fi
			tail -n 40 "$CASS_DIR/logs/system.log" >&2 || true
			die "cassandra exited during startup; log: $CASS_DIR/logs/system.log"
		fi
		if (($(elapsed "$t0") > TIMEOUT)); then
			tail -n 40 "$CASS_DIR/logs/system.log" >&2 || true
			die "cassandra did not answer CQL on 127.0.0.1:$CQL_PORT within ${TIMEOUT}s (still running as pid $pid; 'scripts/services.sh down' stops it); log: $CASS_DIR/logs/system.log"
		fi
		sleep 1
	done
	log "cassandra: ready, CQL on 127.0.0.1:$CQL_PORT ($(elapsed "$t0")s)"
}

cassandra_down() {
	local pid
	if pid=$(pid_alive "$CASS_DIR/cassandra.pid" CassandraDaemon); then
		log "cassandra: stopping pid $pid"
		stop_pid "$pid"
	else
		log "cassandra: not started by this script (no live pid file)"
	fi
	rm -f "$CASS_DIR/cassandra.pid"
}

# stop_pid PID: SIGTERM, then SIGKILL after 60 s.
stop_pid() {
	local pid=$1 i
	kill -TERM "$pid" 2>/dev/null || return 0
	for ((i = 0; i < 600; i++)); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	log "pid $pid ignored SIGTERM for 60s; killing it"
	kill -KILL "$pid" 2>/dev/null || true
}

# ---------------------------------------------------------------- main

status() {
	local pid host port h rc=0
	if [[ -n ${REDIS_ADDR:-} ]]; then
		read -r host port < <(split_hostport "$REDIS_ADDR" 6379)
	else
		host=127.0.0.1 port=$REDIS_PORT
	fi
	if redis_ping "$host" "$port"; then
		pid=$(pid_alive "$REDIS_DIR/redis-$port.pid" redis-server) && pid="ours, pid $pid" || pid="not ours"
		echo "redis:     up   $host:$port ($pid)"
	else
		echo "redis:     down $host:$port"
		rc=1
	fi
	h=${CQL_HOSTS:-127.0.0.1:$CQL_PORT}
	read -r host port < <(split_hostport "${h%%,*}" 9042)
	if cql_ping "$host" "$port"; then
		pid=$(pid_alive "$CASS_DIR/cassandra.pid" CassandraDaemon) && pid="ours, pid $pid" || pid="not ours"
		echo "cassandra: up   $host:$port ($pid)"
	elif pid=$(pid_alive "$CASS_DIR/cassandra.pid" CassandraDaemon); then
		echo "cassandra: starting (pid $pid), CQL not yet answering on $host:$port"
		rc=1
	else
		echo "cassandra: down $host:$port"
		rc=1
	fi
	return $rc
}

print_env() {
	echo "REDIS_ADDR=${REDIS_ADDR:-127.0.0.1:$REDIS_PORT}"
	echo "CQL_HOSTS=${CQL_HOSTS:-127.0.0.1:$CQL_PORT}"
}

usage() {
	sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
	exit 2
}

cmd=${1:-}
shift || true
case $cmd in
up)
	t0=$SECONDS
	redis_up
	cassandra_up
	log "all services up ($(elapsed "$t0")s)"
	;;
down)
	wipe=
	[[ ${1:-} == --wipe ]] && wipe=1
	redis_down
	cassandra_down
	if [[ -n $wipe ]]; then
		log "wiping $REDIS_DIR and $CASS_DIR"
		rm -rf "$REDIS_DIR" "$CASS_DIR"
	fi
	;;
status) status ;;
env) print_env ;;
*) usage ;;
esac
