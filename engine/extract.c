/* Archive listing and safe extraction on libarchive.
 *
 * libarchive only reads; every file, folder and link is made here, relative to an O_DIRECTORY
 * descriptor of the destination, one path component at a time with O_NOFOLLOW (or, for a folder
 * already there, in one openat2 that refuses every symlink on the way), so nothing the archive
 * planted is ever followed. A hostile or damaged archive is refused whole: what this call
 * made is removed again (in reverse order of creation) before it returns. Symbolic links are made
 * last, once every other entry is on disk, and only when they stay inside the destination.
 * Lua runs only between libarchive calls (on_progress, under lua_pcall): a Lua error never unwinds
 * through libarchive; it is re-raised after the clean-up.
 *
 * A compressed archive is decompressed in a stage of its own (zlib for gzip, libarchive's "raw"
 * reader for the other filters) that feeds the archive reader, so that the compressed stream is read
 * to its very end and its checksum checked there: a tar ends before its compressed stream does, and
 * libarchive checks no gzip CRC at all. */
#include "core.h"
#include "extract.h"

#include <archive.h>
#include <openssl/evp.h>
#include <archive_entry.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <locale.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>
#if defined(__linux__) && defined(__has_include)
#if __has_include(<linux/openat2.h>)
#include <linux/openat2.h>
#include <sys/syscall.h>
#define MG_HAVE_OPENAT2 1
#endif
#endif
#ifdef __APPLE__
#include <xlocale.h>
#endif

/* libarchive is loaded on the first archive opened, not with the engine: it brings a dozen
 * libraries (ICU and libxml2 among them) whose loading and relocation would double the start-up
 * time of every command, most of which never open an archive. */
#ifndef MG_LIBARCHIVE
#ifdef __APPLE__
#define MG_LIBARCHIVE "libarchive.13.dylib"
#else
#define MG_LIBARCHIVE "libarchive.so.13"
#endif
#endif

#define LIBARCHIVE_FUNCS(X) \
  X(archive_entry_filetype) \
  X(archive_entry_hardlink) \
  X(archive_entry_hardlink_utf8) \
  X(archive_entry_mode) \
  X(archive_entry_mtime) \
  X(archive_entry_mtime_is_set) \
  X(archive_entry_mtime_nsec) \
  X(archive_entry_pathname) \
  X(archive_entry_pathname_utf8) \
  X(archive_entry_perm) \
  X(archive_entry_size) \
  X(archive_entry_size_is_set) \
  X(archive_entry_symlink) \
  X(archive_entry_symlink_utf8) \
  X(archive_error_string) \
  X(archive_set_error) \
  X(archive_filter_bytes) \
  X(archive_filter_code) \
  X(archive_filter_count) \
  X(archive_format) \
  X(archive_read_data_block) \
  X(archive_read_free) \
  X(archive_read_new) \
  X(archive_read_next_header) \
  X(archive_read_open) \
  X(archive_read_open_fd) \
  X(archive_read_support_filter_bzip2) \
  X(archive_read_support_filter_gzip) \
  X(archive_read_support_filter_lz4) \
  X(archive_read_support_filter_lzma) \
  X(archive_read_support_filter_xz) \
  X(archive_read_support_filter_zstd) \
  X(archive_read_support_format_7zip) \
  X(archive_read_support_format_raw) \
  X(archive_read_support_format_tar) \
  X(archive_read_support_format_zip)

static struct {
#define DECLARE(name) __typeof__(name) *name;
  LIBARCHIVE_FUNCS(DECLARE)
#undef DECLARE
} la;

static pthread_once_t la_once = PTHREAD_ONCE_INIT;
static char la_error[256]; /* empty once loaded */

static void load_libarchive(void) {
  void *lib = dlopen(MG_LIBARCHIVE, RTLD_NOW | RTLD_LOCAL);
  char why[160];
  const char *err = lib ? NULL : dlerror();
  snprintf(why, sizeof why, "%s", err ? err : "not found");
  /* A build that links libarchive (the rockspec's) has it already, under whatever file name. */
  if (!lib && dlsym(RTLD_DEFAULT, "archive_read_new")) lib = RTLD_DEFAULT;
  if (!lib) {
    snprintf(la_error, sizeof la_error, "cannot load %s: %s", MG_LIBARCHIVE, why);
    return;
  }
#define LOAD(name) \
  if (!la_error[0] && !(*(void **)&la.name = dlsym(lib, #name))) \
    snprintf(la_error, sizeof la_error, "%s has no %s", MG_LIBARCHIVE, #name);
  LIBARCHIVE_FUNCS(LOAD)
#undef LOAD
}

/* NULL once libarchive is there, else why it is not. */
static const char *libarchive_missing(void) {
  pthread_once(&la_once, load_libarchive);
  return la_error[0] ? la_error : NULL;
}

#define READER_MT "modelget.ArchiveReader"
#define READ_BLOCK (256 * 1024)

/* What the extraction made or saw, by clean relative path: duplicates, hard-link targets,
 * paths through symlinks, and the clean-up all ask this set. */
enum { REC_DIR = 1, REC_FILE, REC_SYMLINK };
typedef struct {
  char *path;
  char *target;          /* symlinks: the link text, made after every other entry */
  char *sha256;          /* regular files: the hex digest of what was written (NULL: not known) */
  uint64_t hash;         /* of path (see hash_path) */
  int64_t size;
  unsigned char type;
  unsigned char created; /* made by this extraction (removed again on failure) */
} Record;

/* The compressed stream under an archive, decompressed here (see the top of the file). */
enum { STREAM_NONE, STREAM_GZIP, STREAM_FILTER };
typedef struct {
  int kind;
  const char *filter;   /* "none", "gzip", "xz"…: what info.filter reports */
  struct archive *raw;  /* STREAM_FILTER: libarchive's raw reader, its filters on */
  z_stream z;           /* STREAM_GZIP */
  int z_open, z_member_end, in_eof;
  int failed;           /* why[] holds a failure still to report (after the data before it) */
  unsigned char *in, *out;
  int64_t drained;      /* bytes decompressed after the archive's end */
  char why[256];        /* the stage's own failure, for messages */
} Stream;

/* One open archive (and, while extracting, its destination). A userdata, so a Lua error
 * (out of memory while building a listing) cannot leak the handle. */
typedef struct {
  struct archive *a;
  int archive_fd;
  int root_fd;
  Stream st;
  Record *recs;
  size_t nrecs, caprecs;
  size_t *slots; /* open addressing over recs: index + 1, 0 = empty */
  size_t nslots;
  size_t *made;  /* indices of created records, in order of creation */
  size_t nmade, capmade;
  size_t nsymlinks;     /* symlink records (made at the end) */
  int dir_fd;           /* the folder open_parent opened last (dir_path), kept: entries come folder by folder */
  char *dir_path;
  int64_t headers;      /* headers read so far */
  locale_t utf8, saved; /* this thread's LC_CTYPE while libarchive runs (see utf8_names) */
} Reader;

typedef struct {
  const char *code;
  char msg[1024];
} Failure;

static int failf(Failure *f, const char *code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(f->msg, sizeof f->msg, fmt, ap);
  va_end(ap);
  /* One line: some of libarchive's messages end with a newline ("ZIP uncompressed data is wrong
   * size (…)\n"). Names in messages are already escaped (shown). */
  size_t n = strlen(f->msg);
  while (n > 0 && (f->msg[n - 1] == '\n' || f->msg[n - 1] == '\r' || f->msg[n - 1] == ' ')) f->msg[--n] = '\0';
  for (char *c = f->msg; *c; c++)
    if (*c == '\n' || *c == '\r' || *c == '\t') *c = ' ';
  f->code = code;
  return -1;
}

/* An archive path as a message may show it: control bytes escaped, long names cut. */
static const char *shown(const char *s, char *out, size_t outsz) {
  size_t n = 0;
  if (!s) s = "";
  for (; *s && n + 8 < outsz; s++) {
    unsigned char c = (unsigned char)*s;
    if (c < 0x20 || c == 0x7f) n += (size_t)snprintf(out + n, outsz - n, "\\x%02x", c);
    else out[n++] = (char)c;
  }
  if (*s) { memcpy(out + n, "...", 3); n += 3; }
  out[n] = '\0';
  return out;
}

/* Reader lifetime ------------------------------------------------------------------------------ */

/* libarchive converts zip and pax names to the current locale's charset; in the C locale a
 * UTF-8 name then comes back as no name at all. So while a reader is open, this thread reads
 * with a UTF-8 LC_CTYPE (uselocale: the process locale is left alone). */
static void utf8_names(Reader *r, int on) {
  if (on && !r->utf8) {
    r->utf8 = newlocale(LC_CTYPE_MASK, "C.UTF-8", (locale_t)0);
    if (!r->utf8) r->utf8 = newlocale(LC_CTYPE_MASK, "UTF-8", (locale_t)0);
    if (r->utf8) r->saved = uselocale(r->utf8);
  } else if (!on && r->utf8) {
    uselocale(r->saved);
    freelocale(r->utf8);
    r->utf8 = (locale_t)0;
  }
}

static void stream_release(Stream *st) {
  if (st->raw) { la.archive_read_free(st->raw); st->raw = NULL; }
  if (st->z_open) { inflateEnd(&st->z); st->z_open = 0; }
  free(st->in);
  free(st->out);
  st->in = st->out = NULL;
}

static void reader_release(Reader *r) {
  if (r->a) { la.archive_read_free(r->a); r->a = NULL; }
  stream_release(&r->st);
  utf8_names(r, 0);
  if (r->archive_fd >= 0) { close(r->archive_fd); r->archive_fd = -1; }
  if (r->root_fd >= 0) { close(r->root_fd); r->root_fd = -1; }
  if (r->dir_fd >= 0) { close(r->dir_fd); r->dir_fd = -1; }
  free(r->dir_path);
  r->dir_path = NULL;
  for (size_t i = 0; i < r->nrecs; i++) {
    free(r->recs[i].path);
    free(r->recs[i].target);
    free(r->recs[i].sha256);
  }
  free(r->recs);
  free(r->slots);
  free(r->made);
  r->recs = NULL;
  r->slots = r->made = NULL;
  r->nrecs = r->caprecs = r->nslots = r->nmade = r->capmade = r->nsymlinks = 0;
}

static int reader_gc(lua_State *L) {
  reader_release(luaL_checkudata(L, 1, READER_MT));
  return 0;
}

static Reader *new_reader(lua_State *L) {
  Reader *r = lua_newuserdatauv(L, sizeof *r, 0);
  memset(r, 0, sizeof *r);
  r->archive_fd = r->root_fd = r->dir_fd = -1;
  luaL_setmetatable(L, READER_MT);
  return r;
}

static const char *base_name(const char *path) {
  const char *slash = strrchr(path, '/');
  return slash && slash[1] ? slash + 1 : path;
}

/* Why the archive reader failed: the decompression stage's reason when it was the stage. */
static const char *reader_why(Reader *r, struct archive *a) {
  if (r->st.why[0]) return r->st.why;
  return la.archive_error_string(a);
}

static ssize_t stream_read(struct archive *a, void *client, const void **buf);

/* Unrecognised data out of a compressed stream may be a damaged stream (bzip2 scrambles its whole
 * block and checks it at the block's end): its first MiB is read to tell. */
#define PROBE_BYTES (1024 * 1024)

static int not_archive(Reader *r, const char *name, Failure *f) {
  for (int64_t seen = 0; r->st.kind != STREAM_NONE && !r->st.why[0] && seen < PROBE_BYTES;) {
    const void *buf;
    ssize_t n = stream_read(r->a, r, &buf);
    if (n <= 0) break;
    seen += n;
  }
  /* A compressed stream that fails before the first header is a damaged archive, not another kind of file. */
  if (r->st.why[0]) return failf(f, "EARCHIVE", "%s: damaged archive: %s", name, r->st.why);
  const char *why = reader_why(r, r->a);
  return failf(f, "EARCHIVE", "%s: not a readable archive of files (zip, tar or 7z; raw or gzip, bzip2, xz, "
               "lzma, zstd or lz4): %s", name, why ? why : "unrecognised");
}

/* The decompression stage --------------------------------------------------------------------- */

#define GZ_BLOCK (256 * 1024)

/* Sets the stage's failure (kept for messages); -1. */
static ssize_t stream_fail(Stream *st, struct archive *a, const char *fmt, const char *detail) {
  snprintf(st->why, sizeof st->why, fmt, detail ? detail : "damaged data");
  st->failed = 1;
  if (a) la.archive_set_error(a, EIO, "%s", st->why);
  return -1;
}

/* gzip, member after member (as gzip -d reads them); zeros after the last member are padding.
 * zlib checks each member's CRC-32 and length. */
static ssize_t gzip_read(Reader *r, struct archive *a, const void **buf) {
  Stream *st = &r->st;
  if (st->failed) { /* found with the last block's data, which went out first */
    la.archive_set_error(a, EIO, "%s", st->why);
    return -1;
  }
  for (;;) {
    if (st->z.avail_in == 0 && !st->in_eof) {
      ssize_t n = read(r->archive_fd, st->in, GZ_BLOCK);
      if (n < 0) {
        if (errno == EINTR) continue;
        return stream_fail(st, a, "gzip: %s", strerror(errno));
      }
      if (n == 0) st->in_eof = 1;
      st->z.next_in = st->in;
      st->z.avail_in = (uInt)n;
    }
    if (st->z_member_end) {
      while (st->z.avail_in > 0 && *st->z.next_in == 0) st->z.next_in++, st->z.avail_in--;
      if (st->z.avail_in == 0) {
        if (st->in_eof) return 0;
        continue;
      }
      if (st->z.next_in[0] != 0x1f || (st->z.avail_in > 1 && st->z.next_in[1] != 0x8b))
        return stream_fail(st, a, "gzip: %s", "data after the end of the compressed stream");
      if (inflateReset(&st->z) != Z_OK) return stream_fail(st, a, "gzip: %s", st->z.msg);
      st->z_member_end = 0;
    }
    st->z.next_out = st->out;
    st->z.avail_out = GZ_BLOCK;
    int rc = inflate(&st->z, Z_NO_FLUSH);
    size_t got = GZ_BLOCK - st->z.avail_out;
    if (rc == Z_STREAM_END) st->z_member_end = 1;
    else if (rc != Z_OK && rc != Z_BUF_ERROR) {
      /* The data before the failure goes out first: the failure is then reported with its entry. */
      stream_fail(st, got > 0 ? NULL : a, "gzip: %s", rc == Z_MEM_ERROR ? "out of memory" : st->z.msg);
      if (got == 0) return -1;
    }
    if (got > 0) {
      *buf = st->out;
      return (ssize_t)got;
    }
    if (!st->z_member_end && st->z.avail_in == 0 && st->in_eof)
      return stream_fail(st, a, "gzip: %s", "unexpected end of the compressed stream (truncated)");
  }
}

/* libarchive's bzip2, lz4 and lzma readers end quietly at data that does not start another stream,
 * as xz's and zstd's do not: what the file holds past the bytes they took must be zeros (padding, as
 * after gzip), not a damaged stream or anything else passed over in silence. */
static ssize_t filter_tail(Reader *r, struct archive *a) {
  Stream *st = &r->st;
  struct stat sb;
  int64_t at = (int64_t)la.archive_filter_bytes(st->raw, -1);
  if (at < 0 || fstat(r->archive_fd, &sb) != 0) return 0;
  unsigned char block[65536];
  while (at < (int64_t)sb.st_size) {
    ssize_t n = pread(r->archive_fd, block, sizeof block, (off_t)at);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return stream_fail(st, a, "%s", strerror(errno));
    if (n == 0) break;
    for (ssize_t i = 0; i < n; i++)
      if (block[i]) {
        char why[64];
        snprintf(why, sizeof why, "%s: data after the end of the compressed stream", st->filter);
        return stream_fail(st, a, "%s", why);
      }
    at += n;
  }
  return 0;
}

static ssize_t filter_read(Reader *r, struct archive *a, const void **buf) {
  Stream *st = &r->st;
  size_t size;
  la_int64_t off;
  if (st->failed) {
    la.archive_set_error(a, EIO, "%s", st->why);
    return -1;
  }
  int rc = la.archive_read_data_block(st->raw, buf, &size, &off);
  if (rc == ARCHIVE_EOF) return filter_tail(r, a);
  if (rc != ARCHIVE_OK && rc != ARCHIVE_WARN) {
    const char *why = la.archive_error_string(st->raw);
    return stream_fail(st, a, "%s", why);
  }
  return (ssize_t)size;
}

/* The archive reader's read callback: the stage's next decompressed block. */
static ssize_t stream_read(struct archive *a, void *client, const void **buf) {
  Reader *r = client;
  return r->st.kind == STREAM_GZIP ? gzip_read(r, a, buf) : filter_read(r, a, buf);
}


/* After the archive's last entry: the rest of the compressed stream is read (and dropped) to its
 * end, where its checksum is. A tar's padding is a record (10 KiB, 1 MiB at the most unusual
 * blocking factor); more than PAST_END_MAX is no padding (a second archive appended, a bomb): refused
 * rather than read on or silently left out. */
#define PAST_END_MAX (16 * 1024 * 1024)

static int stream_finish(Reader *r, const char *name, Failure *f) {
  Stream *st = &r->st;
  if (st->kind == STREAM_NONE) return 0;
  for (;;) {
    const void *buf;
    ssize_t n = stream_read(r->a, r, &buf);
    if (n == 0) return 0;
    if (n < 0) return failf(f, "EARCHIVE", "%s: damaged archive: %s", name, st->why);
    st->drained += n;
    if (st->drained > PAST_END_MAX)
      return failf(f, "EARCHIVE", "%s: more than %d MiB of data after the archive's end", name,
                   PAST_END_MAX / (1024 * 1024));
  }
}

static const char *filter_name_of(int code) {
  switch (code) {
  case ARCHIVE_FILTER_BZIP2: return "bzip2";
  case ARCHIVE_FILTER_XZ: return "xz";
  case ARCHIVE_FILTER_LZMA: return "lzma";
  case ARCHIVE_FILTER_ZSTD: return "zstd";
  case ARCHIVE_FILTER_LZ4: return "lz4";
  default: return NULL;
  }
}

/* libarchive's filters for the compressions read (gzip: only where zlib's stage is not the one). */
static void support_filters(struct archive *a, int gzip) {
  if (gzip) la.archive_read_support_filter_gzip(a);
  la.archive_read_support_filter_bzip2(a);
  la.archive_read_support_filter_xz(a);
  la.archive_read_support_filter_lzma(a);
  la.archive_read_support_filter_zstd(a);
  la.archive_read_support_filter_lz4(a);
}

/* Which stage the archive file needs: gzip by its magic; the other filters as libarchive's raw
 * reader recognises them (kept as the stage); else none, and the archive reader reads the file
 * itself (seekable: zip and 7z read their directories at the end). */
static int stream_open(Reader *r, const char *name, Failure *f) {
  Stream *st = &r->st;
  unsigned char magic[2];
  st->filter = "none";
  if (pread(r->archive_fd, magic, 2, 0) == 2 && magic[0] == 0x1f && magic[1] == 0x8b) {
    st->in = malloc(GZ_BLOCK);
    st->out = malloc(GZ_BLOCK);
    if (!st->in || !st->out || inflateInit2(&st->z, 15 + 16) != Z_OK)
      return failf(f, "EIO", "%s: out of memory", name);
    st->z_open = 1;
    st->kind = STREAM_GZIP;
    st->filter = "gzip";
    return 0;
  }
  st->raw = la.archive_read_new();
  if (!st->raw) return failf(f, "EIO", "%s: libarchive: out of memory", name);
  support_filters(st->raw, 0);
  la.archive_read_support_format_raw(st->raw);
  struct archive_entry *e;
  const char *filter = NULL;
  /* With only "raw" for a format, opening fails on data that is not compressed at all (an empty
   * file: the archive reader says what it is not), or on a filter's own check of its first data (a
   * compressed stream damaged at its start: libarchive has taken its filters down then). */
  if (la.archive_read_open_fd(st->raw, r->archive_fd, READ_BLOCK) != ARCHIVE_OK) {
    if (!(la.archive_filter_count(st->raw) == 1 && la.archive_filter_code(st->raw, 0) == ARCHIVE_FILTER_NONE)) {
      const char *why = la.archive_error_string(st->raw);
      return failf(f, "EARCHIVE", "%s: damaged archive: %s", name, why ? why : "unreadable");
    }
  } else {
    filter = filter_name_of(la.archive_filter_code(st->raw, 0));
  }
  if (filter) {
    st->kind = STREAM_FILTER;
    st->filter = filter;
    if (la.archive_read_next_header(st->raw, &e) != ARCHIVE_OK) {
      const char *why = la.archive_error_string(st->raw);
      return failf(f, "EARCHIVE", "%s: damaged archive: %s: %s", name, filter, why ? why : "unreadable");
    }
    return 0;
  }
  la.archive_read_free(st->raw);
  st->raw = NULL;
  if (lseek(r->archive_fd, 0, SEEK_SET) != 0) return failf(f, mg_errno_code(errno), "%s: %s", name, strerror(errno));
  return 0;
}

/* Only archives of files: tar (all its dialects), zip and 7z, raw or under gzip, bzip2, xz, lzma,
 * zstd or lz4. Not "raw" (one compressed file is not an archive), not mtree (it names files on
 * this machine), not the rest of libarchive's formats. */
static int reader_open(Reader *r, const char *path, const char *name, Failure *f) {
  r->archive_fd = open(path, O_RDONLY | O_CLOEXEC);
  int err = r->archive_fd < 0 ? errno : 0;
  /* A folder opens like a file; only its reads fail, and libarchive would call it damaged. */
  struct stat st;
  if (!err && fstat(r->archive_fd, &st) == 0 && S_ISDIR(st.st_mode)) err = EISDIR;
  if (err) return failf(f, mg_errno_code(err), "%s: %s", path, strerror(err));
  utf8_names(r, 1);
  const char *missing = libarchive_missing();
  if (missing) return failf(f, "EIO", "%s: %s", name, missing);
  if (stream_open(r, name, f)) return -1;
  r->a = la.archive_read_new();
  if (!r->a) return failf(f, "EIO", "%s: libarchive: out of memory", name);
  la.archive_read_support_format_tar(r->a);
  la.archive_read_support_format_zip(r->a);
  la.archive_read_support_format_7zip(r->a);
  /* A second layer under the first (a .tar.gz served gzipped again) is the archive reader's. */
  support_filters(r->a, 1);
  int rc = r->st.kind == STREAM_NONE ? la.archive_read_open_fd(r->a, r->archive_fd, READ_BLOCK)
                                     : la.archive_read_open(r->a, r, NULL, stream_read, NULL);
  if (rc != ARCHIVE_OK) return not_archive(r, name, f);
  return 0;
}

/* 1: an entry, 0: the end (the compressed stream read to its end), -1: a failure (damaged, or not
 * an archive at all). */
static int next_entry(Reader *r, struct archive_entry **e, const char *name, Failure *f) {
  int rc = la.archive_read_next_header(r->a, e);
  if (rc == ARCHIVE_EOF) return stream_finish(r, name, f);
  /* Warnings are about names that do not fit the locale; the UTF-8 name is read instead. */
  if (rc == ARCHIVE_OK || rc == ARCHIVE_WARN) return r->headers++, 1;
  if (r->headers == 0) return not_archive(r, name, f);
  const char *why = reader_why(r, r->a);
  return failf(f, "EARCHIVE", "%s: damaged archive: %s", name, why ? why : "unreadable header");
}

static const char *entry_path(struct archive_entry *e) {
  const char *p = la.archive_entry_pathname_utf8(e);
  return p ? p : la.archive_entry_pathname(e);
}

static const char *entry_hardlink(struct archive_entry *e) {
  const char *p = la.archive_entry_hardlink_utf8(e);
  return p ? p : la.archive_entry_hardlink(e);
}

static const char *entry_symlink(struct archive_entry *e) {
  const char *p = la.archive_entry_symlink_utf8(e);
  return p ? p : la.archive_entry_symlink(e);
}

static const char *format_name(struct archive *a) {
  switch (la.archive_format(a) & ARCHIVE_FORMAT_BASE_MASK) {
  case ARCHIVE_FORMAT_TAR: return "tar";
  case ARCHIVE_FORMAT_ZIP: return "zip";
  case ARCHIVE_FORMAT_7ZIP: return "7z";
  default: return "unknown";
  }
}


/* Paths -------------------------------------------------------------------------------------- */

/* Why a name (an entry path or a link text) is refused outright, or NULL. */
static const char *bad_name(const char *s) {
  if (!s || !*s) return "the entry has no name";
  for (const char *p = s; *p; p++) {
    unsigned char c = (unsigned char)*p;
    if (c < 0x20 || c == 0x7f) return "the name holds a control character";
    if (c == '\\') return "the name holds a backslash (a Windows path)";
  }
  if (s[0] == '/') return "absolute path";
  if (((s[0] | 0x20) >= 'a' && (s[0] | 0x20) <= 'z') && s[1] == ':') return "Windows drive path";
  return NULL;
}

/* Rewrites an entry path as clean components joined by '/' (no '.', no empty parts); "" is the
 * root itself. Returns NULL, or why the path is refused. */
static const char *clean_path(const char *raw, char *out, size_t outsz) {
  const char *why = bad_name(raw);
  if (why) return why;
  size_t n = 0;
  const char *p = raw;
  while (*p) {
    const char *s = p;
    while (*p && *p != '/') p++;
    size_t len = (size_t)(p - s);
    if (*p) p++;
    if (len == 0 || (len == 1 && s[0] == '.')) continue;
    if (len == 2 && s[0] == '.' && s[1] == '.') return "the path climbs out of the folder ('..')";
    if (len > NAME_MAX) return "a name in the path is too long";
    if (n + len + 2 > outsz) return "the path is too long";
    if (n) out[n++] = '/';
    memcpy(out + n, s, len);
    n += len;
  }
  out[n] = '\0';
  return NULL;
}

/* Drops n leading components; NULL when nothing is left. */
static char *strip_path(char *path, int n) {
  for (; n > 0; n--) {
    char *slash = strchr(path, '/');
    if (!slash) return NULL;
    path = slash + 1;
  }
  return *path ? path : NULL;
}

static size_t count_components(const char *path) {
  size_t n = *path ? 1 : 0;
  for (; *path; path++) n += *path == '/';
  return n;
}

/* The record set ----------------------------------------------------------------------------- */

/* FNV-1a, fed a byte at a time: the hash of every prefix of a path comes out of one pass. */
#define HASH_START 1469598103934665603ULL
#define HASH_BYTE(h, c) (((h) ^ (unsigned char)(c)) * 1099511628211ULL)

static uint64_t hash_path(const char *s) {
  uint64_t h = HASH_START;
  for (; *s; s++) h = HASH_BYTE(h, *s);
  return h;
}

static size_t *slot_of_hashed(const Reader *r, const char *path, uint64_t h) {
  size_t mask = r->nslots - 1, i = (size_t)h & mask;
  while (r->slots[i]) {
    const Record *rec = &r->recs[r->slots[i] - 1];
    if (rec->hash == h && strcmp(rec->path, path) == 0) break;
    i = (i + 1) & mask;
  }
  return &r->slots[i];
}

static size_t *slot_of(const Reader *r, const char *path) {
  return slot_of_hashed(r, path, hash_path(path));
}

/* Whether a folder of path (a proper prefix) is a symbolic link this extraction is to make.
 * One pass over the path, whatever its depth: a deep path must not cost its length squared. */
static int through_symlink(const Reader *r, const char *path) {
  if (!r->nsymlinks) return 0;
  size_t mask = r->nslots - 1;
  uint64_t h = HASH_START;
  for (size_t len = 0; path[len]; len++) {
    if (path[len] == '/') {
      for (size_t i = (size_t)h & mask; r->slots[i]; i = (i + 1) & mask) {
        const Record *rec = &r->recs[r->slots[i] - 1];
        if (rec->hash == h && rec->type == REC_SYMLINK && strncmp(rec->path, path, len) == 0 && !rec->path[len])
          return 1;
      }
    }
    h = HASH_BYTE(h, path[len]);
  }
  return 0;
}

static Record *rec_find(const Reader *r, const char *path) {
  if (!r->nslots) return NULL;
  size_t *slot = slot_of(r, path);
  return *slot ? &r->recs[*slot - 1] : NULL;
}

static int grow_slots(Reader *r) {
  size_t n = r->nslots ? r->nslots * 2 : 256;
  size_t *slots = calloc(n, sizeof *slots);
  if (!slots) return ENOMEM;
  free(r->slots);
  r->slots = slots;
  r->nslots = n;
  for (size_t i = 0; i < r->nrecs; i++) *slot_of_hashed(r, r->recs[i].path, r->recs[i].hash) = i + 1;
  return 0;
}

/* Room for one more of n items in a growing array: the array (moved or not), or NULL. */
static void *grow(void *items, size_t n, size_t *cap, size_t size) {
  if (n < *cap) return items;
  size_t want = *cap ? *cap * 2 : 64;
  void *grown = realloc(items, want * size);
  if (grown) *cap = want;
  return grown;
}

static int note_made(Reader *r, size_t index) {
  size_t *made = grow(r->made, r->nmade, &r->capmade, sizeof *made);
  if (!made) return ENOMEM;
  r->made = made;
  r->made[r->nmade++] = index;
  r->recs[index].created = 1;
  return 0;
}

/* Adds (or updates) path; created notes it for the clean-up. Returns 0 or ENOMEM. */
static int rec_add(Reader *r, const char *path, int type, int created, const char *target) {
  Record *rec = rec_find(r, path);
  if (!rec) {
    if ((r->nrecs + 1) * 2 > r->nslots && grow_slots(r)) return ENOMEM;
    Record *recs = grow(r->recs, r->nrecs, &r->caprecs, sizeof *recs);
    if (!recs) return ENOMEM;
    r->recs = recs;
    rec = &r->recs[r->nrecs];
    memset(rec, 0, sizeof *rec);
    rec->path = strdup(path);
    if (!rec->path) return ENOMEM;
    rec->hash = hash_path(path);
    *slot_of_hashed(r, path, rec->hash) = ++r->nrecs;
  }
  if (type == REC_SYMLINK && rec->type != REC_SYMLINK) r->nsymlinks++;
  rec->type = (unsigned char)type;
  if (target) {
    free(rec->target);
    if (!(rec->target = strdup(target))) return ENOMEM;
  }
  return created && !rec->created ? note_made(r, (size_t)(rec - r->recs)) : 0;
}

/* The destination tree ----------------------------------------------------------------------- */

static void close_parent(const Reader *r, int fd) {
  if (fd >= 0 && fd != r->root_fd) close(fd);
}

/* Opens the folder dir under root in one call, no symlink followed anywhere on the way (ELOOP),
 * as the walk of open_parent would; -1 with errno ENOSYS where the system cannot. */
static int open_beneath(int root, const char *dir) {
#if defined(MG_HAVE_OPENAT2) && defined(SYS_openat2)
  static volatile int unsupported;
  if (!unsupported) {
    struct open_how how;
    memset(&how, 0, sizeof how);
    how.flags = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
    int fd = (int)syscall(SYS_openat2, root, dir, &how, sizeof how);
    if (fd >= 0 || (errno != ENOSYS && errno != EPERM && errno != E2BIG && errno != EINVAL && errno != EAGAIN))
      return fd;
    if (errno != EAGAIN) unsupported = 1;
  }
#else
  (void)root;
  (void)dir;
#endif
  errno = ENOSYS;
  return -1;
}

/* Opens the folder that holds path (relative to the root), one component at a time and never
 * following a symlink; with create, missing folders are made and recorded. Returns a descriptor
 * (close it with close_parent) or -1 with errno set; *leaf gets the last component.
 * path is cut and mended in place: it must not be a record's own string. */
static void forget_dir(Reader *r) {
  if (r->dir_fd >= 0) close(r->dir_fd);
  free(r->dir_path);
  r->dir_fd = -1;
  r->dir_path = NULL;
}

static void remember_dir(Reader *r, const char *dir, int fd) {
  forget_dir(r);
  if ((r->dir_path = strdup(dir)) != NULL) r->dir_fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
}

static int open_parent(Reader *r, char *path, int create, const char **leaf) {
  int cur = r->root_fd;
  char *s = path;
  char *last = strrchr(path, '/');
  if (last) {
    /* The folder of the entry before, or the whole folder in one call where the kernel can refuse
     * every symlink on the way itself; the walk below only where a folder is missing (or there is
     * no openat2): a path 2000 folders deep must not cost 2000 calls an entry. */
    *last = '\0';
    int fd = r->dir_fd >= 0 && strcmp(r->dir_path, path) == 0 ? fcntl(r->dir_fd, F_DUPFD_CLOEXEC, 0)
                                                               : open_beneath(r->root_fd, path);
    int err = errno;
    if (fd >= 0 && (!r->dir_path || strcmp(r->dir_path, path) != 0)) remember_dir(r, path, fd);
    *last = '/';
    if (fd >= 0) {
      *leaf = last + 1;
      return fd;
    }
    if (err != ENOENT && err != ENOSYS) { errno = err; return -1; }
  }
  for (char *slash; (slash = strchr(s, '/')) != NULL; s = slash + 1) {
    *slash = '\0';
    int fd = openat(cur, s, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT && create) {
      if (mkdirat(cur, s, 0755) == 0) {
        if (rec_add(r, path, REC_DIR, 1, NULL)) {
          unlinkat(cur, s, AT_REMOVEDIR);
          errno = ENOMEM;
        } else {
          fd = openat(cur, s, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        }
      } else if (errno == EEXIST) {
        fd = openat(cur, s, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      }
    }
    int err = errno;
    *slash = '/';
    close_parent(r, cur);
    if (fd < 0) { errno = err; return -1; }
    cur = fd;
  }
  *leaf = s;
  if (last) {
    *last = '\0';
    remember_dir(r, path, cur);
    *last = '/';
  }
  return cur;
}

/* Removes what this extraction made, newest first. */
static void remove_made(Reader *r) {
  char path[PATH_MAX];
  forget_dir(r);
  for (size_t i = r->nmade; i-- > 0;) {
    const Record *rec = &r->recs[r->made[i]];
    const char *leaf;
    snprintf(path, sizeof path, "%s", rec->path);
    int dfd = open_parent(r, path, 0, &leaf);
    if (dfd < 0) continue;
    unlinkat(dfd, leaf, rec->type == REC_DIR ? AT_REMOVEDIR : 0);
    close_parent(r, dfd);
    if (rec->type == REC_DIR) forget_dir(r);
  }
  r->nmade = 0;
}

/* Extraction --------------------------------------------------------------------------------- */

typedef struct {
  lua_State *L;
  Reader *r;
  const char *name;       /* the archive as messages name it */
  int strip;
  int progress_idx;       /* stack index of on_progress, 0 = none */
  int lua_error;          /* on_progress raised: its error value is on the stack top */
  int64_t max_entries, max_bytes, free_reserve, total;
  int64_t seen;           /* entries read, extracted or not (max_entries) */
  int64_t entries, bytes; /* extracted */
  int64_t tick_entries, tick_bytes;
  Failure f;
} Extraction;

static int entry_fail(Extraction *x, const char *code, const char *raw, const char *fmt, ...) {
  char why[512], name[320];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why, sizeof why, fmt, ap);
  va_end(ap);
  return failf(&x->f, code, "%s: entry '%s': %s", x->name, shown(raw, name, sizeof name), why);
}

/* A failed file-system call on an entry, in the user's terms. */
static int path_fail(Extraction *x, const char *raw, int err) {
  switch (err) {
  case EEXIST: return entry_fail(x, "EARCHIVE", raw, "duplicate: the path already exists");
  case ELOOP: case ENOTDIR:
    return entry_fail(x, "EARCHIVE", raw, "the path goes through a symbolic link or a file");
  case ENAMETOOLONG: return entry_fail(x, "EARCHIVE", raw, "the name is too long for this file system");
  case EILSEQ: return entry_fail(x, "EARCHIVE", raw, "the name is not valid on this file system");
  default: return entry_fail(x, mg_errno_code(err), raw, "%s", strerror(err));
  }
}

static int over_budget(Extraction *x, const char *raw) {
  return entry_fail(x, "EARCHIVE", raw, "the archive expands to more than %lld bytes (max_bytes)",
                    (long long)x->max_bytes);
}

static int avail_bytes(const Extraction *x, int64_t *avail) {
  uint64_t bytes;
  if (mg_free_space_fd(x->r->root_fd, &bytes) != 0) return -1;
  *avail = (int64_t)bytes;
  return 0;
}

/* Refuses to start a file that cannot fit while keeping free_reserve bytes free. */
static int check_space(Extraction *x, const char *raw, int64_t need) {
  int64_t avail;
  if (avail_bytes(x, &avail) != 0 || avail - x->free_reserve >= need) return 0;
  return entry_fail(x, "ESPACE", raw, "not enough free space (%lld bytes needed, %lld available%s)",
                    (long long)need, (long long)avail, x->free_reserve ? " above the reserve" : "");
}

/* Runs under lua_pcall: on_progress({entries=, bytes=, total=}). */
static int call_progress(lua_State *L) {
  lua_createtable(L, 0, 3);
  lua_pushvalue(L, 2);
  lua_setfield(L, -2, "entries");
  lua_pushvalue(L, 3);
  lua_setfield(L, -2, "bytes");
  lua_pushvalue(L, 4);
  lua_setfield(L, -2, "total");
  lua_pushvalue(L, 1);
  lua_insert(L, -2);
  lua_call(L, 1, 0);
  return 0;
}

static int report_progress(Extraction *x) {
  x->tick_entries = x->tick_bytes = 0;
  if (x->free_reserve > 0) {
    int64_t avail;
    if (avail_bytes(x, &avail) == 0 && avail < x->free_reserve)
      return failf(&x->f, "ESPACE", "%s: free space fell below the reserve of %lld bytes", x->name,
                   (long long)x->free_reserve);
  }
  if (!x->progress_idx) return 0;
  lua_State *L = x->L;
  lua_pushcfunction(L, call_progress);
  lua_pushvalue(L, x->progress_idx);
  lua_pushinteger(L, (lua_Integer)x->entries);
  lua_pushinteger(L, (lua_Integer)x->bytes);
  if (x->total >= 0) lua_pushinteger(L, (lua_Integer)x->total);
  else lua_pushnil(L);
  if (x->r->utf8) uselocale(x->r->saved); /* Lua runs in the caller's locale */
  int status = lua_pcall(L, 4, 0, 0);
  if (x->r->utf8) uselocale(x->r->utf8);
  if (status != LUA_OK) {
    x->lua_error = 1;
    return failf(&x->f, "EIO", "%s: on_progress failed", x->name);
  }
  return 0;
}

/* Between entries and between data blocks: the interrupt flag, then progress when due. */
static int tick(Extraction *x) {
  if (mg_interrupt_flag) return failf(&x->f, "EINTR", "%s: extraction interrupted", x->name);
  if (x->tick_entries < MG_EXTRACT_PROGRESS_ENTRIES && x->tick_bytes < MG_EXTRACT_PROGRESS_BYTES) return 0;
  return report_progress(x);
}

/* Counts growth expanded bytes against max_bytes before they are written. */
static int spend(Extraction *x, const char *raw, int64_t growth) {
  if (growth > x->max_bytes - x->bytes) return over_budget(x, raw);
  x->bytes += growth;
  x->tick_bytes += growth;
  return 0;
}

/* Feeds n zero bytes (a sparse hole) to the digest. */
static void hash_zeros(EVP_MD_CTX *ctx, int64_t n) {
  static const unsigned char zeros[65536];
  while (n > 0) {
    size_t k = n < (int64_t)sizeof zeros ? (size_t)n : sizeof zeros;
    EVP_DigestUpdate(ctx, zeros, k);
    n -= (int64_t)k;
  }
}

/* Copies the entry's data into fd, hashing it on the way (no second read for the manifest);
 * sparse holes stay holes but count as expanded bytes (and as zeros in the digest). Blocks out of
 * order leave *hashed_ok 0: the caller hashes the file itself then. */
static int write_data(Extraction *x, const char *raw, int fd, int64_t stated, EVP_MD_CTX *ctx, int *hashed_ok) {
  struct archive *a = x->r->a;
  int64_t extent = 0;
  for (;;) {
    const void *buf;
    size_t size;
    la_int64_t off;
    int rc = la.archive_read_data_block(a, &buf, &size, &off);
    if (rc == ARCHIVE_EOF) break;
    if (rc != ARCHIVE_OK) {
      const char *why = reader_why(x->r, a);
      return entry_fail(x, "EARCHIVE", raw, "%s", why ? why : "damaged data");
    }
    if (off < 0) off = extent;
    if (*hashed_ok) {
      if ((int64_t)off < extent) *hashed_ok = 0;
      else {
        hash_zeros(ctx, (int64_t)off - extent);
        EVP_DigestUpdate(ctx, buf, size);
      }
    }
    int64_t end = (int64_t)off + (int64_t)size;
    if (end > extent) {
      if (spend(x, raw, end - extent)) return -1;
      extent = end;
    }
    int err = mg_write_all(fd, buf, size, (uint64_t)off);
    if (err) return path_fail(x, raw, err);
    if (tick(x)) return -1;
  }
  if (stated > extent) {
    if (spend(x, raw, stated - extent)) return -1;
    if (ftruncate(fd, (off_t)stated) != 0) return path_fail(x, raw, errno);
    if (*hashed_ok) hash_zeros(ctx, stated - extent);
  }
  return 0;
}

/* Records a made file's size and digest (from ctx, finished here). */
static int note_digest(Reader *r, const char *path, EVP_MD_CTX *ctx, int64_t size) {
  Record *rec = rec_find(r, path);
  unsigned char digest[32];
  unsigned int dlen = 0;
  if (!rec || EVP_DigestFinal_ex(ctx, digest, &dlen) != 1) return 0;
  rec->size = size;
  if (!(rec->sha256 = malloc(65))) return ENOMEM;
  mg_hex(digest, 32, rec->sha256);
  return 0;
}

/* A regular file: created O_EXCL (never over anything), 0644 or 0755 before the umask — no
 * setuid, setgid or sticky bit, no owner; the modification time is kept. */
static int make_file(Extraction *x, struct archive_entry *e, const char *raw, char *path) {
  Reader *r = x->r;
  int64_t stated = la.archive_entry_size_is_set(e) ? (int64_t)la.archive_entry_size(e) : 0;
  if (stated < 0) stated = 0;
  if (stated > x->max_bytes - x->bytes) return over_budget(x, raw);
  if (stated > 0 && check_space(x, raw, stated)) return -1;
  const char *leaf;
  int dfd = open_parent(r, path, 1, &leaf);
  if (dfd < 0) return path_fail(x, raw, errno);
  mode_t mode = (la.archive_entry_perm(e) & 0111) ? 0755 : 0644;
  int fd = openat(dfd, leaf, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
  int err = fd < 0 ? errno : rec_add(r, path, REC_FILE, 1, NULL);
  if (fd >= 0 && err) { close(fd); unlinkat(dfd, leaf, 0); fd = -1; }
  close_parent(r, dfd);
  if (fd < 0) return path_fail(x, raw, err);
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  int hashed_ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1;
  int rc = write_data(x, raw, fd, stated, ctx, &hashed_ok);
  if (rc == 0 && hashed_ok) {
    struct stat st;
    int derr = fstat(fd, &st) == 0 ? note_digest(r, path, ctx, (int64_t)st.st_size) : 0;
    if (derr) rc = path_fail(x, raw, derr);
  }
  EVP_MD_CTX_free(ctx);
  if (rc == 0 && la.archive_entry_mtime_is_set(e)) {
    struct timespec ts[2];
    ts[0].tv_sec = ts[1].tv_sec = la.archive_entry_mtime(e);
    ts[0].tv_nsec = ts[1].tv_nsec = la.archive_entry_mtime_nsec(e);
    futimens(fd, ts);
  }
  if (close(fd) != 0 && rc == 0) rc = path_fail(x, raw, errno);
  return rc;
}

/* A folder: made 0755 before the umask whatever the archive says (the archive's own mode could
 * lock this extraction out of it); an existing folder is merged into, anything else refused. */
static int make_dir(Extraction *x, const char *raw, char *path) {
  Reader *r = x->r;
  const char *leaf;
  int dfd = open_parent(r, path, 1, &leaf);
  if (dfd < 0) return path_fail(x, raw, errno);
  int err = 0;
  if (mkdirat(dfd, leaf, 0755) == 0) {
    err = rec_add(r, path, REC_DIR, 1, NULL);
  } else {
    struct stat st;
    err = errno;
    if (err == EEXIST && fstatat(dfd, leaf, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode)) err = 0;
  }
  close_parent(r, dfd);
  return err ? path_fail(x, raw, err) : 0;
}

/* A hard link: only to a regular file this extraction already made. */
static int make_hardlink(Extraction *x, const char *raw, char *path, const char *target) {
  Reader *r = x->r;
  char clean[PATH_MAX], shown_target[320];
  const char *why = clean_path(target, clean, sizeof clean);
  if (why) return entry_fail(x, "EARCHIVE", raw, "hard link target '%s': %s",
                             shown(target, shown_target, sizeof shown_target), why);
  char *t = strip_path(clean, x->strip);
  const Record *rec = t ? rec_find(r, t) : NULL;
  if (!rec || rec->type != REC_FILE || !rec->created)
    return entry_fail(x, "EARCHIVE", raw, "a hard link to '%s', which is not a file extracted before it",
                      shown(target, shown_target, sizeof shown_target));
  const char *tleaf, *leaf;
  int tfd = open_parent(r, t, 0, &tleaf);
  if (tfd < 0) return path_fail(x, raw, errno);
  int dfd = open_parent(r, path, 1, &leaf);
  int err = dfd < 0 ? errno : 0;
  if (!err && linkat(tfd, tleaf, dfd, leaf, 0) != 0) err = errno;
  if (!err) err = rec_add(r, path, REC_FILE, 1, NULL);
  if (!err) {
    /* The same bytes as the file it links to: the same digest. */
    const Record *src = rec_find(r, t);
    Record *dst = rec_find(r, path);
    if (src && dst && src->sha256 && !(dst->sha256 = strdup(src->sha256))) err = ENOMEM;
    if (src && dst) dst->size = src->size;
  }
  close_parent(r, tfd);
  close_parent(r, dfd);
  return err ? path_fail(x, raw, err) : 0;
}

/* A symbolic link is recorded now and made at the end. Its text must be relative and, read
 * lexically from the link's folder, stay inside the destination. */
static int add_symlink(Extraction *x, struct archive_entry *e, const char *raw, const char *path) {
  const char *text = entry_symlink(e);
  const char *why = bad_name(text);
  if (why && text && text[0] == '/') why = "a symbolic link to an absolute path";
  if (why) return entry_fail(x, "EARCHIVE", raw, "symbolic link target: %s", why);
  size_t depth = count_components(path) - 1;
  for (const char *p = text; *p;) {
    const char *s = p;
    while (*p && *p != '/') p++;
    size_t len = (size_t)(p - s);
    if (*p) p++;
    if (len == 0 || (len == 1 && s[0] == '.')) continue;
    if (len == 2 && s[0] == '.' && s[1] == '.') {
      if (depth == 0) return entry_fail(x, "EARCHIVE", raw, "a symbolic link that points outside the folder");
      depth--;
    } else {
      depth++;
    }
  }
  if (rec_find(x->r, path)) return entry_fail(x, "EARCHIVE", raw, "duplicate: the path already exists");
  if (rec_add(x->r, path, REC_SYMLINK, 0, text)) return entry_fail(x, "EIO", raw, "out of memory");
  return 0;
}

/* Refuses a link whose text walks through another symlink: lexical reading alone would then
 * not tell where it ends ("a/../.." where a is itself a link). */
static int check_link_walk(Extraction *x, const char *path, const char *text) {
  char walk[PATH_MAX];
  const char *slash = strrchr(path, '/');
  size_t n = slash ? (size_t)(slash - path) : 0;
  memcpy(walk, path, n);
  walk[n] = '\0';
  for (const char *p = text; *p;) {
    const char *s = p;
    while (*p && *p != '/') p++;
    size_t len = (size_t)(p - s);
    while (*p == '/') p++;
    if (len == 0 || (len == 1 && s[0] == '.')) continue;
    if (len == 2 && s[0] == '.' && s[1] == '.') {
      char *up = strrchr(walk, '/');
      n = up ? (size_t)(up - walk) : 0;
      walk[n] = '\0';
      continue;
    }
    if (n + len + 2 > sizeof walk) return entry_fail(x, "EARCHIVE", path, "symbolic link target is too long");
    if (n) walk[n++] = '/';
    memcpy(walk + n, s, len);
    walk[n += len] = '\0';
    if (!*p) break; /* the last component may itself be a link: it is checked on its own */
    const Record *rec = rec_find(x->r, walk);
    struct stat st;
    if ((rec && rec->type == REC_SYMLINK) ||
        (fstatat(x->r->root_fd, walk, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode)))
      return entry_fail(x, "EARCHIVE", path, "a symbolic link whose target goes through another symbolic link");
  }
  return 0;
}

static int make_symlinks(Extraction *x) {
  Reader *r = x->r;
  char path[PATH_MAX];
  for (size_t i = 0; i < r->nrecs; i++) {
    if (r->recs[i].type != REC_SYMLINK || r->recs[i].created) continue;
    snprintf(path, sizeof path, "%s", r->recs[i].path);
    const char *leaf;
    int dfd = open_parent(r, path, 1, &leaf); /* may add records: r->recs moves */
    if (dfd < 0) return path_fail(x, path, errno);
    const char *text = r->recs[i].target;
    int err = check_link_walk(x, path, text) ? -1 : 0;
    if (!err && symlinkat(text, dfd, leaf) != 0) err = errno;
    if (!err) err = note_made(r, i);
    close_parent(r, dfd);
    if (err > 0) return path_fail(x, path, err);
    if (err) return -1;
  }
  return 0;
}

static int extract_entries(Extraction *x) {
  Reader *r = x->r;
  struct archive_entry *e;
  char clean[PATH_MAX];
  for (;;) {
    if (tick(x)) return -1;
    int rc = next_entry(r, &e, x->name, &x->f);
    if (rc < 0) return -1;
    if (rc == 0) break;
    if (++x->seen > x->max_entries)
      return failf(&x->f, "EARCHIVE", "%s: more than %lld entries (max_entries)", x->name,
                   (long long)x->max_entries);
    const char *raw = entry_path(e);
    const char *why = clean_path(raw, clean, sizeof clean);
    if (why) return entry_fail(x, "EARCHIVE", raw, "%s", why);
    char *path = strip_path(clean, x->strip);
    if (!path) continue; /* the root itself, or all of it stripped */
    if (through_symlink(r, path)) return entry_fail(x, "EARCHIVE", raw, "the path goes through a symbolic link");
    const Record *same = rec_find(r, path);
    if (same && same->type == REC_SYMLINK) return entry_fail(x, "EARCHIVE", raw, "duplicate: the path already exists");
    const char *hardlink = entry_hardlink(e);
    if (hardlink) {
      rc = make_hardlink(x, raw, path, hardlink);
    } else {
      switch (la.archive_entry_filetype(e)) {
      case AE_IFREG: rc = make_file(x, e, raw, path); break;
      case AE_IFDIR: rc = make_dir(x, raw, path); break;
      case AE_IFLNK: rc = add_symlink(x, e, raw, path); break;
      case AE_IFCHR: case AE_IFBLK: return entry_fail(x, "EARCHIVE", raw, "device nodes are refused");
      case AE_IFIFO: return entry_fail(x, "EARCHIVE", raw, "FIFOs are refused");
      case AE_IFSOCK: return entry_fail(x, "EARCHIVE", raw, "sockets are refused");
      default: return entry_fail(x, "EARCHIVE", raw, "entries of unknown type are refused");
      }
    }
    if (rc) return -1;
    x->entries++;
    x->tick_entries++;
  }
  return make_symlinks(x);
}

/* strip = "auto": one pass over the headers (nothing written). Strips the top folder only when
 * every entry lives under that one folder; anything odd leaves strip at 0 for the real pass to
 * judge. Also sums the stated sizes, for on_progress's total. */
static int auto_strip(lua_State *L, const char *archive, Extraction *x) {
  Reader *r = new_reader(L);
  char clean[PATH_MAX], top[NAME_MAX + 1] = "";
  int single = 1, deeper = 0;
  int64_t total = 0, seen = 0;
  struct archive_entry *e;
  int rc = reader_open(r, archive, x->name, &x->f);
  while (rc == 0 && (rc = next_entry(r, &e, x->name, &x->f)) == 1) {
    rc = 0;
    if (++seen > x->max_entries) { single = 0; break; }
    if (la.archive_entry_filetype(e) == AE_IFREG && la.archive_entry_size_is_set(e) && !entry_hardlink(e))
      total += (int64_t)la.archive_entry_size(e);
    if (!single || clean_path(entry_path(e), clean, sizeof clean)) { single = 0; continue; }
    if (!*clean) continue;
    char *slash = strchr(clean, '/');
    size_t len = slash ? (size_t)(slash - clean) : strlen(clean);
    if (!*top) memcpy(top, clean, len + 1), top[len] = '\0';
    if (strlen(top) != len || memcmp(top, clean, len) != 0) single = 0;
    else if (slash) deeper = 1;
    else if (la.archive_entry_filetype(e) != AE_IFDIR || entry_hardlink(e)) single = 0;
  }
  reader_release(r);
  lua_pop(L, 1);
  if (rc < 0) return -1;
  x->strip = single && deeper ? 1 : 0;
  if (x->total < 0) x->total = total;
  return 0;
}

/* Options ------------------------------------------------------------------------------------ */

static int64_t opt_int(lua_State *L, int idx, const char *field, int64_t def, int64_t min) {
  lua_getfield(L, idx, field);
  int64_t v = def;
  if (!lua_isnil(L, -1)) {
    int ok;
    v = (int64_t)lua_tointegerx(L, -1, &ok);
    if (!ok || v < min) luaL_error(L, "bad option '%s' (an integer >= %d expected)", field, (int)min);
  }
  lua_pop(L, 1);
  return v;
}

static int64_t default_max_bytes(int archive_fd) {
  struct stat st;
  int64_t cap = MG_EXTRACT_MIN_MAX_BYTES;
  if (fstat(archive_fd, &st) == 0 && st.st_size < INT64_MAX / 100 && st.st_size * 100 > cap)
    cap = st.st_size * 100;
  return cap;
}

static int push_failure(lua_State *L, const Failure *f) {
  return mg_fail(L, f->code, "%s", f->msg);
}

/* extract(archive, dest_dir [, opts]) -> {entries=, bytes=} | nil, err, code */
static int ex_extract(lua_State *L) {
  const char *archive = luaL_checkstring(L, 1);
  const char *dest = luaL_checkstring(L, 2);
  if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
  lua_settop(L, 3);
  if (lua_isnil(L, 3)) { lua_newtable(L); lua_replace(L, 3); }
  luaL_checkstack(L, 12, NULL);

  Extraction x;
  memset(&x, 0, sizeof x);
  x.L = L;
  x.total = opt_int(L, 3, "total", -1, 0);
  x.max_entries = opt_int(L, 3, "max_entries", MG_EXTRACT_MAX_ENTRIES, 1);
  x.max_bytes = opt_int(L, 3, "max_bytes", -1, 0);
  x.free_reserve = opt_int(L, 3, "free_reserve", 0, 0);
  /* strip_components, or its alias strip: N >= 0, or "auto" */
  const char *strip_field = "strip_components";
  if (lua_getfield(L, 3, strip_field) == LUA_TNIL) {
    lua_pop(L, 1);
    lua_getfield(L, 3, strip_field = "strip");
  }
  int auto_strip_wanted = lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), "auto") == 0;
  lua_pop(L, 1);
  if (!auto_strip_wanted) {
    int64_t n = opt_int(L, 3, strip_field, 0, 0);
    x.strip = n > PATH_MAX ? PATH_MAX : (int)n;
  }
  lua_getfield(L, 3, "name"); /* 4: the archive's name in messages */
  if (!lua_isnil(L, 4) && !lua_isstring(L, 4)) luaL_error(L, "bad option 'name' (a string expected)");
  x.name = lua_isnil(L, 4) ? base_name(archive) : lua_tostring(L, 4);
  lua_getfield(L, 3, "on_progress"); /* 5 */
  if (!lua_isnil(L, 5) && !lua_isfunction(L, 5)) luaL_error(L, "bad option 'on_progress' (a function expected)");
  x.progress_idx = lua_isnil(L, 5) ? 0 : 5;

  if (auto_strip_wanted && auto_strip(L, archive, &x)) return push_failure(L, &x.f);
  Reader *r = x.r = new_reader(L); /* 6 */
  int made_root = 0, rc = reader_open(r, archive, x.name, &x.f);
  if (rc == 0) {
    if (x.max_bytes < 0) x.max_bytes = default_max_bytes(r->archive_fd);
    if (mkdir(dest, 0755) == 0) made_root = 1;
    else if (errno != EEXIST) rc = failf(&x.f, mg_errno_code(errno), "cannot create %s: %s", dest, strerror(errno));
  }
  if (rc == 0) {
    r->root_fd = open(dest, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (r->root_fd < 0) rc = failf(&x.f, mg_errno_code(errno), "%s: %s", dest, strerror(errno));
  }
  if (rc == 0) rc = extract_entries(&x);
  if (rc == 0 && (x.tick_entries || x.tick_bytes)) rc = report_progress(&x);
  if (rc != 0) {
    remove_made(r);
    if (made_root) rmdir(dest);
  }
  if (x.lua_error) { reader_release(r); return lua_error(L); }
  if (rc != 0) { reader_release(r); return push_failure(L, &x.f); }
  lua_createtable(L, 0, 3);
  lua_pushinteger(L, (lua_Integer)x.entries);
  lua_setfield(L, -2, "entries");
  lua_pushinteger(L, (lua_Integer)x.bytes);
  lua_setfield(L, -2, "bytes");
  /* files: {{path=, size=, sha256=}…}, the regular files made, hashed as they were written */
  lua_createtable(L, 0, 0);
  lua_Integer n = 0;
  for (size_t i = 0; i < r->nmade; i++) {
    const Record *rec = &r->recs[r->made[i]];
    if (rec->type != REC_FILE || !rec->sha256) continue;
    lua_createtable(L, 0, 3);
    lua_pushstring(L, rec->path);
    lua_setfield(L, -2, "path");
    lua_pushinteger(L, (lua_Integer)rec->size);
    lua_setfield(L, -2, "size");
    lua_pushstring(L, rec->sha256);
    lua_setfield(L, -2, "sha256");
    lua_rawseti(L, -2, ++n);
  }
  lua_setfield(L, -2, "files");
  reader_release(r);
  return 1;
}

/* Listing ------------------------------------------------------------------------------------ */

static const char *entry_type(struct archive_entry *e) {
  if (entry_hardlink(e)) return "hardlink";
  switch (la.archive_entry_filetype(e)) {
  case AE_IFREG: return "file";
  case AE_IFDIR: return "dir";
  case AE_IFLNK: return "symlink";
  default: return "other";
  }
}

static void push_entry(lua_State *L, struct archive_entry *e) {
  lua_createtable(L, 0, 5);
  lua_pushstring(L, entry_path(e));
  lua_setfield(L, -2, "path");
  const char *type = entry_type(e);
  lua_pushstring(L, type);
  lua_setfield(L, -2, "type");
  if (la.archive_entry_size_is_set(e)) {
    lua_pushinteger(L, (lua_Integer)la.archive_entry_size(e));
    lua_setfield(L, -2, "size");
  }
  lua_pushinteger(L, (lua_Integer)(la.archive_entry_mode(e) & 07777));
  lua_setfield(L, -2, "mode");
  const char *target = type[0] == 'h' ? entry_hardlink(e) : type[0] == 's' ? entry_symlink(e) : NULL;
  if (target) {
    lua_pushstring(L, target);
    lua_setfield(L, -2, "target");
  }
}

/* archive_list(path [, opts]) -> {entry…}, info | nil, err, code */
static int ex_archive_list(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  int64_t max_entries = lua_isnil(L, 2) ? MG_EXTRACT_MAX_ENTRIES
                                        : opt_int(L, 2, "max_entries", MG_EXTRACT_MAX_ENTRIES, 1);
  const char *name = base_name(path);
  Reader *r = new_reader(L); /* 3 */
  Failure f;
  int rc = reader_open(r, path, name, &f);
  lua_newtable(L); /* 4 */
  int64_t n = 0, expanded = 0;
  struct archive_entry *e;
  while (rc == 0 && (rc = next_entry(r, &e, name, &f)) == 1) {
    rc = 0;
    if (++n > max_entries) {
      rc = failf(&f, "EARCHIVE", "%s: more than %lld entries (max_entries)", name, (long long)max_entries);
      break;
    }
    if (la.archive_entry_filetype(e) == AE_IFREG && la.archive_entry_size_is_set(e) && !entry_hardlink(e))
      expanded += (int64_t)la.archive_entry_size(e);
    push_entry(L, e);
    lua_rawseti(L, 4, (lua_Integer)n);
  }
  if (rc < 0) {
    reader_release(r);
    return push_failure(L, &f);
  }
  lua_createtable(L, 0, 4);
  lua_pushstring(L, format_name(r->a));
  lua_setfield(L, -2, "format");
  lua_pushstring(L, r->st.filter);
  lua_setfield(L, -2, "filter");
  lua_pushinteger(L, (lua_Integer)n);
  lua_setfield(L, -2, "entries");
  lua_pushinteger(L, (lua_Integer)expanded);
  lua_setfield(L, -2, "expanded");
  reader_release(r);
  return 2;
}

void mg_open_extract(lua_State *L) {
  static const luaL_Reg reader_methods[] = {
    {NULL, NULL}
  };
  static const luaL_Reg funcs[] = {
    {"archive_list", ex_archive_list},
    {"extract", ex_extract},
    {NULL, NULL}
  };
  mg_newmeta(L, READER_MT, reader_methods, reader_gc);
  luaL_setfuncs(L, funcs, 0);
}
