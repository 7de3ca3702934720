/*
 * datadir - a node's data directory (DATA_DIR/ID) around damage.
 *
 * A node that finds its data damaged stops and leaves a marker file,
 * DIR/DAMAGED, saying why and when; while it is there the node refuses to
 * start. `kvnode --rebuild` replaces the directory by an empty one whose
 * shards catch up from their leaders: the old one is moved aside, never
 * deleted, so it can be inspected. This module only moves directories and
 * writes the marker; it never reads or repairs the data itself.
 *
 * Rebuilding is crash safe. The new directory is prepared next to the old
 * one as DIR.rebuild (its replicas marked rebuilt: replica_mark_rebuilt),
 * then DIR is renamed aside and DIR.rebuild renamed to DIR. A crash
 * between the two renames leaves no DIR and a DIR.rebuild, which the next
 * start (datadir_check) renames into place, so the node can never start
 * on an empty directory that has forgotten it was rebuilt.
 */
#ifndef KV_DATADIR_H
#define KV_DATADIR_H

#include <stddef.h>
#include <stdint.h>

struct conf;

/* The name of the marker file inside a damaged data directory. */
#define DATADIR_DAMAGED "DAMAGED"

/* Writes node ID's data directory (CONF->data_dir/ID) into BUF (LEN bytes).
 * Returns KV_OK, or KV_EINVAL when it does not fit. */
int datadir_path(const struct conf *conf, uint32_t id, char *buf, size_t len);

/* Whether a node may start on DIR. First finishes a rebuild that a crash
 * interrupted after DIR was moved aside. Returns KV_OK, KV_ECORRUPT when
 * DIR/DAMAGED exists (ERR then holds its first line: why and when), or
 * KV_EIO (ERR says why). */
int datadir_check(const char *dir, char *err, size_t errlen);

/* Writes DIR/DAMAGED (synced): the time (UTC) and REASON. Returns KV_OK or
 * KV_EIO (ERR says why; the caller still stops the node). */
int datadir_mark_damaged(const char *dir, const char *reason, char *err,
                         size_t errlen);

/* Rebuilds node ID's data directory DIR (kvnode --rebuild): prepares an
 * empty store whose replicas are marked rebuilt, moves DIR (if any) aside
 * to DIR.damaged-YYYYmmddTHHMMSS (UTC; its name goes into ASIDE, "" when
 * there was no DIR) and puts the new store in its place. Refuses while a
 * process holds DIR's LevelDB lock (the node runs). Returns KV_OK;
 * KV_EINVAL (the node runs, or CONF cannot rebuild: see
 * replica_mark_rebuilt) or KV_EIO, with ERR saying why. */
int datadir_rebuild(const struct conf *conf, uint32_t id, const char *dir,
                    char *aside, size_t asidelen, char *err, size_t errlen);

#endif
