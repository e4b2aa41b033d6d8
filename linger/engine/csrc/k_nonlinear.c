/* linger's quantized non-linear ops (runtime/kernels/iq_nonlinear.py = linger/iqmath.py):
 *   iqSigmoid  sat_o(rs(sigmoid_q15(x11), 15 - exp_o))
 *   iqTanh     sat_o(rs(tanh_q15(x11), 15 - exp_o))
 *   iqSiLU     sat_o(rs(x * sigmoid_q15(x11), exp_x + 15 - exp_o))
 *   iqGELU     sat_o(rs(x * phi_q15(x11), exp_x + 15 - exp_o))
 *   with x11 = sat16(rs(x, exp_x - 11)) and piecewise-linear tables on 1/16-wide segments;
 *   SoftmaxInt, LogSoftmaxInt: Q16 x - max, 2**f table to Q20, sum, rounded division / log2
 *   table; SoftmaxInt's optional bool mask input excludes elements (attention masks); LayerNormInt: exact integer mean, variance and square root, normalized value in Q10.
 * The tables come from le_tables.h, generated from linger/iqtables.py. */
#include "le_internal.h"
#include "le_tables.h"

/* iqmath._pwl on a table padded with its last entry: a >= 0 in Q11, result in Q15 */
static int64_t pwl(const uint32_t *table, int64_t len, int64_t a) {
    int64_t i, t0, t1, lim = (len - 1) << 7;
    if (a > lim) a = lim;
    i = a >> 7;
    t0 = (int64_t)table[i];
    t1 = (int64_t)(i + 1 < len ? table[i + 1] : table[len - 1]);
    return t0 + le_rshift((t1 - t0) * (a & 127), 7);
}

int64_t le_sigmoid_q15(int64_t x) {
    int64_t y = pwl(le_tab_sigmoid_q15, LE_SIGMOID_Q15_LEN, x < 0 ? -x : x);
    return x >= 0 ? y : ((int64_t)1 << LE_PROB_Q) - y;
}

int64_t le_tanh_q15(int64_t x) {
    int64_t y = pwl(le_tab_tanh_q15, LE_TANH_Q15_LEN, x < 0 ? -x : x);
    return x >= 0 ? y : -y;
}

int64_t le_phi_q15(int64_t x) {
    int64_t y = pwl(le_tab_phi_q15, LE_PHI_Q15_LEN, x < 0 ? -x : x);
    return x >= 0 ? y : ((int64_t)1 << LE_PROB_Q) - y;
}

static le_status unary_attrs(le_op *op, le_tensor *x, le_tensor *y, int64_t *ex, int64_t *eo,
                             int64_t *bo) {
    int64_t bx;
    LE_REQUIRE((op->n_in == 1 || op->n_in == 2) && op->n_out == 1 && le_in(op, 0, x)
               && le_out(op, 0, y), LE_ERR_SHAPE);
    LE_CHECK(le_exp(op, "exp_x", ex));
    LE_CHECK(le_bits(op, "bits_x", 32, &bx));
    LE_CHECK(le_exp(op, "exp_o", eo));
    LE_CHECK(le_bits(op, "bits_o", 32, bo));
    LE_REQUIRE(x->dtype == le_int_dtype(bx) && y->dtype == le_int_dtype(*bo)
               && le_same_shape(x, y), LE_ERR_SHAPE);
    return LE_OK;
}

/* kind: 0 sigmoid, 1 tanh, 2 SiLU, 3 GELU */
static le_status gate(le_op *op, int kind) {
    le_tensor x, y;
    int64_t ex, eo, bo, i;
    LE_REQUIRE(op->n_in == 1, LE_ERR_SHAPE);
    LE_CHECK(unary_attrs(op, &x, &y, &ex, &eo, &bo));
    if (!op->run) return LE_OK;
    for (i = 0; i < x.numel; i++) {
        int64_t q = le_ld(&x, i), x11 = le_requant(q, ex - LE_GATE_Q, 16), r;
        switch (kind) {
        case 0: r = le_requant(le_sigmoid_q15(x11), LE_PROB_Q - eo, bo); break;
        case 1: r = le_requant(le_tanh_q15(x11), LE_PROB_Q - eo, bo); break;
        case 2: r = le_requant(q * le_sigmoid_q15(x11), ex + LE_PROB_Q - eo, bo); break;
        default: r = le_requant(q * le_phi_q15(x11), ex + LE_PROB_Q - eo, bo); break;
        }
        le_st(&y, i, r);
    }
    return LE_OK;
}

static le_status iq_sigmoid(le_op *op) { return gate(op, 0); }
static le_status iq_tanh(le_op *op) { return gate(op, 1); }
static le_status iq_silu(le_op *op) { return gate(op, 2); }
static le_status iq_gelu(le_op *op) { return gate(op, 3); }

/* iqmath._exp_q20 for one element: e = 2**20 exp(x - max), d16 = x - max in Q16 (>= -32);
 * shared with iqELU (k_act.c), whose d is min(x, 0) */
int64_t le_exp_q20(int64_t d, int64_t n, int64_t *d16_out) {
    int64_t d16 = le_requant(d, n - LE_SOFTMAX_Q, 32), t, ip, f, i, p;
    int64_t floor_ = -((int64_t)LE_SOFTMAX_FLOOR << LE_SOFTMAX_Q);
    if (d16 < floor_) d16 = floor_;
    t = le_rshift(d16 * LE_LOG2E_Q30, 30);
    ip = le_asr(t, LE_SOFTMAX_Q);
    f = t - ip * ((int64_t)1 << LE_SOFTMAX_Q);
    i = f >> 10;
    p = (int64_t)le_tab_exp2_q30[i]
        + le_rshift(((int64_t)le_tab_exp2_q30[i + 1] - (int64_t)le_tab_exp2_q30[i]) * (f & 1023), 10);
    *d16_out = d16;
    return le_rshift(p, (30 - LE_EXP_Q) - ip);
}

/* iqmath.log2_q16: log2(s / 2**20) in Q16 for s >= 1 */
static int64_t log2_q16(int64_t s) {
    int64_t k = le_bit_length((uint64_t)s) - 1, m30, f, i, lg;
    m30 = k >= 30 ? s >> (k - 30) : s << (30 - k);
    f = m30 - ((int64_t)1 << 30);
    i = f >> 24;
    lg = (int64_t)le_tab_log2_q30[i]
         + le_rshift(((int64_t)le_tab_log2_q30[i + 1] - (int64_t)le_tab_log2_q30[i])
                     * (f & ((1 << 24) - 1)), 24);
    return (k - LE_EXP_Q) * ((int64_t)1 << LE_SOFTMAX_Q) + le_rshift(lg, 30 - LE_SOFTMAX_Q);
}

/* Strides that read a bool mask broadcast (numpy rules) against x; 0 when it does not fit. */
static int mask_strides(const le_tensor *mk, const le_tensor *x, int64_t *st) {
    int64_t stride = 1;
    int d;
    if (mk->dtype != LE_BOOL || mk->ndim > x->ndim) return 0;
    for (d = x->ndim - 1; d >= 0; d--) {
        int k = d - (x->ndim - mk->ndim);
        st[d] = 0;
        if (k < 0) continue;
        if (mk->dims[k] != 1 && mk->dims[k] != x->dims[d]) return 0;
        if (mk->dims[k] != 1) st[d] = stride;
        stride *= mk->dims[k];
    }
    return 1;
}

/* mask value at x's element i (1: excluded), or 0 without a mask */
static int masked(const le_tensor *mk, const le_tensor *x, const int64_t *st, int64_t i) {
    int64_t off = 0;
    int d;
    if (!mk->data) return 0;
    for (d = x->ndim - 1; d >= 0; d--) {
        off += (i % x->dims[d]) * st[d];
        i /= x->dims[d];
    }
    return mk->data[off] != 0;
}

/* iqmath.softmax / log_softmax; SoftmaxInt's optional bool mask (True = excluded) takes masked
 * elements out of the max and the sum (p = 0; a row masked entirely is all 0) */
static le_status softmax(le_op *op, int log) {
    le_tensor x, y, mk;
    int64_t ex, eo, bo, axis, outer, len, inner, o, in, st[LE_MAX_DIMS];
    int has_mask;
    LE_CHECK(unary_attrs(op, &x, &y, &ex, &eo, &bo));
    LE_CHECK(le_req_int(op, "axis", -LE_MAX_DIMS, LE_MAX_DIMS, &axis));
    LE_REQUIRE(x.ndim >= 1 && axis >= -x.ndim && axis < x.ndim, LE_ERR_ATTR);
    has_mask = le_in(op, 1, &mk);
    LE_REQUIRE(!has_mask || (!log && mask_strides(&mk, &x, st)), LE_ERR_SHAPE);
    if (!has_mask) mk.data = NULL;
    if (axis < 0) axis += x.ndim;
    if (!op->run) return LE_OK;
    outer = le_numel_range(&x, 0, (int)axis);
    len = x.dims[axis];
    inner = le_numel_range(&x, (int)axis + 1, x.ndim);
    for (o = 0; o < outer; o++)
        for (in = 0; in < inner; in++) {
            int64_t base = o * len * inner + in, mx = 0, s = 0, k, d16, ln16 = 0;
            int any = 0;
            for (k = 0; k < len; k++) {
                int64_t v = le_ld(&x, base + k * inner);
                if (masked(&mk, &x, st, base + k * inner)) continue;
                if (!any || v > mx) mx = v;
                any = 1;
            }
            for (k = 0; k < len; k++)
                if (!masked(&mk, &x, st, base + k * inner))
                    s += le_exp_q20(le_ld(&x, base + k * inner) - mx, ex, &d16);
            if (s < 1) s = 1;                               /* a row masked entirely */
            if (log) ln16 = le_rshift(log2_q16(s) * LE_LN2_Q30, 30);
            for (k = 0; k < len; k++) {
                int64_t e = le_exp_q20(le_ld(&x, base + k * inner) - mx, ex, &d16), r;
                if (masked(&mk, &x, st, base + k * inner)) e = 0;
                if (log)
                    r = le_requant(d16 - ln16, LE_SOFTMAX_Q - eo, bo);
                else
                    r = le_requant(le_rounded_div(e << LE_PROB_Q, s), LE_PROB_Q - eo, bo);
                le_st(&y, base + k * inner, r);
            }
        }
    return LE_OK;
}

static le_status softmax_int(le_op *op) { return softmax(op, 0); }
static le_status log_softmax_int(le_op *op) { return softmax(op, 1); }

/* floor(sqrt(x)) for 0 <= x < 2**62, bit by bit */
static int64_t isqrt(int64_t x) {
    uint64_t r = 0, bit = (uint64_t)1 << 62, v = (uint64_t)x;
    while (bit > v) bit >>= 2;
    while (bit) {
        if (v >= r + bit) {
            v -= r + bit;
            r = (r >> 1) + bit;
        } else {
            r >>= 1;
        }
        bit >>= 2;
    }
    return (int64_t)r;
}

static le_status layer_norm(le_op *op) {
    le_tensor x, w, b, y;
    int64_t ex, bx, ew = 0, bw, eo, bo, axis, eps, ndim, count, rows, r, i, shift;
    int has_w, has_b;
    LE_REQUIRE(op->n_in >= 1 && op->n_in <= 3 && op->n_out == 1 && le_in(op, 0, &x)
               && le_out(op, 0, &y), LE_ERR_SHAPE);
    has_w = le_in(op, 1, &w);
    has_b = le_in(op, 2, &b);
    LE_CHECK(le_req_int(op, "axis", -LE_MAX_DIMS, LE_MAX_DIMS, &axis));
    LE_CHECK(le_req_int(op, "eps_q", -((int64_t)1 << 61), (int64_t)1 << 61, &eps));
    LE_CHECK(le_exp(op, "exp_x", &ex));
    LE_CHECK(le_bits(op, "bits_x", 16, &bx));
    LE_CHECK(le_exp(op, "exp_w", &ew));
    LE_CHECK(le_bits(op, "bits_w", 16, &bw));
    LE_CHECK(le_exp(op, "exp_o", &eo));
    LE_CHECK(le_bits(op, "bits_o", 32, &bo));
    LE_REQUIRE(x.dtype == le_int_dtype(bx) && y.dtype == le_int_dtype(bo) && le_same_shape(&x, &y),
               LE_ERR_SHAPE);
    ndim = axis < 0 ? -axis : x.ndim - axis;
    LE_REQUIRE(ndim >= 1 && ndim <= x.ndim, LE_ERR_ATTR);
    count = le_numel_range(&x, x.ndim - (int)ndim, x.ndim);
    LE_REQUIRE(count >= 1 && count <= (1 << 16), LE_ERR_SHAPE);
    /* W and B broadcast against the normalized axes: numpy rules, at most those axes */
    if (has_w) LE_REQUIRE(w.dtype == le_int_dtype(bw) && w.numel == count && w.ndim <= ndim, LE_ERR_SHAPE);
    if (has_b) LE_REQUIRE(b.dtype == LE_INT32 && b.numel == count && b.ndim <= ndim, LE_ERR_SHAPE);
    for (i = 0; has_w && i < w.ndim; i++)
        LE_REQUIRE(w.dims[i] == x.dims[x.ndim - w.ndim + i], LE_ERR_SHAPE);
    for (i = 0; has_b && i < b.ndim; i++)
        LE_REQUIRE(b.dims[i] == x.dims[x.ndim - b.ndim + i], LE_ERR_SHAPE);
    if (!op->run) return LE_OK;
    rows = x.numel / count;
    shift = (has_w ? LE_LN_Q + ew : LE_LN_Q) - eo;
    for (r = 0; r < rows; r++) {
        int64_t s1 = 0, s2 = 0, d, j, dn, rt, base = r * count;
        for (i = 0; i < count; i++) {
            int64_t q = le_ld(&x, base + i);
            s1 += q;
            s2 += q * q;
        }
        d = count * s2 - s1 * s1 + eps;
        if (d < 0) d = 0;
        if (d > ((int64_t)1 << 62) - 1) d = ((int64_t)1 << 62) - 1;
        j = le_floordiv(le_bit_length((uint64_t)d) - 31, 2);
        dn = j >= 0 ? d >> (2 * j) : d << (-2 * j);
        rt = isqrt(dn << 30);
        if (rt < 1) rt = 1;
        for (i = 0; i < count; i++) {
            int64_t num = count * le_ld(&x, base + i) - s1, z, acc;
            z = d == 0 ? 0 : le_rounded_div(le_shl(num, (int)(LE_LN_Q + 15 - j)), rt);
            acc = has_w ? z * le_ld(&w, i) : z;
            if (has_b) acc += le_ld(&b, i);
            le_st(&y, base + i, le_requant(acc, shift, bo));
        }
    }
    return LE_OK;
}

static const char *const a_unary[] = {"exp_x", "bits_x", "exp_o", "bits_o", NULL};
static const char *const a_softmax[] = {"axis", "exp_x", "bits_x", "exp_o", "bits_o", NULL};
static const char *const a_ln[] = {"axis", "eps_q", "exp_x", "bits_x", "exp_w", "bits_w", "exp_o",
                                   "bits_o", NULL};

const le_op_entry le_ops_nonlinear[] = {
    {LE_LINGER_DOMAIN, "iqSigmoid", iq_sigmoid, a_unary},
    {LE_LINGER_DOMAIN, "iqTanh", iq_tanh, a_unary},
    {LE_LINGER_DOMAIN, "iqSiLU", iq_silu, a_unary},
    {LE_LINGER_DOMAIN, "iqGELU", iq_gelu, a_unary},
    {LE_LINGER_DOMAIN, "SoftmaxInt", softmax_int, a_softmax},
    {LE_LINGER_DOMAIN, "LogSoftmaxInt", log_softmax_int, a_softmax},
    {LE_LINGER_DOMAIN, "LayerNormInt", layer_norm, a_ln},
};
const uint32_t le_ops_nonlinear_count = sizeof le_ops_nonlinear / sizeof le_ops_nonlinear[0];
