/* Standard ONNX ReduceMax, ReduceMin, ArgMax, ArgMin on integer tensors (runtime/kernels/
 * reduce.py): they pick elements or their positions, so they are exact; dtype (Reduce*) and
 * exponents pass through. ArgMax/ArgMin give the first index of the extreme (the last with
 * select_last_index=1), as int64. Axes come from the `axes` attribute; the opset-18 form with
 * axes as an input is refused (LE_ERR_ATTR). */
#include "le_internal.h"

static int is_int(int32_t dt) {
    return dt != LE_FLOAT16 && dt != LE_FLOAT32 && dt != LE_FLOAT64 && dt != LE_BOOL
           && dt != LE_UINT64 && le_dtype_size(dt);      /* values le_ld orders correctly */
}

/* offset in x of element j of the index space spanned by the axes with sel[d] == want */
static int64_t offset_of(const le_tensor *x, const uint8_t *sel, int want, int64_t j) {
    int64_t off = 0, stride = 1;
    int d;
    for (d = x->ndim - 1; d >= 0; d--) {
        if (sel[d] == want) {
            off += (j % x->dims[d]) * stride;
            j /= x->dims[d];
        }
        stride *= x->dims[d];
    }
    return off;
}

static le_status reduce(le_op *op, int take_min) {
    le_tensor x, y, unused;
    int64_t keep, noop, count_r = 1, j, r;
    const uint8_t *ap;
    uint32_t na = 0, i;
    uint8_t red[LE_MAX_DIMS];
    int d, k, has;
    LE_REQUIRE(op->n_in >= 1 && op->n_in <= 2 && op->n_out == 1 && le_in(op, 0, &x)
               && le_out(op, 0, &y), LE_ERR_SHAPE);
    LE_REQUIRE(!le_in(op, 1, &unused), LE_ERR_ATTR);
    LE_CHECK(le_opt_int(op, "keepdims", 1, 0, 1, &keep));
    LE_CHECK(le_opt_int(op, "noop_with_empty_axes", 0, 0, 1, &noop));
    has = le_attr_ints(op, "axes", &ap, &na);
    LE_REQUIRE(has >= 0 && na <= LE_MAX_DIMS, LE_ERR_ATTR);
    LE_REQUIRE(is_int(x.dtype) && y.dtype == x.dtype, LE_ERR_SHAPE);
    memset(red, na == 0 && !noop, sizeof red);
    for (i = 0; i < na; i++) {
        int64_t a = le_rds64(ap + 8 * i);
        LE_REQUIRE(a >= -x.ndim && a < x.ndim, LE_ERR_ATTR);
        if (a < 0) a += x.ndim;
        LE_REQUIRE(!red[a], LE_ERR_ATTR);           /* numpy refuses a repeated axis */
        red[a] = 1;
    }
    for (d = 0, k = 0; d < x.ndim; d++) {
        if (red[d]) {
            LE_REQUIRE(x.dims[d] >= 1, LE_ERR_SHAPE);
            count_r *= x.dims[d];
            if (!keep) continue;
            LE_REQUIRE(k < y.ndim && y.dims[k] == 1, LE_ERR_SHAPE);
        } else {
            LE_REQUIRE(k < y.ndim && y.dims[k] == x.dims[d], LE_ERR_SHAPE);
        }
        k++;
    }
    LE_REQUIRE(k == y.ndim, LE_ERR_SHAPE);
    if (!op->run) return LE_OK;
    for (j = 0; j < y.numel; j++) {
        int64_t base = offset_of(&x, red, 0, j), best = le_ld(&x, base);
        for (r = 1; r < count_r; r++) {
            int64_t v = le_ld(&x, base + offset_of(&x, red, 1, r));
            if (take_min ? v < best : v > best) best = v;
        }
        le_st(&y, j, best);
    }
    return LE_OK;
}

static le_status reduce_max(le_op *op) { return reduce(op, 0); }
static le_status reduce_min(le_op *op) { return reduce(op, 1); }

static le_status arg(le_op *op, int take_min) {
    le_tensor x, y;
    int64_t axis, keep, last, outer, len, inner, o, in;
    int d, k;
    LE_REQUIRE(op->n_in == 1 && op->n_out == 1 && le_in(op, 0, &x) && le_out(op, 0, &y),
               LE_ERR_SHAPE);
    LE_CHECK(le_opt_int(op, "axis", 0, -LE_MAX_DIMS, LE_MAX_DIMS, &axis));
    LE_CHECK(le_opt_int(op, "keepdims", 1, 0, 1, &keep));
    LE_CHECK(le_opt_int(op, "select_last_index", 0, 0, 1, &last));
    LE_REQUIRE(x.ndim >= 1 && axis >= -x.ndim && axis < x.ndim, LE_ERR_ATTR);
    if (axis < 0) axis += x.ndim;
    LE_REQUIRE(is_int(x.dtype) && y.dtype == LE_INT64 && x.dims[axis] >= 1, LE_ERR_SHAPE);
    for (d = 0, k = 0; d < x.ndim; d++) {
        if (d == axis && !keep) continue;
        LE_REQUIRE(k < y.ndim && y.dims[k] == (d == axis ? 1 : x.dims[d]), LE_ERR_SHAPE);
        k++;
    }
    LE_REQUIRE(k == y.ndim, LE_ERR_SHAPE);
    if (!op->run) return LE_OK;
    outer = le_numel_range(&x, 0, (int)axis);
    len = x.dims[axis];
    inner = le_numel_range(&x, (int)axis + 1, x.ndim);
    for (o = 0; o < outer; o++)
        for (in = 0; in < inner; in++) {
            int64_t base = o * len * inner + in, best = le_ld(&x, base), at = 0, i;
            for (i = 1; i < len; i++) {
                int64_t v = le_ld(&x, base + i * inner);
                if (take_min ? (v < best || (last && v == best)) : (v > best || (last && v == best))) {
                    best = v;
                    at = i;
                }
            }
            le_st(&y, o * inner + in, at);
        }
    return LE_OK;
}

static le_status arg_max(le_op *op) { return arg(op, 0); }
static le_status arg_min(le_op *op) { return arg(op, 1); }

static const char *const a_reduce[] = {"axes", "keepdims", "noop_with_empty_axes", NULL};
static const char *const a_arg[] = {"axis", "keepdims", "select_last_index", NULL};

const le_op_entry le_ops_reduce[] = {
    {"", "ReduceMax", reduce_max, a_reduce},
    {"", "ReduceMin", reduce_min, a_reduce},
    {"", "ArgMax", arg_max, a_arg},
    {"", "ArgMin", arg_min, a_arg},
};
const uint32_t le_ops_reduce_count = sizeof le_ops_reduce / sizeof le_ops_reduce[0];
