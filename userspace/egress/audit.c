/* SPDX-License-Identifier: MIT */
/*
 * The decision log: one JSON object per line, fields as in DESIGN.md. Hosts
 * come from the agent and may hold anything; jansson does the escaping.
 */
#include "egress/daemon.h"
#include "core/log.h"

#include <jansson.h>

void egd_audit(const struct egd_audit_rec *r)
{
	char ts[40], src[64], dst[64];
	json_t *o;

	egd_timestamp(ts, sizeof(ts));
	egd_addr_format(r->src, src, sizeof(src));
	egd_addr_format(r->dst, dst, sizeof(dst));
	o = json_pack("{s:s, s:s, s:s, s:I, s:s, s:s, s:s, s:s, s:s, s:s}", "ts", ts, "event",
		      r->event, "phase", egd_phase_name(r->phase), "cgroup",
		      (json_int_t)r->cgroup_id, "src", src, "dst", dst, "proto",
		      egd_proto_name(r->proto), "host", r->host ? r->host : "", "verdict",
		      egd_verdict_name(r->verdict), "reason", egd_reason_name(r->reason));
	if (!o)
		return;
	if (r->detail)
		json_object_set_new(o, "detail", json_string(r->detail));
	if (r->has_totals) {
		json_object_set_new(o, "bytes_up", json_integer((json_int_t)r->bytes_up));
		json_object_set_new(o, "bytes_down", json_integer((json_int_t)r->bytes_down));
		json_object_set_new(o, "duration_ms", json_integer((json_int_t)r->duration_ms));
	}
	json_dumpf(o, egd_audit_stream(), JSON_COMPACT | JSON_ENSURE_ASCII);
	fputc('\n', egd_audit_stream());
	json_decref(o);
}
