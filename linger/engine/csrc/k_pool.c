/* Pooling (runtime/kernels/pool.py):
 *   AvgPoolInt  y = floor((2 s + k) / (2 k)): the window sum s rounded-divided by the window
 *               size k (count_include_pad=0 with padding: the real elements in the window)
 *   MaxPool     ONNX MaxPool: padding never wins (it holds the dtype's minimum / -inf);
 *               ceil_mode, dilations and auto_pad as PyTorch/ONNX define them.
 *   GlobalAvgPoolInt  floor((2 s + L) / (2 L)) over all spatial axes of (N, C, *spatial): the
 *               global pooling export writes over a dynamic axis (L: the packed spatial size)
 * 1-d and 2-d windows (a 1-d window is a 2-d one of height 1). */
#include "le_internal.h"

typedef struct {
    int64_t outer, h, w, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow;
} pgeom;

static le_status pool_common(le_op *op, le_tensor *x, le_tensor *y, int64_t *nd, int64_t k[2]) {
    const uint8_t *ks;
    uint32_t kn, i;
    LE_REQUIRE(op->n_in == 1 && op->n_out == 1 && le_in(op, 0, x) && le_out(op, 0, y),
               LE_ERR_SHAPE);
    LE_REQUIRE(le_attr_ints(op, "kernel_shape", &ks, &kn) == 1 && (kn == 1 || kn == 2),
               LE_ERR_ATTR);
    *nd = kn;
    for (i = 0; i < kn; i++) {
        k[i] = le_rds64(ks + 8 * i);
        LE_REQUIRE(k[i] >= 1 && k[i] <= (1 << 20), LE_ERR_ATTR);
    }
    return LE_OK;
}

static void to2d(pgeom *g, int64_t nd, const int64_t *k, const int64_t *s, const int64_t *d,
                 const int64_t *pb, const le_tensor *x) {
    g->outer = le_numel_range(x, 0, x->ndim - (int)nd);
    g->h = nd == 2 ? x->dims[x->ndim - 2] : 1;
    g->w = x->dims[x->ndim - 1];
    g->kh = nd == 2 ? k[0] : 1;
    g->kw = k[nd - 1];
    g->sh = nd == 2 ? s[0] : 1;
    g->sw = s[nd - 1];
    g->dh = nd == 2 ? d[0] : 1;
    g->dw = d[nd - 1];
    g->pt = nd == 2 ? pb[0] : 0;
    g->pl = pb[nd - 1];
}

static le_status avg_pool(le_op *op) {
    le_tensor x, y;
    int64_t nd, k[2], s[2], d[2] = {1, 1}, p[4], bits, incl, ceil_mode, o[2];
    pgeom g;
    int i;
    LE_CHECK(pool_common(op, &x, &y, &nd, k));
    LE_CHECK(le_bits(op, "bits", 32, &bits));
    {
        int64_t e;
        LE_CHECK(le_exp(op, "exp", &e));
    }
    LE_CHECK(le_opt_ints(op, "strides", (uint32_t)nd, 1, 1, 1 << 20, s));
    LE_CHECK(le_opt_ints(op, "pads", (uint32_t)(2 * nd), 0, 0, 1 << 20, p));
    LE_CHECK(le_opt_int(op, "count_include_pad", 0, INT64_MIN, INT64_MAX, &incl));
    LE_CHECK(le_opt_int(op, "ceil_mode", 0, 0, 0, &ceil_mode));
    LE_REQUIRE(x.dtype == le_int_dtype(bits) && y.dtype == x.dtype && x.ndim >= nd
               && y.ndim == x.ndim, LE_ERR_SHAPE);
    for (i = 0; i < nd; i++) {
        int64_t padded = x.dims[x.ndim - nd + i] + p[i] + p[i + nd];
        LE_REQUIRE(padded >= k[i], LE_ERR_SHAPE);
        o[i] = (padded - k[i]) / s[i] + 1;
        LE_REQUIRE(y.dims[y.ndim - nd + i] == o[i], LE_ERR_SHAPE);
    }
    for (i = 0; i < x.ndim - nd; i++) LE_REQUIRE(y.dims[i] == x.dims[i], LE_ERR_SHAPE);
    if (!op->run) return LE_OK;
    {
        int64_t pb[2] = {p[0], nd == 2 ? p[1] : p[0]};
        int64_t b, oy, ox, ky, kx, out = 0, any_pad = 0;
        to2d(&g, nd, k, s, d, pb, &x);
        for (i = 0; i < 2 * nd; i++) any_pad |= p[i];
        g.oh = nd == 2 ? o[0] : 1;
        g.ow = o[nd - 1];
        for (b = 0; b < g.outer; b++)
            for (oy = 0; oy < g.oh; oy++)
                for (ox = 0; ox < g.ow; ox++) {
                    int64_t sum = 0, count = 0;
                    for (ky = 0; ky < g.kh; ky++) {
                        int64_t iy = oy * g.sh - g.pt + ky;
                        if (iy < 0 || iy >= g.h) continue;
                        for (kx = 0; kx < g.kw; kx++) {
                            int64_t ix = ox * g.sw - g.pl + kx;
                            if (ix < 0 || ix >= g.w) continue;
                            sum += le_ld(&x, (b * g.h + iy) * g.w + ix);
                            count++;
                        }
                    }
                    if (incl || !any_pad) count = g.kh * g.kw;
                    if (count == 0) return LE_ERR_SHAPE;
                    le_st(&y, out++, le_rounded_div(sum, count));
                }
    }
    return LE_OK;
}

static le_status max_pool(le_op *op) {
    le_tensor x, y;
    int64_t nd, k[2], s[2], d[2], p[4], ceil_mode, pb[2], pe[2], o[2];
    const char *ap = "NOTSET";
    uint32_t aplen = 6;
    pgeom g;
    int i, r;
    LE_CHECK(pool_common(op, &x, &y, &nd, k));
    LE_CHECK(le_opt_ints(op, "strides", (uint32_t)nd, 1, 1, 1 << 20, s));
    LE_CHECK(le_opt_ints(op, "dilations", (uint32_t)nd, 1, 1, 1 << 20, d));
    LE_CHECK(le_opt_ints(op, "pads", (uint32_t)(2 * nd), 0, 0, 1 << 20, p));
    LE_CHECK(le_opt_int(op, "ceil_mode", 0, INT64_MIN, INT64_MAX, &ceil_mode));
    {
        int64_t so;
        LE_CHECK(le_opt_int(op, "storage_order", 0, INT64_MIN, INT64_MAX, &so));
    }
    r = le_attr_str(op, "auto_pad", &ap, &aplen);
    LE_REQUIRE(r >= 0, LE_ERR_ATTR);
    if (r == 1 && aplen == 0) {
        ap = "NOTSET";
        aplen = 6;
    }
    LE_REQUIRE(x.ndim == nd + 2 && y.ndim == x.ndim && y.dtype == x.dtype, LE_ERR_SHAPE);
    LE_REQUIRE(x.dtype == LE_INT8 || x.dtype == LE_INT16 || x.dtype == LE_INT32
               || x.dtype == LE_INT64 || le_is_float(x.dtype), LE_ERR_SHAPE);
    for (i = 0; i < nd; i++) {
        int64_t n = x.dims[2 + i], span = d[i] * (k[i] - 1) + 1, room, out;
        if (aplen == 6 && memcmp(ap, "NOTSET", 6) == 0) {
            pb[i] = p[i];
            pe[i] = p[i + nd];
        } else if (aplen == 5 && memcmp(ap, "VALID", 5) == 0) {
            pb[i] = pe[i] = 0;
        } else if (aplen == 10 && (memcmp(ap, "SAME_UPPER", 10) == 0
                                   || memcmp(ap, "SAME_LOWER", 10) == 0)) {
            int64_t total = ((n + s[i] - 1) / s[i] - 1) * s[i] + span - n;
            if (total < 0) total = 0;
            pb[i] = ap[5] == 'U' ? total / 2 : total - total / 2;
            pe[i] = total - pb[i];
        } else {
            return LE_ERR_ATTR;
        }
        room = n + pb[i] + pe[i] - span;
        LE_REQUIRE(room >= 0, LE_ERR_SHAPE);
        out = (ceil_mode ? (room + s[i] - 1) / s[i] : room / s[i]) + 1;
        if (ceil_mode && (out - 1) * s[i] >= n + pb[i]) out--;
        o[i] = out;
        LE_REQUIRE(y.dims[2 + i] == out, LE_ERR_SHAPE);
    }
    LE_REQUIRE(y.dims[0] == x.dims[0] && y.dims[1] == x.dims[1], LE_ERR_SHAPE);
    if (!op->run) return LE_OK;
    to2d(&g, nd, k, s, d, pb, &x);
    g.oh = nd == 2 ? o[0] : 1;
    g.ow = o[nd - 1];
    if (x.dtype == LE_INT8) {   /* the common case, without per-element dtype dispatch */
        const int8_t *xp = (const int8_t *)x.data;
        int8_t *yp = (int8_t *)(void *)y.data;
        int64_t b, oy, ox, ky, kx;
        for (b = 0; b < g.outer; b++)
            for (oy = 0; oy < g.oh; oy++)
                for (ox = 0; ox < g.ow; ox++) {
                    int best = -128;   /* also the value of a window of padding only */
                    for (ky = 0; ky < g.kh; ky++) {
                        int64_t iy = oy * g.sh - g.pt + ky * g.dh;
                        if (iy < 0 || iy >= g.h) continue;
                        for (kx = 0; kx < g.kw; kx++) {
                            int64_t ix = ox * g.sw - g.pl + kx * g.dw;
                            if (ix >= 0 && ix < g.w && xp[(b * g.h + iy) * g.w + ix] > best)
                                best = xp[(b * g.h + iy) * g.w + ix];
                        }
                    }
                    *yp++ = (int8_t)best;
                }
        return LE_OK;
    }
    {
        int64_t b, oy, ox, ky, kx, out = 0;
        for (b = 0; b < g.outer; b++)
            for (oy = 0; oy < g.oh; oy++)
                for (ox = 0; ox < g.ow; ox++) {
                    int any = 0;
                    int64_t best = 0;
                    double fbest = 0.0;
                    for (ky = 0; ky < g.kh; ky++) {
                        int64_t iy = oy * g.sh - g.pt + ky * g.dh;
                        for (kx = 0; kx < g.kw; kx++) {
                            int64_t ix = ox * g.sw - g.pl + kx * g.dw, at;
                            if (iy < 0 || iy >= g.h || ix < 0 || ix >= g.w) continue;
                            at = (b * g.h + iy) * g.w + ix;
                            if (le_is_float(x.dtype)) {
                                double v = le_ldf(&x, at);
                                /* numpy's max: NaN wins */
                                if (!any || v > fbest || v != v) {
                                    if (!(any && fbest != fbest)) fbest = v;
                                }
                            } else {
                                int64_t v = le_ld(&x, at);
                                if (!any || v > best) best = v;
                            }
                            any = 1;
                        }
                    }
                    if (le_is_float(x.dtype)) {
                        if (!any) {  /* only padding: -inf */
                            uint64_t u = 0xFFF0000000000000ull;
                            memcpy(&fbest, &u, 8);
                        }
                        if (x.dtype == LE_FLOAT32) {
                            float f = (float)fbest;
                            memcpy(y.data + 4 * out, &f, 4);
                        } else {
                            memcpy(y.data + 8 * out, &fbest, 8);
                        }
                    } else {
                        if (!any) {  /* only padding: the dtype's minimum */
                            switch (x.dtype) {
                            case LE_INT8: best = -128; break;
                            case LE_INT16: best = -32768; break;
                            case LE_INT32: best = -2147483647 - 1; break;
                            default: best = INT64_MIN; break;
                            }
                        }
                        le_st(&y, out, best);
                    }
                    out++;
                }
    }
    return LE_OK;
}

static const char *const a_avg[] = {"kernel_shape", "exp", "bits", "strides", "pads",
                                    "count_include_pad", "ceil_mode", NULL};
static const char *const a_max[] = {"kernel_shape", "auto_pad", "ceil_mode", "dilations", "pads",
                                    "storage_order", "strides", NULL};

static le_status global_avg_pool(le_op *op) {
    le_tensor x, y;
    int64_t bits, e, l, r, i;
    int d;
    LE_REQUIRE(op->n_in == 1 && op->n_out == 1 && le_in(op, 0, &x) && le_out(op, 0, &y),
               LE_ERR_SHAPE);
    LE_CHECK(le_bits(op, "bits", 32, &bits));
    LE_CHECK(le_exp(op, "exp", &e));
    LE_REQUIRE(x.dtype == le_int_dtype(bits) && y.dtype == x.dtype && x.ndim >= 3
               && y.ndim == x.ndim && y.dims[0] == x.dims[0] && y.dims[1] == x.dims[1],
               LE_ERR_SHAPE);
    for (d = 2; d < x.ndim; d++) LE_REQUIRE(y.dims[d] == 1, LE_ERR_SHAPE);
    l = le_numel_range(&x, 2, x.ndim);
    /* 2 s + L exact: |s| < 2**(bits - 1) L */
    LE_REQUIRE(l >= 1 && le_bit_length((uint64_t)l) + bits < 61, LE_ERR_SHAPE);
    if (!op->run) return LE_OK;
    for (r = 0; r < y.numel; r++) {
        int64_t sum = 0;
        for (i = 0; i < l; i++) sum += le_ld(&x, r * l + i);
        le_st(&y, r, le_rounded_div(sum, l));
    }
    return LE_OK;
}

static const char *const a_global[] = {"exp", "bits", NULL};

const le_op_entry le_ops_pool[] = {
    {LE_LINGER_DOMAIN, "GlobalAvgPoolInt", global_avg_pool, a_global},
    {LE_LINGER_DOMAIN, "AvgPoolInt", avg_pool, a_avg},
    {"", "MaxPool", max_pool, a_max},
};
const uint32_t le_ops_pool_count = sizeof le_ops_pool / sizeof le_ops_pool[0];
