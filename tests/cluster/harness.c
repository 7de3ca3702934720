/*
 * harness - start, kill, restart and stop real kvnode processes for tests.
 *
 * See harness.h for the contract. Everything lives under one root directory
 * made by harness_init(); a cluster is a sub-directory with its
 * cluster.conf, its data and one log per node. The harness must never signal
 * a PID it did not start, never wait without a bound, and never remove a
 * path outside its root.
 */
#include "harness.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include "admin.h"
#include "keys.h"
#include "kv.h"
#include "wire.h"

#define ROOT_LEN 64             /* "/tmp/kvtest-XXXXXX" */
#define DIR_LEN (ROOT_LEN + 32) /* ROOT/cluster-XXXXXX */
#define PATH_LEN (DIR_LEN + 64) /* a file in a cluster directory */
#define MAX_LIVE 32
#define READY_TIMEOUT_MS 15000
#define STOP_TIMEOUT_MS 10000
#define REAP_TIMEOUT_MS 5000
#define START_ATTEMPTS 3
#define LOG_TAIL_BYTES 16384
#define RMTREE_MAX_DEPTH 16

struct node {
    uint32_t id;
    uint16_t port;
    pid_t pid; /* 0: not running */
    char addr[300];
    char log[PATH_LEN];
    char pub[KEYS_Z85_LEN + 1]; /* curve: its public key */
};

struct cluster {
    pid_t owner; /* the process that started the nodes */
    int nnodes;
    uint32_t shards;
    uint32_t replicas;
    char name[64];
    char *extra;
    char *security; /* more [security] lines, or NULL */
    int curve;
    char host[256];
    char client_key[PATH_LEN];         /* curve: the client's key file */
    char client_pub[KEYS_Z85_LEN + 1]; /* ... and its public key */
    char log_level[16];
    char dir[DIR_LEN];
    char conf[PATH_LEN];
    int unexpected; /* a node died without being asked to */
    struct node nodes[CLUSTER_MAX_NODES];
};

static char root_dir[ROOT_LEN];
static pid_t root_owner;
static int atexit_done;
static struct cluster *live[MAX_LIVE];
static uint16_t recent_ports[256];
static size_t nrecent;

/* --- small helpers -------------------------------------------------------- */

int64_t harness_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void harness_sleep_ms(int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000,
                          .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

const char *harness_kvnode(void)
{
    const char *p = getenv("KVNODE");
    return p != NULL && p[0] != '\0' ? p : "build/kvnode";
}

int harness_write_file(const char *path, const char *text, size_t len)
{
    int rc = KV_EIO;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        fprintf(stderr, "harness: open %s: %s\n", path, strerror(errno));
        return KV_EIO;
    }
    size_t done = 0;
    while (done < len) {
        ssize_t n = write(fd, text + done, len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            fprintf(stderr, "harness: write %s: %s\n", path, strerror(errno));
            goto out_close;
        }
        done += (size_t)n;
    }
    rc = 0;
out_close:
    close(fd);
    return rc;
}

/* Copies the last MAX bytes of the file PATH to stderr under a header. */
static void dump_file_tail(const char *title, const char *path, size_t max)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size == 0)
        goto out_close;
    off_t from = 0;
    if ((size_t)st.st_size > max)
        from = st.st_size - (off_t)max;
    if (lseek(fd, from, SEEK_SET) < 0)
        goto out_close;
    fprintf(stderr, "---- %s (%s, %lld bytes%s) ----\n", title, path,
            (long long)st.st_size, from > 0 ? ", tail" : "");
    fflush(stderr);
    char buf[4096];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        fwrite(buf, 1, (size_t)n, stderr);
    }
    fprintf(stderr, "---- end of %s ----\n", title);
out_close:
    close(fd);
}

/* Reads at most LEN-1 bytes of FD from its start into BUF, NUL-terminated. */
static void read_fd_into(int fd, char *buf, size_t len)
{
    if (buf == NULL || len == 0)
        return;
    buf[0] = '\0';
    if (lseek(fd, 0, SEEK_SET) < 0)
        return;
    size_t done = 0;
    while (done + 1 < len) {
        ssize_t n = read(fd, buf + done, len - 1 - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        done += (size_t)n;
    }
    buf[done] = '\0';
}

/* --- removing directories ------------------------------------------------- */

/* Whether PATH is the root or inside it. */
static int inside_root(const char *path)
{
    size_t n = strlen(root_dir);
    if (n == 0 || strncmp(path, root_dir, n) != 0)
        return 0;
    return path[n] == '\0' || (path[n] == '/' && strstr(path, "..") == NULL);
}

/* Removes NAME in the directory DIRFD and everything below it. */
static int rmtree_at(int dirfd, const char *name, int depth)
{
    struct stat st;
    if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0)
        return errno == ENOENT ? 0 : KV_EIO;
    if (!S_ISDIR(st.st_mode)) {
        if (unlinkat(dirfd, name, 0) != 0 && errno != ENOENT)
            return KV_EIO;
        return 0;
    }
    if (depth >= RMTREE_MAX_DEPTH)
        return KV_EIO;
    int rc = 0;
    for (int pass = 0; pass < 3; pass++) {
        int fd = openat(dirfd, name,
                        O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
            return KV_EIO;
        DIR *d = fdopendir(fd);
        if (d == NULL) {
            close(fd);
            return KV_EIO;
        }
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            if (rmtree_at(fd, e->d_name, depth + 1) != 0)
                rc = KV_EIO;
        }
        closedir(d);
        if (unlinkat(dirfd, name, AT_REMOVEDIR) == 0 || errno == ENOENT)
            return 0;
        if (errno != ENOTEMPTY && errno != EEXIST)
            return KV_EIO;
    }
    return rc != 0 ? rc : KV_EIO;
}

int harness_rmtree(const char *path)
{
    if (path == NULL || !inside_root(path)) {
        fprintf(stderr, "harness: refusing to remove %s (not under %s)\n",
                path != NULL ? path : "(null)", root_dir);
        return KV_EINVAL;
    }
    int rc = rmtree_at(AT_FDCWD, path, 0);
    if (rc != 0)
        fprintf(stderr, "harness: could not remove all of %s\n", path);
    return rc;
}

/* --- the root directory --------------------------------------------------- */

static void stop_all_live(void)
{
    for (size_t k = 0; k < MAX_LIVE; k++) {
        if (live[k] != NULL && live[k]->owner == getpid())
            cluster_stop(live[k]);
    }
}

/* Prints every node log left under the root: the logs kept by
 * cluster_stop() and those of clusters a failed fork child left behind. */
static void dump_root_logs(void)
{
    DIR *d = opendir(root_dir);
    if (d == NULL)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        char path[ROOT_LEN + 260];
        size_t n = strlen(e->d_name);
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "%s/%s", root_dir, e->d_name);
        if (n > 4 && strcmp(e->d_name + n - 4, ".log") == 0) {
            dump_file_tail(e->d_name, path, LOG_TAIL_BYTES);
            continue;
        }
        DIR *sub = opendir(path);
        if (sub == NULL)
            continue;
        struct dirent *f;
        while ((f = readdir(sub)) != NULL) {
            if (strncmp(f->d_name, "node-", 5) != 0)
                continue;
            char lp[ROOT_LEN + 520];
            snprintf(lp, sizeof lp, "%s/%s", path, f->d_name);
            dump_file_tail(f->d_name, lp, LOG_TAIL_BYTES);
        }
        closedir(sub);
    }
    closedir(d);
}

static void harness_atexit(void)
{
    stop_all_live();
    if (root_dir[0] != '\0' && root_owner == getpid()) {
        harness_rmtree(root_dir);
        root_dir[0] = '\0';
    }
}

int harness_init(void)
{
    if (root_dir[0] != '\0')
        return 0;
    char tmpl[] = "/tmp/kvtest-XXXXXX";
    if (mkdtemp(tmpl) == NULL) {
        fprintf(stderr, "harness: mkdtemp: %s\n", strerror(errno));
        return KV_EIO;
    }
    snprintf(root_dir, sizeof root_dir, "%s", tmpl);
    root_owner = getpid();
    if (!atexit_done) {
        atexit(harness_atexit);
        atexit_done = 1;
    }
    fprintf(stderr, "harness: root %s, kvnode %s\n", root_dir,
            harness_kvnode());
    return 0;
}

int harness_fini(int failed)
{
    stop_all_live();
    if (root_dir[0] != '\0' && root_owner == getpid()) {
        if (failed != 0 || getenv("KV_TEST_DUMP_LOGS") != NULL)
            dump_root_logs();
        harness_rmtree(root_dir);
        root_dir[0] = '\0';
    }
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

int harness_tempdir(char *buf, size_t len)
{
    if (root_dir[0] == '\0' && harness_init() != 0)
        return KV_EIO;
    char tmpl[PATH_LEN];
    int n = snprintf(tmpl, sizeof tmpl, "%s/tmp-XXXXXX", root_dir);
    if (n < 0 || (size_t)n >= len || (size_t)n >= sizeof tmpl)
        return KV_EINVAL;
    if (mkdtemp(tmpl) == NULL) {
        fprintf(stderr, "harness: mkdtemp %s: %s\n", tmpl, strerror(errno));
        return KV_EIO;
    }
    memcpy(buf, tmpl, (size_t)n + 1);
    return 0;
}

/* --- processes ------------------------------------------------------------ */

/* Describes a wait status into BUF. */
static void describe_status(int status, char *buf, size_t len)
{
    if (WIFEXITED(status))
        snprintf(buf, len, "exit status %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(buf, len, "killed by signal %d", WTERMSIG(status));
    else
        snprintf(buf, len, "wait status 0x%x", (unsigned)status);
}

/* Waits at most MS for PID to end. Returns 1 with *status set, or 0. */
static int reap_within(pid_t pid, int ms, int *status)
{
    int64_t deadline = harness_now_ms() + ms;
    for (;;) {
        pid_t r = waitpid(pid, status, WNOHANG);
        if (r == pid)
            return 1;
        if (r < 0 && errno != EINTR) {
            *status = 0;
            return 1; /* not our child any more: nothing to wait for */
        }
        if (harness_now_ms() >= deadline)
            return 0;
        harness_sleep_ms(5);
    }
}

/* Forks and execs ARGV[0] with stdin from /dev/null and stdout/stderr to
 * OUTFD/ERRFD. The child dies with this process. Returns the PID or -1. */
static pid_t spawn(char *const argv[], int outfd, int errfd)
{
    int nullfd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (nullfd < 0)
        return -1;
    pid_t parent = getpid();
    fflush(stdout);
    fflush(stderr);
    /* Block every signal across fork: until the child has reset them, a
     * signal sent to it (say our own SIGTERM when a start fails) must not
     * run a handler of this process, such as Check's, which kills the
     * whole process group. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pid_t pid = fork();
    if (pid == 0) {
        /* Only async-signal-safe calls until exec. */
        struct sigaction dfl;
        memset(&dfl, 0, sizeof dfl);
        dfl.sa_handler = SIG_DFL;
        sigemptyset(&dfl.sa_mask);
        for (int sig = 1; sig < 65; sig++)
            sigaction(sig, &dfl, NULL); /* fails harmlessly for some */
#ifdef __linux__
        prctl(PR_SET_PDEATHSIG, SIGKILL);
#endif
        sigset_t none;
        sigemptyset(&none);
        pthread_sigmask(SIG_SETMASK, &none, NULL);
        if (getppid() != parent)
            _exit(127);
        if (dup2(nullfd, 0) < 0 || dup2(outfd, 1) < 0 || dup2(errfd, 2) < 0)
            _exit(127);
        execv(argv[0], argv);
        static const char msg[] = "harness: exec failed\n";
        ssize_t ignored = write(2, msg, sizeof msg - 1);
        (void)ignored;
        _exit(127);
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    close(nullfd);
    return pid;
}

int harness_run_kvnode(const char *const *args, int timeout_ms, int *exit_code,
                       char *out, size_t outlen, char *err, size_t errlen)
{
    const char *argv[32];
    size_t n = 0;
    argv[n++] = harness_kvnode();
    for (; args != NULL && args[n - 1] != NULL && n < 31; n++)
        argv[n] = args[n - 1];
    argv[n] = NULL;
    return harness_run(argv, timeout_ms, exit_code, out, outlen, err, errlen);
}

int harness_run(const char *const *args, int timeout_ms, int *exit_code,
                char *out, size_t outlen, char *err, size_t errlen)
{
    int rc = KV_EIO;
    char *argv[32];
    size_t n = 0;
    for (; args != NULL && args[n] != NULL && n < 31; n++)
        argv[n] = (char *)args[n];
    argv[n] = NULL;
    if (n == 0)
        return KV_EINVAL;
    if (root_dir[0] == '\0' && harness_init() != 0)
        return KV_EIO;

    char opath[PATH_LEN], epath[PATH_LEN];
    snprintf(opath, sizeof opath, "%s/run-out-XXXXXX", root_dir);
    snprintf(epath, sizeof epath, "%s/run-err-XXXXXX", root_dir);
    int ofd = mkstemp(opath);
    if (ofd < 0)
        return KV_EIO;
    int efd = mkstemp(epath);
    if (efd < 0)
        goto out_ofd;

    pid_t pid = spawn(argv, ofd, efd);
    if (pid < 0) {
        fprintf(stderr, "harness: fork: %s\n", strerror(errno));
        goto out_efd;
    }
    int status = 0;
    if (reap_within(pid, timeout_ms, &status)) {
        rc = 0;
    } else {
        kill(pid, SIGKILL);
        if (!reap_within(pid, REAP_TIMEOUT_MS, &status))
            fprintf(stderr, "harness: pid %d did not die\n", (int)pid);
        rc = KV_ETIMEDOUT;
    }
    if (exit_code != NULL) {
        if (WIFEXITED(status))
            *exit_code = WEXITSTATUS(status);
        else if (WIFSIGNALED(status))
            *exit_code = 128 + WTERMSIG(status);
        else
            *exit_code = -1;
    }
    read_fd_into(ofd, out, outlen);
    read_fd_into(efd, err, errlen);
out_efd:
    close(efd);
    unlink(epath);
out_ofd:
    close(ofd);
    unlink(opath);
    return rc;
}

/* --- ports and configuration ---------------------------------------------- */

static int port_recent(uint16_t p)
{
    size_t n = nrecent < 256 ? nrecent : 256;
    for (size_t k = 0; k < n; k++)
        if (recent_ports[k] == p)
            return 1;
    return 0;
}

/* A TCP port on 127.0.0.1 that was free a moment ago and that this process
 * has not handed out recently. Returns 0 or KV_EIO. */
static int free_port(uint16_t *port)
{
    for (int tries = 0; tries < 64; tries++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0)
            return KV_EIO;
        struct sockaddr_in a;
        memset(&a, 0, sizeof a);
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        a.sin_port = 0;
        socklen_t alen = sizeof a;
        int ok = bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
                 getsockname(fd, (struct sockaddr *)&a, &alen) == 0;
        close(fd);
        if (!ok)
            return KV_EIO;
        uint16_t p = ntohs(a.sin_port);
        if (p == 0 || port_recent(p))
            continue;
        recent_ports[nrecent++ % 256] = p;
        *port = p;
        return 0;
    }
    return KV_EIO;
}

static int write_conf(struct cluster *c)
{
    size_t cap = 1024 + (size_t)c->nnodes * 512 +
                 (c->extra != NULL ? strlen(c->extra) : 0) +
                 (c->security != NULL ? strlen(c->security) : 0);
    char *text = malloc(cap);
    if (text == NULL)
        return KV_ENOMEM;
    int len = snprintf(text, cap,
                       "# written by tests/cluster/harness.c\n"
                       "cluster = %s\n"
                       "shards = %u\n"
                       "replicas = %u\n"
                       "data_dir = data\n"
                       "%s"
                       "\n",
                       c->name, c->shards, c->replicas,
                       c->extra != NULL ? c->extra : "");
    if ((c->curve || c->security != NULL) && len > 0 && (size_t)len < cap)
        len += snprintf(
            text + len, cap - (size_t)len, "[security]\n%s%s%s%s%s\n",
            c->curve ? "curve = on\n" : "", c->curve ? "client_keys = " : "",
            c->curve ? c->client_pub : "", c->curve ? "\n" : "",
            c->security != NULL ? c->security : "");
    for (int i = 0; i < c->nnodes && len > 0 && (size_t)len < cap; i++) {
        len +=
            snprintf(text + len, cap - (size_t)len, "[node %u]\naddress = %s\n",
                     c->nodes[i].id, c->nodes[i].addr);
        if (c->curve && len > 0 && (size_t)len < cap)
            len += snprintf(text + len, cap - (size_t)len,
                            "public_key = %s\nsecret_key_file = node-%u.key\n",
                            c->nodes[i].pub, c->nodes[i].id);
    }
    int rc = KV_EINTERNAL;
    if (len > 0 && (size_t)len < cap)
        rc = harness_write_file(c->conf, text, (size_t)len);
    free(text);
    return rc;
}

static int choose_ports(struct cluster *c)
{
    for (int i = 0; i < c->nnodes; i++) {
        struct node *n = &c->nodes[i];
        if (free_port(&n->port) != 0) {
            fprintf(stderr, "harness: no free port\n");
            return KV_EIO;
        }
        snprintf(n->addr, sizeof n->addr, "tcp://%s:%u", c->host,
                 (unsigned)n->port);
    }
    return 0;
}

/* --- nodes ---------------------------------------------------------------- */

/* Reaps node I if it has exited, remembering that as unexpected. */
static void check_node(struct cluster *c, int i)
{
    struct node *n = &c->nodes[i];
    if (n->pid <= 0 || c->owner != getpid())
        return;
    int status;
    pid_t r = waitpid(n->pid, &status, WNOHANG);
    if (r != n->pid)
        return;
    char why[64];
    describe_status(status, why, sizeof why);
    fprintf(stderr, "harness: node %u (pid %d) died unexpectedly: %s\n", n->id,
            (int)n->pid, why);
    n->pid = 0;
    c->unexpected = 1;
    cluster_dump_log(c, i);
}

int cluster_spawn_node(struct cluster *c, int i)
{
    return cluster_spawn_node_args(c, i, NULL);
}

int cluster_spawn_node_args(struct cluster *c, int i, const char *const *extra)
{
    if (c == NULL || i < 0 || i >= c->nnodes || c->owner != getpid())
        return KV_EINVAL;
    check_node(c, i);
    struct node *n = &c->nodes[i];
    if (n->pid > 0)
        return KV_EINVAL;
    char idbuf[16];
    snprintf(idbuf, sizeof idbuf, "%u", n->id);
    char *argv[16] = {(char *)harness_kvnode(),
                      "-c",
                      c->conf,
                      "-n",
                      idbuf,
                      "--log-level",
                      c->log_level,
                      NULL};
    for (size_t k = 7; extra != NULL && extra[k - 7] != NULL; k++) {
        if (k >= 15)
            return KV_EINVAL;
        argv[k] = (char *)extra[k - 7];
        argv[k + 1] = NULL;
    }
    int fd = open(n->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) {
        fprintf(stderr, "harness: open %s: %s\n", n->log, strerror(errno));
        return KV_EIO;
    }
    pid_t pid = spawn(argv, fd, fd);
    close(fd);
    if (pid < 0) {
        fprintf(stderr, "harness: fork: %s\n", strerror(errno));
        return KV_EIO;
    }
    n->pid = pid;
    return 0;
}

int cluster_wait_exit(struct cluster *c, int i, int timeout_ms, int *exit_code)
{
    if (c == NULL || i < 0 || i >= c->nnodes || c->owner != getpid() ||
        c->nodes[i].pid <= 0)
        return KV_EINVAL;
    int status = 0;
    if (!reap_within(c->nodes[i].pid, timeout_ms, &status))
        return KV_ETIMEDOUT;
    c->nodes[i].pid = 0;
    if (exit_code != NULL) {
        if (WIFEXITED(status))
            *exit_code = WEXITSTATUS(status);
        else if (WIFSIGNALED(status))
            *exit_code = 128 + WTERMSIG(status);
        else
            *exit_code = -1;
    }
    return 0;
}

int cluster_node_running(struct cluster *c, int i)
{
    if (c == NULL || i < 0 || i >= c->nnodes)
        return 0;
    check_node(c, i);
    return c->nodes[i].pid > 0;
}

/* Whether ST comes from node ID and names a leader for every shard it holds. */
static int status_ready(const Kv__StatusResult *st, uint32_t id)
{
    if (st->node_id != id)
        return 0;
    for (size_t k = 0; k < st->n_shard_info; k++) {
        const Kv__ShardInfo *si = st->shard_info[k];
        if (si != NULL && si->local && si->leader == 0)
            return 0;
    }
    return 1;
}

/* The index in DB's node list of the node with id ID, or -1. */
static long admin_index(kv *db, uint32_t id)
{
    size_t n = admin_node_count(db);
    for (size_t j = 0; j < n; j++)
        if (admin_node_id(db, j) == id)
            return (long)j;
    return -1;
}

int cluster_wait_ready(struct cluster *c, int timeout_ms)
{
    if (c == NULL || c->owner != getpid())
        return KV_EINVAL;
    kv_open_opts oo = {.timeout_ms = 500, .key_file = cluster_client_key(c)};
    kv *db = NULL;
    int ready[CLUSTER_MAX_NODES] = {0};
    int last = 0;
    int rc;
    int64_t deadline = harness_now_ms() + timeout_ms;
    for (;;) {
        int all = 1;
        for (int i = 0; i < c->nnodes; i++) {
            int was = c->nodes[i].pid > 0;
            check_node(c, i);
            if (was && c->nodes[i].pid == 0) {
                rc = KV_EUNAVAILABLE;
                goto out;
            }
        }
        if (db == NULL) {
            last = kv_open(c->conf, &oo, &db);
            if (last != KV_OK)
                db = NULL;
        }
        for (int i = 0; i < c->nnodes; i++) {
            if (c->nodes[i].pid == 0 || ready[i])
                continue;
            long j = db != NULL ? admin_index(db, c->nodes[i].id) : -1;
            Kv__StatusResult *st = NULL;
            if (j >= 0)
                last = admin_status(db, (size_t)j, 300, &st);
            if (st != NULL) {
                ready[i] = status_ready(st, c->nodes[i].id);
                admin_status_free(st);
            }
            if (!ready[i])
                all = 0;
        }
        if (db != NULL && all) {
            rc = 0;
            goto out;
        }
        if (harness_now_ms() >= deadline) {
            for (int i = 0; i < c->nnodes; i++)
                if (c->nodes[i].pid > 0 && !ready[i]) {
                    fprintf(
                        stderr,
                        "harness: node %u not ready after %d ms (last: %s)\n",
                        c->nodes[i].id, timeout_ms, kv_strerror(last));
                    cluster_dump_log(c, i);
                }
            rc = KV_ETIMEDOUT;
            goto out;
        }
        harness_sleep_ms(50);
    }
out:
    kv_close(db);
    return rc;
}

int cluster_restart_node(struct cluster *c, int i)
{
    int rc = cluster_spawn_node(c, i);
    if (rc != 0)
        return rc;
    return cluster_wait_ready(c, READY_TIMEOUT_MS);
}

/* Ends node I: SIG, then SIGKILL after STOP_TIMEOUT_MS. Sets *status.
 * Returns 0, or KV_EINTERNAL when it had to be killed. */
static int end_node(struct cluster *c, int i, int sig, int *status)
{
    struct node *n = &c->nodes[i];
    int rc = 0;
    kill(n->pid, sig);
    if (!reap_within(n->pid, STOP_TIMEOUT_MS, status)) {
        fprintf(stderr,
                "harness: node %u (pid %d) ignored signal %d for %d ms; "
                "sending SIGKILL\n",
                n->id, (int)n->pid, sig, STOP_TIMEOUT_MS);
        kill(n->pid, SIGKILL);
        if (!reap_within(n->pid, REAP_TIMEOUT_MS, status))
            fprintf(stderr, "harness: pid %d did not die\n", (int)n->pid);
        rc = KV_EINTERNAL;
    }
    n->pid = 0;
    return rc;
}

/* Whether STATUS is what SIG should have produced. */
static int status_expected(int status, int sig)
{
    if (sig == SIGTERM || sig == SIGINT)
        return WIFEXITED(status) && WEXITSTATUS(status) == 0;
    return WIFSIGNALED(status) && WTERMSIG(status) == sig;
}

int cluster_kill(struct cluster *c, int i, int sig)
{
    if (c == NULL || i < 0 || i >= c->nnodes || c->owner != getpid())
        return KV_EINVAL;
    check_node(c, i);
    if (c->nodes[i].pid <= 0)
        return KV_EINVAL;
    int status = 0;
    int rc = end_node(c, i, sig, &status);
    if (rc == 0 && !status_expected(status, sig)) {
        char why[64];
        describe_status(status, why, sizeof why);
        fprintf(stderr, "harness: node %u after signal %d: %s\n",
                c->nodes[i].id, sig, why);
        cluster_dump_log(c, i);
        rc = KV_EINTERNAL;
    }
    return rc;
}

/* Stops every running node of C with SIGTERM, in parallel. */
static int stop_nodes(struct cluster *c)
{
    int rc = 0;
    for (int i = 0; i < c->nnodes; i++) {
        check_node(c, i);
        if (c->nodes[i].pid > 0)
            kill(c->nodes[i].pid, SIGTERM);
    }
    int64_t deadline = harness_now_ms() + STOP_TIMEOUT_MS;
    for (int i = 0; i < c->nnodes; i++) {
        struct node *n = &c->nodes[i];
        if (n->pid <= 0)
            continue;
        int status = 0;
        int64_t left = deadline - harness_now_ms();
        if (!reap_within(n->pid, left > 0 ? (int)left : 0, &status)) {
            fprintf(stderr,
                    "harness: node %u (pid %d) still running %d ms after "
                    "SIGTERM; sending SIGKILL\n",
                    n->id, (int)n->pid, STOP_TIMEOUT_MS);
            kill(n->pid, SIGKILL);
            if (!reap_within(n->pid, REAP_TIMEOUT_MS, &status))
                fprintf(stderr, "harness: pid %d did not die\n", (int)n->pid);
            n->pid = 0;
            rc = KV_EINTERNAL;
            cluster_dump_log(c, i);
            continue;
        }
        n->pid = 0;
        if (!status_expected(status, SIGTERM)) {
            char why[64];
            describe_status(status, why, sizeof why);
            fprintf(stderr, "harness: node %u after SIGTERM: %s\n", n->id, why);
            cluster_dump_log(c, i);
            rc = KV_EINTERNAL;
        }
    }
    return rc;
}

static void unregister(struct cluster *c)
{
    for (size_t k = 0; k < MAX_LIVE; k++)
        if (live[k] == c)
            live[k] = NULL;
}

/* Frees C after stopping its nodes and removing its directory; keeps the
 * node logs under the root when KEEP_LOGS. */
static int destroy(struct cluster *c, int keep_logs)
{
    int rc = stop_nodes(c);
    if (c->unexpected)
        rc = KV_EINTERNAL;
    if (getenv("KV_TEST_DUMP_LOGS") != NULL)
        for (int i = 0; i < c->nnodes; i++)
            cluster_dump_log(c, i);
    if (keep_logs) {
        const char *base = strrchr(c->dir, '/');
        base = base != NULL ? base + 1 : c->dir;
        for (int i = 0; i < c->nnodes; i++) {
            char to[PATH_LEN * 2];
            snprintf(to, sizeof to, "%s/%s-node-%u.log", root_dir, base,
                     c->nodes[i].id);
            rename(c->nodes[i].log, to);
        }
    }
    if (c->dir[0] != '\0')
        harness_rmtree(c->dir);
    unregister(c);
    free(c->extra);
    free(c->security);
    free(c);
    return rc;
}

int cluster_stop(struct cluster *c)
{
    if (c == NULL)
        return 0;
    if (c->owner != getpid())
        return KV_EINVAL; /* a fork child: the nodes are not ours */
    return destroy(c, 1);
}

/* Runs `$KVNODE keygen PATH` (made in C's directory from NAME) and keeps
 * the public key it prints in PUB. */
static int keygen(struct cluster *c, const char *name, char *path, size_t plen,
                  char pub[KEYS_Z85_LEN + 1])
{
    char out[256] = "", err[512] = "";
    int code = -1;
    int n = snprintf(path, plen, "%s/%s", c->dir, name);
    if (n < 0 || (size_t)n >= plen)
        return KV_EINVAL;
    const char *args[] = {"keygen", path, NULL};
    int rc = harness_run_kvnode(args, 10000, &code, out, sizeof out, err,
                                sizeof err);
    if (rc != 0 || code != 0 || strlen(out) != KEYS_Z85_LEN + 1 ||
        !keys_z85_valid(out, KEYS_Z85_LEN)) {
        fprintf(stderr, "harness: kvnode keygen %s: exit %d: %s%s\n", path,
                code, out, err);
        return KV_EIO;
    }
    memcpy(pub, out, KEYS_Z85_LEN);
    pub[KEYS_Z85_LEN] = '\0';
    return 0;
}

/* A key pair for every node and for the client (curve clusters). */
static int make_keys(struct cluster *c)
{
    char path[PATH_LEN];
    for (int i = 0; i < c->nnodes; i++) {
        char name[32];
        snprintf(name, sizeof name, "node-%u.key", c->nodes[i].id);
        int rc = keygen(c, name, path, sizeof path, c->nodes[i].pub);
        if (rc != 0)
            return rc;
    }
    return keygen(c, "client.key", c->client_key, sizeof c->client_key,
                  c->client_pub);
}

/* One attempt at starting every node of C on fresh ports. */
static int start_nodes(struct cluster *c)
{
    int rc = choose_ports(c);
    if (rc != 0)
        return rc;
    rc = write_conf(c);
    if (rc != 0)
        return rc;
    for (int i = 0; i < c->nnodes; i++) {
        rc = cluster_spawn_node(c, i);
        if (rc != 0)
            return rc;
    }
    return cluster_wait_ready(c, READY_TIMEOUT_MS);
}

int cluster_start_opts(struct cluster **out, int nnodes, uint32_t shards,
                       uint32_t replicas, const struct cluster_opts *o)
{
    int rc = KV_EINVAL;
    if (out == NULL || nnodes < 1 || nnodes > CLUSTER_MAX_NODES)
        return KV_EINVAL;
    if (root_dir[0] == '\0' && harness_init() != 0)
        return KV_EIO;
    size_t slot = MAX_LIVE;
    for (size_t k = 0; k < MAX_LIVE && slot == MAX_LIVE; k++)
        if (live[k] == NULL)
            slot = k;
    if (slot == MAX_LIVE)
        return KV_EINVAL;

    struct cluster *c = calloc(1, sizeof *c);
    if (c == NULL)
        return KV_ENOMEM;
    c->owner = getpid();
    c->nnodes = nnodes;
    c->shards = shards;
    c->replicas = replicas;
    const char *name = o != NULL && o->name != NULL ? o->name : "kvtest";
    const char *level = o != NULL && o->log_level != NULL
                            ? o->log_level
                            : getenv("KV_TEST_LOG_LEVEL");
    snprintf(c->name, sizeof c->name, "%s", name);
    snprintf(c->log_level, sizeof c->log_level, "%s",
             level != NULL ? level : "warn");
    snprintf(c->host, sizeof c->host, "%s",
             o != NULL && o->host != NULL ? o->host : "127.0.0.1");
    c->curve = o != NULL && o->curve;
    if (o != NULL && o->extra != NULL) {
        c->extra = strdup(o->extra);
        if (c->extra == NULL) {
            rc = KV_ENOMEM;
            goto fail_free;
        }
    }
    if (o != NULL && o->security != NULL) {
        c->security = strdup(o->security);
        if (c->security == NULL) {
            rc = KV_ENOMEM;
            goto fail_free;
        }
    }
    snprintf(c->dir, sizeof c->dir, "%s/cluster-XXXXXX", root_dir);
    if (mkdtemp(c->dir) == NULL) {
        fprintf(stderr, "harness: mkdtemp: %s\n", strerror(errno));
        c->dir[0] = '\0';
        rc = KV_EIO;
        goto fail_free;
    }
    snprintf(c->conf, sizeof c->conf, "%s/cluster.conf", c->dir);
    for (int i = 0; i < nnodes; i++) {
        c->nodes[i].id = (uint32_t)i + 1;
        snprintf(c->nodes[i].log, sizeof c->nodes[i].log, "%s/node-%d.log",
                 c->dir, i + 1);
    }
    live[slot] = c;
    if (c->curve && (rc = make_keys(c)) != 0) {
        destroy(c, 1);
        return rc;
    }

    for (int attempt = 0; attempt < START_ATTEMPTS; attempt++) {
        rc = start_nodes(c);
        if (rc == 0) {
            *out = c;
            return 0;
        }
        stop_nodes(c);
        if (rc != KV_EUNAVAILABLE)
            break;
        /* A node died while starting: perhaps someone took its port
         * between our probe and its bind. Try again on new ports. */
        fprintf(stderr, "harness: cluster start attempt %d failed (%s)\n",
                attempt + 1, kv_strerror(rc));
        c->unexpected = 0;
    }
    fprintf(stderr, "harness: could not start a cluster of %d nodes: %s\n",
            nnodes, kv_strerror(rc));
    destroy(c, 1);
    return rc;

fail_free:
    if (c->dir[0] != '\0')
        harness_rmtree(c->dir);
    free(c->extra);
    free(c->security);
    free(c);
    return rc;
}

int cluster_start(struct cluster **out, int nnodes, uint32_t shards,
                  uint32_t replicas)
{
    return cluster_start_opts(out, nnodes, shards, replicas, NULL);
}

int cluster_set_name(struct cluster *c, const char *name)
{
    if (c == NULL || name == NULL)
        return KV_EINVAL;
    snprintf(c->name, sizeof c->name, "%s", name);
    return write_conf(c);
}

void cluster_dump_log(const struct cluster *c, int i)
{
    if (c == NULL || i < 0 || i >= c->nnodes)
        return;
    char title[64];
    snprintf(title, sizeof title, "node %u log", c->nodes[i].id);
    dump_file_tail(title, c->nodes[i].log, LOG_TAIL_BYTES);
}

const char *cluster_client_key(const struct cluster *c)
{
    return c != NULL && c->curve ? c->client_key : NULL;
}

const char *cluster_conf_path(const struct cluster *c)
{
    return c->conf;
}

const char *cluster_dir(const struct cluster *c)
{
    return c->dir;
}

const char *cluster_node_addr(const struct cluster *c, int i)
{
    return i >= 0 && i < c->nnodes ? c->nodes[i].addr : "";
}

uint16_t cluster_node_port(const struct cluster *c, int i)
{
    return i >= 0 && i < c->nnodes ? c->nodes[i].port : 0;
}

uint32_t cluster_node_id(const struct cluster *c, int i)
{
    return i >= 0 && i < c->nnodes ? c->nodes[i].id : 0;
}

pid_t cluster_node_pid(const struct cluster *c, int i)
{
    return i >= 0 && i < c->nnodes ? c->nodes[i].pid : 0;
}

int cluster_nnodes(const struct cluster *c)
{
    return c->nnodes;
}

uint32_t cluster_shards(const struct cluster *c)
{
    return c->shards;
}

/* --- raw requests --------------------------------------------------------- */

size_t harness_encode_txn_puts(char k[][32], const char *val, const void *cid,
                               size_t cidlen, uint64_t seq, uint64_t id,
                               uint32_t timeout_ms, void **buf)
{
    Kv__TxnOp ops[2] = {KV__TXN_OP__INIT, KV__TXN_OP__INIT};
    Kv__TxnOp *pops[2] = {&ops[0], &ops[1]};
    for (int i = 0; i < 2; i++) {
        ops[i].kind = KV__TXN_OP__KIND__PUT;
        ops[i].key.data = (uint8_t *)k[i];
        ops[i].key.len = strlen(k[i]);
        ops[i].value.data = (uint8_t *)val;
        ops[i].value.len = strlen(val);
    }
    Kv__TxnRequest tr = KV__TXN_REQUEST__INIT;
    tr.ops = pops;
    tr.n_ops = 2;
    Kv__Request rq = KV__REQUEST__INIT;
    rq.id = id;
    rq.timeout_ms = timeout_ms;
    rq.client_id.data = (uint8_t *)cid;
    rq.client_id.len = cidlen;
    rq.seq = seq;
    rq.op_case = KV__REQUEST__OP_TXN;
    rq.txn = &tr;
    size_t len = 0;
    if (wire_encode_request(&rq, buf, &len) != KV_OK)
        abort();
    return len;
}
