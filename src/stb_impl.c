/* stb_impl.c: the one translation unit that holds the stb implementations (decode, encode,
 * resize). Kept apart because stb is slow to compile and noisy under strict warnings; every
 * other file includes the headers only. Not linked with -lstb (BUILD-NOTES.md). */
#include <assert.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STB_IMAGE_IMPLEMENTATION
#include <stb_image.h>

/* stb_image_write's JPEG bit writer shifts ints into the sign bit (stb_image_write.h v1.16,
 * stbiw__jpg_writeBits): harmless with gcc, but fatal under -fsanitize=undefined with
 * -fno-sanitize-recover (make test SAN=1). Its functions are all `static`, so that keyword is
 * the only hook to exempt them from the shift check alone; the attribute is ignored (and the
 * warning silenced) on static variables. The system headers are included above, untouched. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wattributes"
#define static static __attribute__((no_sanitize("shift")))
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb_image_write.h>
#undef static
#pragma GCC diagnostic pop

/* stb_image_resize's one work buffer per call comes from the caller's reusable buffer
 * (alloc_context = camo_grow_buf *, see data_internal.h), so a loader worker allocates
 * nothing per sample; a NULL context falls back to malloc. */
#include "data_internal.h"
#define STBIR_MALLOC(size, c) ((c) ? camo_grow((camo_grow_buf *)(c), (size)) : malloc(size))
#define STBIR_FREE(p, c) ((c) ? (void)0 : free(p))
/* v0.97 asserts that a downsampling kernel's weights sum to about 1 before it renormalises
 * them; for some small odd ratios (9 -> 5 columns) they sum to 1.1+ and the renormalised
 * result is still right, so the check is turned off rather than aborting a run. */
#define STBIR_ASSERT(x) ((void)0)
#define STB_IMAGE_RESIZE_IMPLEMENTATION
#include <stb_image_resize.h>
