/* Resampling and adaptive pooling (runtime/kernels/resample.py = linger/iqops.py), over the last
 * 1 or 2 axes of an (N, C, ...) input:
 *   UpsampleNearest     gather at min(floor(f32(dst) * s), L - 1), s = f32(1 / scale) or
 *                       f32(L) / f32(out): PyTorch's float32 index formula, one IEEE operation
 *                       each (the only floating point here: indices, never values)
 *   UpsampleLinearInt   Q15 weights from exact rational source coordinates, sat(rs(sum, 15 nd))
 *   AdaptiveAvgPoolInt  windows [floor(i L / O), ceil((i + 1) L / O)), floor((2 s + k) / (2 k))
 *   AdaptiveMaxPool     the window maximum, dtype kept
 * A `scales` attribute holds decimal strings: they are read exactly when the digits fit 2**53
 * and the decimal exponent 10**22 (one correctly rounded division, as float() gives); any other
 * spelling is refused (LE_ERR_ATTR). */
#include "le_internal.h"
#include "le_tables.h"

/* float() of a decimal string, when exact by one IEEE operation; 0 when refused */
static int parse_decimal(const char *s, uint32_t len, double *out) {
    uint64_t digits = 0;
    int64_t exp10 = 0, e = 0, esign = 1;
    uint32_t i = 0;
    int seen = 0, frac = 0;
    double p = 1.0;
    for (; i < len; i++) {
        char c = s[i];
        if (c >= '0' && c <= '9') {
            if (digits >= ((uint64_t)1 << 53) / 10) return 0;
            digits = digits * 10 + (uint64_t)(c - '0');
            exp10 -= frac;
            seen = 1;
        } else if (c == '.' && !frac) {
            frac = 1;
        } else {
            break;
        }
    }
    if (!seen) return 0;
    if (i < len && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < len && (s[i] == '+' || s[i] == '-')) esign = s[i++] == '-' ? -1 : 1;
        if (i == len) return 0;
        for (; i < len && s[i] >= '0' && s[i] <= '9' && e < 1000; i++) e = e * 10 + (s[i] - '0');
    }
    if (i != len) return 0;
    exp10 += esign * e;
    if (exp10 < -22 || exp10 > 22) return 0;
    for (e = exp10 < 0 ? -exp10 : exp10; e > 0; e--) p *= 10.0;   /* exact up to 1e22 */
    *out = exp10 < 0 ? (double)digits / p : (double)digits * p;
    return 1;
}

/* Output lengths of a resampling op and its scale factors (0 when given by `sizes`). */
static le_status geometry(le_op *op, const le_tensor *x, const le_tensor *y, uint32_t *nd,
                          int64_t out[2], double scale[2]) {
    const uint8_t *sp;
    const char *str;
    uint32_t n, len, i;
    int has_sizes = le_attr_ints(op, "sizes", &sp, &n), has_scales;
    has_scales = le_attr_strs(op, "scales", 0, &str, &len, nd);
    LE_REQUIRE(has_sizes >= 0 && has_scales >= 0 && has_sizes + has_scales == 1, LE_ERR_ATTR);
    if (has_sizes) *nd = n;
    LE_REQUIRE(*nd == 1 || *nd == 2, LE_ERR_ATTR);
    LE_REQUIRE(x->ndim == (int32_t)*nd + 2 && y->ndim == x->ndim && y->dtype == x->dtype
               && y->dims[0] == x->dims[0] && y->dims[1] == x->dims[1], LE_ERR_SHAPE);
    for (i = 0; i < *nd; i++) {
        int64_t in = x->dims[2 + i];
        scale[i] = 0.0;
        if (has_sizes) {
            out[i] = le_rds64(sp + 8 * i);
        } else {
            double f;
            LE_REQUIRE(le_attr_strs(op, "scales", i, &str, &len, &n) == 1
                       && parse_decimal(str, len, &f) && f > 0.0 && f <= 65536.0, LE_ERR_ATTR);
            scale[i] = f;
            f = (double)in * f;
            out[i] = f < 1.0 ? 0 : (int64_t)f;       /* floor of a positive double */
        }
        LE_REQUIRE(out[i] >= 1 && out[i] <= (1 << 24) && in >= 1 && in <= (1 << 24)
                   && y->dims[2 + i] == out[i], LE_ERR_SHAPE);
    }
    return LE_OK;
}

/* iqops.nearest_index */
static int64_t nearest(int64_t dst, int64_t in, int64_t out, double scale) {
    float s = scale > 0.0 ? (float)(1.0 / scale) : (float)in / (float)out;
    float p = (float)dst * s;
    int64_t i = (int64_t)p;                          /* p >= 0: truncation is floor */
    return i < in - 1 ? i : in - 1;
}

static le_status upsample_nearest(le_op *op) {
    le_tensor x, y;
    uint32_t nd;
    int64_t o[2], h, w, oh, ow, b, oy, ox;
    double sc[2];
    LE_REQUIRE(op->n_in == 1 && op->n_out == 1 && le_in(op, 0, &x) && le_out(op, 0, &y),
               LE_ERR_SHAPE);
    LE_REQUIRE(le_dtype_size(x.dtype) != 0, LE_ERR_SHAPE);
    LE_CHECK(geometry(op, &x, &y, &nd, o, sc));
    if (!op->run) return LE_OK;
    h = nd == 2 ? x.dims[2] : 1;
    w = x.dims[x.ndim - 1];
    oh = nd == 2 ? o[0] : 1;
    ow = o[nd - 1];
    for (b = 0; b < x.dims[0] * x.dims[1]; b++)
        for (oy = 0; oy < oh; oy++) {
            int64_t iy = nd == 2 ? nearest(oy, h, oh, sc[0]) : 0;
            for (ox = 0; ox < ow; ox++) {
                int64_t ix = nearest(ox, w, ow, sc[nd - 1]);
                memcpy(y.data + (size_t)((b * oh + oy) * ow + ox) * y.elsize,
                       x.data + (size_t)((b * h + iy) * w + ix) * x.elsize, x.elsize);
            }
        }
    return LE_OK;
}

/* iqops.linear_weights for output position dst: neighbours i0, i1 and the Q15 weight of i1 */
static void lin_weight(int64_t dst, int64_t in, int64_t out, int align, int64_t *i0, int64_t *i1,
                       int64_t *w1) {
    int64_t num, den;
    if (align) {
        num = dst * (in - 1);
        den = out > 1 ? out - 1 : 1;
    } else {
        num = (2 * dst + 1) * in - out;
        if (num < 0) num = 0;
        den = 2 * out;
    }
    *i0 = num / den < in - 1 ? num / den : in - 1;
    *w1 = le_rounded_div((num - *i0 * den) << LE_PROB_Q, den);
    *i1 = *i0 + 1 < in - 1 ? *i0 + 1 : in - 1;
}

static le_status upsample_linear(le_op *op) {
    le_tensor x, y;
    uint32_t nd;
    int64_t o[2], h, w, oh, ow, b, oy, ox, bits, align;
    double sc[2];
    LE_REQUIRE(op->n_in == 1 && op->n_out == 1 && le_in(op, 0, &x) && le_out(op, 0, &y),
               LE_ERR_SHAPE);
    LE_CHECK(le_bits(op, "bits", 32, &bits));
    LE_CHECK(le_opt_int(op, "align_corners", 0, 0, 1, &align));
    LE_REQUIRE(x.dtype == le_int_dtype(bits), LE_ERR_SHAPE);
    LE_CHECK(geometry(op, &x, &y, &nd, o, sc));
    if (!op->run) return LE_OK;
    h = nd == 2 ? x.dims[2] : 1;
    w = x.dims[x.ndim - 1];
    oh = nd == 2 ? o[0] : 1;
    ow = o[nd - 1];
    for (b = 0; b < x.dims[0] * x.dims[1]; b++)
        for (oy = 0; oy < oh; oy++) {
            int64_t y0 = 0, y1 = 0, wy = 0;
            if (nd == 2) lin_weight(oy, h, oh, (int)align, &y0, &y1, &wy);
            for (ox = 0; ox < ow; ox++) {
                int64_t x0, x1, wx, acc, one = (int64_t)1 << LE_PROB_Q;
                const int64_t row0 = (b * h + y0) * w, row1 = (b * h + y1) * w;
                lin_weight(ox, w, ow, (int)align, &x0, &x1, &wx);
                acc = (one - wx) * le_ld(&x, row0 + x0) + wx * le_ld(&x, row0 + x1);
                if (nd == 2)   /* the separable sum, exact: no rounding between the axes */
                    acc = (one - wy) * acc
                          + wy * ((one - wx) * le_ld(&x, row1 + x0) + wx * le_ld(&x, row1 + x1));
                le_st(&y, (b * oh + oy) * ow + ox,
                      le_requant(acc, (int64_t)LE_PROB_Q * nd, bits));
            }
        }
    return LE_OK;
}

static le_status adaptive(le_op *op, int avg) {
    le_tensor x, y;
    const uint8_t *sp;
    uint32_t nd, i;
    int64_t bits = 64, o[2], h, w, oh, ow, outer, b, oy, ox;
    LE_REQUIRE(op->n_in == 1 && op->n_out == 1 && le_in(op, 0, &x) && le_out(op, 0, &y),
               LE_ERR_SHAPE);
    LE_REQUIRE(le_attr_ints(op, "output_size", &sp, &nd) == 1 && (nd == 1 || nd == 2),
               LE_ERR_ATTR);
    for (i = 0; i < nd; i++) {
        o[i] = le_rds64(sp + 8 * i);
        LE_REQUIRE(o[i] >= 1 && o[i] <= (1 << 20), LE_ERR_ATTR);
    }
    if (avg) {
        LE_CHECK(le_bits(op, "bits", 32, &bits));
        LE_REQUIRE(x.dtype == le_int_dtype(bits), LE_ERR_SHAPE);
    } else {
        LE_REQUIRE(x.dtype != LE_FLOAT16 && x.dtype != LE_FLOAT32 && x.dtype != LE_FLOAT64
                   && x.dtype != LE_BOOL, LE_ERR_SHAPE);
    }
    LE_REQUIRE(x.ndim == (int32_t)nd + 2 && y.ndim == x.ndim && y.dtype == x.dtype
               && y.dims[0] == x.dims[0] && y.dims[1] == x.dims[1], LE_ERR_SHAPE);
    for (i = 0; i < nd; i++)
        LE_REQUIRE(y.dims[2 + i] == o[i] && x.dims[2 + i] >= 1, LE_ERR_SHAPE);
    h = nd == 2 ? x.dims[2] : 1;
    w = x.dims[x.ndim - 1];
    oh = nd == 2 ? o[0] : 1;
    ow = o[nd - 1];
    /* 2 s + k exact: |s| < 2**(bits - 1) h w */
    if (avg) LE_REQUIRE(le_bit_length((uint64_t)(h * w)) + bits < 61, LE_ERR_SHAPE);
    if (!op->run) return LE_OK;
    outer = x.dims[0] * x.dims[1];
    for (b = 0; b < outer; b++)
        for (oy = 0; oy < oh; oy++)
            for (ox = 0; ox < ow; ox++) {
                int64_t y0 = oy * h / oh, y1 = ((oy + 1) * h + oh - 1) / oh;
                int64_t x0 = ox * w / ow, x1 = ((ox + 1) * w + ow - 1) / ow, iy, ix, acc = 0;
                int first = 1;
                for (iy = y0; iy < y1; iy++)
                    for (ix = x0; ix < x1; ix++) {
                        int64_t v = le_ld(&x, (b * h + iy) * w + ix);
                        if (avg) acc += v;
                        else if (first || v > acc) acc = v;
                        first = 0;
                    }
                if (avg) acc = le_sat(le_rounded_div(acc, (y1 - y0) * (x1 - x0)), bits);
                le_st(&y, (b * oh + oy) * ow + ox, acc);
            }
    return LE_OK;
}

static le_status adaptive_avg(le_op *op) { return adaptive(op, 1); }
static le_status adaptive_max(le_op *op) { return adaptive(op, 0); }

static const char *const a_up[] = {"sizes", "scales", NULL};
static const char *const a_lin[] = {"sizes", "scales", "align_corners", "bits", NULL};
static const char *const a_avg[] = {"output_size", "bits", NULL};
static const char *const a_max[] = {"output_size", NULL};

const le_op_entry le_ops_resample[] = {
    {LE_LINGER_DOMAIN, "UpsampleNearest", upsample_nearest, a_up},
    {LE_LINGER_DOMAIN, "UpsampleLinearInt", upsample_linear, a_lin},
    {LE_LINGER_DOMAIN, "AdaptiveAvgPoolInt", adaptive_avg, a_avg},
    {LE_LINGER_DOMAIN, "AdaptiveMaxPool", adaptive_max, a_max},
};
const uint32_t le_ops_resample_count = sizeof le_ops_resample / sizeof le_ops_resample[0];
