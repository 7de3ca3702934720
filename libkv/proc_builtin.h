/*
 * proc_builtin - the built-in procedures (incr, append, cas, mget), defined
 * through kvproc.h like any plugin, and a helper both proc.c and they use
 * to quote keys in messages. Internal to libkv.
 */
#ifndef KV_PROC_BUILTIN_H
#define KV_PROC_BUILTIN_H

#include <stddef.h>

#include "kvproc.h"

/* Defines the built-ins in REG. Returns KV_OK or kv_proc_define's error. */
int proc_builtin_register(kv_proc_registry *reg);

/* Writes a printable, NUL-terminated form of P (N bytes) into BUF (CAP
 * bytes, at least 8): printable ASCII as is, '\' and other bytes as \xNN,
 * cut with "..." when it does not fit. Returns BUF. */
const char *proc_show(char *buf, size_t cap, const void *p, size_t n);

/* Room for a key quoted by proc_show in a message (about 40 bytes). */
#define PROC_SHOW_LEN 48

#endif
