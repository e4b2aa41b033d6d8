/* Internal interface of the linger C engine: tensor views, the op context kernels see, the
 * attribute accessors and the integer arithmetic every kernel shares (the C form of
 * linger/numerics.py and linger/iqmath.py primitives). */
#ifndef LE_INTERNAL_H
#define LE_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "linger_engine.h"

#define LE_LINGER_DOMAIN "ai.linger"

/* Attribute types (onnx.AttributeProto numbers, as in the file). */
#define LE_A_FLOAT 1
#define LE_A_INT 2
#define LE_A_STRING 3
#define LE_A_TENSOR 4
#define LE_A_FLOATS 6
#define LE_A_INTS 7
#define LE_A_STRINGS 8

/* Largest |exponent| an attribute may hold (linger uses [-60, 60]); keeps shift sums exact. */
#define LE_MAX_EXP 1024

typedef struct {
    uint8_t *data;          /* NULL while ops are only checked (le_open) */
    int32_t dtype;
    int32_t ndim;
    int64_t dims[LE_MAX_DIMS];
    int64_t numel;
    uint32_t elsize;
    int32_t id;
} le_tensor;

/* What a kernel sees of its node. */
typedef struct {
    le_model *m;
    const uint8_t *ids;     /* n_in + n_out int32 tensor ids (-1: omitted) */
    const uint8_t *attrs;   /* first attribute record */
    uint32_t n_in, n_out, n_attr;
    int run;                /* 0: check attributes and shapes only; 1: compute */
    size_t scratch;         /* bytes of scratch the op needs (set while checking) */
} le_op;

typedef le_status (*le_kernel)(le_op *op);

typedef struct {
    const char *domain;     /* "" for standard ONNX ops */
    const char *op_type;
    le_kernel fn;
    const char *const *attrs;   /* attribute names the kernel reads; NULL-terminated */
} le_op_entry;

/* One family of ops per kernel file (k_*.c), each exporting its table; registry.c lists the
 * families compiled in. */
typedef struct {
    const char *name;
    const le_op_entry *ops;
    const uint32_t *count;
} le_family;

extern const le_family le_families[];
extern const uint32_t le_num_families;
/* op k of all families in order, or NULL */
const le_op_entry *le_registry_entry(uint32_t k);

/* ---- little-endian reads (the file may be at any address of any alignment) --------------- */
static inline uint32_t le_rd16(const uint8_t *p) { return (uint32_t)p[0] | ((uint32_t)p[1] << 8); }
static inline uint32_t le_rd32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline uint64_t le_rd64(const uint8_t *p) {
    return (uint64_t)le_rd32(p) | ((uint64_t)le_rd32(p + 4) << 32);
}
static inline int64_t le_rds64(const uint8_t *p) { return (int64_t)le_rd64(p); }

/* ---- tensors and attributes (le_model.c) --------------------------------------------------- */
uint32_t le_dtype_size(int32_t code);
/* Input k / output k of the op; absent (-1 id or k past the count): returns 0. */
int le_in(const le_op *op, uint32_t k, le_tensor *t);
int le_out(const le_op *op, uint32_t k, le_tensor *t);
/* Attribute lookups. Return 1 when present (with the right type), 0 when absent; a present
 * attribute of another type is an error: they return -1. */
int le_attr_int(const le_op *op, const char *name, int64_t *v);
int le_attr_ints(const le_op *op, const char *name, const uint8_t **p, uint32_t *count);
int le_attr_str(const le_op *op, const char *name, const char **s, uint32_t *len);
/* string k of a strings attribute (count: how many it holds) */
int le_attr_strs(const le_op *op, const char *name, uint32_t k, const char **s, uint32_t *len,
                 uint32_t *count);
int le_attr_floats(const le_op *op, const char *name, const uint8_t **p, uint32_t *count,
                   int *single);
/* Tensor attribute: dtype, ndim, dims, data (8-byte aligned in a valid file), nbytes. */
int le_attr_tensor(const le_op *op, const char *name, le_tensor *t);

/* required int attribute in [lo, hi] */
le_status le_req_int(const le_op *op, const char *name, int64_t lo, int64_t hi, int64_t *v);
/* optional int attribute in [lo, hi], default def */
le_status le_opt_int(const le_op *op, const char *name, int64_t def, int64_t lo, int64_t hi,
                     int64_t *v);
/* optional ints attribute of exactly n values (absent: every value def), each in [lo, hi] */
le_status le_opt_ints(const le_op *op, const char *name, uint32_t n, int64_t def, int64_t lo,
                      int64_t hi, int64_t *out);
/* exponent attribute: int in [-LE_MAX_EXP, LE_MAX_EXP] */
le_status le_exp(const le_op *op, const char *name, int64_t *v);
/* bit width attribute in [2, maxbits] */
le_status le_bits(const le_op *op, const char *name, int64_t maxbits, int64_t *v);

/* the dtype linger stores `bits`-bit integers in (numerics.int_dtype) */
int32_t le_int_dtype(int64_t bits);
int le_same_shape(const le_tensor *a, const le_tensor *b);
int64_t le_numel_range(const le_tensor *t, int from, int to);

/* Loads/stores of integer tensors as int64. */
int64_t le_ld(const le_tensor *t, int64_t i);
void le_st(const le_tensor *t, int64_t i, int64_t v);
/* Float tensors (float32/float64) for the standard ops that also take floats; the integer
   kernels never call these. */
int le_is_float(int32_t dtype);
double le_ldf(const le_tensor *t, int64_t i);
void le_stf(const le_tensor *t, int64_t i, double v);

/* ---- integer arithmetic (numerics.py / iqmath.py) ------------------------------------------ */
/* floor(x / 2**s) for 0 <= s <= 63, without relying on >> of negative values */
static inline int64_t le_asr(int64_t x, int s) {
    if (s <= 0) return x;
    if (s > 63) s = 63;
    return x >= 0 ? (int64_t)((uint64_t)x >> s) : -(int64_t)(((uint64_t)(-(x + 1)) >> s)) - 1;
}
/* x * 2**s with two's complement wrap (never undefined) */
static inline int64_t le_shl(int64_t x, int s) { return (int64_t)((uint64_t)x << s); }
static inline int64_t le_wadd(int64_t a, int64_t b) { return (int64_t)((uint64_t)a + (uint64_t)b); }
static inline int64_t le_wmul(int64_t a, int64_t b) { return (int64_t)((uint64_t)a * (uint64_t)b); }
static inline int64_t le_qmin(int64_t bits) { return -((int64_t)1 << (bits - 1)); }
static inline int64_t le_qmax(int64_t bits) { return ((int64_t)1 << (bits - 1)) - 1; }
static inline int64_t le_sat(int64_t q, int64_t bits) {
    int64_t lo = le_qmin(bits), hi = le_qmax(bits);
    return q < lo ? lo : (q > hi ? hi : q);
}
/* iqmath.rshift: (x + 2**(s-1)) >> s for s >= 1, s capped at 62; computed as
 * floor((floor(x / 2**(s-1)) + 1) / 2), which is the same and cannot overflow. */
static inline int64_t le_rshift(int64_t x, int64_t s) {
    if (s > 62) s = 62;
    return le_asr(le_asr(x, (int)s - 1) + 1, 1);
}
/* iqmath.requant = numerics.requantize: sat_bits(rounding shift of acc by `shift`). */
static inline int64_t le_requant(int64_t acc, int64_t shift, int64_t bits) {
    int64_t lim, s;
    if (shift > 0) return le_sat(le_rshift(acc, shift), bits);
    lim = (int64_t)1 << (bits - 1);
    s = -shift < 63 - bits ? -shift : 63 - bits;
    acc = acc < -lim ? -lim : (acc > lim ? lim : acc);
    return le_sat(acc * ((int64_t)1 << s), bits);
}
/* The 32-bit route of a rounding shift, for kernels that vectorize it: rs(v + a, s) for
 * 1 <= s <= 30, |v| <= vmax and vmax + |a| + 2**(s-1) < 2**30 (le_rs32_fits) is
 * (r >> s) - 2**(30-s) with r = v + a + 2**(s-1) + 2**30 = v + le_rs32_add(a, s), which lies in
 * [0, 2**31): a logical shift of a non-negative value, the floor of the division. */
static inline int le_rs32_fits(int64_t vmax, int64_t a, int64_t s) {
    return s >= 1 && s <= 30 && vmax + (a < 0 ? -a : a) + ((int64_t)1 << (s - 1))
                                    < ((int64_t)1 << 30);
}
static inline uint32_t le_rs32_add(int64_t a, int64_t s) {
    return (uint32_t)(a + ((int64_t)1 << (s - 1)) + ((int64_t)1 << 30));
}
/* floor(a / b) for b > 0 */
static inline int64_t le_floordiv(int64_t a, int64_t b) {
    int64_t q = a / b;
    return (q * b > a) ? q - 1 : q;
}
/* numerics.rounded_div: floor((2 num + den) / (2 den)), den > 0 */
static inline int64_t le_rounded_div(int64_t num, int64_t den) {
    return le_floordiv(2 * num + den, 2 * den);
}
static inline int le_bit_length(uint64_t x) {
    int n = 0;
    while (x) { n++; x >>= 1; }
    return n;
}

/* ---- broadcasting (numpy rules) over up to three operands ---------------------------------- */
typedef struct {
    int nd;
    int64_t dims[LE_MAX_DIMS];
    int64_t idx[LE_MAX_DIMS];
    int64_t st[3][LE_MAX_DIMS];
    int64_t off[3];
} le_iter;
/* out's shape must be the broadcast of a's and b's (b may be NULL). */
le_status le_bcast(le_iter *it, const le_tensor *out, const le_tensor *a, const le_tensor *b);
void le_iter_next(le_iter *it);

/* int32 dot product of int8 vectors (|sum| < 2**31 is the caller's bound), written in blocks of
 * 16 that a compiler vectorizes at -O2 (k_conv.c) */
int32_t le_dot_i8(const int8_t *a, const int8_t *b, int64_t n);

/* ---- integer gates (iqmath.py) -------------------------------------------------------------- */
int64_t le_sigmoid_q15(int64_t x11);
int64_t le_tanh_q15(int64_t x11);
int64_t le_phi_q15(int64_t x11);
/* 2**20 exp(d 2**-n) for d <= 0 (iqmath._exp_q20, k_nonlinear.c); *d16 gets d in Q16, >= -32 */
int64_t le_exp_q20(int64_t d, int64_t n, int64_t *d16);

#define LE_CHECK(expr) do { le_status s_ = (expr); if (s_ != LE_OK) return s_; } while (0)
#define LE_REQUIRE(cond, status) do { if (!(cond)) return (status); } while (0)

#endif
