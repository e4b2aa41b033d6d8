/* linger's quantized tensor arithmetic (runtime/kernels/iq_arith.py = linger/iqmath.py):
 *   iqAdd/iqSub  sat_o(sat32(rs(x, exp_x - exp_o)) +/- sat32(rs(y, exp_y - exp_o)))
 *   iqMul/iqDiv  sat_o(rs(x * y, exp_x + exp_y - exp_o))        (iqDiv: y = quantized 1/c)
 *   iqCat        concat (or stack, new_axis=1) of sat_o(rs(x_i, exp_inputs[i] - exp_o))
 *   iqSum        sat_o(rs(sum(x), exp_x - exp_o)) over axes
 *   iqMean       sat_o(rs(sum(x) * m, t + exp_x - exp_o)), m = rhu(2**t / k),
 *                t = 22 + bit_length(k) (iqmath.mean_multiplier)
 * numpy broadcasting for the binary ops. */
#include "le_internal.h"

static le_status binary_attrs(le_op *op, le_tensor *x, le_tensor *y, le_tensor *o, int64_t *ex,
                              int64_t *ey, int64_t *eo, int64_t *bo, le_iter *it) {
    int64_t bx, by;
    LE_REQUIRE(op->n_in == 2 && op->n_out == 1, LE_ERR_SHAPE);
    LE_REQUIRE(le_in(op, 0, x) && le_in(op, 1, y) && le_out(op, 0, o), LE_ERR_SHAPE);
    LE_CHECK(le_exp(op, "exp_x", ex));
    LE_CHECK(le_bits(op, "bits_x", 32, &bx));
    LE_CHECK(le_exp(op, "exp_y", ey));
    LE_CHECK(le_bits(op, "bits_y", 32, &by));
    LE_CHECK(le_exp(op, "exp_o", eo));
    LE_CHECK(le_bits(op, "bits_o", 32, bo));
    LE_REQUIRE(x->dtype == le_int_dtype(bx) && y->dtype == le_int_dtype(by)
               && o->dtype == le_int_dtype(*bo), LE_ERR_SHAPE);
    return le_bcast(it, o, x, y);
}

static le_status add_sub(le_op *op, int subtract) {
    le_tensor x, y, o;
    int64_t ex, ey, eo, bo, i;
    le_iter it;
    LE_CHECK(binary_attrs(op, &x, &y, &o, &ex, &ey, &eo, &bo, &it));
    if (!op->run) return LE_OK;
    if (x.dtype == LE_INT8 && y.dtype == LE_INT8 && o.dtype == LE_INT8 && le_same_shape(&x, &o)
        && le_same_shape(&y, &o)) {   /* the common residual add: no broadcasting, int8 */
        const int8_t *xp = (const int8_t *)x.data, *yp = (const int8_t *)y.data;
        int8_t *op8 = (int8_t *)(void *)o.data;
        for (i = 0; i < o.numel; i++) {
            int64_t a = le_requant(xp[i], ex - eo, 32), b = le_requant(yp[i], ey - eo, 32);
            op8[i] = (int8_t)le_sat(subtract ? a - b : a + b, bo);
        }
        return LE_OK;
    }
    for (i = 0; i < o.numel; i++, le_iter_next(&it)) {
        int64_t a = le_requant(le_ld(&x, it.off[1]), ex - eo, 32);
        int64_t b = le_requant(le_ld(&y, it.off[2]), ey - eo, 32);
        le_st(&o, i, le_sat(subtract ? a - b : a + b, bo));
    }
    return LE_OK;
}

static le_status iq_add(le_op *op) { return add_sub(op, 0); }
static le_status iq_sub(le_op *op) { return add_sub(op, 1); }

static le_status iq_mul(le_op *op) {
    le_tensor x, y, o;
    int64_t ex, ey, eo, bo, i;
    le_iter it;
    LE_CHECK(binary_attrs(op, &x, &y, &o, &ex, &ey, &eo, &bo, &it));
    if (!op->run) return LE_OK;
    for (i = 0; i < o.numel; i++, le_iter_next(&it)) {
        int64_t p = le_ld(&x, it.off[1]) * le_ld(&y, it.off[2]);   /* |p| <= 2**62 */
        le_st(&o, i, le_requant(p, ex + ey - eo, bo));
    }
    return LE_OK;
}

static le_status iq_cat(le_op *op) {
    le_tensor o, t;
    int64_t axis, new_axis, eo, bo, outer, done = 0;
    const uint8_t *exps, *bits;
    uint32_t ne, nb, k;
    int i, ax, nd;
    LE_REQUIRE(op->n_in >= 1 && op->n_out == 1 && le_out(op, 0, &o), LE_ERR_SHAPE);
    LE_CHECK(le_req_int(op, "axis", -LE_MAX_DIMS - 1, LE_MAX_DIMS, &axis));
    LE_CHECK(le_opt_int(op, "new_axis", 0, INT64_MIN, INT64_MAX, &new_axis));
    LE_CHECK(le_exp(op, "exp_o", &eo));
    LE_CHECK(le_bits(op, "bits_o", 32, &bo));
    LE_REQUIRE(le_attr_ints(op, "exp_inputs", &exps, &ne) == 1
               && le_attr_ints(op, "bits_inputs", &bits, &nb) == 1, LE_ERR_ATTR);
    LE_REQUIRE(ne == op->n_in && nb == op->n_in, LE_ERR_ATTR);
    LE_REQUIRE(o.dtype == le_int_dtype(bo) && le_in(op, 0, &t), LE_ERR_SHAPE);
    nd = t.ndim;
    ax = (int)axis + (axis < 0 ? (new_axis ? nd + 1 : nd) : 0);
    LE_REQUIRE(ax >= 0 && ax <= (new_axis ? nd : nd - 1), LE_ERR_SHAPE);
    LE_REQUIRE(o.ndim == (new_axis ? nd + 1 : nd), LE_ERR_SHAPE);
    outer = le_numel_range(&o, 0, ax);
    for (k = 0; k < op->n_in; k++) {
        int64_t e = le_rds64(exps + 8 * k), b = le_rds64(bits + 8 * k);
        LE_REQUIRE(e >= -LE_MAX_EXP && e <= LE_MAX_EXP && b >= 2 && b <= 32, LE_ERR_ATTR);
        LE_REQUIRE(le_in(op, k, &t) && t.dtype == le_int_dtype(b) && t.ndim == nd, LE_ERR_SHAPE);
        for (i = 0; i < nd; i++) {
            int j = new_axis ? (i < ax ? i : i + 1) : i;
            if (!new_axis && i == ax) continue;
            LE_REQUIRE(t.dims[i] == o.dims[j], LE_ERR_SHAPE);
        }
        done += new_axis ? 1 : t.dims[ax];
    }
    LE_REQUIRE(done == o.dims[ax], LE_ERR_SHAPE);
    if (!op->run) return LE_OK;
    {
        int64_t row = le_numel_range(&o, ax, o.ndim), col = 0, r, c;
        for (k = 0; k < op->n_in; k++) {
            int64_t e = le_rds64(exps + 8 * k), inner;
            le_in(op, k, &t);
            inner = new_axis ? le_numel_range(&t, ax, nd) : le_numel_range(&t, ax, nd);
            for (r = 0; r < outer; r++)
                for (c = 0; c < inner; c++)
                    le_st(&o, r * row + col + c, le_requant(le_ld(&t, r * inner + c), e - eo, bo));
            col += inner;
        }
    }
    return LE_OK;
}

/* Sum over `axes` of x into o (keepdims or not); results as int64 through emit(). */
static le_status reduce(le_op *op, int mean) {
    le_tensor x, o;
    int64_t ex, bx, eo, bo, keep, count = 1, m = 1, t = 0, shift;
    const uint8_t *ap;
    uint32_t na, k;
    int red[LE_MAX_DIMS] = {0}, i, j;
    LE_REQUIRE(op->n_in == 1 && op->n_out == 1 && le_in(op, 0, &x) && le_out(op, 0, &o),
               LE_ERR_SHAPE);
    LE_CHECK(le_exp(op, "exp_x", &ex));
    LE_CHECK(le_bits(op, "bits_x", 32, &bx));
    LE_CHECK(le_exp(op, "exp_o", &eo));
    LE_CHECK(le_bits(op, "bits_o", 32, &bo));
    LE_CHECK(le_req_int(op, "keepdims", INT64_MIN, INT64_MAX, &keep));
    LE_REQUIRE(le_attr_ints(op, "axes", &ap, &na) == 1, LE_ERR_ATTR);
    LE_REQUIRE(x.dtype == le_int_dtype(bx) && o.dtype == le_int_dtype(bo), LE_ERR_SHAPE);
    LE_REQUIRE(x.ndim > 0 || na == 0, LE_ERR_SHAPE);
    for (k = 0; k < na; k++) {
        int64_t a = le_rds64(ap + 8 * k);
        LE_REQUIRE(a >= -x.ndim && a < x.ndim, LE_ERR_ATTR);
        a = a < 0 ? a + x.ndim : a;
        LE_REQUIRE(!red[a], LE_ERR_ATTR);
        red[a] = 1;
        count *= x.dims[a];
    }
    j = 0;
    for (i = 0; i < x.ndim; i++) {
        if (red[i] && !keep) continue;
        LE_REQUIRE(j < o.ndim && o.dims[j] == (red[i] ? 1 : x.dims[i]), LE_ERR_SHAPE);
        j++;
    }
    LE_REQUIRE(j == o.ndim, LE_ERR_SHAPE);
    if (mean) {
        LE_REQUIRE(count >= 1 && count <= ((int64_t)1 << 30), LE_ERR_SHAPE);
        t = 22 + le_bit_length((uint64_t)count);
        m = le_floordiv(((int64_t)1 << (t + 1)) + count, 2 * count);
    }
    if (!op->run) return LE_OK;
    shift = t + ex - eo;
    {
        /* kept-axes odometer over the output, reduced-axes odometer over each window */
        int64_t oi, kdims[LE_MAX_DIMS], kst[LE_MAX_DIMS], rdims[LE_MAX_DIMS], rst[LE_MAX_DIMS];
        int64_t stride = 1, nk = 0, nr = 0, kidx[LE_MAX_DIMS] = {0};
        int64_t st[LE_MAX_DIMS];
        for (i = x.ndim - 1; i >= 0; i--) {
            st[i] = stride;
            stride *= x.dims[i];
        }
        for (i = 0; i < x.ndim; i++) {
            if (red[i]) { rdims[nr] = x.dims[i]; rst[nr++] = st[i]; }
            else { kdims[nk] = x.dims[i]; kst[nk++] = st[i]; }
        }
        for (oi = 0; oi < o.numel; oi++) {
            int64_t base = 0, sum = 0, ridx[LE_MAX_DIMS] = {0}, off = 0, n;
            int64_t total = 1;
            for (i = 0; i < nk; i++) base += kidx[i] * kst[i];
            for (i = 0; i < nr; i++) total *= rdims[i];
            for (n = 0; n < total; n++) {
                sum = le_wadd(sum, le_ld(&x, base + off));
                for (i = (int)nr - 1; i >= 0; i--) {
                    off += rst[i];
                    if (++ridx[i] < rdims[i]) break;
                    off -= rst[i] * rdims[i];
                    ridx[i] = 0;
                }
            }
            le_st(&o, oi, le_requant(mean ? le_wmul(sum, m) : sum, shift, bo));
            for (i = (int)nk - 1; i >= 0; i--) {
                if (++kidx[i] < kdims[i]) break;
                kidx[i] = 0;
            }
        }
    }
    return LE_OK;
}

static le_status iq_sum(le_op *op) { return reduce(op, 0); }
static le_status iq_mean(le_op *op) { return reduce(op, 1); }

static const char *const a_binary[] = {"exp_x", "bits_x", "exp_y", "bits_y", "exp_o", "bits_o",
                                       NULL};
static const char *const a_cat[] = {"axis", "new_axis", "exp_inputs", "bits_inputs", "exp_o",
                                    "bits_o", NULL};
static const char *const a_reduce[] = {"axes", "keepdims", "exp_x", "bits_x", "exp_o", "bits_o",
                                       NULL};

const le_op_entry le_ops_iqarith[] = {
    {LE_LINGER_DOMAIN, "iqAdd", iq_add, a_binary},
    {LE_LINGER_DOMAIN, "iqSub", iq_sub, a_binary},
    {LE_LINGER_DOMAIN, "iqMul", iq_mul, a_binary},
    {LE_LINGER_DOMAIN, "iqDiv", iq_mul, a_binary},
    {LE_LINGER_DOMAIN, "iqCat", iq_cat, a_cat},
    {LE_LINGER_DOMAIN, "iqSum", iq_sum, a_reduce},
    {LE_LINGER_DOMAIN, "iqMean", iq_mean, a_reduce},
};
const uint32_t le_ops_iqarith_count = sizeof le_ops_iqarith / sizeof le_ops_iqarith[0];
