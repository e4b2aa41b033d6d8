/* The original toolchain's integer algorithms, for models imported from its ONNX files
 * (linger/importers/thinker.py; formulas: linger/runtime/kernels/luna.py, which this file
 * follows operation by operation):
 *   SoftmaxLuna    sat_o(rs(clip(softmax_q15(to_q25(x)), 0, 32767), 15 - exp_o)) along axis
 *   LayerNormLuna  sat_o(rs(layernorm_q10(x) W + B, 10 + exp_w - exp_o)) over W.size values
 *   LSTMLuna, GRULuna  one direction of one layer, gates through 16-segment Q11 -> Q7 tables
 * The original computed parts of its softmax in IEEE binary64 (shift_rasym); they are reproduced
 * here in integers: rasym() below rounds to 53 bits as the conversion to binary64 does, and the
 * layer norm's epsilon term (a binary64 expression of exp_x and the row length) is evaluated
 * with the same roundings by eps_term(). The tables and constants come from le_tables.h,
 * generated from luna.py. Binary32 outputs (the recurrent states, a float32 Y) are IEEE bits built
 * from exact integers: no floating point here. */
#include "le_internal.h"
#include "le_tables.h"

#define I32_MAX 2147483647
#define I32_MIN (-2147483647 - 1)

static int64_t clip32(int64_t v) { return v < I32_MIN ? I32_MIN : (v > I32_MAX ? I32_MAX : v); }

/* |v| as uint64 (INT64_MIN included) */
static uint64_t mag(int64_t v) { return v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v; }

/* a rounded to 53 significant bits, half to even: the value a holds as a binary64 (a < 2**63) */
static uint64_t rn53(uint64_t a) {
    int drop = le_bit_length(a) - 53;
    uint64_t q, rem, half;
    if (drop <= 0) return a;
    q = a >> drop;
    rem = a & (((uint64_t)1 << drop) - 1);
    half = (uint64_t)1 << (drop - 1);
    if (rem > half || (rem == half && (q & 1u))) q++;
    return q << drop;
}

/* luna._rasym(v, n) = floor(f64(v) 2**-n + 0.5) for 12 <= n <= 62. The binary64 sum w + 0.5
 * (w = f64(v) 2**-n, |w| < 2**51) has the floor of the exact sum: 0.5 is a multiple of w's
 * unit in the last place, a negative w's sum is exact or within (0, 0.5], and a positive sum that
 * rounds into the next binade stays below the next integer. */
static int64_t rasym(int64_t v, int n) {
    uint64_t r = rn53(mag(v)), half = (uint64_t)1 << (n - 1);
    if (v >= 0) return (int64_t)((r + half) >> n);
    if (r <= half) return 0;
    return -(int64_t)((r - half + ((uint64_t)1 << n) - 1) >> n);
}

/* luna._shift_sat: v << n (n >= 0, int32 saturation) or floor(v / 2**-n), clipped to int32 */
static int64_t shift_sat(int64_t v, int64_t n) {
    if (n > 0 && mag(v) >= (n >= 31 ? (uint64_t)1 : (uint64_t)1 << (31 - n)))
        return v > 0 ? I32_MAX : I32_MIN;
    if (n >= 0) return clip32(le_shl(v, (int)(n < 62 ? n : 62)));   /* numpy: clip(n, 0, 62) */
    return clip32(le_asr(v, -n > 63 ? 63 : (int)-n));
}

/* luna._bit_length on int64 (0 for v <= 0) */
static int64_t bitlen(int64_t v) { return v > 0 ? le_bit_length((uint64_t)v) : 0; }

/* ---- SoftmaxLuna --------------------------------------------------------------------------- */
/* luna.to_q25 (numpy's int64 shift wraps; so does le_shl) */
static int64_t to_q25(int64_t q, int64_t exp) {
    int64_t s = 25 - exp;
    if (s >= 0) return clip32(le_shl(q, (int)(s < 38 ? s : 38)));
    return clip32(le_rshift(q, -s));
}

/* Q23 base-2 power of the row's d = x - max (<= 0): trunc(Y 2**E) of luna.softmax_q15 */
static int64_t softmax_exp(int64_t d) {
    int64_t xx = clip32(rasym(clip32(d) * LE_LUNA_LOG2E_Q29, 31));   /* |d LOG2E| < 2**61 */
    int64_t e = le_asr(xx, 23) + 1, f = (int64_t)((uint64_t)xx & 0x7FFFFFu) - 0x800000, y;
    int k;
    y = (int64_t)le_tab_luna_softmax_p23[0];
    for (k = 1; k < LE_LUNA_SOFTMAX_P23_LEN; k++)        /* |y f| < 2**48 */
        y = rasym(y * f, 23) + (int64_t)le_tab_luna_softmax_p23[k];
    if (e >= 0) return y * ((int64_t)1 << e);           /* e <= 1 */
    if (e < -62) return 0;
    return y >= 0 ? le_asr(y, (int)-e) : -le_asr(-y, (int)-e);   /* trunc toward zero */
}

static le_status softmax_luna(le_op *op) {
    le_tensor x, y;
    int64_t axis, ex, bx, eo, bo, outer = 1, len, inner = 1, o, i, j;
    int64_t *e;
    LE_REQUIRE(op->n_in == 1 && op->n_out == 1 && le_in(op, 0, &x) && le_out(op, 0, &y),
               LE_ERR_SHAPE);
    LE_CHECK(le_req_int(op, "axis", -LE_MAX_DIMS, LE_MAX_DIMS, &axis));
    LE_CHECK(le_exp(op, "exp_x", &ex));
    LE_CHECK(le_bits(op, "bits_x", 32, &bx));
    LE_CHECK(le_exp(op, "exp_o", &eo));
    LE_CHECK(le_bits(op, "bits_o", 32, &bo));
    LE_REQUIRE(x.dtype == le_int_dtype(bx) && y.dtype == le_int_dtype(bo) && le_same_shape(&x, &y),
               LE_ERR_SHAPE);
    if (axis < 0) axis += x.ndim;
    LE_REQUIRE(axis >= 0 && axis < x.ndim, LE_ERR_ATTR);
    len = x.dims[axis];
    outer = le_numel_range(&x, 0, (int)axis);
    inner = le_numel_range(&x, (int)axis + 1, x.ndim);
    op->scratch = (size_t)len * 8;
    if (!op->run || x.numel == 0) return LE_OK;
    e = (int64_t *)(void *)op->m->scratch;
    for (o = 0; o < outer; o++)
        for (j = 0; j < inner; j++) {
            int64_t base = o * len * inner + j, mx = I32_MIN, s = 0, nsa, n, r, k;
            for (i = 0; i < len; i++) {
                int64_t v = to_q25(le_ld(&x, base + i * inner), ex);
                if (v > mx) mx = v;
            }
            for (i = 0; i < len; i++) {
                e[i] = softmax_exp(to_q25(le_ld(&x, base + i * inner), ex) - mx);
                s += e[i];
            }
            if (s > I32_MAX) s = I32_MAX;
            nsa = s == 0 ? 0 : 31 - bitlen(s);
            n = nsa - 8;
            s = shift_sat(s, n);
            n += 1;
            r = 0xBB5000 - s;
            for (k = 0; k < 2; k++) {                     /* |s r|, |r g| < 2**50 */
                int64_t g = 2 * (0x400000 - rasym(s * r, 23));
                r += rasym(r * g, 23);
            }
            r = shift_sat(r, n);
            for (i = 0; i < len; i++) {                   /* |r e| < 2**31 2**24 */
                int64_t q = clip32(rasym(r * e[i], 31));
                q = q < 0 ? 0 : (q > 32767 ? 32767 : q);
                le_st(&y, base + i * inner, le_requant(q, 15 - eo, bo));
            }
        }
    return LE_OK;
}

/* ---- LayerNormLuna ------------------------------------------------------------------------- */
/* round(a k) to 53 bits (half to even) for a < 2**53, k < 2**17: mantissa, *e gets the exponent */
static uint64_t mul_rn53(uint64_t a, uint64_t k, int *e) {
    uint64_t lo = (a & 0xFFFFFFFFu) * k, hi = (a >> 32) * k + (lo >> 32), l32 = lo & 0xFFFFFFFFu;
    uint64_t m, rem, half;
    int drop;
    *e = 0;
    if (hi == 0) return l32;
    drop = le_bit_length(hi) + 32 - 53;                   /* the product is hi 2**32 + l32 */
    if (drop <= 0) return (hi << 32) | l32;
    m = (hi << (32 - drop)) | (l32 >> drop);
    rem = l32 & (((uint64_t)1 << drop) - 1);
    half = (uint64_t)1 << (drop - 1);
    if (rem > half || (rem == half && (m & 1u))) m++;
    if (m >> 53) { m >>= 1; drop++; }
    *e = drop;
    return m;
}

/* q_eps = floor(EPS * 2.0**(2 exp_x) * k * k + 0.5) as Python evaluates it in binary64 (left to
 * right, each product rounded); LE_ERR_ATTR where it exceeds int32 (luna.py raises there). */
static le_status eps_term(int64_t exp_x, int64_t k, int64_t *q) {
    int64_t p = 2 * exp_x, ex;
    int e1, e2;
    uint64_t m;
    if (p <= -64) { *q = 0; return LE_OK; }               /* < 2**-48: floor(v + 0.5) = 0 */
    LE_REQUIRE(p < 48, LE_ERR_ATTR);                      /* EPS 2**48 > 2**31 already */
    m = mul_rn53(LE_LUNA_EPS_NUM, (uint64_t)k, &e1);      /* EPS 2**p is exact: a power of two */
    m = mul_rn53(m, (uint64_t)k, &e2);
    ex = p + e1 + e2 - LE_LUNA_EPS_LOG2_DEN;              /* value m 2**ex */
    if (ex >= 0) {
        LE_REQUIRE(le_bit_length(m) + ex <= 31, LE_ERR_ATTR);
        *q = (int64_t)(m << ex);
    } else if (ex < -62) {
        *q = 0;                                            /* m 2**ex < 2**-9 */
    } else {
        *q = (int64_t)(rn53(m + ((uint64_t)1 << (-ex - 1))) >> -ex);   /* the binary64 sum */
    }
    LE_REQUIRE(*q <= I32_MAX, LE_ERR_ATTR);
    return LE_OK;
}

static le_status layernorm_luna(le_op *op) {
    le_tensor x, w, b, y;
    int64_t ex, bx, ew, eo, bo, k, prod = 1, rows, row, i, q_eps;
    int lead;
    LE_REQUIRE(op->n_in == 3 && op->n_out == 1 && le_in(op, 0, &x) && le_in(op, 1, &w)
               && le_in(op, 2, &b) && le_out(op, 0, &y), LE_ERR_SHAPE);
    LE_CHECK(le_exp(op, "exp_x", &ex));
    LE_CHECK(le_bits(op, "bits_x", 16, &bx));
    LE_CHECK(le_exp(op, "exp_w", &ew));
    LE_CHECK(le_exp(op, "exp_o", &eo));
    LE_CHECK(le_bits(op, "bits_o", 32, &bo));
    LE_REQUIRE(x.dtype == le_int_dtype(bx) && w.dtype == LE_INT16 && b.dtype == LE_INT32
               && y.dtype == le_int_dtype(bo) && le_same_shape(&x, &y), LE_ERR_SHAPE);
    k = w.numel;
    lead = x.ndim;
    while (lead > 0 && prod < k) prod *= x.dims[--lead];
    LE_REQUIRE(prod == k && b.numel == k && k >= 1 && k <= 65536, LE_ERR_SHAPE);
    LE_CHECK(eps_term(ex, k, &q_eps));
    if (!op->run) return LE_OK;
    rows = le_numel_range(&x, 0, lead);
    for (row = 0; row < rows; row++) {
        int64_t s1 = 0, s2 = 0, ks2, d, bl, j, t, r, s, base = row * k;
        for (i = 0; i < k; i++) {                        /* |x| <= 2**15, k <= 2**16 */
            int64_t v = le_ld(&x, base + i);
            s1 += v;
            s2 += v * v;
        }
        ks2 = k * s2;
        /* the original's int32 products: beyond them its result is not reproducible */
        if (ks2 > I32_MAX || s1 * s1 > I32_MAX) return LE_ERR_INPUT;
        d = ks2 - s1 * s1 + q_eps;
        if (d > I32_MAX) return LE_ERR_INPUT;
        bl = bitlen(d) - 1;
        j = le_floordiv(bl, 2) - 4;
        t = j >= 0 ? le_asr(d, (int)(2 * j)) : le_shl(d, (int)(-2 * j));
        if (d == 0) {
            r = (int64_t)le_tab_luna_rsqrt_q15[0];
            s = 4;
        } else {
            t -= 256;
            r = (int64_t)le_tab_luna_rsqrt_q15[t < 0 ? 0 : (t > 767 ? 767 : t)];
            s = 9 + j;
        }
        for (i = 0; i < k; i++) {
            int64_t v = (k * le_ld(&x, base + i) - s1) * r;    /* < 2**33 2**15 */
            int64_t z = le_sat(le_asr(v + ((int64_t)1 << (s - 1)), (int)s), 16);
            le_st(&y, base + i, le_requant(z * le_ld(&w, i) + le_ld(&b, i), 10 + ew - eo, bo));
        }
    }
    return LE_OK;
}

/* ---- LSTMLuna, GRULuna --------------------------------------------------------------------- */
/* index of the first segment j with a <= bands[j + 1] (16: none) */
static int segment(const uint16_t *bands, int64_t a) {
    int j;
    for (j = 0; j < 16; j++)
        if (a <= (int64_t)bands[j + 1]) return j;
    return 16;
}

/* luna.sigmoid_q15 / tanh_q15 on a Q11 value; 0 where |x| > 32768 */
static int64_t sigmoid15(int64_t x) {
    int j = segment(le_tab_luna_sigmoid_bands, x < 0 ? -x : x);
    int64_t b0;
    if (j == 16) return 0;
    b0 = (int64_t)le_tab_luna_sigmoid_bias_pos[j];
    return le_asr((int64_t)le_tab_luna_sigmoid_slopes[j] * x, (int)le_tab_luna_sigmoid_shifts[j])
           + (x < 0 ? 32768 - b0 : b0);
}

static int64_t tanh15(int64_t x) {
    int64_t a = x == -32768 ? 32767 : (x < 0 ? -x : x), p, bias;
    int j = segment(le_tab_luna_tanh_bands, a), sh;
    if (j == 16) return 0;
    sh = (int)le_tab_luna_tanh_shifts[j];
    p = (int64_t)le_tab_luna_tanh_slopes[j] * a;
    bias = (int64_t)le_tab_luna_tanh_bias[j];
    return x < 0 ? le_asr(-p, sh) - bias : le_asr(p, sh) + bias;
}

/* gate inputs are below 2**53 (checked bounds); |x| > 32768 never reaches the products */
static int64_t sig7(int64_t x) {
    int64_t q = le_requant(sigmoid15(x), 8, 8);
    return q < 0 ? 0 : q;
}
static int64_t tanh7(int64_t x) { return le_requant(tanh15(x), 8, 8); }

/* IEEE binary32 bits of v 2**-14 (rounded half to even; exact for the states here) */
static uint32_t f32_q14(int64_t v) {
    uint64_t a = mag(v), half;
    int64_t e = -14;
    int drop = le_bit_length(a) - 24;
    if (a == 0) return 0;
    if (drop > 0) {
        uint64_t rem = a & (((uint64_t)1 << drop) - 1);
        half = (uint64_t)1 << (drop - 1);
        a >>= drop;
        if (rem > half || (rem == half && (a & 1u))) a++;
        e += drop;
        if (a >> 24) { a >>= 1; e++; }
    }
    while (a < ((uint64_t)1 << 23)) { a <<= 1; e--; }      /* a 2**e, 2**23 <= a < 2**24 */
    return (v < 0 ? 0x80000000u : 0u) | (uint32_t)((e + 23 + 127) << 23)
           | (uint32_t)(a & 0x7FFFFFu);
}

static void st_f32(const le_tensor *t, int64_t i, int64_t q14) {
    uint32_t u = f32_q14(q14);
    memcpy(t->data + 4 * i, &u, 4);
}

typedef struct {
    int lstm;
    int64_t g, hs, batch_first, forward, exp_x, exp_iw, exp_hw, exp_h, exp_o, bits_o;
    int64_t steps, n, f;
    le_tensor x, len, h0, s0, wih, whh, bih, bhh, y, hn, cn;
    int has_len, has_h0, has_s0, has_bih, has_bhh, has_y, has_hn, has_cn;
} lrnn;

/* |acc| bound of a gate row moved to Q11 (to_q11 by `shift` = 11 - exp): below 2**52 so that
 * numpy's int64 and the binary64 products of luna.py stay exact and nothing wraps */
static le_status gate_bound(int64_t fin, int64_t bits_in, int has_bias, int64_t exp) {
    uint64_t bound;
    int64_t s = 11 - exp;
    LE_REQUIRE(fin <= ((int64_t)1 << 28), LE_ERR_SHAPE);
    bound = (uint64_t)fin << (bits_in - 1 + 7);
    if (has_bias) bound += (uint64_t)1 << 31;
    LE_REQUIRE(le_bit_length(bound) + (s > 0 ? s : 0) <= 52, LE_ERR_ATTR);
    return LE_OK;
}

static int int_dtype(int32_t dt) {
    return dt == LE_INT8 || dt == LE_INT16 || dt == LE_INT32 || dt == LE_INT64 || dt == LE_UINT8
           || dt == LE_UINT16 || dt == LE_UINT32;
}

static int state_ok(const le_tensor *t, int32_t dtype, int64_t n, int64_t hs) {
    return t->dtype == dtype && t->ndim == 3 && t->dims[0] == 1 && t->dims[1] == n
           && t->dims[2] == hs;
}

static le_status lrnn_setup(le_op *op, int lstm, lrnn *r) {
    int64_t bx, v;
    memset(r, 0, sizeof *r);
    r->lstm = lstm;
    r->g = lstm ? 4 : 3;
    LE_REQUIRE(op->n_in >= 6 && op->n_in <= 8 && op->n_out >= 1
               && op->n_out <= (uint32_t)(lstm ? 3 : 2), LE_ERR_SHAPE);
    LE_CHECK(le_req_int(op, "hidden_size", 1, 1 << 16, &r->hs));
    LE_CHECK(le_req_int(op, "batch_first", 0, 1, &r->batch_first));
    LE_CHECK(le_req_int(op, "go_forward", 0, 1, &r->forward));
    LE_CHECK(le_exp(op, "exp_x", &r->exp_x));
    LE_CHECK(le_bits(op, "bits_x", 16, &bx));
    LE_CHECK(le_exp(op, "exp_iw", &r->exp_iw));
    LE_CHECK(le_exp(op, "exp_hw", &r->exp_hw));
    /* h14 = q_h 2**(14 - exp_h) and sat8(h14 2**(exp_h - 14)) within int64, without wrapping */
    LE_CHECK(le_req_int(op, "exp_h", -40, 52, &r->exp_h));
    LE_CHECK(le_req_int(op, "bits_o", 0, 32, &r->bits_o));
    LE_CHECK(le_exp(op, "exp_o", &r->exp_o));
    LE_REQUIRE(r->bits_o == 0 || r->exp_o <= 52, LE_ERR_ATTR);
    LE_REQUIRE(le_in(op, 0, &r->x) && r->x.dtype == le_int_dtype(bx) && r->x.ndim == 3,
               LE_ERR_SHAPE);
    r->steps = r->x.dims[r->batch_first ? 1 : 0];
    r->n = r->x.dims[r->batch_first ? 0 : 1];
    r->f = r->x.dims[2];
    LE_REQUIRE(le_in(op, 4, &r->wih) && r->wih.dtype == LE_INT8 && r->wih.ndim == 2
               && r->wih.dims[0] == r->g * r->hs && r->wih.dims[1] == r->f, LE_ERR_SHAPE);
    LE_REQUIRE(le_in(op, 5, &r->whh) && r->whh.dtype == LE_INT8 && r->whh.ndim == 2
               && r->whh.dims[0] == r->g * r->hs && r->whh.dims[1] == r->hs, LE_ERR_SHAPE);
    r->has_bih = le_in(op, 6, &r->bih);
    r->has_bhh = le_in(op, 7, &r->bhh);
    if (r->has_bih)
        LE_REQUIRE(r->bih.dtype == LE_INT32 && r->bih.ndim == 1
                   && r->bih.dims[0] == r->g * r->hs, LE_ERR_SHAPE);
    if (r->has_bhh)
        LE_REQUIRE(r->bhh.dtype == LE_INT32 && r->bhh.ndim == 1
                   && r->bhh.dims[0] == r->g * r->hs, LE_ERR_SHAPE);
    r->has_len = le_in(op, 1, &r->len);
    if (r->has_len) LE_REQUIRE(int_dtype(r->len.dtype) && r->len.numel == r->n, LE_ERR_SHAPE);
    /* the importer's states: h0 int8 at exp_h, the fourth (c0 / h0 in Q7) int16 */
    r->has_h0 = le_in(op, 2, &r->h0);
    if (r->has_h0) LE_REQUIRE(state_ok(&r->h0, LE_INT8, r->n, r->hs), LE_ERR_SHAPE);
    r->has_s0 = le_in(op, 3, &r->s0);
    if (r->has_s0) LE_REQUIRE(state_ok(&r->s0, LE_INT16, r->n, r->hs), LE_ERR_SHAPE);
    LE_CHECK(gate_bound(r->f, bx, r->has_bih, r->exp_x + r->exp_iw));
    LE_CHECK(gate_bound(r->hs, 8, r->has_bhh, r->exp_h + r->exp_hw));
    r->has_y = le_out(op, 0, &r->y);
    if (r->has_y)
        LE_REQUIRE(r->y.dtype == (r->bits_o ? le_int_dtype(r->bits_o) : LE_FLOAT32)
                   && r->y.ndim == 3 && r->y.dims[0] == r->x.dims[0]
                   && r->y.dims[1] == r->x.dims[1] && r->y.dims[2] == r->hs, LE_ERR_SHAPE);
    r->has_hn = le_out(op, 1, &r->hn);
    if (r->has_hn) LE_REQUIRE(state_ok(&r->hn, LE_FLOAT32, r->n, r->hs), LE_ERR_SHAPE);
    r->has_cn = lstm && le_out(op, 2, &r->cn);
    if (r->has_cn) LE_REQUIRE(state_ok(&r->cn, LE_FLOAT32, r->n, r->hs), LE_ERR_SHAPE);
    /* int64 scratch: q_h, h14, the state (c7 and c14, or h7) per sequence; gi, gh rows */
    v = (lstm ? 4 : 3) * r->n * r->hs + 2 * r->g * r->hs;
    op->scratch = (size_t)v * 8;
    return LE_OK;
}

/* out[j] = to_q11(v . W[j] + b[j], exp) for the g*hs rows; v: `fin` values (tensor row or
 * int64 array) */
static void lrnn_gates(const le_tensor *vt, int64_t off, const int64_t *va, int64_t fin,
                       const le_tensor *w, const le_tensor *b, int has_b, int64_t rows,
                       int64_t exp, int64_t *out) {
    int64_t j, i, s = 11 - exp;
    const int8_t *wr = (const int8_t *)w->data;
    for (j = 0; j < rows; j++, wr += fin) {
        int64_t acc = has_b ? le_ld(b, j) : 0;
        if (va)
            for (i = 0; i < fin; i++) acc += va[i] * wr[i];
        else
            for (i = 0; i < fin; i++) acc += le_ld(vt, off + i) * wr[i];
        out[j] = s >= 0 ? acc * ((int64_t)1 << s) : le_rshift(acc, -s);
    }
}

static le_status lrnn_run(le_op *op, int lstm) {
    lrnn r;
    int64_t nh, t, n, j, ghr;
    int64_t *qh, *h14, *st, *st2, *gi, *gh;
    LE_CHECK(lrnn_setup(op, lstm, &r));
    if (!op->run) return LE_OK;
    nh = r.n * r.hs;
    qh = (int64_t *)(void *)op->m->scratch;
    h14 = qh + nh;
    st = h14 + nh;                      /* LSTM c7, GRU h7 */
    st2 = st + nh;                      /* LSTM c14 */
    gi = st + (lstm ? 2 : 1) * nh;
    gh = gi + r.g * r.hs;
    ghr = r.g * r.hs;
    if (r.has_len)
        for (n = 0; n < r.n; n++) {
            int64_t len = le_ld(&r.len, n);
            if (len < 0 || len > r.steps) return LE_ERR_INPUT;
        }
    for (j = 0; j < nh; j++) {
        qh[j] = r.has_h0 ? le_ld(&r.h0, j) : 0;
        h14[j] = r.exp_h <= 14 ? qh[j] * ((int64_t)1 << (14 - r.exp_h))
                               : le_rshift(qh[j], r.exp_h - 14);
        st[j] = r.has_s0 ? le_ld(&r.s0, j) : 0;
        if (lstm) st2[j] = st[j] * 128;
    }
    if (r.has_y) {
        int64_t i;
        for (i = 0; i < r.y.numel; i++) {
            if (r.bits_o) le_st(&r.y, i, 0);
            else st_f32(&r.y, i, 0);
        }
    }
    for (t = 0; t < r.steps; t++)
        for (n = 0; n < r.n; n++) {
            int64_t len = r.has_len ? le_ld(&r.len, n) : r.steps, row, H = r.hs;
            int64_t *q = qh + n * H, *hh = h14 + n * H, *s = st + n * H, *s2 = st2 + n * H;
            if (t >= len) continue;
            row = r.forward ? t : len - 1 - t;
            lrnn_gates(&r.x, (r.batch_first ? n * r.steps + row : row * r.n + n) * r.f, NULL,
                       r.f, &r.wih, &r.bih, r.has_bih, ghr, r.exp_x + r.exp_iw, gi);
            lrnn_gates(NULL, 0, q, H, &r.whh, &r.bhh, r.has_bhh, ghr, r.exp_h + r.exp_hw, gh);
            for (j = 0; j < H; j++) {
                int64_t h;
                if (lstm) {
                    int64_t v[4], c14;
                    int k;
                    for (k = 0; k < 4; k++) v[k] = le_sat(gi[k * H + j] + gh[k * H + j], 16);
                    c14 = sig7(v[1]) * s[j] + sig7(v[0]) * tanh7(v[2]);
                    h = sig7(v[3]) * tanh7(le_sat(le_rshift(c14, 3), 16));
                    s[j] = le_rshift(c14, 7);
                    s2[j] = c14;
                } else {
                    int64_t rg = sig7(gi[j] + gh[j]), zg = sig7(gi[H + j] + gh[H + j]);
                    int64_t ng = tanh7(gi[2 * H + j] + le_rshift(rg * gh[2 * H + j], 7));
                    h = ng * 128 + zg * (s[j] - ng);
                    s[j] = le_rshift(h, 7);
                }
                hh[j] = h;
                q[j] = le_requant(h, 14 - r.exp_h, 8);
                if (r.has_y) {
                    int64_t at = (r.batch_first ? n * r.steps + row : row * r.n + n) * H + j;
                    if (r.bits_o) le_st(&r.y, at, le_requant(h, 14 - r.exp_o, r.bits_o));
                    else st_f32(&r.y, at, h);
                }
            }
        }
    for (j = 0; j < nh; j++) {
        if (r.has_hn) st_f32(&r.hn, j, h14[j]);
        if (r.has_cn) st_f32(&r.cn, j, st2[j]);
    }
    return LE_OK;
}

static le_status lstm_luna(le_op *op) { return lrnn_run(op, 1); }
static le_status gru_luna(le_op *op) { return lrnn_run(op, 0); }

static const char *const a_softmax[] = {"axis", "exp_x", "bits_x", "exp_o", "bits_o", NULL};
static const char *const a_layernorm[] = {"exp_x", "bits_x", "exp_w", "exp_o", "bits_o", NULL};
static const char *const a_rnn[] = {"hidden_size", "batch_first", "go_forward", "exp_x", "bits_x",
                                    "exp_iw", "exp_hw", "exp_h", "exp_o", "bits_o", NULL};

const le_op_entry le_ops_luna[] = {
    {LE_LINGER_DOMAIN, "SoftmaxLuna", softmax_luna, a_softmax},
    {LE_LINGER_DOMAIN, "LayerNormLuna", layernorm_luna, a_layernorm},
    {LE_LINGER_DOMAIN, "LSTMLuna", lstm_luna, a_rnn},
    {LE_LINGER_DOMAIN, "GRULuna", gru_luna, a_rnn},
};
const uint32_t le_ops_luna_count = sizeof le_ops_luna / sizeof le_ops_luna[0];
