// The CUDA driver API, emulated on the CPU for the test suite: one device with compute
// capability 9.0 (or another that a test sets, to reach the paths of other architectures),
// device memory in host memory, every call synchronous, and kernels loaded
// from the libraries the emulated NVRTC (nvrtc.cpp) builds. Only what cudarc and
// src/backend/cuda call is here; cudarc names any other symbol it fails to find.
//
// Stricter than a GPU where that finds bugs: every allocation ends at an unmapped page (a
// kernel reading past a buffer's end faults, and the fault names the kernel), new memory is
// filled with NaN bytes rather than zeros, and launch limits (threads per block, grid size,
// dynamic shared memory) are checked as the driver checks them.

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include <dlfcn.h>
#include <sys/mman.h>
#include <unistd.h>

namespace {

enum {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_INVALID_VALUE = 1,
    CUDA_ERROR_OUT_OF_MEMORY = 2,
    CUDA_ERROR_INVALID_DEVICE = 101,
    CUDA_ERROR_INVALID_IMAGE = 200,
    CUDA_ERROR_INVALID_HANDLE = 400,
    CUDA_ERROR_NOT_FOUND = 500,
    CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES = 701,
    CUDA_ERROR_LAUNCH_FAILED = 719,
};

struct ErrorText {
    int code;
    const char *name, *text;
};

const ErrorText& describe(int code) {
    static const ErrorText table[] = {
        {CUDA_SUCCESS, "CUDA_SUCCESS", "no error"},
        {CUDA_ERROR_INVALID_VALUE, "CUDA_ERROR_INVALID_VALUE", "invalid argument"},
        {CUDA_ERROR_OUT_OF_MEMORY, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory"},
        {CUDA_ERROR_INVALID_DEVICE, "CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal"},
        {CUDA_ERROR_INVALID_IMAGE, "CUDA_ERROR_INVALID_IMAGE", "device kernel image is invalid"},
        {CUDA_ERROR_INVALID_HANDLE, "CUDA_ERROR_INVALID_HANDLE", "invalid resource handle"},
        {CUDA_ERROR_NOT_FOUND, "CUDA_ERROR_NOT_FOUND", "named symbol not found"},
        {CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES, "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES",
         "too many resources requested for launch"},
        {CUDA_ERROR_LAUNCH_FAILED, "CUDA_ERROR_LAUNCH_FAILED", "unspecified launch failure"},
    };
    static const ErrorText unknown = {-1, "CUDA_ERROR_UNKNOWN", "unknown error"};
    for (const ErrorText& t : table)
        if (t.code == code) return t;
    return unknown;
}

struct Dim3 {
    unsigned x, y, z;
};
typedef int (*Entry)(void** args, Dim3 grid, Dim3 block, unsigned smem, const char** error);
typedef int (*ArgSizes)(const unsigned** sizes);

struct Function {
    Entry entry;
    std::string name;
    int max_dynamic_smem;
    // Byte size of each parameter: what a graph node copies.
    std::vector<unsigned> arg_sizes;
};

// A kernel node: its parameters are copied when the node is made or rewritten, as the driver
// does, so the caller's buffers may go away.
struct Node {
    Function* f;
    Dim3 grid, block;
    unsigned smem;
    std::vector<std::vector<unsigned char>> args;
};

struct Graph {
    std::vector<Node*> nodes;
    ~Graph() {
        for (Node* n : nodes) delete n;
    }
};

// An instantiated graph: a copy of the nodes at instantiation, addressed by the graph's node
// handles, run in the order they were added (the only order the backend builds).
struct GraphExec {
    std::vector<Node> nodes;
    std::map<Node*, size_t> index;
};

struct Module {
    void* lib;
    std::map<std::string, Function*> functions;
};

struct Allocation {
    void* base;
    size_t mapped, bytes;
};

const size_t PAGE = 4096;
const int DEFAULT_DYNAMIC_SMEM = 48 * 1024, MAX_DYNAMIC_SMEM = 227 * 1024;

std::mutex mem_lock;
std::map<unsigned long long, Allocation> allocations;
size_t used_bytes = 0;
size_t total_bytes = 8ull << 30;
int cc_major = 9, cc_minor = 0;
int context_token, stream_token, pool_token;

thread_local const char* running_kernel;
struct sigaction previous_segv;

// A fault inside a kernel is almost always a read or write past a buffer: say which kernel.
void on_segv(int sig, siginfo_t* info, void* ctx) {
    if (running_kernel) {
        // Not async-signal-safe, but the process is about to die and the message is the point.
        unsigned long long a = (unsigned long long)info->si_addr;
        char where[200] = "not in or next to any live device buffer (freed, or never allocated)";
        for (auto& [p, al] : allocations) {
            unsigned long long base = (unsigned long long)al.base;
            if (a >= base && a < base + al.mapped) {
                if (a >= p)
                    snprintf(where, sizeof where, "%llu bytes past the end of a %zu-byte buffer",
                             a - p - al.bytes, al.bytes);
                else
                    snprintf(where, sizeof where, "%llu bytes before the start of a %zu-byte buffer",
                             p - a, al.bytes);
            }
        }
        char msg[512];
        int n = snprintf(msg, sizeof msg, "cuda emulator: kernel `%s` touched unmapped memory at %p: %s\n",
                         running_kernel, info->si_addr, where);
        if (write(2, msg, n > 0 ? (size_t)n : 0) < 0) {}
        signal(SIGSEGV, SIG_DFL);
        return;
    }
    if (previous_segv.sa_flags & SA_SIGINFO)
        previous_segv.sa_sigaction(sig, info, ctx);
    else if (previous_segv.sa_handler != SIG_DFL && previous_segv.sa_handler != SIG_IGN)
        previous_segv.sa_handler(sig);
    else
        signal(SIGSEGV, SIG_DFL);
}

void install_segv_handler() {
    static std::once_flag once;
    std::call_once(once, [] {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_segv;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGSEGV, &sa, &previous_segv);
    });
}

int allocate(unsigned long long* out, size_t bytes) {
    if (!out) return CUDA_ERROR_INVALID_VALUE;
    size_t data = (bytes + 15) & ~size_t(15);
    if (data == 0) data = 16;
    size_t pages = (data + PAGE - 1) & ~(PAGE - 1);
    {
        std::lock_guard<std::mutex> g(mem_lock);
        if (used_bytes + bytes > total_bytes) return CUDA_ERROR_OUT_OF_MEMORY;
        used_bytes += bytes;
    }
    size_t mapped = pages + 2 * PAGE;
    void* base = mmap(nullptr, mapped, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                      -1, 0);
    if (base == MAP_FAILED) {
        std::lock_guard<std::mutex> g(mem_lock);
        used_bytes -= bytes;
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    unsigned char* body = (unsigned char*)base + PAGE;
    mprotect(body, pages, PROT_READ | PROT_WRITE);
    unsigned char* p = body + pages - data;
    memset(p, 0xff, data);
    std::lock_guard<std::mutex> g(mem_lock);
    allocations[(unsigned long long)p] = Allocation{base, mapped, bytes};
    *out = (unsigned long long)p;
    return CUDA_SUCCESS;
}

int release(unsigned long long p) {
    std::lock_guard<std::mutex> g(mem_lock);
    auto it = allocations.find(p);
    if (it == allocations.end()) return CUDA_ERROR_INVALID_VALUE;
    munmap(it->second.base, it->second.mapped);
    used_bytes -= it->second.bytes;
    allocations.erase(it);
    return CUDA_SUCCESS;
}

int run_kernel(Function* f, Dim3 grid, Dim3 block, unsigned smem, void** params) {
    unsigned long long threads = (unsigned long long)block.x * block.y * block.z;
    if (threads == 0 || threads > 1024 || block.x > 1024 || block.y > 1024 || block.z > 64) {
        fprintf(stderr, "cuda emulator: %s launched with block (%u, %u, %u)\n", f->name.c_str(),
                block.x, block.y, block.z);
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 2147483647u || grid.y > 65535 ||
        grid.z > 65535) {
        fprintf(stderr, "cuda emulator: %s launched with grid (%u, %u, %u)\n", f->name.c_str(),
                grid.x, grid.y, grid.z);
        return CUDA_ERROR_INVALID_VALUE;
    }
    if ((int)smem > f->max_dynamic_smem) {
        fprintf(stderr, "cuda emulator: %s asks for %u bytes of dynamic shared memory; the limit "
                        "is %d\n", f->name.c_str(), smem, f->max_dynamic_smem);
        return CUDA_ERROR_INVALID_VALUE;
    }
    const char* error = nullptr;
    running_kernel = f->name.c_str();
    int rc = f->entry(params, grid, block, smem, &error);
    running_kernel = nullptr;
    if (rc != 0) {
        fprintf(stderr, "cuda emulator: kernel `%s` failed: %s\n", f->name.c_str(),
                error ? error : "unknown");
        return CUDA_ERROR_LAUNCH_FAILED;
    }
    return CUDA_SUCCESS;
}

// CUDA_KERNEL_NODE_PARAMS_v2 (CUDA 12.x).
struct KernelNodeParams {
    Function* func;
    unsigned gx, gy, gz, bx, by, bz, smem;
    void** params;
    void** extra;
    void* kern;
    void* ctx;
};

// A node from the caller's parameters, copying each argument's bytes.
int make_node(const KernelNodeParams* p, Node& n) {
    if (!p->func) return CUDA_ERROR_INVALID_HANDLE;
    if (p->extra || !p->params || p->kern) return CUDA_ERROR_INVALID_VALUE;
    n.f = p->func;
    n.grid = Dim3{p->gx, p->gy, p->gz};
    n.block = Dim3{p->bx, p->by, p->bz};
    n.smem = p->smem;
    n.args.clear();
    for (size_t i = 0; i < p->func->arg_sizes.size(); i++) {
        const unsigned char* a = (const unsigned char*)p->params[i];
        n.args.emplace_back(a, a + p->func->arg_sizes[i]);
    }
    return CUDA_SUCCESS;
}

double now_ms() {
    using namespace std::chrono;
    return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}

}  // namespace

extern "C" {

// For tests: the emulated device's memory size, so out-of-memory errors can be provoked.
void emu_set_device_memory(size_t bytes) {
    std::lock_guard<std::mutex> g(mem_lock);
    total_bytes = bytes;
}

// For tests: the compute capability the device reports (9.0 unless set), so the kernels of
// other architectures' paths (the FP4 tensor cores of sm_120) run too.
void emu_set_compute_capability(int major, int minor) {
    cc_major = major;
    cc_minor = minor;
}

int cuInit(unsigned) {
    install_segv_handler();
    // A child process (the CLI under test) gets its memory size and compute capability
    // ("10.0") from the environment.
    static std::once_flag once;
    std::call_once(once, [] {
        if (const char* m = getenv("NEMOTRON_CUDA_EMULATOR_MEMORY")) emu_set_device_memory(strtoull(m, nullptr, 10));
        int major = 0, minor = 0;
        if (const char* cc = getenv("NEMOTRON_CUDA_EMULATOR_CC"))
            if (sscanf(cc, "%d.%d", &major, &minor) == 2) emu_set_compute_capability(major, minor);
    });
    return CUDA_SUCCESS;
}
int cuDriverGetVersion(int* v) {
    *v = 12080;
    return CUDA_SUCCESS;
}
int cuGetErrorString(int e, const char** s) {
    *s = describe(e).text;
    return CUDA_SUCCESS;
}
int cuGetErrorName(int e, const char** s) {
    *s = describe(e).name;
    return CUDA_SUCCESS;
}

int cuDeviceGetCount(int* n) {
    *n = 1;
    return CUDA_SUCCESS;
}
int cuDeviceGet(int* d, int ordinal) {
    if (ordinal != 0) return CUDA_ERROR_INVALID_DEVICE;
    *d = 0;
    return CUDA_SUCCESS;
}
int cuDeviceGetName(char* name, int len, int) {
    snprintf(name, (size_t)len, "CUDA emulator (CPU, tests only)");
    return CUDA_SUCCESS;
}
int cuDeviceGetUuid(unsigned char* uuid, int) {
    memset(uuid, 0, 16);
    return CUDA_SUCCESS;
}
int cuDeviceGetUuid_v2(unsigned char* uuid, int d) { return cuDeviceGetUuid(uuid, d); }
int cuDeviceTotalMem_v2(size_t* b, int) {
    *b = total_bytes;
    return CUDA_SUCCESS;
}
int cuDeviceGetAttribute(int* v, int attr, int) {
    switch (attr) {
    case 1: *v = 1024; break;                  // max threads per block
    case 2: case 3: *v = 1024; break;          // max block x, y
    case 4: *v = 64; break;                    // max block z
    case 5: *v = 2147483647; break;            // max grid x
    case 6: case 7: *v = 65535; break;         // max grid y, z
    case 8: *v = DEFAULT_DYNAMIC_SMEM; break;  // shared memory per block
    case 10: *v = 32; break;                   // warp size
    case 16: *v = 4; break;                    // multiprocessors
    case 75: *v = cc_major; break;             // compute capability
    case 76: *v = cc_minor; break;
    case 97: *v = MAX_DYNAMIC_SMEM; break;     // shared memory per block, opt-in
    case 115: *v = 1; break;                   // memory pools
    default: *v = 0; break;
    }
    return CUDA_SUCCESS;
}

int cuDevicePrimaryCtxRetain(void** ctx, int) {
    *ctx = &context_token;
    return CUDA_SUCCESS;
}
int cuDevicePrimaryCtxRelease_v2(int) { return CUDA_SUCCESS; }
int cuCtxSetCurrent(void*) { return CUDA_SUCCESS; }
int cuCtxGetCurrent(void** ctx) {
    *ctx = &context_token;
    return CUDA_SUCCESS;
}
int cuCtxGetDevice(int* d) {
    *d = 0;
    return CUDA_SUCCESS;
}
int cuCtxSynchronize() { return CUDA_SUCCESS; }

int cuStreamCreate(void** s, unsigned) {
    *s = &stream_token;
    return CUDA_SUCCESS;
}
int cuStreamDestroy_v2(void*) { return CUDA_SUCCESS; }
int cuStreamSynchronize(void*) { return CUDA_SUCCESS; }
int cuStreamWaitEvent(void*, void*, unsigned) { return CUDA_SUCCESS; }
int cuStreamIsCapturing(void*, int* status) {
    *status = 0;
    return CUDA_SUCCESS;
}

int cuEventCreate(double** e, unsigned) {
    *e = new double(now_ms());
    return CUDA_SUCCESS;
}
int cuEventDestroy_v2(double* e) {
    delete e;
    return CUDA_SUCCESS;
}
int cuEventRecord(double* e, void*) {
    *e = now_ms();
    return CUDA_SUCCESS;
}
int cuEventSynchronize(double*) { return CUDA_SUCCESS; }
int cuEventQuery(double*) { return CUDA_SUCCESS; }
int cuEventElapsedTime(float* ms, double* a, double* b) {
    *ms = (float)(*b - *a);
    return CUDA_SUCCESS;
}
int cuEventElapsedTime_v2(float* ms, double* a, double* b) { return cuEventElapsedTime(ms, a, b); }

int cuMemAlloc_v2(unsigned long long* p, size_t n) { return allocate(p, n); }
int cuMemAllocAsync(unsigned long long* p, size_t n, void*) { return allocate(p, n); }
int cuMemFree_v2(unsigned long long p) { return release(p); }
int cuMemFreeAsync(unsigned long long p, void*) { return release(p); }
int cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
    std::lock_guard<std::mutex> g(mem_lock);
    *free_bytes = total_bytes - used_bytes;
    *total = total_bytes;
    return CUDA_SUCCESS;
}
int cuDeviceGetDefaultMemPool(void** pool, int) {
    *pool = &pool_token;
    return CUDA_SUCCESS;
}
int cuMemPoolSetAttribute(void*, int, void*) { return CUDA_SUCCESS; }
int cuMemPoolGetAttribute(void*, int, unsigned long long* v) {
    *v = 0;
    return CUDA_SUCCESS;
}
int cuMemPoolTrimTo(void*, size_t) { return CUDA_SUCCESS; }

int cuMemcpyHtoD_v2(unsigned long long dst, const void* src, size_t n) {
    memcpy((void*)dst, src, n);
    return CUDA_SUCCESS;
}
int cuMemcpyHtoDAsync_v2(unsigned long long dst, const void* src, size_t n, void*) {
    return cuMemcpyHtoD_v2(dst, src, n);
}
int cuMemcpyDtoH_v2(void* dst, unsigned long long src, size_t n) {
    memcpy(dst, (const void*)src, n);
    return CUDA_SUCCESS;
}
int cuMemcpyDtoHAsync_v2(void* dst, unsigned long long src, size_t n, void*) {
    return cuMemcpyDtoH_v2(dst, src, n);
}
int cuMemcpyDtoD_v2(unsigned long long dst, unsigned long long src, size_t n) {
    memmove((void*)dst, (const void*)src, n);
    return CUDA_SUCCESS;
}
int cuMemcpyDtoDAsync_v2(unsigned long long dst, unsigned long long src, size_t n, void*) {
    return cuMemcpyDtoD_v2(dst, src, n);
}
int cuMemsetD8_v2(unsigned long long dst, unsigned char v, size_t n) {
    memset((void*)dst, v, n);
    return CUDA_SUCCESS;
}
int cuMemsetD8Async(unsigned long long dst, unsigned char v, size_t n, void*) {
    return cuMemsetD8_v2(dst, v, n);
}
int cuMemsetD32_v2(unsigned long long dst, unsigned v, size_t n) {
    for (size_t i = 0; i < n; i++) ((unsigned*)dst)[i] = v;
    return CUDA_SUCCESS;
}
int cuMemsetD32Async(unsigned long long dst, unsigned v, size_t n, void*) {
    return cuMemsetD32_v2(dst, v, n);
}

int cuModuleLoadData(Module** m, const void* image) {
    static const char magic[] = "//nemotron-rt-cuda-emulator\n";
    const char* s = (const char*)image;
    if (strncmp(s, magic, sizeof magic - 1) != 0) return CUDA_ERROR_INVALID_IMAGE;
    std::string path(s + sizeof magic - 1);
    while (!path.empty() && (path.back() == '\n' || path.back() == '\0')) path.pop_back();
    void* lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        fprintf(stderr, "cuda emulator: cannot load %s: %s\n", path.c_str(), dlerror());
        return CUDA_ERROR_INVALID_IMAGE;
    }
    *m = new Module{lib, {}};
    return CUDA_SUCCESS;
}
int cuModuleUnload(Module* m) {
    if (!m) return CUDA_ERROR_INVALID_HANDLE;
    for (auto& f : m->functions) delete f.second;
    dlclose(m->lib);
    delete m;
    return CUDA_SUCCESS;
}
int cuModuleGetFunction(Function** f, Module* m, const char* name) {
    if (!m) return CUDA_ERROR_INVALID_HANDLE;
    auto it = m->functions.find(name);
    if (it == m->functions.end()) {
        void* sym = dlsym(m->lib, (std::string("emu_launch_") + name).c_str());
        void* sizes_sym = dlsym(m->lib, (std::string("emu_args_") + name).c_str());
        if (!sym || !sizes_sym) return CUDA_ERROR_NOT_FOUND;
        const unsigned* sizes = nullptr;
        int n = ((ArgSizes)sizes_sym)(&sizes);
        it = m->functions
                 .emplace(name, new Function{(Entry)sym, name, DEFAULT_DYNAMIC_SMEM,
                                             std::vector<unsigned>(sizes, sizes + n)})
                 .first;
    }
    *f = it->second;
    return CUDA_SUCCESS;
}
int cuFuncGetAttribute(int* v, int attr, Function* f) {
    if (!f) return CUDA_ERROR_INVALID_HANDLE;
    *v = attr == 8 ? f->max_dynamic_smem : (attr == 0 ? 1024 : 0);
    return CUDA_SUCCESS;
}
int cuFuncSetAttribute(Function* f, int attr, int v) {
    if (!f) return CUDA_ERROR_INVALID_HANDLE;
    if (attr == 8) {  // max dynamic shared memory
        if (v < 0 || v > MAX_DYNAMIC_SMEM) return CUDA_ERROR_INVALID_VALUE;
        f->max_dynamic_smem = v;
    }
    return CUDA_SUCCESS;
}
int cuFuncSetCacheConfig(Function*, int) { return CUDA_SUCCESS; }

int cuLaunchKernel(Function* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                   unsigned bz, unsigned smem, void*, void** params, void** extra) {
    if (!f) return CUDA_ERROR_INVALID_HANDLE;
    if (extra || (!params)) return CUDA_ERROR_INVALID_VALUE;
    return run_kernel(f, Dim3{gx, gy, gz}, Dim3{bx, by, bz}, smem, params);
}

int cuGraphCreate(Graph** g, unsigned flags) {
    if (!g || flags != 0) return CUDA_ERROR_INVALID_VALUE;
    *g = new Graph;
    return CUDA_SUCCESS;
}
int cuGraphDestroy(Graph* g) {
    if (!g) return CUDA_ERROR_INVALID_HANDLE;
    delete g;
    return CUDA_SUCCESS;
}
int cuGraphAddKernelNode_v2(Node** out, Graph* g, Node* const* deps, size_t ndeps,
                            const KernelNodeParams* p) {
    if (!out || !g || !p || (ndeps && !deps)) return CUDA_ERROR_INVALID_VALUE;
    for (size_t i = 0; i < ndeps; i++) {
        bool known = false;
        for (Node* n : g->nodes) known = known || n == deps[i];
        if (!known) return CUDA_ERROR_INVALID_VALUE;
    }
    Node n;
    int rc = make_node(p, n);
    if (rc != CUDA_SUCCESS) return rc;
    g->nodes.push_back(new Node(std::move(n)));
    *out = g->nodes.back();
    return CUDA_SUCCESS;
}
int cuGraphInstantiateWithFlags(GraphExec** out, Graph* g, unsigned long long flags) {
    if (!out || !g || flags != 0) return CUDA_ERROR_INVALID_VALUE;
    GraphExec* e = new GraphExec;
    for (Node* n : g->nodes) {
        e->index[n] = e->nodes.size();
        e->nodes.push_back(*n);
    }
    *out = e;
    return CUDA_SUCCESS;
}
int cuGraphExecDestroy(GraphExec* e) {
    if (!e) return CUDA_ERROR_INVALID_HANDLE;
    delete e;
    return CUDA_SUCCESS;
}
// As the driver: the node keeps its kernel (changing it is refused here), and the new
// parameters are copied.
int cuGraphExecKernelNodeSetParams_v2(GraphExec* e, Node* node, const KernelNodeParams* p) {
    if (!e || !p) return CUDA_ERROR_INVALID_VALUE;
    auto it = e->index.find(node);
    if (it == e->index.end()) return CUDA_ERROR_INVALID_VALUE;
    Node n;
    int rc = make_node(p, n);
    if (rc != CUDA_SUCCESS) return rc;
    if (n.f != e->nodes[it->second].f) return CUDA_ERROR_INVALID_VALUE;
    e->nodes[it->second] = std::move(n);
    return CUDA_SUCCESS;
}
int cuGraphLaunch(GraphExec* e, void*) {
    if (!e) return CUDA_ERROR_INVALID_HANDLE;
    for (Node& n : e->nodes) {
        std::vector<void*> ptrs;
        for (auto& a : n.args) ptrs.push_back(a.data());
        int rc = run_kernel(n.f, n.grid, n.block, n.smem, ptrs.data());
        if (rc != CUDA_SUCCESS) return rc;
    }
    return CUDA_SUCCESS;
}

}  // extern "C"
