/*
 * log - structured log lines on stderr.
 *
 * One line per event: "ts=... level=info node=1 msg=\"...\" key=value ...".
 * The caller formats the key=value part; this module adds the prefix and
 * serialises lines so that concurrent writers do not interleave.
 */
#ifndef KV_LOG_H
#define KV_LOG_H

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR, LOG_OFF };

/* Sets the lowest level printed (default LOG_WARN) and a component tag
 * printed on every line (e.g. "node=1"; NULL for none). */
void log_setup(enum log_level min, const char *tag);

/* Parses "debug", "info", "warn", "error" or "off". Returns 0 or -1. */
int log_parse_level(const char *s, enum log_level *out);

/* Whether LEVEL is printed: lets callers skip building expensive lines. */
int log_enabled(enum log_level level);

/* Prints one line: msg="MSG" then the printf-formatted FMT (key=value pairs,
 * may be NULL). */
void log_msg(enum log_level level, const char *msg, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
