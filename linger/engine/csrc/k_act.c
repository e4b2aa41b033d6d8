/* linger's quantized activations added for published networks (runtime/kernels/iq_act.py =
 * linger/iqops.py):
 *   iqHardSigmoid  sat_o(rs(h15, 15 - exp_o)),
 *                  h15 = clip(rhu(x 2**(15 - exp_x) / 6) + 2**14, 0, 2**15) (exact rational)
 *   iqHardSwish    sat_o(rs(x * h15, exp_x + 15 - exp_o))
 *   iqPReLU        x >= 0: sat_o(rs(x, exp_x - exp_o)); else sat_o(rs(x * W, exp_x + exp_w -
 *                  exp_o)), W one slope or one per channel along `axis` (LeakyReLU: one slope)
 *   iqELU          x > 0: sat_o(rs(x, exp_x - exp_o)); else sat_o(rs((e20 - 2**20) alpha_q,
 *                  20 + exp_alpha - exp_o)), e20 = 2**20 exp(min(x, 0)) as the softmax computes it
 * Shift amounts are bounded when the model is opened, so every product and shift is exact. */
#include "le_internal.h"
#include "le_tables.h"

/* x, y and the four exponent/width attributes every activation here has */
static le_status act_attrs(le_op *op, uint32_t n_in, le_tensor *x, le_tensor *y, int64_t *ex,
                           int64_t *bx, int64_t *eo, int64_t *bo) {
    LE_REQUIRE(op->n_in == n_in && op->n_out == 1 && le_in(op, 0, x) && le_out(op, 0, y),
               LE_ERR_SHAPE);
    LE_CHECK(le_exp(op, "exp_x", ex));
    LE_CHECK(le_bits(op, "bits_x", 32, bx));
    LE_CHECK(le_exp(op, "exp_o", eo));
    LE_CHECK(le_bits(op, "bits_o", 32, bo));
    LE_REQUIRE(x->dtype == le_int_dtype(*bx) && y->dtype == le_int_dtype(*bo)
               && le_same_shape(x, y), LE_ERR_SHAPE);
    return LE_OK;
}

/* iqops.hardsigmoid_q15: num / den = q 2**(15 - n) / 6, both exact in int64 (checked at open) */
static int64_t hsig_q15(int64_t q, int64_t n) {
    int64_t h = n <= LE_PROB_Q ? le_rounded_div(le_shl(q, (int)(LE_PROB_Q - n)), 6)
                               : le_rounded_div(q, le_shl(6, (int)(n - LE_PROB_Q)));
    h += (int64_t)1 << (LE_PROB_Q - 1);
    return h < 0 ? 0 : (h > ((int64_t)1 << LE_PROB_Q) ? (int64_t)1 << LE_PROB_Q : h);
}

static le_status hard(le_op *op, int swish) {
    le_tensor x, y;
    int64_t ex, bx, eo, bo, i;
    LE_CHECK(act_attrs(op, 1, &x, &y, &ex, &bx, &eo, &bo));
    /* 2 num + den of hsig_q15 stays below 2**62 */
    LE_REQUIRE(ex >= LE_PROB_Q + bx - 60 && ex <= LE_PROB_Q + 58, LE_ERR_ATTR);
    if (!op->run) return LE_OK;
    for (i = 0; i < x.numel; i++) {
        int64_t q = le_ld(&x, i), h = hsig_q15(q, ex);
        le_st(&y, i, swish ? le_requant(q * h, ex + LE_PROB_Q - eo, bo)
                           : le_requant(h, LE_PROB_Q - eo, bo));
    }
    return LE_OK;
}

static le_status iq_hardsigmoid(le_op *op) { return hard(op, 0); }
static le_status iq_hardswish(le_op *op) { return hard(op, 1); }

static le_status iq_prelu(le_op *op) {
    le_tensor x, w, y;
    int64_t ex, bx, ew, bw, eo, bo, axis, inner = 1, i;
    LE_CHECK(act_attrs(op, 2, &x, &y, &ex, &bx, &eo, &bo));
    LE_REQUIRE(le_in(op, 1, &w), LE_ERR_SHAPE);
    LE_CHECK(le_exp(op, "exp_w", &ew));
    LE_CHECK(le_bits(op, "bits_w", 32, &bw));
    LE_CHECK(le_opt_int(op, "axis", 1, -LE_MAX_DIMS, LE_MAX_DIMS, &axis));
    LE_REQUIRE(w.dtype == le_int_dtype(bw) && w.numel >= 1, LE_ERR_SHAPE);
    if (w.numel > 1) {
        LE_REQUIRE(axis >= 0 && axis < x.ndim && x.dims[axis] == w.numel, LE_ERR_SHAPE);
        inner = le_numel_range(&x, (int)axis + 1, x.ndim);
    }
    if (!op->run) return LE_OK;
    for (i = 0; i < x.numel; i++) {
        int64_t q = le_ld(&x, i);
        if (q >= 0) {
            le_st(&y, i, le_requant(q, ex - eo, bo));
        } else {
            int64_t a = le_ld(&w, w.numel > 1 ? (i / inner) % w.numel : 0);
            le_st(&y, i, le_requant(q * a, ex + ew - eo, bo));
        }
    }
    return LE_OK;
}

static le_status iq_elu(le_op *op) {
    le_tensor x, y;
    int64_t ex, bx, eo, bo, alpha, ea, i;
    LE_CHECK(act_attrs(op, 1, &x, &y, &ex, &bx, &eo, &bo));
    LE_CHECK(le_req_int(op, "alpha_q", -((int64_t)1 << 15), (int64_t)1 << 15, &alpha));
    LE_CHECK(le_exp(op, "exp_alpha", &ea));
    if (!op->run) return LE_OK;
    for (i = 0; i < x.numel; i++) {
        int64_t q = le_ld(&x, i), d16, e;
        if (q > 0) {
            le_st(&y, i, le_requant(q, ex - eo, bo));
        } else {
            e = le_exp_q20(q, ex, &d16);
            le_st(&y, i, le_requant((e - ((int64_t)1 << LE_EXP_Q)) * alpha, LE_EXP_Q + ea - eo, bo));
        }
    }
    return LE_OK;
}

static const char *const a_act[] = {"exp_x", "bits_x", "exp_o", "bits_o", NULL};
static const char *const a_prelu[] = {"axis", "exp_x", "bits_x", "exp_w", "bits_w", "exp_o",
                                      "bits_o", NULL};
static const char *const a_elu[] = {"alpha_q", "exp_alpha", "exp_x", "bits_x", "exp_o", "bits_o",
                                    NULL};

const le_op_entry le_ops_act[] = {
    {LE_LINGER_DOMAIN, "iqHardSigmoid", iq_hardsigmoid, a_act},
    {LE_LINGER_DOMAIN, "iqHardSwish", iq_hardswish, a_act},
    {LE_LINGER_DOMAIN, "iqPReLU", iq_prelu, a_prelu},
    {LE_LINGER_DOMAIN, "iqELU", iq_elu, a_elu},
};
const uint32_t le_ops_act_count = sizeof le_ops_act / sizeof le_ops_act[0];
