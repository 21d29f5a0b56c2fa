/* SHA-256: whole files (verify, resume) and a streaming hasher for Lua. */
#include "core.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <openssl/evp.h>

#define HASHER_MT "modelget.Hasher"

void mg_hex(const unsigned char *digest, size_t n, char *out) {
  static const char digits[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = digits[digest[i] >> 4];
    out[2 * i + 1] = digits[digest[i] & 15];
  }
  out[2 * n] = '\0';
}

int mg_sha256_fd(int fd, uint64_t limit, EVP_MD_CTX *ctx, uint64_t *hashed) {
  enum { CHUNK = 1 << 20 };
  unsigned char *buf = malloc(CHUNK);
  if (!buf) return ENOMEM;
  int err = 0;
  uint64_t done = 0;
  while (done < limit) {
    /* Ctrl-C (catch_interrupt) stops a long hash: a split file of many GB is hashed at its end. */
    if (mg_interrupt_flag) { err = EINTR; break; }
    size_t want = limit - done < CHUNK ? (size_t)(limit - done) : CHUNK;
    ssize_t r = read(fd, buf, want);
    if (r < 0) {
      if (errno == EINTR) continue;
      err = errno;
      break;
    }
    if (r == 0) break;
    EVP_DigestUpdate(ctx, buf, (size_t)r);
    done += (uint64_t)r;
  }
  free(buf);
  if (hashed) *hashed = done;
  return err;
}

int mg_sha256_path(const char *path, char hex[65]) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno;
#ifdef POSIX_FADV_SEQUENTIAL
  posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
#endif
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  if (!ctx || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
    EVP_MD_CTX_free(ctx);
    close(fd);
    return ENOMEM;
  }
  int err = mg_sha256_fd(fd, UINT64_MAX, ctx, NULL);
  close(fd);
  if (!err) {
    unsigned char digest[32];
    unsigned int dlen = 0;
    EVP_DigestFinal_ex(ctx, digest, &dlen);
    mg_hex(digest, 32, hex);
  }
  EVP_MD_CTX_free(ctx);
  return err;
}

static int hash_sha256_file(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  char hex[65];
  int err = mg_sha256_path(path, hex);
  if (err) return mg_fail_errno(L, err, "%s", path);
  lua_pushstring(L, hex);
  return 1;
}

typedef struct { EVP_MD_CTX *ctx; } Hasher;

static Hasher *checkhasher(lua_State *L) {
  Hasher *h = luaL_checkudata(L, 1, HASHER_MT);
  if (!h->ctx) luaL_error(L, "attempt to use a finished hasher");
  return h;
}

static int hasher_close(lua_State *L) {
  Hasher *h = luaL_checkudata(L, 1, HASHER_MT);
  if (h->ctx) { EVP_MD_CTX_free(h->ctx); h->ctx = NULL; }
  return 0;
}

static int hasher_update(lua_State *L) {
  Hasher *h = checkhasher(L);
  size_t len;
  const char *s = luaL_checklstring(L, 2, &len);
  EVP_DigestUpdate(h->ctx, s, len);
  lua_settop(L, 1);
  return 1;
}

static int hasher_hex(lua_State *L) {
  Hasher *h = checkhasher(L);
  unsigned char digest[32];
  unsigned int dlen = 0;
  EVP_DigestFinal_ex(h->ctx, digest, &dlen);
  hasher_close(L);
  char hex[65];
  mg_hex(digest, 32, hex);
  lua_pushstring(L, hex);
  return 1;
}

static int hash_new(lua_State *L) {
  Hasher *h = lua_newuserdatauv(L, sizeof *h, 0);
  h->ctx = NULL;
  luaL_setmetatable(L, HASHER_MT);
  h->ctx = EVP_MD_CTX_new();
  if (!h->ctx || EVP_DigestInit_ex(h->ctx, EVP_sha256(), NULL) != 1)
    return luaL_error(L, "OpenSSL: cannot create a SHA-256 context");
  return 1;
}

void mg_open_hash(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"close", hasher_close},
    {"hex", hasher_hex},
    {"update", hasher_update},
    {NULL, NULL}
  };
  static const luaL_Reg funcs[] = {
    {"hasher", hash_new},
    {"sha256_file", hash_sha256_file},
    {NULL, NULL}
  };
  mg_newmeta(L, HASHER_MT, methods, hasher_close);
  luaL_setfuncs(L, funcs, 0);
}
