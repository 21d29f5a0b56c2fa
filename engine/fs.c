/* File-system and process helpers for the Lua layers: everything the store needs that plain Lua
 * (io, os) cannot do safely — free space, atomic writes, directory fsync, locks, signals. */
#include "core.h"

#include <dirent.h>
#include <pthread.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#ifdef __APPLE__
#include <sys/param.h>
#include <sys/mount.h>
#else
#include <sys/statvfs.h>
#endif
#include <time.h>
#include <unistd.h>

volatile sig_atomic_t mg_interrupt_flag = 0;

/* Free bytes for this user on the file system of path (fd when path is NULL); -1 with errno on
 * failure. macOS's statvfs counts blocks in 32 bits (its fsblkcnt_t): on a volume of more than 2^32
 * blocks (16 TB of 4 KB blocks; an NFS or ZFS one of 512-byte blocks from 2 TB) the count wraps, so
 * there statfs, whose counts are 64-bit. */
static int space_of(const char *path, int fd, uint64_t *out) {
#ifdef __APPLE__
  struct statfs sfs;
  if ((path ? statfs(path, &sfs) : fstatfs(fd, &sfs)) != 0) return -1;
  *out = (uint64_t)sfs.f_bavail * (uint64_t)sfs.f_bsize;
#else
  struct statvfs vfs;
  if ((path ? statvfs(path, &vfs) : fstatvfs(fd, &vfs)) != 0) return -1;
  *out = (uint64_t)vfs.f_bavail * (uint64_t)vfs.f_frsize;
#endif
  return 0;
}

int mg_free_space(const char *path, uint64_t *out) {
  char buf[PATH_MAX];
  size_t n = strlen(path);
  if (n >= sizeof buf) return ENAMETOOLONG;
  memcpy(buf, path, n + 1);
  /* Walk up to the nearest existing folder: the target itself may not exist yet. */
  while (space_of(buf, -1, out) != 0) {
    if (errno != ENOENT) return errno;
    char *slash = strrchr(buf, '/');
    if (!slash) { strcpy(buf, "."); continue; }
    if (slash == buf) { buf[1] = '\0'; continue; }
    *slash = '\0';
  }
  return 0;
}

int mg_free_space_fd(int fd, uint64_t *out) {
  return space_of(NULL, fd, out) == 0 ? 0 : errno;
}

/* macOS has an fdatasync symbol but declares none (a compiler that refuses implicit declarations
 * stops there), and documents fsync only. */
int mg_datasync(int fd) {
#ifdef __linux__
  return fdatasync(fd);
#else
  return fsync(fd);
#endif
}

static int fs_free_space(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  uint64_t avail;
  int err = mg_free_space(path, &avail);
  if (err) return mg_fail_errno(L, err, "%s", path);
  lua_pushinteger(L, (lua_Integer)avail);
  return 1;
}

static int mkdirs(char *path, mode_t mode) {
  struct stat st;
  if (stat(path, &st) == 0) return S_ISDIR(st.st_mode) ? 0 : ENOTDIR;
  char *slash = strrchr(path, '/');
  if (slash && slash != path) {
    *slash = '\0';
    int err = mkdirs(path, mode);
    *slash = '/';
    if (err) return err;
  }
  if (mkdir(path, mode) != 0 && errno != EEXIST) return errno;
  return 0;
}

int mg_mkdirs(const char *path, unsigned mode) {
  char buf[PATH_MAX];
  if (strlen(path) >= sizeof buf) return ENAMETOOLONG;
  strcpy(buf, path);
  size_t n = strlen(buf);
  while (n > 1 && buf[n - 1] == '/') buf[--n] = '\0';
  return mkdirs(buf, (mode_t)mode);
}

static int fs_mkdirs(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  int err = mg_mkdirs(path, (unsigned)luaL_optinteger(L, 2, 0755));
  if (err) return mg_fail_errno(L, err, "cannot create folder %s", path);
  lua_pushboolean(L, 1);
  return 1;
}

/* Removes a tree without ever following a symlink: links are unlinked, not entered. */
static int rmtree_at(int parent, const char *name) {
  if (unlinkat(parent, name, 0) == 0 || errno == ENOENT) return 0;
  if (errno != EISDIR && errno != EPERM) return errno;
  int fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return errno;
  DIR *d = fdopendir(fd);
  if (!d) { int e = errno; close(fd); return e; }
  int err = 0;
  struct dirent *de;
  while (!err && (de = readdir(d)) != NULL) {
    if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
    err = rmtree_at(dirfd(d), de->d_name);
  }
  closedir(d);
  if (!err && unlinkat(parent, name, AT_REMOVEDIR) != 0 && errno != ENOENT) err = errno;
  return err;
}

static int fs_rmtree(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  int err = rmtree_at(AT_FDCWD, path);
  if (err) return mg_fail_errno(L, err, "cannot remove %s", path);
  lua_pushboolean(L, 1);
  return 1;
}

static int fs_stat(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  int follow = lua_toboolean(L, 2);
  struct stat st;
  if ((follow ? stat(path, &st) : lstat(path, &st)) != 0) return mg_fail_errno(L, errno, "%s", path);
  lua_createtable(L, 0, 6);
  const char *type = S_ISREG(st.st_mode) ? "file" : S_ISDIR(st.st_mode) ? "dir" : S_ISLNK(st.st_mode) ? "link" : "other";
  lua_pushstring(L, type);
  lua_setfield(L, -2, "type");
  lua_pushinteger(L, (lua_Integer)st.st_size);
  lua_setfield(L, -2, "size");
  lua_pushinteger(L, (lua_Integer)(st.st_mode & 07777));
  lua_setfield(L, -2, "mode");
  lua_pushinteger(L, (lua_Integer)st.st_mtime);
  lua_setfield(L, -2, "mtime");
  lua_pushinteger(L, (lua_Integer)st.st_blocks * 512);
  lua_setfield(L, -2, "disk");
  lua_pushinteger(L, (lua_Integer)st.st_ino);
  lua_setfield(L, -2, "ino");
  return 1;
}

static int cmp_names(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static int fs_listdir(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  DIR *d = opendir(path);
  if (!d) return mg_fail_errno(L, errno, "%s", path);
  size_t n = 0, cap = 16;
  char **names = malloc(cap * sizeof *names);
  struct dirent *de;
  int oom = names == NULL;
  while (!oom && (de = readdir(d)) != NULL) {
    if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
    if (n == cap) {
      char **grown = realloc(names, (cap *= 2) * sizeof *names);
      if (!grown) { oom = 1; break; }
      names = grown;
    }
    names[n] = strdup(de->d_name);
    if (!names[n]) { oom = 1; break; }
    n++;
  }
  closedir(d);
  if (oom) { /* never a listing cut short */
    for (size_t i = 0; i < n; i++) free(names[i]);
    free(names);
    return luaL_error(L, "out of memory");
  }
  qsort(names, n, sizeof *names, cmp_names);
  lua_createtable(L, (int)n, 0);
  for (size_t i = 0; i < n; i++) {
    lua_pushstring(L, names[i]);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
    free(names[i]);
  }
  free(names);
  return 1;
}

static int fs_rename(lua_State *L) {
  const char *from = luaL_checkstring(L, 1), *to = luaL_checkstring(L, 2);
  if (rename(from, to) != 0) return mg_fail_errno(L, errno, "cannot move %s to %s", from, to);
  lua_pushboolean(L, 1);
  return 1;
}

int mg_fsync_path(const char *path) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno;
  int err = fsync(fd) == 0 || errno == EINVAL ? 0 : errno;
  close(fd);
  return err;
}

static int fs_fsync(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  int err = mg_fsync_path(path);
  if (err) return mg_fail_errno(L, err, "cannot sync %s", path);
  lua_pushboolean(L, 1);
  return 1;
}

int mg_write_all(int fd, const void *buf, size_t n, uint64_t off) {
  const char *p = buf;
  while (n > 0) {
    ssize_t w = pwrite(fd, p, n, (off_t)off);
    if (w < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    p += w; n -= (size_t)w; off += (uint64_t)w;
  }
  return 0;
}

void mg_parent_of(const char *path, char *out, size_t outsz) {
  const char *slash = strrchr(path, '/');
  if (!slash) { snprintf(out, outsz, "."); return; }
  size_t n = (size_t)(slash - path);
  if (n == 0) n = 1;
  if (n >= outsz) n = outsz - 1;
  memcpy(out, path, n);
  out[n] = '\0';
}

static int fs_write_atomic(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  char tmp[PATH_MAX], dir[PATH_MAX];
  if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof tmp)
    return mg_fail_errno(L, ENAMETOOLONG, "%s", path);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return mg_fail_errno(L, errno, "cannot write %s", path);
  int werr = mg_write_all(fd, data, len, 0);
  if (werr) {
    close(fd); unlink(tmp);
    return mg_fail_errno(L, werr, "cannot write %s", path);
  }
  if (fsync(fd) != 0 || close(fd) != 0) {
    int e = errno; unlink(tmp);
    return mg_fail_errno(L, e, "cannot write %s", path);
  }
  if (rename(tmp, path) != 0) {
    int e = errno; unlink(tmp);
    return mg_fail_errno(L, e, "cannot write %s", path);
  }
  mg_parent_of(path, dir, sizeof dir);
  mg_fsync_path(dir);
  lua_pushboolean(L, 1);
  return 1;
}

/* Locks, released by close, __gc or __close: core.lock(path) is one exclusive flock on the file;
 * core.lock(path, key) locks one key in it, so one file serves every key (no file to create per
 * key): an open-file-description byte lock at an offset hashed from the key, where the system has
 * them (Linux), else a flock on the file "<path>.<key>". Either way two locks conflict whether they
 * are taken by two processes or by one. */
#define LOCK_MT "modelget.Lock"
typedef struct { int fd; } Lock;

/* Releases the lock; closing it again does nothing (it is also the __gc and __close). */
static int lock_close(lua_State *L) {
  Lock *lk = luaL_checkudata(L, 1, LOCK_MT);
  if (lk->fd >= 0) { close(lk->fd); lk->fd = -1; }
  return 0;
}

/* Whether the lock is still held by this object (false once closed). */
static int lock_held(lua_State *L) {
  Lock *lk = luaL_checkudata(L, 1, LOCK_MT);
  lua_pushboolean(L, lk->fd >= 0);
  return 1;
}

#ifdef F_OFD_SETLK
static off_t key_offset(const char *key, size_t len) {
  return (off_t)(mg_fnv1a(key, len) >> 2); /* positive, and far from any end of range */
}
#endif

static int fs_lock(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  size_t klen = 0;
  const char *key = luaL_optlstring(L, 2, NULL, &klen);
  /* "shared": a probe of a lock (of the whole file, or of a key) — the file opened read-only, never
   * created, and locked shared, so that probes never block one another: EBUSY only while an
   * exclusive holder lives. */
  int shared = lua_type(L, 3) == LUA_TSTRING && strcmp(lua_tostring(L, 3), "shared") == 0;
  Lock *lk = lua_newuserdatauv(L, sizeof *lk, 0);
  int ud = lua_gettop(L);
  lk->fd = -1;
  luaL_setmetatable(L, LOCK_MT);
  int ofd = 0;
#ifdef F_OFD_SETLK
  ofd = key != NULL;
#endif
  if (key && !ofd) path = lua_pushfstring(L, "%s.%s", path, key);
  int fd = shared ? open(path, O_RDONLY | O_CLOEXEC) : open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return mg_fail_errno(L, errno, "cannot open lock %s", path);
  int rc, busy;
#ifdef F_OFD_SETLK
  if (ofd) {
    struct flock fl = { 0 };
    fl.l_type = shared ? F_RDLCK : F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = key_offset(key, klen);
    fl.l_len = 1;
    rc = fcntl(fd, F_OFD_SETLK, &fl);
    busy = rc != 0 && (errno == EAGAIN || errno == EACCES);
  } else
#endif
  {
    rc = flock(fd, (shared ? LOCK_SH : LOCK_EX) | LOCK_NB);
    busy = rc != 0 && errno == EWOULDBLOCK;
  }
  if (rc != 0) {
    int e = errno;
    close(fd);
    if (busy)
      return mg_fail(L, "EBUSY", "%s%s%s: in use by another modelget process", path, ofd ? " " : "", ofd ? key : "");
    return mg_fail_errno(L, e, "cannot lock %s", path);
  }
  lk->fd = fd;
  lua_pushvalue(L, ud);
  return 1;
}

static int fs_now(lua_State *L) {
  lua_pushnumber(L, mg_now());
  return 1;
}

static int fs_time(lua_State *L) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  lua_pushnumber(L, (double)ts.tv_sec + (double)ts.tv_nsec / 1e9);
  return 1;
}

static int fs_sleep(lua_State *L) {
  double s = luaL_checknumber(L, 1);
  if (s <= 0) return 0;
  struct timespec ts = { (time_t)s, (long)((s - (double)(time_t)s) * 1e9) };
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR && !mg_interrupt_flag) {}
  return 0;
}

static int fs_isatty(lua_State *L) {
  lua_pushboolean(L, isatty((int)luaL_checkinteger(L, 1)));
  return 1;
}

/* terminal_width() -> columns, rows (rows nil when unknown) | nothing: stdout's terminal size. */
static int fs_terminal_width(lua_State *L) {
  struct winsize ws;
  if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) != 0 || ws.ws_col == 0) return 0;
  lua_pushinteger(L, ws.ws_col);
  if (ws.ws_row == 0) return 1;
  lua_pushinteger(L, ws.ws_row);
  return 2;
}

/* kill(pid): SIGTERM, which a modelget pull takes as Ctrl-C (its partial data kept). false when
 * there is no such process (it ended). */
static int fs_terminate(lua_State *L) {
  lua_Integer pid = luaL_checkinteger(L, 1);
  luaL_argcheck(L, pid > 0, 1, "a process id expected");
  if (kill((pid_t)pid, SIGTERM) != 0) {
    if (errno == ESRCH) { lua_pushboolean(L, 0); return 1; } /* gone already */
    return mg_fail_errno(L, errno, "cannot stop process %d", (int)pid);
  }
  lua_pushboolean(L, 1);
  return 1;
}

static int fs_getpid(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)getpid());
  return 1;
}

static void on_signal(int sig) {
  (void)sig;
  mg_interrupt_flag = 1;
}

static int fs_catch_interrupt(lua_State *L) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  /* A closed terminal's hang-up stops as cleanly (its default would kill the pull mid-write, its
   * registration left behind), unless it is ignored (nohup, a detached pull) or the program handles
   * it itself. */
  struct sigaction hup;
  if (sigaction(SIGHUP, NULL, &hup) == 0 && hup.sa_handler == SIG_DFL) sigaction(SIGHUP, &sa, NULL);
  (void)L;
  return 0;
}

static int fs_interrupted(lua_State *L) {
  lua_pushboolean(L, mg_interrupt_flag);
  return 1;
}

/* An app that goes on after a Ctrl-C (a long-running embedding) clears the flag before its next
 * pull; the handlers stay. Read and reset in one step: no signal can land between the two and be lost. */
static int fs_clear_interrupt(lua_State *L) {
  lua_pushboolean(L, __atomic_exchange_n(&mg_interrupt_flag, 0, __ATOMIC_SEQ_CST));
  return 1;
}

/* Goes on in the background: forks; the parent gets the child's pid, the child gets 0 and carries
 * on in a session of its own, its output appended to logpath, deaf to the terminal's hang-up.
 * Call it before any transfer starts: a fork keeps only the calling thread. */
static int fs_detach(lua_State *L) {
  const char *logpath = luaL_checkstring(L, 1);
  int logfd = open(logpath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (logfd < 0) return mg_fail_errno(L, errno, "cannot open %s", logpath);
  int nullfd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (nullfd < 0) { int e = errno; close(logfd); return mg_fail_errno(L, e, "/dev/null"); }
  fflush(NULL);
  pid_t pid = fork();
  if (pid < 0) {
    int e = errno;
    close(logfd); close(nullfd);
    return mg_fail_errno(L, e, "cannot start a background process");
  }
  if (pid > 0) {
    close(logfd); close(nullfd);
    lua_pushinteger(L, (lua_Integer)pid);
    return 1;
  }
  setsid();
  signal(SIGHUP, SIG_IGN);
  dup2(nullfd, STDIN_FILENO);
  dup2(logfd, STDOUT_FILENO);
  dup2(logfd, STDERR_FILENO);
  close(logfd); close(nullfd);
  lua_pushinteger(L, 0);
  return 1;
}

static int fs_realpath(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  char buf[PATH_MAX];
  if (!realpath(path, buf)) return mg_fail_errno(L, errno, "%s", path);
  lua_pushstring(L, buf);
  return 1;
}

void mg_open_fs(lua_State *L) {
  static const luaL_Reg lock_methods[] = {
    {"close", lock_close},
    {"held", lock_held},
    {NULL, NULL}
  };
  static const luaL_Reg funcs[] = {
    {"catch_interrupt", fs_catch_interrupt},
    {"clear_interrupt", fs_clear_interrupt},
    {"detach", fs_detach},
    {"free_space", fs_free_space},
    {"fsync", fs_fsync},
    {"getpid", fs_getpid},
    {"interrupted", fs_interrupted},
    {"isatty", fs_isatty},
    {"listdir", fs_listdir},
    {"lock", fs_lock},
    {"mkdirs", fs_mkdirs},
    {"now", fs_now},
    {"realpath", fs_realpath},
    {"rename", fs_rename},
    {"rmtree", fs_rmtree},
    {"sleep", fs_sleep},
    {"stat", fs_stat},
    {"terminal_width", fs_terminal_width},
    {"terminate", fs_terminate},
    {"time", fs_time},
    {"write_atomic", fs_write_atomic},
    {NULL, NULL}
  };
  mg_newmeta(L, LOCK_MT, lock_methods, lock_close);
  luaL_setfuncs(L, funcs, 0);
}
