/*
 * nosym - a test plugin for check_proc.c that does not export
 * kv_proc_register (its function has another name), so loading it fails.
 */
#include "kvproc.h"

int kv_proc_register_misspelt(kv_proc_registry *reg);

static int noop(kv_proc_ctx *ctx, const void *arg, size_t len)
{
    (void)ctx;
    (void)arg;
    (void)len;
    return KV_OK;
}

/* Would define `noop`, but nothing calls it. */
int kv_proc_register_misspelt(kv_proc_registry *reg)
{
    return kv_proc_define(reg, "noop", noop, NULL, 0);
}
