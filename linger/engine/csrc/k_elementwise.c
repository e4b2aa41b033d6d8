/* Standard ONNX element-wise ops (runtime/kernels/elementwise.py): Relu, Clip, Neg, Abs and the
 * broadcasting Add, Sub, Mul, Div. On integers they keep the dtype (numpy wraps around; integer
 * Div truncates towards zero); on float32/float64 they are single IEEE operations (computed in
 * double and rounded once to float32: the same result for +, -, *, /). */
#include "le_internal.h"

static int is_num(int32_t dt) { return dt != LE_FLOAT16 && dt != LE_BOOL && le_dtype_size(dt); }

static le_status unary(le_op *op, le_tensor *x, le_tensor *y) {
    LE_REQUIRE(op->n_in >= 1 && op->n_out == 1 && le_in(op, 0, x) && le_out(op, 0, y),
               LE_ERR_SHAPE);
    LE_REQUIRE(is_num(x->dtype) && y->dtype == x->dtype && le_same_shape(x, y), LE_ERR_SHAPE);
    return LE_OK;
}

static le_status relu(le_op *op) {
    le_tensor x, y;
    int64_t i;
    LE_REQUIRE(op->n_in == 1, LE_ERR_SHAPE);
    LE_CHECK(unary(op, &x, &y));
    if (!op->run) return LE_OK;
    if (x.dtype == LE_INT8) {
        const int8_t *xp = (const int8_t *)x.data;
        int8_t *yp = (int8_t *)(void *)y.data;
        for (i = 0; i < x.numel; i++) yp[i] = xp[i] > 0 ? xp[i] : 0;
        return LE_OK;
    }
    for (i = 0; i < x.numel; i++) {
        if (le_is_float(x.dtype)) {
            double v = le_ldf(&x, i);
            le_stf(&y, i, (v > 0.0 || v != v) ? v : 0.0);   /* as numpy: max(-0.0, 0) is 0.0 */
        } else {
            int64_t v = le_ld(&x, i);
            le_st(&y, i, v > 0 ? v : 0);
        }
    }
    return LE_OK;
}

static le_status clip(le_op *op) {
    le_tensor x, y, lo, hi;
    int has_lo, has_hi;
    int64_t i;
    LE_REQUIRE(op->n_in <= 3, LE_ERR_SHAPE);
    LE_CHECK(unary(op, &x, &y));
    has_lo = le_in(op, 1, &lo);
    has_hi = le_in(op, 2, &hi);
    LE_REQUIRE(!has_lo || (lo.dtype == x.dtype && lo.numel == 1), LE_ERR_SHAPE);
    LE_REQUIRE(!has_hi || (hi.dtype == x.dtype && hi.numel == 1), LE_ERR_SHAPE);
    if (!op->run) return LE_OK;
    for (i = 0; i < x.numel; i++) {
        if (le_is_float(x.dtype)) {   /* np.maximum / np.minimum: NaN propagates; on a tie (+-0)
                                    * the bound is the result, as numpy's vector loops give */
            double v = le_ldf(&x, i);
            if (has_lo) {
                double l = le_ldf(&lo, 0);
                v = (v != v || l != l) ? (v != v ? v : l) : (v > l ? v : l);
            }
            if (has_hi) {
                double h = le_ldf(&hi, 0);
                v = (v != v || h != h) ? (v != v ? v : h) : (v < h ? v : h);
            }
            le_stf(&y, i, v);
        } else {
            int64_t v = le_ld(&x, i);
            if (has_lo && v < le_ld(&lo, 0)) v = le_ld(&lo, 0);
            if (has_hi && v > le_ld(&hi, 0)) v = le_ld(&hi, 0);
            le_st(&y, i, v);
        }
    }
    return LE_OK;
}

static le_status neg_abs(le_op *op, int absolute) {
    le_tensor x, y;
    int64_t i;
    LE_REQUIRE(op->n_in == 1, LE_ERR_SHAPE);
    LE_CHECK(unary(op, &x, &y));
    if (!op->run) return LE_OK;
    for (i = 0; i < x.numel; i++) {
        if (le_is_float(x.dtype)) {
            double v = le_ldf(&x, i);
            if (absolute) {   /* clear the sign bit (abs(-0.0) = 0.0, NaN keeps its payload) */
                uint64_t u;
                memcpy(&u, &v, 8);
                u &= ~((uint64_t)1 << 63);
                memcpy(&v, &u, 8);
                le_stf(&y, i, v);
            } else {
                le_stf(&y, i, -v);
            }
        } else {
            int64_t v = le_ld(&x, i);
            le_st(&y, i, (absolute && v >= 0) ? v : (int64_t)(0 - (uint64_t)v));
        }
    }
    return LE_OK;
}

static le_status neg(le_op *op) { return neg_abs(op, 0); }
static le_status absv(le_op *op) { return neg_abs(op, 1); }

/* kind: 0 add, 1 sub, 2 mul, 3 div */
static le_status binary(le_op *op, int kind) {
    le_tensor a, b, y;
    le_iter it;
    int64_t i;
    LE_REQUIRE(op->n_in == 2 && op->n_out == 1 && le_in(op, 0, &a) && le_in(op, 1, &b)
               && le_out(op, 0, &y), LE_ERR_SHAPE);
    LE_REQUIRE(is_num(a.dtype) && a.dtype == b.dtype && y.dtype == a.dtype, LE_ERR_SHAPE);
    LE_CHECK(le_bcast(&it, &y, &a, &b));
    if (!op->run) return LE_OK;
    for (i = 0; i < y.numel; i++, le_iter_next(&it)) {
        if (le_is_float(a.dtype)) {
            double u = le_ldf(&a, it.off[1]), v = le_ldf(&b, it.off[2]);
            le_stf(&y, i, kind == 0 ? u + v : kind == 1 ? u - v : kind == 2 ? u * v : u / v);
        } else {
            uint64_t u = (uint64_t)le_ld(&a, it.off[1]), v = (uint64_t)le_ld(&b, it.off[2]);
            int64_t r;
            if (kind == 3) {
                int64_t p = (int64_t)u, q = (int64_t)v;
                int unsig = a.dtype == LE_UINT64;
                if (q == 0) return LE_ERR_INPUT;
                if (unsig) r = (int64_t)(u / v);
                else if (q == -1) r = (int64_t)(0 - u);
                else r = p / q;   /* C truncates towards zero */
            } else {
                r = (int64_t)(kind == 0 ? u + v : kind == 1 ? u - v : u * v);
            }
            le_st(&y, i, r);
        }
    }
    return LE_OK;
}

static le_status add(le_op *op) { return binary(op, 0); }
static le_status sub(le_op *op) { return binary(op, 1); }
static le_status mul(le_op *op) { return binary(op, 2); }
static le_status divide(le_op *op) { return binary(op, 3); }

static const char *const a_none[] = {NULL};

const le_op_entry le_ops_elementwise[] = {
    {"", "Relu", relu, a_none},
    {"", "Clip", clip, a_none},
    {"", "Neg", neg, a_none},
    {"", "Abs", absv, a_none},
    {"", "Add", add, a_none},
    {"", "Sub", sub, a_none},
    {"", "Mul", mul, a_none},
    {"", "Div", divide, a_none},
};
const uint32_t le_ops_elementwise_count = sizeof le_ops_elementwise / sizeof le_ops_elementwise[0];
