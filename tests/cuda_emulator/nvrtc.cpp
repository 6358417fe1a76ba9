// NVRTC, emulated for the CUDA emulator: "compiling" a kernel source builds it with the host
// C++ compiler into a shared library, behind kernel_runtime.h, and the "PTX" handed back names
// that library for the emulated driver (driver.cpp) to load. Every `extern "C" __global__`
// kernel gets an entry point `emu_launch_<name>` that runs it over a grid, and `emu_args_<name>`
// that gives its parameters' sizes (graph nodes copy them).
//
// Built by tests/support/cuda_emulator.rs with EMU_RUNTIME_HEADER, EMU_CACHE_DIR and EMU_CXX
// defined. Libraries are cached by a hash of everything that goes into them.

#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <unistd.h>

namespace {

enum {
    NVRTC_SUCCESS = 0,
    NVRTC_ERROR_INVALID_INPUT = 3,
    NVRTC_ERROR_INVALID_PROGRAM = 4,
    NVRTC_ERROR_COMPILATION = 6,
};

struct Program {
    std::string source, name, image, log;
};

std::string read_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    std::stringstream s;
    s << f.rdbuf();
    return s.str();
}

unsigned long long fnv1a(const std::string& s, unsigned long long h = 1469598103934665603ull) {
    for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
    return h;
}

bool ident_char(char c) { return std::isalnum((unsigned char)c) || c == '_'; }

size_t skip_space(const std::string& s, size_t i) {
    while (i < s.size() && std::isspace((unsigned char)s[i])) i++;
    return i;
}

// `extern __shared__ [__align__(N)] T name[];` becomes a pointer to the launch's dynamic shared
// memory.
std::string rewrite_dynamic_shared(const std::string& src) {
    std::string out;
    size_t i = 0;
    const std::string key = "extern __shared__";
    for (;;) {
        size_t at = src.find(key, i);
        if (at == std::string::npos) break;
        size_t end = src.find(';', at);
        size_t open = src.rfind('[', end);
        if (end == std::string::npos || open == std::string::npos || open < at) break;
        std::string decl = src.substr(at + key.size(), open - at - key.size());
        size_t n = decl.size();
        while (n > 0 && std::isspace((unsigned char)decl[n - 1])) n--;
        size_t b = n;
        while (b > 0 && ident_char(decl[b - 1])) b--;
        std::string name = decl.substr(b, n - b), type = decl.substr(0, b);
        // `__align__(N)` (dynamic shared memory here is 16-byte aligned, as CUDA's is at least).
        size_t al = type.find("__align__(");
        if (al != std::string::npos) type.erase(al, type.find(')', al) + 1 - al);
        out += src.substr(i, at - i);
        out += type + "* " + name + " = (" + type + "*)emu::cur_launch->dyn_smem;";
        i = end + 1;
    }
    return out + src.substr(i);
}

// Names of the `extern "C" __global__ void [__launch_bounds__(...)] name(` kernels.
std::vector<std::string> kernel_names(const std::string& src) {
    std::vector<std::string> names;
    const std::string key = "extern \"C\" __global__ void";
    for (size_t at = src.find(key); at != std::string::npos; at = src.find(key, at + 1)) {
        size_t i = skip_space(src, at + key.size());
        if (src.compare(i, 17, "__launch_bounds__") == 0) {
            i = src.find(')', i);
            if (i == std::string::npos) break;
            i = skip_space(src, i + 1);
        }
        size_t b = i;
        while (i < src.size() && ident_char(src[i])) i++;
        if (i > b) names.push_back(src.substr(b, i - b));
    }
    return names;
}

int compile(Program& p) {
    std::string src = rewrite_dynamic_shared(p.source);
    src += "\n// Entry points for the emulated driver.\n";
    for (const std::string& k : kernel_names(p.source)) {
        src += "extern \"C\" int emu_launch_" + k +
               "(void** args, dim3 grid, dim3 block, unsigned smem, const char** error) {\n"
               "    return emu::launch([](void** a) { emu::call(" + k +
               ", a); }, args, grid, block, smem, error);\n}\n"
               "extern \"C\" int emu_args_" + k + "(const unsigned** sizes) {\n"
               "    return emu::arg_sizes(" + k + ", sizes);\n}\n";
    }
    const std::string flags = "-std=c++17 -O2 -g0 -fPIC -shared -w";
    unsigned long long h = fnv1a(read_file(EMU_RUNTIME_HEADER), fnv1a(flags, fnv1a(src)));
    char hex[17];
    snprintf(hex, sizeof hex, "%016llx", h);
    std::string dir = EMU_CACHE_DIR, lib = dir + "/" + hex + ".so";
    if (access(lib.c_str(), R_OK) != 0) {
        std::string tmp = dir + "/" + hex + "." + std::to_string(getpid()) + "." +
                          std::to_string((unsigned long long)(size_t)&p);
        {
            std::ofstream f(tmp + ".cpp", std::ios::binary);
            f << src;
        }
        // Quoted: the target folder may have spaces in its path.
        auto q = [](const std::string& path) { return "'" + path + "'"; };
        std::string cmd = q(EMU_CXX) + " " + flags + " -include " + q(EMU_RUNTIME_HEADER) + " " +
                          q(tmp + ".cpp") + " -o " + q(tmp + ".so") + " > " + q(tmp + ".log") +
                          " 2>&1";
        int rc = std::system(cmd.c_str());
        p.log = read_file(tmp + ".log");
        std::remove((tmp + ".log").c_str());
        std::remove((tmp + ".cpp").c_str());
        if (rc != 0) {
            std::remove((tmp + ".so").c_str());
            p.log = p.name + ": the host compiler rejected the kernel (" + cmd + "):\n" + p.log;
            return NVRTC_ERROR_COMPILATION;
        }
        // Another process may build the same library at the same time; the rename is atomic.
        std::rename((tmp + ".so").c_str(), lib.c_str());
    }
    p.image = "//nemotron-rt-cuda-emulator\n" + lib + "\n";
    return NVRTC_SUCCESS;
}

}  // namespace

extern "C" {

int nvrtcVersion(int* major, int* minor) {
    *major = 12;
    *minor = 8;
    return NVRTC_SUCCESS;
}

const char* nvrtcGetErrorString(int r) {
    switch (r) {
    case NVRTC_SUCCESS: return "NVRTC_SUCCESS";
    case NVRTC_ERROR_INVALID_INPUT: return "NVRTC_ERROR_INVALID_INPUT";
    case NVRTC_ERROR_INVALID_PROGRAM: return "NVRTC_ERROR_INVALID_PROGRAM";
    case NVRTC_ERROR_COMPILATION: return "NVRTC_ERROR_COMPILATION";
    default: return "NVRTC_ERROR (emulated)";
    }
}

int nvrtcCreateProgram(Program** prog, const char* src, const char* name, int num_headers,
                       const char* const*, const char* const*) {
    if (!prog || !src || num_headers != 0) return NVRTC_ERROR_INVALID_INPUT;
    *prog = new Program{src, name ? name : "kernel.cu", "", ""};
    return NVRTC_SUCCESS;
}

int nvrtcDestroyProgram(Program** prog) {
    if (!prog || !*prog) return NVRTC_ERROR_INVALID_PROGRAM;
    delete *prog;
    *prog = nullptr;
    return NVRTC_SUCCESS;
}

int nvrtcCompileProgram(Program* p, int, const char* const*) {
    return p ? compile(*p) : NVRTC_ERROR_INVALID_PROGRAM;
}

int nvrtcGetPTXSize(Program* p, size_t* n) {
    if (!p) return NVRTC_ERROR_INVALID_PROGRAM;
    *n = p->image.size() + 1;
    return NVRTC_SUCCESS;
}

int nvrtcGetPTX(Program* p, char* out) {
    if (!p) return NVRTC_ERROR_INVALID_PROGRAM;
    memcpy(out, p->image.c_str(), p->image.size() + 1);
    return NVRTC_SUCCESS;
}

int nvrtcGetProgramLogSize(Program* p, size_t* n) {
    if (!p) return NVRTC_ERROR_INVALID_PROGRAM;
    *n = p->log.size() + 1;
    return NVRTC_SUCCESS;
}

int nvrtcGetProgramLog(Program* p, char* out) {
    if (!p) return NVRTC_ERROR_INVALID_PROGRAM;
    memcpy(out, p->log.c_str(), p->log.size() + 1);
    return NVRTC_SUCCESS;
}

}  // extern "C"
