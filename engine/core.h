/* modelget engine: declarations shared by the parts of modelget.core. */
#ifndef MODELGET_CORE_H
#define MODELGET_CORE_H

#include <stddef.h>
#include <signal.h>
#include <stdint.h>
#include <lua.h>
#include <lauxlib.h>

/* Pushes nil, "context: message", code and returns 3: the shape of every failure of the world. */
int mg_fail(lua_State *L, const char *code, const char *fmt, ...);
/* Same, with strerror(err) appended and the code chosen from err (ENOSPC -> ESPACE, else EIO). */
int mg_fail_errno(lua_State *L, int err, const char *fmt, ...);
const char *mg_errno_code(int err);

/* Monotonic clock in seconds. */
double mg_now(void);
/* Free bytes available to this user on the file system holding path (or its nearest existing parent). */
int mg_free_space(const char *path, uint64_t *out);
/* The same for the file system of an open descriptor. Returns 0 or an errno. */
int mg_free_space_fd(int fd, uint64_t *out);
/* fdatasync where the system declares it (Linux), else fsync. Returns 0 or -1 with errno set. */
int mg_datasync(int fd);
/* pwrite until all n bytes are written at off (EINTR retried). Returns 0 or an errno. */
int mg_write_all(int fd, const void *buf, size_t n, uint64_t off);
/* The folder part of path ("." when none, "/" for the root's children), cut to outsz. */
void mg_parent_of(const char *path, char *out, size_t outsz);
/* mkdir -p: existing folders cost one stat, missing ones are made from the nearest existing parent.
 * Returns 0 or an errno. */
int mg_mkdirs(const char *path, unsigned mode);
/* fsync of a file or folder by path (EINVAL from a file system that cannot is no failure).
 * Returns 0 or an errno. */
int mg_fsync_path(const char *path);
/* The pipe on which the file-system job pool announces finished jobs (readable when one is), made
 * on first use (-1 when none can be had); mg_jobs_drain() empties it before the jobs are looked at. */
int mg_jobs_fd(void);
void mg_jobs_drain(void);
/* Runs fn(arg) on a worker of the pool, announced on the pipe when done like a job. Returns 0, or -1
 * when no worker can be had (fn was not run). fn sets a flag of its own when done (with a release
 * store); mg_jobs_wait_flag(flag) waits for it. */
int mg_jobs_call(void (*fn)(void *), void *arg);
void mg_jobs_wait_flag(const int *flag);
/* Set by the SIGINT/SIGTERM handler installed with catch_interrupt(). */
extern volatile sig_atomic_t mg_interrupt_flag;

/* FNV-1a of n bytes: a quick spread for hash tables and lock offsets (not for integrity). */
uint64_t mg_fnv1a(const void *p, size_t n);
/* Lower-case hex of a digest; out holds 2n+1 bytes. */
void mg_hex(const unsigned char *digest, size_t n, char *out);
/* Feeds up to limit bytes read from fd (from its current offset) into an EVP SHA-256 context.
 * Returns 0 or an errno; *hashed (may be NULL) gets the bytes fed. */
struct evp_md_ctx_st;
int mg_sha256_fd(int fd, uint64_t limit, struct evp_md_ctx_st *ctx, uint64_t *hashed);
/* SHA-256 of a whole file as lower-case hex (65 bytes with the NUL). Returns 0 or an errno. */
int mg_sha256_path(const char *path, char hex[65]);

/* Creates a metatable named tname with methods, __index, __gc/__close = closer, __name. */
void mg_newmeta(lua_State *L, const char *tname, const luaL_Reg *methods, lua_CFunction closer);

/* Each part registers its functions into the module table on the stack top. */
void mg_open_fs(lua_State *L);
void mg_open_jobs(lua_State *L);
void mg_open_hash(lua_State *L);
void mg_open_transfer(lua_State *L);
void mg_open_extract(lua_State *L);

#endif
