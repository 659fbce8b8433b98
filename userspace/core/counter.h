/* SPDX-License-Identifier: MIT */
/*
 * Counters with one writer, the thread that owns them, read from another
 * (/metrics). Relaxed atomic stores on the writer's side and relaxed loads
 * on the reader's: no lock prefix, no torn value, and no data race for
 * ThreadSanitizer to report. A scrape may be a few events behind.
 */
#ifndef EGD_CORE_COUNTER_H
#define EGD_CORE_COUNTER_H

#define EGD_COUNTER_ADD(var, n) __atomic_store_n(&(var), (var) + (n), __ATOMIC_RELAXED)
#define EGD_COUNTER_INC(var) EGD_COUNTER_ADD(var, 1)
#define EGD_COUNTER_DEC(var) __atomic_store_n(&(var), (var)-1, __ATOMIC_RELAXED)

#endif
