/* Integer linear layer, per-channel affine and integer matmul (runtime/kernels/linear.py,
 * iq_arith.py MatMulInt):
 *   LinearInt     y = sat_o(rs(x @ W^T + B, exp_x + exp_w - exp_o)),  x (..., in), W (out, in)
 *   BatchNormInt  y = sat_o(rs(x * W[c] + B[c], exp_x + exp_w - exp_o)),  x (N, C, ...)
 *   MatMulInt     y = sat_o(rs(x @ y, exp_x + exp_y - exp_o)) with numpy matmul broadcasting
 * Exact int64 sums. */
#include "le_internal.h"

le_status le_layer_attrs(const le_op *op, int64_t *shift, int64_t *bits_x, int64_t *bits_w,
                         int64_t *bits_o);
le_status le_bias(const le_op *op, uint32_t slot, int64_t n, const int32_t **b);

#define LINEAR(NAME, TX, TW)                                                                   \
    static void NAME(const void *xv, const void *wv, const int32_t *b, int64_t rows,           \
                     int64_t in, int64_t out, int64_t shift, int64_t bits, const le_tensor *y) \
    {                                                                                          \
        const TX *x = (const TX *)xv;                                                          \
        const TW *w = (const TW *)wv;                                                          \
        int64_t r, o, i;                                                                       \
        for (r = 0; r < rows; r++)                                                             \
            for (o = 0; o < out; o++) {                                                        \
                const TX *xr = x + r * in;                                                     \
                const TW *wr = w + o * in;                                                     \
                int64_t acc = 0;                                                               \
                for (i = 0; i < in; i++) acc += (int64_t)xr[i] * wr[i];                        \
                if (b) acc += b[o];                                                            \
                le_st(y, r * out + o, le_requant(acc, shift, bits));                           \
            }                                                                                  \
    }

static void linear_8_8(const void *xv, const void *wv, const int32_t *b, int64_t rows, int64_t in,
                       int64_t out, int64_t shift, int64_t bits, const le_tensor *y) {
    const int8_t *x = (const int8_t *)xv, *w = (const int8_t *)wv;
    int64_t r, o;
    for (r = 0; r < rows; r++)
        for (o = 0; o < out; o++) {
            int64_t acc = in < ((int64_t)1 << 17) ? (int64_t)le_dot_i8(x + r * in, w + o * in, in) : 0;
            int64_t i;
            if (in >= ((int64_t)1 << 17))   /* int32 sums could overflow: int64 */
                for (i = 0; i < in; i++) acc += (int64_t)x[r * in + i] * w[o * in + i];
            if (b) acc += b[o];
            le_st(y, r * out + o, le_requant(acc, shift, bits));
        }
}
LINEAR(linear_8_16, int8_t, int16_t)
LINEAR(linear_16_8, int16_t, int8_t)
LINEAR(linear_16_16, int16_t, int16_t)

typedef void (*linear_fn)(const void *, const void *, const int32_t *, int64_t, int64_t, int64_t,
                          int64_t, int64_t, const le_tensor *);

static le_status linear(le_op *op) {
    static const linear_fn fns[4] = {linear_8_8, linear_8_16, linear_16_8, linear_16_16};
    le_tensor x, w, y;
    int64_t shift, bx, bw, bo, in, out;
    const int32_t *b;
    int i;
    LE_REQUIRE(op->n_in >= 2 && op->n_in <= 3 && op->n_out == 1, LE_ERR_SHAPE);
    LE_REQUIRE(le_in(op, 0, &x) && le_in(op, 1, &w) && le_out(op, 0, &y), LE_ERR_SHAPE);
    LE_CHECK(le_layer_attrs(op, &shift, &bx, &bw, &bo));
    LE_REQUIRE(x.dtype == le_int_dtype(bx) && w.dtype == le_int_dtype(bw) && w.ndim == 2
               && x.ndim >= 1, LE_ERR_SHAPE);
    out = w.dims[0];
    in = w.dims[1];
    LE_REQUIRE(x.dims[x.ndim - 1] == in && y.dtype == le_int_dtype(bo) && y.ndim == x.ndim
               && y.dims[y.ndim - 1] == out, LE_ERR_SHAPE);
    for (i = 0; i < x.ndim - 1; i++) LE_REQUIRE(y.dims[i] == x.dims[i], LE_ERR_SHAPE);
    LE_CHECK(le_bias(op, 2, out, &b));
    if (!op->run) return LE_OK;
    fns[(x.dtype == LE_INT16) * 2 + (w.dtype == LE_INT16)](x.data, w.data, b, x.numel / (in ? in : 1),
                                                           in, out, shift, bo, &y);
    if (in == 0) {   /* no features: y = B only */
        int64_t r, o, rows = y.numel / (out ? out : 1);
        for (r = 0; r < rows; r++)
            for (o = 0; o < out; o++) le_st(&y, r * out + o, le_requant(b ? b[o] : 0, shift, bo));
    }
    return LE_OK;
}

/* y = sat(rs(x * m + a, s)) for one int8 row, by the 32-bit route of le_rs32_fits (the caller
 * checks it with vmax = 128 |m|). Blocks of 16 with a fixed trip count, which compilers
 * vectorize at -O2. */
static void affine_i8(const int8_t *x, int8_t *y, int64_t n, int32_t m, int64_t a, int s,
                      int32_t lo, int32_t hi) {
    const uint32_t add = le_rs32_add(a, s);
    const int32_t sub = (int32_t)1 << (30 - s);
    int64_t k = 0;
    int j;
#define AFFINE_ONE(i)                                                                          \
    {                                                                                          \
        int32_t v_ = (int32_t)(((uint32_t)(x[i] * m) + add) >> s) - sub;                       \
        y[i] = (int8_t)(v_ < lo ? lo : (v_ > hi ? hi : v_));                                   \
    }
    for (; k + 16 <= n; k += 16)
        for (j = 0; j < 16; j++) AFFINE_ONE(k + j)
    for (; k < n; k++) AFFINE_ONE(k)
#undef AFFINE_ONE
}

static le_status batch_norm(le_op *op) {
    le_tensor x, w, y;
    int64_t shift, bx, bw, bo, c, inner, i;
    const int32_t *b;
    LE_REQUIRE(op->n_in >= 2 && op->n_in <= 3 && op->n_out == 1, LE_ERR_SHAPE);
    LE_REQUIRE(le_in(op, 0, &x) && le_in(op, 1, &w) && le_out(op, 0, &y), LE_ERR_SHAPE);
    LE_CHECK(le_layer_attrs(op, &shift, &bx, &bw, &bo));
    LE_REQUIRE(x.dtype == le_int_dtype(bx) && w.dtype == le_int_dtype(bw) && x.ndim >= 2
               && w.ndim == 1 && w.dims[0] == x.dims[1], LE_ERR_SHAPE);
    LE_REQUIRE(y.dtype == le_int_dtype(bo) && le_same_shape(&x, &y), LE_ERR_SHAPE);
    LE_CHECK(le_bias(op, 2, x.dims[1], &b));
    if (!op->run) return LE_OK;
    c = x.dims[1];
    inner = le_numel_range(&x, 2, x.ndim);
    {
        int64_t n, ch, k;
        int fast = x.dtype == LE_INT8 && y.dtype == LE_INT8;
        for (n = 0, i = 0; n < x.dims[0] * (x.numel ? 1 : 0); n++)
            for (ch = 0; ch < c; ch++) {
                int64_t wc = le_ld(&w, ch), bc = b ? b[ch] : 0;
                if (fast && le_rs32_fits(128 * (wc < 0 ? -wc : wc), bc, shift)) {
                    affine_i8((const int8_t *)x.data + i, (int8_t *)(void *)y.data + i, inner,
                              (int32_t)wc, bc, (int)shift, (int32_t)le_qmin(bo),
                              (int32_t)le_qmax(bo));
                } else if (fast) {
                    const int8_t *xp = (const int8_t *)x.data + i;
                    int8_t *yp = (int8_t *)(void *)y.data + i;
                    for (k = 0; k < inner; k++) yp[k] = (int8_t)le_requant(xp[k] * wc + bc, shift, bo);
                } else {
                    for (k = 0; k < inner; k++)
                        le_st(&y, i + k, le_requant(le_ld(&x, i + k) * wc + bc, shift, bo));
                }
                i += inner;
            }
    }
    return LE_OK;
}

/* numpy matmul: 1-d x is (1, K) and 1-d y is (K, 1), those axes dropped from the result;
 * leading (batch) axes broadcast. */
static le_status matmul(le_op *op) {
    le_tensor x, y, o, bx_, by_, bo_;
    int64_t ex, bx, ey, by, eo, bo, mm, kk, nn, shift;
    int i, nbo;
    le_iter it;
    LE_REQUIRE(op->n_in == 2 && op->n_out == 1, LE_ERR_SHAPE);
    LE_REQUIRE(le_in(op, 0, &x) && le_in(op, 1, &y) && le_out(op, 0, &o), LE_ERR_SHAPE);
    LE_CHECK(le_exp(op, "exp_x", &ex));
    LE_CHECK(le_bits(op, "bits_x", 16, &bx));
    LE_CHECK(le_exp(op, "exp_y", &ey));
    LE_CHECK(le_bits(op, "bits_y", 16, &by));
    LE_CHECK(le_exp(op, "exp_o", &eo));
    LE_CHECK(le_bits(op, "bits_o", 32, &bo));
    LE_REQUIRE(x.dtype == le_int_dtype(bx) && y.dtype == le_int_dtype(by)
               && o.dtype == le_int_dtype(bo) && x.ndim >= 1 && y.ndim >= 1, LE_ERR_SHAPE);
    mm = x.ndim >= 2 ? x.dims[x.ndim - 2] : 1;
    kk = x.dims[x.ndim - 1];
    LE_REQUIRE((y.ndim >= 2 ? y.dims[y.ndim - 2] : y.dims[0]) == kk, LE_ERR_SHAPE);
    nn = y.ndim >= 2 ? y.dims[y.ndim - 1] : 1;
    /* batch views */
    bx_ = x;
    bx_.ndim = x.ndim >= 2 ? x.ndim - 2 : 0;
    by_ = y;
    by_.ndim = y.ndim >= 2 ? y.ndim - 2 : 0;
    nbo = o.ndim - (x.ndim >= 2) - (y.ndim >= 2);
    LE_REQUIRE(nbo >= 0 && nbo >= bx_.ndim && nbo >= by_.ndim, LE_ERR_SHAPE);
    bo_ = o;
    bo_.ndim = nbo;
    if (x.ndim >= 2) LE_REQUIRE(o.dims[nbo] == mm, LE_ERR_SHAPE);
    if (y.ndim >= 2) LE_REQUIRE(o.dims[o.ndim - 1] == nn, LE_ERR_SHAPE);
    LE_CHECK(le_bcast(&it, &bo_, &bx_, &by_));
    if (!op->run) return LE_OK;
    shift = ex + ey - eo;
    {
        int64_t nb = le_numel_range(&o, 0, nbo), b;
        for (b = 0; b < nb; b++, le_iter_next(&it)) {
            int64_t xo = it.off[1] * mm * kk, yo = it.off[2] * kk * nn, oo = b * mm * nn;
            int64_t r, c, k;
            for (r = 0; r < mm; r++)
                for (c = 0; c < nn; c++) {
                    int64_t acc = 0;
                    for (k = 0; k < kk; k++)
                        acc += le_ld(&x, xo + r * kk + k) * le_ld(&y, yo + k * nn + c);
                    le_st(&o, oo + r * nn + c, le_requant(acc, shift, bo));
                }
        }
    }
    (void)i;
    return LE_OK;
}

static const char *const a_layer[] = {"exp_x", "exp_w", "exp_o", "bits_x", "bits_w", "bits_o",
                                      NULL};
static const char *const a_matmul[] = {"exp_x", "bits_x", "exp_y", "bits_y", "exp_o", "bits_o",
                                       NULL};

const le_op_entry le_ops_linear[] = {
    {LE_LINGER_DOMAIN, "LinearInt", linear, a_layer},
    {LE_LINGER_DOMAIN, "BatchNormInt", batch_norm, a_layer},
    {LE_LINGER_DOMAIN, "MatMulInt", matmul, a_matmul},
};
const uint32_t le_ops_linear_count = sizeof le_ops_linear / sizeof le_ops_linear[0];
