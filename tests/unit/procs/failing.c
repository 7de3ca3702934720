/*
 * failing - a test plugin for check_proc.c whose kv_proc_register defines a
 * procedure and then returns an error of its own.
 */
#include "kvproc.h"

static int noop(kv_proc_ctx *ctx, const void *arg, size_t len)
{
    (void)ctx;
    (void)arg;
    (void)len;
    return KV_OK;
}

/* Defines `failing_noop`, then reports a failure of its own. */
int kv_proc_register(kv_proc_registry *reg)
{
    int rc = kv_proc_define(reg, "failing_noop", noop, NULL, 0);
    return rc != KV_OK ? rc : KV_EIO;
}
