/*
 * log - structured log lines on stderr (see log.h). Lines are written with
 * one fputs under stderr's lock so concurrent threads never interleave.
 */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static enum log_level min_level = LOG_WARN;
static char log_tag[64];

static const char *level_names[] = {"debug", "info", "warn", "error", "off"};

void log_setup(enum log_level min, const char *tag)
{
    min_level = min;
    snprintf(log_tag, sizeof(log_tag), "%s", tag ? tag : "");
}

int log_parse_level(const char *s, enum log_level *out)
{
    for (int i = LOG_DEBUG; i <= LOG_OFF; i++) {
        if (strcmp(s, level_names[i]) == 0) {
            *out = (enum log_level)i;
            return 0;
        }
    }
    return -1;
}

int log_enabled(enum log_level level)
{
    return level >= min_level && level != LOG_OFF;
}

void log_msg(enum log_level level, const char *msg, const char *fmt, ...)
{
    if (!log_enabled(level))
        return;
    char line[1024];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof(line),
                     "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s%s%s "
                     "msg=\"%s\"",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                     tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000,
                     level_names[level], log_tag[0] ? " " : "", log_tag, msg);
    if (n < 0)
        return;
    size_t used = (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1;
    if (fmt && used < sizeof(line) - 2) {
        line[used++] = ' ';
        va_list ap;
        va_start(ap, fmt);
        int m = vsnprintf(line + used, sizeof(line) - used, fmt, ap);
        va_end(ap);
        if (m > 0)
            used += (size_t)m < sizeof(line) - used ? (size_t)m
                                                    : sizeof(line) - used - 1;
    }
    if (used > sizeof(line) - 2)
        used = sizeof(line) - 2;
    line[used++] = '\n';
    line[used] = '\0';
    fputs(line, stderr);
}
