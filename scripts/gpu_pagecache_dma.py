"""On the GPU machine: DMA straight from the page cache, the path the loader does not take.

The checkpoint's shards are mmapped read-only and page-locked in place (`cudaHostRegister`,
read-only flag), then copied to the device. Measures registering (by 1-16 threads, in windows
of 16-256 MiB), the copy from registered pages, unregistering, and the three pipelined (windows
registered ahead by a pool, copied in order, unregistered after their copy) -- the figures in
BENCHMARKS.md ("GPU, 2026-12-02, second session") that kept the loader on pinned staging.
Usage: python3 scripts/gpu_pagecache_dma.py CKPT_DIR (page cache warm: `cat` the shards first).
Needs torch with CUDA and its bundled libcudart. Prints a short table last.
"""
import ctypes, glob, os, sys, threading, time, queue
import torch

d = sys.argv[1]
files = sorted(glob.glob(f"{d}/*.safetensors"))
torch.cuda.init(); torch.empty(1, device="cuda")
import nvidia.cu13 as _n
lib = os.path.join(list(_n.__path__)[0], "lib", "libcudart.so.13")
rt = ctypes.CDLL(lib)
rt.cudaHostRegister.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint]
rt.cudaHostUnregister.argtypes = [ctypes.c_void_p]
rt.cudaMemcpyAsync.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p]
rt.cudaStreamSynchronize.argtypes = [ctypes.c_void_p]
rt.cudaEventCreateWithFlags.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_uint]
rt.cudaEventRecord.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
rt.cudaEventSynchronize.argtypes = [ctypes.c_void_p]
rt.cudaSetDevice(0)
libc = ctypes.CDLL("libc.so.6", use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]

maps = []
for f in files:
    fd = os.open(f, os.O_RDONLY)
    n = os.fstat(fd).st_size
    p = libc.mmap(None, n, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
    maps.append((p, n))
total = sum(n for _, n in maps)
print(f"{len(files)} files, {total/1e9:.2f} GB", flush=True)
PAGE = 4096

def windows(w):
    out = []
    for p, n in maps:
        o = 0
        while o < n:
            l = min(w, n - o)
            out.append((p + o, l))
            o += l
    return out

def reg(p, l, flags=8):
    r = rt.cudaHostRegister(p, l, flags)
    if r != 0:
        raise RuntimeError(f"cudaHostRegister {r}")

def on_threads(items, k, fn):
    """Runs fn(item) for every item on k threads; returns the wall seconds."""
    it = iter(items); lock = threading.Lock()
    def work():
        while True:
            with lock:
                x = next(it, None)
            if x is None: return
            fn(x)
    t = time.perf_counter()
    th = [threading.Thread(target=work) for _ in range(k)]
    [x.start() for x in th]; [x.join() for x in th]
    return time.perf_counter() - t

def register_all(w, k):
    ws = windows(w)
    return ws, on_threads(ws, k, lambda x: reg(*x))

def unregister_all(ws, k):
    return on_threads(ws, k, lambda x: rt.cudaHostUnregister(x[0]))

dev = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
stream = torch.cuda.Stream()
sp = ctypes.c_void_p(stream.cuda_stream)

def dma(ws):
    t = time.perf_counter()
    for p, l in ws:
        o = 0
        while o < l:
            c = min(l - o, dev.numel())
            r = rt.cudaMemcpyAsync(ctypes.c_void_p(dev.data_ptr()), ctypes.c_void_p(p + o), c, 1, sp)
            assert r == 0, r
            o += c
    rt.cudaStreamSynchronize(sp)
    return time.perf_counter() - t

rows = []
for w_mib, k in [(64, 1), (64, 4), (64, 8), (64, 16), (16, 16), (256, 16)]:
    ws, tr = register_all(w_mib << 20, k)
    td = dma(ws)
    tu = unregister_all(ws, k)
    rows.append(f"register W={w_mib}MiB K={k}: {tr:.3f} s ({total/tr/1e9:.1f} GB/s); dma {td:.3f} s ({total/td/1e9:.1f} GB/s); unregister {tu:.3f} s")
    print(rows[-1], flush=True)

# Pipelined: K registrars in file order, one copier in order, one unregistrar, lookahead L windows.
def pipelined(w, k, look):
    ws = windows(w)
    done = [threading.Event() for _ in ws]
    nxt = [0]; lock = threading.Lock()
    sem = threading.Semaphore(look)
    def registrar():
        while True:
            sem.acquire()
            with lock:
                i = nxt[0]; nxt[0] += 1
            if i >= len(ws):
                sem.release(); return
            reg(*ws[i]); done[i].set()
    q = queue.Queue()
    def unregistrar():
        while True:
            x = q.get()
            if x is None: return
            ev, p = x
            rt.cudaEventSynchronize(ev)
            rt.cudaHostUnregister(p)
            sem.release()
    t = time.perf_counter()
    th = [threading.Thread(target=registrar) for _ in range(k)] + [threading.Thread(target=unregistrar)]
    [x.start() for x in th]
    for i, (p, l) in enumerate(ws):
        done[i].wait()
        o = 0
        while o < l:
            c = min(l - o, dev.numel())
            rt.cudaMemcpyAsync(ctypes.c_void_p(dev.data_ptr()), ctypes.c_void_p(p + o), c, 1, sp)
            o += c
        ev = ctypes.c_void_p(); rt.cudaEventCreateWithFlags(ctypes.byref(ev), 2)
        rt.cudaEventRecord(ev, sp)
        q.put((ev, p))
    rt.cudaStreamSynchronize(sp)
    tc = time.perf_counter() - t
    q.put(None)
    [x.join() for x in th]
    return tc, time.perf_counter() - t

for w_mib, k, look in [(64, 8, 16), (64, 16, 32), (32, 16, 32), (128, 8, 8)]:
    for _ in range(2):
        tc, ta = pipelined(w_mib << 20, k, look)
        rows.append(f"pipelined W={w_mib}MiB K={k} look={look}: copies done {tc:.3f} s ({total/tc/1e9:.1f} GB/s), all unregistered {ta:.3f} s")
        print(rows[-1], flush=True)

# pinned alloc for reference
t = time.perf_counter(); h = torch.empty(768 << 20, dtype=torch.uint8, pin_memory=True); tp = time.perf_counter() - t
rows.append(f"pin 768 MiB (torch pin_memory) {tp:.3f} s")
print("\n".join(["== regbench"] + rows))
