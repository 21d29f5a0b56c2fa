/* modelget.core: the engine as a Lua module. Each part (fs, hash, transfer, extract) adds its
 * functions and metatables; this file owns the shared error helpers and the entry point. */
#include "core.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <curl/curl.h>

uint64_t mg_fnv1a(const void *p, size_t n) {
  const unsigned char *b = p;
  uint64_t h = 1469598103934665603ULL;
  for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ULL;
  return h;
}

const char *mg_errno_code(int err) {
  switch (err) {
  case ENOSPC: case EDQUOT: return "ESPACE";
  case ENOENT: return "ENOENT";
  case EACCES: case EPERM: case EROFS: return "EACCES";
  case EINTR: return "EINTR";
  default: return "EIO";
  }
}

static int vfail(lua_State *L, const char *code, const char *suffix, const char *fmt, va_list ap) {
  char buf[1024];
  vsnprintf(buf, sizeof buf, fmt, ap);
  luaL_checkstack(L, 3, NULL);
  lua_pushnil(L);
  if (suffix) lua_pushfstring(L, "%s: %s", buf, suffix);
  else lua_pushstring(L, buf);
  lua_pushstring(L, code);
  return 3;
}

int mg_fail(lua_State *L, const char *code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vfail(L, code, NULL, fmt, ap);
  va_end(ap);
  return n;
}

int mg_fail_errno(lua_State *L, int err, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vfail(L, mg_errno_code(err), strerror(err), fmt, ap);
  va_end(ap);
  return n;
}

double mg_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void mg_newmeta(lua_State *L, const char *tname, const luaL_Reg *methods, lua_CFunction closer) {
  if (luaL_newmetatable(L, tname)) {
    lua_newtable(L);
    luaL_setfuncs(L, methods, 0);
    lua_setfield(L, -2, "__index");
    if (closer) {
      lua_pushcfunction(L, closer);
      lua_setfield(L, -2, "__gc");
      lua_pushcfunction(L, closer);
      lua_setfield(L, -2, "__close");
    }
  }
  lua_pop(L, 1);
}

static int core_version(lua_State *L) {
  curl_version_info_data *v = curl_version_info(CURLVERSION_NOW);
  lua_pushfstring(L, "modelget-engine 0.1 (libcurl %s%s)", v->version,
                  (v->features & CURL_VERSION_HTTP2) ? ", http2" : "");
  return 1;
}

int luaopen_modelget_core(lua_State *L);
int luaopen_modelget_core(lua_State *L) {
  /* Global libcurl init is not thread-safe before 7.84; do it once per process, here. */
  static int curl_ready = 0;
  if (!curl_ready) {
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) return luaL_error(L, "modelget.core: libcurl failed to initialise");
    curl_ready = 1;
  }
  lua_newtable(L);
  lua_pushcfunction(L, core_version);
  lua_setfield(L, -2, "version");
  mg_open_fs(L);
  mg_open_jobs(L);
  mg_open_hash(L);
  mg_open_transfer(L);
  mg_open_extract(L);
  return 1;
}
