/*
 * shadow - a test plugin for check_proc.c that defines the built-in `incr`
 * again and ignores the error it gets: the load must fail all the same.
 */
#include "kvproc.h"

static int my_incr(kv_proc_ctx *ctx, const void *arg, size_t len)
{
    (void)ctx;
    (void)arg;
    (void)len;
    return KV_OK;
}

/* Defines `incr` (refused) and returns KV_OK regardless. */
int kv_proc_register(kv_proc_registry *reg)
{
    (void)kv_proc_define(reg, "incr", my_incr, NULL, 0);
    return KV_OK;
}
