/* Adaptive pooling (runtime/kernels/resample.py = linger/iqops.py), over the last 1 or 2 axes of
 * an (N, C, ...) input, windows [floor(i L / O), ceil((i + 1) L / O)) along each axis (PyTorch's):
 *   AdaptiveAvgPoolInt  floor((2 s + k) / (2 k)): exact window sum s, k elements; exponent kept
 *   AdaptiveMaxPool     the window maximum, dtype kept */
#include "le_internal.h"

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

static const char *const a_avg[] = {"output_size", "bits", NULL};
static const char *const a_max[] = {"output_size", NULL};

const le_op_entry le_ops_resample[] = {
    {LE_LINGER_DOMAIN, "AdaptiveAvgPoolInt", adaptive_avg, a_avg},
    {LE_LINGER_DOMAIN, "AdaptiveMaxPool", adaptive_max, a_max},
};
const uint32_t le_ops_resample_count = sizeof le_ops_resample / sizeof le_ops_resample[0];
