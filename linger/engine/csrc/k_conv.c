/* Integer convolutions (runtime/kernels/conv.py):
 *   y = sat_bits_o(rs(conv(x, W) + B, exp_x + exp_w - exp_o))
 * Conv1dInt/Conv2dInt: x (N, C, [H,] W), W (Cout, C/group, [kh,] kw), B int32 (Cout,).
 * ConvTranspose1dInt/2dInt: W (Cin, Cout/group, [kh,] kw), PyTorch's output geometry.
 * Sums are exact in int64 (data and weights are at most 16 bits). 1-d ops run as 2-d with a
 * height of 1. */
#include "le_conv.h"

typedef le_conv_geom geom;

le_status le_layer_attrs(const le_op *op, int64_t *shift, int64_t *bits_x, int64_t *bits_w,
                         int64_t *bits_o) {
    int64_t ex, ew, eo;
    LE_CHECK(le_exp(op, "exp_x", &ex));
    LE_CHECK(le_exp(op, "exp_w", &ew));
    LE_CHECK(le_exp(op, "exp_o", &eo));
    LE_CHECK(le_bits(op, "bits_x", 16, bits_x));
    LE_CHECK(le_bits(op, "bits_w", 16, bits_w));
    LE_CHECK(le_bits(op, "bits_o", 32, bits_o));
    *shift = ex + ew - eo;
    return LE_OK;
}

/* optional bias: int32 of shape (n,) */
le_status le_bias(const le_op *op, uint32_t slot, int64_t n, const int32_t **b) {
    le_tensor t;
    *b = NULL;
    if (!le_in(op, slot, &t)) return LE_OK;
    LE_REQUIRE(t.dtype == LE_INT32 && t.ndim == 1 && t.dims[0] == n, LE_ERR_SHAPE);
    *b = (const int32_t *)t.data;
    return LE_OK;
}

static le_status geometry(le_op *op, int transposed, geom *g, le_tensor *x, le_tensor *w,
                          le_tensor *y, const int32_t **bias) {
    int64_t bits_x, bits_w, k[2], s[2], d[2], p[4], op_[2], group, nd, full[2], keep[2];
    int i;
    const uint8_t *ks;
    uint32_t kn;
    LE_REQUIRE(op->n_in >= 2 && op->n_in <= 3 && op->n_out == 1, LE_ERR_SHAPE);
    LE_REQUIRE(le_in(op, 0, x) && le_in(op, 1, w) && le_out(op, 0, y), LE_ERR_SHAPE);
    LE_CHECK(le_layer_attrs(op, &g->shift, &bits_x, &bits_w, &g->bits_o));
    LE_REQUIRE(x->dtype == le_int_dtype(bits_x) && w->dtype == le_int_dtype(bits_w),
               LE_ERR_SHAPE);
    LE_REQUIRE((x->ndim == 3 || x->ndim == 4) && w->ndim == x->ndim, LE_ERR_SHAPE);
    nd = x->ndim - 2;
    LE_CHECK(le_opt_int(op, "group", 1, 1, 1 << 30, &group));
    LE_CHECK(le_opt_ints(op, "strides", (uint32_t)nd, 1, 1, 1 << 20, s));
    LE_CHECK(le_opt_ints(op, "dilations", (uint32_t)nd, 1, 1, 1 << 20, d));
    LE_CHECK(le_opt_ints(op, "pads", (uint32_t)(2 * nd), 0, 0, 1 << 20, p));
    if (transposed) LE_CHECK(le_opt_ints(op, "output_padding", (uint32_t)nd, 0, 0, 1 << 20, op_));
    else op_[0] = op_[1] = 0;
    for (i = 0; i < nd; i++) k[i] = w->dims[2 + i];
    i = le_attr_ints(op, "kernel_shape", &ks, &kn);
    LE_REQUIRE(i >= 0, LE_ERR_ATTR);
    if (i == 1) {
        LE_REQUIRE(kn == (uint32_t)nd, LE_ERR_ATTR);
        for (i = 0; i < nd; i++) LE_REQUIRE(le_rds64(ks + 8 * i) == k[i], LE_ERR_ATTR);
    }
    g->transposed = transposed;
    g->n = x->dims[0];
    g->c = x->dims[1];
    g->h = nd == 2 ? x->dims[2] : 1;
    g->w = x->dims[x->ndim - 1];
    g->kh = nd == 2 ? k[0] : 1;
    g->kw = k[nd - 1];
    g->sh = nd == 2 ? s[0] : 1;
    g->sw = s[nd - 1];
    g->dh = nd == 2 ? d[0] : 1;
    g->dw = d[nd - 1];
    g->pt = nd == 2 ? p[0] : 0;
    g->pl = p[nd - 1];
    g->groups = group;
    if (!transposed) {
        g->cout = w->dims[0];
        g->cg = w->dims[1];
        LE_REQUIRE(g->c == g->cg * group && g->cout % group == 0, LE_ERR_SHAPE);
        g->coutg = g->cout / group;
        for (i = 0; i < nd; i++) {
            int64_t span = d[i] * (k[i] - 1) + 1, padded = x->dims[2 + i] + p[i] + p[i + nd];
            LE_REQUIRE(k[i] >= 1 && padded >= span, LE_ERR_SHAPE);
            keep[i] = (padded - span) / s[i] + 1;
        }
    } else {
        LE_REQUIRE(w->dims[0] == g->c && g->c % group == 0, LE_ERR_SHAPE);
        g->cg = g->c / group;
        g->coutg = w->dims[1];
        g->cout = g->coutg * group;
        for (i = 0; i < nd; i++) {
            LE_REQUIRE(k[i] >= 1 && x->dims[2 + i] >= 1, LE_ERR_SHAPE);
            full[i] = (x->dims[2 + i] - 1) * s[i] + d[i] * (k[i] - 1) + 1;
            keep[i] = full[i] - p[i] - p[i + nd] + op_[i];
            LE_REQUIRE(keep[i] >= 1, LE_ERR_SHAPE);
        }
    }
    g->oh = nd == 2 ? keep[0] : 1;
    g->ow = keep[nd - 1];
    LE_REQUIRE(y->dtype == le_int_dtype(g->bits_o) && y->ndim == x->ndim, LE_ERR_SHAPE);
    LE_REQUIRE(y->dims[0] == g->n && y->dims[1] == g->cout, LE_ERR_SHAPE);
    for (i = 0; i < nd; i++) LE_REQUIRE(y->dims[2 + i] == keep[i], LE_ERR_SHAPE);
    return le_bias(op, 2, g->cout, bias);
}

/* Forward convolution, one output value at a time; TX/TW: stored types of x and W. */
#define CONV(NAME, TX, TW)                                                                     \
    static void NAME(const geom *g, const void *xv, const void *wv, const int32_t *bias,       \
                     const le_tensor *y) {                                                     \
        const TX *x = (const TX *)xv;                                                          \
        const TW *w = (const TW *)wv;                                                          \
        int64_t n, oc, oy, ox, ic, ky, kx, o = 0;                                              \
        for (n = 0; n < g->n; n++)                                                             \
            for (oc = 0; oc < g->cout; oc++) {                                                 \
                const TX *xg = x + (n * g->c + (oc / g->coutg) * g->cg) * g->h * g->w;         \
                const TW *wo = w + oc * g->cg * g->kh * g->kw;                                 \
                for (oy = 0; oy < g->oh; oy++)                                                 \
                    for (ox = 0; ox < g->ow; ox++) {                                           \
                        int64_t acc = bias ? bias[oc] : 0;                                     \
                        int64_t iy0 = oy * g->sh - g->pt, ix0 = ox * g->sw - g->pl;            \
                        for (ic = 0; ic < g->cg; ic++) {                                       \
                            const TX *xc = xg + ic * g->h * g->w;                              \
                            const TW *wc = wo + ic * g->kh * g->kw;                            \
                            for (ky = 0; ky < g->kh; ky++) {                                   \
                                int64_t iy = iy0 + ky * g->dh;                                 \
                                if (iy < 0 || iy >= g->h) continue;                            \
                                for (kx = 0; kx < g->kw; kx++) {                               \
                                    int64_t ix = ix0 + kx * g->dw;                             \
                                    if (ix < 0 || ix >= g->w) continue;                        \
                                    acc += (int64_t)xc[iy * g->w + ix] * wc[ky * g->kw + kx];  \
                                }                                                              \
                            }                                                                  \
                        }                                                                      \
                        le_st(y, o++, le_requant(acc, g->shift, g->bits_o));                   \
                    }                                                                          \
            }                                                                                  \
    }

/* Transposed convolution by gathering: output position f (in the full, uncropped output)
 * receives input i through tap t when f = i*s + t*d. */
#define CONVT(NAME, TX, TW)                                                                    \
    static void NAME(const geom *g, const void *xv, const void *wv, const int32_t *bias,       \
                     const le_tensor *y) {                                                     \
        const TX *x = (const TX *)xv;                                                          \
        const TW *w = (const TW *)wv;                                                          \
        int64_t n, oc, oy, ox, ic, ky, kx, o = 0;                                              \
        for (n = 0; n < g->n; n++)                                                             \
            for (oc = 0; oc < g->cout; oc++) {                                                 \
                int64_t grp = oc / g->coutg, ocg = oc % g->coutg;                              \
                for (oy = 0; oy < g->oh; oy++)                                                 \
                    for (ox = 0; ox < g->ow; ox++) {                                           \
                        int64_t acc = bias ? bias[oc] : 0;                                     \
                        int64_t fy = oy + g->pt, fx = ox + g->pl;                              \
                        for (ic = grp * g->cg; ic < (grp + 1) * g->cg; ic++) {                 \
                            const TX *xc = x + (n * g->c + ic) * g->h * g->w;                  \
                            const TW *wc = w + (ic * g->coutg + ocg) * g->kh * g->kw;          \
                            for (ky = 0; ky < g->kh; ky++) {                                   \
                                int64_t ty = fy - ky * g->dh, iy = ty / g->sh;                 \
                                if (ty < 0 || ty % g->sh || iy >= g->h) continue;              \
                                for (kx = 0; kx < g->kw; kx++) {                               \
                                    int64_t tx = fx - kx * g->dw, ix = tx / g->sw;             \
                                    if (tx < 0 || tx % g->sw || ix >= g->w) continue;          \
                                    acc += (int64_t)xc[iy * g->w + ix] * wc[ky * g->kw + kx];  \
                                }                                                              \
                            }                                                                  \
                        }                                                                      \
                        le_st(y, o++, le_requant(acc, g->shift, g->bits_o));                   \
                    }                                                                          \
            }                                                                                  \
    }

CONV(conv_8_8, int8_t, int8_t)
CONV(conv_8_16, int8_t, int16_t)
CONV(conv_16_8, int16_t, int8_t)
CONV(conv_16_16, int16_t, int16_t)
CONVT(convt_8_8, int8_t, int8_t)
CONVT(convt_8_16, int8_t, int16_t)
CONVT(convt_16_8, int16_t, int8_t)
CONVT(convt_16_16, int16_t, int16_t)

int32_t le_dot_i8(const int8_t *a, const int8_t *b, int64_t n) {
    int32_t lanes[16] = {0}, s = 0;
    int64_t i = 0;
    int j;
    for (; i + 16 <= n; i += 16)
        for (j = 0; j < 16; j++) lanes[j] += (int32_t)a[i + j] * (int32_t)b[i + j];
    for (j = 0; j < 16; j++) s += lanes[j];
    for (; i < n; i++) s += (int32_t)a[i] * (int32_t)b[i];
    return s;
}

/* Four int32 dot products of one int8 vector with four weight rows (stride n): the vector is
 * loaded once for four outputs; blocks of 16 lanes a compiler vectorizes at -O2. */
static void dot4_i8(const int8_t *a, const int8_t *w, int64_t n, int32_t out[4]) {
    int32_t l0[16] = {0}, l1[16] = {0}, l2[16] = {0}, l3[16] = {0};
    const int8_t *w1 = w + n, *w2 = w + 2 * n, *w3 = w + 3 * n;
    int64_t i = 0;
    int j;
    for (; i + 16 <= n; i += 16)
        for (j = 0; j < 16; j++) {
            int32_t x = a[i + j];
            l0[j] += x * w[i + j];
            l1[j] += x * w1[i + j];
            l2[j] += x * w2[i + j];
            l3[j] += x * w3[i + j];
        }
    out[0] = out[1] = out[2] = out[3] = 0;
    for (j = 0; j < 16; j++) {
        out[0] += l0[j];
        out[1] += l1[j];
        out[2] += l2[j];
        out[3] += l3[j];
    }
    for (; i < n; i++) {
        out[0] += a[i] * w[i];
        out[1] += a[i] * w1[i];
        out[2] += a[i] * w2[i];
        out[3] += a[i] * w3[i];
    }
}

/* One output position's window (K values: channel, row, column), zeros in the padding. */
static void window(const geom *g, const int8_t *xg, int64_t oy, int64_t ox, int8_t *col) {
    int64_t iy0 = oy * g->sh - g->pt, ix0 = ox * g->sw - g->pl, ic, ky, kx;
    int inside = iy0 >= 0 && ix0 >= 0 && iy0 + (g->kh - 1) * g->dh < g->h
                 && ix0 + (g->kw - 1) * g->dw < g->w;
    for (ic = 0; ic < g->cg; ic++)
        for (ky = 0; ky < g->kh; ky++) {
            int64_t iy = iy0 + ky * g->dh, row = (ic * g->h + iy) * g->w;
            if (inside) {
                for (kx = 0; kx < g->kw; kx++) *col++ = xg[row + ix0 + kx * g->dw];
                continue;
            }
            for (kx = 0; kx < g->kw; kx++) {
                int64_t ix = ix0 + kx * g->dw;
                *col++ = (iy < 0 || iy >= g->h || ix < 0 || ix >= g->w) ? 0 : xg[row + ix];
            }
        }
}

static void store(const le_tensor *y, int64_t at, int64_t acc, const geom *g) {
    int64_t q = le_requant(acc, g->shift, g->bits_o);
    if (y->dtype == LE_INT8) ((int8_t *)(void *)y->data)[at] = (int8_t)q;
    else le_st(y, at, q);
}

/* int8 x int8 forward convolution whose sums fit int32: per output row, the windows of every
 * output position are copied (im2col) into `cols` (ow x K, scratch), then int32 dot products,
 * four output channels at a time. */
static void conv_i8_rows(const geom *g, const int8_t *x, const int8_t *w, const int32_t *bias,
                         const le_tensor *y, int8_t *cols) {
    int64_t kk = g->cg * g->kh * g->kw, n, grp, oy, ox, oc;
    for (n = 0; n < g->n; n++)
        for (grp = 0; grp < g->groups; grp++) {
            const int8_t *xg = x + (n * g->c + grp * g->cg) * g->h * g->w;
            int64_t oc0 = grp * g->coutg, oc1 = oc0 + g->coutg;
            for (oy = 0; oy < g->oh; oy++) {
                for (ox = 0; ox < g->ow; ox++) window(g, xg, oy, ox, cols + ox * kk);
                for (oc = oc0; oc + 4 <= oc1; oc += 4)
                    for (ox = 0; ox < g->ow; ox++) {
                        int32_t d[4];
                        int j;
                        dot4_i8(cols + ox * kk, w + oc * kk, kk, d);
                        for (j = 0; j < 4; j++)
                            store(y, ((n * g->cout + oc + j) * g->oh + oy) * g->ow + ox,
                                  (int64_t)d[j] + (bias ? bias[oc + j] : 0), g);
                    }
                for (; oc < oc1; oc++)
                    for (ox = 0; ox < g->ow; ox++)
                        store(y, ((n * g->cout + oc) * g->oh + oy) * g->ow + ox,
                              (int64_t)le_dot_i8(cols + ox * kk, w + oc * kk, kk)
                                  + (bias ? bias[oc] : 0), g);
            }
        }
}

/* the int8 path applies: int8 data and weights whose sums stay below 2**31 */
static int int8_path(const geom *g, const le_tensor *x, const le_tensor *w) {
    return !g->transposed && x->dtype == LE_INT8 && w->dtype == LE_INT8
           && g->cg * g->kh * g->kw <= ((int64_t)1 << 17) - 1;
}

typedef void (*conv_fn)(const geom *, const void *, const void *, const int32_t *,
                        const le_tensor *);

static le_status run(le_op *op, int transposed) {
    static const conv_fn fwd[4] = {conv_8_8, conv_8_16, conv_16_8, conv_16_16};
    static const conv_fn bwd[4] = {convt_8_8, convt_8_16, convt_16_8, convt_16_16};
    geom g;
    le_tensor x, w, y;
    const int32_t *bias;
    int k;
    LE_CHECK(geometry(op, transposed, &g, &x, &w, &y, &bias));
    if (int8_path(&g, &x, &w)) {
        /* the x86 GEMM path where it is compiled in, takes this geometry (scratch 0: no) and
         * has enough output channels per group to fill its blocks of four */
        size_t simd = le_conv_simd_available() && g.coutg >= 4 ? le_conv_i8_simd_scratch(&g) : 0;
        if (simd) {
            op->scratch = simd;
            if (op->run)
                le_conv_i8_simd(&g, (const int8_t *)x.data, (const int8_t *)w.data, bias, &y,
                                op->m->scratch);
            return LE_OK;
        }
        op->scratch = (size_t)(g.ow * g.cg * g.kh * g.kw);
        if (op->run)
            conv_i8_rows(&g, (const int8_t *)x.data, (const int8_t *)w.data, bias, &y,
                         (int8_t *)(void *)op->m->scratch);
        return LE_OK;
    }
    if (!op->run) return LE_OK;
    k = (x.dtype == LE_INT16) * 2 + (w.dtype == LE_INT16);
    (transposed ? bwd : fwd)[k](&g, x.data, w.data, bias, &y);
    return LE_OK;
}

static le_status conv(le_op *op) { return run(op, 0); }
static le_status conv_transpose(le_op *op) { return run(op, 1); }

static const char *const a_conv[] = {"exp_x", "exp_w", "exp_o", "bits_x", "bits_w", "bits_o",
                                     "kernel_shape", "strides", "pads", "dilations", "group",
                                     NULL};
static const char *const a_convt[] = {"exp_x", "exp_w", "exp_o", "bits_x", "bits_w", "bits_o",
                                      "kernel_shape", "strides", "pads", "dilations", "group",
                                      "output_padding", NULL};

const le_op_entry le_ops_conv[] = {
    {LE_LINGER_DOMAIN, "Conv1dInt", conv, a_conv},
    {LE_LINGER_DOMAIN, "Conv2dInt", conv, a_conv},
    {LE_LINGER_DOMAIN, "ConvTranspose1dInt", conv_transpose, a_convt},
    {LE_LINGER_DOMAIN, "ConvTranspose2dInt", conv_transpose, a_convt},
};
const uint32_t le_ops_conv_count = sizeof le_ops_conv / sizeof le_ops_conv[0];
