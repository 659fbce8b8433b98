#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# The container deployment, checked offline (there is no Docker engine where
# the suite runs): deploy/compose/check.sh on the real files must pass, and
# on copies with one invariant broken it must fail, naming that invariant.
# The mutations are what show each check can fail. No root needed.

REPO=$(cd "$BATS_TEST_DIRNAME/../.." && pwd)
CHECK=$REPO/deploy/compose/check.sh
# Debian's interpreter, where python3-yaml is installed (as check.sh does).
PY=python3
[ -x /usr/bin/python3 ] && PY=/usr/bin/python3

# mutate_compose PYTHON: run PYTHON on d (the parsed compose.yaml, egressd
# service as eg, agent as ag) and point EGD_COMPOSE at the result. The build
# context is made absolute so the copy still builds from the repository.
mutate_compose() {
	export EGD_COMPOSE=$BATS_TEST_TMPDIR/compose.yaml
	"$PY" - "$REPO/deploy/compose/compose.yaml" "$EGD_COMPOSE" "$REPO" "$1" <<'EOF'
import sys, yaml
src, dst, repo, code = sys.argv[1:]
d = yaml.safe_load(open(src))
d["services"]["egressd"]["build"]["context"] = repo
eg, ag = d["services"]["egressd"], d["services"]["agent"]
exec(code)
yaml.safe_dump(d, open(dst, "w"), sort_keys=False)
EOF
}

# mutate_dockerfile SED-SCRIPT: a copy of the Dockerfile (and .dockerignore)
# edited by sed, and EGD_DOCKERFILE pointing at it.
mutate_dockerfile() {
	cp "$REPO/Dockerfile" "$REPO/.dockerignore" "$BATS_TEST_TMPDIR/"
	export EGD_DOCKERFILE=$BATS_TEST_TMPDIR/Dockerfile
	sed -i -e "$1" "$EGD_DOCKERFILE"
	# The edit must have changed something, or the test proves nothing.
	! cmp -s "$REPO/Dockerfile" "$EGD_DOCKERFILE"
}

fails_with() { # fails_with TEXT: check failed, and for this reason
	[ "$status" -eq 1 ] || { echo "status $status, expected 1"; return 1; }
	grep -qF -- "FAIL: $1" <<<"$output" || { echo "no 'FAIL: $1' in:"; echo "$output"; return 1; }
}

# --- the real files pass -------------------------------------------------------

@test "deploy: compose.yaml is valid Compose (schema)" {
	run "$CHECK" schema
	[ "$status" -ne 77 ] || skip "neither docker compose nor docker-compose installed"
	echo "$output"
	[ "$status" -eq 0 ]
	[[ $output == *"ok: compose schema"* ]]
}

@test "deploy: compose.yaml keeps every invariant" {
	run "$CHECK" compose
	echo "$output"
	[ "$status" -eq 0 ]
	[[ $output == *"ok: agent: network_mode is service:egressd"* ]]
	! grep -q '^FAIL' <<<"$output"
}

@test "deploy: Dockerfile passes the lint rules" {
	run "$CHECK" dockerfile
	echo "$output"
	[ "$status" -eq 0 ]
	[[ $output == *"ok: multi-stage build"* ]]
	! grep -q '^FAIL' <<<"$output"
}

# --- broken copies fail, each for its reason ------------------------------------

@test "deploy: the schema check refuses an unknown service key" {
	command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 ||
		skip "neither docker compose nor docker-compose installed"
	mutate_compose 'ag["netwrk_mode"] = ag.pop("network_mode")'
	run "$CHECK" schema
	echo "$output"
	[ "$status" -ne 0 ]
}

@test "deploy: compose that does not parse fails" {
	export EGD_COMPOSE=$BATS_TEST_TMPDIR/compose.yaml
	printf 'services:\n  egressd: [unclosed\n' >"$EGD_COMPOSE"
	run "$CHECK" compose
	fails_with "compose file does not parse"
}

@test "deploy: an agent outside egressd's namespace fails" {
	mutate_compose 'ag["network_mode"] = "bridge"'
	run "$CHECK" compose
	fails_with "agent: network_mode is service:egressd"
}

@test "deploy: an agent keeping its capabilities fails" {
	mutate_compose 'del ag["cap_drop"]'
	run "$CHECK" compose
	fails_with "agent: cap_drop ALL"
}

@test "deploy: an agent with NET_RAW or NET_ADMIN fails" {
	mutate_compose 'ag["cap_add"] = ["NET_RAW"]'
	run "$CHECK" compose
	fails_with "agent: no NET_ADMIN/NET_RAW/SYS_ADMIN/BPF in cap_add (has NET_RAW)"
	mutate_compose 'ag["cap_add"] = ["CAP_NET_ADMIN"]'
	run "$CHECK" compose
	fails_with "agent: no NET_ADMIN/NET_RAW/SYS_ADMIN/BPF in cap_add (has NET_ADMIN)"
}

@test "deploy: a privileged agent fails" {
	mutate_compose 'ag["privileged"] = True'
	run "$CHECK" compose
	fails_with "agent: not privileged"
}

@test "deploy: an agent started before egressd is ready fails" {
	mutate_compose 'ag["depends_on"] = ["egressd"]'
	run "$CHECK" compose
	fails_with "agent: depends_on egressd condition service_healthy"
}

@test "deploy: a writable CA volume on the agent fails" {
	mutate_compose 'ag["volumes"] = [v.replace(":ro", "") for v in ag["volumes"]]'
	run "$CHECK" compose
	fails_with "agent: the CA volume is mounted read-only"
}

@test "deploy: an agent trusting the wrong CA file fails" {
	mutate_compose 'ag["environment"]["SSL_CERT_FILE"] = "/var/run/egressd/ca/ca.crt"'
	run "$CHECK" compose
	fails_with "agent: SSL_CERT_FILE=/var/run/egressd/ca/ca-bundle.crt"
}

@test "deploy: a sentinel the agent can write fails" {
	mutate_compose '
eg["environment"]["EGRESSD_SENTINEL"] = "/proxy-data/egress-unlocked"
ag["volumes"].append("proxy-data:/proxy-data")'
	run "$CHECK" compose
	fails_with "egressd: the sentinel's directory is on nothing the agent can write"
	fails_with "agent: shares no volume with egressd but the CA"
}

@test "deploy: a CA key directory the agent can see, or none, fails" {
	mutate_compose 'ag["volumes"].append("egressd-key:/var/lib/egressd:ro")'
	run "$CHECK" compose
	fails_with "agent: mounts nothing at or around the CA key directory"
	fails_with "agent: shares no volume with egressd but the CA (shares egressd-key)"
	mutate_compose 'eg["volumes"] = [v for v in eg["volumes"] if "/var/lib/egressd" not in v]'
	run "$CHECK" compose
	fails_with "egressd: the CA key directory (/var/lib/egressd) is a writable volume"
}

@test "deploy: egressd without NET_ADMIN, or with more, fails" {
	mutate_compose 'eg["cap_add"] = []'
	run "$CHECK" compose
	fails_with "egressd: cap_add NET_ADMIN"
	mutate_compose 'eg["cap_add"] = ["NET_ADMIN", "SYS_ADMIN"]'
	run "$CHECK" compose
	fails_with "egressd: no capability but NET_ADMIN (has SYS_ADMIN)"
}

@test "deploy: a health check that is not readiness fails" {
	mutate_compose 'eg["healthcheck"]["test"] = ["CMD", "true"]'
	run "$CHECK" compose
	fails_with "egressd: healthcheck asks /readyz"
}

@test "deploy: a secret written into compose.yaml fails" {
	mutate_compose 'eg["environment"]["OPENROUTER_MANAGEMENT_KEY"] = "sk-or-v1-literal"'
	run "$CHECK" compose
	fails_with "egressd: OPENROUTER_MANAGEMENT_KEY is interpolated, not written in"
}

@test "deploy: an egressd variable the README does not document fails" {
	mutate_compose 'eg["environment"]["EGRESSD_LISTN"] = "127.0.0.1:15443"'
	run "$CHECK" compose
	fails_with "egressd: every environment variable is in the README table (missing"
	[[ $output == *EGRESSD_LISTN* ]]
}

@test "deploy: a compose README without the sentinel command fails" {
	export EGD_COMPOSE_README=$BATS_TEST_TMPDIR/README.md
	grep -v 'touch /tmp/egress-unlocked' "$REPO/deploy/compose/README.md" >"$EGD_COMPOSE_README"
	run "$CHECK" compose
	fails_with "deploy/compose/README.md documents"
}

@test "deploy: a FROM on latest or without a tag fails" {
	mutate_dockerfile 's/^FROM debian:12-slim$/FROM debian:latest/'
	run "$CHECK" dockerfile
	fails_with "FROM debian:latest is pinned by tag or digest, not latest"
	mutate_dockerfile 's/^FROM debian:12 AS build$/FROM debian AS build/'
	run "$CHECK" dockerfile
	fails_with "FROM debian is pinned"
}

@test "deploy: a single-stage Dockerfile fails" {
	mutate_dockerfile '/^FROM debian:12-slim$/,$d'
	run "$CHECK" dockerfile
	fails_with "multi-stage build (1 stages)"
}

@test "deploy: apt-get install with recommends or kept lists fails" {
	mutate_dockerfile 's/ --no-install-recommends//'
	run "$CHECK" dockerfile
	fails_with "apt-get install --no-install-recommends"
	mutate_dockerfile 's|rm -rf /var/lib/apt/lists/\*|true|'
	run "$CHECK" dockerfile
	fails_with "apt lists removed in the same RUN"
}

@test "deploy: a compiler in the runtime stage fails" {
	mutate_dockerfile 's/ca-certificates libcap2-bin/ca-certificates libcap2-bin gcc libssl-dev/'
	run "$CHECK" dockerfile
	fails_with "runtime stage installs no compiler or -dev package (gcc, libssl-dev)"
}

@test "deploy: a runtime stage missing a library fails" {
	mutate_dockerfile 's/ libnftnl11 / /'
	run "$CHECK" dockerfile
	fails_with "runtime stage installs libnftnl11"
}

@test "deploy: a root runtime without a stated reason fails" {
	mutate_dockerfile '/^USER /d'
	run "$CHECK" dockerfile
	fails_with "runtime stage ends with a non-root USER"
}

@test "deploy: a Dockerfile without HEALTHCHECK fails" {
	mutate_dockerfile '/^HEALTHCHECK/,/^\tCMD/d'
	run "$CHECK" dockerfile
	fails_with "HEALTHCHECK on /readyz in the runtime stage"
}

@test "deploy: a secret baked into the image fails" {
	mutate_dockerfile 's/^ENV EGRESSD_LISTEN=/ENV OPENROUTER_MANAGEMENT_KEY=sk-or-v1-x EGRESSD_LISTEN=/'
	run "$CHECK" dockerfile
	fails_with "no secret in ENV OPENROUTER_MANAGEMENT_KEY"
}

@test "deploy: a .dockerignore letting build dirs in fails" {
	cp "$REPO/Dockerfile" "$REPO/.dockerignore" "$BATS_TEST_TMPDIR/"
	export EGD_DOCKERFILE=$BATS_TEST_TMPDIR/Dockerfile
	sed -i '/^build/d' "$BATS_TEST_TMPDIR/.dockerignore"
	run "$CHECK" dockerfile
	fails_with ".dockerignore excludes build"
}

@test "deploy: the deprecated no-new-privileges:true syntax fails" {
	mutate_compose 'ag["security_opt"] = ["no-new-privileges:true"]'
	run "$CHECK" compose
	fails_with "agent: security_opt no-new-privileges=true"
}

@test "deploy: an agent without an init as PID 1 fails" {
	mutate_compose 'del ag["init"]'
	run "$CHECK" compose
	fails_with "agent: init: true"
}

@test "deploy: a compose README without the recovery command fails" {
	export EGD_COMPOSE_README=$BATS_TEST_TMPDIR/README.md
	grep -v -- '--no-deps --force-recreate agent' "$REPO/deploy/compose/README.md" \
		>"$EGD_COMPOSE_README"
	run "$CHECK" compose
	fails_with "deploy/compose/README.md documents \`docker compose up -d --no-deps --force-recreate agent\`"
}

@test "deploy: a Dockerfile granting the capability with the effective bit fails" {
	mutate_dockerfile 's/cap_net_admin+p /cap_net_admin+ep /'
	run "$CHECK" dockerfile
	fails_with "the file capability is permitted only (cap_net_admin+p)"
}
