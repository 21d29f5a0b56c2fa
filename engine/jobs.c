/* File-system jobs: a list of steps (make folders, write a file, rename, remove, fsync, syncfs) run
 * in order on a worker thread, so the event loop goes on receiving while the disk works: a pull
 * assembles and installs a model this way, off the loop. The workers are a small pool, started on
 * first use and joined when the module is unloaded; a job waits in a queue for a free one.
 *
 * One job may carry the steps of several independent requests (a scheduler batches the installs
 * that are ready at once, so that one syncfs makes them all durable): a step of group g that fails
 * ends group g only, whose later steps are skipped; a step of no group that fails ends the job.
 * A finished job is announced on a pipe (core.jobs_fd): the event loop waits on it beside its
 * sockets, so it neither polls nor sleeps past a finished job. */
#include "core.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#define JOB_MT "modelget.FsJob"
#define POOL_MT "modelget.FsPool"
#define POOL_MAX 4

enum { OP_FSYNC, OP_MKDIRS, OP_WRITE, OP_RENAME, OP_REMOVE, OP_SHA256, OP_SYNCFS, OP_EXISTS };
static const char *const op_names[] = { "fsync", "mkdirs", "write", "rename", "remove", "sha256", "syncfs", "exists", NULL };

typedef struct {
  int op;
  char *path, *to;    /* to: rename's target */
  char *data;         /* write's bytes */
  size_t len;
  int optional;       /* a missing path is not a failure (rename, remove, fsync); write: fsync it too */
  int group;          /* 0: the job's own step; g >= 1: a step of request g */
  char **more;        /* syncfs: the other paths (their file systems are synced too) */
  int nmore;
} FsOp;

typedef struct FsJob {
  struct FsJob *next; /* in the pool's queue */
  FsOp *ops;
  int nops;
  int queued;         /* handed to a worker (or run on the caller's thread) */
  int done;           /* written under the pool's lock, read with __atomic */
  int err, errat;     /* the first failure of a step of no group: errno and the step's index (the job stops there) */
  int ngroups;
  int *gerr, *gerrat; /* per group (1..ngroups): its failure and the failed step's index */
  int closed;
  char sha256[65];    /* the last sha256 step's digest, hex */
  void (*fn)(void *); /* a call from the engine (mg_jobs_call) instead of steps: freed once run */
  void *arg;
} FsJob;

static struct {
  pthread_mutex_t mu;
  pthread_cond_t work, finished;
  FsJob *head, *tail;
  pthread_t threads[POOL_MAX];
  int nthreads, idle, pending, stopping, atfork;
  int notify[2];      /* a byte is written to [1] when a job is done and none is waiting unread */
  int notified;
} pool = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER,
           NULL, NULL, { 0 }, 0, 0, 0, 0, 0, { -1, -1 }, 0 };

/* syncfs(2): everything written to the file system holding path reaches the disk, data and
 * metadata, with one device flush; the same device twice in a row is synced once. */
/* Devices on which a syncfs failed in this process. A file system reports a lost write-back to the
 * first syncfs that looks, not to the next ones (a new descriptor starts past it): from then on the
 * paths on that device are fsynced one by one, each file reporting its own errors. */
#ifdef __linux__
static pthread_mutex_t degraded_mu = PTHREAD_MUTEX_INITIALIZER;
static dev_t degraded[16];
static int ndegraded;

static int is_degraded(dev_t dev) {
  pthread_mutex_lock(&degraded_mu);
  int found = 0;
  for (int k = 0; k < ndegraded && !found; k++) found = degraded[k] == dev;
  pthread_mutex_unlock(&degraded_mu);
  return found;
}

static void degrade(dev_t dev) {
  pthread_mutex_lock(&degraded_mu);
  if (ndegraded < (int)(sizeof degraded / sizeof *degraded)) degraded[ndegraded++] = dev;
  pthread_mutex_unlock(&degraded_mu);
}

static int sync_file_system(const char *path, dev_t *last, int *have_last, int *failed) {
  /* After a failed syncfs, every sync of the job that follows fails as well. */
  if (*failed) return *failed;
  struct stat st;
  /* A path that is not there belongs to a request that failed before it (its steps were skipped):
   * the others' syncs go on. */
  if (stat(path, &st) != 0) return errno == ENOENT ? 0 : errno;
  if (is_degraded(st.st_dev)) return mg_fsync_path(path);
  if (*have_last && st.st_dev == *last) return 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno;
  int err = syncfs(fd) == 0 ? 0 : errno;
  close(fd);
  if (!err) { *last = st.st_dev; *have_last = 1; }
  else { *failed = err; degrade(st.st_dev); }
  return err;
}
#else
/* No syncfs here (core.syncfs is false): the scheduler fsyncs each path instead. */
static int sync_file_system(const char *path, dev_t *last, int *have_last, int *failed) {
  (void)path; (void)last; (void)have_last; (void)failed;
  return ENOTSUP;
}
#endif

static int run_op(const FsOp *o, char *sha_out) {
  switch (o->op) {
  case OP_FSYNC: {
    int err = mg_fsync_path(o->path);
    return err == ENOENT && o->optional ? 0 : err;
  }
  case OP_MKDIRS: return mg_mkdirs(o->path, 0755);
  case OP_WRITE: {
    /* Never through a symbolic link planted where the file goes (an archive's entry, say). */
    int fd = open(o->path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
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
  case OP_EXISTS: {
    struct stat st;
    return lstat(o->path, &st) == 0 ? 0 : errno;
  }
  }
  return EINVAL;
}

static void run_job(FsJob *j) {
  if (j->fn) { j->fn(j->arg); return; }
  dev_t synced = 0;
  int have_synced = 0, sync_failed = 0; /* the device a run of syncfs steps has synced; a failed one */
  for (int i = 0; i < j->nops; i++) {
    const FsOp *o = &j->ops[i];
    if (o->group && j->gerr[o->group]) continue; /* its request failed already */
    int err;
    if (o->op == OP_SYNCFS) {
      err = sync_file_system(o->path, &synced, &have_synced, &sync_failed);
      for (int k = 0; !err && k < o->nmore; k++) err = sync_file_system(o->more[k], &synced, &have_synced, &sync_failed);
    } else {
      have_synced = 0;
      err = run_op(o, j->sha256);
    }
    if (!err) continue;
    if (o->group) { j->gerr[o->group] = err; j->gerrat[o->group] = i; continue; }
    j->err = err;
    j->errat = i;
    break;
  }
}

/* Tells the event loop a job is done (pool lock held). */
static void announce_done(void) {
  if (pool.notify[1] < 0 || pool.notified) return;
  pool.notified = 1;
  ssize_t n;
  do n = write(pool.notify[1], "", 1); while (n < 0 && errno == EINTR);
}

/* The pipe the pool announces finished jobs on (made on first use); -1 when none can be had. */
static void pool_after_fork(void);

static int notify_fd(void) {
  pthread_mutex_lock(&pool.mu);
  if (!pool.atfork) pool.atfork = pthread_atfork(NULL, NULL, pool_after_fork) == 0;
  if (pool.notify[0] < 0) {
    int fds[2];
    if (pipe(fds) == 0) {
      for (int k = 0; k < 2; k++) {
        fcntl(fds[k], F_SETFD, FD_CLOEXEC);
        fcntl(fds[k], F_SETFL, fcntl(fds[k], F_GETFL) | O_NONBLOCK);
      }
      pool.notify[0] = fds[0];
      pool.notify[1] = fds[1];
    }
  }
  int fd = pool.notify[0];
  pthread_mutex_unlock(&pool.mu);
  return fd;
}

int mg_jobs_fd(void) { return notify_fd(); }

void mg_jobs_drain(void) {
  char buf[64];
  pthread_mutex_lock(&pool.mu);
  if (pool.notify[0] >= 0) {
    while (read(pool.notify[0], buf, sizeof buf) > 0) {}
    pool.notified = 0;
  }
  pthread_mutex_unlock(&pool.mu);
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
    announce_done();
    if (j->fn) free(j);
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
  /* The pipe is the parent's too: the child makes its own when it needs one. */
  for (int k = 0; k < 2; k++) {
    if (pool.notify[k] >= 0) close(pool.notify[k]);
    pool.notify[k] = -1;
  }
  pool.notified = 0;
}

/* Queues the job, starting a worker when no idle one is left for it (up to POOL_MAX). Returns 0, or -1 when no
 * thread could be had at all: the caller runs the job itself. */
static int submit(FsJob *j, int front) {
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
  if (front) { /* an engine call is short and a transfer waits on it: ahead of the queued steps */
    j->next = pool.head;
    pool.head = j;
    if (!pool.tail) pool.tail = j;
  } else {
    j->next = NULL;
    if (pool.tail) pool.tail->next = j; else pool.head = j;
    pool.tail = j;
  }
  pool.pending++;
  j->queued = 1;
  pthread_cond_signal(&pool.work);
  pthread_mutex_unlock(&pool.mu);
  return 0;
}

int mg_jobs_call(void (*fn)(void *), void *arg) {
  notify_fd();
  FsJob *j = calloc(1, sizeof *j);
  if (!j) return -1;
  j->fn = fn;
  j->arg = arg;
  if (submit(j, 1) != 0) { free(j); return -1; }
  return 0;
}

void mg_jobs_wait_flag(const int *flag) {
  if (__atomic_load_n(flag, __ATOMIC_ACQUIRE)) return;
  pthread_mutex_lock(&pool.mu);
  while (!__atomic_load_n(flag, __ATOMIC_ACQUIRE)) pthread_cond_wait(&pool.finished, &pool.mu);
  pthread_mutex_unlock(&pool.mu);
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
    for (int k = 0; k < j->ops[i].nmore; k++) free(j->ops[i].more[k]);
    free(j->ops[i].more);
  }
  free(j->ops);
  j->ops = NULL;
  j->nops = 0;
  free(j->gerr);
  free(j->gerrat);
  j->gerr = j->gerrat = NULL;
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

/* Waits for the job; true, or nil, "cannot <step> <path>: …", code, the failed step's index.
 * job:result(g): the outcome of request g (a failure of a step of no group is every request's; a
 * group with no step of its own has only those). */
static int job_result(lua_State *L) {
  FsJob *j = check_open_job(L);
  lua_Integer g = luaL_optinteger(L, 2, 0);
  luaL_argcheck(L, g >= 0, 2, "group must not be negative");
  wait_job(j);
  int err = j->err, at = j->errat;
  if (!err && g > 0 && g <= j->ngroups && j->gerr[g]) { err = j->gerr[g]; at = j->gerrat[g]; }
  for (int k = 1; !err && g == 0 && k <= j->ngroups; k++) {
    if (j->gerr[k]) { err = j->gerr[k]; at = j->gerrat[k]; }
  }
  if (!err) {
    lua_pushboolean(L, 1);
    if (!j->sha256[0]) return 1;
    lua_pushstring(L, j->sha256);
    return 2;
  }
  const FsOp *o = j->ops ? &j->ops[at] : NULL;
  int n;
  if (!o) n = mg_fail_errno(L, err, "cannot finish a file-system job");
  else if (o->op == OP_RENAME) n = mg_fail_errno(L, err, "cannot rename %s to %s", o->path, o->to);
  else {
    static const char *const verbs[] = { "sync", "create folder", "write", "rename", "remove", "hash", "sync the file system of", "find" };
    n = mg_fail_errno(L, err, "cannot %s %s", verbs[o->op], o->path);
  }
  lua_pushinteger(L, at + 1);
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
 *           {"remove", path [, "optional"]}, {"fsync", path}, {"sha256", path},
 *           {"syncfs", path, …} (Linux: core.syncfs is true), {"exists", path}, … } -> FsJob
 * (its result: true [, the last sha256 step's hex digest])
 * The steps run in order on a worker; the first failure stops the job. A step with group = g (1, 2, …)
 * belongs to request g: its failure skips the rest of g's steps only (job:result(g)). Misuse raises. */
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
    lua_getfield(L, -1, "group");
    if (!lua_isnil(L, -1)) {
      int isint;
      lua_Integer g = lua_tointegerx(L, -1, &isint);
      if (!isint || g < 1 || g > n) luaL_error(L, "bad argument #1 to 'fs_start': step %d: group must be an integer from 1 to %d", i, n);
      o->group = (int)g;
      if (o->group > j->ngroups) j->ngroups = o->group;
    }
    lua_pop(L, 1);
    o->path = dup_field(L, i, 2, "the path", NULL);
    if (op == OP_RENAME) o->to = dup_field(L, i, 3, "the target", NULL);
    if (op == OP_SYNCFS) {
      int extra = (int)luaL_len(L, -1) - 2;
      if (extra > 0) {
        o->more = calloc((size_t)extra, sizeof *o->more);
        if (!o->more) luaL_error(L, "out of memory");
        for (int k = 0; k < extra; k++) {
          o->more[k] = dup_field(L, i, k + 3, "a path", NULL);
          o->nmore = k + 1;
        }
      }
    }
    if (op == OP_WRITE) o->data = dup_field(L, i, 3, "the data", &o->len);
    if (op == OP_RENAME || op == OP_REMOVE || op == OP_WRITE || op == OP_FSYNC) {
      lua_geti(L, -1, op == OP_REMOVE || op == OP_FSYNC ? 3 : 4);
      const char *flag = lua_isstring(L, -1) ? lua_tostring(L, -1) : "";
      o->optional = strcmp(flag, op == OP_WRITE ? "sync" : "optional") == 0;
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
  }
  notify_fd(); /* made before any job can finish, so that none goes unannounced */
  if (j->ngroups > 0) {
    j->gerr = calloc((size_t)j->ngroups + 1, sizeof *j->gerr);
    j->gerrat = calloc((size_t)j->ngroups + 1, sizeof *j->gerrat);
    if (!j->gerr || !j->gerrat) return luaL_error(L, "out of memory");
  }
  if (submit(j, 0) != 0) run_job(j); /* no thread to be had: done here */
  return 1;
}

/* jobs_wait(seconds): waits until a file-system job is done (one finished since the last wait
 * counts) or the seconds pass; true when one is. */
static int jobs_wait(lua_State *L) {
  double seconds = luaL_checknumber(L, 1);
  int fd = notify_fd();
  int ms = seconds <= 0 ? 0 : (int)(seconds * 1000) + 1;
  int ready = 0;
  if (fd >= 0) {
    struct pollfd p = { fd, POLLIN, 0 };
    int r;
    do r = poll(&p, 1, ms); while (r < 0 && errno == EINTR && !mg_interrupt_flag);
    ready = r > 0;
  } else if (ms > 0) {
    poll(NULL, 0, ms);
  }
  if (ready) mg_jobs_drain();
  lua_pushboolean(L, ready);
  return 1;
}

/* syncfs(2) is there and reports write-back errors: Linux 5.8 and later (before, it returned 0). */
static int syncfs_reports_errors(void) {
#ifdef __linux__
  struct utsname u;
  int major = 0, minor = 0;
  if (uname(&u) != 0 || sscanf(u.release, "%d.%d", &major, &minor) != 2) return 0;
  return major > 5 || (major == 5 && minor >= 8);
#else
  return 0;
#endif
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
    {"jobs_wait", jobs_wait},
    {NULL, NULL}
  };
  mg_newmeta(L, JOB_MT, job_methods, job_close);
  luaL_setfuncs(L, funcs, 0);
  lua_pushboolean(L, syncfs_reports_errors());
  lua_setfield(L, -2, "syncfs");
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
