/* modelget: the host program. Shaped like Lua's lua.c: all work runs inside a protected call,
 * the engine is preloaded as modelget.core, and the command line itself is Lua (modelget.cli).
 * A user error is one line "modelget: message"; only a bug gets a traceback. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#ifdef __APPLE__
#include <mach-o/dyld.h>
#endif

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

int luaopen_modelget_core(lua_State *L);

static const char *progname = "modelget";

static void message(const char *msg) {
  fprintf(stderr, "%s: %s\n", progname, msg);
  fflush(stderr);
}

/* Errors raised as tables ({message=…, exit=…}) are the user's: one line, no traceback. Anything
 * else reaching here is a bug and gets a traceback (user errors are returned, not raised). */
static int msghandler(lua_State *L) {
  if (lua_type(L, 1) == LUA_TTABLE) return 1;
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING) return 1;
    msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  }
  luaL_traceback(L, L, msg, 1);
  return 1;
}

static int exe_dir(char *out, size_t outsz) {
  char buf[PATH_MAX];
#ifdef __APPLE__
  uint32_t sz = sizeof buf;
  if (_NSGetExecutablePath(buf, &sz) != 0) return -1;
  char real[PATH_MAX];
  if (!realpath(buf, real)) return -1;
  strcpy(buf, real);
#else
  ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n < 0) return -1;
  buf[n] = '\0';
#endif
  char *slash = strrchr(buf, '/');
  if (!slash) return -1;
  *slash = '\0';
  if (strlen(buf) >= outsz) return -1;
  strcpy(out, buf);
  return 0;
}

static int is_file(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* Finds the Lua files and the built-in registry: $MODELGET_LUA_DIR, the source tree next to
 * build/, or an installed prefix (bin/../share/lua/5.4, bin/../share/modelget/registry). */
static void set_paths(lua_State *L) {
  char dir[PATH_MAX], probe[PATH_MAX + 64], lua_dir[PATH_MAX + 32] = "", reg_dir[PATH_MAX + 32] = "";
  const char *env = getenv("MODELGET_LUA_DIR");
  if (env && *env) snprintf(lua_dir, sizeof lua_dir, "%s", env);
  if (exe_dir(dir, sizeof dir) == 0) {
    snprintf(probe, sizeof probe, "%s/../lua/modelget/init.lua", dir);
    if (is_file(probe)) {
      if (!*lua_dir) snprintf(lua_dir, sizeof lua_dir, "%s/../lua", dir);
      snprintf(reg_dir, sizeof reg_dir, "%s/../registry", dir);
    } else {
      if (!*lua_dir) snprintf(lua_dir, sizeof lua_dir, "%s/../share/lua/5.4", dir);
      snprintf(reg_dir, sizeof reg_dir, "%s/../share/modelget/registry", dir);
    }
  }
  lua_getglobal(L, "package");
  if (*lua_dir) {
    lua_getfield(L, -1, "path");
    lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;%s", lua_dir, lua_dir, lua_tostring(L, -1));
    lua_setfield(L, -3, "path");
    lua_pop(L, 1);
  }
  lua_getfield(L, -1, "preload");
  lua_pushcfunction(L, luaopen_modelget_core);
  lua_setfield(L, -2, "modelget.core");
  lua_pop(L, 1);
  /* Where the host found things, for modelget.registry: package.loaded["modelget.paths"]. */
  lua_getfield(L, -1, "loaded");
  lua_createtable(L, 0, 2);
  lua_pushstring(L, lua_dir);
  lua_setfield(L, -2, "lua_dir");
  lua_pushstring(L, reg_dir);
  lua_setfield(L, -2, "registry_dir");
  lua_setfield(L, -2, "modelget.paths");
  lua_pop(L, 2);
}

static int pmain(lua_State *L) {
  int argc = (int)lua_tointeger(L, 1);
  char **argv = (char **)lua_touserdata(L, 2);
  luaL_checkversion(L);
  luaL_openlibs(L);
  set_paths(L);
  lua_createtable(L, argc, 1);
  for (int i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i);
  }
  lua_setglobal(L, "arg");
  lua_getglobal(L, "require");
  lua_pushliteral(L, "modelget.cli");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "main");
  lua_getglobal(L, "arg");
  lua_call(L, 1, 1);
  lua_Integer status = lua_isinteger(L, -1) ? lua_tointeger(L, -1) : 0;
  lua_pushinteger(L, status);
  return 1;
}

int main(int argc, char **argv) {
  lua_State *L = luaL_newstate();
  if (L == NULL) {
    message("cannot create Lua state: not enough memory");
    return 1;
  }
  lua_pushcfunction(L, msghandler);
  lua_pushcfunction(L, pmain);
  lua_pushinteger(L, argc);
  lua_pushlightuserdata(L, argv);
  int status = 1;
  if (lua_pcall(L, 2, 1, 1) == LUA_OK) {
    status = (int)lua_tointeger(L, -1);
  } else if (lua_type(L, -1) == LUA_TTABLE) {
    lua_getfield(L, -1, "message");
    if (lua_isstring(L, -1)) message(lua_tostring(L, -1));
    lua_getfield(L, -2, "exit");
    status = lua_isinteger(L, -1) ? (int)lua_tointeger(L, -1) : 1;
  } else {
    message(lua_tostring(L, -1));
  }
  fflush(stdout);
  lua_close(L);
  return status;
}
