// How fast threads copy page-cached checkpoint files into a staging ring, the part of a
// GPU load the load thread waits for. Built by scripts/build-gpu.sh into
// .gpu/bin/fill-bench; run on the GPU machine by scripts/gpu-fill-bench.sh.
//
//   fill-bench pread|mmap|mmapnt THREADS FILES...
//
// pread: 512 KiB (SLICE_KIB) `pread`s, as the loader reads. mmap: `memcpy` out of a
// mapping of each file (faster, but a file truncated under a mapping raises SIGBUS, which
// is why the loader does not read this way). mmapnt: the same with non-temporal (AVX2
// streaming) stores into the ring. Reads go out in file order from one counter.
// RING_MIB: the ring's size (768, the loader's until 2026-12-02; it uses 128 now, which
// stays in the host's last-level cache). POPULATE=1: each mmap read's pages are mapped
// with one MADV_POPULATE_READ before copying. CHUNK_MIB=N: all threads meet at a barrier
// after every N MiB, as the load thread waits for each fill. DMA=1: a thread copies a
// 256 MiB page-locked buffer to the device over and over meanwhile (libcuda loaded at
// run time), as the copies out of the ring do during a load (the loader's copies read
// the ring itself).
#define _GNU_SOURCE
#include <dlfcn.h>
#include <immintrin.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_FILES 64
#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif

static int nfiles, use_mmap, use_nt, populate;
static size_t RING = 768ul << 20;
static int fds[MAX_FILES];
static size_t sizes[MAX_FILES], first_slice[MAX_FILES + 1];
static char *maps[MAX_FILES], *ring;
static size_t slice = 512ul << 10, total_slices, chunk_slices;
static atomic_size_t next_slice;
static pthread_barrier_t barrier;
static atomic_int dma_state; // 0 starting, 1 running, 2 stop

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

// Non-temporal stores: the ring's lines go to memory without being read first.
__attribute__((target("avx2"))) static void copy_nt(char *dst, const char *src, size_t len) {
  size_t head = (32 - ((size_t)dst & 31)) & 31, i;
  if (head > len) head = len;
  memcpy(dst, src, head);
  for (i = head; i + 128 <= len; i += 128) {
    __m256i a = _mm256_loadu_si256((const __m256i *)(src + i));
    __m256i b = _mm256_loadu_si256((const __m256i *)(src + i + 32));
    __m256i c = _mm256_loadu_si256((const __m256i *)(src + i + 64));
    __m256i d = _mm256_loadu_si256((const __m256i *)(src + i + 96));
    _mm256_stream_si256((__m256i *)(dst + i), a);
    _mm256_stream_si256((__m256i *)(dst + i + 32), b);
    _mm256_stream_si256((__m256i *)(dst + i + 64), c);
    _mm256_stream_si256((__m256i *)(dst + i + 96), d);
  }
  _mm_sfence();
  memcpy(dst + i, src + i, len - i);
}

static void copy_slice(size_t s) {
  int f = 0;
  while (first_slice[f + 1] <= s) f++;
  size_t off = (s - first_slice[f]) * slice, len = sizes[f] - off;
  if (len > slice) len = slice;
  size_t at = (s * slice) % RING;
  if (at + len > RING) at = 0;
  if (use_mmap) {
    if (populate) madvise(maps[f] + off - off % 4096, len + off % 4096, MADV_POPULATE_READ);
    if (use_nt) copy_nt(ring + at, maps[f] + off, len);
    else memcpy(ring + at, maps[f] + off, len);
    return;
  }
  for (size_t done = 0; done < len;) {
    ssize_t r = pread(fds[f], ring + at + done, len - done, off + done);
    if (r <= 0) { perror("pread"); exit(1); }
    done += r;
  }
}

static void *reader(void *arg) {
  (void)arg;
  if (!chunk_slices) {
    for (size_t s; (s = atomic_fetch_add(&next_slice, 1)) < total_slices;) copy_slice(s);
    return NULL;
  }
  for (size_t c0 = 0; c0 < total_slices; c0 += chunk_slices) {
    pthread_barrier_wait(&barrier);
    for (size_t s; (s = atomic_fetch_add(&next_slice, 1)) < c0 + chunk_slices && s < total_slices;)
      copy_slice(s);
    if (pthread_barrier_wait(&barrier) == PTHREAD_BARRIER_SERIAL_THREAD)
      atomic_store(&next_slice, c0 + chunk_slices);
  }
  return NULL;
}

static void *sym(void *cuda, const char *name) {
  char v2[64];
  snprintf(v2, sizeof v2, "%s_v2", name);
  void *f = dlsym(cuda, v2);
  if (!f) f = dlsym(cuda, name);
  if (!f) { fprintf(stderr, "libcuda has no %s\n", name); exit(1); }
  return f;
}

static void *dma(void *cuda) {
  int (*cuInit)(unsigned) = sym(cuda, "cuInit");
  int (*cuDeviceGet)(int *, int) = sym(cuda, "cuDeviceGet");
  int (*cuDevicePrimaryCtxRetain)(void **, int) = sym(cuda, "cuDevicePrimaryCtxRetain");
  int (*cuCtxSetCurrent)(void *) = sym(cuda, "cuCtxSetCurrent");
  int (*cuMemAlloc)(unsigned long long *, size_t) = sym(cuda, "cuMemAlloc");
  int (*cuMemHostRegister)(void *, size_t, unsigned) = sym(cuda, "cuMemHostRegister");
  int (*cuMemcpyHtoD)(unsigned long long, const void *, size_t) = sym(cuda, "cuMemcpyHtoD");
  size_t n = 256ul << 20;
  char *host = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  memset(host, 1, n);
  int dev;
  void *ctx;
  unsigned long long d;
  if (cuInit(0) || cuDeviceGet(&dev, 0) || cuDevicePrimaryCtxRetain(&ctx, dev) || cuCtxSetCurrent(ctx) ||
      cuMemAlloc(&d, n) || cuMemHostRegister(host, n, 0)) {
    fprintf(stderr, "CUDA setup failed\n");
    exit(1);
  }
  atomic_store(&dma_state, 1);
  size_t moved = 0;
  double t0 = now();
  while (atomic_load(&dma_state) == 1) {
    cuMemcpyHtoD(d, host, n);
    moved += n;
  }
  fprintf(stderr, "  device copies meanwhile: %.1f GB/s\n", moved / (now() - t0) / 1e9);
  return NULL;
}

int main(int argc, char **argv) {
  if (argc < 4 || (strcmp(argv[1], "pread") && strcmp(argv[1], "mmap") && strcmp(argv[1], "mmapnt"))) {
    fprintf(stderr, "usage: fill-bench pread|mmap|mmapnt THREADS FILES...\n");
    return 2;
  }
  use_nt = !strcmp(argv[1], "mmapnt");
  use_mmap = use_nt || !strcmp(argv[1], "mmap");
  populate = getenv("POPULATE") != NULL;
  if (getenv("RING_MIB")) RING = (size_t)atoi(getenv("RING_MIB")) << 20;
  if (RING == 0) return 2;
  int threads = atoi(argv[2]);
  if (threads < 1 || threads > 256 || argc - 3 > MAX_FILES) { fprintf(stderr, "1-256 threads, at most 64 files\n"); return 2; }
  if (getenv("SLICE_KIB")) slice = (size_t)atoi(getenv("SLICE_KIB")) << 10;
  if (slice == 0) return 2;
  ring = mmap(NULL, RING, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  for (size_t i = 0; i < RING; i += 4096) ring[i] = 0;
  size_t total = 0;
  for (int i = 3; i < argc; i++) {
    int f = nfiles++;
    struct stat st;
    if ((fds[f] = open(argv[i], O_RDONLY)) < 0 || fstat(fds[f], &st)) { perror(argv[i]); return 1; }
    sizes[f] = st.st_size;
    total += sizes[f];
    first_slice[f + 1] = first_slice[f] + (sizes[f] + slice - 1) / slice;
    if (use_mmap && (maps[f] = mmap(NULL, sizes[f], PROT_READ, MAP_SHARED, fds[f], 0)) == MAP_FAILED) { perror("mmap"); return 1; }
  }
  total_slices = first_slice[nfiles];
  if (getenv("CHUNK_MIB")) {
    chunk_slices = ((size_t)atoi(getenv("CHUNK_MIB")) << 20) / slice;
    if (!chunk_slices) chunk_slices = 1;
    pthread_barrier_init(&barrier, NULL, threads);
  }
  pthread_t dma_thread, th[256];
  int with_dma = getenv("DMA") != NULL;
  if (with_dma) {
    void *cuda = dlopen("libcuda.so.1", RTLD_NOW);
    if (!cuda) { fprintf(stderr, "no libcuda.so.1\n"); return 1; }
    pthread_create(&dma_thread, NULL, dma, cuda);
    while (atomic_load(&dma_state) != 1) usleep(1000);
  }
  double t0 = now();
  for (int i = 0; i < threads; i++) pthread_create(&th[i], NULL, reader, NULL);
  for (int i = 0; i < threads; i++) pthread_join(th[i], NULL);
  double s = now() - t0;
  if (with_dma) { atomic_store(&dma_state, 2); pthread_join(dma_thread, NULL); }
  printf("%-6s%s %2d threads, %4zu KiB reads, ring %zu MiB, fills of %s%s: %.2f GB in %.3f s, %.1f GB/s\n", argv[1],
         populate ? "+pop" : "", threads, slice >> 10, RING >> 20, chunk_slices ? getenv("CHUNK_MIB") : "all", chunk_slices ? " MiB" : "",
         total / 1e9, s, total / s / 1e9);
  return 0;
}
