#!/usr/bin/env bash
# janus_netns.sh — run the Debian `janus` (1.1.2) VideoRoom SFU inside a network
# namespace joined to the host by a veth pair, for side-by-side load tests.
#
#   ./janus_netns.sh            # (or: start) create netns+veth, write configs, start janus, wait for /janus/info
#   ./janus_netns.sh --stop     # (or: stop)  kill janus, delete netns+veth, remove the temp config dir
#   ./janus_netns.sh --status   # (or: status) show PID / CPU / RSS and whether /janus/info answers
#   JANUS_DIR=/tmp/x ./janus_netns.sh --write-configs   # only write the config dir (inspection)
#
# Why a netns: Janus skips loopback interfaces when gathering ICE candidates,
# so a load generator on the same host cannot reach it over 127.0.0.1.
#
# Tunables (environment):
#   JANUS_NS=janusns  JANUS_HOST_IF=veth-lg  JANUS_NS_IF=veth-j
#   JANUS_HOST_IP=10.77.0.1  JANUS_NS_IP=10.77.0.2  JANUS_PREFIX=24
#   JANUS_HTTP_PORT=8088  JANUS_DIR=/tmp/janus-netns  JANUS_DEBUG_LEVEL=3
#   JANUS_EVENT_LOOPS=2 (0 = Janus default: one thread per handle!)
#   JANUS_RTP_RANGE=20000-60000  JANUS_NOFILE=65536 (capped at the hard limit)  JANUS_MHD_LIMIT=16384
#   JANUS_START_TIMEOUT=20 (seconds to wait for /janus/info)
#   JANUS_CLIENT_NET=10.78.0.0/16  extra address range for simulated participants:
#       host:  ip route add local $JANUS_CLIENT_NET dev lo   (AnyIP: every address in it is
#              local, so a load generator can bind/IP_PKTINFO-send from any of them)
#       netns: ip route add $JANUS_CLIENT_NET via $JANUS_HOST_IP
#       Set JANUS_CLIENT_NET= (empty) to skip. 127.x addresses can NOT be used across the veth.
set -euo pipefail

NS=${JANUS_NS:-janusns}
HOST_IF=${JANUS_HOST_IF:-veth-lg}
NS_IF=${JANUS_NS_IF:-veth-j}
HOST_IP=${JANUS_HOST_IP:-10.77.0.1}
NS_IP=${JANUS_NS_IP:-10.77.0.2}
PREFIX=${JANUS_PREFIX:-24}
PORT=${JANUS_HTTP_PORT:-8088}
DIR=${JANUS_DIR:-/tmp/janus-netns}
DEBUG_LEVEL=${JANUS_DEBUG_LEVEL:-3}
EVENT_LOOPS=${JANUS_EVENT_LOOPS:-2}
RTP_RANGE=${JANUS_RTP_RANGE:-20000-60000}
NOFILE=${JANUS_NOFILE:-65536}
MHD_LIMIT=${JANUS_MHD_LIMIT:-16384}
START_TIMEOUT=${JANUS_START_TIMEOUT:-20}
CLIENT_NET=${JANUS_CLIENT_NET-10.78.0.0/16}
JANUS_BIN=${JANUS_BIN:-/usr/bin/janus}
PKG_LIBDIR=${JANUS_LIBDIR:-/usr/lib/x86_64-linux-gnu/janus}
INFO_URL="http://${NS_IP}:${PORT}/janus/info"
PIDFILE="$DIR/janus.pid"

log() { echo "janus_netns: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

write_configs() {
	mkdir -p "$DIR/plugins" "$DIR/transports" "$DIR/events" "$DIR/loggers"
	# Only the two shared objects we need are visible to Janus (it loads every
	# *.so in the folders). Equivalent alternative: keep the package folders and
	# list the others in plugins{ disable = "..." } / transports{ disable = "..." }.
	ln -sf "$PKG_LIBDIR/plugins/libjanus_videoroom.so" "$DIR/plugins/libjanus_videoroom.so"
	ln -sf "$PKG_LIBDIR/transports/libjanus_http.so"   "$DIR/transports/libjanus_http.so"

	cat > "$DIR/janus.jcfg" <<JCFG
general: {
	configs_folder = "$DIR"
	plugins_folder = "$DIR/plugins"
	transports_folder = "$DIR/transports"
	events_folder = "$DIR/events"
	loggers_folder = "$DIR/loggers"
	debug_level = $DEBUG_LEVEL
	debug_timestamps = true
	debug_colors = false
	interface = "$NS_IP"
	server_name = "janus-bench"
	session_timeout = 60
	event_loops = $EVENT_LOOPS
	hide_dependencies = false
}
certificates: {
	# empty: Janus generates a self-signed ECDSA P-256 DTLS certificate at startup
}
media: {
	rtp_port_range = "$RTP_RANGE"
}
nat: {
	nice_debug = false
	# full_trickle = false (default): Janus puts its own candidates in its SDP
	# ice_lite = false (default): full ICE agent
	# Only gather on the veth (prefix match on interface name or IP). When an
	# enforce list is set, ice_ignore_list is not used.
	ice_enforce_list = "$NS_IF"
	ignore_mdns = true
}
plugins: {
	# Folder only contains libjanus_videoroom.so; with the package folder use e.g.
	# disable = "libjanus_echotest.so,libjanus_streaming.so,libjanus_audiobridge.so,..."
}
transports: {
	# Folder only contains libjanus_http.so; with the package folder use e.g.
	# disable = "libjanus_websockets.so,libjanus_mqtt.so,libjanus_nanomsg.so,libjanus_pfunix.so,libjanus_rabbitmq.so"
}
loggers: {
}
events: {
	broadcast = false
}
JCFG

	cat > "$DIR/janus.transport.http.jcfg" <<JCFG
general: {
	events = false
	json = "compact"
	base_path = "/janus"
	http = true
	port = $PORT
	ip = "$NS_IP"
	https = false
	mhd_connection_limit = $MHD_LIMIT
}
admin: {
	admin_http = false
	admin_https = false
}
cors: {
}
certificates: {
}
JCFG

	cat > "$DIR/janus.plugin.videoroom.jcfg" <<JCFG
general: {
	# no admin_key: any client may "create" rooms over the API
	events = false
}
# Rooms are created by the load generator with {"request":"create",...}.
JCFG
}

janus_pid() {
	[[ -s "$PIDFILE" ]] || return 1
	local pid; pid=$(cat "$PIDFILE")
	kill -0 "$pid" 2>/dev/null || return 1
	echo "$pid"
}

start() {
	command -v "$JANUS_BIN" >/dev/null || die "janus not installed (apt-get install -y janus)"
	if ip netns list | grep -qw "$NS"; then
		die "netns $NS already exists (run: $0 --stop)"
	fi
	ip link show "$HOST_IF" >/dev/null 2>&1 && die "link $HOST_IF already exists (run: $0 --stop)"

	log "creating netns $NS and veth $HOST_IF($HOST_IP) <-> $NS_IF($NS_IP)"
	ip netns add "$NS"
	ip link add "$HOST_IF" type veth peer name "$NS_IF"
	ip link set "$NS_IF" netns "$NS"
	ip addr add "$HOST_IP/$PREFIX" dev "$HOST_IF"
	ip link set "$HOST_IF" up
	ip -n "$NS" addr add "$NS_IP/$PREFIX" dev "$NS_IF"
	ip -n "$NS" link set "$NS_IF" up
	ip -n "$NS" link set lo up
	if [[ -n "$CLIENT_NET" ]]; then
		log "routing participant range $CLIENT_NET: local on host (lo), via $HOST_IP from $NS"
		ip route add local "$CLIENT_NET" dev lo
		ip -n "$NS" route add "$CLIENT_NET" via "$HOST_IP"
	fi

	rm -rf "$DIR"; mkdir -p "$DIR"
	write_configs

	log "starting janus in $NS (configs+log in $DIR)"
	# `ip netns exec` execs the command in place, so $! is Janus's PID as seen
	# from the host namespace (PID namespaces are not touched).
	# Raise the fd limit as far as allowed (this VM: hard limit 20000, and
	# root lacks CAP_SYS_RESOURCE, so it cannot go higher).
	local hard; hard=$(ulimit -Hn)
	local nofile=$NOFILE
	[[ "$hard" != unlimited ]] && (( nofile > hard )) && nofile=$hard
	( ulimit -n "$nofile"
	  exec setsid ip netns exec "$NS" "$JANUS_BIN" \
		--configs-folder="$DIR" --config="$DIR/janus.jcfg" \
		--log-file="$DIR/janus.log" --disable-stdout \
		--debug-level="$DEBUG_LEVEL" --disable-colors \
		--ice-enforce-list="$NS_IF" --interface="$NS_IP" \
		</dev/null >"$DIR/janus.stdout" 2>&1 ) &
	local pid=$!
	echo "$pid" > "$PIDFILE"

	# Poll /janus/info until it answers, the process dies, or the deadline passes.
	local deadline=$(( $(date +%s) + START_TIMEOUT ))
	until curl -fsS --max-time 1 "$INFO_URL" >/dev/null 2>&1; do
		if ! kill -0 "$pid" 2>/dev/null; then
			log "janus exited during startup; last log lines:"
			tail -n 30 "$DIR/janus.log" "$DIR/janus.stdout" >&2 2>/dev/null || true
			stop_quiet; exit 1
		fi
		if (( $(date +%s) >= deadline )); then
			log "janus did not answer $INFO_URL within ${START_TIMEOUT}s"
			tail -n 30 "$DIR/janus.log" >&2 2>/dev/null || true
			stop_quiet; exit 1
		fi
		sleep 0.1
	done
	local ver; ver=$(curl -fsS --max-time 2 "$INFO_URL" | grep -o '"version_string":"[^"]*"' | head -n 1 || true)
	log "janus is up: $INFO_URL $ver"
	log "host-visible PID: $pid   (netns pids: $(ip netns pids "$NS" | tr '\n' ' '))"
	echo "$pid"
}

stop_quiet() {
	local pid
	if pid=$(janus_pid); then
		kill -TERM "$pid" 2>/dev/null || true
		local deadline=$(( $(date +%s) + 10 ))
		while kill -0 "$pid" 2>/dev/null && (( $(date +%s) < deadline )); do sleep 0.1; done
		kill -0 "$pid" 2>/dev/null && { log "janus $pid ignored SIGTERM, sending SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; }
	fi
	# Anything else still living in our namespace (started by this script) goes too.
	if ip netns list | grep -qw "$NS"; then
		local p
		for p in $(ip netns pids "$NS" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
		ip netns del "$NS"            # also destroys $NS_IF and therefore its peer $HOST_IF
	fi
	ip link del "$HOST_IF" 2>/dev/null || true
	if [[ -n "$CLIENT_NET" ]] && ip route show table local "$CLIENT_NET" dev lo 2>/dev/null | grep -q .; then
		ip route del local "$CLIENT_NET" dev lo
	fi
	rm -rf "$DIR"
}

stop() {
	stop_quiet
	log "stopped; netns: [$(ip netns list | tr '\n' ' ')] link $HOST_IF: $(ip link show "$HOST_IF" >/dev/null 2>&1 && echo present || echo gone)"
}

status() {
	local pid
	if pid=$(janus_pid); then
		ps -o pid,ppid,nlwp,%cpu,rss,vsz,etime,cmd -p "$pid"
		grep -E 'VmRSS|VmHWM|Threads' "/proc/$pid/status"
		curl -fsS --max-time 2 "$INFO_URL" >/dev/null && echo "info: OK" || echo "info: NOT answering"
	else
		echo "janus not running"
	fi
}

case "${1:-start}" in
	start|--start) start ;;
	stop|--stop) stop ;;
	status|--status) status ;;
	configs|--write-configs) write_configs; log "configs written to $DIR" ;;
	*) echo "usage: $0 [--start|--stop|--status|--write-configs]" >&2; exit 2 ;;
esac
