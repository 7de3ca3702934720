/*
 * replay - a plain main() for a fuzz target: feeds it files, one input per
 * file, as libFuzzer would replay them (LLVMFuzzerInitialize once, then
 * LLVMFuzzerTestOneInput per file). It lets `make test` run the seed
 * corpus through every target without clang or libFuzzer, and reproduces
 * a crash file under a debugger:
 *
 *   build/fuzz-replay/request tests/fuzz/corpus          (every file below)
 *   build/fuzz-replay/request crash-0123abcd             (one file)
 *
 * Arguments are files or folders (a folder: every regular file in it and
 * in its subfolders, in name order). A finding aborts the process; the
 * name of the input being run is printed first with -v or KV_FUZZ_VERBOSE.
 * Exit status 0 when every input ran, 1 when an argument could not be
 * read or no input was found.
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz.h"

#define REPLAY_MAX_INPUT (16u * 1024 * 1024) /* larger files are refused */
#define MAX_DEPTH 4

static int verbose;
static size_t ran;

static int run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return -1;
    }
    uint8_t *buf = malloc(REPLAY_MAX_INPUT);
    if (!buf) {
        fclose(f);
        fprintf(stderr, "replay: out of memory\n");
        return -1;
    }
    size_t n = fread(buf, 1, REPLAY_MAX_INPUT, f);
    int bad = ferror(f) || (n == REPLAY_MAX_INPUT && fgetc(f) != EOF);
    fclose(f);
    if (bad) {
        fprintf(stderr, "replay: %s: unreadable or over %u bytes\n", path,
                REPLAY_MAX_INPUT);
        free(buf);
        return -1;
    }
    if (verbose)
        fprintf(stderr, "replay: %s (%zu bytes)\n", path, n);
    /* An exact-size copy, so ASan sees reads past the input's end. */
    uint8_t *exact = malloc(n ? n : 1);
    if (!exact) {
        free(buf);
        fprintf(stderr, "replay: out of memory\n");
        return -1;
    }
    memcpy(exact, buf, n);
    free(buf);
    LLVMFuzzerTestOneInput(exact, n);
    free(exact);
    ran++;
    return 0;
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int run_path(const char *path, int depth);

static int run_dir(const char *path, int depth)
{
    DIR *d = opendir(path);
    if (!d) {
        perror(path);
        return -1;
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        if (n == cap) {
            size_t c = cap ? cap * 2 : 64;
            char **x = realloc(names, c * sizeof(*x));
            if (!x) {
                rc = -1;
                break;
            }
            names = x;
            cap = c;
        }
        size_t len = strlen(path) + strlen(e->d_name) + 2;
        names[n] = malloc(len);
        if (!names[n]) {
            rc = -1;
            break;
        }
        snprintf(names[n], len, "%s/%s", path, e->d_name);
        n++;
    }
    closedir(d);
    if (n > 1)
        qsort(names, n, sizeof(*names), cmp_names);
    for (size_t i = 0; i < n; i++) {
        if (rc == 0)
            rc = run_path(names[i], depth + 1);
        free(names[i]);
    }
    free(names);
    if (rc != 0)
        fprintf(stderr, "replay: %s: could not read every file\n", path);
    return rc;
}

static int run_path(const char *path, int depth)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        perror(path);
        return -1;
    }
    if (S_ISDIR(st.st_mode)) {
        if (depth >= MAX_DEPTH) {
            fprintf(stderr, "replay: %s: folders nested too deep\n", path);
            return -1;
        }
        return run_dir(path, depth);
    }
    if (!S_ISREG(st.st_mode))
        return 0;
    return run_file(path);
}

int main(int argc, char **argv)
{
    int first = 1;
    if (argc > 1 && strcmp(argv[1], "-v") == 0) {
        verbose = 1;
        first = 2;
    }
    if (getenv("KV_FUZZ_VERBOSE"))
        verbose = 1;
    if (first >= argc) {
        fprintf(stderr, "usage: %s [-v] FILE|FOLDER...\n", argv[0]);
        return 1;
    }
    LLVMFuzzerInitialize(&argc, &argv);
    int rc = 0;
    for (int i = first; i < argc; i++)
        if (run_path(argv[i], 0) != 0)
            rc = 1;
    if (ran == 0) {
        fprintf(stderr, "replay: no input found\n");
        rc = 1;
    }
    printf("replay: %zu inputs ran%s\n", ran,
           rc == 0 ? ", no finding" : "; some could not be read");
    return rc;
}
