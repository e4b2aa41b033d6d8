/* Standard ONNX Or on bool tensors (runtime/kernels/mask.py): combines attention masks
 * (True = not attended), numpy broadcasting. */
#include "le_internal.h"

static le_status logical_or(le_op *op) {
    le_tensor a, b, y;
    le_iter it;
    int64_t i;
    LE_REQUIRE(op->n_in == 2 && op->n_out == 1 && le_in(op, 0, &a) && le_in(op, 1, &b)
               && le_out(op, 0, &y), LE_ERR_SHAPE);
    LE_REQUIRE(a.dtype == LE_BOOL && b.dtype == LE_BOOL && y.dtype == LE_BOOL, LE_ERR_SHAPE);
    LE_CHECK(le_bcast(&it, &y, &a, &b));
    if (!op->run) return LE_OK;
    for (i = 0; i < y.numel; i++, le_iter_next(&it))
        y.data[i] = (uint8_t)((a.data[it.off[1]] | b.data[it.off[2]]) != 0);
    return LE_OK;
}

static const char *const a_none[] = {NULL};

const le_op_entry le_ops_mask[] = {
    {"", "Or", logical_or, a_none},
};
const uint32_t le_ops_mask_count = sizeof le_ops_mask / sizeof le_ops_mask[0];
