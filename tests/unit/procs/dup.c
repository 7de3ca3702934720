/*
 * dup - a test plugin for check_proc.c that defines `sum_prefix` again (as
 * procs/sum_prefix.c does), so loading both fails naming both files.
 */
#include "kvproc.h"

static int other_sum(kv_proc_ctx *ctx, const void *arg, size_t len)
{
    (void)arg;
    (void)len;
    return kv_proc_reply(ctx, "0 0 0", 5);
}

/* Defines `dup_first` and then `sum_prefix`. */
int kv_proc_register(kv_proc_registry *reg)
{
    int rc = kv_proc_define(reg, "dup_first", other_sum, NULL, 0);
    if (rc == KV_OK)
        rc = kv_proc_define(reg, "sum_prefix", other_sum, NULL,
                            KV_PROC_READONLY);
    return rc;
}
