/*
 * err - names of result codes. Codes are never renumbered or reused.
 */
#include "kv.h"

const char *kv_strerror(int code)
{
    switch (code) {
    case KV_OK:
        return "ok";
    case KV_ENOTFOUND:
        return "not found";
    case KV_ENOTLEADER:
        return "not the serving node";
    case KV_ECONFLICT:
        return "condition failed";
    case KV_ETIMEDOUT:
        return "timed out";
    case KV_EUNAVAILABLE:
        return "unavailable";
    case KV_EINVAL:
        return "invalid argument";
    case KV_ETOOBIG:
        return "too big";
    case KV_EPROTO:
        return "protocol error";
    case KV_EIO:
        return "i/o error";
    case KV_ECORRUPT:
        return "data corrupted";
    case KV_ENOMEM:
        return "out of memory";
    case KV_EAUTH:
        return "not authorized";
    case KV_EOF:
        return "end of iteration";
    case KV_EINTERNAL:
        return "internal error";
    case KV_ENOPROC:
        return "no such procedure";
    case KV_EPROC:
        return "procedure failed";
    case KV_EBUDGET:
        return "procedure over its budget";
    case KV_ERANGE:
        return "value out of range";
    default:
        return "unknown error";
    }
}
