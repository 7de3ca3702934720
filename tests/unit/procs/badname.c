/*
 * badname - a test plugin for check_proc.c that defines a procedure whose
 * name has a space in it, which kv_proc_define refuses.
 */
#include "kvproc.h"

static int noop(kv_proc_ctx *ctx, const void *arg, size_t len)
{
    (void)ctx;
    (void)arg;
    (void)len;
    return KV_OK;
}

/* Defines `bad name`. */
int kv_proc_register(kv_proc_registry *reg)
{
    return kv_proc_define(reg, "bad name", noop, NULL, 0);
}
