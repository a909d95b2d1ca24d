/* cuemu: __half as 16 bits with round-to-nearest-even conversions, host code (see
 * cuda_runtime.h). */
#ifndef CUEMU_CUDA_FP16_H
#define CUEMU_CUDA_FP16_H

#include <stdint.h>
#include <string.h>

typedef struct __half { uint16_t x; } __half;

static inline uint32_t cuemu_f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float cuemu_bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

static inline __half __float2half(float f) {
    uint32_t u = cuemu_f32_bits(f), sign = (u >> 16) & 0x8000u;
    uint32_t a = u & 0x7fffffffu;
    __half h;
    if (a >= 0x7f800000u) { /* inf or NaN */
        h.x = (uint16_t)(sign | 0x7c00u | (a > 0x7f800000u ? 0x200u : 0));
        return h;
    }
    if (a >= 0x477ff000u) { /* rounds to >= 65520: inf */
        h.x = (uint16_t)(sign | 0x7c00u);
        return h;
    }
    if (a < 0x38800000u) { /* below 2^-14: subnormal half, exact RNE by float addition */
        float m = cuemu_bits_f32(a) + 0.5f; /* 0.5 = 2^-1: ulp of the sum is 2^-24 */
        h.x = (uint16_t)(sign | (cuemu_f32_bits(m) - 0x3f000000u));
        return h;
    }
    uint32_t mant_odd = (a >> 13) & 1u;
    a += 0xfffu + mant_odd; /* round to nearest even on the 13 dropped bits */
    h.x = (uint16_t)(sign | ((a - 0x38000000u) >> 13));
    return h;
}

static inline float __half2float(__half h) {
    uint32_t sign = (uint32_t)(h.x & 0x8000u) << 16, e = (h.x >> 10) & 0x1fu, m = h.x & 0x3ffu;
    if (e == 0x1f) return cuemu_bits_f32(sign | 0x7f800000u | (m << 13));
    if (e == 0) { /* subnormal or zero: m * 2^-24 */
        float v = (float)m * (1.0f / 16777216.0f);
        return sign ? -v : v;
    }
    return cuemu_bits_f32(sign | ((e + 112) << 23) | (m << 13));
}

#endif
