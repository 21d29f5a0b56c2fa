/* Transfers: modelget.Session and modelget.Transfer on the libcurl multi interface.
 *
 * A Session owns one CURLM (one connection pool, HTTP/2 multiplexing where offered) and runs at
 * most `jobs` transfers at once; the rest wait in its queue. Session:perform() drives libcurl until
 * something finishes or the timeout passes; no Lua runs inside it. Body bytes go from libcurl's
 * write callback straight into the partial file and into SHA-256 (inline for small bodies, on a
 * worker thread fed through a bounded ring for big ones). A small text state file next to the
 * partial makes every download resumable across runs and crashes.
 *
 * Redirects are followed here, not by libcurl, so that every hop is checked against the policy
 * before any connection is made and the credential header is rebuilt for each hop's origin. */
#include "core.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <curl/curl.h>
#include <openssl/evp.h>

#define SESSION_MT "modelget.Session"
#define TRANSFER_MT "modelget.Transfer"

#define RING_SIZE ((size_t)8 << 20)          /* bytes between the write callback and the workers */
#define RING_SIZE_RANGED ((size_t)2 << 20)   /* a segment's: one of several, each with a share of the rate */
#define WBUF_SIZE ((size_t)256 << 10)        /* a small body's bytes gathered before one write */
#define HASH_BATCH ((size_t)512 << 10)       /* the worker wakes for this much (or the end), not per frame */
#define SPARE_WBUFS 16                       /* gather buffers a session keeps for reuse */
#define RESERVATIONS 256                     /* splits whose space a session holds at once (-j at most) */
#define INLINE_HASH_LIMIT ((uint64_t)1 << 20) /* a body up to this size is hashed inline */
#define PREFIX_STEP ((uint64_t)16 << 20)      /* kept prefix re-hashed in steps (abort checks between) */
#define STATE_EVERY_BYTES ((uint64_t)16 << 20)
#define STATE_EVERY_SECONDS 1.0
#define WRITEBACK_EVERY ((uint64_t)32 << 20)
#define DIRECT_BLOCK ((uint64_t)4096)          /* O_DIRECT writes: offsets, lengths and memory, at least */
#define HEADERS_MAX ((size_t)64 << 10)
#define BUFFER_SIZE 131072L
#define SPEED_SAMPLES 24
#define SPEED_EVERY 0.25
#define SPEED_WINDOW 5.0
#define TIMEOUT_MAX (7 * 24 * 3600.0)         /* the longest stall or connect timeout: a week (held in a long) */
#define STATE_MAGIC "modelget-partial 1"
#define STATE_MIN ((uint64_t)256 << 10)       /* smaller prefixes are not worth a state file: re-fetched */

/* FINISHING: the body is all in, its last bytes being written and hashed on a pool worker. */
enum { ST_QUEUED, ST_RUNNING, ST_FINISHING, ST_DONE };
/* What the current response is, decided when its headers end. */
enum { RESP_NONE, RESP_INFO, RESP_REDIRECT, RESP_BODY, RESP_ERROR };

typedef struct Session Session;
typedef struct Transfer Transfer;

/* The body workers: a ring filled by the write callback and read by two threads, one writing the
 * partial file, one feeding the SHA-256 context, so TLS, the page-cache copy and the hash each get
 * a core when there is one. A byte's slot is free once both have passed it. */
typedef struct {
  pthread_t hasher, writer;
  int started, writer_started, hasher_started;
  pthread_mutex_t mu;
  pthread_cond_t more_hash, more_write, room;
  unsigned char *ring;
  size_t size;               /* the ring's bytes (a multiple of the direct-write alignment) */
  uint64_t in;               /* bytes put into the ring */
  uint64_t hashed, written;  /* bytes the hasher and the writer are done with */
  int closing, abort;
  int drain;                 /* stop soon: write what the ring holds, hash nothing more */
  int hasher_waiting, writer_waiting, producer_waiting;
  int wake_wanted;           /* the transfer paused on a full ring: wake the event loop at half */
  CURLM *wake;               /* the session's multi handle, for curl_multi_wakeup */
  int prefix_fd;             /* the kept prefix is hashed from here first (then closed) */
  uint64_t prefix;
  int fd;                    /* the partial file: ring counter i is file offset file_base + i (-1: none) */
  int dfd;                   /* the same file opened for direct writes (-1: none, or gave up) */
  uint64_t file_base, synced;
  int writes;                /* workers with a file have run: file_base + written bytes are on disk */
  int err;
  EVP_MD_CTX *ctx;           /* owned by the hasher while it runs */
} Hashing;

/* A response's header lines as "name\0value\0" pairs, names lower-case. */
typedef struct {
  char *buf;
  size_t len, cap;
} Headers;

typedef struct { double at; uint64_t bytes; } Sample;

struct Transfer {
  Session *session;           /* NULL once detached */
  Transfer *prev, *next;      /* the session's attached transfers */
  Transfer *done_next;        /* the session's finished, not yet reported, FIFO */
  int state, closed, inited, in_multi;
  CURL *easy;
  struct curl_slist *req_headers, *user_headers;
  char errbuf[CURL_ERROR_SIZE];
  /* options */
  char *url, *cur_url, *partial, *state_path, *space_path, *auth_header, *auth_host;
  char auth_scheme[16];       /* with auth_host and auth_port: the origin the credential is for */
  long auth_port;
  int resume, head, memory;
  /* a ranged transfer: bytes range_from..range_to (inclusive) of the file, into a partial of their
   * own, on a connection of their own, asked for with If-Range: validator (one segment of a
   * download split over several connections) */
  int ranged, range_refused;
  int shared;                 /* the range goes into the partial in place, at its own offsets, next to
                               * other ranges: no state file, no hash, the caller says what is done */
  uint64_t range_from, range_to, range_done;
  int64_t whole_size;
  char *validator;
  int sync;                   /* fdatasync at success (off when the caller syncs the file itself) */
  int writeback;              /* a small body's write-back started at its end (it waits for others) */
  uint64_t memory_max;
  long stall_timeout;
  double space_factor;
  int space_checked;          /* its space was checked on the file system space_dev */
  dev_t space_dev;
  int reservation;            /* a segment of a split whose space the session holds (its number), or 0 */
  int reservation_settled;    /* what this attempt wrote is taken off that reservation */
  int64_t expected_size;
  /* resume: the validators we hold (from the state file, then from the response) */
  char *etag, *last_modified;
  uint64_t kept;              /* bytes kept from earlier attempts, asked for with Range */
  int state_dirty;            /* the state file must be rewritten at the end of the attempt */
  int state_on_disk;          /* a state file exists (read or written): keep it true from now on */
  /* the attempt */
  int fd;
  uint64_t offset;            /* file bytes received: on disk, or in wbuf for the last wlen of them */
  char *wbuf;                 /* pending body bytes, written (and hashed) WBUF_SIZE at a time */
  int tail_pending, tail_done, tail_err; /* the last wlen bytes handed to a pool worker (ST_FINISHING) */
  size_t wlen;
  int64_t total;              /* -1 unknown */
  uint64_t body_bytes;        /* body bytes received by this attempt */
  uint64_t body_hashed;       /* of them, written and hashed here (before a worker takes over) */
  int no_worker;              /* starting the worker failed once: not tried again */
  int resp;
  long status;
  Headers hdr;
  char *linked_etag;
  int64_t linked_size;
  int redirects, restart;
  uint64_t resumed_from;
  EVP_MD_CTX *ctx;
  Hashing hash;
  uint64_t state_off;
  double state_at, started_at;
  double activity_at;         /* last byte (header or body) from the server, or the last unpause */
  char *body;
  size_t body_len, body_cap;
  int user_paused, rate_paused, curl_paused;
  int ring_paused;            /* the worker's ring is full (a long prefix still re-hashing): wait, not block */
  int rate_ticket;            /* unpaused by a refill: its next delivery goes through, even into debt */
  double rate_share;          /* bytes it may take of the bucket until the next refill: its part of it */
  int discard;                /* going away: callbacks swallow whatever libcurl still delivers */
  Sample samples[SPEED_SAMPLES];
  int nsamples, sample_pos;
  /* a failure decided by us (in a callback or a check); wins over libcurl's code */
  const char *fail_code;
  char fail_msg[512];
  int fail_retryable, fail_drop;
  /* the result */
  int ok, retryable;
  const char *code;
  char message[512];
  double retry_after;         /* < 0: none */
  char sha256[65];
};

struct Session {
  CURLM *multi;
  int jobs, running;
  double limit_rate, tokens, token_at;
  char *cacert, *capath, *user_agent;
  long max_redirects, connect_timeout;
  Transfer *first, *last;
  Transfer *done_first, *done_last;
  char *spare_wbufs[SPARE_WBUFS]; /* small bodies' buffers, kept for the next transfers */
  int spare_count;
  int finishing;                  /* transfers whose last bytes a worker writes (at most jobs) */
  /* Space promised to downloads split in ranges (session:check_space): what they still have to
   * write on file system dev, counted by every other check until released. */
  struct { dev_t dev; double bytes; int live; } reserved[RESERVATIONS];
};

/* Small helpers ------------------------------------------------------------------------------- */

static char *xstrdup(const char *s) {
  return s ? strdup(s) : NULL;
}

static void replace(char **slot, const char *s) {
  free(*slot);
  *slot = xstrdup(s);
}

/* "1.2 MB": decimal units named as the Lua side's util.human names them, one decimal, ".0" dropped. */
static void human(uint64_t n, char *out, size_t outsz) {
  static const char *units[] = { "B", "KB", "MB", "GB", "TB", "PB", "EB" };
  double v = (double)n;
  int i = 0;
  while (v >= 1000 && i < 6) { v /= 1000; i++; }
  if (i == 0) { snprintf(out, outsz, "%llu B", (unsigned long long)n); return; }
  snprintf(out, outsz, "%.1f", v);
  size_t len = strlen(out);
  if (len > 2 && strcmp(out + len - 2, ".0") == 0) out[len - 2] = '\0';
  len = strlen(out);
  snprintf(out + len, outsz - len, " %s", units[i]);
}

/* scheme (lower-case), host (brackets removed), port (the scheme's default when the URL gives none;
 * 0 for a scheme without one) and a printable form (no credentials, no query) of a URL: scheme, host
 * and port make the URL's origin, which a credential is given for. */
typedef struct { char scheme[16]; char host[256]; long port; char shown[1024]; } UrlParts;

static void lower_ascii(char *s) {
  for (; *s; s++) *s = (char)(*s >= 'A' && *s <= 'Z' ? *s + 32 : *s);
}

static long default_port(const char *scheme) {
  return strcmp(scheme, "https") == 0 ? 443 : strcmp(scheme, "http") == 0 ? 80 : 0;
}

static int url_parts(const char *url, UrlParts *p) {
  memset(p, 0, sizeof *p);
  CURLU *u = curl_url();
  if (!u) return -1;
  int rc = -1;
  char *scheme = NULL, *host = NULL, *port = NULL, *path = NULL;
  if (curl_url_set(u, CURLUPART_URL, url, CURLU_NON_SUPPORT_SCHEME) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK) {
    curl_url_get(u, CURLUPART_PORT, &port, 0);
    curl_url_get(u, CURLUPART_PATH, &path, 0);
    snprintf(p->scheme, sizeof p->scheme, "%s", scheme);
    lower_ascii(p->scheme);
    const char *h = host;
    size_t n = strlen(h);
    if (n >= 2 && h[0] == '[' && h[n - 1] == ']') { h++; n -= 2; }
    if (n >= sizeof p->host) n = sizeof p->host - 1;
    memcpy(p->host, h, n);
    p->host[n] = '\0';
    p->port = port ? strtol(port, NULL, 10) : default_port(p->scheme);
    snprintf(p->shown, sizeof p->shown, "%s://%s%s%s%s", p->scheme, host, port ? ":" : "", port ? port : "",
             path ? path : "/");
    rc = 0;
  }
  curl_free(scheme); curl_free(host); curl_free(port); curl_free(path);
  curl_url_cleanup(u);
  return rc;
}

/* localhost is this machine's only as the one name libcurl resolves itself: "localhost." goes to
 * the system's resolver (DNS), which may answer with any address. */
static int is_loopback(const char *host) {
  if (strcasecmp(host, "localhost") == 0) return 1;
  struct in_addr a4;
  struct in6_addr a6;
  if (inet_pton(AF_INET, host, &a4) == 1) return (ntohl(a4.s_addr) >> 24) == 127;
  if (inet_pton(AF_INET6, host, &a6) == 1) return IN6_IS_ADDR_LOOPBACK(&a6);
  return 0;
}

/* A URL that does not parse, shown: no user:password@ part, no query or fragment, control
 * characters as '?', at most 200 bytes. */
static void show_raw(const char *url, char *out, size_t outsz) {
  const char *sep = strstr(url, "://");
  size_t n = 0;
  if (sep) {
    const char *auth = sep + 3, *end = auth + strcspn(auth, "/?#"), *at = NULL;
    for (const char *c = auth; c < end; c++) if (*c == '@') at = c;
    if (at) { /* scheme://, then what follows the credentials */
      for (const char *c = url; c < auth && n + 1 < outsz; c++) out[n++] = *c;
      url = at + 1;
    }
  }
  for (const char *c = url; *c && *c != '?' && *c != '#' && n + 1 < outsz && n < 200; c++)
    out[n++] = (unsigned char)*c < 0x20 || *c == 0x7f ? '?' : *c;
  out[n] = '\0';
}

/* 0 when the policy allows url; else fills why (naming the URL without credentials). */
static int policy_refuses(const char *url, char *why, size_t whysz) {
  UrlParts p;
  if (url_parts(url, &p) != 0) {
    char shown[256];
    show_raw(url, shown, sizeof shown);
    snprintf(why, whysz, "refused %s: not an https:// URL with a host", shown);
    return 1;
  }
  if (strcmp(p.scheme, "https") == 0) return 0;
  if (strcmp(p.scheme, "http") == 0) {
    if (is_loopback(p.host)) return 0;
    snprintf(why, whysz, "refused %s: plain http:// is allowed only to loopback hosts; use https://", p.shown);
    return 1;
  }
  snprintf(why, whysz, "refused %s: only https:// URLs are allowed", p.shown);
  return 1;
}

static void host_of(const char *url, char *out, size_t outsz) {
  UrlParts p;
  snprintf(out, outsz, "%s", url_parts(url, &p) == 0 ? p.host : "?");
}

/* mkdir -p for the folder holding path. */
static int make_parent(const char *path) {
  char dir[PATH_MAX];
  if (strlen(path) >= sizeof dir) return ENAMETOOLONG;
  mg_parent_of(path, dir, sizeof dir);
  return mg_mkdirs(dir, 0755);
}

/* Headers ------------------------------------------------------------------------------------- */

static void hdr_reset(Headers *h) { h->len = 0; }

static void hdr_add(Headers *h, const char *name, size_t nlen, const char *value, size_t vlen) {
  size_t need = nlen + vlen + 2;
  if (h->len + need > HEADERS_MAX) return;
  if (h->len + need > h->cap) {
    size_t cap = h->cap ? h->cap * 2 : 2048;
    while (cap < h->len + need) cap *= 2;
    char *grown = realloc(h->buf, cap);
    if (!grown) return;
    h->buf = grown;
    h->cap = cap;
  }
  for (size_t i = 0; i < nlen; i++) {
    char c = name[i];
    h->buf[h->len++] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
  }
  h->buf[h->len++] = '\0';
  memcpy(h->buf + h->len, value, vlen);
  h->len += vlen;
  h->buf[h->len++] = '\0';
}

/* The first value of a (lower-case) header, or NULL. */
static const char *hdr_get(const Headers *h, const char *name) {
  size_t i = 0;
  while (i < h->len) {
    const char *n = h->buf + i;
    const char *v = n + strlen(n) + 1;
    if (strcmp(n, name) == 0) return v;
    i = (size_t)(v - h->buf) + strlen(v) + 1;
  }
  return NULL;
}

static int64_t parse_size(const char *s) {
  if (!s || *s < '0' || *s > '9') return -1;
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno || (*end && *end != ' ') || v > (unsigned long long)INT64_MAX) return -1;
  return (int64_t)v;
}

/* Copies a header value into out for a message: control bytes as '?', cut with an ellipsis. */
static void shown_value(const char *v, char *out, size_t outsz) {
  size_t n = 0;
  for (; *v && n + 4 < outsz; v++) out[n++] = (unsigned char)*v < 0x20 || *v == 0x7f ? '?' : *v;
  if (*v) { memcpy(out + n, "\xe2\x80\xa6", 3); n += 3; }
  out[n] = '\0';
}

/* A Content-Length value: one number, or a list of one number said again ("42, 42", as proxies merge
 * a repeated header; RFC 9110 8.6 lets it pass; empty items are no items, 5.6.1). -1 otherwise. */
static int64_t parse_length_list(const char *v) {
  int64_t len = -1;
  for (;;) {
    while (*v == ' ' || *v == '\t') v++;
    if (*v == ',') { v++; continue; }
    if (!*v) return len;
    char *end;
    errno = 0;
    if (*v < '0' || *v > '9') return -1;
    unsigned long long one = strtoull(v, &end, 10);
    if (errno || one > (unsigned long long)INT64_MAX || (len >= 0 && (int64_t)one != len)) return -1;
    len = (int64_t)one;
    while (*end == ' ' || *end == '\t') end++;
    if (!*end) return len;
    if (*end != ',') return -1;
    v = end + 1;
  }
}

/* A body's announced length, or -1 when none is. 0 when the header is malformed or given twice with
 * two values (why says so): libcurl reads the leading digits of a malformed one ("12abc" is 12 bytes
 * to it) and the last of two, while we would count with none or the first, so a body libcurl ends
 * early would pass as whole. */
static int content_length_of(const Headers *h, int64_t *len, char *why, size_t whysz) {
  const char *first = NULL;
  char a[40], b[40];
  *len = -1;
  /* A chunked body's chunks say where it ends; its Content-Length is ignored (RFC 9112 6.1), as libcurl does. */
  if (hdr_get(h, "transfer-encoding")) return 1;
  for (size_t i = 0; i < h->len;) {
    const char *n = h->buf + i, *v = n + strlen(n) + 1;
    i = (size_t)(v - h->buf) + strlen(v) + 1;
    if (strcmp(n, "content-length") != 0) continue;
    int64_t one = parse_length_list(v);
    if (one < 0) {
      shown_value(v, a, sizeof a);
      snprintf(why, whysz, "malformed Content-Length '%s'", a);
      return 0;
    }
    if (first && one != *len) {
      shown_value(first, a, sizeof a);
      shown_value(v, b, sizeof b);
      snprintf(why, whysz, "two Content-Length headers, %s and %s", a, b);
      return 0;
    }
    first = v;
    *len = one;
  }
  return 1;
}

static int is_strong_etag(const char *etag) {
  return etag && etag[0] == '"';
}

/* The body workers -------------------------------------------------------------------------- */

/* Bytes in the ring not yet done with by both workers (call with mu held). */
static size_t ring_used(const Hashing *h) {
  uint64_t tail = h->hasher_started ? h->hashed : h->written;
  if (h->fd >= 0 && h->written < tail) tail = h->written;
  return (size_t)(h->in - tail);
}

/* Waits (mu held) until at least a batch past *done is in the ring, or the end is asked for (or
 * the other worker failed). */
static void await_batch(Hashing *h, const uint64_t *done, pthread_cond_t *more, int *waiting) {
  while (h->in - *done < HASH_BATCH && !h->closing && !h->abort && !h->drain && !h->err) {
    *waiting = 1;
    pthread_cond_wait(more, &h->mu);
    *waiting = 0;
  }
}

/* Wakes a waiting worker that has a batch to do, or must look at a stop or an error (mu held). */
static void wake_workers(Hashing *h, int all) {
  if (h->hasher_waiting && (all || h->in - h->hashed >= HASH_BATCH)) pthread_cond_signal(&h->more_hash);
  if (h->writer_waiting && (all || h->in - h->written >= HASH_BATCH)) pthread_cond_signal(&h->more_write);
}

/* A worker moved on (mu held): a producer waiting for room, or an event loop waiting for half the
 * ring, is told. */
static void ring_freed(Hashing *h) {
  if (h->producer_waiting) pthread_cond_signal(&h->room);
  if (h->wake_wanted && (h->err || ring_used(h) <= h->size / 2)) {
    h->wake_wanted = 0;
    if (h->wake) curl_multi_wakeup(h->wake); /* the paused transfer goes on at once */
  }
}

/* However a worker ends, nobody may wait for it for ever (mu held). */
static void worker_ends(Hashing *h) {
  wake_workers(h, 1); /* the other one, should it wait on an error of this one */
  pthread_cond_broadcast(&h->room);
  if (h->wake_wanted && h->wake) curl_multi_wakeup(h->wake);
  h->wake_wanted = 0;
}

/* The contiguous run of ring bytes after done (mu held): its start in the ring and its length. */
static size_t ring_run(const Hashing *h, uint64_t done, size_t *at) {
  *at = (size_t)(done % h->size);
  size_t n = (size_t)(h->in - done);
  return n > h->size - *at ? h->size - *at : n;
}

static int hash_aborted(Hashing *h) {
  pthread_mutex_lock(&h->mu);
  int a = h->abort || h->drain || h->err;
  pthread_mutex_unlock(&h->mu);
  return a;
}

static void *hasher_main(void *arg) {
  Hashing *h = arg;
  int err = 0;
  if (h->prefix_fd >= 0) {
    uint64_t left = h->prefix;
    while (left > 0 && !hash_aborted(h)) {
      uint64_t step = left < PREFIX_STEP ? left : PREFIX_STEP, got = 0;
      err = mg_sha256_fd(h->prefix_fd, step, h->ctx, &got);
      if (!err && got < step) err = EIO;
      if (err) break;
      left -= step;
    }
    close(h->prefix_fd);
    h->prefix_fd = -1;
  }
  pthread_mutex_lock(&h->mu);
  if (err) h->err = err;
  for (;;) {
    await_batch(h, &h->hashed, &h->more_hash, &h->hasher_waiting);
    /* A drained attempt hashes nothing more: its digest is thrown away. */
    if (h->err || h->abort || h->drain || h->in == h->hashed) break;
    size_t at, n = ring_run(h, h->hashed, &at);
    pthread_mutex_unlock(&h->mu);
    EVP_DigestUpdate(h->ctx, h->ring + at, n);
    pthread_mutex_lock(&h->mu);
    h->hashed += n;
    ring_freed(h);
  }
  worker_ends(h);
  pthread_mutex_unlock(&h->mu);
  return NULL;
}

/* The alignment of direct writes: a block, or a page where pages are bigger (a direct write must
 * not share a page with a neighbouring range's page-cache write). Rings are multiples of 64 KiB. */
static uint64_t direct_align(void) {
  static uint64_t align;
  if (!align) {
    long page = sysconf(_SC_PAGESIZE);
    align = page > (long)DIRECT_BLOCK && page <= 65536 ? (uint64_t)page : DIRECT_BLOCK;
  }
  return align;
}

/* Starts the disk write-back of a file's bytes from `from` to its end, without waiting for it: the
 * fsync or syncfs that makes the file durable later finds them written (or on their way) instead of
 * writing them all then. Linux only; elsewhere that sync does all of it. */
static void start_writeback(int fd, uint64_t from, uint64_t len) {
#ifdef SYNC_FILE_RANGE_WRITE
  sync_file_range(fd, (off_t)from, (off_t)len, SYNC_FILE_RANGE_WRITE);
#else
  (void)fd; (void)from; (void)len;
#endif
}

/* Writes one run of the ring at off; returns how much it wrote (0 on error, in *err). Whole aligned
 * blocks go straight to the disk (O_DIRECT): no page-cache copy and no write-back later, which on a
 * small machine is CPU the download needs; a head or tail block goes through the page cache. */
static size_t write_run(Hashing *h, const unsigned char *p, size_t n, uint64_t off, int *err) {
  if (h->dfd >= 0) {
    uint64_t align = direct_align();
    size_t head = (size_t)((align - off % align) % align);
    if (head == 0 && n >= align) {
      size_t k = n - n % align;
      *err = mg_write_all(h->dfd, p, k, off);
      if (!*err) return k;
      if (*err != EINVAL) return 0; /* a real failure (ENOSPC, EIO): reported as such */
      /* A file system that takes O_DIRECT at open but not these writes: the page cache it is. */
      close(h->dfd);
      h->dfd = -1;
    } else if (head > 0 && head < n) {
      n = head;
    }
  }
  *err = mg_write_all(h->fd, p, n, off);
  /* Write-back started every WRITEBACK_EVERY bytes, so the final fsync has little left to do. */
  if (!*err && h->dfd < 0 && off + n - h->synced >= WRITEBACK_EVERY) {
    start_writeback(h->fd, h->synced, off + n - h->synced);
    h->synced = off + n;
  }
  return *err ? 0 : n;
}

static void *writer_main(void *arg) {
  Hashing *h = arg;
  pthread_mutex_lock(&h->mu);
  for (;;) {
    await_batch(h, &h->written, &h->more_write, &h->writer_waiting);
    if (h->err || h->abort || h->in == h->written) break;
    size_t at, n = ring_run(h, h->written, &at);
    uint64_t off = h->file_base + h->written; /* written changes only here */
    pthread_mutex_unlock(&h->mu);
    int err = 0;
    size_t done = write_run(h, h->ring + at, n, off, &err);
    pthread_mutex_lock(&h->mu);
    if (err) h->err = err;
    else h->written += done;
    ring_freed(h);
  }
  /* Every byte written: what went through the page cache since the last start goes to the disk. */
  if (h->closing && !h->err && !h->abort && h->in == h->written) {
    uint64_t end = h->file_base + h->written;
    pthread_mutex_unlock(&h->mu);
    if (end > h->synced) start_writeback(h->fd, h->synced, end - h->synced);
    pthread_mutex_lock(&h->mu);
  }
  worker_ends(h);
  pthread_mutex_unlock(&h->mu);
  return NULL;
}

static int start_thread(pthread_t *thread, void *(*fn)(void *), void *arg) {
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, (size_t)1 << 20);
  int err = pthread_create(thread, &attr, fn, arg);
  pthread_attr_destroy(&attr);
  return err;
}

/* Starts the workers (the writer only when there is a file); prefix_fd (owned by the hasher from
 * here) gives the kept bytes to hash first. Returns 0 or an errno (then nothing was started and
 * prefix_fd is still the caller's). */
static int hash_start(Hashing *h, size_t size, CURLM *wake, EVP_MD_CTX *ctx, int prefix_fd, uint64_t prefix,
                      int fd, const char *path, uint64_t file_base) {
  void *ring = NULL;
  if (posix_memalign(&ring, (size_t)direct_align(), size) != 0) return ENOMEM;
  h->ring = ring;
  h->size = size;
  /* The counters start at the file offset's phase in a block, so a ring slot and the file offset it
   * goes to are aligned together (the ring's size is a multiple of the block). */
  uint64_t phase = file_base % direct_align();
  h->in = h->hashed = h->written = phase;
  h->closing = h->abort = h->drain = h->err = 0;
  h->hasher_waiting = h->writer_waiting = h->producer_waiting = h->wake_wanted = 0;
  h->prefix_fd = prefix_fd;
  h->prefix = prefix;
  h->fd = fd;
  h->file_base = file_base - phase;
  h->synced = file_base;
  h->ctx = ctx;
  h->wake = wake;
  h->dfd = -1;
#ifdef O_DIRECT
  if (fd >= 0 && path) h->dfd = open(path, O_WRONLY | O_CLOEXEC | O_DIRECT);
#else
  (void)path;
#endif
  int err = fd >= 0 ? start_thread(&h->writer, writer_main, h) : 0;
  if (!err) {
    h->writer_started = fd >= 0;
    h->hasher_started = 0;
    if (ctx) { /* no context: the bytes are written, not hashed (a range written in place) */
      err = start_thread(&h->hasher, hasher_main, h);
      h->hasher_started = !err;
    }
    if (err && h->writer_started) {
      pthread_mutex_lock(&h->mu);
      h->abort = 1;
      wake_workers(h, 1);
      pthread_mutex_unlock(&h->mu);
      pthread_join(h->writer, NULL);
      h->writer_started = 0;
    }
  }
  if (err) {
    free(h->ring);
    h->ring = NULL;
    h->prefix_fd = -1;
    if (h->dfd >= 0) { close(h->dfd); h->dfd = -1; }
    return err;
  }
  h->started = 1;
  h->writes = fd >= 0;
  return 0;
}

/* Room left in the ring (all of it once a worker has failed: the next put reports the error). */
static size_t hash_room(Hashing *h) {
  pthread_mutex_lock(&h->mu);
  size_t room = h->err ? SIZE_MAX : h->size - ring_used(h);
  pthread_mutex_unlock(&h->mu);
  return room;
}

/* Whether len bytes fit in the ring now; when they do not, the workers are asked to wake the event
 * loop once half the ring is free (checked and asked in one step, so no wake-up is lost). */
static int hash_fits_or_wake(Hashing *h, size_t len) {
  pthread_mutex_lock(&h->mu);
  int fits = h->err || h->size - ring_used(h) >= len;
  if (!fits) h->wake_wanted = 1;
  pthread_mutex_unlock(&h->mu);
  return fits;
}

/* Returns 0, or a worker's error (then the bytes are dropped: the transfer fails). */
static int hash_put(Hashing *h, const char *p, size_t n) {
  pthread_mutex_lock(&h->mu);
  while (n > 0 && !h->err) {
    while (ring_used(h) == h->size && !h->err) {
      h->producer_waiting = 1;
      pthread_cond_wait(&h->room, &h->mu);
      h->producer_waiting = 0;
    }
    if (h->err) break;
    size_t at = (size_t)(h->in % h->size);
    size_t k = h->size - ring_used(h);
    if (k > h->size - at) k = h->size - at;
    if (k > n) k = n;
    memcpy(h->ring + at, p, k);
    h->in += k; p += k; n -= k;
    wake_workers(h, 0);
  }
  int err = h->err;
  pthread_mutex_unlock(&h->mu);
  return err;
}

/* How a worker stops: everything written and hashed; abandoned at once; or what the ring holds
 * written out and nothing more hashed (a failed attempt: the bytes serve a resume, the digest is
 * thrown away, and a long kept prefix is not re-read for nothing). */
enum { STOP_FINISH, STOP_ABORT, STOP_DRAIN };

static int hash_stop(Hashing *h, int how) {
  if (!h->started) return 0;
  pthread_mutex_lock(&h->mu);
  if (how == STOP_ABORT) h->abort = 1;
  else if (how == STOP_DRAIN) h->drain = 1;
  else h->closing = 1;
  wake_workers(h, 1);
  pthread_mutex_unlock(&h->mu);
  if (h->hasher_started) pthread_join(h->hasher, NULL);
  if (h->writer_started) pthread_join(h->writer, NULL);
  h->started = h->writer_started = h->hasher_started = 0;
  free(h->ring);
  h->ring = NULL;
  if (h->prefix_fd >= 0) { close(h->prefix_fd); h->prefix_fd = -1; }
  if (h->dfd >= 0) { close(h->dfd); h->dfd = -1; }
  return h->err;
}

/* Drops the digest state: the worker (if any) is abandoned and the context starts over. */
static void hash_reset(Transfer *t) {
  hash_stop(&t->hash, STOP_ABORT);
  t->hash.writes = 0;
  EVP_DigestInit_ex(t->ctx, EVP_sha256(), NULL);
}

/* The state file ------------------------------------------------------------------------------ */

typedef struct {
  char *url, *etag, *last_modified;
  int64_t total;
  int64_t done;               /* contiguous bytes from 0; -1 when no range starts at 0 */
} SavedState;

static void saved_free(SavedState *s) {
  free(s->url); free(s->etag); free(s->last_modified);
  memset(s, 0, sizeof *s);
}

/* Reads a state file: 0, or -1 when it cannot be read or is not one, -2 when there is none. */
static int read_state(const char *path, SavedState *s) {
  memset(s, 0, sizeof *s);
  s->total = -1;
  s->done = -1;
  FILE *f = fopen(path, "re");
  if (!f) return errno == ENOENT ? -2 : -1; /* -2: there is none */
  char line[16384];
  int first = 1, good = 0;
  while (fgets(line, sizeof line, f)) {
    size_t n = strlen(line);
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = '\0';
    if (first) { good = strcmp(line, STATE_MAGIC) == 0; first = 0; if (!good) break; continue; }
    char *sp = strchr(line, ' ');
    if (!sp) continue;
    *sp = '\0';
    const char *key = line, *val = sp + 1;
    if (strcmp(key, "url") == 0) replace(&s->url, val);
    else if (strcmp(key, "etag") == 0) replace(&s->etag, val);
    else if (strcmp(key, "last-modified") == 0) replace(&s->last_modified, val);
    else if (strcmp(key, "total") == 0) s->total = parse_size(val);
    else if (strcmp(key, "range") == 0) {
      unsigned long long start, done;
      char end[32];
      if (sscanf(val, "%llu %31s %llu", &start, end, &done) == 3 && start == 0 && done <= INT64_MAX)
        s->done = (int64_t)done;
    }
  }
  fclose(f);
  if (!good) { saved_free(s); return -1; }
  return 0;
}

/* Writes and hashes a small body's pending bytes here. Once the body passes INLINE_HASH_LIMIT the
 * worker takes over: from then on it writes and hashes what arrives. */
static CURLM *wake_of(Transfer *t) { return t->session ? t->session->multi : NULL; }
static size_t ring_size_of(const Transfer *t) { return t->ranged ? RING_SIZE_RANGED : RING_SIZE; }
/* Where the transfer's byte 0 goes in the file: a range written in place starts at its offset. */
static uint64_t file_base_of(const Transfer *t) { return t->shared ? t->range_from : 0; }

/* A gather buffer: one a finished transfer gave back, or a new one. Reusing them spares a small
 * download the page faults of fresh memory (and malloc the trimming and regrowing of its heap). */
static char *take_wbuf(Session *s) {
  if (s && s->spare_count > 0) return s->spare_wbufs[--s->spare_count];
  return malloc(WBUF_SIZE);
}

static void give_back_wbuf(Session *s, Transfer *t) {
  if (!t->wbuf) return;
  if (s && s->spare_count < SPARE_WBUFS) s->spare_wbufs[s->spare_count++] = t->wbuf;
  else free(t->wbuf);
  t->wbuf = NULL;
}

static int flush_writes(Transfer *t) {
  if (t->wlen == 0) return 0;
  size_t n = t->wlen;
  int err = mg_write_all(t->fd, t->wbuf, n, file_base_of(t) + t->offset - n);
  if (err) return err; /* wlen stays: on_disk() does not count what never reached the file */
  t->wlen = 0;
  if (!t->shared) EVP_DigestUpdate(t->ctx, t->wbuf, n);
  t->body_hashed += n;
  if (!t->hash.started && !t->no_worker && t->body_hashed > INLINE_HASH_LIMIT) {
    if (hash_start(&t->hash, ring_size_of(t), wake_of(t), t->shared ? NULL : t->ctx, -1, 0, t->fd, t->partial,
                   file_base_of(t) + t->offset) == 0) {
      free(t->wbuf); /* from here on the worker's ring takes the bytes */
      t->wbuf = NULL;
    } else {
      t->no_worker = 1; /* no thread to be had: the body stays on this one */
    }
  }
  return 0;
}

/* Body bytes safely in the file: what a state checkpoint may claim. */
static uint64_t on_disk(Transfer *t) {
  if (!t->hash.writes) return t->offset - t->wlen;
  pthread_mutex_lock(&t->hash.mu);
  uint64_t n = t->hash.file_base + t->hash.written - file_base_of(t);
  pthread_mutex_unlock(&t->hash.mu);
  return n;
}

/* Rewrites the state atomically (temp + rename); the data it records was written before. Below STATE_MIN no state file is started unless forced (a failed attempt):
 * re-fetching a few hundred KB costs less than the file-system work on every small file. */
static int write_state(Transfer *t, int force) {
  /* The state never claims bytes that are not written yet. */
  int ferr = flush_writes(t);
  if (ferr) return ferr;
  if (!t->state_path) return 0; /* a range in place: its caller keeps the state */
  if (!force && !t->state_on_disk && on_disk(t) < STATE_MIN) {
    t->state_off = t->offset;
    t->state_at = mg_now();
    return 0;
  }
  size_t cap = strlen(t->url) + (t->etag ? strlen(t->etag) : 0) +
               (t->last_modified ? strlen(t->last_modified) : 0) + 256;
  char *text = malloc(cap);
  if (!text) return ENOMEM;
  char total[32];
  if (t->total >= 0) snprintf(total, sizeof total, "%lld", (long long)t->total);
  else strcpy(total, "-");
  int n = snprintf(text, cap, STATE_MAGIC "\nurl %s\n%s%s%s%s%s%stotal %s\nrange 0 %s %llu\n", t->url,
                   t->etag ? "etag " : "", t->etag ? t->etag : "", t->etag ? "\n" : "",
                   t->last_modified ? "last-modified " : "", t->last_modified ? t->last_modified : "",
                   t->last_modified ? "\n" : "", total, total, (unsigned long long)on_disk(t));
  size_t plen = strlen(t->state_path);
  char *tmp = malloc(plen + 8);
  if (!tmp) { free(text); return ENOMEM; }
  memcpy(tmp, t->state_path, plen);
  memcpy(tmp + plen, ".tmp", 5);
  int err = 0;
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) err = errno;
  else {
    err = mg_write_all(fd, text, (size_t)n, 0);
    if (close(fd) != 0 && !err) err = errno;
    if (!err && rename(tmp, t->state_path) != 0) err = errno;
    if (err) unlink(tmp);
  }
  free(tmp);
  free(text);
  if (!err) {
    t->state_on_disk = 1;
    t->state_off = t->offset;
    t->state_at = mg_now();
  }
  return err;
}

static void drop_partial(Transfer *t) {
  if (t->shared) return; /* a range in place never removes the file it shares (nor forgets unwritten bytes) */
  t->wlen = 0;
  if (!t->partial) return;
  unlink(t->partial);
  unlink(t->state_path);
  t->state_dirty = 0;
  t->state_on_disk = 0;
}

/* Failures ------------------------------------------------------------------------------------ */

/* Records a failure decided by us; the first one wins. */
static void fail(Transfer *t, const char *code, int retryable, const char *fmt, ...)
  __attribute__((format(printf, 4, 5)));
static void fail(Transfer *t, const char *code, int retryable, const char *fmt, ...) {
  if (t->fail_code) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(t->fail_msg, sizeof t->fail_msg, fmt, ap);
  va_end(ap);
  t->fail_code = code;
  t->fail_retryable = retryable;
}

static void fail_host(Transfer *t, const char *code, int retryable, const char *what) {
  char host[256];
  host_of(t->cur_url ? t->cur_url : t->url, host, sizeof host);
  fail(t, code, retryable, "%s: %s", host, what);
}

/* Responses ----------------------------------------------------------------------------------- */

/* Parses "bytes a-b/c" (c may be "*"). */
static int parse_content_range(const char *v, uint64_t *start, uint64_t *end, int64_t *total) {
  unsigned long long a, b;
  char rest[32];
  if (!v || sscanf(v, "bytes %llu-%llu/%31s", &a, &b, rest) != 3) return -1;
  *start = a;
  *end = b;
  *total = strcmp(rest, "*") == 0 ? -1 : parse_size(rest);
  return 0;
}

/* A ranged transfer's response must be exactly the bytes asked for, of the version asked for:
 * anything else (a whole body, another range, another version) refuses the split. */
static int accept_range(Transfer *t, const char *etag, const char *lm) {
  uint64_t start = 0, end = 0;
  int64_t whole = -1;
  uint64_t want = t->range_from + t->kept;
  int ok = t->status == 206 && parse_content_range(hdr_get(&t->hdr, "content-range"), &start, &end, &whole) == 0 &&
           start == want && end == t->range_to && (t->whole_size < 0 || whole == t->whole_size);
  const char *v = t->validator;
  if (ok && v) ok = v[0] == '"' ? (etag && strcmp(etag, v) == 0) : (!lm || strcmp(lm, v) == 0);
  if (!ok) {
    char what[160];
    snprintf(what, sizeof what, "the server did not send bytes %llu-%llu of the same file (HTTP %ld)",
             (unsigned long long)want, (unsigned long long)t->range_to, t->status);
    t->range_refused = 1;
    fail_host(t, "ENET", 0, what);
    return 0;
  }
  t->total = (int64_t)(t->range_to - t->range_from + 1);
  return 1;
}

/* The file system (device) of path, or of its nearest existing parent. Returns 0 or an errno. */
static int device_of(const char *path, dev_t *dev) {
  char buf[PATH_MAX];
  if (strlen(path) >= sizeof buf) return ENAMETOOLONG;
  strcpy(buf, path);
  struct stat st;
  for (int depth = 0; stat(buf, &st) != 0; depth++) {
    if (errno != ENOENT || depth > 64 || strcmp(buf, "/") == 0 || strcmp(buf, ".") == 0) return errno ? errno : ENOENT;
    char up[PATH_MAX];
    mg_parent_of(buf, up, sizeof up);
    strcpy(buf, up);
  }
  *dev = st.st_dev;
  return 0;
}

/* What the session's running downloads to file system dev (other than skip) still have to write
 * (each one's factor × its total less what it has), and how many they are. */
static double promised_on(const Session *s, const Transfer *skip, dev_t dev, int *count) {
  double sum = 0;
  *count = 0;
  if (!s) return 0;
  for (int k = 0; k < RESERVATIONS; k++) {
    if (!s->reserved[k].live || s->reserved[k].dev != dev) continue;
    /* What the split still owes: its reservation less what its running ranges have written since. */
    double owed = s->reserved[k].bytes;
    for (const Transfer *o = s->first; o; o = o->next) {
      if (o->reservation != k + 1 || o->reservation_settled) continue;
      uint64_t n = on_disk((Transfer *)o);
      if (n > o->range_done) owed -= (double)(n - o->range_done);
    }
    if (owed <= 0) continue;
    sum += owed;
    (*count)++;
  }
  for (const Transfer *o = s->first; o; o = o->next) {
    if (o == skip || o->state != ST_RUNNING || !o->space_checked || o->space_dev != dev || o->reservation) continue;
    if (o->resp != RESP_BODY || o->total < 0 || (uint64_t)o->total <= o->offset) continue;
    sum += o->space_factor * (double)((uint64_t)o->total - o->offset);
    (*count)++;
  }
  return sum;
}

/* The storage check, before a single body byte is written: need bytes (factor × what is still to
 * come) against the free space of where's file system, counting what the session's other downloads
 * to it still have to write. Returns 1 and says why in msg when they do not fit. *dev and *checked
 * say which file system it was (for the other downloads' checks while this one runs). */
static int space_refused(const Session *s, const Transfer *self, const char *where, double need, dev_t *dev,
                         int *checked, char *msg, size_t msgsz) {
  uint64_t avail = 0;
  *checked = device_of(where, dev) == 0;
  int others = 0;
  double promised = *checked ? promised_on(s, self, *dev, &others) : 0;
  if (mg_free_space(where, &avail) != 0 || need + promised <= (double)avail) return 0;
  char needs[32], frees[32], owed[32];
  human((uint64_t)need, needs, sizeof needs);
  human(avail, frees, sizeof frees);
  human((uint64_t)promised, owed, sizeof owed);
  if (others > 0)
    snprintf(msg, msgsz, "need %s, %s free on %s, of which %s is still to come for %d other download%s", needs,
             frees, where, owed, others, others == 1 ? "" : "s");
  else
    snprintf(msg, msgsz, "need %s, %s free on %s", needs, frees, where);
  return 1;
}

/* Where a download's space is checked: space_path, else the partial file's folder. */
static const char *space_where(const char *space_path, const char *partial, char *folder, size_t foldersz) {
  if (space_path) return space_path;
  mg_parent_of(partial, folder, foldersz);
  return folder;
}

/* A 2xx of another status than 206 is judged by its Content-Range (as wget does) when that is a
 * valid range of part of the file and the body announced is as long: a proxy that turns a 206 into
 * a 200 still sends that part of the file, which taken as the whole file would be installed as the
 * model. A body of no announced length, or a range of the whole file, is a whole file's 200. */
static int range_in_2xx(const Headers *h, int64_t clen) {
  uint64_t start = 0, end = 0;
  int64_t total = -1;
  if (clen < 0 || parse_content_range(hdr_get(h, "content-range"), &start, &end, &total) != 0) return 0;
  if (end < start || (total >= 0 && end >= (uint64_t)total)) return 0;
  if (start == 0 && total >= 0 && end + 1 == (uint64_t)total) return 0;
  return (uint64_t)clen == end - start + 1;
}

/* A final 2xx response for a partial file: choose append or restart, check space, open the file. */
static int accept_file_response(Transfer *t, int64_t clen) {
  const Headers *h = &t->hdr;
  const char *etag = hdr_get(h, "etag"), *lm = hdr_get(h, "last-modified");
  int append = 0;
  char what[400];
  int partial_body = t->status == 206 || range_in_2xx(h, clen);
  if (t->ranged) {
    if (!accept_range(t, etag, lm)) return 0;
    append = t->kept > 0;
  } else if (partial_body) {
    uint64_t start = 0, end = 0;
    int64_t total = -1;
    if (parse_content_range(hdr_get(h, "content-range"), &start, &end, &total) != 0 || start != t->kept) {
      snprintf(what, sizeof what, "server sent another range than bytes=%llu- (starting over)",
               (unsigned long long)t->kept);
      fail_host(t, "ENET", 1, what);
      t->fail_drop = 1;
      return 0;
    }
    int changed = (t->etag && etag && strcmp(t->etag, etag) != 0) ||
                  (!t->etag && t->last_modified && lm && strcmp(t->last_modified, lm) != 0);
    if (changed) {
      fail_host(t, "ENET", 1, "the file changed on the server (new validator); starting over");
      t->fail_drop = 1;
      return 0;
    }
    /* The same validator for a file of another size (a server that reuses its ETag): another file,
     * whose tail would be spliced onto the kept bytes of the one before. */
    if (t->total >= 0 && total >= 0 && total != t->total) {
      snprintf(what, sizeof what, "the file changed on the server (%lld bytes now, %lld before); starting over",
               (long long)total, (long long)t->total);
      fail_host(t, "ENET", 1, what);
      t->fail_drop = 1;
      return 0;
    }
    t->total = total >= 0 ? total : (clen >= 0 ? (int64_t)t->kept + clen : -1);
    append = t->kept > 0; /* a 206 for bytes=0- is a whole body */
  } else {
    t->total = clen;
  }
  /* Space: factor × what is still to come, before a single byte is written — counting what the
   * session's other downloads to the same file system still have to write. */
  int64_t expect = t->total >= 0 ? t->total : t->expected_size;
  uint64_t base = append ? t->kept : 0;
  /* A segment of a split: the whole file's space was checked, and is held, before any range began. */
  if (!t->reservation && expect >= 0 && (uint64_t)expect > base) {
    char folder[PATH_MAX];
    const char *where = space_where(t->space_path, t->partial, folder, sizeof folder);
    double need = t->space_factor * (double)((uint64_t)expect - base);
    char why[sizeof t->fail_msg];
    if (space_refused(t->session, t, where, need, &t->space_dev, &t->space_checked, why, sizeof why)) {
      fail(t, "ESPACE", 0, "%s", why);
      return 0;
    }
  }
  if (!append) {
    if (t->kept > 0) t->restart = 1;
    hash_reset(t);
    t->kept = 0;
    replace(&t->etag, is_strong_etag(etag) ? etag : NULL);
    replace(&t->last_modified, lm);
    if (t->fd >= 0) { close(t->fd); t->fd = -1; }
    int err = make_parent(t->partial);
    if (!err) {
      /* Emptied by ftruncate only when it holds bytes: on ext4, truncating a file to 0 (even an
       * empty one, as O_TRUNC does) makes its close start write-back at once, on this thread. */
      struct stat st;
      t->fd = open(t->partial, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
      if (t->fd < 0) err = errno;
      else if (!t->shared && (fstat(t->fd, &st) != 0 || (st.st_size > 0 && ftruncate(t->fd, 0) != 0))) err = errno;
    }
    if (err) {
      fail(t, mg_errno_code(err), 0, "cannot write %s: %s", t->partial, strerror(err));
      return 0;
    }
    t->offset = 0;
  } else {
    if (is_strong_etag(etag)) replace(&t->etag, etag);
    if (lm && !t->last_modified) replace(&t->last_modified, lm);
  }
  t->resumed_from = t->kept;
  t->state_dirty = 1;
  write_state(t, 0);
  return 1;
}

/* Called at the blank line that ends a response's headers. Returns 0 to abort the transfer. */
static int on_headers_done(Transfer *t) {
  const Headers *h = &t->hdr;
  if (t->status < 200) { t->resp = RESP_INFO; return 1; }
  const char *le = hdr_get(h, "x-linked-etag"), *ls = hdr_get(h, "x-linked-size");
  if (le) {
    const char *s = le;
    if (s[0] == 'W' && s[1] == '/') s += 2;
    size_t n = strlen(s);
    if (n >= 2 && s[0] == '"' && s[n - 1] == '"') { s++; n -= 2; }
    free(t->linked_etag);
    t->linked_etag = strndup(s, n);
  }
  if (ls) t->linked_size = parse_size(ls);
  int redirect = t->status == 301 || t->status == 302 || t->status == 303 || t->status == 307 || t->status == 308;
  if (redirect && hdr_get(h, "location")) { t->resp = RESP_REDIRECT; return 1; }
  if (t->status >= 300) { t->resp = RESP_ERROR; return 1; }
  t->resp = RESP_BODY;
  if (t->head) return 1;
  int64_t announced;
  char why[128];
  if (!content_length_of(h, &announced, why, sizeof why)) {
    char what[200];
    snprintf(what, sizeof what, "%s: where the body ends cannot be told", why);
    fail_host(t, "ENET", 0, what);
    return 0;
  }
  if (t->memory) {
    int64_t clen = announced;
    t->total = clen;
    if (clen >= 0 && (uint64_t)clen > t->memory_max) {
      char cap[32], what[96];
      human(t->memory_max, cap, sizeof cap);
      snprintf(what, sizeof what, "response larger than %s", cap);
      fail_host(t, "ENET", 0, what);
      return 0;
    }
    return 1;
  }
  return accept_file_response(t, announced);
}

static size_t on_header(char *buf, size_t size, size_t nitems, void *ud) {
  Transfer *t = ud;
  size_t len = size * nitems;
  if (t->discard) return len;
  t->activity_at = mg_now();
  if (t->resp == RESP_BODY && t->body_bytes > 0) return len; /* trailers */
  if (len >= 5 && memcmp(buf, "HTTP/", 5) == 0) {
    const char *sp = memchr(buf, ' ', len);
    t->status = sp ? strtol(sp + 1, NULL, 10) : 0;
    t->resp = RESP_NONE;
    hdr_reset(&t->hdr);
    return len;
  }
  if (len <= 2 && (buf[0] == '\r' || buf[0] == '\n')) return on_headers_done(t) ? len : 0;
  const char *colon = memchr(buf, ':', len);
  if (!colon) return len;
  size_t nlen = (size_t)(colon - buf);
  const char *v = colon + 1, *end = buf + len;
  while (v < end && (*v == ' ' || *v == '\t')) v++;
  while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' ' || end[-1] == '\t')) end--;
  hdr_add(&t->hdr, buf, nlen, v, (size_t)(end - v));
  return len;
}

/* Body bytes ---------------------------------------------------------------------------------- */

static void checkpoint(Transfer *t, double now) {
  if (t->offset - t->state_off >= STATE_EVERY_BYTES || now - t->state_at >= STATE_EVERY_SECONDS)
    write_state(t, 0);
}

static size_t on_write(char *p, size_t size, size_t nmemb, void *ud) {
  Transfer *t = ud;
  size_t len = size * nmemb;
  if (t->discard) return len;
  if (t->fail_code) return 0;
  t->activity_at = mg_now();
  if (t->resp != RESP_BODY) {
    /* An error's body: kept for memory transfers (API errors explain themselves), else dropped. */
    if (t->resp == RESP_ERROR && t->memory && t->body_len + len <= t->memory_max) goto keep;
    return len;
  }
  if (t->head) return len;
  /* A full ring means the worker is busy (re-hashing a long kept prefix): pause this transfer
   * rather than block the callback, so every other transfer and Ctrl-C go on meanwhile. */
  if (!t->memory && t->hash.started && t->hash.writes && !hash_fits_or_wake(&t->hash, len)) {
    t->ring_paused = 1;
    t->curl_paused = 1;
    return CURL_WRITEFUNC_PAUSE;
  }
  Session *s = t->session;
  /* Under a rate cap a transfer takes only its share of the bucket: the first to read its socket
   * would otherwise drain the bucket at every refill, and the others crawl. */
  if (t->user_paused || (s && s->limit_rate > 0 && (s->tokens <= 0 || t->rate_share <= 0) && !t->rate_ticket)) {
    if (!t->user_paused) t->rate_paused = 1;
    t->curl_paused = 1;
    return CURL_WRITEFUNC_PAUSE;
  }
  if (s && s->limit_rate > 0) {
    t->rate_ticket = 0;
    t->rate_share -= (double)len;
    s->tokens -= (double)len;
  }
  if (t->memory) {
    if (t->body_len + len > t->memory_max) {
      char cap[32], what[96];
      human(t->memory_max, cap, sizeof cap);
      snprintf(what, sizeof what, "response larger than %s", cap);
      fail_host(t, "ENET", 0, what);
      return 0;
    }
  keep:
    if (t->body_len + len > t->body_cap) {
      size_t cap = t->body_cap ? t->body_cap : 16384;
      while (cap < t->body_len + len) cap *= 2;
      char *grown = realloc(t->body, cap);
      if (!grown) { fail(t, "EIO", 0, "out of memory"); return 0; }
      t->body = grown;
      t->body_cap = cap;
    }
    memcpy(t->body + t->body_len, p, len);
    t->body_len += len;
    if (t->resp == RESP_BODY) {
      EVP_DigestUpdate(t->ctx, p, len);
      t->offset += len;
      t->body_bytes += len;
    }
    return len;
  }
  /* A TLS record or an HTTP/2 frame is only ~16 KB: a small body is gathered into WBUF_SIZE writes;
   * a large one goes to the worker's ring. */
  int err = 0;
  if (!t->hash.writes) {
    if (!t->wbuf) t->wbuf = take_wbuf(t->session);
    if (t->wbuf && t->wlen + len > WBUF_SIZE) err = flush_writes(t);
  }
  if (!err) {
    if (t->hash.started && t->hash.writes) {
      err = hash_put(&t->hash, p, len);
    } else if (t->wbuf && len <= WBUF_SIZE) {
      memcpy(t->wbuf + t->wlen, p, len);
      t->wlen += len;
    } else {
      err = mg_write_all(t->fd, p, len, file_base_of(t) + t->offset);
      if (!err && !t->shared) EVP_DigestUpdate(t->ctx, p, len);
    }
  }
  if (err) {
    char shown[64];
    human(t->offset, shown, sizeof shown);
    fail(t, mg_errno_code(err), 0, "cannot write %s after %s: %s", t->partial, shown, strerror(err));
    return 0;
  }
  t->offset += len;
  t->body_bytes += len;
  checkpoint(t, t->activity_at);
  return len;
}

/* Starting, following, finishing -------------------------------------------------------------- */

static void finish(Session *s, Transfer *t);

/* Builds the request headers for the current hop: the caller's, the credential only when this
 * hop's origin (scheme, host and port) is the credential's, Range/If-Range when resuming. */
static int set_request_headers(Transfer *t) {
  struct curl_slist *list = NULL, *n;
  for (n = t->user_headers; n; n = n->next)
    if (!(list = curl_slist_append(list, n->data))) return -1;
  if (t->auth_header) {
    UrlParts p;
    if (url_parts(t->cur_url, &p) == 0 && strcmp(p.scheme, t->auth_scheme) == 0 &&
        strcasecmp(p.host, t->auth_host) == 0 && p.port == t->auth_port)
      if (!(list = curl_slist_append(list, t->auth_header))) return -1;
  }
  if (t->ranged || t->kept > 0) {
    char line[80];
    if (t->ranged)
      snprintf(line, sizeof line, "Range: bytes=%llu-%llu", (unsigned long long)(t->range_from + t->kept),
               (unsigned long long)t->range_to);
    else
      snprintf(line, sizeof line, "Range: bytes=%llu-", (unsigned long long)t->kept);
    if (!(list = curl_slist_append(list, line))) return -1;
    const char *validator = t->ranged && t->validator ? t->validator : t->etag ? t->etag : t->last_modified;
    if (validator) { /* a range without one is asked for as it is */
      size_t vlen = strlen(validator) + 16;
      char *ir = malloc(vlen);
      if (!ir) { curl_slist_free_all(list); return -1; }
      snprintf(ir, vlen, "If-Range: %s", validator);
      list = curl_slist_append(list, ir);
      free(ir);
      if (!list) return -1;
    }
  }
  curl_easy_setopt(t->easy, CURLOPT_HTTPHEADER, list);
  curl_slist_free_all(t->req_headers);
  t->req_headers = list;
  return 0;
}

/* A range in place: the file is opened as it is (other ranges are in it), and what the caller says
 * is done of the range is kept. */
static int prepare_shared(Transfer *t) {
  int err = make_parent(t->partial);
  if (!err) {
    t->fd = open(t->partial, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (t->fd < 0) err = errno;
  }
  if (err) {
    fail(t, mg_errno_code(err), 0, "cannot write %s: %s", t->partial, strerror(err));
    return -1;
  }
  t->kept = t->offset = t->range_done;
  return 0;
}

/* Reads the state and keeps what it vouches for: the prefix hashes on the worker meanwhile. */
static int prepare_resume(Transfer *t) {
  if (t->shared) return prepare_shared(t);
  SavedState ss;
  if (!t->resume) {
    t->state_on_disk = access(t->state_path, F_OK) == 0;
    return 0;
  }
  int rs = read_state(t->state_path, &ss);
  t->state_on_disk = rs != -2;
  if (rs != 0) return 0;
  int usable = ss.url && strcmp(ss.url, t->url) == 0 && (is_strong_etag(ss.etag) || ss.last_modified) &&
               ss.done > 0;
  if (usable) {
    int fd = open(t->partial, O_RDWR | O_CLOEXEC);
    struct stat st;
    if (fd >= 0 && fstat(fd, &st) == 0) {
      uint64_t kept = (uint64_t)ss.done;
      if ((uint64_t)st.st_size < kept) kept = (uint64_t)st.st_size;
      if (ss.total >= 0 && kept > (uint64_t)ss.total) kept = 0;
      /* A prefix that claims to be the whole file is still checked with the server: ask again for
       * its last byte (with If-Range), so a changed file cannot pass as complete. */
      if (ss.total > 0 && kept == (uint64_t)ss.total) kept--;
      if (kept > 0 && ftruncate(fd, (off_t)kept) == 0) {
        t->fd = fd;
        t->kept = t->offset = kept;
        t->total = ss.total;
        replace(&t->etag, is_strong_etag(ss.etag) ? ss.etag : NULL);
        replace(&t->last_modified, ss.last_modified);
        int rfd = open(t->partial, O_RDONLY | O_CLOEXEC);
        if (rfd < 0 ||
            hash_start(&t->hash, ring_size_of(t), wake_of(t), t->ctx, rfd, kept, t->fd, t->partial, kept) != 0) {
          /* No worker: hash the prefix here. */
          int err = rfd < 0 ? errno : mg_sha256_fd(rfd, kept, t->ctx, NULL);
          if (rfd >= 0) close(rfd);
          if (err) {
            saved_free(&ss);
            fail(t, mg_errno_code(err), 0, "cannot read %s: %s", t->partial, strerror(err));
            return -1;
          }
        }
        fd = -1;
      }
    }
    if (fd >= 0) close(fd);
  }
  saved_free(&ss);
  return 0;
}

/* Speed is measured from now on: at a start, and at a resume (the paused seconds would drag the
 * speed of the bytes flowing again down for a whole window). */
static void restart_speed(Transfer *t, double now) {
  t->samples[0].at = now;
  t->samples[0].bytes = t->body_bytes;
  t->nsamples = 1;
  t->sample_pos = 1;
}

/* A plain http:// request (to loopback: the policy allows no other) never goes through a proxy:
 * http_proxy or ALL_PROXY would carry it in clear to the proxy's host, whose 127.0.0.1 is another
 * machine. An https:// one takes the proxies of the environment, as in curl. */
static void set_proxy(Transfer *t) {
  UrlParts p;
  int plain = url_parts(t->cur_url, &p) == 0 && strcmp(p.scheme, "http") == 0;
  curl_easy_setopt(t->easy, CURLOPT_PROXY, plain ? "" : NULL);
}

static int start_transfer(Session *s, Transfer *t) {
  t->state = ST_RUNNING;
  t->started_at = t->activity_at = mg_now();
  restart_speed(t, t->started_at);
  if (t->partial && !t->head && prepare_resume(t) != 0) return -1;
  CURL *e = t->easy = curl_easy_init();
  if (!e) { fail(t, "EIO", 0, "libcurl: cannot create a transfer"); return -1; }
  curl_easy_setopt(e, CURLOPT_URL, t->cur_url);
  curl_easy_setopt(e, CURLOPT_PRIVATE, t);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t->errbuf);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
  /* A segment gets a connection of its own (HTTP/1.1): streams multiplexed on one HTTP/2
   * connection would share the one window the split is there to get around. */
  curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)(t->ranged ? CURL_HTTP_VERSION_1_1 : CURL_HTTP_VERSION_2TLS));
  curl_easy_setopt(e, CURLOPT_PIPEWAIT, t->ranged ? 0L : 1L);
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
  curl_easy_setopt(e, CURLOPT_SUPPRESS_CONNECT_HEADERS, 1L);
  curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
  /* Under a low cap, smaller deliveries keep the pauses short (servers drop idle connections). */
  long buffer = BUFFER_SIZE;
  if (s->limit_rate > 0 && s->limit_rate / 4 < (double)buffer)
    buffer = s->limit_rate / 4 < 16384 ? 16384 : (long)(s->limit_rate / 4);
  curl_easy_setopt(e, CURLOPT_BUFFERSIZE, buffer);
  curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, t->stall_timeout);
  if (s->connect_timeout > 0) curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT, s->connect_timeout);
  if (s->user_agent) curl_easy_setopt(e, CURLOPT_USERAGENT, s->user_agent);
  if (s->cacert) curl_easy_setopt(e, CURLOPT_CAINFO, s->cacert);
  if (s->capath) curl_easy_setopt(e, CURLOPT_CAPATH, s->capath);
  if (t->head) curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
  set_proxy(t);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, t);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, t);
  if (set_request_headers(t) != 0) { fail(t, "EIO", 0, "out of memory"); return -1; }
  if (t->user_paused) {
    curl_easy_pause(e, CURLPAUSE_ALL);
    t->curl_paused = 1;
  }
  if (curl_multi_add_handle(s->multi, e) != CURLM_OK) { fail(t, "EIO", 0, "libcurl: cannot start a transfer"); return -1; }
  t->in_multi = 1;
  s->running++;
  return 0;
}

/* Follows a redirect hop ourselves: policy and credential are decided per hop. 1 = following. */
static int follow(Session *s, Transfer *t) {
  char *loc = NULL;
  curl_easy_getinfo(t->easy, CURLINFO_REDIRECT_URL, &loc);
  if (!loc) { fail_host(t, "ENET", 0, "redirect without a usable Location"); return 0; }
  if (++t->redirects > s->max_redirects) {
    char what[64];
    snprintf(what, sizeof what, "more than %ld redirects", s->max_redirects);
    fail_host(t, "ENET", 0, what);
    return 0;
  }
  char why[1200];
  if (policy_refuses(loc, why, sizeof why)) {
    UrlParts from;
    fail(t, "EPOLICY", 0, "redirect from %s %s", url_parts(t->cur_url, &from) == 0 ? from.shown : "?", why);
    return 0;
  }
  char *next = strdup(loc);
  if (!next) { fail(t, "EIO", 0, "out of memory"); return 0; }
  curl_multi_remove_handle(s->multi, t->easy);
  free(t->cur_url);
  t->cur_url = next;
  curl_easy_setopt(t->easy, CURLOPT_URL, t->cur_url);
  set_proxy(t);
  t->resp = RESP_NONE;
  t->status = 0;
  hdr_reset(&t->hdr);
  if (set_request_headers(t) != 0 || curl_multi_add_handle(s->multi, t->easy) != CURLM_OK) {
    t->in_multi = 0;
    s->running--;
    fail(t, "EIO", 0, "libcurl: cannot follow a redirect");
    return 0;
  }
  return 1;
}

static void describe_cut(Transfer *t, char *what, size_t n) {
  char got[32], all[32];
  human(t->offset, got, sizeof got);
  if (t->total >= 0) {
    human((uint64_t)t->total, all, sizeof all);
    snprintf(what, n, "connection cut after %s of %s", got, all);
  } else {
    snprintf(what, n, "connection cut after %s", got);
  }
}

/* Sets the result fields from libcurl's code when we did not decide the failure ourselves. */
static void classify_curl(Transfer *t, CURLcode rc) {
  char what[400];
  int retryable = 1;
  const char *detail = t->errbuf[0] ? t->errbuf : curl_easy_strerror(rc);
  switch (rc) {
  case CURLE_PARTIAL_FILE: case CURLE_RECV_ERROR: case CURLE_SEND_ERROR: case CURLE_GOT_NOTHING:
  case CURLE_HTTP2: case CURLE_HTTP2_STREAM:
    if (t->resp == RESP_BODY) describe_cut(t, what, sizeof what);
    else snprintf(what, sizeof what, "connection closed before a response (%s)", detail);
    break;
  case CURLE_OPERATION_TIMEDOUT: {
    curl_off_t connected = 0;
    curl_easy_getinfo(t->easy, CURLINFO_CONNECT_TIME_T, &connected);
    if (t->status > 0) snprintf(what, sizeof what, "no data for %ld s", t->stall_timeout);
    else if (connected > 0) snprintf(what, sizeof what, "no response for %ld s", t->stall_timeout);
    else snprintf(what, sizeof what, "connection timed out (%s)", detail);
    break;
  }
  case CURLE_PEER_FAILED_VERIFICATION: case CURLE_SSL_CACERT_BADFILE: case CURLE_SSL_CERTPROBLEM:
  case CURLE_SSL_ISSUER_ERROR: case CURLE_SSL_PINNEDPUBKEYNOTMATCH: case CURLE_SSL_CRL_BADFILE:
    snprintf(what, sizeof what, "certificate verify failed (%s)", detail);
    retryable = 0;
    break;
  case CURLE_COULDNT_RESOLVE_HOST:
    snprintf(what, sizeof what, "cannot resolve host (%s)", detail);
    break;
  case CURLE_COULDNT_CONNECT:
    snprintf(what, sizeof what, "cannot connect (%s)", detail);
    break;
  case CURLE_URL_MALFORMAT: case CURLE_UNSUPPORTED_PROTOCOL: case CURLE_OUT_OF_MEMORY:
    /* libcurl refuses a response header over 100 KB as "out of memory": the server's doing. */
    if (rc == CURLE_OUT_OF_MEMORY && t->status > 0 && t->resp == RESP_NONE)
      snprintf(what, sizeof what, "a response header too large to read (%s)", detail);
    else
      snprintf(what, sizeof what, "%s", detail);
    retryable = 0;
    break;
  default:
    snprintf(what, sizeof what, "%s", detail);
    break;
  }
  fail_host(t, "ENET", retryable, what);
}

static void classify_status(Transfer *t) {
  long st = t->status;
  char what[96];
  const char *code = "ENET";
  int retryable = st == 408 || st == 429 || st >= 500 || st == 416;
  if (st == 401 || st == 403) code = "EAUTH";
  if (st == 401) snprintf(what, sizeof what, "HTTP 401 (authentication required)");
  else if (st == 403) snprintf(what, sizeof what, "HTTP 403 (access refused)");
  else if (st == 416) snprintf(what, sizeof what, "HTTP 416 (range not satisfiable; starting over)");
  else snprintf(what, sizeof what, "HTTP %ld", st);
  if (st == 416) { t->fail_drop = 1; t->restart = t->kept > 0; }
  if (st == 416 && t->ranged) { t->range_refused = 1; retryable = 0; }
  fail_host(t, code, retryable, what);
}

static double retry_after_of(const Headers *h) {
  const char *v = hdr_get(h, "retry-after");
  if (!v) return -1;
  if (*v >= '0' && *v <= '9') return (double)strtoll(v, NULL, 10);
  time_t when = curl_getdate(v, NULL);
  if (when < 0) return -1;
  double d = difftime(when, time(NULL));
  return d > 0 ? d : 0;
}

static void detach_easy(Session *s, Transfer *t) {
  if (t->easy && t->curl_paused) {
    /* libcurl 7.88 leaks what it buffered for a paused HTTP/2 stream that is removed (curl issue
     * 10971): unpause first, so it flushes (into the discarding callbacks) and frees it. */
    t->discard = 1;
    t->curl_paused = 0;
    curl_easy_pause(t->easy, CURLPAUSE_CONT);
  }
  if (t->easy) {
    if (t->in_multi && s) { curl_multi_remove_handle(s->multi, t->easy); s->running--; }
    t->in_multi = 0;
    curl_easy_cleanup(t->easy);
    t->easy = NULL;
  }
  curl_slist_free_all(t->req_headers);
  t->req_headers = NULL;
}

/* A small body's last bytes (all of it, for most) are written and hashed on a pool worker, so that
 * the event loop goes on with the other transfers meanwhile: a run of small files costs this thread
 * neither their writes nor their SHA-256. */
static void write_tail(void *arg) {
  Transfer *t = arg;
  size_t n = t->wlen;
  int err = mg_write_all(t->fd, t->wbuf, n, file_base_of(t) + t->offset - n);
  if (!err && t->writeback) start_writeback(t->fd, 0, 0); /* the whole small file, on its way to the disk */
  if (!err) EVP_DigestUpdate(t->ctx, t->wbuf, n);
  t->tail_err = err;
  __atomic_store_n(&t->tail_done, 1, __ATOMIC_RELEASE);
}

static void finish_tail(Session *s, Transfer *t);

/* Hands the last bytes to a worker (ST_FINISHING); 0 when they are written here instead. */
static int finish_off_loop(Session *s, Transfer *t) {
  if (t->wlen == 0 || t->shared || t->hash.started || !t->wbuf) return 0;
  detach_easy(s, t); /* no callback runs from here on: the worker has the bytes to itself */
  t->tail_done = 0;
  t->tail_pending = 1;
  if (mg_jobs_call(write_tail, t) != 0) { t->tail_pending = 0; return 0; }
  t->state = ST_FINISHING;
  if (s) s->finishing++;
  return 1;
}

/* Takes back a tail from its worker (waiting for it if need be): its outcome joins the transfer's. */
static void collect_tail(Transfer *t) {
  if (!t->tail_pending) return;
  mg_jobs_wait_flag(&t->tail_done);
  t->tail_pending = 0;
  if (t->tail_err) {
    if (!t->fail_code)
      fail(t, mg_errno_code(t->tail_err), 0, "cannot write %s: %s", t->partial, strerror(t->tail_err));
    return; /* wlen stays: on_disk() does not count what never reached the file */
  }
  t->body_hashed += t->wlen;
  t->wlen = 0;
}

/* Ends an attempt: result fields, digest, fsync, state; the transfer joins the finished FIFO. */
static void finish(Session *s, Transfer *t) {
  if (t->state == ST_FINISHING) {
    /* Cancelled meanwhile: it ends now if its worker is done, else when reaped (the event loop does
     * not wait for a worker that may be busy hashing a big file). */
    if (__atomic_load_n(&t->tail_done, __ATOMIC_ACQUIRE)) finish_tail(s, t);
    return;
  }
  if (!t->fail_code && t->resp == RESP_BODY && !t->head && !t->memory && t->total >= 0 &&
      t->offset != (uint64_t)t->total) {
    char what[128], got[32], all[32];
    human(t->offset, got, sizeof got);
    human((uint64_t)t->total, all, sizeof all);
    snprintf(what, sizeof what, "body %s than announced (%s of %s)", t->offset < (uint64_t)t->total ? "shorter" : "longer",
             got, all);
    fail_host(t, "ENET", t->offset < (uint64_t)t->total, what);
  }
  if (!t->fail_code && t->resp != RESP_BODY) fail_host(t, "ENET", 1, "no response");
  if (!t->fail_code && t->partial && !t->head && t->fd >= 0) {
    if (finish_off_loop(s, t)) return;
    int werr = flush_writes(t);
    if (werr) fail(t, mg_errno_code(werr), 0, "cannot write %s: %s", t->partial, strerror(werr));
  }
  finish_tail(s, t);
}

/* The end of finish(), once every body byte is written: digest, fsync, state, the finished FIFO. */
static void finish_tail(Session *s, Transfer *t) {
  collect_tail(t);
  if (t->state == ST_FINISHING && s) s->finishing--;
  if (!t->fail_code && t->partial && !t->head) {
    int err = hash_stop(&t->hash, STOP_FINISH);
    if (err) fail(t, mg_errno_code(err), err != ENOSPC, "cannot write or re-read %s: %s", t->partial, strerror(err));
    else if (t->fd >= 0 && t->sync && mg_datasync(t->fd) != 0)
      fail(t, mg_errno_code(errno), 0, "cannot sync %s: %s", t->partial, strerror(errno));
  }
  t->ok = !t->fail_code;
  /* A range's attempt over (in or failed): what it wrote is no longer owed by its split's reservation. */
  if (t->reservation && !t->reservation_settled && s && t->reservation <= RESERVATIONS) {
    uint64_t n = on_disk(t);
    double written = n > t->range_done ? (double)(n - t->range_done) : 0;
    double *left = &s->reserved[t->reservation - 1].bytes;
    *left = *left > written ? *left - written : 0;
    t->reservation_settled = 1;
  }
  if (t->ok) {
    t->code = NULL;
    t->retryable = 0;
    t->message[0] = '\0';
    if (!t->head && !t->shared) {
      unsigned char digest[32];
      unsigned int dlen = 0;
      EVP_DigestFinal_ex(t->ctx, digest, &dlen);
      mg_hex(digest, 32, t->sha256);
    }
  } else {
    t->code = t->fail_code;
    t->retryable = t->fail_retryable;
    snprintf(t->message, sizeof t->message, "%s", t->fail_msg);
    /* What arrived before the failure is good for a resume: the worker writes it out first,
     * unless the kept data is dropped anyway. */
    flush_writes(t);
    hash_stop(&t->hash, t->fail_drop ? STOP_ABORT : STOP_DRAIN);
    if (t->fail_drop) {
      t->restart = t->restart || t->kept > 0 || t->offset > 0;
      drop_partial(t);
    }
  }
  t->retry_after = retry_after_of(&t->hdr);
  /* After a failure a resume is coming: keep whatever arrived, however little. */
  if (t->partial && t->state_dirty) write_state(t, !t->ok);
  if (t->fd >= 0) { close(t->fd); t->fd = -1; }
  give_back_wbuf(s, t);
  detach_easy(s, t);
  t->state = ST_DONE;
  t->done_next = NULL;
  if (s) {
    if (s->done_last) s->done_last->done_next = t;
    else s->done_first = t;
    s->done_last = t;
  }
}

/* Session driving ----------------------------------------------------------------------------- */

static void start_queued(Session *s) {
  /* Transfers whose last bytes wait for a worker count too, past jobs of them: a busy pool does not
   * let finished downloads pile up, each with its file and buffer. */
  for (Transfer *t = s->first; t && s->running < s->jobs && s->finishing < s->jobs; t = t->next) {
    if (t->state != ST_QUEUED || t->user_paused) continue;
    if (start_transfer(s, t) != 0) finish(s, t);
  }
}

static void refill(Session *s, double now) {
  if (s->limit_rate <= 0) return;
  double burst = s->limit_rate / 8;
  if (burst < 16384) burst = 16384;
  s->tokens += (now - s->token_at) * s->limit_rate;
  if (s->tokens > burst) s->tokens = burst;
  s->token_at = now;
  if (s->tokens <= 0) return;
  /* The bucket is shared out evenly among the transfers receiving: each takes at most its part
   * until the next refill (one that takes less leaves the rest to the next round). Every waiting
   * transfer gets to go; what they take beyond it is a debt (tokens below zero) that the next
   * refills repay, so the long-run rate stays the cap. */
  int receiving = 0;
  for (Transfer *t = s->first; t; t = t->next)
    if (t->state == ST_RUNNING && !t->user_paused && t->easy) receiving++;
  double share = receiving > 0 ? s->tokens / receiving : s->tokens;
  for (Transfer *t = s->first; t; t = t->next) {
    if (t->state != ST_RUNNING || t->user_paused || !t->easy) continue;
    t->rate_share = share;
    if (t->rate_paused) {
      t->rate_paused = 0;
      t->curl_paused = 0;
      t->rate_ticket = 1;
      t->activity_at = now;
      curl_easy_pause(t->easy, CURLPAUSE_CONT); /* may deliver (and pause again) right here */
    }
  }
}

/* Lets ring-paused transfers go on once their worker has made room (the worker wakes the poll
 * when it has). */
static void ring_resume(Session *s, double now) {
  for (Transfer *t = s->first; t; t = t->next) {
    if (t->state != ST_RUNNING || !t->ring_paused || !t->easy) continue;
    if (hash_room(&t->hash) < t->hash.size / 2) continue;
    t->ring_paused = 0;
    if (t->user_paused || t->rate_paused) continue;
    t->curl_paused = 0;
    t->activity_at = now;
    curl_easy_pause(t->easy, CURLPAUSE_CONT); /* may deliver (and pause again) right here */
  }
}

static int rate_waiting(Session *s) {
  for (Transfer *t = s->first; t; t = t->next)
    if (t->state == ST_RUNNING && t->rate_paused && !t->user_paused) return 1;
  return 0;
}

static void sample_speeds(Session *s, double now) {
  for (Transfer *t = s->first; t; t = t->next) {
    if (t->state != ST_RUNNING) continue;
    Sample *last = &t->samples[(t->sample_pos + SPEED_SAMPLES - 1) % SPEED_SAMPLES];
    if (now - last->at < SPEED_EVERY) continue;
    t->samples[t->sample_pos].at = now;
    t->samples[t->sample_pos].bytes = t->body_bytes;
    t->sample_pos = (t->sample_pos + 1) % SPEED_SAMPLES;
    if (t->nsamples < SPEED_SAMPLES) t->nsamples++;
  }
}

static void drain_messages(Session *s) {
  CURLMsg *m;
  int left;
  while ((m = curl_multi_info_read(s->multi, &left)) != NULL) {
    if (m->msg != CURLMSG_DONE) continue;
    CURL *e = m->easy_handle;
    CURLcode rc = m->data.result;
    Transfer *t = NULL;
    curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&t);
    if (!t) continue;
    if (!t->fail_code && rc == CURLE_OK && t->resp == RESP_REDIRECT && follow(s, t)) continue;
    if (!t->fail_code) {
      if (rc != CURLE_OK) classify_curl(t, rc);
      else if (t->resp == RESP_ERROR) classify_status(t);
    }
    finish(s, t);
  }
}

/* A running, unpaused transfer that received nothing for stall_timeout seconds ends here (libcurl's
 * low-speed check averages over a few seconds, so it only backs this one up). */
static void check_stalls(Session *s, double now) {
  for (Transfer *t = s->first; t; t = t->next) {
    if (t->state != ST_RUNNING || t->curl_paused || now - t->activity_at < (double)t->stall_timeout) continue;
    char what[64];
    snprintf(what, sizeof what, "no %s for %ld s", t->status > 0 ? "data" : "response", t->stall_timeout);
    fail_host(t, "ENET", 1, what);
    finish(s, t);
  }
}

/* Ends the attempts whose tails their workers have written. */
static void reap_tails(Session *s) {
  for (Transfer *t = s->first; t; t = t->next)
    if (t->state == ST_FINISHING && __atomic_load_n(&t->tail_done, __ATOMIC_ACQUIRE)) finish_tail(s, t);
}

static int active_count(Session *s) {
  int n = 0;
  for (Transfer *t = s->first; t; t = t->next)
    if (t->state != ST_DONE) n++;
  return n;
}

/* Lua: Session -------------------------------------------------------------------------------- */

static Session *checksession(lua_State *L, int idx) {
  Session *s = luaL_checkudata(L, idx, SESSION_MT);
  if (!s->multi) luaL_error(L, "attempt to use a closed session");
  return s;
}

static Transfer *totransfer(lua_State *L, int idx) {
  return luaL_checkudata(L, idx, TRANSFER_MT);
}

static Transfer *checktransfer(lua_State *L, int idx) {
  Transfer *t = totransfer(L, idx);
  if (t->closed) luaL_error(L, "attempt to use a closed transfer");
  return t;
}

/* Option readers: a wrong type is misuse and raises. */
static lua_Integer opt_integer(lua_State *L, int idx, const char *name, lua_Integer def) {
  lua_Integer v = def;
  if (lua_getfield(L, idx, name) != LUA_TNIL) {
    int isint;
    v = lua_tointegerx(L, -1, &isint);
    if (!isint) luaL_error(L, "option '%s': integer expected, got %s", name, luaL_typename(L, -1));
  }
  lua_pop(L, 1);
  return v;
}

static double opt_number(lua_State *L, int idx, const char *name, double def) {
  double v = def;
  if (lua_getfield(L, idx, name) != LUA_TNIL) {
    int isnum;
    v = (double)lua_tonumberx(L, -1, &isnum);
    if (!isnum) luaL_error(L, "option '%s': number expected, got %s", name, luaL_typename(L, -1));
  }
  lua_pop(L, 1);
  return v;
}

/* A string option as the table holds it (valid while the table does), or NULL. */
static const char *opt_borrowed(lua_State *L, int idx, const char *name) {
  int type = lua_getfield(L, idx, name);
  if (type != LUA_TNIL && type != LUA_TSTRING)
    luaL_error(L, "option '%s': string expected, got %s", name, luaL_typename(L, -1));
  const char *v = lua_tostring(L, -1);
  lua_pop(L, 1);
  return v;
}
/* A copy (malloc) of a string option, or NULL. */
static char *opt_string(lua_State *L, int idx, const char *name) {
  const char *v = opt_borrowed(L, idx, name);
  char *copy = v ? strdup(v) : NULL;
  if (v && !copy) luaL_error(L, "out of memory");
  return copy;
}

/* Whether the string at idx is one header line: a CR or LF would let it add headers of its own (or
 * start the body), a NUL would cut it short. */
static int one_header_line(lua_State *L, int idx) {
  size_t n;
  const char *s = lua_tolstring(L, idx, &n);
  return strcspn(s, "\r\n") == n;
}

static int opt_boolean(lua_State *L, int idx, const char *name, int def) {
  int v = def;
  if (lua_getfield(L, idx, name) != LUA_TNIL) v = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return v;
}

/* The session's table of attached transfers (its user value), pushed. */
static void push_attached(lua_State *L, int session_idx) {
  lua_getiuservalue(L, session_idx, 1);
}

static void unlink_transfer(Session *s, Transfer *t) {
  if (t->prev) t->prev->next = t->next;
  else s->first = t->next;
  if (t->next) t->next->prev = t->prev;
  else s->last = t->prev;
  t->prev = t->next = NULL;
  if (t->state == ST_DONE) {
    Transfer **pp = &s->done_first, *prev = NULL;
    while (*pp && *pp != t) { prev = *pp; pp = &(*pp)->done_next; }
    if (*pp) {
      *pp = t->done_next;
      if (s->done_last == t) s->done_last = prev;
    }
  }
  t->done_next = NULL;
  t->session = NULL;
}

/* Stops the I/O of a transfer that is going away: kept data and state stay for a later resume. */
/* A transfer going away, or about to lose its file: the worker writing its last bytes is waited for. */
static void await_tail(Transfer *t) {
  if (t->state == ST_FINISHING) mg_jobs_wait_flag(&t->tail_done);
}

static void abandon(Session *s, Transfer *t, const char *why) {
  if (t->state == ST_DONE) return;
  fail_host(t, "ECANCEL", 0, why);
  await_tail(t);
  finish(s, t);
}

static int session_close(lua_State *L) {
  Session *s = luaL_checkudata(L, 1, SESSION_MT);
  if (!s->multi) return 0;
  while (s->first) {
    Transfer *t = s->first;
    abandon(s, t, "cancelled: the session was closed");
    unlink_transfer(s, t);
  }
  curl_multi_cleanup(s->multi);
  s->multi = NULL;
  while (s->spare_count > 0) free(s->spare_wbufs[--s->spare_count]);
  free(s->cacert); free(s->capath); free(s->user_agent);
  s->cacert = s->capath = s->user_agent = NULL;
  lua_pushnil(L);
  lua_setiuservalue(L, 1, 1);
  return 0;
}

static int session_new(lua_State *L) {
  if (lua_isnoneornil(L, 1)) lua_newtable(L);
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  lua_Integer jobs = opt_integer(L, 1, "jobs", 4);
  double rate = opt_number(L, 1, "limit_rate", 0);
  lua_Integer max_redirects = opt_integer(L, 1, "max_redirects", 10);
  double connect_timeout = opt_number(L, 1, "connect_timeout", 0);
  luaL_argcheck(L, jobs >= 1 && jobs <= 1024, 1, "jobs must be between 1 and 1024");
  luaL_argcheck(L, rate >= 0, 1, "limit_rate must not be negative");
  luaL_argcheck(L, max_redirects >= 0, 1, "max_redirects must not be negative");
  luaL_argcheck(L, connect_timeout >= 0 && connect_timeout <= TIMEOUT_MAX, 1, "connect_timeout must be from 0 to a week");
  Session *s = lua_newuserdatauv(L, sizeof *s, 1);
  memset(s, 0, sizeof *s);
  luaL_setmetatable(L, SESSION_MT);
  s->jobs = (int)jobs;
  s->limit_rate = rate;
  s->max_redirects = (long)max_redirects;
  s->connect_timeout = (long)(connect_timeout + 0.999);
  s->token_at = mg_now();
  s->cacert = opt_string(L, 1, "cacert");
  s->capath = opt_string(L, 1, "capath");
  s->user_agent = opt_string(L, 1, "user_agent");
  if (!s->user_agent) s->user_agent = strdup("modelget/0.1");
  lua_newtable(L);
  lua_setiuservalue(L, -2, 1);
  s->multi = curl_multi_init();
  if (!s->multi) return luaL_error(L, "libcurl: cannot create a session");
  curl_multi_setopt(s->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
  return 1;
}

static void transfer_free(Transfer *t) {
  if (t->tail_pending) mg_jobs_wait_flag(&t->tail_done); /* its worker is still using it */
  hash_stop(&t->hash, STOP_ABORT);
  free(t->wbuf);
  if (t->fd >= 0) { close(t->fd); t->fd = -1; }
  curl_slist_free_all(t->user_headers);
  curl_slist_free_all(t->req_headers);
  free(t->url); free(t->cur_url); free(t->partial); free(t->state_path); free(t->space_path); free(t->validator);
  free(t->auth_header); free(t->auth_host); free(t->etag); free(t->last_modified);
  free(t->linked_etag); free(t->body); free(t->hdr.buf);
  EVP_MD_CTX_free(t->ctx);
  if (t->inited) {
    pthread_mutex_destroy(&t->hash.mu);
    pthread_cond_destroy(&t->hash.more_hash);
    pthread_cond_destroy(&t->hash.more_write);
    pthread_cond_destroy(&t->hash.room);
  }
  memset(t, 0, sizeof *t);
  t->fd = -1;
  t->closed = 1;
}

static int session_add(lua_State *L) {
  Session *s = checksession(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  Transfer *t = lua_newuserdatauv(L, sizeof *t, 1); /* 3 */
  memset(t, 0, sizeof *t);
  t->fd = -1;
  t->closed = 1;
  luaL_setmetatable(L, TRANSFER_MT);
  t->closed = 0;
  t->state = ST_DONE;
  t->hash.prefix_fd = -1;
  t->total = t->expected_size = t->linked_size = -1;
  t->retry_after = -1;
  /* options (raising on misuse leaves a closed-shaped transfer for __gc) */
  t->url = opt_string(L, 2, "url");
  if (!t->url) return luaL_error(L, "option 'url' is required");
  t->partial = opt_string(L, 2, "partial");
  t->space_path = opt_string(L, 2, "space_path");
  t->head = opt_boolean(L, 2, "head", 0);
  lua_Integer memory = opt_integer(L, 2, "memory", 0);
  luaL_argcheck(L, memory >= 0, 2, "memory must not be negative");
  t->memory = memory > 0;
  t->memory_max = (uint64_t)memory;
  if (!t->partial && !t->memory && !t->head) return luaL_error(L, "one of 'partial', 'memory' or 'head' is required");
  if (t->partial && t->memory) return luaL_error(L, "'partial' and 'memory' exclude each other");
  t->resume = opt_boolean(L, 2, "resume", 1);
  if (lua_getfield(L, 2, "range") != LUA_TNIL) {
    luaL_checktype(L, -1, LUA_TTABLE);
    lua_geti(L, -1, 1);
    lua_geti(L, -2, 2);
    int ok1, ok2;
    lua_Integer from = lua_tointegerx(L, -2, &ok1), to = lua_tointegerx(L, -1, &ok2);
    if (!ok1 || !ok2 || from < 0 || to < from) return luaL_error(L, "option 'range': {from, to} with 0 <= from <= to");
    if (!t->partial) return luaL_error(L, "option 'range' needs 'partial'");
    t->ranged = 1;
    t->range_from = (uint64_t)from;
    t->range_to = (uint64_t)to;
    lua_pop(L, 2);
  }
  lua_pop(L, 1);
  t->shared = opt_boolean(L, 2, "shared", 0);
  lua_Integer done = opt_integer(L, 2, "done", 0);
  if (t->shared && !t->ranged) return luaL_error(L, "option 'shared' needs 'range'");
  if (done < 0 || (t->ranged && (uint64_t)done > t->range_to - t->range_from))
    return luaL_error(L, "option 'done': outside the range");
  if (done > 0 && !t->shared) return luaL_error(L, "option 'done' needs 'shared'");
  t->range_done = (uint64_t)done;
  t->kept = t->offset = t->range_done; /* what on_disk says even if the attempt fails before it starts */
  lua_Integer whole = opt_integer(L, 2, "whole_size", -1);
  t->whole_size = whole >= 0 ? (int64_t)whole : -1;
  t->validator = opt_string(L, 2, "validator");
  t->sync = opt_boolean(L, 2, "fsync", 1);
  t->writeback = opt_boolean(L, 2, "writeback", 0);
  double stall = opt_number(L, 2, "stall_timeout", 30);
  luaL_argcheck(L, stall >= 1 && stall <= TIMEOUT_MAX, 2, "stall_timeout must be from 1 s to a week");
  t->stall_timeout = (long)(stall + 0.5);
  t->space_factor = opt_number(L, 2, "space_factor", 1);
  lua_Integer reservation = opt_integer(L, 2, "reservation", 0);
  luaL_argcheck(L, reservation >= 0 && reservation <= RESERVATIONS, 2, "option 'reservation': not a reservation");
  t->reservation = (int)reservation;
  lua_Integer expected = opt_integer(L, 2, "expected_size", -1);
  t->expected_size = expected >= 0 ? (int64_t)expected : -1;
  if (lua_getfield(L, 2, "headers") != LUA_TNIL) {
    luaL_checktype(L, -1, LUA_TTABLE);
    lua_Integer n = luaL_len(L, -1);
    for (lua_Integer i = 1; i <= n; i++) {
      if (lua_geti(L, -1, i) != LUA_TSTRING) return luaL_error(L, "option 'headers': strings expected");
      if (!one_header_line(L, -1))
        return luaL_error(L, "option 'headers': entry %I holds CR, LF or NUL (one header a line)", i);
      struct curl_slist *grown = curl_slist_append(t->user_headers, lua_tostring(L, -1));
      if (!grown) return luaL_error(L, "out of memory");
      t->user_headers = grown;
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  if (lua_getfield(L, 2, "auth") != LUA_TNIL) {
    luaL_checktype(L, -1, LUA_TTABLE);
    int top = lua_gettop(L);
    t->auth_header = opt_string(L, top, "header");
    t->auth_host = opt_string(L, top, "host");
    if (!t->auth_header || !t->auth_host) return luaL_error(L, "option 'auth' needs 'header' and 'host'");
    lua_getfield(L, top, "header");
    if (!one_header_line(L, -1)) return luaL_error(L, "option 'auth': 'header' holds CR, LF or NUL (one header a line)");
    lua_pop(L, 1);
    size_t n = strlen(t->auth_host);
    if (n >= 2 && t->auth_host[0] == '[' && t->auth_host[n - 1] == ']') {
      memmove(t->auth_host, t->auth_host + 1, n - 2);
      t->auth_host[n - 2] = '\0';
    }
    /* Scheme and port not given are the URL's (a scheme given alone: its default port): the
     * credential is for the origin it is first sent to. A URL that does not parse gives none (and
     * is refused by the policy). */
    UrlParts u;
    if (url_parts(t->url, &u) != 0) memset(&u, 0, sizeof u);
    const char *scheme = opt_borrowed(L, top, "scheme");
    snprintf(t->auth_scheme, sizeof t->auth_scheme, "%s", scheme ? scheme : u.scheme);
    lower_ascii(t->auth_scheme);
    lua_Integer port = opt_integer(L, top, "port", 0);
    luaL_argcheck(L, port >= 0 && port <= 65535, 2, "option 'auth': port must be 1 to 65535");
    t->auth_port = port > 0 ? (long)port : scheme ? default_port(t->auth_scheme) : u.port;
  }
  lua_pop(L, 1);
  t->cur_url = strdup(t->url);
  if (t->partial && !t->shared) {
    size_t n = strlen(t->partial);
    t->state_path = malloc(n + 7);
    if (t->state_path) { memcpy(t->state_path, t->partial, n); memcpy(t->state_path + n, ".state", 7); }
  }
  t->ctx = EVP_MD_CTX_new();
  if (!t->cur_url || (t->partial && !t->shared && !t->state_path) || !t->ctx ||
      EVP_DigestInit_ex(t->ctx, EVP_sha256(), NULL) != 1)
    return luaL_error(L, "out of memory");
  pthread_mutex_init(&t->hash.mu, NULL);
  pthread_cond_init(&t->hash.more_hash, NULL);
  pthread_cond_init(&t->hash.more_write, NULL);
  pthread_cond_init(&t->hash.room, NULL);
  t->inited = 1;
  /* attach: the transfer keeps its session alive; the session keeps it until reported */
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, 3, 1);
  push_attached(L, 1);
  lua_pushlightuserdata(L, t);
  lua_pushvalue(L, 3);
  lua_rawset(L, -3);
  lua_pop(L, 1);
  t->session = s;
  t->prev = s->last;
  if (s->last) s->last->next = t;
  else s->first = t;
  s->last = t;
  char why[1200];
  if (policy_refuses(t->url, why, sizeof why)) {
    fail(t, "EPOLICY", 0, "%s", why);
    finish(s, t);
  } else {
    t->state = ST_QUEUED;
  }
  return 1;
}

/* session:check_space{bytes=, partial=, space_path=, space_factor=}: the storage check a download
 * makes at its first body byte, for a download split in ranges: made once, before any range starts,
 * for all the bytes still to come across them. n (the reservation that holds the space until
 * session:release_space(n)), true (nothing held), or nil, message, "ESPACE". */
static int session_check_space(lua_State *L) {
  Session *s = checksession(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_Integer bytes = opt_integer(L, 2, "bytes", -1);
  luaL_argcheck(L, bytes >= 0, 2, "option 'bytes': a count of bytes is required");
  double factor = opt_number(L, 2, "space_factor", 1);
  const char *space_path = opt_borrowed(L, 2, "space_path"), *partial = opt_borrowed(L, 2, "partial");
  if (!space_path && !partial) return luaL_error(L, "one of 'space_path' or 'partial' is required");
  char folder[PATH_MAX], why[512];
  const char *where = space_where(space_path, partial, folder, sizeof folder);
  dev_t dev;
  int checked;
  if (bytes > 0 && space_refused(s, NULL, where, factor * (double)bytes, &dev, &checked, why, sizeof why))
    return mg_fail(L, "ESPACE", "%s", why);
  /* Held for the split (its segments pass reservation = this number, and skip their own checks)
   * until session:release_space: every other check counts it meanwhile. */
  for (int k = 0; bytes > 0 && checked && k < RESERVATIONS; k++) {
    if (s->reserved[k].live) continue;
    s->reserved[k].live = 1;
    s->reserved[k].dev = dev;
    s->reserved[k].bytes = factor * (double)bytes;
    lua_pushinteger(L, k + 1);
    return 1;
  }
  lua_pushboolean(L, 1); /* nothing to hold (or no room to hold it: the segments check for themselves) */
  return 1;
}

/* session:release_space(n): the split that held reservation n has ended. */
static int session_release_space(lua_State *L) {
  Session *s = checksession(L, 1);
  lua_Integer n = luaL_checkinteger(L, 2);
  luaL_argcheck(L, n >= 1 && n <= RESERVATIONS, 2, "not a reservation");
  s->reserved[n - 1].live = 0;
  s->reserved[n - 1].bytes = 0;
  return 0;
}

static int session_perform(lua_State *L) {
  Session *s = checksession(L, 1);
  double timeout = luaL_optnumber(L, 2, 1.0);
  double deadline = mg_now() + timeout;
  for (;;) {
    start_queued(s);
    double now = mg_now();
    refill(s, now);
    ring_resume(s, now);
    int still = 0;
    curl_multi_perform(s->multi, &still);
    drain_messages(s);
    reap_tails(s);
    now = mg_now();
    check_stalls(s, now);
    sample_speeds(s, now);
    if (s->done_first || mg_interrupt_flag) break;
    if (active_count(s) == 0) break;
    double left = deadline - now;
    if (left <= 0) break;
    if (rate_waiting(s)) {
      double wait = s->tokens < 0 ? -s->tokens / s->limit_rate : 0.005;
      if (wait < 0.005) wait = 0.005;
      if (wait < left) left = wait;
    }
    if (left > 1) left = 1; /* stalls are checked between polls */
    /* A finished file-system job ends the wait too: the task waiting for it goes on at once. */
    struct curl_waitfd jobs = { mg_jobs_fd(), CURL_WAIT_POLLIN, 0 };
    curl_multi_poll(s->multi, jobs.fd >= 0 ? &jobs : NULL, jobs.fd >= 0 ? 1 : 0, (int)(left * 1000) + 1, NULL);
    if (jobs.revents & CURL_WAIT_POLLIN) {
      mg_jobs_drain();
      reap_tails(s);
      break;
    }
  }
  start_queued(s);
  lua_pushinteger(L, active_count(s));
  return 1;
}

static int session_finished(lua_State *L) {
  Session *s = checksession(L, 1);
  lua_newtable(L);
  push_attached(L, 1);
  int list = lua_gettop(L) - 1, attached = lua_gettop(L);
  lua_Integer n = 0;
  while (s->done_first) {
    Transfer *t = s->done_first;
    s->done_first = t->done_next;
    if (!s->done_first) s->done_last = NULL;
    t->done_next = NULL;
    unlink_transfer(s, t);
    lua_pushlightuserdata(L, t);
    lua_rawget(L, attached);
    lua_rawseti(L, list, ++n);
    lua_pushlightuserdata(L, t);
    lua_pushnil(L);
    lua_rawset(L, attached);
  }
  lua_settop(L, list);
  return 1;
}

static int session_active(lua_State *L) {
  lua_pushinteger(L, active_count(checksession(L, 1)));
  return 1;
}

/* Lua: Transfer ------------------------------------------------------------------------------- */

/* The live session of a transfer, or NULL (detached). */
static Session *session_of(Transfer *t) {
  return t->session;
}

static int transfer_close(lua_State *L) {
  Transfer *t = totransfer(L, 1);
  if (t->closed) return 0;
  Session *s = session_of(t);
  if (s) {
    abandon(s, t, "cancelled: the transfer was closed");
    unlink_transfer(s, t);
    if (lua_getiuservalue(L, 1, 1) == LUA_TUSERDATA && lua_getiuservalue(L, -1, 1) == LUA_TTABLE) {
      lua_pushlightuserdata(L, t);
      lua_pushnil(L);
      lua_rawset(L, -3);
    }
    lua_settop(L, 1);
  }
  transfer_free(t);
  return 0;
}

static int transfer_pause(lua_State *L) {
  Transfer *t = checktransfer(L, 1);
  if (t->state == ST_DONE || t->user_paused) return 0;
  t->user_paused = 1;
  if (t->state == ST_RUNNING && t->easy && !t->curl_paused) {
    t->curl_paused = 1;
    curl_easy_pause(t->easy, CURLPAUSE_ALL);
  }
  return 0;
}

static int transfer_resume(lua_State *L) {
  Transfer *t = checktransfer(L, 1);
  if (t->state == ST_DONE || !t->user_paused) return 0;
  t->user_paused = 0;
  if (t->state == ST_RUNNING) restart_speed(t, mg_now());
  if (t->state == ST_RUNNING && t->easy && t->curl_paused) {
    Session *s = session_of(t);
    if (s && s->limit_rate > 0 && s->tokens <= 0) {
      t->rate_paused = 1; /* the bucket unpauses it */
    } else {
      t->curl_paused = 0;
      t->rate_paused = 0;
      t->activity_at = mg_now();
      curl_easy_pause(t->easy, CURLPAUSE_CONT);
    }
  }
  return 0;
}

static int transfer_cancel(lua_State *L) {
  Transfer *t = checktransfer(L, 1);
  int remove = lua_toboolean(L, 2);
  Session *s = session_of(t);
  if (t->state != ST_DONE) {
    fail_host(t, "ECANCEL", 0, "cancelled");
    if (remove) t->fail_drop = 1; /* nothing is kept, so nothing is written out first */
    if (remove) await_tail(t);
    if (s) finish(s, t);
  }
  if (remove) drop_partial(t);
  return 0;
}

static void set_int(lua_State *L, const char *k, int64_t v) {
  lua_pushinteger(L, (lua_Integer)v);
  lua_setfield(L, -2, k);
}

static void set_str(lua_State *L, const char *k, const char *v) {
  if (!v) return;
  lua_pushstring(L, v);
  lua_setfield(L, -2, k);
}

static int transfer_progress(lua_State *L) {
  Transfer *t = checktransfer(L, 1);
  lua_createtable(L, 0, 6);
  set_int(L, "completed", (int64_t)t->offset);
  if (t->shared && t->fd >= 0) set_int(L, "on_disk", (int64_t)on_disk(t)); /* what a checkpoint may claim */
  if (t->total >= 0) set_int(L, "total", t->total);
  else if (t->expected_size >= 0) set_int(L, "total", t->expected_size);
  double speed = 0; /* and no eta while paused: nothing moves, and nothing says when it will */
  if (t->state == ST_RUNNING && !t->user_paused && t->nsamples > 0) {
    double now = mg_now();
    /* the oldest sample inside the window */
    const Sample *from = NULL;
    for (int i = 0; i < t->nsamples; i++) {
      const Sample *c = &t->samples[(t->sample_pos + SPEED_SAMPLES - t->nsamples + i) % SPEED_SAMPLES];
      if (now - c->at <= SPEED_WINDOW) { from = c; break; }
    }
    if (!from) from = &t->samples[(t->sample_pos + SPEED_SAMPLES - 1) % SPEED_SAMPLES];
    if (now - from->at > 0.05) speed = (double)(t->body_bytes - from->bytes) / (now - from->at);
  }
  lua_pushnumber(L, speed);
  lua_setfield(L, -2, "speed");
  int64_t total = t->total >= 0 ? t->total : t->expected_size;
  if (speed > 0 && total >= 0 && (uint64_t)total >= t->offset) {
    lua_pushnumber(L, (double)((uint64_t)total - t->offset) / speed);
    lua_setfield(L, -2, "eta");
  }
  const char *state = t->state == ST_QUEUED ? (t->user_paused ? "paused" : "queued")
                    : t->state == ST_RUNNING ? (t->user_paused ? "paused" : "running")
                    : t->state == ST_FINISHING ? "finishing" : "done";
  set_str(L, "state", state);
  return 1;
}

static int transfer_result(lua_State *L) {
  Transfer *t = checktransfer(L, 1);
  if (t->state != ST_DONE) return 0;
  lua_createtable(L, 0, 20);
  lua_pushboolean(L, t->ok);
  lua_setfield(L, -2, "ok");
  if (t->status > 0) set_int(L, "status", t->status);
  set_str(L, "code", t->code);
  if (!t->ok) set_str(L, "message", t->message);
  lua_pushboolean(L, t->retryable);
  lua_setfield(L, -2, "retryable");
  if (t->retry_after >= 0) {
    lua_pushnumber(L, t->retry_after);
    lua_setfield(L, -2, "retry_after");
  }
  lua_pushboolean(L, t->restart);
  lua_setfield(L, -2, "restart");
  if (t->ranged) {
    lua_pushboolean(L, t->range_refused);
    lua_setfield(L, -2, "range_refused");
  }
  if (t->shared) set_int(L, "on_disk", (int64_t)on_disk(t));
  if (t->state_path) {
    lua_pushboolean(L, t->state_on_disk);
    lua_setfield(L, -2, "state_file");
  }
  set_int(L, "resumed_from", (int64_t)t->resumed_from);
  if (t->head) {
    int64_t clen = parse_size(hdr_get(&t->hdr, "content-length"));
    if (t->resp == RESP_BODY && clen >= 0) set_int(L, "bytes", clen);
  } else {
    set_int(L, "bytes", (int64_t)t->offset);
  }
  if (t->ok && !t->head && !t->shared) set_str(L, "sha256", t->sha256);
  if (t->resp != RESP_REDIRECT) {
    set_str(L, "etag", hdr_get(&t->hdr, "etag"));
    set_str(L, "last_modified", hdr_get(&t->hdr, "last-modified"));
    set_str(L, "content_type", hdr_get(&t->hdr, "content-type"));
  }
  set_str(L, "effective_url", t->cur_url);
  set_str(L, "linked_etag", t->linked_etag);
  if (t->linked_size >= 0) set_int(L, "linked_size", t->linked_size);
  if (t->memory) {
    lua_pushlstring(L, t->body ? t->body : "", t->body_len);
    lua_setfield(L, -2, "body");
  }
  lua_newtable(L);
  for (size_t i = 0; i < t->hdr.len;) {
    const char *n = t->hdr.buf + i, *v = n + strlen(n) + 1;
    if (lua_getfield(L, -1, n) == LUA_TSTRING) {
      lua_pushfstring(L, "%s, %s", lua_tostring(L, -1), v);
      lua_setfield(L, -3, n);
    } else {
      lua_pushstring(L, v);
      lua_setfield(L, -3, n);
    }
    lua_pop(L, 1);
    i = (size_t)(v - t->hdr.buf) + strlen(v) + 1;
  }
  lua_setfield(L, -2, "headers");
  return 1;
}

static int transfer_tostring(lua_State *L) {
  Transfer *t = totransfer(L, 1);
  if (t->closed) lua_pushstring(L, "modelget.Transfer (closed)");
  else lua_pushfstring(L, "modelget.Transfer (%s)", t->url);
  return 1;
}

void mg_open_transfer(lua_State *L) {
  static const luaL_Reg session_methods[] = {
    {"active", session_active},
    {"add", session_add},
    {"check_space", session_check_space},
    {"close", session_close},
    {"finished", session_finished},
    {"perform", session_perform},
    {"release_space", session_release_space},
    {NULL, NULL}
  };
  static const luaL_Reg transfer_methods[] = {
    {"cancel", transfer_cancel},
    {"close", transfer_close},
    {"pause", transfer_pause},
    {"progress", transfer_progress},
    {"result", transfer_result},
    {"resume", transfer_resume},
    {NULL, NULL}
  };
  static const luaL_Reg funcs[] = {
    {"session", session_new},
    {NULL, NULL}
  };
  mg_newmeta(L, SESSION_MT, session_methods, session_close);
  mg_newmeta(L, TRANSFER_MT, transfer_methods, transfer_close);
  luaL_getmetatable(L, TRANSFER_MT);
  lua_pushcfunction(L, transfer_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
  luaL_setfuncs(L, funcs, 0);
}
