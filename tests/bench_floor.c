/* make bench: the file-system floor of the store's layout, measured with no transfer, no Lua, no
 * hash and no lock — only the calls any program must make to leave the same files on disk.
 *   bench_floor FOLDER COUNT SIZE RUNS
 * Writes COUNT files of SIZE bytes (in 16 KiB writes, as a transfer receives them) three ways, RUNS
 * times each, interleaved, each run in a folder of its own (nothing is deleted: see bench.sh):
 *   flat     one file each in one folder: what curl --parallel leaves
 *   layout   what a store install leaves without durability: per model a staging folder, the data
 *            written as NAME.part and renamed to NAME, a manifest, the folder renamed into
 *            models/other/ID
 *   durable  the same, made durable the cheapest way we know: write-back started at each file's end
 *            (sync_file_range), then one syncfs for the whole file system. One barrier at the end is
 *            fewer than a crash-safe install needs (its data durable before its rename), so this
 *            floor is lower than any real durable store's.
 * Prints "flat|layout|durable WALL_SECONDS CPU_SECONDS", the least of the runs for each. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static char chunk[16384];

static double clock_of(clockid_t id) {
  struct timespec t;
  clock_gettime(id, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void die(const char *what, const char *path) {
  fprintf(stderr, "bench_floor: %s %s: %s\n", what, path, strerror(errno));
  exit(1);
}

/* A path made from fmt into buf (PATH_BYTES), or the program stops: never a truncated path. */
enum { PATH_BYTES = 4096 };
static void make_path(char *buf, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(buf, PATH_BYTES, fmt, ap);
  va_end(ap);
  if (n < 0 || n >= PATH_BYTES) {
    fprintf(stderr, "bench_floor: a path under the folder is too long\n");
    exit(1);
  }
}

static void write_file(const char *path, long size, int start_writeback) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) die("open", path);
  for (long left = size; left > 0;) {
    size_t n = left < (long)sizeof chunk ? (size_t)left : sizeof chunk;
    if (write(fd, chunk, n) != (ssize_t)n) die("write", path);
    left -= (long)n;
  }
#ifdef __linux__
  if (start_writeback) sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE);
#else
  (void)start_writeback;
#endif
  if (close(fd) != 0) die("close", path);
}

static void make_dir(const char *path) {
  if (mkdir(path, 0755) != 0) die("mkdir", path);
}

static void move(const char *from, const char *to) {
  if (rename(from, to) != 0) die("rename", from);
}

/* One run of one way into ROOT (a new folder); returns its wall and processor seconds. */
static void run(const char *way, const char *root, int count, long size, double *wall, double *cpu) {
  static const char manifest[] = "{\"name\":\"f000.bin\",\"framework\":\"other\",\"files\":[{\"path\":"
    "\"f000.bin\",\"size\":102400,\"sha256\":\"0000000000000000000000000000000000000000000000000000"
    "000000000000\"}],\"url\":\"https://127.0.0.1/small/f000.bin\",\"installed\":\"2026-01-01T00:00:00Z\"}";
  char a[PATH_BYTES], b[PATH_BYTES];
  int flat = strcmp(way, "flat") == 0, durable = strcmp(way, "durable") == 0;
  make_dir(root);
  if (!flat) {
    make_path(a, "%s/partial", root); make_dir(a);
    make_path(a, "%s/models", root); make_dir(a);
    make_path(a, "%s/models/other", root); make_dir(a);
  }
  double w0 = clock_of(CLOCK_MONOTONIC), c0 = clock_of(CLOCK_PROCESS_CPUTIME_ID);
  for (int i = 1; i <= count; i++) {
    if (flat) {
      make_path(a, "%s/f%05d.bin", root, i);
      write_file(a, size, 0);
      continue;
    }
    make_path(a, "%s/partial/other--f%05d", root, i); make_dir(a);
    make_path(a, "%s/partial/other--f%05d/f%05d.bin.part", root, i, i);
    write_file(a, size, durable);
    make_path(b, "%s/partial/other--f%05d/f%05d.bin", root, i, i);
    move(a, b);
    make_path(a, "%s/partial/other--f%05d/.modelget.json", root, i);
    int fd = open(a, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || write(fd, manifest, sizeof manifest - 1) != (ssize_t)(sizeof manifest - 1)) die("write", a);
    close(fd);
    make_path(a, "%s/partial/other--f%05d", root, i);
    make_path(b, "%s/models/other/f%05d", root, i);
    move(a, b);
  }
#ifdef __linux__
  if (durable) {
    int fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || syncfs(fd) != 0) die("syncfs", root);
    close(fd);
  }
#endif
  *wall = clock_of(CLOCK_MONOTONIC) - w0;
  *cpu = clock_of(CLOCK_PROCESS_CPUTIME_ID) - c0;
}

int main(int argc, char **argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: bench_floor FOLDER COUNT SIZE RUNS\n");
    return 2;
  }
  const char *folder = argv[1];
  int count = atoi(argv[2]), runs = atoi(argv[4]);
  long size = atol(argv[3]);
  if (count < 1 || count > 99999 || size < 1 || runs < 1) {
    fprintf(stderr, "bench_floor: COUNT must be 1 to 99999, SIZE and RUNS at least 1\n");
    return 2;
  }
  static const char *const ways[] = { "flat", "layout", "durable" };
  double best_wall[3] = { 0 }, best_cpu[3] = { 0 };
  memset(chunk, 'm', sizeof chunk);
  for (int r = 0; r < runs; r++) {
    for (int k = 0; k < 3; k++) {
      char root[PATH_BYTES];
      double wall, cpu;
      make_path(root, "%s/%s.%d", folder, ways[k], r);
      /* What the last run left to write back must not weigh on this one. */
      sync();
      run(ways[k], root, count, size, &wall, &cpu);
      if (r == 0 || wall < best_wall[k]) best_wall[k] = wall;
      if (r == 0 || cpu < best_cpu[k]) best_cpu[k] = cpu;
    }
  }
  for (int k = 0; k < 3; k++) printf("%s %.4f %.4f\n", ways[k], best_wall[k], best_cpu[k]);
  return 0;
}
