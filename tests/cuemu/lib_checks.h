/* lib_checks.h: what the cuBLAS and cuDNN stand-ins (blas.cpp, dnn.cpp) share: the registry
 * of live handles and descriptors, and argument checks. Test infrastructure only. */
#ifndef CUEMU_LIB_CHECKS_H
#define CUEMU_LIB_CHECKS_H

#include "cuemu_internal.h"

#include <stdint.h>

#include <mutex>
#include <unordered_set>

namespace cuemu {

/* Live library objects: using a destroyed (or never created) handle or descriptor is
 * undefined behaviour in the real libraries; here it is fatal. Never destroyed, so stream
 * workers finishing after exit() cannot touch a dead registry. */
class Registry {
  public:
    void add(const void *p) {
        std::lock_guard<std::mutex> g(mu_);
        live_.insert(p);
    }
    bool remove(const void *p) {
        std::lock_guard<std::mutex> g(mu_);
        return live_.erase(p) != 0;
    }
    bool has(const void *p) {
        std::lock_guard<std::mutex> g(mu_);
        return live_.count(p) != 0;
    }

  private:
    std::mutex mu_;
    std::unordered_set<const void *> live_;
};

inline Registry &live_objects() {
    static Registry *r = new Registry;
    return *r;
}

inline bool overlaps(const void *a, size_t na, const void *b, size_t nb) {
    uintptr_t pa = (uintptr_t)a, pb = (uintptr_t)b;
    return na && nb && pa < pb + nb && pb < pa + na;
}

/* alpha/beta: host pointers. A device pointer there would be dereferenced on the host by the
 * real library (a crash); in the emulation device memory is host memory, so it would work
 * silently. STRICTER: fatal. */
inline void check_host_scalar(const void *p, const char *fn, const char *name) {
    if (is_device_range(p, sizeof(float), -1))
        fatal("%s: %s (%p) is a device pointer, but scalars are read from host memory "
                     "(host pointer mode)",
                     fn, name, p);
}

inline size_t round256(size_t x) { return (x + 255) & ~(size_t)255; }

} // namespace cuemu

#endif
