/* cuemu: __nv_bfloat16 as the top 16 bits of a float, round-to-nearest-even (see
 * cuda_runtime.h). */
#ifndef CUEMU_CUDA_BF16_H
#define CUEMU_CUDA_BF16_H

#include "cuda_fp16.h"

typedef struct __nv_bfloat16 { uint16_t x; } __nv_bfloat16;

static inline __nv_bfloat16 __float2bfloat16(float f) {
    uint32_t u = cuemu_f32_bits(f);
    __nv_bfloat16 b;
    if ((u & 0x7fffffffu) > 0x7f800000u) { /* NaN stays NaN */
        b.x = (uint16_t)((u >> 16) | 0x40u);
        return b;
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    b.x = (uint16_t)(u >> 16);
    return b;
}

static inline float __bfloat162float(__nv_bfloat16 b) {
    return cuemu_bits_f32((uint32_t)b.x << 16);
}

#endif
