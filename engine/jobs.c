/* File-system jobs: a list of steps (make folders, write a file, rename, remove, fsync) run in order
 * on a worker thread, so the event loop goes on receiving while the disk works: a pull assembles
 * and installs a model this way, off the loop. The workers are a small pool, started on first use
 * and joined when the module is unloaded; a job waits in a queue for a free one. */
#include "core.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define JOB_MT "modelget.FsJob"
#define POOL_MT "modelget.FsPool"
#define POOL_MAX 4

enum { OP_FSYNC, OP_MKDIRS, OP_WRITE, OP_RENAME, OP_REMOVE, OP_SHA256 };
static const char *const op_names[] = { "fsync", "mkdirs", "write", "rename", "remove", "sha256", NULL };

typedef struct {
  int op;
  char *path, *to;    /* to: rename's target */
  char *data;         /* write's bytes */
  size_t len;
  int optional;       /* a missing path is not a failure (rename, remove); write: fsync it too */
} FsOp;

typedef struct FsJob {
  struct FsJob *next; /* in the pool's queue */
  FsOp *ops;
  int nops;
  int queued;         /* handed to a worker (or run on the caller's thread) */
  int done;           /* written under the pool's lock, read with __atomic */
  int err, errat;     /* the first failure: errno and the step's index (the job stops there) */
  int closed;
  char sha256[65];    /* the last sha256 step's digest, hex */
} FsJob;

static struct {
  pthread_mutex_t mu;
  pthread_cond_t work, finished;
  FsJob *head, *tail;
  pthread_t threads[POOL_MAX];
  int nthreads, idle, pending, stopping, atfork;
} pool = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER,
           NULL, NULL, { 0 }, 0, 0, 0, 0, 0 };

static int run_op(const FsOp *o, char *sha_out) {
  switch (o->op) {
  case OP_FSYNC: return mg_fsync_path(o->path);
  case OP_MKDIRS: return mg_mkdirs(o->path, 0755);
  case OP_WRITE: {
    int fd = open(o->path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return errno;
    int err = mg_write_all(fd, o->data, o->len, 0);
    if (!err && o->optional && fsync(fd) != 0) err = errno;
    if (close(fd) != 0 && !err) err = errno;
    return err;
  }
  case OP_RENAME:
    if (rename(o->path, o->to) == 0 || (o->optional && errno == ENOENT)) return 0;
    return errno;
  case OP_REMOVE:
    if (unlink(o->path) == 0 || (o->optional && errno == ENOENT)) return 0;
    return errno;
  case OP_SHA256:
    return mg_sha256_path(o->path, sha_out);
  }
  return EINVAL;
}

static void run_job(FsJob *j) {
  for (int i = 0; i < j->nops; i++) {
    int err = run_op(&j->ops[i], j->sha256);
    if (err) { j->err = err; j->errat = i; break; }
  }
}

static void *worker_main(void *arg) {
  (void)arg;
  pthread_mutex_lock(&pool.mu);
  for (;;) {
    while (!pool.head && !pool.stopping) {
      pool.idle++;
      pthread_cond_wait(&pool.work, &pool.mu);
      pool.idle--;
    }
    if (!pool.head) break; /* stopping, and the queue is empty */
    FsJob *j = pool.head;
    pool.head = j->next;
    if (!pool.head) pool.tail = NULL;
    pool.pending--;
    pthread_mutex_unlock(&pool.mu);
    run_job(j);
    pthread_mutex_lock(&pool.mu);
    __atomic_store_n(&j->done, 1, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&pool.finished);
  }
  pthread_mutex_unlock(&pool.mu);
  return NULL;
}

/* A forked child (pull --detach) has none of the parent's threads: it starts a pool of its own. */
static void pool_after_fork(void) {
  pthread_mutex_init(&pool.mu, NULL);
  pthread_cond_init(&pool.work, NULL);
  pthread_cond_init(&pool.finished, NULL);
  pool.head = pool.tail = NULL;
  pool.nthreads = pool.idle = pool.pending = pool.stopping = 0;
}

/* Queues the job, starting a worker when no idle one is left for it (up to POOL_MAX). Returns 0, or -1 when no
 * thread could be had at all: the caller runs the job itself. */
static int submit(FsJob *j) {
  pthread_mutex_lock(&pool.mu);
  if (!pool.atfork) pool.atfork = pthread_atfork(NULL, NULL, pool_after_fork) == 0;
  if (pool.pending >= pool.idle && pool.nthreads < POOL_MAX) {
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, (size_t)256 << 10);
    if (pthread_create(&pool.threads[pool.nthreads], &attr, worker_main, NULL) == 0) pool.nthreads++;
    pthread_attr_destroy(&attr);
  }
  if (pool.nthreads == 0) {
    pthread_mutex_unlock(&pool.mu);
    return -1;
  }
  j->next = NULL;
  if (pool.tail) pool.tail->next = j; else pool.head = j;
  pool.tail = j;
  pool.pending++;
  j->queued = 1;
  pthread_cond_signal(&pool.work);
  pthread_mutex_unlock(&pool.mu);
  return 0;
}

static void wait_job(FsJob *j) {
  if (!j->queued || __atomic_load_n(&j->done, __ATOMIC_ACQUIRE)) return;
  pthread_mutex_lock(&pool.mu);
  while (!j->done) pthread_cond_wait(&pool.finished, &pool.mu);
  pthread_mutex_unlock(&pool.mu);
}

/* A Lua state with the module is closing (lua_close): the workers finish the queue and are joined,
 * every one, even one started meanwhile (another state of the process may still submit: the pool
 * starts again on its next job). */
static int pool_gc(lua_State *L) {
  (void)L;
  pthread_mutex_lock(&pool.mu);
  pool.stopping = 1;
  pthread_cond_broadcast(&pool.work);
  while (pool.nthreads > 0) {
    pthread_t thread = pool.threads[--pool.nthreads];
    pthread_mutex_unlock(&pool.mu);
    pthread_join(thread, NULL);
    pthread_mutex_lock(&pool.mu);
  }
  pool.stopping = 0;
  pthread_mutex_unlock(&pool.mu);
  return 0;
}

static void free_ops(FsJob *j) {
  for (int i = 0; i < j->nops; i++) {
    free(j->ops[i].path);
    free(j->ops[i].to);
    free(j->ops[i].data);
  }
  free(j->ops);
  j->ops = NULL;
  j->nops = 0;
}

static int job_close(lua_State *L) {
  FsJob *j = luaL_checkudata(L, 1, JOB_MT);
  wait_job(j);
  free_ops(j);
  j->closed = 1;
  return 0;
}

static FsJob *check_open_job(lua_State *L) {
  FsJob *j = luaL_checkudata(L, 1, JOB_MT);
  if (j->closed) luaL_error(L, "attempt to use a closed file-system job");
  return j;
}

static int job_done(lua_State *L) {
  FsJob *j = check_open_job(L);
  lua_pushboolean(L, !j->queued || __atomic_load_n(&j->done, __ATOMIC_ACQUIRE));
  return 1;
}

/* Waits for the job; true, or nil, "cannot <step> <path>: …", code, the failed step's index. */
static int job_result(lua_State *L) {
  FsJob *j = check_open_job(L);
  wait_job(j);
  if (!j->err) {
    lua_pushboolean(L, 1);
    if (!j->sha256[0]) return 1;
    lua_pushstring(L, j->sha256);
    return 2;
  }
  const FsOp *o = j->ops ? &j->ops[j->errat] : NULL;
  int n;
  if (!o) n = mg_fail_errno(L, j->err, "cannot finish a file-system job");
  else if (o->op == OP_RENAME) n = mg_fail_errno(L, j->err, "cannot rename %s to %s", o->path, o->to);
  else {
    static const char *const verbs[] = { "sync", "create folder", "write", "rename", "remove", "hash" };
    n = mg_fail_errno(L, j->err, "cannot %s %s", verbs[o->op], o->path);
  }
  lua_pushinteger(L, j->errat + 1);
  return n + 1;
}

static char *dup_field(lua_State *L, int step, int idx, const char *what, size_t *len) {
  if (lua_geti(L, -1, idx) != LUA_TSTRING)
    luaL_error(L, "bad argument #1 to 'fs_start': step %d: %s is not a string", step, what);
  size_t n;
  const char *s = lua_tolstring(L, -1, &n);
  char *copy = malloc(n + 1);
  if (!copy) luaL_error(L, "out of memory");
  memcpy(copy, s, n + 1);
  if (len) *len = n;
  lua_pop(L, 1);
  return copy;
}

/* fs_start{ {"mkdirs", dir}, {"write", path, bytes [, "sync"]}, {"rename", from, to [, "optional"]},
 *           {"remove", path [, "optional"]}, {"fsync", path}, {"sha256", path}, … } -> FsJob
 * (its result: true [, the last sha256 step's hex digest])
 * The steps run in order on a worker; the first failure stops the job. Misuse raises. */
static int fs_start(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  int n = (int)luaL_len(L, 1);
  FsJob *j = lua_newuserdatauv(L, sizeof *j, 0);
  memset(j, 0, sizeof *j);
  luaL_setmetatable(L, JOB_MT);
  j->ops = calloc((size_t)(n > 0 ? n : 1), sizeof *j->ops);
  if (!j->ops) return luaL_error(L, "out of memory");
  for (int i = 1; i <= n; i++) {
    if (lua_geti(L, 1, i) != LUA_TTABLE) luaL_error(L, "bad argument #1 to 'fs_start': step %d is not a table", i);
    lua_geti(L, -1, 1);
    const char *name = lua_tostring(L, -1);
    int op = 0;
    while (op_names[op] && !(name && strcmp(op_names[op], name) == 0)) op++;
    if (!op_names[op]) luaL_error(L, "bad argument #1 to 'fs_start': step %d: unknown step '%s'", i, name ? name : "?");
    lua_pop(L, 1);
    FsOp *o = &j->ops[i - 1];
    j->nops = i; /* from here on its strings are freed with the job */
    o->op = op;
    o->path = dup_field(L, i, 2, "the path", NULL);
    if (op == OP_RENAME) o->to = dup_field(L, i, 3, "the target", NULL);
    if (op == OP_WRITE) o->data = dup_field(L, i, 3, "the data", &o->len);
    if (op == OP_RENAME || op == OP_REMOVE || op == OP_WRITE) {
      lua_geti(L, -1, op == OP_REMOVE ? 3 : 4);
      const char *flag = lua_isstring(L, -1) ? lua_tostring(L, -1) : "";
      o->optional = strcmp(flag, op == OP_WRITE ? "sync" : "optional") == 0;
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
  }
  if (submit(j) != 0) run_job(j); /* no thread to be had: done here */
  return 1;
}

/* sync_start{path, …} -> FsJob: fsync each file or folder, in order. */
static int fs_sync_start(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  int n = (int)luaL_len(L, 1);
  lua_createtable(L, n, 0);
  for (int i = 1; i <= n; i++) {
    if (lua_geti(L, 1, i) != LUA_TSTRING) luaL_error(L, "bad argument #1 to 'sync_start': path %d is not a string", i);
    lua_createtable(L, 2, 0);
    lua_pushliteral(L, "fsync");
    lua_rawseti(L, -2, 1);
    lua_insert(L, -2);
    lua_rawseti(L, -2, 2);
    lua_rawseti(L, -2, i);
  }
  lua_replace(L, 1);
  lua_settop(L, 1);
  return fs_start(L);
}

void mg_open_jobs(lua_State *L) {
  static const luaL_Reg job_methods[] = {
    {"close", job_close},
    {"done", job_done},
    {"result", job_result},
    {NULL, NULL}
  };
  static const luaL_Reg funcs[] = {
    {"fs_start", fs_start},
    {"sync_start", fs_sync_start},
    {NULL, NULL}
  };
  mg_newmeta(L, JOB_MT, job_methods, job_close);
  luaL_setfuncs(L, funcs, 0);
  /* The pool lives as long as the Lua state: a value in the registry whose __gc joins the workers
   * (at lua_close, before the library is unloaded: it was made after the loader's own). */
  if (lua_getfield(L, LUA_REGISTRYINDEX, POOL_MT) == LUA_TNIL) {
    lua_newuserdatauv(L, 1, 0);
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, pool_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    lua_setfield(L, LUA_REGISTRYINDEX, POOL_MT);
  }
  lua_pop(L, 1);
}
