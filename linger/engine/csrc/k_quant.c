/* Boundary ops (runtime/kernels/quant.py): Quant (float -> integer), Dequant (integer ->
 * float), Requant (integer -> integer at another exponent).
 *
 * Quant works on the bits of the IEEE value, not with float arithmetic: x = m * 2**e exactly,
 * so rhu(x * 2**exp) is an integer rounding shift of m (what numerics.quantize computes in
 * float64, where x * 2**exp is exact too). */
#include "le_internal.h"

/* sat_bits(rhu(sign * mant * 2**k)) for mant < 2**53 */
static int64_t quantize(uint64_t mant, int64_t k, int neg, int64_t bits) {
    int64_t v;
    if (mant == 0) return 0;
    if (k >= 0) {
        if (le_bit_length(mant) + k > 62) return neg ? le_qmin(bits) : le_qmax(bits);
        v = (int64_t)(mant << k);
        return le_sat(neg ? -v : v, bits);
    }
    v = neg ? -(int64_t)mant : (int64_t)mant;
    return le_sat(le_rshift(v, -k), bits);
}

static le_status quant(le_op *op) {
    le_tensor x, y;
    int64_t exp, bits, i;
    LE_REQUIRE(op->n_in == 1 && op->n_out == 1 && le_in(op, 0, &x) && le_out(op, 0, &y),
               LE_ERR_SHAPE);
    LE_CHECK(le_exp(op, "exp", &exp));
    LE_CHECK(le_bits(op, "bits", 32, &bits));
    LE_REQUIRE(x.dtype == LE_FLOAT32 || x.dtype == LE_FLOAT64, LE_ERR_SHAPE);
    LE_REQUIRE(y.dtype == le_int_dtype(bits) && le_same_shape(&x, &y), LE_ERR_SHAPE);
    if (!op->run) return LE_OK;
    for (i = 0; i < x.numel; i++) {
        uint64_t mant;
        int64_t e;
        int neg;
        if (x.dtype == LE_FLOAT32) {
            uint32_t u;
            memcpy(&u, x.data + 4 * i, 4);
            neg = (int)(u >> 31);
            e = (int64_t)((u >> 23) & 0xFFu);
            mant = u & 0x7FFFFFu;
            if (e == 0xFF) return LE_ERR_INPUT;            /* NaN or infinity */
            if (e == 0) e = 1; else mant |= 0x800000u;
            e -= 150;
        } else {
            uint64_t u;
            memcpy(&u, x.data + 8 * i, 8);
            neg = (int)(u >> 63);
            e = (int64_t)((u >> 52) & 0x7FFu);
            mant = u & 0xFFFFFFFFFFFFFull;
            if (e == 0x7FF) return LE_ERR_INPUT;
            if (e == 0) e = 1; else mant |= (uint64_t)1 << 52;
            e -= 1075;
        }
        le_st(&y, i, quantize(mant, e + exp, neg, bits));
    }
    return LE_OK;
}

static double pow2(int64_t n) {
    double r = 1.0;
    for (; n > 0; n--) r *= 2.0;
    for (; n < 0; n++) r *= 0.5;
    return r;
}

static le_status dequant(le_op *op) {
    le_tensor x, y;
    int64_t exp, bits, i;
    double scale;
    LE_REQUIRE(op->n_in == 1 && op->n_out == 1 && le_in(op, 0, &x) && le_out(op, 0, &y),
               LE_ERR_SHAPE);
    LE_CHECK(le_exp(op, "exp", &exp));
    LE_CHECK(le_bits(op, "bits", 32, &bits));
    LE_REQUIRE(x.dtype == le_int_dtype(bits) && le_same_shape(&x, &y), LE_ERR_SHAPE);
    LE_REQUIRE(y.dtype == (bits > 24 ? LE_FLOAT64 : LE_FLOAT32), LE_ERR_SHAPE);
    if (!op->run) return LE_OK;
    scale = pow2(-exp);   /* q * 2**-exp is exact in double; the float cast rounds as numpy's */
    for (i = 0; i < x.numel; i++) {
        double v = (double)le_ld(&x, i) * scale;
        if (y.dtype == LE_FLOAT32) {
            float f = (float)v;
            memcpy(y.data + 4 * i, &f, 4);
        } else {
            memcpy(y.data + 8 * i, &v, 8);
        }
    }
    return LE_OK;
}

static le_status requant(le_op *op) {
    le_tensor x, y;
    int64_t exp_in, bits_in, exp, bits, i, shift;
    LE_REQUIRE(op->n_in == 1 && op->n_out == 1 && le_in(op, 0, &x) && le_out(op, 0, &y),
               LE_ERR_SHAPE);
    LE_CHECK(le_exp(op, "exp_in", &exp_in));
    LE_CHECK(le_bits(op, "bits_in", 32, &bits_in));
    LE_CHECK(le_exp(op, "exp", &exp));
    LE_CHECK(le_bits(op, "bits", 32, &bits));
    LE_REQUIRE(x.dtype == le_int_dtype(bits_in) && y.dtype == le_int_dtype(bits)
               && le_same_shape(&x, &y), LE_ERR_SHAPE);
    if (!op->run) return LE_OK;
    shift = exp_in - exp;
    for (i = 0; i < x.numel; i++) le_st(&y, i, le_requant(le_ld(&x, i), shift, bits));
    return LE_OK;
}

static const char *const a_quant[] = {"exp", "bits", NULL};
static const char *const a_requant[] = {"exp_in", "bits_in", "exp", "bits", NULL};

const le_op_entry le_ops_quant[] = {
    {LE_LINGER_DOMAIN, "Quant", quant, a_quant},
    {LE_LINGER_DOMAIN, "Dequant", dequant, a_quant},
    {LE_LINGER_DOMAIN, "Requant", requant, a_requant},
};
const uint32_t le_ops_quant_count = sizeof le_ops_quant / sizeof le_ops_quant[0];
