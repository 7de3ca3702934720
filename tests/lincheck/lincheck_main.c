/*
 * lincheck_main - checks a history file (tests/lincheck/lincheck.h format)
 * for linearizability:
 *
 *   lincheck [--max-states N] [--max-ms N] [--max-mb N] [FILE | -]
 *
 * Prints "linearizable: yes|no|unknown" and the report. Exits 0 (yes),
 * 1 (no), 2 (unknown: a budget ran out) or 3 (usage, unreadable or malformed
 * file, out of memory).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lincheck.h"

static void usage(void)
{
    fprintf(stderr, "usage: lincheck [--max-states N] [--max-ms N] "
                    "[--max-mb N] [FILE | -]\n");
}

/* Parses a positive decimal number. Returns 0 or -1. */
static int number(const char *s, uint64_t *out)
{
    char *end;
    unsigned long long v;
    if (s == NULL || *s < '0' || *s > '9')
        return -1;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0' || v == 0)
        return -1;
    *out = v;
    return 0;
}

int main(int argc, char **argv)
{
    struct lin_budget b = {0, 0, 0};
    struct lin_report rep;
    struct lin_history *h = NULL;
    const char *path = NULL;
    FILE *f = NULL;
    char err[256] = "";
    int i, rc, status = 3;

    memset(&rep, 0, sizeof rep);
    for (i = 1; i < argc; i++) {
        uint64_t v = 0;
        const char *a = argv[i];
        if (strcmp(a, "--max-states") == 0 || strcmp(a, "--max-ms") == 0 ||
            strcmp(a, "--max-mb") == 0) {
            if (number(i + 1 < argc ? argv[i + 1] : NULL, &v) != 0) {
                usage();
                goto out;
            }
            i++;
            if (strcmp(a, "--max-states") == 0)
                b.max_states = v;
            else if (strcmp(a, "--max-ms") == 0)
                b.max_ms = v;
            else if (v > UINT64_MAX / (1024u * 1024u))
                b.max_bytes = UINT64_MAX;
            else
                b.max_bytes = v * 1024u * 1024u;
        } else if (path == NULL && (a[0] != '-' || strcmp(a, "-") == 0)) {
            path = a;
        } else {
            usage();
            goto out;
        }
    }
    if (path == NULL || strcmp(path, "-") == 0) {
        f = stdin;
        path = "(stdin)";
    } else {
        f = fopen(path, "r");
        if (f == NULL) {
            fprintf(stderr, "lincheck: %s: %s\n", path, strerror(errno));
            goto out;
        }
    }
    h = lin_new();
    if (h == NULL) {
        fprintf(stderr, "lincheck: out of memory\n");
        goto out;
    }
    rc = lin_read(f, h, err, sizeof err);
    if (rc != LIN_OK) {
        fprintf(stderr, "lincheck: %s: %s\n", path, err);
        goto out;
    }
    rc = lin_check(h, &b, &rep);
    if (rc < 0) {
        fprintf(stderr, "lincheck: out of memory\n");
        goto out;
    }
    if (lin_report_print(&rep, stdout) != LIN_OK || fflush(stdout) != 0) {
        fprintf(stderr, "lincheck: cannot write the report\n");
        goto out;
    }
    status = rc == LIN_OK ? 0 : rc == LIN_VIOLATION ? 1 : 2;
out:
    lin_report_release(&rep);
    lin_free(h);
    if (f != NULL && f != stdin)
        fclose(f);
    return status;
}
