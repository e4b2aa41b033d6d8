/* Standard ONNX layout ops (runtime/kernels/layout.py), EmbeddingInt and LutInt: they move bytes
 * without changing them. Output shapes are the ones the packer measured (in the file); each
 * kernel checks them against its inputs before moving anything. */
#include "le_internal.h"

static int64_t ld_int(const le_tensor *t, int64_t i) { return le_ld(t, i); }

static int int_tensor(const le_tensor *t) {
    return t->dtype == LE_INT64 || t->dtype == LE_INT32 || t->dtype == LE_INT16
           || t->dtype == LE_INT8 || t->dtype == LE_UINT8 || t->dtype == LE_UINT16
           || t->dtype == LE_UINT32;
}

/* Reshape-like ops: same dtype, same element count, the bytes as they are (the planner may
 * have put the output on the input's bytes: then nothing moves). */
static le_status same_bytes(le_op *op, uint32_t max_in) {
    le_tensor x, y;
    LE_REQUIRE(op->n_in >= 1 && op->n_in <= max_in && op->n_out == 1 && le_in(op, 0, &x)
               && le_out(op, 0, &y), LE_ERR_SHAPE);
    LE_REQUIRE(x.dtype == y.dtype && x.numel == y.numel, LE_ERR_SHAPE);
    if (op->run && x.data != y.data) memmove(y.data, x.data, (size_t)(x.numel * x.elsize));
    return LE_OK;
}

static le_status identity(le_op *op) { return same_bytes(op, 1); }
static le_status reshape(le_op *op) {
    le_tensor s;
    LE_REQUIRE(op->n_in == 2 && le_in(op, 1, &s) && int_tensor(&s), LE_ERR_SHAPE);
    return same_bytes(op, 2);
}
static le_status flatten(le_op *op) {
    le_tensor x, y;
    int64_t axis;
    LE_REQUIRE(op->n_in == 1 && le_in(op, 0, &x) && op->n_out == 1 && le_out(op, 0, &y),
               LE_ERR_SHAPE);
    LE_CHECK(le_opt_int(op, "axis", 1, -LE_MAX_DIMS, LE_MAX_DIMS, &axis));
    if (axis < 0) axis += x.ndim;
    LE_REQUIRE(axis >= 0 && axis <= x.ndim, LE_ERR_ATTR);
    LE_REQUIRE(y.ndim == 2 && y.dims[0] == le_numel_range(&x, 0, (int)axis), LE_ERR_SHAPE);
    return same_bytes(op, 1);
}
static le_status squeeze(le_op *op) { return same_bytes(op, 2); }
static le_status unsqueeze(le_op *op) { return same_bytes(op, 2); }

static le_status constant(le_op *op) {
    le_tensor y, v;
    int64_t iv;
    const uint8_t *p;
    uint32_t count;
    int single, n = 0, r;
    LE_REQUIRE(op->n_in == 0 && op->n_out == 1 && le_out(op, 0, &y), LE_ERR_SHAPE);
    r = le_attr_tensor(op, "value", &v);
    LE_REQUIRE(r >= 0, LE_ERR_ATTR);
    if (r == 1) {
        LE_REQUIRE(v.dtype == y.dtype && le_same_shape(&v, &y), LE_ERR_SHAPE);
        if (op->run) memcpy(y.data, v.data, (size_t)(v.numel * v.elsize));
        return LE_OK;
    }
    r = le_attr_int(op, "value_int", &iv);
    LE_REQUIRE(r >= 0, LE_ERR_ATTR);
    if (r == 1) {
        LE_REQUIRE(y.dtype == LE_INT64 && y.numel == 1 && y.ndim == 0, LE_ERR_SHAPE);
        if (op->run) memcpy(y.data, &iv, 8);
        return LE_OK;
    }
    r = le_attr_ints(op, "value_ints", &p, &count);
    LE_REQUIRE(r >= 0, LE_ERR_ATTR);
    if (r == 1) {
        LE_REQUIRE(y.dtype == LE_INT64 && y.ndim == 1 && y.numel == count, LE_ERR_SHAPE);
        for (n = 0; op->run && n < (int)count; n++) le_st(&y, n, le_rds64(p + 8 * n));
        return LE_OK;
    }
    r = le_attr_floats(op, "value_float", &p, &count, &single);
    if (r == 0) r = le_attr_floats(op, "value_floats", &p, &count, &single);
    LE_REQUIRE(r == 1, LE_ERR_ATTR);
    LE_REQUIRE(y.dtype == LE_FLOAT32 && y.numel == count && y.ndim == (single ? 0 : 1),
               LE_ERR_SHAPE);
    if (op->run) memcpy(y.data, p, (size_t)count * 4);   /* little-endian float32 bits */
    return LE_OK;
}

static le_status shape(le_op *op) {
    le_tensor x, y;
    int64_t start, end, i;
    int r;
    LE_REQUIRE(op->n_in == 1 && op->n_out == 1 && le_in(op, 0, &x) && le_out(op, 0, &y),
               LE_ERR_SHAPE);
    LE_CHECK(le_opt_int(op, "start", 0, INT64_MIN, INT64_MAX, &start));
    r = le_attr_int(op, "end", &end);
    LE_REQUIRE(r >= 0, LE_ERR_ATTR);
    if (r == 0) end = x.ndim;
    /* python slice of the shape list */
    if (start < 0) start = start + x.ndim < 0 ? 0 : start + x.ndim;
    if (end < 0) end = end + x.ndim < 0 ? 0 : end + x.ndim;
    if (start > x.ndim) start = x.ndim;
    if (end > x.ndim) end = x.ndim;
    if (end < start) end = start;
    LE_REQUIRE(y.dtype == LE_INT64 && y.ndim == 1 && y.dims[0] == end - start, LE_ERR_SHAPE);
    for (i = start; op->run && i < end; i++) le_st(&y, i - start, x.dims[i]);
    return LE_OK;
}

/* Copy x into y through an index map: y[o] = x[src(o)], given per-axis strides of x for y's
 * axes (an odometer over y). */
static void gather_copy(const le_tensor *x, const le_tensor *y, const int64_t *xst,
                        const int64_t *start) {
    int64_t idx[LE_MAX_DIMS] = {0}, off = 0, o, es = x->elsize;
    int i;
    for (i = 0; i < y->ndim; i++) off += start[i];
    for (o = 0; o < y->numel; o++) {
        memcpy(y->data + o * es, x->data + off * es, (size_t)es);
        for (i = y->ndim - 1; i >= 0; i--) {
            off += xst[i];
            if (++idx[i] < y->dims[i]) break;
            off -= xst[i] * y->dims[i];
            idx[i] = 0;
        }
    }
}

static void strides(const le_tensor *t, int64_t *st) {
    int64_t s = 1;
    int i;
    for (i = t->ndim - 1; i >= 0; i--) {
        st[i] = s;
        s *= t->dims[i];
    }
}

static le_status transpose(le_op *op) {
    le_tensor x, y;
    int64_t perm[LE_MAX_DIMS], xst[LE_MAX_DIMS], yst[LE_MAX_DIMS], start[LE_MAX_DIMS] = {0};
    int i, used[LE_MAX_DIMS] = {0};
    const uint8_t *p;
    uint32_t n;
    int r;
    LE_REQUIRE(op->n_in == 1 && op->n_out == 1 && le_in(op, 0, &x) && le_out(op, 0, &y),
               LE_ERR_SHAPE);
    r = le_attr_ints(op, "perm", &p, &n);
    LE_REQUIRE(r >= 0 && (r == 0 || n == (uint32_t)x.ndim), LE_ERR_ATTR);
    for (i = 0; i < x.ndim; i++) {
        perm[i] = r ? le_rds64(p + 8 * i) : x.ndim - 1 - i;
        if (perm[i] < 0) perm[i] += x.ndim;
        LE_REQUIRE(perm[i] >= 0 && perm[i] < x.ndim && !used[perm[i]], LE_ERR_ATTR);
        used[perm[i]] = 1;
    }
    LE_REQUIRE(y.dtype == x.dtype && y.ndim == x.ndim, LE_ERR_SHAPE);
    for (i = 0; i < x.ndim; i++) LE_REQUIRE(y.dims[i] == x.dims[perm[i]], LE_ERR_SHAPE);
    if (!op->run) return LE_OK;
    strides(&x, xst);
    for (i = 0; i < x.ndim; i++) yst[i] = xst[perm[i]];
    gather_copy(&x, &y, yst, start);
    return LE_OK;
}

static le_status concat(le_op *op) {
    le_tensor y, t;
    int64_t axis, total = 0, outer, row, col = 0, r;
    uint32_t k;
    int i;
    LE_REQUIRE(op->n_in >= 1 && op->n_out == 1 && le_out(op, 0, &y), LE_ERR_SHAPE);
    LE_CHECK(le_req_int(op, "axis", -LE_MAX_DIMS, LE_MAX_DIMS, &axis));
    if (axis < 0) axis += y.ndim;
    LE_REQUIRE(axis >= 0 && axis < y.ndim, LE_ERR_ATTR);
    for (k = 0; k < op->n_in; k++) {
        LE_REQUIRE(le_in(op, k, &t) && t.dtype == y.dtype && t.ndim == y.ndim, LE_ERR_SHAPE);
        for (i = 0; i < y.ndim; i++)
            LE_REQUIRE(i == axis || t.dims[i] == y.dims[i], LE_ERR_SHAPE);
        total += t.dims[axis];
    }
    LE_REQUIRE(total == y.dims[axis], LE_ERR_SHAPE);
    if (!op->run) return LE_OK;
    outer = le_numel_range(&y, 0, (int)axis);
    row = le_numel_range(&y, (int)axis, y.ndim) * y.elsize;
    for (k = 0; k < op->n_in; k++) {
        int64_t inner;
        le_in(op, k, &t);
        inner = le_numel_range(&t, (int)axis, t.ndim) * t.elsize;
        for (r = 0; r < outer; r++)
            memcpy(y.data + r * row + col, t.data + r * inner, (size_t)inner);
        col += inner;
    }
    return LE_OK;
}

static le_status split(le_op *op) {
    le_tensor x, s, t;
    int64_t axis, num, chunk, off = 0, outer, row, r;
    uint32_t k;
    int i, has_sizes;
    LE_REQUIRE(op->n_in >= 1 && op->n_in <= 2 && op->n_out >= 1 && le_in(op, 0, &x),
               LE_ERR_SHAPE);
    LE_CHECK(le_opt_int(op, "axis", 0, -LE_MAX_DIMS, LE_MAX_DIMS, &axis));
    if (axis < 0) axis += x.ndim;
    LE_REQUIRE(axis >= 0 && axis < x.ndim, LE_ERR_ATTR);
    LE_CHECK(le_opt_int(op, "num_outputs", op->n_out, 1, 1 << 20, &num));
    has_sizes = le_in(op, 1, &s);
    if (has_sizes) LE_REQUIRE(int_tensor(&s) && s.numel == op->n_out, LE_ERR_SHAPE);
    else LE_REQUIRE(num == op->n_out, LE_ERR_SHAPE);
    chunk = (x.dims[axis] + num - 1) / num;
    for (k = 0; k < op->n_out; k++) {
        LE_REQUIRE(le_out(op, k, &t) && t.dtype == x.dtype && t.ndim == x.ndim, LE_ERR_SHAPE);
        for (i = 0; i < x.ndim; i++)
            LE_REQUIRE(i == axis || t.dims[i] == x.dims[i], LE_ERR_SHAPE);
        if (!has_sizes) {
            int64_t want = x.dims[axis] - (int64_t)k * chunk;
            LE_REQUIRE(t.dims[axis] == (want < chunk ? want : chunk), LE_ERR_SHAPE);
        }
        off += t.dims[axis];
    }
    LE_REQUIRE(off == x.dims[axis], LE_ERR_SHAPE);
    if (!op->run) return LE_OK;
    if (has_sizes)
        for (k = 0; k < op->n_out; k++) {
            le_out(op, k, &t);
            if (ld_int(&s, k) != t.dims[axis]) return LE_ERR_SHAPE;
        }
    outer = le_numel_range(&x, 0, (int)axis);
    row = le_numel_range(&x, (int)axis, x.ndim) * x.elsize;
    off = 0;
    for (k = 0; k < op->n_out; k++) {
        int64_t inner;
        le_out(op, k, &t);
        inner = le_numel_range(&t, (int)axis, t.ndim) * t.elsize;
        for (r = 0; r < outer; r++) memcpy(t.data + r * inner, x.data + r * row + off, (size_t)inner);
        off += inner;
    }
    return LE_OK;
}

static int64_t clampi(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : v > hi ? hi : v; }

static le_status slice(le_op *op) {
    le_tensor x, y, st, en, ax, sp;
    int64_t start[LE_MAX_DIMS] = {0}, step[LE_MAX_DIMS], count[LE_MAX_DIMS], xst[LE_MAX_DIMS];
    int64_t ys[LE_MAX_DIMS], off[LE_MAX_DIMS] = {0}, k, n;
    int i, has_ax, has_sp;
    LE_REQUIRE(op->n_in >= 3 && op->n_in <= 5 && op->n_out == 1 && le_in(op, 0, &x)
               && le_in(op, 1, &st) && le_in(op, 2, &en) && le_out(op, 0, &y), LE_ERR_SHAPE);
    has_ax = le_in(op, 3, &ax);
    has_sp = le_in(op, 4, &sp);
    n = st.numel;
    LE_REQUIRE(int_tensor(&st) && int_tensor(&en) && en.numel == n && n <= LE_MAX_DIMS,
               LE_ERR_SHAPE);
    LE_REQUIRE(!has_ax || (int_tensor(&ax) && ax.numel == n), LE_ERR_SHAPE);
    LE_REQUIRE(!has_sp || (int_tensor(&sp) && sp.numel == n), LE_ERR_SHAPE);
    LE_REQUIRE(y.dtype == x.dtype && y.ndim == x.ndim, LE_ERR_SHAPE);
    if (!op->run) return LE_OK;   /* the bounds are values: checked when they are known */
    for (i = 0; i < x.ndim; i++) {
        step[i] = 1;
        count[i] = x.dims[i];
    }
    for (k = 0; k < n; k++) {
        int64_t a = has_ax ? ld_int(&ax, k) : k, s = ld_int(&st, k), e = ld_int(&en, k);
        int64_t p = has_sp ? ld_int(&sp, k) : 1, dim;
        if (a < 0) a += x.ndim;
        if (a < 0 || a >= x.ndim || p == 0) return LE_ERR_SHAPE;
        dim = x.dims[a];
        p = clampi(p, -((int64_t)1 << 41), (int64_t)1 << 41);
        s = s < 0 ? (s < -dim ? -dim - 1 : s + dim) : s;   /* no overflow: values clamp below */
        e = e < 0 ? (e < -dim ? -dim - 1 : e + dim) : e;
        if (p > 0) {
            s = clampi(s, 0, dim);
            e = clampi(e, 0, dim);
            count[a] = e > s ? (e - s + p - 1) / p : 0;
        } else {
            /* linger's clamping to [-1, dim - 1], then python's slice with start -1 meaning
             * the last element and an end below 0 meaning "before index 0" */
            s = clampi(s, -1, dim - 1);
            e = clampi(e, -1, dim - 1);
            if (s < 0) s += dim;
            count[a] = s > e ? (s - e - 1) / (-p) + 1 : 0;
        }
        start[a] = s;
        step[a] = p;
    }
    for (i = 0; i < x.ndim; i++)
        if (y.dims[i] != count[i]) return LE_ERR_SHAPE;
    strides(&x, xst);
    for (i = 0; i < x.ndim; i++) {
        ys[i] = xst[i] * step[i];
        off[i] = count[i] ? start[i] * xst[i] : 0;
    }
    if (y.numel) gather_copy(&x, &y, ys, off);
    return LE_OK;
}

static le_status pad(le_op *op) {
    le_tensor x, y, pads, val, axes;
    int64_t b[LE_MAX_DIMS] = {0}, e[LE_MAX_DIMS] = {0}, o, idx[LE_MAX_DIMS] = {0}, xst[LE_MAX_DIMS];
    int i, has_val, has_axes, mode;
    const char *ms = "constant";
    uint32_t ml = 8;
    int r;
    LE_REQUIRE(op->n_in >= 2 && op->n_in <= 4 && op->n_out == 1 && le_in(op, 0, &x)
               && le_in(op, 1, &pads) && le_out(op, 0, &y), LE_ERR_SHAPE);
    has_val = le_in(op, 2, &val);
    has_axes = le_in(op, 3, &axes);
    r = le_attr_str(op, "mode", &ms, &ml);
    LE_REQUIRE(r >= 0, LE_ERR_ATTR);
    if (ml == 8 && memcmp(ms, "constant", 8) == 0) mode = 0;
    else if (ml == 4 && memcmp(ms, "edge", 4) == 0) mode = 1;
    else if (ml == 7 && memcmp(ms, "reflect", 7) == 0) mode = 2;
    else return LE_ERR_ATTR;
    LE_REQUIRE(int_tensor(&pads) && y.dtype == x.dtype && y.ndim == x.ndim, LE_ERR_SHAPE);
    LE_REQUIRE(!has_val || (val.dtype == x.dtype && val.numel <= 1), LE_ERR_SHAPE);
    LE_REQUIRE(!has_axes || int_tensor(&axes), LE_ERR_SHAPE);
    LE_REQUIRE(pads.numel == 2 * (has_axes ? axes.numel : x.ndim), LE_ERR_SHAPE);
    if (!op->run) return LE_OK;
    {
        int64_t na = pads.numel / 2, k;
        for (k = 0; k < na; k++) {
            int64_t a = has_axes ? ld_int(&axes, k) : k;
            if (a < 0) a += x.ndim;
            if (a < 0 || a >= x.ndim) return LE_ERR_SHAPE;
            b[a] = clampi(ld_int(&pads, k), -((int64_t)1 << 40), (int64_t)1 << 40);
            e[a] = clampi(ld_int(&pads, k + na), -((int64_t)1 << 40), (int64_t)1 << 40);
        }
    }
    for (i = 0; i < x.ndim; i++) {
        /* crop the negative pads, grow by the positive ones */
        int64_t kept = x.dims[i] - (b[i] < 0 ? -b[i] : 0) - (e[i] < 0 ? -e[i] : 0);
        if (kept < 0) return LE_ERR_SHAPE;
        if (y.dims[i] != kept + (b[i] > 0 ? b[i] : 0) + (e[i] > 0 ? e[i] : 0)) return LE_ERR_SHAPE;
        if (mode && kept == 0 && y.dims[i] > 0) return LE_ERR_SHAPE;
    }
    strides(&x, xst);
    for (o = 0; o < y.numel; o++) {
        int64_t src = 0;
        int inside = 1;
        for (i = 0; i < x.ndim; i++) {
            int64_t lo = b[i] < 0 ? -b[i] : 0, grow = b[i] > 0 ? b[i] : 0;
            int64_t kept = x.dims[i] - lo - (e[i] < 0 ? -e[i] : 0), j = idx[i] - grow;
            if (j < 0 || j >= kept) {
                if (mode == 0) inside = 0;
                else if (mode == 1) j = j < 0 ? 0 : kept - 1;
                else if (kept == 1) j = 0;
                else {
                    int64_t period = 2 * (kept - 1);
                    j = ((j % period) + period) % period;
                    if (j >= kept) j = period - j;
                }
            }
            src += (j + lo) * xst[i];
        }
        if (inside) memcpy(y.data + o * y.elsize, x.data + src * x.elsize, y.elsize);
        else if (has_val && val.numel == 1) memcpy(y.data + o * y.elsize, val.data, y.elsize);
        else memset(y.data + o * y.elsize, 0, y.elsize);
        for (i = y.ndim - 1; i >= 0; i--) {
            if (++idx[i] < y.dims[i]) break;
            idx[i] = 0;
        }
    }
    return LE_OK;
}

static le_status expand(le_op *op) {
    le_tensor x, s, y;
    le_iter it;
    int64_t i;
    LE_REQUIRE(op->n_in == 2 && op->n_out == 1 && le_in(op, 0, &x) && le_in(op, 1, &s)
               && le_out(op, 0, &y), LE_ERR_SHAPE);
    LE_REQUIRE(int_tensor(&s) && s.ndim == 1 && y.dtype == x.dtype && s.numel <= y.ndim,
               LE_ERR_SHAPE);
    LE_CHECK(le_bcast(&it, &y, &x, NULL));
    if (!op->run) return LE_OK;
    for (i = 0; i < s.numel; i++) {   /* y = broadcast(x.shape, shape) */
        int64_t want = ld_int(&s, i), got = y.dims[y.ndim - s.numel + i];
        if (want != got && want != 1) return LE_ERR_SHAPE;
    }
    for (i = 0; i < y.numel; i++, le_iter_next(&it))
        memcpy(y.data + i * y.elsize, x.data + it.off[1] * x.elsize, y.elsize);
    return LE_OK;
}

/* y = take(x, indices, axis); negative indices count from the end when `wrap` */
static le_status take(le_op *op, int64_t axis, uint32_t xslot, uint32_t islot, int wrap) {
    le_tensor x, ind, y;
    int64_t outer, inner, dim, o, k;
    int i;
    LE_REQUIRE(op->n_in == 2 && op->n_out == 1 && le_in(op, xslot, &x)
               && le_in(op, islot, &ind) && le_out(op, 0, &y), LE_ERR_SHAPE);
    LE_REQUIRE(int_tensor(&ind) && y.dtype == x.dtype, LE_ERR_SHAPE);
    if (axis < 0) axis += x.ndim;
    LE_REQUIRE(axis >= 0 && axis < x.ndim, LE_ERR_ATTR);
    LE_REQUIRE(y.ndim == x.ndim - 1 + ind.ndim, LE_ERR_SHAPE);
    for (i = 0; i < y.ndim; i++) {
        int64_t want = i < axis ? x.dims[i]
                       : i < axis + ind.ndim ? ind.dims[i - axis] : x.dims[i - ind.ndim + 1];
        LE_REQUIRE(y.dims[i] == want, LE_ERR_SHAPE);
    }
    if (!op->run) return LE_OK;
    outer = le_numel_range(&x, 0, (int)axis);
    dim = x.dims[axis];
    inner = le_numel_range(&x, (int)axis + 1, x.ndim) * x.elsize;
    for (k = 0; k < ind.numel; k++) {
        int64_t j = ld_int(&ind, k);
        if (wrap && j < 0) j += dim;
        if (j < 0 || j >= dim) return LE_ERR_INPUT;
    }
    for (o = 0; o < outer; o++)
        for (k = 0; k < ind.numel; k++) {
            int64_t j = ld_int(&ind, k);
            if (j < 0) j += dim;
            memcpy(y.data + (o * ind.numel + k) * inner, x.data + (o * dim + j) * inner,
                   (size_t)inner);
        }
    return LE_OK;
}

static le_status gather(le_op *op) {
    int64_t axis;
    LE_CHECK(le_opt_int(op, "axis", 0, -LE_MAX_DIMS, LE_MAX_DIMS, &axis));
    return take(op, axis, 0, 1, 1);
}

static le_status embedding(le_op *op) {
    le_tensor w;
    int64_t e, bits;
    LE_CHECK(le_exp(op, "exp_w", &e));
    LE_CHECK(le_bits(op, "bits_w", 32, &bits));
    LE_REQUIRE(op->n_in == 2 && le_in(op, 1, &w) && w.dtype == le_int_dtype(bits), LE_ERR_SHAPE);
    return take(op, 0, 1, 0, 0);
}

/* LutInt (models imported from the original toolchain, runtime/kernels/luna.py):
 * y = T[x + 2**(bits_x-1)], or T[(x + 2**(bits_x-1)) * 2**bits_y + y + 2**(bits_y-1)] with a
 * second input y (numpy broadcasting); T is the last input. An index outside the table is
 * LE_ERR_INPUT. */
static le_status lut(le_op *op) {
    le_tensor x, y, t, o;
    le_iter it;
    int64_t bx, by, bo, size, i;
    int two = op->n_in == 3;
    LE_REQUIRE((op->n_in == 2 || two) && op->n_out == 1 && le_in(op, 0, &x)
               && le_in(op, op->n_in - 1, &t) && le_out(op, 0, &o), LE_ERR_SHAPE);
    LE_CHECK(le_req_int(op, "bits_x", 2, 16, &bx));
    LE_CHECK(le_opt_int(op, "bits_y", 0, 0, 16, &by));
    LE_CHECK(le_bits(op, "bits_o", 32, &bo));
    LE_REQUIRE(two == (by > 0), LE_ERR_ATTR);
    if (two) LE_REQUIRE(le_in(op, 1, &y) && y.dtype == le_int_dtype(by), LE_ERR_SHAPE);
    size = ((int64_t)1 << bx) << by;
    LE_REQUIRE(x.dtype == le_int_dtype(bx) && t.dtype == le_int_dtype(bo) && t.ndim == 1
               && t.dims[0] == size && o.dtype == t.dtype, LE_ERR_SHAPE);
    LE_CHECK(le_bcast(&it, &o, &x, two ? &y : NULL));
    if (!two) LE_REQUIRE(le_same_shape(&x, &o), LE_ERR_SHAPE);
    if (!op->run) return LE_OK;
    for (i = 0; i < o.numel; i++, le_iter_next(&it)) {
        int64_t idx = le_ld(&x, it.off[1]) + ((int64_t)1 << (bx - 1));
        if (two) idx = idx * ((int64_t)1 << by) + le_ld(&y, it.off[2]) + ((int64_t)1 << (by - 1));
        if (idx < 0 || idx >= size) return LE_ERR_INPUT;
        memcpy(o.data + i * o.elsize, t.data + idx * t.elsize, o.elsize);
    }
    return LE_OK;
}

static const char *const a_none[] = {NULL};
static const char *const a_axis[] = {"axis", NULL};
static const char *const a_constant[] = {"value", "value_float", "value_floats", "value_int",
                                         "value_ints", NULL};
static const char *const a_shape[] = {"start", "end", NULL};
static const char *const a_reshape[] = {"allowzero", NULL};
static const char *const a_perm[] = {"perm", NULL};
static const char *const a_split[] = {"axis", "num_outputs", NULL};
static const char *const a_pad[] = {"mode", NULL};
static const char *const a_emb[] = {"exp_w", "bits_w", NULL};
static const char *const a_lut[] = {"bits_x", "bits_y", "bits_o", NULL};

const le_op_entry le_ops_layout[] = {
    {"", "Identity", identity, a_none},
    {"", "Constant", constant, a_constant},
    {"", "Shape", shape, a_shape},
    {"", "Reshape", reshape, a_reshape},
    {"", "Transpose", transpose, a_perm},
    {"", "Flatten", flatten, a_axis},
    {"", "Squeeze", squeeze, a_none},
    {"", "Unsqueeze", unsqueeze, a_none},
    {"", "Concat", concat, a_axis},
    {"", "Split", split, a_split},
    {"", "Slice", slice, a_none},
    {"", "Pad", pad, a_pad},
    {"", "Expand", expand, a_none},
    {"", "Gather", gather, a_axis},
    {LE_LINGER_DOMAIN, "EmbeddingInt", embedding, a_emb},
    {LE_LINGER_DOMAIN, "LutInt", lut, a_lut},
};
const uint32_t le_ops_layout_count = sizeof le_ops_layout / sizeof le_ops_layout[0];
