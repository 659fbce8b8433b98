/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the answer scanner (usage.c): the scanning path and
 * the jansson path must agree on every input, in whether it is a JSON
 * object and in every field they read from it, since the scanner is only
 * a faster way to the same charge.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/usage.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct egd_usage a, b;
	int ra = egd_usage_from_body((const char *)data, size, &a);
	int rb = egd_usage_from_body_full((const char *)data, size, &b);

	if (ra != rb || a.has_cost != b.has_cost || a.has_error != b.has_error ||
	    memcmp(&a.cost_usd, &b.cost_usd, sizeof(a.cost_usd)) ||
	    a.prompt_tokens != b.prompt_tokens || a.completion_tokens != b.completion_tokens ||
	    strcmp(a.model, b.model) || strcmp(a.provider, b.provider) ||
	    strcmp(a.generation_id, b.generation_id) || strcmp(a.error, b.error))
		abort();
	return 0;
}
