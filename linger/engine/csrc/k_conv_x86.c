/* int8 forward convolution as an implicit GEMM with x86 AVX2 (AVX-VNNI where the compiler
 * targets it). Same integers as the portable kernel in k_conv.c: every product and every int32
 * sum is exact (|x|, |W| <= 128 and K = cg*kh*kw < 2**17, so |sum| < 2**31), then the same
 * requantization (in int32 where its bound below holds, else le_requant in int64).
 *
 * Layout. The zero-padded input of each group channel is split into sh*sw phase planes
 * P_ab[i][j] = x_pad[i*sh + a][j*sw + b], so that tap (ky, kx) of output (oy, ox) is
 * P_ab[oy + ky*dh/sh][ox + kx*dw/sw] with a = ky*dh % sh, b = kx*dw % sw: for every tap the
 * inputs of consecutive outputs are consecutive bytes of one plane. Outputs are computed on a
 * "virtual" grid oh x ws (ws >= ow: the plane width); the ws - ow extra columns are computed
 * and dropped. Per tile of TP virtual positions the taps are widened to int16 and interleaved
 * in pairs (k, k+1), the layout pmaddwd / vpdpwssd multiply-add: 16 products per instruction.
 * Weights are widened to int16 pairs once per call. Built without AVX2 (or with -DLE_PORTABLE),
 * this file only reports that the path is absent. */
#include "le_conv.h"

#if defined(__AVX2__) && !defined(LE_PORTABLE)
#include <immintrin.h>

#define TP 64                                   /* virtual positions per tile (4 x 16) */

#if defined(__AVXVNNI__)
#define DP(acc, b, w) _mm256_dpwssd_avx_epi32(acc, b, w)
#elif defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define DP(acc, b, w) _mm256_dpwssd_epi32(acc, b, w)
#else
#define DP(acc, b, w) _mm256_add_epi32(acc, _mm256_madd_epi16(b, w))
#endif

typedef struct {
    int64_t k, k2, hs, ws, plane, pv, tiles, coutg4;
    size_t planes_at, w_at, b_at, taps_at, size;
} plan;

static size_t round32(size_t n) { return (n + 31u) & ~(size_t)31u; }

/* The largest part of the scratch this path takes (bytes); a geometry needing more (absurd
 * strides, dilations or paddings) runs on the portable kernel. Keeps every product below in
 * int64 and the total within a 32-bit size_t. */
#define PART_MAX ((int64_t)1 << 28)

/* 0 when the geometry is outside this path's limits */
static int make_plan(const le_conv_geom *g, plan *p) {
    int64_t hpad, wpad, reach, planes;
    if (g->cg < 1 || g->sh > 64 || g->sw > 64 || g->dh > 4096 || g->dw > 4096
        || g->oh > PART_MAX || g->ow > PART_MAX || g->coutg > PART_MAX)
        return 0;
    hpad = (g->oh - 1) * g->sh + (g->kh - 1) * g->dh + 1;      /* < 2**35 + 2**29 */
    wpad = (g->ow - 1) * g->sw + (g->kw - 1) * g->dw + 1;
    p->k = g->cg * g->kh * g->kw;                              /* < 2**17 (int8 path) */
    p->k2 = (p->k + 1) / 2;
    p->hs = (hpad + g->sh - 1) / g->sh;
    p->ws = (wpad + g->sw - 1) / g->sw;
    if (p->hs > PART_MAX || p->ws > PART_MAX || p->hs * p->ws > PART_MAX
        || g->oh * p->ws > PART_MAX)
        return 0;
    p->pv = g->oh * p->ws;
    p->tiles = (p->pv + TP - 1) / TP;
    /* the farthest byte a tile reads: last virtual position + the largest tap offset + 1 */
    reach = p->tiles * TP + ((g->kh - 1) * g->dh / g->sh) * p->ws + (g->kw - 1) * g->dw / g->sw;
    p->plane = reach > p->hs * p->ws ? reach : p->hs * p->ws;  /* < 2**58: checked below */
    planes = g->cg * g->sh * g->sw;                            /* < 2**29 */
    p->coutg4 = (g->coutg + 3) / 4 * 4;
    if (p->plane > PART_MAX / planes || p->coutg4 * p->k2 > PART_MAX / 4) return 0;
    p->planes_at = 0;
    p->w_at = round32((size_t)(planes * p->plane));
    p->b_at = p->w_at + round32((size_t)(p->coutg4 * p->k2) * 4u);
    p->taps_at = p->b_at + (size_t)(TP * p->k2) * 4u;
    p->size = p->taps_at + (size_t)(2 * p->k2) * sizeof(int64_t);
    return 1;
}

int le_conv_simd_available(void) { return 1; }

size_t le_conv_i8_simd_scratch(const le_conv_geom *g) {
    plan p;
    return make_plan(g, &p) ? p.size : 0;
}

/* the phase planes of one group's channels (zeros outside the input) */
static void fill_planes(const le_conv_geom *g, const plan *p, const int8_t *xg, int8_t *planes) {
    int64_t ic, a, b, i, j;
    memset(planes, 0, (size_t)(g->cg * g->sh * g->sw * p->plane));
    for (ic = 0; ic < g->cg; ic++)
        for (a = 0; a < g->sh; a++)
            for (b = 0; b < g->sw; b++) {
                int8_t *pl = planes + ((ic * g->sh + a) * g->sw + b) * p->plane;
                /* columns j whose input column j*sw + b - pl lies in [0, w) */
                int64_t j0 = g->pl - b > 0 ? (g->pl - b + g->sw - 1) / g->sw : 0;
                int64_t j1 = (g->w + g->pl - b + g->sw - 1) / g->sw;
                if (j1 > p->ws) j1 = p->ws;
                for (i = 0; i < p->hs; i++) {
                    int64_t iy = i * g->sh + a - g->pt;
                    const int8_t *xr;
                    if (iy < 0 || iy >= g->h || j0 >= j1) continue;
                    xr = xg + (ic * g->h + iy) * g->w + (j0 * g->sw + b - g->pl);
                    if (g->sw == 1) memcpy(pl + i * p->ws + j0, xr, (size_t)(j1 - j0));
                    else
                        for (j = j0; j < j1; j++) pl[i * p->ws + j] = xr[(j - j0) * g->sw];
                }
            }
}

/* int16 weight pairs (W[oc][2q], W[oc][2q+1]) as int32, rows padded to a multiple of 4 */
static void fill_weights(const le_conv_geom *g, const plan *p, const int8_t *wg, int32_t *wp) {
    int64_t oc, q;
    for (oc = 0; oc < p->coutg4; oc++)
        for (q = 0; q < p->k2; q++) {
            const int8_t *r = wg + oc * p->k;
            uint32_t lo = oc < g->coutg ? (uint16_t)(int16_t)r[2 * q] : 0u;
            uint32_t hi = oc < g->coutg && 2 * q + 1 < p->k ? (uint16_t)(int16_t)r[2 * q + 1] : 0u;
            wp[oc * p->k2 + q] = (int32_t)(lo | hi << 16);
        }
}

/* offs[k]: where in the planes tap k reads for virtual position 0 (k < 2*k2; an odd K's last
 * pair gets -1: zeros) */
static void tap_offsets(const le_conv_geom *g, const plan *p, int64_t *offs) {
    int64_t ic, ky, kx, k = 0;
    for (ic = 0; ic < g->cg; ic++)
        for (ky = 0; ky < g->kh; ky++)
            for (kx = 0; kx < g->kw; kx++) {
                int64_t dy = ky * g->dh, dx = kx * g->dw;
                offs[k++] = ((ic * g->sh + dy % g->sh) * g->sw + dx % g->sw) * p->plane
                            + (dy / g->sh) * p->ws + dx / g->sw;
            }
    if (k < 2 * p->k2) offs[k] = -1;
}

static __m256i widen16(const int8_t *s) {
    return _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(const void *)s));
}

/* the tile's taps as interleaved int16 pairs: block m (16 positions), pair q at
 * b[(m * k2 + q) * 2 + {0, 1}] (positions 0-3 8-11, then 4-7 12-15: unpack works per lane) */
static void fill_tile(const plan *p, const int8_t *planes, const int64_t *offs, int64_t v0,
                      int64_t nb, __m256i *b) {
    int64_t q, m;
    for (q = 0; q < p->k2; q++) {
        const int8_t *s0 = planes + offs[2 * q] + v0;
        const int8_t *s1 = offs[2 * q + 1] >= 0 ? planes + offs[2 * q + 1] + v0 : NULL;
        for (m = 0; m < nb; m++) {
            __m256i lo = widen16(s0 + 16 * m);
            __m256i hi = s1 ? widen16(s1 + 16 * m) : _mm256_setzero_si256();
            _mm256_storeu_si256(b + (m * p->k2 + q) * 2, _mm256_unpacklo_epi16(lo, hi));
            _mm256_storeu_si256(b + (m * p->k2 + q) * 2 + 1, _mm256_unpackhi_epi16(lo, hi));
        }
    }
}

#define STEP(J, WV)                                                                            \
    {                                                                                          \
        __m256i v_ = _mm256_set1_epi32(WV);                                                    \
        a##J##0 = DP(a##J##0, b0, v_);                                                         \
        a##J##1 = DP(a##J##1, b1, v_);                                                         \
    }
/* lanes back in position order: (0-3 8-11, 4-7 12-15) -> 0-7, 8-15 */
#define PUT(J)                                                                                 \
    {                                                                                          \
        __m256i *o_ = (__m256i *)(void *)(out + (J) * TP + 16 * m);                            \
        _mm256_storeu_si256(o_, _mm256_permute2x128_si256(a##J##0, a##J##1, 0x20));           \
        _mm256_storeu_si256(o_ + 1, _mm256_permute2x128_si256(a##J##0, a##J##1, 0x31));       \
    }

/* int32 sums of four weight rows (w, stride k2) with the tile's nb blocks: out[j][position] */
static void gemm4(const int32_t *w, int64_t k2, const __m256i *b, int64_t nb, int32_t *out) {
    const int32_t *w1 = w + k2, *w2 = w1 + k2, *w3 = w2 + k2;
    int64_t m, q;
    for (m = 0; m < nb; m++) {
        const __m256i *bm = b + m * k2 * 2;
        __m256i a00 = _mm256_setzero_si256(), a01 = a00, a10 = a00, a11 = a00, a20 = a00,
                a21 = a00, a30 = a00, a31 = a00;
        for (q = 0; q < k2; q++) {
            __m256i b0 = _mm256_loadu_si256(bm + 2 * q), b1 = _mm256_loadu_si256(bm + 2 * q + 1);
            STEP(0, w[q])
            STEP(1, w1[q])
            STEP(2, w2[q])
            STEP(3, w3[q])
        }
        PUT(0)
        PUT(1)
        PUT(2)
        PUT(3)
    }
}

/* q[i] = sat(rs(acc[i] + bias, s)) for one tile, by the 32-bit route of le_rs32_fits (the
 * caller's check) */
static void requant_tile(const int32_t *acc, int64_t n, int64_t bias, int s, int32_t lo,
                         int32_t hi, int8_t *q) {
    const __m256i add = _mm256_set1_epi32((int32_t)le_rs32_add(bias, s));
    const __m256i sub = _mm256_set1_epi32(1 << (30 - s)), vlo = _mm256_set1_epi32(lo),
                  vhi = _mm256_set1_epi32(hi);
    const __m128i cnt = _mm_cvtsi32_si128(s);
    int64_t i;
    for (i = 0; i < n; i += 16) {
        __m256i v0 = _mm256_loadu_si256((const __m256i *)(const void *)(acc + i));
        __m256i v1 = _mm256_loadu_si256((const __m256i *)(const void *)(acc + i + 8));
        v0 = _mm256_sub_epi32(_mm256_srl_epi32(_mm256_add_epi32(v0, add), cnt), sub);
        v1 = _mm256_sub_epi32(_mm256_srl_epi32(_mm256_add_epi32(v1, add), cnt), sub);
        v0 = _mm256_min_epi32(_mm256_max_epi32(v0, vlo), vhi);
        v1 = _mm256_min_epi32(_mm256_max_epi32(v1, vlo), vhi);
        /* packs work per 128-bit lane: reorder the 64-bit quarters after each */
        v0 = _mm256_permute4x64_epi64(_mm256_packs_epi32(v0, v1), 0xD8);
        v0 = _mm256_permute4x64_epi64(_mm256_packs_epi16(v0, v0), 0x08);
        _mm_storeu_si128((__m128i *)(void *)(q + i), _mm256_castsi256_si128(v0));
    }
}

/* tile t's outputs of one channel (plane at yc) into y: the valid columns of each row, from
 * q8 (already requantized) or requantized here from acc */
static void store_tile(const le_conv_geom *g, const plan *p, int64_t t, int64_t n,
                       const int32_t *acc, const int8_t *q8, int64_t bias, const le_tensor *y,
                       int64_t yc) {
    int64_t v = t * TP, oy = v / p->ws, ox = v % p->ws, i = 0;
    while (i < n && oy < g->oh) {
        int64_t len = ox < g->ow ? g->ow - ox : 0, k;
        if (len > n - i) len = n - i;
        if (q8)
            memcpy((int8_t *)(void *)y->data + yc + oy * g->ow + ox, q8 + i, (size_t)len);
        else
            for (k = 0; k < len; k++)
                le_st(y, yc + oy * g->ow + ox + k,
                      le_requant(acc[i + k] + bias, g->shift, g->bits_o));
        i += p->ws - ox;
        ox = 0;
        oy++;
    }
}

void le_conv_i8_simd(const le_conv_geom *g, const int8_t *x, const int8_t *w,
                     const int32_t *bias, const le_tensor *y, uint8_t *scratch) {
    plan p;
    int64_t n, grp, t, ob, j;
    int32_t out[4 * TP];
    int8_t q8[TP];
    int int8_out = y->dtype == LE_INT8;
    int8_t *planes;
    int32_t *wp;
    int64_t *offs;
    __m256i *b;
    if (!make_plan(g, &p)) return;     /* not reached: le_conv_i8_simd_scratch said 0 */
    offs = (int64_t *)(void *)(scratch + p.taps_at);
    tap_offsets(g, &p, offs);
    planes = (int8_t *)(void *)(scratch + p.planes_at);
    wp = (int32_t *)(void *)(scratch + p.w_at);
    b = (__m256i *)(void *)(scratch + p.b_at);
    for (n = 0; n < g->n; n++)
        for (grp = 0; grp < g->groups; grp++) {
            fill_planes(g, &p, x + (n * g->c + grp * g->cg) * g->h * g->w, planes);
            fill_weights(g, &p, w + grp * g->coutg * p.k, wp);
            for (t = 0; t < p.tiles; t++) {
                /* 16-position blocks in this tile: the last one stops at the grid's end */
                int64_t nb = (p.pv - t * TP + 15) / 16 < TP / 16 ? (p.pv - t * TP + 15) / 16
                                                                 : TP / 16;
                fill_tile(&p, planes, offs, t * TP, nb, b);
                for (ob = 0; ob < g->coutg; ob += 4) {
                    gemm4(wp + ob * p.k2, p.k2, b, nb, out);
                    for (j = 0; j < 4 && ob + j < g->coutg; j++) {
                        int64_t oc = grp * g->coutg + ob + j, bc = bias ? bias[oc] : 0;
                        /* |sum| <= K * 2**14 (int8 x int8) */
                        int fast = int8_out && le_rs32_fits(p.k * 16384, bc, g->shift);
                        if (fast)
                            requant_tile(out + j * TP, 16 * nb, bc, (int)g->shift,
                                         (int32_t)le_qmin(g->bits_o), (int32_t)le_qmax(g->bits_o),
                                         q8);
                        store_tile(g, &p, t, 16 * nb, out + j * TP, fast ? q8 : NULL, bc, y,
                                   (n * g->cout + oc) * g->oh * g->ow);
                    }
                }
            }
        }
}

#else

int le_conv_simd_available(void) { return 0; }

size_t le_conv_i8_simd_scratch(const le_conv_geom *g) {
    (void)g;
    return 0;
}

void le_conv_i8_simd(const le_conv_geom *g, const int8_t *x, const int8_t *w,
                     const int32_t *bias, const le_tensor *y, uint8_t *scratch) {
    (void)g;
    (void)x;
    (void)w;
    (void)bias;
    (void)y;
    (void)scratch;
}

#endif
