#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# The Kubernetes API client of node mode (userspace/k8s/api.c), driven by
# build/k8swatch against the fake API server (fixtures/fake_kube_api.py) on
# 127.0.0.1: the list, the watch and its events, a label change, a delete,
# 410 Gone both ways, bookmarks, the API going away and coming back, a
# rotated token, and TLS with the cluster CA. No root needed; nothing leaves
# loopback.

REPO=$(cd "$BATS_TEST_DIRNAME/../.." && pwd)
K8SWATCH=${K8SWATCH:-$REPO/build/k8swatch}
FAKE=$BATS_TEST_DIRNAME/fixtures/fake_kube_api.py
SEL=egressd.io/enforce

setup() {
	[ -x "$K8SWATCH" ] || skip "build/k8swatch not built"
	D=$BATS_TEST_TMPDIR
	echo "token-one" >"$D/token"
	FAKE_PID= WATCH_PID=
}

teardown() {
	local rc=0
	[ -n "$WATCH_PID" ] && kill "$WATCH_PID" 2>/dev/null
	[ -n "$FAKE_PID" ] && kill "$FAKE_PID" 2>/dev/null
	if [ -n "$WATCH_PID" ]; then
		# k8swatch frees everything on SIGTERM and exits 0; a sanitizer
		# build (K8SWATCH=build-asan/k8swatch) reports what it found here.
		wait "$WATCH_PID" 2>/dev/null || rc=$?
		if grep -q Sanitizer "$D/err" 2>/dev/null; then
			cat "$D/err"
			rc=1
		fi
	fi
	[ -n "$FAKE_PID" ] && wait "$FAKE_PID" 2>/dev/null
	return $rc
}

# start_fake [ARGS]: the fake API, its ports in API_PORT and CTL.
start_fake() {
	python3 "$FAKE" --token-file "$D/token" --ready-file "$D/ready" "$@" 3>&- &
	FAKE_PID=$!
	for _ in $(seq 100); do [ -s "$D/ready" ] && break; sleep 0.05; done
	read -r API_PORT CTL_PORT <"$D/ready"
	CTL=http://127.0.0.1:$CTL_PORT
}

# start_watch [VAR=VALUE...]: k8swatch for node n1, events in $D/events.
start_watch() {
	env EGRESSD_K8S_API="${API_URL-http://127.0.0.1:$API_PORT}" \
		EGRESSD_K8S_TOKEN_FILE="$D/client-token" NODE_NAME=n1 \
		K8SWATCH_STATS="$D/stats" K8SWATCH_BACKOFF_MAX_MS=${BACKOFF_MAX_MS:-1000} "$@" \
		"$K8SWATCH" >"$D/events" 2>"$D/err" 3>&- &
	WATCH_PID=$!
}

ctl() { # ctl METHOD PATH [JSON]
	curl -sf -X "$1" "$CTL$2" ${3:+-d "$3"}
}

# add_pod NAME NODE [LABELS-JSON] [extra JSON fields]: prints the uid.
add_pod() {
	ctl POST /pods "{\"name\":\"$1\",\"node\":\"$2\",\"labels\":${3:-{\"$SEL\":\"true\"\}}${4:+,$4}}" |
		python3 -c 'import json,sys; print(json.load(sys.stdin)["metadata"]["uid"])'
}

# wait_event EVENT NAME [TIMEOUT_S]: an event line for pod NAME appears.
wait_event() {
	local n=$(((${3:-5}) * 20))
	for _ in $(seq "$n"); do
		count_events "$1" "$2" | grep -qv '^0$' && return 0
		sleep 0.05
	done
	echo "no $1 for $2 in:"
	cat "$D/events" "$D/err"
	return 1
}

count_events() { # count_events EVENT [NAME]
	python3 - "$D/events" "$1" "${2:-}" <<'EOF'
import json, sys
n = 0
for line in open(sys.argv[1]):
    try:
        e = json.loads(line)
    except ValueError:
        continue
    if e["event"] == sys.argv[2] and (not sys.argv[3] or e.get("name") == sys.argv[3]):
        n += 1
print(n)
EOF
}

# event_field EVENT NAME FIELD: FIELD of the last such event, as JSON.
event_field() {
	python3 - "$D/events" "$1" "$2" "$3" <<'EOF'
import json, sys
last = None
for line in open(sys.argv[1]):
    e = json.loads(line)
    if e["event"] == sys.argv[2] and e.get("name") == sys.argv[3]:
        last = e
print(json.dumps(last.get(sys.argv[4]) if last else None, sort_keys=True))
EOF
}

stat() { # stat FIELD: the client's counter
	python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$D/stats" "$1"
}

wait_stat() { # wait_stat FIELD MIN [TIMEOUT_S]: the counter reaches MIN
	local n=$(((${3:-5}) * 20))
	for _ in $(seq "$n"); do
		[ -s "$D/stats" ] && [ "$(stat "$1")" -ge "$2" ] 2>/dev/null && return 0
		sleep 0.05
	done
	echo "$1 did not reach $2:"
	cat "$D/stats" "$D/err"
	return 1
}

# requests [FILTER]: the API requests the fake saw, one per line:
# "STATUS watch|list AUTH RV".
requests() {
	ctl GET /log | python3 -c '
import json, sys
for e in json.load(sys.stdin):
    print(e.get("status", "-"), "watch" if e["watch"] else "list",
          e["auth"].replace("Bearer ", "") or "-", e["query"].get("resourceVersion", "-"))'
}

@test "k8s api: the list reports the node's opted-in pods, then SYNCED" {
	start_fake
	cp "$D/token" "$D/client-token"
	add_pod a n1 >/dev/null
	add_pod other-node n2 >/dev/null
	add_pod not-opted-in n1 '{"app":"x"}' >/dev/null
	add_pod with-ip n1 "" '"ip":"10.244.1.7","annotations":{"egressd.io/max-cost-usd":"2.5"},"qosClass":"Burstable"' >/dev/null
	start_watch
	wait_event SYNCED ""
	[ "$(count_events ADDED a)" -eq 1 ]
	[ "$(count_events ADDED with-ip)" -eq 1 ]
	[ "$(count_events ADDED other-node)" -eq 0 ]
	[ "$(count_events ADDED not-opted-in)" -eq 0 ]
	[ "$(event_field ADDED with-ip ips)" = '["10.244.1.7"]' ]
	[ "$(event_field ADDED with-ip annotations)" = '{"egressd.io/max-cost-usd": "2.5"}' ]
	[ "$(event_field ADDED with-ip qos)" = '"Burstable"' ]
	# The request had the node's field selector and the opt-in label.
	ctl GET /log | python3 -c '
import json, sys
q = json.load(sys.stdin)[0]["query"]
assert q["fieldSelector"] == "spec.nodeName=n1", q
assert q["labelSelector"] == "egressd.io/enforce=true", q'
}

@test "k8s api: an added pod, a label change and a delete arrive in order by the watch" {
	start_fake
	cp "$D/token" "$D/client-token"
	start_watch
	wait_event SYNCED ""
	uid=$(add_pod b n1)
	wait_event ADDED b
	ctl PATCH "/pods/$uid/labels" '{"egressd.io/phase":"verification"}' >/dev/null
	wait_event MODIFIED b
	[ "$(event_field MODIFIED b labels)" = '{"egressd.io/enforce": "true", "egressd.io/phase": "verification"}' ]
	ctl DELETE "/pods/$uid" >/dev/null
	wait_event DELETED b
	[ "$(event_field DELETED b uid)" = "\"$uid\"" ]
	# One list, and the events came from one watch, without a relist.
	[ "$(requests | grep -c ' list ')" -eq 1 ]
	[ "$(stat gone)" -eq 0 ]
	grep -q '"event":"ADDED".*"name":"b"' "$D/events"
	awk '/"name":"b"/ {print $0}' "$D/events" | python3 -c '
import json, sys
seq = [json.loads(l)["event"] for l in sys.stdin]
assert seq == ["ADDED", "MODIFIED", "DELETED"], seq'
}

@test "k8s api: a pod losing the opt-in label is DELETED, and ADDED when it has it again" {
	start_fake
	cp "$D/token" "$D/client-token"
	uid=$(add_pod c n1)
	start_watch
	wait_event ADDED c
	ctl PATCH "/pods/$uid/labels" "{\"$SEL\":null}" >/dev/null
	wait_event DELETED c
	ctl PATCH "/pods/$uid/labels" "{\"$SEL\":\"true\"}" >/dev/null
	for _ in $(seq 100); do [ "$(count_events ADDED c)" -eq 2 ] && break; sleep 0.05; done
	[ "$(count_events ADDED c)" -eq 2 ]
}

@test "k8s api: 410 Gone as the HTTP status: relist, and changes missed meanwhile are reported" {
	start_fake --gone-mode status
	cp "$D/token" "$D/client-token"
	uid=$(add_pod old n1)
	add_pod kept n1 >/dev/null
	start_watch
	wait_event SYNCED ""
	wait_stat watches 1
	# While the client is cut off, the pod goes and another comes; the
	# history is compacted, so its resourceVersion is gone when it returns.
	ctl POST /down >/dev/null
	ctl DELETE "/pods/$uid" >/dev/null
	add_pod new n1 >/dev/null
	ctl POST /expire '{"mode":"status"}' >/dev/null
	ctl POST /up >/dev/null
	wait_event ADDED new 10
	wait_event DELETED old
	[ "$(count_events SYNCED)" -eq 2 ]
	[ "$(stat gone)" -ge 1 ]
	# The pod that did not change is not reported again.
	[ "$(count_events ADDED kept)" -eq 1 ]
	[ "$(count_events MODIFIED kept)" -eq 0 ]
	requests | grep -q '^410 watch'
	[ "$(requests | grep -c ' list ')" -eq 2 ]
}

@test "k8s api: 410 Gone as an ERROR event in the watch: relist" {
	start_fake
	cp "$D/token" "$D/client-token"
	add_pod p n1 >/dev/null
	start_watch
	wait_event SYNCED ""
	wait_stat watches 1
	ctl POST /expire '{"mode":"event"}' >/dev/null
	wait_stat gone 1
	for _ in $(seq 100); do [ "$(count_events SYNCED)" -eq 2 ] && break; sleep 0.05; done
	[ "$(count_events SYNCED)" -eq 2 ]
	[ "$(requests | grep -c ' list ')" -eq 2 ]
	# Nothing changed, so the relist reports nothing but SYNCED.
	[ "$(count_events ADDED p)" -eq 1 ]
	[ "$(count_events DELETED p)" -eq 0 ]
}

@test "k8s api: a bookmark's resourceVersion is where the next watch resumes" {
	start_fake
	cp "$D/token" "$D/client-token"
	start_watch
	wait_event SYNCED ""
	wait_stat watches 1
	# Changes on another node move the resourceVersion without an event here.
	add_pod elsewhere1 n2 >/dev/null
	add_pod elsewhere2 n2 >/dev/null
	rv=$(ctl POST /bookmark | python3 -c 'import json,sys; print(json.load(sys.stdin)["rv"])')
	wait_stat bookmarks 1
	ctl POST /close-watches >/dev/null
	wait_stat watches 2
	requests | grep ' watch ' | tail -1 | grep -q " $rv\$" || { requests; false; }
	# The watch request asked for bookmarks and a bounded watch.
	ctl GET /log | python3 -c '
import json, sys
q = [e for e in json.load(sys.stdin) if e["watch"]][-1]["query"]
assert q["allowWatchBookmarks"] == "true" and int(q["timeoutSeconds"]) > 0, q'
}

@test "k8s api: the API going away: backoff, then a resync when it is back" {
	start_fake
	cp "$D/token" "$D/client-token"
	add_pod before n1 >/dev/null
	BACKOFF_MAX_MS=800 start_watch
	wait_event SYNCED ""
	wait_stat watches 1
	ctl POST /down >/dev/null
	sleep 3
	f=$(stat failures)
	# 200, 400, 800, 800... ms: a handful of tries in 3 s, not a busy loop.
	[ "$f" -ge 3 ] && [ "$f" -le 8 ] || { echo "failures=$f"; cat "$D/err"; false; }
	[ "$(stat synced)" = False ]
	ctl POST /up >/dev/null
	add_pod after n1 >/dev/null
	wait_event ADDED after 5
	for _ in $(seq 40); do [ "$(stat synced)" = True ] && break; sleep 0.05; done
	[ "$(stat synced)" = True ]
	[ "$(count_events ADDED before)" -eq 1 ]
}

@test "k8s api: a server that ends every watch at once is not asked in a busy loop" {
	start_fake
	cp "$D/token" "$D/client-token"
	start_watch
	wait_event SYNCED ""
	wait_stat watches 1
	ctl POST /flap '{"on":true}' >/dev/null
	ctl POST /close-watches >/dev/null
	t0=$(date +%s%3N)
	w0=$(stat watches)
	sleep 2
	w=$(($(stat watches) - w0))
	ms=$(($(date +%s%3N) - t0))
	# At most one request per EGD_K8S_BACKOFF_MIN_MS (200 ms) over the time
	# measured (the counters are written every 100 ms: two of slack); without
	# the floor it is thousands.
	max=$((ms / 200 + 2))
	[ "$w" -ge 2 ] && [ "$w" -le "$max" ] || { echo "watches in $ms ms: $w (max $max)"; false; }
	# And it still follows the pods.
	ctl POST /flap '{"on":false}' >/dev/null
	add_pod late n1 >/dev/null
	wait_event ADDED late
}

@test "k8s api: a rotated token is read again: 401 backs off, the new token recovers" {
	start_fake
	cp "$D/token" "$D/client-token"
	start_watch
	wait_event SYNCED ""
	wait_stat watches 1
	# The API now wants a new token the client does not have yet.
	echo "token-two" >"$D/token"
	ctl POST /close-watches >/dev/null
	wait_stat unauthorized 2
	add_pod during n1 >/dev/null
	sleep 0.3
	[ "$(count_events ADDED during)" -eq 0 ]
	# The kubelet writes the rotated token: the next try uses it.
	echo "token-two" >"$D/client-token"
	wait_event ADDED during 5
	requests | grep -q '^401 watch token-one'
	requests | tail -1 | grep -q '^200 watch token-two'
}

@test "k8s api: https with the cluster CA (in-cluster default URL) works, with another CA nothing is sent" {
	command -v openssl >/dev/null || skip "openssl missing"
	cd "$D"
	for ca in ca other; do
		openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
			-subj "/CN=$ca" -keyout $ca.key -out $ca.crt 2>/dev/null
	done
	openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=kubernetes \
		-keyout api.key -out api.csr 2>/dev/null
	printf 'subjectAltName=IP:127.0.0.1\n' >ext
	openssl x509 -req -in api.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 \
		-extfile ext -out api.crt 2>/dev/null
	start_fake --tls-cert api.crt --tls-key api.key
	cp "$D/token" "$D/client-token"
	add_pod secure n1 >/dev/null
	API_URL=https://127.0.0.1:$API_PORT start_watch EGRESSD_K8S_CA_FILE="$D/other.crt"
	wait_stat failures 2
	[ "$(count_events ADDED secure)" -eq 0 ]
	# Refused before any request reached the API: the token never left.
	[ "$(requests | wc -l)" -eq 0 ]
	kill "$WATCH_PID"
	wait "$WATCH_PID" || true
	# The in-cluster default: https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT.
	API_URL= start_watch EGRESSD_K8S_CA_FILE="$D/ca.crt" KUBERNETES_SERVICE_HOST=127.0.0.1 \
		KUBERNETES_SERVICE_PORT="$API_PORT"
	wait_event ADDED secure
}

@test "k8s api: settings: NODE_NAME missing, an API URL that is not http(s), in-cluster default" {
	run env -u NODE_NAME EGRESSD_K8S_API=http://127.0.0.1:1 "$K8SWATCH"
	[ "$status" -eq 2 ]
	[[ $output == *"NODE_NAME is not set"* ]]
	run env NODE_NAME=n1 EGRESSD_K8S_API=ftp://x "$K8SWATCH"
	[ "$status" -eq 2 ]
	[[ $output == *"EGRESSD_K8S_API"*"not an http:// or https:// URL"* ]]
	run env -u EGRESSD_K8S_API -u KUBERNETES_SERVICE_HOST NODE_NAME=n1 "$K8SWATCH"
	[ "$status" -eq 2 ]
	[[ $output == *"KUBERNETES_SERVICE_HOST"* ]]
}
