/* Convolution geometry shared by the portable kernels (k_conv.c) and the x86 SIMD path
 * (k_conv_x86.c). 1-d convolutions are 2-d with a height of 1. */
#ifndef LE_CONV_H
#define LE_CONV_H

#include "le_internal.h"

typedef struct {
    int64_t n, c, h, w;           /* input */
    int64_t cout, cg, kh, kw;     /* weight: cg = input channels per group */
    int64_t oh, ow, groups, coutg;
    int64_t sh, sw, dh, dw, pt, pl;
    int64_t shift, bits_o;
    int transposed;
} le_conv_geom;

/* Nonzero when this build has the x86 int8 GEMM path (AVX2; compiled with -mavx2 or
 * -march=native on such a CPU, and without -DLE_PORTABLE). */
int le_conv_simd_available(void);
/* Scratch bytes the x86 path needs for g (int8 data and weights, sums within int32); 0 when
 * g is outside its limits (then the portable kernel runs). */
size_t le_conv_i8_simd_scratch(const le_conv_geom *g);
/* y = sat(rs(conv(x, W) + B, shift)) for int8 x and W, as the portable kernels compute it. */
void le_conv_i8_simd(const le_conv_geom *g, const int8_t *x, const int8_t *w,
                     const int32_t *bias, const le_tensor *y, uint8_t *scratch);

#endif
