/* cpu_rows.c: copy_rows, a block of C channels moved between tensors of different row
 * strides (backend.h): what the slice layer's forward and backward are. */
#include "cpu_internal.h"

#include <string.h>

#include "core/common.h"

#define CPU_ROWS_PAR_MIN 32768 /* values below which one thread is faster */

static void cpu_copy_rows(camo_backend *be, int accumulate, int M, int C, float *dst, int ldd,
                          const float *src, int lds) {
    CAMO_ASSERT(M >= 0 && C >= 0 && C <= ldd && C <= lds);
#pragma omp parallel for if ((size_t)M * C >= CPU_ROWS_PAR_MIN) num_threads(cpu_threads(be))
    for (int m = 0; m < M; m++) {
        float *d = dst + (size_t)m * ldd;
        const float *s = src + (size_t)m * lds;
        if (accumulate)
            for (int c = 0; c < C; c++) d[c] += s[c];
        else
            memcpy(d, s, (size_t)C * sizeof(float));
    }
}

void cpu_register_rows(camo_backend *be) { be->copy_rows = cpu_copy_rows; }
